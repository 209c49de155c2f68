// DeviceTokenMapper against BalancedDispatcher::MapTokens, id for id, and
// DeviceQuotaSolver against BalancedDispatcher::ComputeQuotas, slot for slot
// (needs a GPU: skips without one; the argument checks run everywhere).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cuda/device_array_test_util.h"
#include "cuda/quota_solve.h"
#include "eplb/cuda/dispatch.h"
#include "eplb/cuda/recorder.h"
#include "eplb/dispatch.h"
#include "eplb/placement.h"
#include "eplb/status.h"
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

TEST(DeviceQuotaSolverTest, CreateRejectsBadShapesBeforeLookingForADevice) {
  for (const auto& [e, r, k] :
       {std::tuple{0, 8, 9}, std::tuple{64, 0, 9}, std::tuple{64, 8, 0},
        std::tuple{64, 4, 9}, std::tuple{8, 8, 9}}) {
    auto bad = DeviceQuotaSolver::Create(e, r, k);
    ASSERT_FALSE(bad.ok());
    EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(bad.status().ToString().find(std::to_string(e) + " experts on " +
                                           std::to_string(r) + " x " +
                                           std::to_string(k)),
              std::string::npos)
        << bad.status().ToString();
  }
  if (!DeviceAvailable()) {
    auto none = DeviceQuotaSolver::Create(64, 8, 9);
    ASSERT_FALSE(none.ok());
    EXPECT_EQ(none.status().code(), StatusCode::kUnavailable);
  }
}

// Counts of one step: a few hot experts, many cold, some zero.
std::vector<int64_t> SkewedCounts(int e, std::mt19937_64& rng) {
  std::vector<int64_t> counts(e);
  const int64_t scale = 1 + static_cast<int64_t>(rng() % 4000);
  for (int x = 0; x < e; ++x) {
    const uint64_t pick = rng() % 10;
    counts[x] = pick == 0 ? 0
                : x < 8   ? static_cast<int64_t>(rng() % (8 * scale))
                          : static_cast<int64_t>(rng() % scale);
  }
  return counts;
}

// The solver's phases run in plain loops on the host (no GPU needed): the
// graph and the flow ported for the kernel give the host dispatcher's
// quotas and largest load, slot for slot.
TEST(DeviceQuotaSolverTest, PortedPhasesEqualTheHostDispatcherWithoutAGpu) {
  std::mt19937_64 rng(32);
  for (const auto& [e, r, k] :
       {std::tuple{16, 4, 5}, std::tuple{256, 32, 9}, std::tuple{64, 8, 9},
        std::tuple{8, 8, 1}, std::tuple{16, 8, 4}, std::tuple{12, 12, 3}}) {
    SCOPED_TRACE(std::to_string(e) + " experts, " + std::to_string(r) + " x " +
                 std::to_string(k));
    const internal::QuotaGraph shape(e, r, r * k);
    std::vector<int32_t> graph(shape.size);
    const internal::HostQuotaScratch scratch(shape);
    const internal::QuotaScratch& w = scratch.view();
    BalancedDispatcher host(e, r, k);
    for (int trial = 0; trial < 40; ++trial) {
      SCOPED_TRACE("trial " + std::to_string(trial));
      const std::vector<int32_t> layer = Layer(e, r, k, rng);
      host.SetPlacement(layer);
      ASSERT_TRUE(
          internal::BuildQuotaGraph(layer, shape, k, graph.data()).ok());
      for (int step = 0; step < 10; ++step) {
        const std::vector<int64_t> counts = SkewedCounts(e, rng);
        std::vector<int64_t> want(r * k), got(r * k, -7);
        const int64_t want_max = host.ComputeQuotas(counts, want);
        EXPECT_EQ(internal::SolveQuotasOnHost(graph.data(), shape, w,
                                              counts.data(), got.data()),
                  want_max);
        EXPECT_EQ(got, want);
      }
    }
    // A negative count: every quota 0, -1 (the host's precondition,
    // reported instead of a crash).
    std::vector<int64_t> counts(e, 3), got(r * k, -7);
    counts[e - 1] = -1;
    EXPECT_EQ(internal::SolveQuotasOnHost(graph.data(), shape, w, counts.data(),
                                          got.data()),
              -1);
    EXPECT_EQ(got, std::vector<int64_t>(r * k, 0));
  }
}

TEST(DeviceQuotaSolverTest, BadPlacementsNameTheSlotExpertOrRank) {
  const internal::QuotaGraph shape(4, 2, 6);
  std::vector<int32_t> graph(shape.size);
  const std::vector<std::pair<std::vector<int32_t>, std::string>> bad = {
      {{0, 1, 2, 3, 0}, "placement of 5 slots: must have 6"},
      {{0, 1, 2, 3, 0, 4}, "slot 5 holds expert 4"},
      {{0, 1, -1, 3, 0, 2}, "slot 2 holds expert -1"},
      {{0, 1, 2, 0, 1, 2}, "expert 3 has no replica"},
      {{0, 0, 1, 2, 3, 1}, "expert 0 appears twice on rank 0"},
  };
  for (const auto& [layer, message] : bad) {
    const Status st = internal::BuildQuotaGraph(layer, shape, 3, graph.data());
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << message;
    EXPECT_NE(st.ToString().find(message), std::string::npos) << st.ToString();
  }
  const std::vector<int32_t> good = {0, 1, 2, 3, 0, 1};
  EXPECT_TRUE(internal::BuildQuotaGraph(good, shape, 3, graph.data()).ok());
}

