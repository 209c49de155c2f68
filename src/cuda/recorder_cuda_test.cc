// DeviceHeatRecorder against the host HeatRecorder, exactly. The tests that
// need a GPU skip without one (this file's tests carry the `gpu` label).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <random>
#include <vector>

#include "cuda/device_array_test_util.h"
#include "eplb/cuda/recorder.h"

namespace eplb::cuda {
namespace {

#define SKIP_WITHOUT_GPU() \
  if (!DeviceAvailable()) GTEST_SKIP() << "no CUDA device"

std::unique_ptr<HeatRecorder> HostRecorder(int layers, int experts, int slots) {
  HeatRecorderOptions o;
  o.num_layers = layers;
  o.num_experts = experts;
  o.num_slots = slots;
  o.ring_steps = 8;
  return *HeatRecorder::Create(o);
}

DeviceHeatRecorderOptions Options(int layers, int experts, int slots,
                                  int staging_steps = 8) {
  DeviceHeatRecorderOptions o;
  o.num_layers = layers;
  o.num_experts = experts;
  o.num_slots = slots;
  o.staging_steps = staging_steps;
  return o;
}

TEST(DeviceHeatRecorderTest, CreateRejectsBadOptionsWithTheField) {
  auto host = HostRecorder(2, 8, 4);
  DeviceHeatRecorderOptions o = Options(2, 8, 4, /*staging_steps=*/1);
  auto bad = DeviceHeatRecorder::Create(o, host.get());
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().ToString().find("staging_steps = 1"),
            std::string::npos);
  o.staging_steps = 4;
  o.num_slots = 5;  // The host recorder has 4.
  bad = DeviceHeatRecorder::Create(o, host.get());
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().ToString().find("2 layers x 4 slots"),
            std::string::npos);
  o.num_slots = 4;
  EXPECT_FALSE(DeviceHeatRecorder::Create(o, nullptr).ok());
  o.max_blocks = -1;
  bad = DeviceHeatRecorder::Create(o, host.get());
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().ToString().find("max_blocks = -1"), std::string::npos);
}

TEST(DeviceHeatRecorderTest, WithoutADeviceCreateSaysUnavailable) {
  if (DeviceAvailable()) GTEST_SKIP() << "a CUDA device is present";
  auto host = HostRecorder(1, 4, 4);
  auto r = DeviceHeatRecorder::Create(Options(1, 4, 4), host.get());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable);
}

// Random router output with bad ids mixed in, through a log2phy row with an
// unmapped expert and an entry that is no slot, step after step: the device
// recorder (drained into its own host recorder) and the host recorder fed
// the same ids give bit-identical snapshots.
template <typename Id>
void CompareWithHost(int slots, int max_blocks = 0) {
  const int layers = 3, experts = 64;
  auto reference = HostRecorder(layers, experts, slots);
  auto fed = HostRecorder(layers, experts, slots);
  DeviceHeatRecorderOptions options = Options(layers, experts, slots);
  options.max_blocks = max_blocks;
  auto device = DeviceHeatRecorder::Create(options, fed.get());
  ASSERT_TRUE(device.ok()) << device.status().ToString();
  std::vector<int32_t> log2phy(experts);
  for (int e = 0; e < experts; ++e) log2phy[e] = (e * 7) % slots;
  log2phy[5] = -1;     // Unmapped.
  log2phy[6] = slots;  // No slot.
  DeviceArray<int32_t> d_log2phy(log2phy);
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  std::mt19937_64 rng(11);
  for (int step = 0; step < 12; ++step) {
    for (int l = 0; l < layers; ++l) {
      std::vector<Id> ids(1 + rng() % 5000);
      for (Id& id : ids) {
        const uint64_t pick = rng() % 100;
        id = pick == 0   ? Id{-1}
             : pick == 1 ? static_cast<Id>(experts + rng() % 9)
             : pick == 2 ? std::numeric_limits<Id>::min()
                         : static_cast<Id>(rng() % (pick < 40 ? 4 : experts));
      }
      reference->RecordTopk(l, ids, log2phy);
      DeviceArray<Id> d_ids(ids);
      (*device)->RecordTopk(l, d_ids.data, static_cast<int64_t>(ids.size()),
                            d_log2phy.data, stream);
      ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    }
    const int64_t tokens = 1 + step;
    reference->EndStep(tokens);
    (*device)->EndStep(tokens, stream);
    if (step % 3 == 2) (*device)->Drain();  // Not every step.
  }
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  (*device)->Drain();
  ASSERT_TRUE((*device)->status().ok()) << (*device)->status().ToString();
  EXPECT_EQ((*device)->merged_steps(), 0);
  const HeatSnapshot want = reference->Snapshot();
  const HeatSnapshot got = fed->Snapshot();
  EXPECT_EQ(got.steps_counted, want.steps_counted);
  EXPECT_EQ(got.window, want.window);
  EXPECT_EQ(got.num_samples, want.num_samples);
  EXPECT_EQ(got.samples, want.samples);
  EXPECT_EQ(got.dropped_ids, want.dropped_ids);
  cudaStreamDestroy(stream);
}

