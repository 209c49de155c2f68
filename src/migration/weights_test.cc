#include "eplb/weights.h"

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "migration/checksum.h"

namespace eplb {
namespace {

std::vector<std::byte> Pattern(size_t n) {
  std::vector<std::byte> v(n);
  uint64_t x = 12345;
  for (size_t i = 0; i < n; ++i) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    v[i] = static_cast<std::byte>(x >> 56);
  }
  return v;
}

// One expert in rank 0's slot 0, in tensors of the given sizes.
class TensorWeights final : public ExpertWeights {
 public:
  explicit TensorWeights(std::vector<size_t> sizes) {
    for (size_t i = 0; i < sizes.size(); ++i) {
      tensors_.push_back(Pattern(sizes[i] + i));
      tensors_.back().resize(sizes[i]);
    }
  }
  bool Hosts(int rank) const override { return rank == 0; }
  int num_tensors() const override { return static_cast<int>(tensors_.size()); }
  std::span<const std::byte> Slot(int, int, int, int tensor) const override {
    return tensors_[static_cast<size_t>(tensor)];
  }
  int staging_per_rank() const override { return 1; }
  std::span<std::byte> Staging(int, int, int tensor) override {
    return tensors_[static_cast<size_t>(tensor)];
  }
  void CommitStaging(int, int, int, int) override {}

