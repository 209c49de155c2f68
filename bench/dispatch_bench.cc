// Balanced dispatch speed (docs/dispatch.md) in the DeepSeek-V3 shape: E =
// 256 experts on 32 ranks x 9 slots (32 redundant), top-8 routing. The
// placement is the default policy's plan of the shipped prefill_in1024 loads;
// router ids are drawn from the most skewed layer's loads (dsv3_workload.h),
// and a step's counts are the histogram of its ids.
//
// - BM_BalancedQuotas_Dsv3: one layer-step of ComputeQuotas (16 different
//   steps in turn); `max_vs_rr` is the mean over those steps of the balanced
//   max rank load / the round-robin one, `rr_max_vs_mean` and
//   `max_vs_mean` the imbalances (max / mean rank load) of both.
//   BM_BalancedQuotas_Dsv3_AllLayers: every layer in turn, each with its own
//   plan and its aggregate load scaled to the step's tokens.
// - BM_RoundRobinQuotas_Dsv3: RoundRobinQuotas on the same inputs.
// - BM_MapTokens_*_Dsv3: MapTokens of one layer's ids (its AVX-512 loop
//   where the CPU has AVX-512F; `vector_loop` says which ran), and
//   BM_MapTokensScalar_*_Dsv3 its scalar loop for reference;
//   BM_Memcpy_SameIds copies the same bytes, and BM_MapVsMemcpy_* reports
//   `map_vs_memcpy`, the fraction of memcpy throughput that mapping (the
//   default loop) reaches, timed back to back in the same run (the median
//   over iterations).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <vector>

#include "dsv3_workload.h"
#include "eplb/dispatch.h"
#include "eplb/placement.h"
#include "eplb/policy.h"
#include "eplb/topology.h"

namespace {

using eplb_bench::kExperts;
using eplb_bench::kLayers;
using eplb_bench::kRanks;
using eplb_bench::kSlotsPerRank;
using eplb_bench::kTopK;
constexpr int kSlots = kRanks * kSlotsPerRank;
constexpr int kSteps = 16;  // Distinct steps the quota benchmarks cycle.

// The default policy's plan of prefill_in1024, all layers, at 32 x 9.
const eplb::Placement& Dsv3Plan() {
  static const eplb::Placement* const plan = [] {
    const eplb::LoadMatrix load = eplb_bench::Dsv3Prefill1024().Aggregate();
    const eplb::Topology topology =
        *eplb::MakeTopology(kExperts, kRanks, kSlotsPerRank);
    const eplb::Placement initial =
        eplb::Placement::Initial(kLayers, kExperts, topology);
    std::unique_ptr<eplb::Policy> policy = *eplb::CreatePolicy("default");
    auto result = policy->Rebalance({&initial, &load, nullptr, topology}, {});
    if (!result.ok()) {
      std::fprintf(stderr, "dispatch bench: %s\n",
                   result.status().ToString().c_str());
      std::exit(1);
    }
    return new eplb::Placement(std::move(result->placement));
  }();
  return *plan;
}

template <typename Id>
std::vector<int64_t> Histogram(std::span<const Id> ids) {
  std::vector<int64_t> counts(kExperts, 0);
  for (Id e : ids) ++counts[e];
  return counts;
}

// The counts of kSteps steps of `tokens` tokens (seeds 1..kSteps).
std::vector<std::vector<int64_t>> StepCounts(int64_t tokens) {
  std::vector<std::vector<int64_t>> steps;
  for (uint64_t seed = 1; seed <= kSteps; ++seed) {
    steps.push_back(
        Histogram<int32_t>(eplb_bench::RealTopkIds<int32_t>(tokens, seed)));
  }
  return steps;
}

int64_t MaxRankLoad(std::span<const int64_t> slot_quota) {
  int64_t max = 0;
  for (size_t p = 0; p < slot_quota.size(); p += kSlotsPerRank) {
    int64_t load = 0;
    for (int s = 0; s < kSlotsPerRank; ++s) load += slot_quota[p + s];
    max = std::max(max, load);
  }
  return max;
}

// `count` T's in `storage`, starting 2 KiB past `src` modulo 4 KiB. A
// destination just above its source modulo 4 KiB makes loads and stores
// alias in the low address bits: glibc's memcpy (rep movsb) then runs ten
// times slower on some AMD CPUs, which would make the yardstick the thing
// measured. Every destination here keeps that distance from its source.
template <typename T>
T* AwayFrom(const void* src, size_t count, std::vector<char>& storage) {
  storage.assign(count * sizeof(T) + 4096, 0);
  const auto base = reinterpret_cast<uintptr_t>(storage.data());
  const auto from = reinterpret_cast<uintptr_t>(src);
  return reinterpret_cast<T*>(storage.data() + (from + 2048 - base) % 4096);
}

// The routing of a layer of Dsv3Plan() (round robin needs its replica
// lists).
eplb::LayerRouting RoutingOf(std::span<const int32_t> layer) {
  return eplb::BuildLayerRouting(
      layer, kExperts, *eplb::MakeTopology(kExperts, kRanks, kSlotsPerRank));
}

void Tokens(benchmark::internal::Benchmark* b) {
  b->ArgName("tokens")->Arg(8192)->Arg(256);
}

void BM_BalancedQuotas_Dsv3(benchmark::State& state) {
  const std::vector<std::vector<int64_t>> steps = StepCounts(state.range(0));
  const std::span<const int32_t> layer =
      Dsv3Plan().layer(eplb_bench::MostSkewedLayer());
  const eplb::LayerRouting routing = RoutingOf(layer);
  eplb::BalancedDispatcher dispatcher(kExperts, kRanks, kSlotsPerRank);
  dispatcher.SetPlacement(layer);
  std::vector<int64_t> quota(kSlots);
  size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(dispatcher.ComputeQuotas(steps[i], quota));
    benchmark::ClobberMemory();
    i = i + 1 == steps.size() ? 0 : i + 1;
  }
  state.SetItemsProcessed(state.iterations());
  // Quality, outside the timing.
  double vs_rr = 0, rr_imbalance = 0, imbalance = 0;
  std::vector<int64_t> rr(kSlots);
  for (const std::vector<int64_t>& counts : steps) {
    const auto max =
        static_cast<double>(dispatcher.ComputeQuotas(counts, quota));
    eplb::RoundRobinQuotas(routing, counts, rr);
    const auto rr_max = static_cast<double>(MaxRankLoad(rr));
    double mean = 0;
    for (int64_t c : counts) mean += static_cast<double>(c);
    mean /= kRanks;
    vs_rr += max / rr_max;
    rr_imbalance += rr_max / mean;
    imbalance += max / mean;
  }
  state.counters["max_vs_rr"] = vs_rr / kSteps;
  state.counters["rr_max_vs_mean"] = rr_imbalance / kSteps;
  state.counters["max_vs_mean"] = imbalance / kSteps;
}
BENCHMARK(BM_BalancedQuotas_Dsv3)->Apply(Tokens);