TEST(DeviceQuotaSolverTest, QuotasAndMaxLoadEqualTheHostDispatchers) {
  if (!DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  std::mt19937_64 rng(30);
  // Small, DeepSeek-V3-shaped, and one slot per rank (no replicas).
  for (const auto& [e, r, k] : {std::tuple{16, 4, 5}, std::tuple{256, 32, 9},
                                std::tuple{64, 8, 9}, std::tuple{8, 8, 1}}) {
    SCOPED_TRACE(std::to_string(e) + " experts, " + std::to_string(r) + " x " +
                 std::to_string(k));
    auto solver = DeviceQuotaSolver::Create(e, r, k);
    ASSERT_TRUE(solver.ok()) << solver.status().ToString();
    DeviceArray<int64_t> d_counts(e), d_quota(r * k), d_max(1);
    BalancedDispatcher host(e, r, k);
    for (int trial = 0; trial < 20; ++trial) {
      SCOPED_TRACE("trial " + std::to_string(trial));
      const std::vector<int32_t> layer = Layer(e, r, k, rng);
      host.SetPlacement(layer);
      ASSERT_TRUE((*solver)->SetPlacement(layer, stream).ok());
      for (int step = 0; step < 5; ++step) {
        const std::vector<int64_t> counts = SkewedCounts(e, rng);
        std::vector<int64_t> want(r * k);
        const int64_t want_max = host.ComputeQuotas(counts, want);
        d_counts.Upload(counts);
        ASSERT_TRUE(
            (*solver)
                ->Compute(d_counts.data, d_quota.data, d_max.data, stream)
                .ok());
        ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
        EXPECT_EQ(d_quota.Download(r * k), want);
        EXPECT_EQ(d_max.Download(1)[0], want_max);
      }
    }
  }
  cudaStreamDestroy(stream);
}

TEST(DeviceQuotaSolverTest, BadPlacementsAndCallsAreErrorsNotCrashes) {
  if (!DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  auto solver = DeviceQuotaSolver::Create(4, 2, 3);
  ASSERT_TRUE(solver.ok()) << solver.status().ToString();
  DeviceArray<int64_t> d_counts(std::vector<int64_t>{1, 2, 3, 4});
  DeviceArray<int64_t> d_quota(6);
  Status early =
      (*solver)->Compute(d_counts.data, d_quota.data, nullptr, nullptr);
  EXPECT_EQ(early.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(early.ToString().find("before SetPlacement"), std::string::npos);
  const std::vector<int32_t> twice = {0, 0, 1, 2, 3, 1};
  const Status st = (*solver)->SetPlacement(twice, nullptr);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.ToString().find("expert 0 appears twice on rank 0"),
            std::string::npos)
      << st.ToString();
  const std::vector<int32_t> good = {0, 1, 2, 3, 0, 1};
  ASSERT_TRUE((*solver)->SetPlacement(good, nullptr).ok());
  EXPECT_EQ((*solver)->Compute(nullptr, d_quota.data, nullptr, nullptr).code(),
            StatusCode::kInvalidArgument);
  // A negative count: every quota 0, max_load -1 (the host's precondition,
  // reported on the device instead of a crash).
  DeviceArray<int64_t> d_bad(std::vector<int64_t>{1, -2, 3, 4}), d_max(1);
  ASSERT_TRUE(
      (*solver)->Compute(d_bad.data, d_quota.data, d_max.data, nullptr).ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(d_quota.Download(6), std::vector<int64_t>(6, 0));
  EXPECT_EQ(d_max.Download(1)[0], -1);
}

// `n` skewed ids (a quarter to a third on the 8 hot experts), their counts,
// and what the host dispatcher makes of them.
struct HostStep {
  std::vector<int32_t> ids;
  std::vector<int64_t> counts, quota;
  std::vector<int32_t> want;
};
HostStep MakeHostStep(BalancedDispatcher& host, int e, int s, size_t n,
                      int hot_one_in, std::mt19937_64& rng) {
  HostStep h{std::vector<int32_t>(n), std::vector<int64_t>(e, 0),
             std::vector<int64_t>(s), std::vector<int32_t>(n)};
  for (int32_t& id : h.ids) {
    id = static_cast<int32_t>(rng() % (rng() % hot_one_in == 0 ? 8 : e));
    ++h.counts[id];
  }
  host.ComputeQuotas(h.counts, h.quota);
  host.MapTokens(h.ids, h.want);
  return h;
}

// Counts -> quotas -> table -> mapping, all on the device, equals the host's
// ComputeQuotas + MapTokens.
TEST(DeviceQuotaSolverTest, DevicePipelineMapsAsTheHostDispatcher) {
  if (!DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  const int e = 256, r = 32, k = 9, s = r * k;
  std::mt19937_64 rng(31);
  auto solver = DeviceQuotaSolver::Create(e, r, k);
  ASSERT_TRUE(solver.ok()) << solver.status().ToString();
  auto mapper = DeviceTokenMapper::Create(e, s, 1 << 16);
  ASSERT_TRUE(mapper.ok()) << mapper.status().ToString();
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  DeviceArray<int64_t> d_counts(e), d_quota(s);
  DeviceArray<int32_t> d_ids(1 << 16), d_out(1 << 16);
  BalancedDispatcher host(e, r, k);
  for (int trial = 0; trial < 8; ++trial) {
    SCOPED_TRACE("trial " + std::to_string(trial));
    const std::vector<int32_t> layer = Layer(e, r, k, rng);
    const LayerRouting routing =
        BuildLayerRouting(layer, e, MakeTopology(e, r, k).value());
    host.SetPlacement(layer);
    ASSERT_TRUE((*solver)->SetPlacement(layer, stream).ok());
    // Two steps per placement: the second reuses the replica lists.
    for (int step = 0; step < 2; ++step) {
      SCOPED_TRACE("step " + std::to_string(step));
      const size_t n = 1 + rng() % ((1 << 16) - 1);
      const HostStep h = MakeHostStep(host, e, s, n, 3, rng);
      const std::vector<int32_t>& ids = h.ids;
      const std::vector<int32_t>& want = h.want;
      d_counts.Upload(h.counts);
      d_ids.Upload(ids);
      ASSERT_TRUE((*solver)
                      ->Compute(d_counts.data, d_quota.data, nullptr, stream)
                      .ok());
      ASSERT_TRUE(
          (*mapper)->SetQuotasOnDevice(routing, d_quota.data, stream).ok());
      ASSERT_TRUE((*mapper)
                      ->Map(d_ids.data, static_cast<int64_t>(ids.size()),
                            nullptr, d_out.data, stream)
                      .ok());
      ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
      EXPECT_EQ(d_out.Download(ids.size()), want);
    }
  }
  const LayerRouting routing =
      BuildLayerRouting(Layer(e, r, k, rng), e, MakeTopology(e, r, k).value());
  EXPECT_EQ((*mapper)->SetQuotasOnDevice(routing, nullptr, stream).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(
      (*mapper)->SetQuotasOnDevice(LayerRouting{}, d_quota.data, stream).code(),
      StatusCode::kInvalidArgument);
  cudaStreamDestroy(stream);
}

// On an unchanged placement the layer-step is kernels only, so an engine
// can capture it in a CUDA graph and replay it on each step's counts and
// ids (in the same device buffers).
TEST(DeviceQuotaSolverTest, LayerStepReplaysFromACapturedGraph) {
  if (!DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  const int e = 256, r = 32, k = 9, s = r * k, n = 16384 * 8;
  std::mt19937_64 rng(33);
  auto solver = DeviceQuotaSolver::Create(e, r, k);
  ASSERT_TRUE(solver.ok()) << solver.status().ToString();
  auto mapper = DeviceTokenMapper::Create(e, s, n);
  ASSERT_TRUE(mapper.ok()) << mapper.status().ToString();
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  DeviceArray<int64_t> d_counts(e), d_quota(s);
  DeviceArray<int32_t> d_ids(n), d_out(n);
  const std::vector<int32_t> layer = Layer(e, r, k, rng);
  const LayerRouting routing =
      BuildLayerRouting(layer, e, MakeTopology(e, r, k).value());
  BalancedDispatcher host(e, r, k);
  host.SetPlacement(layer);
  ASSERT_TRUE((*solver)->SetPlacement(layer, stream).ok());
  auto step = [&] {
    EXPECT_TRUE(
        (*solver)->Compute(d_counts.data, d_quota.data, nullptr, stream).ok());
    EXPECT_TRUE(
        (*mapper)->SetQuotasOnDevice(routing, d_quota.data, stream).ok());
    EXPECT_TRUE(
        (*mapper)->Map(d_ids.data, n, nullptr, d_out.data, stream).ok());
  };
  // One step outside the graph uploads the replica lists.
  d_counts.Upload(std::vector<int64_t>(e, 0));
  d_ids.Upload(std::vector<int32_t>(n, 0));
  step();
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal),
            cudaSuccess);
  step();
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    const HostStep h = MakeHostStep(host, e, s, n, 4, rng);
    d_counts.Upload(h.counts);
    d_ids.Upload(h.ids);
    ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    EXPECT_EQ(d_quota.Download(s), h.quota);
    EXPECT_EQ(d_out.Download(n), h.want);
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

}  // namespace
}  // namespace eplb::cuda
