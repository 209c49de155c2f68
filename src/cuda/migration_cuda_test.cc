// DeviceMigration: copies land and verify against the host's checksum, a
// wrong checksum blocks the commit, and the commit rewrites the slots and
// the routing table on the compute stream (needs a GPU: skips without one;
// the argument checks run everywhere they can).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstddef>
#include <random>
#include <span>
#include <vector>

#include "cuda/device_array_test_util.h"
#include "eplb/cuda/migration.h"
#include "eplb/cuda/recorder.h"
#include "eplb/weights.h"

namespace eplb::cuda {
namespace {

TEST(DeviceMigrationTest, BadSizesAreRejected) {
  EXPECT_EQ(DeviceMigration::Create(0, 64, 8).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(DeviceMigration::Create(4, 0, 8).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(DeviceMigration::Create(4, 64, 0).status().code(),
            StatusCode::kInvalidArgument);
  for (int blocks : {-1, 65536}) {
    const Status bad = DeviceMigration::Create(4, 64, 8, blocks).status();
    EXPECT_EQ(bad.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(bad.message().find("checksum_blocks = " + std::to_string(blocks)),
              std::string::npos)
        << bad.message();
  }
  if (!DeviceAvailable()) {
    EXPECT_EQ(DeviceMigration::Create(4, 64, 8).status().code(),
              StatusCode::kUnavailable);
  }
}

std::vector<std::byte> RandomBytes(std::mt19937_64& rng, size_t n) {
  std::vector<std::byte> v(n);
  for (std::byte& b : v) b = static_cast<std::byte>(rng());
  return v;
}

void WaitDone(DeviceMigration& m) {
  ASSERT_EQ(cudaStreamSynchronize(m.side_stream()), cudaSuccess);
  ASSERT_TRUE(m.Done());
}

TEST(DeviceMigrationTest, CopiesLandVerifiedAndCommitSwitchesTheTable) {
  if (!DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  std::mt19937_64 rng(11);
  // Sizes around the checksum's block, one empty.
  const std::vector<size_t> sizes = {kChecksumBlockBytes * 3 + 5, 17, 0,
                                     kChecksumBlockBytes};
  std::vector<std::vector<std::byte>> host;
  std::vector<std::unique_ptr<DeviceArray<std::byte>>> src, staging, slot;
  std::vector<DeviceCopy> copies;
  for (size_t i = 0; i < sizes.size(); ++i) {
    host.push_back(RandomBytes(rng, sizes[i]));
    src.push_back(std::make_unique<DeviceArray<std::byte>>(host.back()));
    staging.push_back(std::make_unique<DeviceArray<std::byte>>(sizes[i]));
    slot.push_back(std::make_unique<DeviceArray<std::byte>>(sizes[i]));
    // Half the sources' checksums are known, half computed on the device.
    copies.push_back({src[i]->data, staging[i]->data, sizes[i],
                      i % 2 == 0 ? ChecksumBytes(host[i]) : 0});
  }
  auto m = DeviceMigration::Create(8, 4 * kChecksumBlockBytes, 16);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  DeviceMigration& mig = **m;
  EXPECT_FALSE(mig.Done());
  ASSERT_TRUE(mig.Start(copies).ok());
  WaitDone(mig);
  ASSERT_TRUE(mig.Verified());
  for (size_t i = 0; i < sizes.size(); ++i) {
    EXPECT_EQ(staging[i]->Download(sizes[i]), host[i]) << "copy " << i;
    EXPECT_EQ(mig.landed_checksum(i), ChecksumBytes(host[i]));
    EXPECT_EQ(mig.source_checksum(i), ChecksumBytes(host[i]));
  }

  // The commit, on a compute stream: staging into the slots, a new table.
  cudaStream_t compute = nullptr;
  ASSERT_EQ(cudaStreamCreate(&compute), cudaSuccess);
  DeviceArray<int32_t> table(std::vector<int32_t>(16, -1));
  std::vector<int32_t> next(16);
  for (int i = 0; i < 16; ++i) next[i] = 15 - i;
  std::vector<SlotWrite> writes;
  for (size_t i = 0; i < sizes.size(); ++i) {
    writes.push_back({staging[i]->data, slot[i]->data, sizes[i]});
  }
  ASSERT_TRUE(mig.Commit(writes, next, table.data, compute).ok());
  ASSERT_EQ(cudaStreamSynchronize(compute), cudaSuccess);
  EXPECT_EQ(table.Download(16), next);
  for (size_t i = 0; i < sizes.size(); ++i) {
    EXPECT_EQ(slot[i]->Download(sizes[i]), host[i]) << "slot " << i;
  }
  // A table too large, or null: refused, nothing enqueued.
  EXPECT_EQ(
      mig.Commit({}, std::vector<int32_t>(17), table.data, compute).code(),
      StatusCode::kInvalidArgument);
  EXPECT_EQ(mig.Commit({}, next, nullptr, compute).code(),
            StatusCode::kInvalidArgument);
  cudaStreamDestroy(compute);
}

TEST(DeviceMigrationTest, ChecksumsOnOneThreadBlockVerifyTheSame) {
  if (!DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  std::mt19937_64 rng(13);
  // 21 checksum blocks and a tail: each of the one thread block's 8 warps
  // takes several.
  const size_t bytes = 21 * kChecksumBlockBytes + 9;
  const std::vector<std::byte> host = RandomBytes(rng, bytes);
  DeviceArray<std::byte> src(host), staging(bytes);
  auto m = DeviceMigration::Create(1, bytes, 4, /*checksum_blocks=*/1);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  const DeviceCopy copy{src.data, staging.data, bytes, 0};
  ASSERT_TRUE((*m)->Start({&copy, 1}).ok());
  WaitDone(**m);
  ASSERT_TRUE((*m)->Verified());
  EXPECT_EQ((*m)->source_checksum(0), ChecksumBytes(host));
  EXPECT_EQ((*m)->landed_checksum(0), ChecksumBytes(host));
  EXPECT_EQ(staging.Download(bytes), host);
}

TEST(DeviceMigrationTest, AWrongChecksumBlocksTheCommit) {
  if (!DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  std::mt19937_64 rng(5);
  const std::vector<std::byte> bytes =
      RandomBytes(rng, 3 * kChecksumBlockBytes);
  DeviceArray<std::byte> src(bytes), staging(bytes.size());
  auto m = DeviceMigration::Create(2, bytes.size(), 4);
  ASSERT_TRUE(m.ok());
  DeviceMigration& mig = **m;
  // The sender's checksum says something else landed (a corrupted copy).
  const std::vector<DeviceCopy> copies = {
      {src.data, staging.data, bytes.size(), ChecksumBytes(bytes) ^ 1}};
  ASSERT_TRUE(mig.Start(copies).ok());
  WaitDone(mig);
  EXPECT_FALSE(mig.Verified());
  EXPECT_TRUE(mig.Mismatched(0));
  DeviceArray<int32_t> table(std::vector<int32_t>(4, 7));
  EXPECT_EQ(
      mig.Commit({}, std::vector<int32_t>(4, 1), table.data, nullptr).code(),
      StatusCode::kFailedPrecondition);
  EXPECT_EQ(table.Download(4), std::vector<int32_t>(4, 7));
}

TEST(DeviceMigrationTest, OneBatchAtATimeAndArgumentsChecked) {
  if (!DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  DeviceArray<std::byte> a(64), b(64);
  auto m = DeviceMigration::Create(1, 64, 4);
  ASSERT_TRUE(m.ok());
  DeviceMigration& mig = **m;
  const std::vector<DeviceCopy> two = {{a.data, b.data, 8, 0},
                                       {a.data, b.data, 8, 0}};
  EXPECT_EQ(mig.Start(two).code(), StatusCode::kInvalidArgument);
  const std::vector<DeviceCopy> big = {{a.data, b.data, 65, 0}};
  EXPECT_EQ(mig.Start(big).code(), StatusCode::kInvalidArgument);
  const std::vector<DeviceCopy> null = {{nullptr, b.data, 8, 0}};
  EXPECT_EQ(mig.Start(null).code(), StatusCode::kInvalidArgument);
  // A second batch while the first has not been found done: refused.
  const std::vector<DeviceCopy> one = {{a.data, b.data, 64, 0}};
  ASSERT_TRUE(mig.Start(one).ok());
  if (!mig.Done()) {
    EXPECT_EQ(mig.Start(one).code(), StatusCode::kFailedPrecondition);
  }
  WaitDone(mig);
  EXPECT_TRUE(mig.Verified());
  EXPECT_TRUE(mig.Start(one).ok());
  WaitDone(mig);
}

}  // namespace
}  // namespace eplb::cuda
