// Layer-by-layer migration of expert weights (spec §7) and the routing table
// that switches atomically when a layer commits (spec §5).
//
// WeightStore holds every hosted rank's live slot buffers and staging
// buffers. Buffers are scaled down from the model's real expert size so the
// whole model fits in memory (the scale is reported; bytes moved are always
// reported at real size). Every expert's content is a deterministic pattern
// of (layer, expert), so a copy can be verified by checksum.
//
// MigrationEngine: the serving thread starts one layer's transfers, polls
// them without blocking, and commits the layer when every transfer arrived
// and verified: staging buffers swap into the slots and the placement
// changes. A failed, corrupted or timed-out transfer aborts the layer; the
// old placement keeps serving and no live buffer was touched. Thread-
// compatible: one (serving) thread drives it; copies run on the transport's
// threads.
#ifndef EPLB_MIGRATION_H_
#define EPLB_MIGRATION_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "eplb/clock.h"
#include "eplb/model.h"
#include "eplb/placement.h"
#include "eplb/status.h"
#include "eplb/topology.h"
#include "eplb/transport.h"

namespace eplb {

// The transfers that turn `current` into `target` for one layer ([R*K]
// each), spec §7: one receive per slot whose expert changes; the source is
// the receiving rank itself when it already holds the expert (a local copy),
// else a holder on the receiver's node if any, else any holder, choosing the
// holder with the fewest sends so far (lowest rank on ties) so sends spread
// over replicas. Staging indices count up per receiving rank. The result is
// sorted by (src_rank, dst_rank, dst_slot): both sides of every rank pair
// enumerate their transfers in the same order. Precondition: every expert of
// `target` is in `current`.
std::vector<Transfer> PlanLayerTransfers(int layer,
                                         std::span<const int32_t> current,
                                         std::span<const int32_t> target,
                                         const Topology& topology,
                                         int64_t real_expert_bytes);

struct WeightStoreOptions {
  Topology topology;
  int num_layers = 0;
  int num_experts = 0;
  int64_t real_expert_bytes = 0;  // Bytes of one expert (model, quant).
  // The expert's tensors (ExpertTensors(model, quant)); their real sizes must
  // add up to real_expert_bytes. Empty: one tensor named "expert".
  std::vector<ExpertTensor> tensors = {};
  int64_t memory_budget_bytes = 256 << 20;  // All slot + staging buffers.
  int staging_per_rank = 0;                 // 0: slots_per_rank.
};

class WeightStore final : public BufferResolver {
 public:
  // Allocates and fills every slot of `initial` with its expert's content.
  // InvalidArgument when the budget cannot give each buffer >= 64 bytes.
  static StatusOr<std::unique_ptr<WeightStore>> Create(
      const WeightStoreOptions& options, const Placement& initial);

  // Bytes per stored buffer and the scale-down factor (real / stored,
  // rounded up; 1 when the real size fits).
  int64_t stored_expert_bytes() const { return stored_bytes_; }
  int64_t scale() const { return scale_; }

  // Where each tensor of an expert lies in its buffer: every tensor is
  // scaled down by the same factor (at least 8 bytes, 8-byte aligned), so a
  // migration moves every tensor, weights and scales alike.
  struct StoredTensor {
    std::string name;
    int64_t offset = 0;
    int64_t stored_bytes = 0;
    int64_t real_bytes = 0;
  };
  const std::vector<StoredTensor>& tensors() const { return tensors_; }
  int staging_per_rank() const { return staging_per_rank_; }

  std::span<const std::byte> Slot(int rank, int layer, int slot) const override;
  std::span<std::byte> Staging(int rank, int index) override;

  // The checksum every copy of (layer, expert) must have.
  uint64_t ExpectedChecksum(int layer, int expert) const;
  static uint64_t Checksum(std::span<const std::byte> bytes);
  // Swaps staging buffer `index` of `rank` into (rank, layer, slot); the old
  // slot buffer becomes that staging buffer.
  void CommitStaging(int rank, int index, int layer, int slot);
  // Every slot of `placement` holds its expert's content (DataLoss names the
  // first slot that does not).
  Status Verify(const Placement& placement) const;

 private:
  WeightStore() = default;
  void Fill(std::span<std::byte> buffer, int layer, int expert) const;
  std::byte* Buffer(int32_t id) const;

