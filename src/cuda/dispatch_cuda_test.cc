// DeviceTokenMapper against BalancedDispatcher::MapTokens, id for id (needs
// a GPU: skips without one; the argument checks run everywhere).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "cuda/device_array_test_util.h"
#include "eplb/cuda/dispatch.h"
#include "eplb/cuda/recorder.h"
#include "eplb/dispatch.h"
#include "eplb/placement.h"
#include "eplb/topology.h"

namespace eplb::cuda {
namespace {

TEST(DeviceTokenMapperTest, CreateRejectsBadShapesWithTheField) {
  auto bad = DeviceTokenMapper::Create(0, 8, 16);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().ToString().find("num_experts = 0"), std::string::npos);
  bad = DeviceTokenMapper::Create(8, 4, 16);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().ToString().find("num_slots = 4"), std::string::npos);
  bad = DeviceTokenMapper::Create(8, 8, 0);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().ToString().find("max_ids = 0"), std::string::npos);
}

// A valid layer of R ranks x K slots: every expert once, then hot experts
// replicated on ranks that do not hold them.
std::vector<int32_t> Layer(int e, int r, int k, std::mt19937_64& rng) {
  for (;;) {
    std::vector<int32_t> layer(static_cast<size_t>(r) * k);
    std::iota(layer.begin(), layer.begin() + e, 0);
    for (size_t i = e; i < layer.size(); ++i) {
      layer[i] = static_cast<int32_t>(rng() % 8);  // Hot ones replicated.
    }
    std::shuffle(layer.begin(), layer.end(), rng);
    bool ok = true;
    for (int q = 0; q < r && ok; ++q) {
      std::vector<int32_t> rank(layer.begin() + q * k,
                                layer.begin() + (q + 1) * k);
      std::sort(rank.begin(), rank.end());
      ok = std::adjacent_find(rank.begin(), rank.end()) == rank.end();
    }
    if (ok) return layer;
  }
}

template <typename Id>
void CompareWithHost(bool with_offsets) {
  const int e = 64, r = 8, k = 9, s = r * k;
  std::mt19937_64 rng(with_offsets ? 21 : 20);
  auto mapper = DeviceTokenMapper::Create(e, s, 40000);
  ASSERT_TRUE(mapper.ok()) << mapper.status().ToString();
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  DeviceArray<Id> d_ids(40000), d_out(40000);
  DeviceArray<int64_t> d_offsets(e);
  for (int trial = 0; trial < 6; ++trial) {
    SCOPED_TRACE("trial " + std::to_string(trial));
    const std::vector<int32_t> layer = Layer(e, r, k, rng);
    const LayerRouting routing =
        BuildLayerRouting(layer, e, MakeTopology(e, r, k).value());
    BalancedDispatcher host(e, r, k);
    host.SetPlacement(layer);
    // Ids: skewed, some bad; the counts the quotas come from are the good
    // ids' counts, sometimes off by a few (a miscount must stay safe).
    std::vector<Id> ids(1 + rng() % 39999);
    std::vector<int64_t> counts(e, 0);
    for (Id& id : ids) {
      const uint64_t pick = rng() % 100;
      id = pick == 0   ? Id{-1}
           : pick == 1 ? static_cast<Id>(e + rng() % 5)
           : pick == 2 ? std::numeric_limits<Id>::max()
                       : static_cast<Id>(rng() % (pick < 50 ? 6 : e));
      if (id >= 0 && id < e) ++counts[id];
    }
    if (trial % 2 == 1) counts[rng() % e] += 7;
    std::vector<int64_t> quota(s);
    host.ComputeQuotas(counts, quota);
    std::vector<int64_t> offsets(e, 0);
    if (with_offsets) {
      for (int64_t& o : offsets) o = static_cast<int64_t>(rng() % 50);
    }
    std::vector<Id> want(ids.size());
    if (with_offsets) {
      host.MapTokens(ids, offsets, want);
    } else {
      host.MapTokens(ids, want);
    }
    ASSERT_TRUE((*mapper)->SetQuotas(routing, quota, stream).ok());
    d_ids.Upload(ids);
    d_offsets.Upload(offsets);
    ASSERT_TRUE((*mapper)
                    ->Map(d_ids.data, static_cast<int64_t>(ids.size()),
                          with_offsets ? d_offsets.data : nullptr, d_out.data,
                          stream)
                    .ok());
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    const std::vector<Id> got = d_out.Download(ids.size());
    EXPECT_EQ(got, want);
  }
  cudaStreamDestroy(stream);
}

TEST(DeviceTokenMapperTest, Int32IdsMapAsTheHostDispatcherMapsThem) {
  if (!DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  CompareWithHost<int32_t>(false);
}

TEST(DeviceTokenMapperTest, Int64IdsWithOffsetsMapAsTheHostDispatcher) {
  if (!DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  CompareWithHost<int64_t>(true);
}

}  // namespace
}  // namespace eplb::cuda
