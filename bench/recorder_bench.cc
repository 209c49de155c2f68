// Heat recorder hot-path speed in the DeepSeek-V3 shape: 58 MoE
// layers, E = 256 experts, 288 slots (32 ranks x 9), top-8 routing. Router
// ids come from fixed-seed generators:
// - "real" (the default cases): drawn from the most skewed layer of
//   DeepSeek-V3's prefill_in1024 (dsv3_workload.h);
// - "stress" (BM_*_Stress): a third of the picks go to 4 experts (each about
//   22x the mean), far more skewed than real routing; hot counters are then
//   read and written back to back, the hard case for counting.
//
// BM_RecordTopk_* counts one layer's ids per iteration; BM_Memcpy_SameBytes
// copies the same number of bytes (tokens * 8 * id_bytes), the yardstick for
// "counting is a fixed-cost add per routed token": compare items/s * id_bytes
// of RecordTopk with bytes/s of the memcpy of equal size, in the same run.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "dsv3_workload.h"
#include "eplb/placement.h"
#include "eplb/recorder.h"
#include "eplb/topology.h"

namespace {

using eplb_bench::kExperts;
using eplb_bench::kLayers;
using eplb_bench::kRanks;
using eplb_bench::kSlotsPerRank;
using eplb_bench::kTopK;

// Real router ids (the default seed), as a generator the benchmarks take.
template <typename Id>
std::vector<Id> RealTopkIds(int64_t tokens) {
  return eplb_bench::RealTopkIds<Id>(tokens);
}

// [tokens][kTopK] router output: distinct experts per token, a third of the
// picks on 4 experts.
template <typename Id>
std::vector<Id> StressTopkIds(int64_t tokens) {
  std::mt19937_64 rng(42);
  const int hot[] = {3, 17, 42, 200};
  std::uniform_int_distribution<int> any(0, kExperts - 1);
  std::uniform_int_distribution<int> pick_hot(0, 3);
  std::bernoulli_distribution is_hot(0.35);
  std::vector<Id> ids;
  ids.reserve(static_cast<size_t>(tokens) * kTopK);
  for (int64_t t = 0; t < tokens; ++t) {
    const size_t begin = ids.size();
    while (ids.size() - begin < kTopK) {
      const Id e = static_cast<Id>(is_hot(rng) ? hot[pick_hot(rng)] : any(rng));
      bool seen = false;
      for (size_t i = begin; i < ids.size(); ++i) seen = seen || ids[i] == e;
      if (!seen) ids.push_back(e);
    }
  }
  return ids;
}

// Rank 0's log2phy of the initial placement (replicas of experts 0..31).
std::vector<int32_t> Rank0Log2Phy() {
  const eplb::Topology topology =
      *eplb::MakeTopology(kExperts, kRanks, kSlotsPerRank);
  const eplb::Placement placement =
      eplb::Placement::Initial(1, kExperts, topology);
  const eplb::LayerRouting routing =
      eplb::BuildLayerRouting(placement.layer(0), kExperts, topology);
  return {routing.log2phy.begin(), routing.log2phy.begin() + kExperts};
}

std::unique_ptr<eplb::HeatRecorder> MakeRecorder(
    eplb::HeatStage stage = eplb::HeatStage::kAll) {
  eplb::HeatRecorderOptions options;
  options.num_layers = kLayers;
  options.num_experts = kExperts;
  options.num_slots = kRanks * kSlotsPerRank;
  options.ring_steps = 64;
  options.stage = stage;
  return std::move(eplb::HeatRecorder::Create(options)).value();
}

// The batch sizes every counting benchmark runs: a large prefill batch, a
// typical one, and a decode step.
void TokenSizes(benchmark::internal::Benchmark* b) {
  b->ArgName("tokens")->Arg(65536)->Arg(8192)->Arg(256);
}

template <typename Id, std::vector<Id> (*Ids)(int64_t)>
void BM_RecordTopk(benchmark::State& state) {
  const std::vector<Id> ids = Ids(state.range(0));
  const std::vector<int32_t> log2phy = Rank0Log2Phy();
  auto recorder = MakeRecorder();
  int layer = 0;
  for (auto _ : state) {
    recorder->RecordTopk(layer, std::span<const Id>(ids), log2phy);
    layer = layer + 1 == kLayers ? 0 : layer + 1;
  }
  const auto n = static_cast<int64_t>(ids.size());
  state.SetItemsProcessed(state.iterations() * n);
  state.SetBytesProcessed(state.iterations() * n *
                          static_cast<int64_t>(sizeof(Id)));
}

void BM_RecordTopk_Int32(benchmark::State& state) {
  BM_RecordTopk<int32_t, RealTopkIds<int32_t>>(state);
}
BENCHMARK(BM_RecordTopk_Int32)->Apply(TokenSizes);

void BM_RecordTopk_Int64(benchmark::State& state) {
  BM_RecordTopk<int64_t, RealTopkIds<int64_t>>(state);
}
BENCHMARK(BM_RecordTopk_Int64)->Apply(TokenSizes);

void BM_RecordTopk_Int32_Stress(benchmark::State& state) {
  BM_RecordTopk<int32_t, StressTopkIds<int32_t>>(state);
}
BENCHMARK(BM_RecordTopk_Int32_Stress)->Apply(TokenSizes);

// Copies tokens * kTopK * id_bytes bytes: the bytes RecordTopk reads.
void BM_Memcpy_SameBytes(benchmark::State& state) {
  const auto bytes =
      static_cast<size_t>(state.range(0) * kTopK * state.range(1));
  std::vector<char> src(bytes, 1);
  std::vector<char> dst(bytes, 0);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), bytes);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(bytes));
}
BENCHMARK(BM_Memcpy_SameBytes)
    ->ArgNames({"tokens", "id_bytes"})
    ->Args({65536, 4})
    ->Args({65536, 8})
    ->Args({8192, 4})
    ->Args({8192, 8})
    ->Args({256, 4})
    ->Args({256, 8});

