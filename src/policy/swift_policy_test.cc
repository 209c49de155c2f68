// Tests of policy 2, SwiftBalancer (spec §6.2) beyond the shared property
// tests: the walk on the mean alone, the swaps scored on per-step samples, and
// the shot score's model of the default dispatch (spec §3.1).
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

// The shot score follows the default dispatch: of n tokens of an expert with
// c replicas, the replica with the lower physical id takes the extra ones.
TEST(LayerModelTest, ShotScoreSplitsWholeTokensLikeTheDispatch) {
  const Topology topology = MakeTopology(3, 2, 2).value();
  // Expert 0 on both ranks (physical ids 0 and 2), 1 and 2 once each.
  const std::vector<int32_t> layer = {0, 1, 0, 2};
  LoadTrace samples(4, 1, 3);
  for (int t = 0; t < 4; ++t) {
    samples.at(t, 0, 0) = 1.0;  // One token: always to rank 0's replica.
    samples.at(t, 0, 1) = 1.0;
    samples.at(t, 0, 2) = 1.0;
  }
  const LoadMatrix load = samples.Aggregate();
  const PolicyOptions options;
  LayerContext ctx = ContextFor(layer, load, &samples, topology, options);
  LayerModel model;
  model.Load(ctx);
  // Rank loads 2 and 1 every step: peak / mean = 2 / 1.5.
  EXPECT_DOUBLE_EQ(model.Score(layer), 2.0 / 1.5);

  // The aggregate alone (no per-step samples) is shared evenly: 6 and 6.
  ctx.samples = nullptr;
  model.Load(ctx);
  EXPECT_DOUBLE_EQ(model.Score(layer), 1.0);
}

TEST(LayerModelTest, SwapsOnShotsSeeTheDispatchOrder) {
  // Expert 0 (one token per step) on ranks 0 and 1: rank 0's replica takes
  // it. Expert 1 (one token) is on rank 0 too, expert 2 (none) on rank 1:
  // rank 0 carries 2 of 2 tokens. Trading 1 and 2 leaves 1 and 1.
  const Topology topology = MakeTopology(3, 2, 2).value();
  const std::vector<int32_t> current = {0, 1, 0, 2};
  LoadTrace samples(4, 1, 3);
  for (int t = 0; t < 4; ++t) {
    samples.at(t, 0, 0) = 1.0;
    samples.at(t, 0, 1) = 1.0;
  }
  const LoadMatrix load = samples.Aggregate();
  const PolicyOptions options;
  const LayerContext ctx =
      ContextFor(current, load, &samples, topology, options);
  LayerModel model;
  model.Load(ctx);
  std::vector<int32_t> layer = current;
  EXPECT_EQ(model.SwapOnShots(current, 0.0, 4, 0, &layer), 1);
  EXPECT_DOUBLE_EQ(model.Score(layer), 1.0);
  EXPECT_EQ(layer[1], 2);
  EXPECT_EQ(layer[3], 1);
}

}  // namespace
}  // namespace eplb::policy
