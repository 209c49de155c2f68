#include "eplb/weights.h"

#include <algorithm>
#include <bit>
#include <cstring>

#include "eplb/collective.h"

namespace eplb {

namespace {

constexpr uint64_t kMultiplier = 0x9e3779b185ebca87ULL;  // Odd.
constexpr uint64_t kFnvPrime = 0x100000001b3ULL;

uint64_t Load64(const std::byte* p) {
  uint64_t w;
  std::memcpy(&w, p, 8);
  if constexpr (std::endian::native == std::endian::big) {
    w = __builtin_bswap64(w);
  }
  return w;
}

// For a fixed word, a bijection of the state (xor, multiplication by an odd
// number, rotation); for a fixed state, a bijection of the word. The
// rotation brings the product's well-mixed high bits down to where the next
// multiplication spreads them.
uint64_t Step(uint64_t state, uint64_t word) {
  return std::rotl((state ^ word) * kMultiplier, 31);
}

}  // namespace

uint64_t ChecksumBytes(std::span<const std::byte> bytes, uint64_t seed) {
  static_assert(kChecksumBlockBytes % 64 == 0);
  uint64_t h = seed;
  const std::byte* p = bytes.data();
  const size_t n = bytes.size();
  size_t i = 0;
  for (; i + kChecksumBlockBytes <= n; i += kChecksumBlockBytes) {
    // Eight independent chains, one word in eight each: the multiplications
    // overlap instead of waiting on each other.
    uint64_t lane[8] = {0x243f6a8885a308d3ULL, 0x13198a2e03707344ULL,
                        0xa4093822299f31d0ULL, 0x082efa98ec4e6c89ULL,
                        0x452821e638d01377ULL, 0xbe5466cf34e90c6cULL,
                        0xc0ac29b7c97c50ddULL, 0x3f84d5b5b5470917ULL};
    const std::byte* q = p + i;
    for (size_t j = 0; j < kChecksumBlockBytes; j += 64) {
      for (int k = 0; k < 8; ++k)
        lane[k] = Step(lane[k], Load64(q + j + 8 * k));
    }
    for (uint64_t v : lane) h = Step(h, v);
  }
  for (; i + 8 <= n; i += 8) h = Step(h, Load64(p + i));
  for (; i < n; ++i) {
    h = (h ^ static_cast<uint64_t>(p[i])) * kFnvPrime;
  }
  return h;
}

bool SlotChecksumCursor::Advance(size_t max_bytes) {
  const size_t budget = std::max(kChecksumBlockBytes, max_bytes);
  size_t read = 0;
  while (!done()) {
    const std::span<const std::byte> t =
        weights_->Slot(rank_, layer_, slot_, tensor_);
    const size_t rest = t.size() - offset_;
    size_t take = rest;
    if (read + rest > budget) {
      // Whole blocks within the budget (at least one per call), so that the
      // pieces chain; a tail shorter than a block goes with the last one.
      const size_t room =
          budget > read
              ? (budget - read) / kChecksumBlockBytes * kChecksumBlockBytes
              : 0;
      if (room == 0) break;
      take = rest - room < kChecksumBlockBytes ? rest : room;
    }
    h_ = ChecksumBytes(t.subspan(offset_, take), h_);
    read += take;
    offset_ += take;
    if (offset_ == t.size()) {
      ++tensor_;
      offset_ = 0;
    }
  }
  return done();
}

uint64_t SlotChecksum(const ExpertWeights& weights, int rank, int layer,
                      int slot) {
  uint64_t h = kChecksumSeed;
  for (int x = 0; x < weights.num_tensors(); ++x) {
    h = ChecksumBytes(weights.Slot(rank, layer, slot, x), h);
  }
  return h | 1;
}

uint64_t StagingChecksum(ExpertWeights& weights, int rank, int index) {
  uint64_t h = kChecksumSeed;
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
