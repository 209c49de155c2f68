// Tests of policy 2, SwiftBalancer beyond the shared property
// tests: the walk on the mean alone, the swaps scored on per-step samples, and
// the shot score they use.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "eplb/load.h"
#include "eplb/placement.h"
#include "eplb/policy.h"
#include "eplb/topology.h"
#include "policy/layer_model.h"
#include "policy/layer_policy.h"
#include "policy/policies.h"

namespace eplb::policy {
namespace {

std::unique_ptr<Policy> NewSwift() {
  StatusOr<std::unique_ptr<Policy>> policy = CreatePolicy("swift");
  EPLB_CHECK(policy.ok());
  return std::move(policy).value();
}

Plan MustRebalance(const Placement& current, const LoadMatrix& load,
                   const LoadTrace* samples, const Topology& topology) {
  StatusOr<Plan> plan = NewSwift()->Rebalance(
      PolicyInput{&current, &load, samples, topology}, PolicyOptions{});
  EPLB_CHECK_MSG(plan.ok(), plan.status().ToString().c_str());
  return std::move(plan).value();
}

// One layer, 2 ranks x 2 slots, 4 experts with equal means: over time 0 and
// 2 are hot together, then 1 and 3, and the current layer puts {0, 2} and
// {1, 3} together, so each step one rank carries all the load.
struct Correlated {
  Topology topology = MakeTopology(4, 2, 2).value();
  LoadTrace samples{8, 1, 4};
  LoadMatrix load;
  Placement current{1, 2, 2, 4};
  Correlated() {
    for (int t = 0; t < 8; ++t) {
      for (int e = 0; e < 4; ++e) {
        samples.at(t, 0, e) = (t + e) % 2 == 0 ? 2.0 : 0.0;
      }
    }
    load = samples.Aggregate();
    const std::vector<int32_t> bad = {0, 2, 1, 3};
    std::copy(bad.begin(), bad.end(), current.mutable_layer(0).begin());
  }
};

TEST(SwiftTest, OnTheMeanAloneABalancedLayerIsKept) {
  const Correlated c;
  const Plan plan = MustRebalance(c.current, c.load, nullptr, c.topology);
  EXPECT_FALSE(plan.layers[0].changed);
}

TEST(SwiftTest, SamplesSplitExpertsThatAreHotTogether) {
  const Correlated c;
  const Plan plan = MustRebalance(c.current, c.load, &c.samples, c.topology);
  EXPECT_TRUE(CheckPlan(c.current, plan.placement).empty());
  ASSERT_TRUE(plan.layers[0].changed);
  for (int r = 0; r < 2; ++r) {
    EXPECT_NE(plan.placement.at(0, r, 0) % 2, plan.placement.at(0, r, 1) % 2)
        << "rank " << r;
  }
  // One swap (two moved experts) fixes it.
  EXPECT_EQ(plan.layers[0].moved_experts, 2);
}

TEST(SwiftTest, DeterministicWithSamples) {
  const Correlated c;
  const Plan a = MustRebalance(c.current, c.load, &c.samples, c.topology);
  const Plan b = MustRebalance(c.current, c.load, &c.samples, c.topology);
  EXPECT_TRUE(std::equal(a.placement.layer(0).begin(),
                         a.placement.layer(0).end(),
                         b.placement.layer(0).begin()));
}

// A context for `layer`, layer `index` of the inputs (the spans and
// pointers must outlive it).
LayerContext ContextFor(std::span<const int32_t> layer, const LoadMatrix& load,
                        const LoadTrace* samples, const Topology& topology,
                        const PolicyOptions& options, int index = 0) {
  LayerContext ctx;
  ctx.layer = index;
  ctx.num_experts = load.num_experts();
  ctx.current = layer;
  ctx.load = load.row(index);
  ctx.samples = samples;
  ctx.topology = &topology;
  ctx.options = &options;
  return ctx;
}

// The shot score is the mean over steps of each step's peak / mean rank
// load (here every split is even, whole tokens or not).
TEST(LayerModelTest, ShotScoreIsTheMeanPerStepPeak) {
  const Topology topology = MakeTopology(3, 2, 2).value();
  // Expert 0 on both ranks, 1 on rank 0, 2 on rank 1.
  const std::vector<int32_t> layer = {0, 1, 0, 2};
  LoadTrace samples(2, 1, 3);
  // Step 0: rank loads 1 + 4 and 1 + 0 (peak / mean 5 / 3); step 1: 2 + 0
  // and 2 + 4 (6 / 4).
  samples.at(0, 0, 0) = 2.0;
  samples.at(0, 0, 1) = 4.0;
  samples.at(1, 0, 0) = 4.0;
  samples.at(1, 0, 2) = 4.0;
  const LoadMatrix load = samples.Aggregate();
  const PolicyOptions options;
  LayerContext ctx = ContextFor(layer, load, &samples, topology, options);
  LayerModel model;
  model.Load(ctx);
  EXPECT_DOUBLE_EQ(model.Score(layer), (5.0 / 3.0 + 6.0 / 4.0) / 2);
  // The aggregate alone (6 / 4 / 4): rank loads 3 + 4 and 3 + 4.
  ctx.samples = nullptr;
  model.Load(ctx);
  EXPECT_DOUBLE_EQ(model.Score(layer), 1.0);
}

// With one whole-token step per shot, the score splits an expert's tokens
// as the default dispatch does (its first replica takes the odd token) and
// equals StepImbalance exactly, also for large counts and up to 4
// replicas; with loads that are not whole numbers, both split evenly.
TEST(LayerModelTest, ShotScoreSplitsWholeTokensAsTheDefaultDispatch) {
  const Topology topology = MakeTopology(6, 4, 3).value();  // 12 slots.
  // Expert 0 on all 4 ranks, 1 on 3, 2 on 2, 3..5 once.
  const std::vector<int32_t> layer = {0, 1, 2, 0, 1, 3, 0, 1, 4, 0, 2, 5};
  Placement placement(1, 4, 3, 6);
  std::copy(layer.begin(), layer.end(), placement.mutable_layer(0).begin());
  const PolicyOptions options;
  uint64_t x = 7;
  for (bool whole : {true, false}) {
    SCOPED_TRACE(whole ? "whole tokens" : "fractional loads");
    LoadTrace samples(40, 1, 6);
    for (int t = 0; t < samples.num_steps(); ++t) {
      for (int e = 0; e < 6; ++e) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        // Small counts (odd splits matter), counts up to 2^30 and exact
        // multiples of the replica count (where x / c is a whole number).
        const uint64_t replicas =
            static_cast<uint64_t>(std::count(layer.begin(), layer.end(), e));
        const uint64_t v = t % 4 == 3   ? (x >> 34)
                           : t % 4 == 1 ? replicas * (x >> 36)
                                        : (x >> 61);
        samples.at(t, 0, e) = static_cast<double>(v) + (whole ? 0.0 : 0.25);
      }
    }
    const LoadMatrix load = samples.Aggregate();
    LayerContext ctx = ContextFor(layer, load, &samples, topology, options);
    LayerModel model;
    model.Load(ctx);
    EXPECT_NEAR(model.Score(layer), StepImbalance(placement, 0, samples),
                1e-12);
  }
  // 49 replicas: 1.0 / 49 * 49 rounds below 1, the case where a plain
  // floor(x * (1 / c)) would lose a token.
  {
    const Topology wide = MakeTopology(2, 50, 1).value();
    std::vector<int32_t> slots(50, 0);
    slots[49] = 1;
    Placement p(1, 50, 1, 2);
    std::copy(slots.begin(), slots.end(), p.mutable_layer(0).begin());
    LoadTrace multiples(64, 1, 2);
    for (int t = 0; t < multiples.num_steps(); ++t) {
      multiples.at(t, 0, 0) = 49.0 * (t + 1);
      multiples.at(t, 0, 1) = t;
    }
    const LoadMatrix wide_load = multiples.Aggregate();
    LayerContext wide_ctx =
        ContextFor(slots, wide_load, &multiples, wide, options);
    LayerModel wide_model;
    wide_model.Load(wide_ctx);
    EXPECT_NEAR(wide_model.Score(slots), StepImbalance(p, 0, multiples), 1e-12);
  }
  // A first replica that takes every odd token scores worse than an even
  // split would: 3 tokens of expert 0 alone go 1, 1, 1 to ranks 0..2.
  LoadTrace odd(2, 1, 6);
  odd.at(0, 0, 0) = 3.0;
  odd.at(1, 0, 0) = 3.0;
  const LoadMatrix odd_load = odd.Aggregate();
  LayerContext ctx = ContextFor(layer, odd_load, &odd, topology, options);
  LayerModel model;
  model.Load(ctx);
  EXPECT_DOUBLE_EQ(model.Score(layer), 1.0 / 0.75);
}

// On steady traffic the current layer, refined by swaps scored on the
// history, is one of Swift's candidates: whatever Swift chooses costs (shot
// score plus the move cost of its moves) no more than those swaps reach.
// The walk plans on the newest window's means, which on noisy steady
// traffic wander from the history's, so without that candidate Swift chose
// plans that scored worse for more moves on some of these layers.
TEST(SwiftTest, OnSteadyTrafficNoWorseThanTheCurrentLayersOwnSwaps) {
  constexpr int kE = 64, kR = 8, kK = 9, kL = 4, kSteps = 128;
  const Topology topology = MakeTopology(kE, kR, kK).value();
  // Per-step token counts: a fixed Zipf-like share per layer, 300 tokens a
  // step (steady but noisy).
  auto steps = [&](int n, uint64_t seed) {
    std::mt19937_64 rng(seed);
    LoadTrace out(n, kL, kE);
    std::vector<double> weight(kE);
    for (int l = 0; l < kL; ++l) {
      for (int e = 0; e < kE; ++e) {
        weight[(e * 7 + l * 5) % kE] = 1.0 / (1.0 + e);
      }
      std::discrete_distribution<int> pick(weight.begin(), weight.end());
      for (int t = 0; t < n; ++t) {
        for (int i = 0; i < 300; ++i) out.at(t, l, pick(rng)) += 1.0;
      }
    }
    return out;
  };
  PolicyOptions options;
  options.migration_budget = 1.0;      // Not binding.
  options.full_plan_tolerance = -1.0;  // The choice by gain per move only.
  int better_than_the_walk = 0;
  for (uint64_t seed = 1; seed <= 4; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    // The current placement: DeepSeek's plan on a short earlier sample, so
    // near the history's balance but not at it.
    const LoadMatrix early = steps(4, 100 + seed).Aggregate();
    const Placement initial = Placement::Initial(kL, kE, topology);
    const Placement current =
        CreatePolicy("default")
            .value()
            ->Rebalance({&initial, &early, nullptr, topology}, {})
            .value()
            .placement;
    const LoadTrace samples = steps(kSteps, seed);
    const LoadMatrix load =
        samples.Aggregate(kSteps - 16, kSteps);  // The newest window.
    StatusOr<Plan> plan = NewSwift()->Rebalance(
        PolicyInput{&current, &load, &samples, topology, 16}, options);
    ASSERT_TRUE(plan.ok()) << plan.status().ToString();
    for (int l = 0; l < kL; ++l) {
      SCOPED_TRACE("layer " + std::to_string(l));
      LayerContext ctx =
          ContextFor(current.layer(l), load, &samples, topology, options, l);
      ctx.current_imbalance =
          LayerImbalance(current.layer(l), load.row(l), kR, kK);
      LayerModel model;
      model.Load(ctx);
      const double move_cost = model.MoveCost();
      std::vector<int32_t> tuned(current.layer(l).begin(),
                                 current.layer(l).end());
      model.SwapOnShots(current.layer(l), move_cost, ExtraSwaps(kR), 0, &tuned);
      KeepSlots(current.layer(l), tuned, kR, kK);
      const double tuned_cost = model.Cost(current.layer(l), tuned, move_cost);
      const LayerPlan& info = plan->layers[l];
      const double chosen_cost =
          info.predicted_score + move_cost * info.moved_experts;
      EXPECT_LE(chosen_cost, tuned_cost + 1e-12);
      if (chosen_cost <
          model.Cost(current.layer(l), SwiftWalk(ctx), move_cost) - 1e-12) {
        ++better_than_the_walk;
      }
    }
  }
  // The case is one where the candidate matters: on some layers the choice
  // beats the walk alone.
  EXPECT_GT(better_than_the_walk, 0);
}

}  // namespace
}  // namespace eplb::policy
