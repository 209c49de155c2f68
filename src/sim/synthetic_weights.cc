#include "eplb/sim/synthetic_weights.h"

#include <algorithm>
#include <cstring>

#include "core/splitmix.h"

namespace eplb {

StatusOr<std::unique_ptr<SyntheticWeights>> SyntheticWeights::Create(
    const SyntheticWeightsOptions& o, const Placement& initial) {
  const Topology& t = o.topology;
  if (o.real_expert_bytes <= 0) {
    return InvalidArgumentError(
        "real_expert_bytes = " + std::to_string(o.real_expert_bytes) +
        ": must be > 0");
  }
  if (initial.num_ranks() != t.num_ranks ||
      initial.slots_per_rank() != t.slots_per_rank ||
      initial.num_layers() != o.num_layers ||
      initial.num_experts() != o.num_experts) {
    return InvalidArgumentError(
        "synthetic weights: the initial placement does not match "
        "the topology, layers or experts");
  }
  auto w = std::unique_ptr<SyntheticWeights>(new SyntheticWeights());
  w->topology_ = t;
  w->num_layers_ = o.num_layers;
  w->num_experts_ = o.num_experts;
  w->staging_per_rank_ =
      o.staging_per_rank > 0 ? o.staging_per_rank : 2 * t.slots_per_rank;
  w->host_index_.assign(t.num_ranks, -1);
  int hosted = 0;
  if (o.hosted_ranks.empty()) {
    for (int r = 0; r < t.num_ranks; ++r) w->host_index_[r] = hosted++;
  } else {
    for (int r : o.hosted_ranks) {
      if (r < 0 || r >= t.num_ranks || w->host_index_[r] >= 0) {
        return InvalidArgumentError("synthetic weights: hosted rank " +
                                    std::to_string(r) +
                                    " is out of range or listed twice");
      }
      w->host_index_[r] = hosted++;
    }
  }
  const int64_t per_rank =
      static_cast<int64_t>(o.num_layers) * t.slots_per_rank +
      w->staging_per_rank_;
  const int64_t buffers = static_cast<int64_t>(t.num_ranks) * per_rank;
  // Largest multiple of 8 bytes per buffer within the budget.
  const int64_t fit = (o.memory_budget_bytes / buffers) / 8 * 8;
  if (o.scale < 0) {
    return InvalidArgumentError("synthetic weights: scale = " +
                                std::to_string(o.scale) + ": must be >= 0");
  }
  if (fit < 64 && o.scale == 0) {
    return InvalidArgumentError("memory budget " +
                                std::to_string(o.memory_budget_bytes) +
                                " bytes for " + std::to_string(buffers) +
                                " expert buffers leaves under 64 bytes each");
  }
  // One scale for every tensor; rounding each up to 8 bytes may overflow the
  // fit, in which case the scale grows until the layout fits.
  std::vector<ExpertTensor> tensors = o.tensors;
  if (tensors.empty()) {
    tensors.push_back(
        ExpertTensor{"expert", DType::kBf16, {}, o.real_expert_bytes});
  }
  if (static_cast<int64_t>(tensors.size()) * 8 > fit && o.scale == 0) {
    return InvalidArgumentError(
        "synthetic weights: " + std::to_string(tensors.size()) +
        " tensors do not fit in " + std::to_string(fit) +
        " bytes per expert buffer");
  }
  int64_t real_total = 0;
  for (const ExpertTensor& x : tensors) real_total += x.num_bytes;
  if (real_total != o.real_expert_bytes) {
    return InvalidArgumentError("synthetic weights: tensors add up to " +
                                std::to_string(real_total) + " bytes, not " +
                                std::to_string(o.real_expert_bytes));
  }
  for (int64_t scale = o.scale > 0
                           ? o.scale
                           : std::max<int64_t>(1, (real_total + fit - 1) / fit);
       ; ++scale) {
    w->tensors_.clear();
    int64_t offset = 0;
    for (const ExpertTensor& x : tensors) {
      const int64_t stored =
          std::max<int64_t>(8, ((x.num_bytes + scale - 1) / scale + 7) / 8 * 8);
      w->tensors_.push_back({x.name, offset, stored, x.num_bytes});
      offset += stored;
    }
    if (offset <= fit || o.scale > 0) {
      w->stored_bytes_ = offset;
      w->scale_ = scale;
      break;
    }
  }
  const int64_t mine = static_cast<int64_t>(hosted) * per_rank;
  w->pool_bytes_ = static_cast<size_t>(mine * w->stored_bytes_);
  w->pool_.reset(new std::byte[w->pool_bytes_]);
  w->slot_buffer_.resize(static_cast<size_t>(hosted) * o.num_layers *
                         t.slots_per_rank);
  w->staging_buffer_.resize(static_cast<size_t>(hosted) * w->staging_per_rank_);
  int32_t next = 0;
  for (int32_t& id : w->slot_buffer_) id = next++;
  for (int32_t& id : w->staging_buffer_) id = next++;
  w->expected_.assign(static_cast<size_t>(o.num_layers) * o.num_experts, 0);
  for (int r = 0; r < t.num_ranks; ++r) {
    if (w->host_index_[r] < 0) continue;
    for (int l = 0; l < o.num_layers; ++l) {
      for (int s = 0; s < t.slots_per_rank; ++s) {
        w->FillExpert(l, initial.at(l, r, s),
                      {w->Buffer(w->SlotBuffer(r, l, s)),
                       static_cast<size_t>(w->stored_bytes_)});
      }
    }
  }
  return w;
}

bool SyntheticWeights::Hosts(int rank) const {
  return rank >= 0 && rank < topology_.num_ranks && host_index_[rank] >= 0;
}

std::vector<std::span<std::byte>> SyntheticWeights::Regions(int rank) {
  if (!Hosts(rank) || pool_bytes_ == 0) return {};
  return {{pool_.get(), pool_bytes_}};
}

std::byte* SyntheticWeights::Buffer(int32_t id) const {
  return pool_.get() +
         static_cast<size_t>(id) * static_cast<size_t>(stored_bytes_);
}

int32_t SyntheticWeights::SlotBuffer(int rank, int layer, int slot) const {
  return slot_buffer_[(static_cast<size_t>(host_index_[rank]) * num_layers_ +
                       layer) *
                          topology_.slots_per_rank +
                      slot];
}

std::span<const std::byte> SyntheticWeights::SlotBytes(int rank, int layer,
                                                       int slot) const {
  if (!Hosts(rank)) return {};
  return {Buffer(SlotBuffer(rank, layer, slot)),
          static_cast<size_t>(stored_bytes_)};
}

std::span<const std::byte> SyntheticWeights::Slot(int rank, int layer, int slot,
                                                  int tensor) const {
  if (!Hosts(rank)) return {};
  const StoredTensor& x = tensors_[tensor];
  return {Buffer(SlotBuffer(rank, layer, slot)) + x.offset,
          static_cast<size_t>(x.stored_bytes)};
}

std::span<std::byte> SyntheticWeights::Staging(int rank, int index,
                                               int tensor) {
  if (!Hosts(rank) || index < 0 || index >= staging_per_rank_) return {};
  const int32_t id = staging_buffer_[static_cast<size_t>(host_index_[rank]) *
                                         staging_per_rank_ +
                                     index];
  const StoredTensor& x = tensors_[tensor];
  return {Buffer(id) + x.offset, static_cast<size_t>(x.stored_bytes)};
}

void SyntheticWeights::FillExpert(int layer, int expert,
                                  std::span<std::byte> buffer) const {
  uint64_t x = (static_cast<uint64_t>(layer) << 32) ^
               static_cast<uint64_t>(expert) ^ 0x2545f4914f6cdd1dULL;
  for (size_t i = 0; i + 8 <= buffer.size(); i += 8) {
    const uint64_t bits = internal::SplitMix64(&x);
    // Two floats in [-0.5, 0.5), 24 random bits each.
    const float f[2] = {
        static_cast<float>(bits >> 40) * 0x1p-24f - 0.5f,
        static_cast<float>((bits >> 8) & 0xffffff) * 0x1p-24f - 0.5f};
    std::memcpy(buffer.data() + i, f, 8);
  }
}

uint64_t SyntheticWeights::ExpectedChecksum(int layer, int expert) const {
  uint64_t& cached =
      expected_[static_cast<size_t>(layer) * num_experts_ + expert];
  if (cached == 0) {
    std::vector<std::byte> tmp(static_cast<size_t>(stored_bytes_));
    FillExpert(layer, expert, tmp);
    // Tensor by tensor, as SlotChecksum reads them.
    uint64_t h = kChecksumSeed;
    for (const StoredTensor& x : tensors_) {
      h = ChecksumBytes(std::span<const std::byte>(tmp).subspan(
                            static_cast<size_t>(x.offset),
                            static_cast<size_t>(x.stored_bytes)),
                        h);
    }
    cached = h | 1;  // Never 0, so 0 means "not computed".
  }
  return cached;
}

void SyntheticWeights::CommitStaging(int rank, int index, int layer, int slot) {
  std::swap(staging_buffer_[static_cast<size_t>(host_index_[rank]) *
                                staging_per_rank_ +
                            index],
            slot_buffer_[(static_cast<size_t>(host_index_[rank]) * num_layers_ +
                          layer) *
                             topology_.slots_per_rank +
                         slot]);
}

Status SyntheticWeights::Verify(const Placement& placement) const {
  for (int l = 0; l < num_layers_; ++l) {
    for (int r = 0; r < topology_.num_ranks; ++r) {
      if (!Hosts(r)) continue;
      for (int s = 0; s < topology_.slots_per_rank; ++s) {
        if (SlotChecksum(*this, r, l, s) !=
            ExpectedChecksum(l, placement.at(l, r, s))) {
          return DataLossError("layer " + std::to_string(l) + ", device " +
                               std::to_string(r) + ", slot " +
                               std::to_string(s) +
                               ": weights are not those of expert " +
                               std::to_string(placement.at(l, r, s)));
        }
      }
    }
  }
  return Status::Ok();
}

}  // namespace eplb
