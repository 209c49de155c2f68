// Plan time of every policy on the full DeepSeek-V3 model (58 layers x 256
// experts, prefill_in1024), single-threaded: BM_Plan_<policy>_<layout>.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "eplb/io.h"
#include "eplb/policy.h"

namespace {

const eplb::LoadTrace& Dsv3() {
  static const eplb::LoadTrace* const trace = [] {
    auto t = eplb::ReadSglangLogicalCount(
        EPLB_SOURCE_DIR "/data/dsv3-sglang/prefill_in1024.json");
    if (!t.ok()) {
      std::fprintf(stderr, "%s\n", t.status().ToString().c_str());
      std::exit(1);
    }
    return new eplb::LoadTrace(*std::move(t));
  }();
  return *trace;
}

// `steps` samples: the aggregate split over the steps with a deterministic
// per-step skew, as the dynamic cycle's history of per-step loads.
eplb::LoadTrace* MakeDsv3Samples(int steps) {
  const eplb::LoadTrace& agg = Dsv3();
  auto* t = new eplb::LoadTrace(steps, agg.num_layers(), agg.num_experts());
  uint64_t x = 12345;
  for (int s = 0; s < steps; ++s) {
    for (int l = 0; l < agg.num_layers(); ++l) {
      for (int e = 0; e < agg.num_experts(); ++e) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        const double noise =
            0.5 + static_cast<double>(x >> 11) / 9007199254740992.0;
        t->at(s, l, e) = agg.at(0, l, e) / steps * noise;
      }
    }
  }
  return t;
}

const eplb::LoadTrace& Dsv3Samples(int steps) {
  static const eplb::LoadTrace* const t64 = MakeDsv3Samples(64);
  static const eplb::LoadTrace* const t128 = MakeDsv3Samples(128);
  return steps == 64 ? *t64 : *t128;
}

void BM_Plan(benchmark::State& state, const char* policy_name, int ranks,
             int slots, int ranks_per_node, int groups, int samples) {
  const eplb::LoadTrace& trace = samples > 0 ? Dsv3Samples(samples) : Dsv3();
  const eplb::LoadMatrix load = trace.Aggregate();
  const eplb::Topology t =
      *eplb::MakeTopology(load.num_experts(), ranks, slots, ranks_per_node);
  const eplb::Placement initial =
      eplb::Placement::Initial(load.num_layers(), load.num_experts(), t);
  eplb::PolicyOptions options;
  options.num_groups = groups;
  for (auto _ : state) {
    // A fresh policy each time: FlashLB keeps state between calls.
    std::unique_ptr<eplb::Policy> policy = *eplb::CreatePolicy(policy_name);
    auto plan = policy->Rebalance({&initial, &load, &trace, t}, options);
    if (!plan.ok()) state.SkipWithError(plan.status().ToString().c_str());
    benchmark::DoNotOptimize(plan);
  }
}

// Re-planning: from the same policy's plan of another workload
// (prefill_in512) to prefill_in1024, the case a running system meets.
void BM_Replan(benchmark::State& state, const char* policy_name) {
  const eplb::LoadMatrix load = Dsv3().Aggregate();
  auto other = eplb::ReadSglangLogicalCount(
      EPLB_SOURCE_DIR "/data/dsv3-sglang/prefill_in512.json");
  if (!other.ok()) {
    state.SkipWithError(other.status().ToString().c_str());
    return;
  }
  const eplb::LoadMatrix other_load = other->Aggregate();
  const eplb::Topology t = *eplb::MakeTopology(load.num_experts(), 32, 9);
  const eplb::Placement initial =
      eplb::Placement::Initial(load.num_layers(), load.num_experts(), t);
  const eplb::Placement start =
      (*eplb::CreatePolicy(policy_name))
          ->Rebalance({&initial, &other_load, nullptr, t}, {})
          ->placement;
  for (auto _ : state) {
    std::unique_ptr<eplb::Policy> policy = *eplb::CreatePolicy(policy_name);
    auto plan = policy->Rebalance({&start, &load, nullptr, t}, {});
    if (!plan.ok()) state.SkipWithError(plan.status().ToString().c_str());
    benchmark::DoNotOptimize(plan);
  }
}
BENCHMARK_CAPTURE(BM_Replan, Default_EP32x9, "default")
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Replan, Swift_EP32x9, "swift")
    ->Unit(benchmark::kMillisecond);

#define EPLB_PLAN_BENCH(policy, name)                                      \
  BENCHMARK_CAPTURE(BM_Plan, policy##_EP32x9, name, 32, 9, 32, 1, 0)       \
      ->Unit(benchmark::kMillisecond);                                     \
  BENCHMARK_CAPTURE(BM_Plan, policy##_EP32x9_4nodes, name, 32, 9, 8, 8, 0) \
      ->Unit(benchmark::kMillisecond);                                     \
  BENCHMARK_CAPTURE(BM_Plan, policy##_EP64x5, name, 64, 5, 64, 1, 0)       \
      ->Unit(benchmark::kMillisecond)

BENCHMARK_CAPTURE(BM_Plan, Random_EP32x9, "random", 32, 9, 32, 1, 0)
    ->Unit(benchmark::kMillisecond);
EPLB_PLAN_BENCH(Default, "default");
EPLB_PLAN_BENCH(Swift, "swift");
EPLB_PLAN_BENCH(Best, "best");
EPLB_PLAN_BENCH(FlashLb, "flashlb");
BENCHMARK_CAPTURE(BM_Plan, FlashLb_EP32x9_64samples, "flashlb", 32, 9, 32, 1,
                  64)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Plan, FlashLb_EP32x9_128samples, "flashlb", 32, 9, 32, 1,
                  128)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Plan, Swift_EP32x9_64samples, "swift", 32, 9, 32, 1, 64)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Plan, Swift_EP32x9_128samples, "swift", 32, 9, 32, 1, 128)
    ->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
