#include "eplb/weights.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>

#include "eplb/collective.h"
#include "migration/checksum.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define EPLB_CHECKSUM_AVX2 1
#endif

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

// A block's lanes: kLanes 64-bit chains, lane k reading words k, k + kLanes,
// k + 2 kLanes, ... of the block (one 256-byte stride at a time), so that
// they run side by side in SIMD registers. A lane step x = lane ^ word, then
// x += lo32(x) * K1, a swap of the halves, x += lo32(x) * K2: with K even,
// x -> x + lo32(x) * K is a bijection (the low half is multiplied by the odd
// K + 1, the high half shifted by a function of the low), so the step is a
// bijection of the lane for a fixed word and of the word for a fixed lane.
// 32x32 -> 64-bit products are what SIMD units multiply (AVX2's vpmuludq,
// NEON's umull).
constexpr size_t kLanes = 32;
constexpr size_t kStride = kLanes * 8;
static_assert(kChecksumBlockBytes % kStride == 0);
constexpr uint64_t kLaneMul1 = 0x9e3779b8;  // Even.
constexpr uint64_t kLaneMul2 = 0x85ebca76;  // Even.
constexpr uint64_t kLow32 = 0xffffffff;

// The lanes' starting values: splitmix64 of the lane's index.
constexpr std::array<uint64_t, kLanes> kLaneSeeds = [] {
  std::array<uint64_t, kLanes> s{};
  uint64_t x = 0;
  for (uint64_t& v : s) {
    x += 0x9e3779b97f4a7c15ULL;
    uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    v = z ^ (z >> 31);
  }
  return s;
}();

uint64_t LaneStep(uint64_t lane, uint64_t word) {
  uint64_t x = lane ^ word;
  x += (x & kLow32) * kLaneMul1;
  x = std::rotl(x, 32);
  x += (x & kLow32) * kLaneMul2;
  return x;
}

// The lanes of one block, then their fold into `h`: pairwise (Step is a
// bijection of either argument for the other fixed, so a changed lane still
// changes the root), 5 multiplications' latency rather than 32.
template <typename LanesFn>
inline __attribute__((always_inline)) uint64_t FoldBlocks(const std::byte* p,
                                                          size_t blocks,
                                                          uint64_t h,
                                                          LanesFn block_lanes) {
  for (size_t b = 0; b < blocks; ++b) {
    std::array<uint64_t, kLanes> lanes = kLaneSeeds;
    block_lanes(p + b * kChecksumBlockBytes, lanes.data());
    for (size_t width = kLanes; width > 1; width /= 2) {
      for (size_t k = 0; k < width / 2; ++k) {
        lanes[k] = Step(lanes[2 * k], lanes[2 * k + 1]);
      }
    }
    h = Step(h, lanes[0]);
  }
  return h;
}

inline __attribute__((always_inline)) void BlockLanesPortable(
    const std::byte* block, uint64_t* lanes) {
  for (size_t j = 0; j < kChecksumBlockBytes; j += kStride) {
    for (size_t k = 0; k < kLanes; ++k) {
      lanes[k] = LaneStep(lanes[k], Load64(block + j + 8 * k));
    }
  }
}

uint64_t BlocksPortable(const std::byte* p, size_t blocks, uint64_t h) {
  return FoldBlocks(p, blocks, h, BlockLanesPortable);
}

#ifdef EPLB_CHECKSUM_AVX2
// BlockLanesPortable, four lanes to a register (x86 is little-endian).
__attribute__((target("avx2"), always_inline)) inline void BlockLanesAvx2(
    const std::byte* block, uint64_t* lanes) {
  constexpr int kRegs = kLanes / 4;
  __m256i l[kRegs];
  for (int r = 0; r < kRegs; ++r) {
    l[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lanes + 4 * r));
  }
  const __m256i k1 = _mm256_set1_epi64x(static_cast<int64_t>(kLaneMul1));
  const __m256i k2 = _mm256_set1_epi64x(static_cast<int64_t>(kLaneMul2));
  for (size_t j = 0; j < kChecksumBlockBytes; j += kStride) {
    for (int r = 0; r < kRegs; ++r) {
      const __m256i w = _mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(block + j + 32 * r));
      __m256i x = _mm256_xor_si256(l[r], w);
      x = _mm256_add_epi64(x, _mm256_mul_epu32(x, k1));
      x = _mm256_shuffle_epi32(x, 0xb1);  // Swap each lane's halves.
      l[r] = _mm256_add_epi64(x, _mm256_mul_epu32(x, k2));
    }
  }
  for (int r = 0; r < kRegs; ++r) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(lanes + 4 * r), l[r]);
  }
}

__attribute__((target("avx2"))) uint64_t BlocksAvx2(const std::byte* p,
                                                    size_t blocks, uint64_t h) {
  return FoldBlocks(
      p, blocks, h,
      [](const std::byte* block, uint64_t* lanes)
          __attribute__((target("avx2"))) { BlockLanesAvx2(block, lanes); });
}
#endif

using BlocksFn = uint64_t (*)(const std::byte*, size_t, uint64_t);

// The kernel of `path`, or nullptr where this CPU (or build) has none.
BlocksFn BlocksOf(ChecksumPath path) {
  switch (path) {
    case ChecksumPath::kPortable:
      return BlocksPortable;
    case ChecksumPath::kAvx2:
#ifdef EPLB_CHECKSUM_AVX2
      return __builtin_cpu_supports("avx2") ? BlocksAvx2 : nullptr;
#else
      return nullptr;
#endif
  }
  return nullptr;
}

BlocksFn ChooseBlocks() {
  const BlocksFn avx2 = BlocksOf(ChecksumPath::kAvx2);
  return avx2 != nullptr ? avx2 : BlocksPortable;
}

// Chosen once, before main (no guard on the hot path).
const BlocksFn kBlocks = ChooseBlocks();

uint64_t Checksum(std::span<const std::byte> bytes, uint64_t seed,
                  BlocksFn blocks_fn) {
  const std::byte* p = bytes.data();
  const size_t n = bytes.size();
  const size_t blocks = n / kChecksumBlockBytes;
  uint64_t h = blocks > 0 ? blocks_fn(p, blocks, seed) : seed;
  size_t i = blocks * kChecksumBlockBytes;
  for (; i + 8 <= n; i += 8) h = Step(h, Load64(p + i));
  for (; i < n; ++i) {
    h = (h ^ static_cast<uint64_t>(p[i])) * kFnvPrime;
  }
  return h;
}

}  // namespace

uint64_t ChecksumBytesPortable(std::span<const std::byte> bytes,
                               uint64_t seed) {
  return Checksum(bytes, seed, BlocksPortable);
}

bool ChecksumPathAvailable(ChecksumPath path) {
  return BlocksOf(path) != nullptr;
}

uint64_t ChecksumBytesVia(ChecksumPath path, std::span<const std::byte> bytes,
                          uint64_t seed) {
  const BlocksFn fn = BlocksOf(path);
  return Checksum(bytes, seed, fn != nullptr ? fn : BlocksPortable);
}

uint64_t ChecksumBytes(std::span<const std::byte> bytes, uint64_t seed) {
  // Before main, another static initialiser could see it unset.
  return Checksum(bytes, seed, kBlocks != nullptr ? kBlocks : ChooseBlocks());
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