 private:
  std::vector<std::vector<std::byte>> tensors_;
};

TEST(ChecksumTest, ChainsAtMultiplesOfTheBlock) {
  const std::vector<std::byte> v = Pattern(5 * kChecksumBlockBytes + 100);
  const std::span<const std::byte> all(v);
  const uint64_t whole = ChecksumBytes(all);
  for (size_t k = 0; k <= 5; ++k) {
    const size_t at = k * kChecksumBlockBytes;
    EXPECT_EQ(ChecksumBytes(all.subspan(at), ChecksumBytes(all.first(at))),
              whole)
        << "split at " << at;
  }
  // Three pieces.
  const size_t a = kChecksumBlockBytes, b = 3 * kChecksumBlockBytes;
  EXPECT_EQ(
      ChecksumBytes(all.subspan(b), ChecksumBytes(all.subspan(a, b - a),
                                                  ChecksumBytes(all.first(a)))),
      whole);
  EXPECT_EQ(ChecksumBytes({}, 42), 42u);
}

TEST(ChecksumTest, EveryFlippedByteChangesIt) {
  // Two whole blocks (the lanes), then a tail of words and bytes.
  std::vector<std::byte> v = Pattern(2 * kChecksumBlockBytes + 37);
  const uint64_t whole = ChecksumBytes(v);
  for (size_t i = 0; i < v.size(); ++i) {
    for (const std::byte flip : {std::byte{0x01}, std::byte{0x80}}) {
      v[i] ^= flip;
      EXPECT_NE(ChecksumBytes(v), whole) << "byte " << i;
      v[i] ^= flip;
    }
  }
  EXPECT_EQ(ChecksumBytes(v), whole);
}

TEST(ChecksumTest, TwoFlippedTopBitsDoNotCancel) {
  // The top bit of a word (a float's sign bit) flipped in two words of the
  // same lane (256 bytes apart), of two lanes, and in two tail words.
  std::vector<std::byte> v = Pattern(kChecksumBlockBytes + 64);
  const uint64_t whole = ChecksumBytes(v);
  for (const auto& [first, second] :
       {std::pair<size_t, size_t>{7, 263},
        {7, 39},
        {kChecksumBlockBytes + 7, kChecksumBlockBytes + 39}}) {
    v[first] ^= std::byte{0x80};
    v[second] ^= std::byte{0x80};
    EXPECT_NE(ChecksumBytes(v), whole) << "bytes " << first << ", " << second;
    v[first] ^= std::byte{0x80};
    v[second] ^= std::byte{0x80};
  }
}

TEST(ChecksumTest, PinnedValues) {
  // The same on every platform and build: ranks compare them. (From a
  // separate implementation of the definition: tests/checksum_reference.py.)
  EXPECT_EQ(ChecksumBytes({}), kChecksumSeed);
  EXPECT_EQ(ChecksumBytes(Pattern(3)), 9630769788773877726ULL);
  EXPECT_EQ(ChecksumBytes(Pattern(100)), 14265848130499360110ULL);
  EXPECT_EQ(ChecksumBytes(Pattern(3 * kChecksumBlockBytes + 13)),
            3207512996735705163ULL);
}

TEST(ChecksumTest, SimdAndPortableAgree) {
  // Whatever path ChecksumBytes took on this CPU (AVX2 or not), it is the
  // portable definition's value, on whole blocks, tails and odd offsets.
  const std::vector<std::byte> v = Pattern(9 * kChecksumBlockBytes + 77);
  const std::span<const std::byte> all(v);
  for (const size_t at : {size_t{0}, size_t{1}, size_t{8}, size_t{4099}}) {
    for (const size_t n :
         {size_t{0}, size_t{5}, kChecksumBlockBytes,
          4 * kChecksumBlockBytes + 9, 8 * kChecksumBlockBytes}) {
      const auto piece = all.subspan(at, n);
      EXPECT_EQ(ChecksumBytes(piece, 7), ChecksumBytesPortable(piece, 7))
          << "offset " << at << ", " << n << " bytes";
    }
  }
}

TEST(ChecksumTest, EveryKernelThisCpuRunsAgrees) {
  // Each SIMD kernel, not only the one ChecksumBytes chose, gives the
  // portable value.
  const std::vector<std::byte> v = Pattern(9 * kChecksumBlockBytes + 77);
  const std::span<const std::byte> all(v);
  int ran = 0;
  for (ChecksumPath path : {ChecksumPath::kAvx2}) {
    if (!ChecksumPathAvailable(path)) continue;
    ++ran;
    for (const size_t at : {size_t{0}, size_t{3}, size_t{4099}}) {
      for (const size_t n : {kChecksumBlockBytes, 6 * kChecksumBlockBytes + 3,
                             8 * kChecksumBlockBytes + 5}) {
        const auto piece = all.subspan(at, n);
        EXPECT_EQ(ChecksumBytesVia(path, piece, 7),
                  ChecksumBytesPortable(piece, 7))
            << "path " << static_cast<int>(path) << ", offset " << at;
      }
    }
  }
  EXPECT_TRUE(ChecksumPathAvailable(ChecksumPath::kPortable));
  if (ran == 0) GTEST_SKIP() << "no SIMD checksum kernel on this CPU";
}

TEST(ChecksumTest, SlotChecksumChainsTheTensors) {
  TensorWeights w({5000, kChecksumBlockBytes * 2 + 3, 0, 17});
  uint64_t h = kChecksumSeed;
  for (int x = 0; x < w.num_tensors(); ++x) {
    h = ChecksumBytes(w.Slot(0, 0, 0, x), h);
  }
  EXPECT_EQ(SlotChecksum(w, 0, 0, 0), h | 1);
  EXPECT_EQ(StagingChecksum(w, 0, 0), h | 1);
}

TEST(ChecksumTest, CursorGivesSlotChecksumInAnyPieces) {
  const TensorWeights w(
      {5000, kChecksumBlockBytes * 3 + 3, 0, 17, kChecksumBlockBytes});
  const uint64_t want = SlotChecksum(w, 0, 0, 0);
  for (const size_t piece :
       {size_t{0}, size_t{1}, kChecksumBlockBytes, kChecksumBlockBytes + 5,
        2 * kChecksumBlockBytes, std::numeric_limits<size_t>::max()}) {
    SlotChecksumCursor cursor(w, 0, 0, 0);
    int calls = 0;
    while (!cursor.Advance(piece)) {
      ASSERT_LT(++calls, 100) << "piece " << piece;
    }
    EXPECT_TRUE(cursor.done());
    EXPECT_EQ(cursor.value(), want) << "piece " << piece;
  }
  // An expert with no tensors' bytes at all.
  const TensorWeights empty({0});
  SlotChecksumCursor cursor(empty, 0, 0, 0);
  EXPECT_TRUE(cursor.Advance(1));
  EXPECT_EQ(cursor.value(), SlotChecksum(empty, 0, 0, 0));
}

}  // namespace
}  // namespace eplb