TEST(DeviceHeatRecorderTest, Int32IdsMatchTheHostRecorder) {
  SKIP_WITHOUT_GPU();
  CompareWithHost<int32_t>(40);
}

TEST(DeviceHeatRecorderTest, Int64IdsMatchTheHostRecorder) {
  SKIP_WITHOUT_GPU();
  CompareWithHost<int64_t>(40);
}

TEST(DeviceHeatRecorderTest, OneOrThreeBlocksCountAlike) {
  SKIP_WITHOUT_GPU();
  CompareWithHost<int32_t>(40, /*max_blocks=*/1);
  CompareWithHost<int64_t>(20000, /*max_blocks=*/3);
}

TEST(DeviceHeatRecorderTest, ManySlotsCountInGlobalMemoryAlike) {
  SKIP_WITHOUT_GPU();
  CompareWithHost<int32_t>(20000);  // Beyond a block's shared histogram.
}

TEST(DeviceHeatRecorderTest, UndrainedStepsMergeAndNothingIsLost) {
  SKIP_WITHOUT_GPU();
  auto fed = HostRecorder(1, 8, 8);
  auto device = DeviceHeatRecorder::Create(Options(1, 8, 8, 2), fed.get());
  ASSERT_TRUE(device.ok()) << device.status().ToString();
  std::vector<int32_t> log2phy = {0, 1, 2, 3, 4, 5, 6, 7};
  DeviceArray<int32_t> d_log2phy(log2phy);
  DeviceArray<int32_t> d_ids(std::vector<int32_t>{3, 3, 7});
  for (int step = 0; step < 5; ++step) {
    (*device)->RecordTopk(0, d_ids.data, 3, d_log2phy.data, nullptr);
    (*device)->EndStep(1, nullptr);
  }
  // Two steps staged, three merged into the step in progress.
  EXPECT_EQ((*device)->merged_steps(), 3);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ((*device)->Drain(), 2);
  (*device)->EndStep(1, nullptr);  // The merged counts go out now.
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ((*device)->Drain(), 1);
  const HeatSnapshot snap = fed->Snapshot();
  EXPECT_EQ(snap.window[3], 10);  // 5 steps x 2.
  EXPECT_EQ(snap.window[7], 5);
}

TEST(DeviceHeatRecorderTest, RecordTopkReplaysFromACapturedGraph) {
  SKIP_WITHOUT_GPU();
  auto fed = HostRecorder(1, 8, 8);
  auto device = DeviceHeatRecorder::Create(Options(1, 8, 8), fed.get());
  ASSERT_TRUE(device.ok()) << device.status().ToString();
  DeviceArray<int32_t> d_log2phy(std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7});
  DeviceArray<int32_t> d_ids(std::vector<int32_t>{1, 2, 2});
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal),
            cudaSuccess);
  (*device)->RecordTopk(0, d_ids.data, 3, d_log2phy.data, stream);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  (*device)->EndStep(1, stream);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ((*device)->Drain(), 1);
  const HeatSnapshot snap = fed->Snapshot();
  EXPECT_EQ(snap.window[1], 2);
  EXPECT_EQ(snap.window[2], 4);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

}  // namespace
}  // namespace eplb::cuda