// The ratio itself, robust to the clock and cache drifts of a shared
// machine: each iteration times a batch of memcpy calls and a batch of
// RecordTopk calls over the same bytes back to back, and the counter
// `count_vs_memcpy` is the median over iterations of memcpy time / count
// time (the fraction of memcpy throughput that counting reaches).
template <typename Id, std::vector<Id> (*Ids)(int64_t)>
void BM_CountVsMemcpy(benchmark::State& state) {
  const std::vector<Id> ids = Ids(state.range(0));
  const std::vector<int32_t> log2phy = Rank0Log2Phy();
  auto recorder = MakeRecorder();
  const size_t bytes = ids.size() * sizeof(Id);
  std::vector<char> dst(bytes, 0);
  const int batch = static_cast<int>(
      std::max<int64_t>(1, (int64_t{1} << 22) / static_cast<int64_t>(bytes)));
  std::vector<double> ratios;
  using Clock = std::chrono::steady_clock;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    for (int b = 0; b < batch; ++b) {
      std::memcpy(dst.data(), ids.data(), bytes);
      benchmark::DoNotOptimize(dst.data());
      benchmark::ClobberMemory();
    }
    const auto t1 = Clock::now();
    for (int b = 0; b < batch; ++b) {
      recorder->RecordTopk(b % kLayers, std::span<const Id>(ids), log2phy);
    }
    const auto t2 = Clock::now();
    ratios.push_back(std::chrono::duration<double>(t1 - t0).count() /
                     std::chrono::duration<double>(t2 - t1).count());
  }
  std::sort(ratios.begin(), ratios.end());
  state.counters["count_vs_memcpy"] = ratios[ratios.size() / 2];
}
void BM_CountVsMemcpy_Int32(benchmark::State& state) {
  BM_CountVsMemcpy<int32_t, RealTopkIds<int32_t>>(state);
}
BENCHMARK(BM_CountVsMemcpy_Int32)->Apply(TokenSizes)->Iterations(101);
void BM_CountVsMemcpy_Int64(benchmark::State& state) {
  BM_CountVsMemcpy<int64_t, RealTopkIds<int64_t>>(state);
}
BENCHMARK(BM_CountVsMemcpy_Int64)->Apply(TokenSizes)->Iterations(101);
void BM_CountVsMemcpy_Int32_Stress(benchmark::State& state) {
  BM_CountVsMemcpy<int32_t, StressTopkIds<int32_t>>(state);
}
BENCHMARK(BM_CountVsMemcpy_Int32_Stress)->Apply(TokenSizes)->Iterations(101);

// One step of all 58 layers published (window + ring row under the seqlock).
void BM_EndStep(benchmark::State& state) {
  const std::vector<int32_t> ids = RealTopkIds<int32_t>(1);
  const std::vector<int32_t> log2phy = Rank0Log2Phy();
  auto recorder = MakeRecorder();
  for (auto _ : state) {
    recorder->RecordTopk(0, ids, log2phy);
    recorder->EndStep(1);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_EndStep);

// A step the stage filter discards (a decode step when collecting prefill).
void BM_EndStep_Discarded(benchmark::State& state) {
  const std::vector<int32_t> ids = RealTopkIds<int32_t>(1);
  const std::vector<int32_t> log2phy = Rank0Log2Phy();
  auto recorder = MakeRecorder(eplb::HeatStage::kPrefill);
  for (auto _ : state) {
    recorder->RecordTopk(0, ids, log2phy);
    recorder->EndStep(1);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_EndStep_Discarded);

// A recorder whose ring (64 steps) is full, and the size of its window.
std::unique_ptr<eplb::HeatRecorder> FullRecorder() {
  auto recorder = MakeRecorder();
  for (int s = 0; s < 64; ++s) recorder->EndStep(1);
  return recorder;
}
constexpr size_t kCells = static_cast<size_t>(kLayers) * kRanks * kSlotsPerRank;

// A reader's copy of the window and a full ring (64 x 58 x 288), not on the
// hot path.
void BM_Snapshot(benchmark::State& state) {
  auto recorder = FullRecorder();
  for (auto _ : state) {
    eplb::HeatSnapshot snap = recorder->Snapshot();
    benchmark::DoNotOptimize(snap.samples.data());
  }
}
BENCHMARK(BM_Snapshot)->Unit(benchmark::kMicrosecond);

// The controller's shift test, once per collected step on the serving
// thread: the window's sum, and the newest 3 steps' sum with their totals
// (58 x 288 counters each), without allocating.
void BM_CopyWindow(benchmark::State& state) {
  auto recorder = FullRecorder();
  std::vector<int64_t> window(kCells);
  for (auto _ : state) {
    benchmark::DoNotOptimize(recorder->CopyWindow(window));
  }
}
BENCHMARK(BM_CopyWindow)->Unit(benchmark::kMicrosecond);

void BM_CopyNewest3(benchmark::State& state) {
  auto recorder = FullRecorder();
  std::vector<int64_t> sum(kCells);
  std::vector<int64_t> totals(3);
  for (auto _ : state) {
    benchmark::DoNotOptimize(recorder->CopyNewest(3, sum, totals));
  }
}
BENCHMARK(BM_CopyNewest3)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
