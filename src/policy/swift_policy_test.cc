// Tests of policy 2, SwiftBalancer (spec §6.2) beyond the shared property
// tests: the walk on the mean alone, the swaps scored on per-step samples, and
// the shot score they use.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <span>
#include <vector>

#include "eplb/load.h"
#include "eplb/placement.h"
#include "eplb/policy.h"
#include "eplb/topology.h"
#include "policy/flashlb_model.h"
#include "policy/layer_policy.h"

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

// A context for `layer` of one-layer inputs (the spans and pointers must
// outlive it).
LayerContext ContextFor(std::span<const int32_t> layer, const LoadMatrix& load,
                        const LoadTrace* samples, const Topology& topology,
                        const PolicyOptions& options) {
  LayerContext ctx;
  ctx.num_experts = load.num_experts();
  ctx.current = layer;
  ctx.load = load.row(0);
  ctx.samples = samples;
  ctx.topology = &topology;
  ctx.options = &options;
  return ctx;
}

// The shot score is the mean over steps of each step's peak / mean rank
// load, replicas sharing their expert's load evenly (the expected split of
// the default dispatch; fitting the exact whole-token split of past steps
// scored worse on the replayed trace).
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

}  // namespace
}  // namespace eplb::policy