  Topology topology_;
  int num_layers_ = 0;
  int num_experts_ = 0;
  int64_t stored_bytes_ = 0;
  int64_t scale_ = 1;
  std::vector<StoredTensor> tensors_;
  int staging_per_rank_ = 0;
  std::unique_ptr<std::byte[]> pool_;
  std::vector<int32_t> slot_buffer_;        // [R][L][K] -> buffer id.
  std::vector<int32_t> staging_buffer_;     // [R][S] -> buffer id.
  mutable std::vector<uint64_t> expected_;  // [L][E], 0 = not computed yet.
};

struct MigrationOptions {
  Topology topology;
  int num_layers = 0;
  int num_experts = 0;
  int64_t real_expert_bytes = 0;
  std::vector<ExpertTensor> tensors = {};  // See WeightStoreOptions.
  int64_t memory_budget_bytes = 256 << 20;
  Transport* transport = nullptr;  // Not owned; outlives the engine.
  Clock* clock = nullptr;          // Not owned; SystemClock() when null.
  int64_t timeout_nanos = 10'000'000'000;  // A layer's transfers.
  int staging_per_rank = 0;  // Staging buffers per rank; 0: slots_per_rank.
};

// Counters, at real expert sizes.
struct MigrationStats {
  int64_t layers_committed = 0;
  int64_t layers_aborted = 0;
  int64_t experts_moved = 0;  // Transfers between ranks.
  int64_t local_copies = 0;   // Transfers within a rank.
  int64_t bytes_moved = 0;    // Real bytes of experts_moved.
};

class MigrationEngine {
 public:
  static StatusOr<std::unique_ptr<MigrationEngine>> Create(
      const MigrationOptions& options, const Placement& initial);
  ~MigrationEngine();

  // What the weights hold: the last committed placement.
  const Placement& placement() const { return placement_; }
  const WeightStore& store() const { return *store_; }
  const MigrationStats& stats() const { return stats_; }

  // Starts moving `layer` to `target` [R*K]. FailedPrecondition while
  // another migration is in flight; Unavailable while a timed-out batch's
  // copies still drain; InvalidArgument when `target` breaks spec §3.4
  // against the current layer (nothing starts).
  Status Start(int layer, std::span<const int32_t> target);
  // Starts moving several layers to their rows of `plan` in one batch of
  // transfers; each commits on its own when all of its transfers verified.
  // The batch's receives on a rank share its staging buffers
  // (InvalidArgument when they do not fit; nothing starts). Otherwise as
  // Start.
  Status StartLayers(std::span<const int> layers, const Placement& plan);
  enum class State { kIdle, kInFlight, kCommitted, kAborted };
  // Non-blocking. kInFlight while copies run; then verifies every staging
  // buffer's checksum and commits each layer of the batch whose transfers
  // all verified (placement updated), exactly once: kCommitted when every
  // layer committed, kAborted when some did not (last_error() says why;
  // committed_layers() and aborted_layers() say which). kIdle when nothing
  // is in flight.
  State Poll();
  // Blocks until the in-flight batch's copies end, then Poll()s.
  State Wait();
  // The first layer of the batch in flight, or -1.
  int in_flight_layer() const {
    return in_flight_.empty() ? -1 : in_flight_.front();
  }
  const std::vector<int>& in_flight_layers() const { return in_flight_; }
  // The outcome of the last batch that finished, in batch order.
  const std::vector<int>& committed_layers() const { return committed_; }
  const std::vector<int>& aborted_layers() const { return aborted_; }
  const Status& last_error() const { return last_error_; }

 private:
  MigrationEngine() = default;
  State Finish();

  MigrationOptions options_;
  Placement placement_;
  std::unique_ptr<WeightStore> store_;
  MigrationStats stats_;
  Status StartBatch(
      std::span<const std::pair<int, std::span<const int32_t>>> layers);
  std::vector<int> in_flight_;    // Layers of the batch in flight.
  std::vector<int32_t> targets_;  // [batch][R*K]: their targets.
  std::vector<int> committed_;    // Of the last finished batch.
  std::vector<int> aborted_;
  std::vector<Transfer> transfers_;
  std::unique_ptr<TransferBatch> batch_;
  std::unique_ptr<TransferBatch> draining_;  // A timed-out batch still copying.
  int64_t started_at_ = 0;
  Status last_error_;
};

// Per-layer routing readable from any thread while commits happen (spec §5:
// readers see the old or the new tables, never a mix). Get() returns a
// reference-counted snapshot the reader may keep as long as it likes; a
// commit builds the new table first and then swaps one pointer. Both hold a
// per-layer mutex only for that pointer copy or swap (tens of nanoseconds);
// the serving thread reads a layer's table once per step, not per token.
// (std::atomic<std::shared_ptr> would avoid the mutex, but libstdc++ 12's
// implementation is a data race under ThreadSanitizer.) Thread-safe.
class RoutingTable {
 public:
  RoutingTable(const Placement& initial, const Topology& topology);
  RoutingTable(const RoutingTable&) = delete;
  RoutingTable& operator=(const RoutingTable&) = delete;

  std::shared_ptr<const LayerRouting> Get(int layer) const;
  // Builds the routing of `layer` [R*K] and switches readers to it.
  void Publish(int layer, std::span<const int32_t> layer_placement);
  int num_layers() const { return static_cast<int>(layers_.size()); }

 private:
  struct Slot {
    mutable std::mutex mu;
    std::shared_ptr<const LayerRouting> routing;
  };
  Topology topology_;
  int num_experts_;
  std::vector<Slot> layers_;
};

}  // namespace eplb

#endif  // EPLB_MIGRATION_H_
