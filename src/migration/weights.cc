#include "eplb/weights.h"

#include <cstring>

#include "eplb/collective.h"

namespace eplb {

uint64_t ChecksumBytes(std::span<const std::byte> bytes, uint64_t seed) {
  uint64_t h = seed;
  size_t i = 0;
  for (; i + 8 <= bytes.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, bytes.data() + i, 8);
    h = (h ^ w) * 0x100000001b3ULL;
  }
  for (; i < bytes.size(); ++i) {
    h = (h ^ static_cast<uint64_t>(bytes[i])) * 0x100000001b3ULL;
  }
  return h;
}

uint64_t SlotChecksum(const ExpertWeights& weights, int rank, int layer,
                      int slot) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (int x = 0; x < weights.num_tensors(); ++x) {
    h = ChecksumBytes(weights.Slot(rank, layer, slot, x), h);
  }
  return h | 1;
}

uint64_t StagingChecksum(ExpertWeights& weights, int rank, int index) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (int x = 0; x < weights.num_tensors(); ++x) {
    h = ChecksumBytes(weights.Staging(rank, index, x), h);
  }
  return h | 1;
}

namespace {

class Local final : public Collective {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  Status AllReduceSum(std::span<int64_t>) override { return Status::Ok(); }
  Status AllReduceMax(std::span<int64_t>) override { return Status::Ok(); }
};

}  // namespace

Collective* LocalCollective() {
  static Local* const local = new Local();
  return local;
}

bool AllAgree(Collective& collective, uint64_t value) {
  if (collective.size() == 1) return true;
  // max(v) == -max(-v) == min(v), on each 32-bit half (no overflow).
  const auto lo = static_cast<int64_t>(value & 0xffffffffULL);
  const auto hi = static_cast<int64_t>(value >> 32);
  int64_t v[4] = {lo, -lo, hi, -hi};
  if (!collective.AllReduceMax(v).ok()) return false;
  return v[0] == -v[1] && v[2] == -v[3];
}

}  // namespace eplb
