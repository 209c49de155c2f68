// DeviceChecksum against ChecksumBytes, bit for bit (needs a GPU: skips
// without one).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstddef>
#include <random>
#include <span>
#include <vector>

#include "cuda/device_array_test_util.h"
#include "eplb/cuda/checksum.h"
#include "eplb/cuda/recorder.h"
#include "eplb/weights.h"

namespace eplb::cuda {
namespace {

TEST(DeviceChecksumTest, NullPointersAndNegativeBlockCapsAreRejected) {
  EXPECT_FALSE(DeviceChecksum(nullptr, 8, 1, nullptr, nullptr, nullptr).ok());
  // Rejected before anything touches the (here fake) device pointers.
  uint64_t fake = 0;
  const Status negative =
      DeviceChecksum(&fake, 8, 1, &fake, &fake, nullptr, /*max_blocks=*/-1);
  EXPECT_EQ(negative.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(negative.message().find("max_blocks = -1"), std::string::npos)
      << negative.message();
  EXPECT_EQ(DeviceChecksumScratchBytes(0), 8u);
  EXPECT_EQ(DeviceChecksumScratchBytes(3 * kChecksumBlockBytes + 5), 24u);
}

TEST(DeviceChecksumTest, EqualsTheHostChecksumAtEverySizeAndAlignment) {
  if (!DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  std::mt19937_64 rng(3);
  // Up to 20 checksum blocks: more than the 8 warps of one thread block, so
  // a cap of 1 or 2 thread blocks makes each warp take several.
  const size_t max_bytes = 20 * kChecksumBlockBytes + 64;
  std::vector<std::byte> host(max_bytes + 8);
  for (std::byte& b : host) b = static_cast<std::byte>(rng());
  DeviceArray<std::byte> device(host);
  DeviceArray<uint64_t> out(1);
  DeviceArray<std::byte> scratch(DeviceChecksumScratchBytes(max_bytes));
  for (size_t size :
       {size_t{0}, size_t{1}, size_t{7}, size_t{8}, size_t{9},
        kChecksumBlockBytes - 1, kChecksumBlockBytes, kChecksumBlockBytes + 13,
        3 * kChecksumBlockBytes, 17 * kChecksumBlockBytes + 5, max_bytes}) {
    for (size_t offset : {size_t{0}, size_t{3}, size_t{8}}) {
      // As many blocks as the bytes need, and caps that make warps take
      // several checksum blocks in turn.
      for (int max_blocks : {0, 1, 2}) {
        SCOPED_TRACE("size " + std::to_string(size) + " offset " +
                     std::to_string(offset) + " max_blocks " +
                     std::to_string(max_blocks));
        const uint64_t seed = rng();
        ASSERT_TRUE(DeviceChecksum(device.data + offset, size, seed, out.data,
                                   scratch.data, nullptr, max_blocks)
                        .ok());
        const uint64_t got = out.Download(1)[0];
        EXPECT_EQ(got, ChecksumBytes(std::span<const std::byte>(
                                         host.data() + offset, size),
                                     seed));
      }
    }
  }
}

}  // namespace
}  // namespace eplb::cuda