void BM_BalancedQuotas_Dsv3_AllLayers(benchmark::State& state) {
  const eplb::LoadTrace& trace = eplb_bench::Dsv3Prefill1024();
  const double ids = static_cast<double>(state.range(0) * kTopK);
  std::vector<eplb::BalancedDispatcher> dispatchers;
  std::vector<std::vector<int64_t>> counts(kLayers);
  for (int l = 0; l < kLayers; ++l) {
    dispatchers.emplace_back(kExperts, kRanks, kSlotsPerRank);
    dispatchers.back().SetPlacement(Dsv3Plan().layer(l));
    std::span<const double> loads = trace.row(0, l);
    double sum = 0;
    for (double v : loads) sum += v;
    for (double v : loads) counts[l].push_back(std::llround(v / sum * ids));
  }
  std::vector<int64_t> quota(kSlots);
  int l = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(dispatchers[l].ComputeQuotas(counts[l], quota));
    benchmark::ClobberMemory();
    l = l + 1 == kLayers ? 0 : l + 1;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_BalancedQuotas_Dsv3_AllLayers)->Apply(Tokens);

void BM_RoundRobinQuotas_Dsv3(benchmark::State& state) {
  const std::vector<std::vector<int64_t>> steps = StepCounts(state.range(0));
  const eplb::LayerRouting routing =
      RoutingOf(Dsv3Plan().layer(eplb_bench::MostSkewedLayer()));
  std::vector<int64_t> quota(kSlots);
  size_t i = 0;
  for (auto _ : state) {
    eplb::RoundRobinQuotas(routing, steps[i], quota);
    benchmark::DoNotOptimize(quota.data());
    benchmark::ClobberMemory();
    i = i + 1 == steps.size() ? 0 : i + 1;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_RoundRobinQuotas_Dsv3)->Apply(Tokens);

// A dispatcher on the most skewed layer's plan with the quotas of `ids`.
template <typename Id>
std::unique_ptr<eplb::BalancedDispatcher> DispatcherFor(
    const std::vector<Id>& ids) {
  auto d = std::make_unique<eplb::BalancedDispatcher>(kExperts, kRanks,
                                                      kSlotsPerRank);
  d->SetPlacement(Dsv3Plan().layer(eplb_bench::MostSkewedLayer()));
  std::vector<int64_t> quota(kSlots);
  d->ComputeQuotas(Histogram<Id>(ids), quota);
  return d;
}

template <typename Id, bool kScalar = false>
void BM_MapTokens(benchmark::State& state) {
  const std::vector<Id> ids = eplb_bench::RealTopkIds<Id>(state.range(0));
  auto dispatcher = DispatcherFor(ids);
  if (kScalar) dispatcher->set_vector_mapping(false);
  state.counters["vector_loop"] = dispatcher->vector_mapping() ? 1 : 0;
  std::vector<char> storage;
  const std::span<Id> out(AwayFrom<Id>(ids.data(), ids.size(), storage),
                          ids.size());
  for (auto _ : state) {
    dispatcher->MapTokens(ids, out);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const auto n = static_cast<int64_t>(ids.size());
  state.SetItemsProcessed(state.iterations() * n);
  state.SetBytesProcessed(state.iterations() * n *
                          static_cast<int64_t>(sizeof(Id)));
}
void BM_MapTokens_Int32_Dsv3(benchmark::State& state) {
  BM_MapTokens<int32_t>(state);
}
BENCHMARK(BM_MapTokens_Int32_Dsv3)->Apply(Tokens);
void BM_MapTokens_Int64_Dsv3(benchmark::State& state) {
  BM_MapTokens<int64_t>(state);
}
BENCHMARK(BM_MapTokens_Int64_Dsv3)->Apply(Tokens);
void BM_MapTokensScalar_Int32_Dsv3(benchmark::State& state) {
  BM_MapTokens<int32_t, true>(state);
}
BENCHMARK(BM_MapTokensScalar_Int32_Dsv3)->Apply(Tokens);
void BM_MapTokensScalar_Int64_Dsv3(benchmark::State& state) {
  BM_MapTokens<int64_t, true>(state);
}
BENCHMARK(BM_MapTokensScalar_Int64_Dsv3)->Apply(Tokens);

// Copies tokens * kTopK * id_bytes bytes: the ids MapTokens reads.
void BM_Memcpy_SameIds(benchmark::State& state) {
  const auto bytes =
      static_cast<size_t>(state.range(0) * kTopK * state.range(1));
  std::vector<char> src(bytes, 1);
  std::vector<char> storage;
  char* dst = AwayFrom<char>(src.data(), bytes, storage);
  for (auto _ : state) {
    std::memcpy(dst, src.data(), bytes);
    benchmark::DoNotOptimize(dst);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(bytes));
}
BENCHMARK(BM_Memcpy_SameIds)
    ->ArgNames({"tokens", "id_bytes"})
    ->Args({8192, 4})
    ->Args({8192, 8})
    ->Args({256, 4})
    ->Args({256, 8});

// Each iteration times a batch of memcpy calls and a batch of MapTokens
// calls over the same ids back to back; `map_vs_memcpy` is the median over
// iterations of memcpy time / map time, robust to the clock and cache drifts
// of a shared machine.
template <typename Id>
void BM_MapVsMemcpy(benchmark::State& state) {
  const std::vector<Id> ids = eplb_bench::RealTopkIds<Id>(state.range(0));
  auto dispatcher = DispatcherFor(ids);
  std::vector<char> out_storage;
  const std::span<Id> out(AwayFrom<Id>(ids.data(), ids.size(), out_storage),
                          ids.size());
  const size_t bytes = ids.size() * sizeof(Id);
  std::vector<char> dst_storage;
  char* dst = AwayFrom<char>(ids.data(), bytes, dst_storage);
  const int batch = static_cast<int>(
      std::max<int64_t>(1, (int64_t{1} << 22) / static_cast<int64_t>(bytes)));
  std::vector<double> ratios;
  using Clock = std::chrono::steady_clock;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    for (int b = 0; b < batch; ++b) {
      std::memcpy(dst, ids.data(), bytes);
      benchmark::DoNotOptimize(dst);
      benchmark::ClobberMemory();
    }
    const auto t1 = Clock::now();
    for (int b = 0; b < batch; ++b) {
      dispatcher->MapTokens(ids, out);
      benchmark::DoNotOptimize(out.data());
      benchmark::ClobberMemory();
    }
    const auto t2 = Clock::now();
    ratios.push_back(std::chrono::duration<double>(t1 - t0).count() /
                     std::chrono::duration<double>(t2 - t1).count());
  }
  std::sort(ratios.begin(), ratios.end());
  state.counters["map_vs_memcpy"] = ratios[ratios.size() / 2];
}
void BM_MapVsMemcpy_Int32(benchmark::State& state) {
  BM_MapVsMemcpy<int32_t>(state);
}
BENCHMARK(BM_MapVsMemcpy_Int32)->Apply(Tokens)->Iterations(101);
void BM_MapVsMemcpy_Int64(benchmark::State& state) {
  BM_MapVsMemcpy<int64_t>(state);
}
BENCHMARK(BM_MapVsMemcpy_Int64)->Apply(Tokens)->Iterations(101);

}  // namespace

BENCHMARK_MAIN();
