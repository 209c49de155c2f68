// Layer-by-layer migration of expert weights, and the routing table that
// switches atomically when a layer commits.
//
// MigrationEngine: the serving thread starts a batch of layers' transfers
// over the engine's own weights (ExpertWeights), polls them without
// blocking, and commits each layer when every one of its transfers arrived
// and verified against the checksum its sender computed: staging buffers
// become the slots' weights and the placement changes. A failed, corrupted
// or timed-out transfer aborts its layer; the old placement keeps serving
// and no live buffer was touched. With several processes (one per rank),
// every rank decides with the others (Collective): a layer commits on every
// rank at the same step or on none. Thread-compatible: one (serving) thread
// drives it; copies run on the transport's threads.
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
#include "eplb/collective.h"
#include "eplb/model.h"
#include "eplb/placement.h"
#include "eplb/status.h"
#include "eplb/topology.h"
#include "eplb/transport.h"
#include "eplb/weights.h"

namespace eplb {

// The transfers that turn `current` into `target` for one layer ([R*K]
// each): one receive per slot whose expert changes; the source is
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

struct MigrationOptions {
  Topology topology;
  int num_layers = 0;
  int num_experts = 0;
  int64_t real_expert_bytes = 0;     // Bytes of one expert, as reported.
  ExpertWeights* weights = nullptr;  // Not owned; holds `initial`.
  Transport* transport = nullptr;    // Not owned; outlives the engine.
  Collective* collective = nullptr;  // Not owned; LocalCollective() when null.
  Clock* clock = nullptr;            // Not owned; SystemClock() when null.
  int64_t timeout_nanos = 10'000'000'000;  // A batch's transfers.
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
  const ExpertWeights& weights() const { return *options_.weights; }
  const MigrationStats& stats() const { return stats_; }
  // The checksum of (layer, expert) learnt from a committed transfer of it,
  // or 0 while none (see known_checksums_).
  uint64_t known_checksum(int layer, int expert) const {
    return known_checksums_[KnownIndex(layer, expert)];
  }

  // Starts moving `layer` to `target` [R*K]. FailedPrecondition while
  // another migration is in flight; Unavailable while a timed-out batch's
  // copies still drain; InvalidArgument when `target` is not a valid next
  // placement of the layer (CheckPlan: every expert kept somewhere, no
  // expert twice on a rank, receives within the staging buffers; nothing
  // starts).
  Status Start(int layer, std::span<const int32_t> target);
  // Starts moving several layers to their rows of `plan` in one batch of
  // transfers; each commits on its own when all of its transfers verified.
  // The batch's receives on a rank share its staging buffers
  // (InvalidArgument when they do not fit; nothing starts). Otherwise as
  // Start.
  Status StartLayers(std::span<const int> layers, const Placement& plan);
  enum class State { kIdle, kInFlight, kCommitted, kAborted };
  // Non-blocking. kInFlight while copies run (on any rank); then verifies
  // every received staging buffer against its sender's checksum and commits
  // each layer of the batch whose transfers all verified on every rank
  // (placement updated), exactly once: kCommitted when every layer
  // committed, kAborted when some did not (last_error() says why;
  // committed_layers() and aborted_layers() say which). kIdle when nothing
  // is in flight. With several processes every rank calls it at the same
  // steps (it is collective).
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
  // [layer][expert]: the checksum every replica of the expert has, learnt
  // from transfers of committed layers (this process sent or received
  // them, and every receiver verified them); 0 while unknown. Given to
  // later transfers of the expert (Transfer::source_checksum), so a sender
  // reads the expert once, for the copy, instead of twice.
  std::vector<uint64_t> known_checksums_;
  size_t KnownIndex(int layer, int expert) const {
    return static_cast<size_t>(layer) * placement_.num_experts() + expert;
  }
  int64_t started_at_ = 0;
  Status last_error_;
};

// Per-layer routing readable from any thread while commits happen (readers
// see the old or the new tables, never a mix). Get() returns a
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
