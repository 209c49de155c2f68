// SyntheticWeights: the simulator's expert weights, an ExpertWeights the
// replay hands the controller exactly as an engine hands its own.
//
// Buffers are scaled down from the model's real expert size so the whole
// model fits in memory (the scale is reported; bytes moved are always
// reported at real size): every tensor by the same factor, so a migration
// moves weights and scales alike. Every expert's content is a deterministic
// pattern of (layer, expert): little-endian floats in [-0.5, 0.5), so the
// simulator can run an expert's FFN on them and any copy can be verified.
//
// A process may host only some ranks (one, over MPI): it allocates only
// their buffers, while the scale is computed from every rank's buffers, so
// every process stores an expert in the same number of bytes.
#ifndef EPLB_SIM_SYNTHETIC_WEIGHTS_H_
#define EPLB_SIM_SYNTHETIC_WEIGHTS_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "eplb/model.h"
#include "eplb/placement.h"
#include "eplb/status.h"
#include "eplb/topology.h"
#include "eplb/weights.h"

namespace eplb {

struct SyntheticWeightsOptions {
  Topology topology;
  int num_layers = 0;
  int num_experts = 0;
  int64_t real_expert_bytes = 0;  // Bytes of one expert (model, quant).
  // The expert's tensors (ExpertTensors(model, quant)); their real sizes must
  // add up to real_expert_bytes. Empty: one tensor named "expert".
  std::vector<ExpertTensor> tensors = {};
  // All slot + staging buffers of every rank (hosted or not).
  int64_t memory_budget_bytes = 256 << 20;
  int staging_per_rank = 0;  // 0: 2 x slots_per_rank (two whole layers).
  std::vector<int> hosted_ranks = {};  // Empty: every rank.
  // The scale-down factor; 0: the smallest that fits the budget. (A job
  // re-formed over fewer ranks keeps its scale, so kept slots copy as is.)
  int64_t scale = 0;
};

class SyntheticWeights final : public ExpertWeights {
 public:
  // Allocates and fills every hosted slot of `initial` with its expert's
  // content. InvalidArgument when the budget cannot give each buffer >= 64
  // bytes, or a hosted rank is out of range.
  static StatusOr<std::unique_ptr<SyntheticWeights>> Create(
      const SyntheticWeightsOptions& options, const Placement& initial);

  // Bytes per stored expert and the scale-down factor (real / stored,
  // rounded up; 1 when the real size fits).
  int64_t stored_expert_bytes() const { return stored_bytes_; }
  int64_t scale() const { return scale_; }

  struct StoredTensor {
    std::string name;
    int64_t offset = 0;  // In the expert's buffer.
    int64_t stored_bytes = 0;
    int64_t real_bytes = 0;
  };
  const std::vector<StoredTensor>& tensors() const { return tensors_; }

  // ExpertWeights.
  bool Hosts(int rank) const override;
  int num_tensors() const override { return static_cast<int>(tensors_.size()); }
  std::span<const std::byte> Slot(int rank, int layer, int slot,
                                  int tensor) const override;
  int staging_per_rank() const override { return staging_per_rank_; }
  std::span<std::byte> Staging(int rank, int index, int tensor) override;
  void CommitStaging(int rank, int index, int layer, int slot) override;
  // The one pool every hosted buffer lives in.
  std::vector<std::span<std::byte>> Regions(int rank) override;

  // The whole stored expert of (rank, layer, slot), every tensor.
  std::span<const std::byte> SlotBytes(int rank, int layer, int slot) const;
  // Writes the content of (layer, expert) into `buffer`
  // (stored_expert_bytes() of it).
  void FillExpert(int layer, int expert, std::span<std::byte> buffer) const;
  // The checksum every copy of (layer, expert) has (as SlotChecksum).
  uint64_t ExpectedChecksum(int layer, int expert) const;
  // Every hosted slot of `placement` holds its expert's content (DataLoss
  // names the first slot that does not).
  Status Verify(const Placement& placement) const;

 private:
  SyntheticWeights() = default;
  std::byte* Buffer(int32_t id) const;
  int32_t SlotBuffer(int rank, int layer, int slot) const;

  Topology topology_;
  int num_layers_ = 0;
  int num_experts_ = 0;
  int64_t stored_bytes_ = 0;
  int64_t scale_ = 1;
  std::vector<StoredTensor> tensors_;
  int staging_per_rank_ = 0;
  std::vector<int> host_index_;  // [R]: index among hosted ranks, or -1.
  std::unique_ptr<std::byte[]> pool_;
  size_t pool_bytes_ = 0;
  std::vector<int32_t> slot_buffer_;        // [hosted][L][K] -> buffer id.
  std::vector<int32_t> staging_buffer_;     // [hosted][S] -> buffer id.
  mutable std::vector<uint64_t> expected_;  // [L][E], 0 = not computed yet.
};

}  // namespace eplb

#endif  // EPLB_SIM_SYNTHETIC_WEIGHTS_H_
