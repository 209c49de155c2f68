#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/splitmix.h"
#include "eplb/policy.h"
#include "eplb/robust.h"

namespace eplb {
namespace {

// A deterministic skewed load: a few hot experts per layer, which differ
// with `seed`.
LoadMatrix SkewedLoad(int layers, int experts, uint64_t seed) {
  LoadMatrix m(layers, experts);
  uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  for (int l = 0; l < layers; ++l) {
    for (int e = 0; e < experts; ++e) {
      const uint64_t r = internal::SplitMix64(&state);
      double v = static_cast<double>(r % 50) + 1.0;
      if (r % 7 == 0) v *= 12.0;  // Hot.
      m.at(l, e) = v;
    }
  }
  return m;
}

// Worst over loads and layers of max/mean.
double WorstOf(const Placement& p, const std::vector<LoadMatrix>& loads) {
  double worst = 0.0;
  for (const WorkloadImbalance& w : SummariseWorkloads(p, loads)) {
    worst = std::max(worst, w.worst);
  }
  return worst;
}

Placement PolicyPlan(const char* name, const LoadMatrix& load,
                     const Topology& t) {
  const Placement initial =
      Placement::Initial(load.num_layers(), load.num_experts(), t);
  std::unique_ptr<Policy> p = *CreatePolicy(name);
  PolicyOptions o;
  o.migration_budget = 1.0;
  StatusOr<Plan> plan = p->Rebalance({&initial, &load, nullptr, t}, o);
  EXPECT_TRUE(plan.ok()) << plan.status().ToString();
  return plan->placement;
}

TEST(RobustPlanTest, ValidAndDeterministic) {
  const Topology t = *MakeTopology(32, 8, 5);
  const std::vector<LoadMatrix> loads = {
      SkewedLoad(6, 32, 1), SkewedLoad(6, 32, 2), SkewedLoad(6, 32, 3)};
  StatusOr<RobustPlan> a = PlanRobust(loads, t);
  StatusOr<RobustPlan> b = PlanRobust(loads, t);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_TRUE(CheckPlacement(a->placement).empty());
  EXPECT_EQ(a->placement, b->placement);
  EXPECT_EQ(a->imbalance, b->imbalance);
  ASSERT_EQ(a->imbalance.size(), loads.size());
  ASSERT_EQ(a->layers.size(), 6u);
  for (size_t w = 0; w < loads.size(); ++w) {
    for (int l = 0; l < 6; ++l) {
      EXPECT_EQ(a->imbalance[w][l],
                LayerImbalance(a->placement.layer(l), loads[w].row(l), 8, 5));
    }
  }
  for (int l = 0; l < 6; ++l) {
    const RobustLayer& info = a->layers[l];
    // The objective is the worst workload's max/mean on the layer.
    double worst = 0.0;
    for (size_t w = 0; w < loads.size(); ++w) {
      worst = std::max(worst, a->imbalance[w][l]);
    }
    EXPECT_NEAR(info.objective, worst, 1e-9);
    EXPECT_LE(info.objective, info.start_objective + 1e-12);
  }
  // Scaling a load changes nothing: each is normalised per layer.
  std::vector<LoadMatrix> scaled = loads;
  for (int l = 0; l < 6; ++l) {
    for (double& v : scaled[1].mutable_row(l)) v *= 4.0;
  }
  StatusOr<RobustPlan> c = PlanRobust(scaled, t);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->placement, a->placement);
  // Layers on three threads: the same plan, bit for bit.
  RobustPlanOptions threaded;
  threaded.num_threads = 3;
  StatusOr<RobustPlan> d = PlanRobust(loads, t, threaded);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->placement, a->placement);
  EXPECT_EQ(d->imbalance, a->imbalance);
}

// With one load the robust plan is no worse than the single-load plans of
// "best" and FlashLB (both among its starts), layer by layer.
TEST(RobustPlanTest, OneLoadIsNoWorseThanTheSingleLoadPlans) {
  const Topology t = *MakeTopology(32, 8, 5);
  const LoadMatrix load = SkewedLoad(5, 32, 7);
  StatusOr<RobustPlan> robust = PlanRobust({load}, t);
  ASSERT_TRUE(robust.ok()) << robust.status().ToString();
  for (const char* name : {"best", "flashlb", "default"}) {
    SCOPED_TRACE(name);
    const Placement single = PolicyPlan(name, load, t);
    for (int l = 0; l < 5; ++l) {
      EXPECT_LE(robust->imbalance[0][l],
                LayerImbalance(single.layer(l), load.row(l), 8, 5) + 1e-9);
    }
  }
}

// Where the sum misleads: a long recording (10000 tokens a layer, expert 0
// hot) outweighs a short one (100 tokens, expert 1 hot), so a plan of the
// sum gives every replica to expert 0 and the short workload's hot expert
// serves alone. The robust plan weighs both and bounds the worst.
TEST(RobustPlanTest, BeatsPlanningOnTheSumWhenTheSumMisleads) {
  const Topology t = *MakeTopology(6, 4, 2);
  LoadMatrix big(2, 6), small(2, 6), sum(2, 6);
  for (int l = 0; l < 2; ++l) {
    for (int e = 0; e < 6; ++e) {
      big.at(l, e) = e == 0 ? 5000 : 1000;
      small.at(l, e) = e == 1 ? 50 : 10;
      sum.at(l, e) = big.at(l, e) + small.at(l, e);
    }
  }
  const std::vector<LoadMatrix> loads = {big, small};
  StatusOr<RobustPlan> robust = PlanRobust(loads, t);
  ASSERT_TRUE(robust.ok()) << robust.status().ToString();
  const double robust_worst = WorstOf(robust->placement, loads);
  for (const char* name : {"best", "default", "flashlb"}) {
    SCOPED_TRACE(name);
    const double sum_worst = WorstOf(PolicyPlan(name, sum, t), loads);
    EXPECT_LT(robust_worst, sum_worst - 0.3)
        << robust_worst << " vs " << sum_worst;
  }
  EXPECT_LE(robust_worst, 1.25);
}

// The median objective looks at the middle workload, not the worst.
TEST(RobustPlanTest, QuantileChoosesTheWorkload) {
  const Topology t = *MakeTopology(32, 8, 5);
  const std::vector<LoadMatrix> loads = {
      SkewedLoad(4, 32, 11), SkewedLoad(4, 32, 12), SkewedLoad(4, 32, 13)};
  RobustPlanOptions median;
  median.quantile = 0.5;
  StatusOr<RobustPlan> m = PlanRobust(loads, t, median);
  StatusOr<RobustPlan> worst = PlanRobust(loads, t);
  ASSERT_TRUE(m.ok() && worst.ok());
  EXPECT_TRUE(CheckPlacement(m->placement).empty());
  for (int l = 0; l < 4; ++l) {
    std::vector<double> per;
    for (size_t w = 0; w < loads.size(); ++w) per.push_back(m->imbalance[w][l]);
    EXPECT_NEAR(m->layers[l].objective, NearestRankQuantile(per, 0.5), 1e-9);
    // Each plan is best at its own objective.
    std::vector<double> per_worst;
    for (size_t w = 0; w < loads.size(); ++w) {
      per_worst.push_back(worst->imbalance[w][l]);
    }
    EXPECT_LE(*std::max_element(per_worst.begin(), per_worst.end()),
              *std::max_element(per.begin(), per.end()) + 1e-9);
  }
  EXPECT_EQ(NearestRankQuantile({3.0, 1.0, 2.0}, 0.5), 2.0);
  EXPECT_EQ(NearestRankQuantile({3.0, 1.0, 2.0, 4.0}, 0.5), 2.0);
  EXPECT_EQ(NearestRankQuantile({3.0, 1.0, 2.0}, 1.0), 3.0);
  EXPECT_EQ(NearestRankQuantile({3.0, 1.0, 2.0}, 0.01), 1.0);
}

TEST(RobustPlanTest, RejectsBadInput) {
  const Topology t = *MakeTopology(8, 2, 5);
  const LoadMatrix ok = SkewedLoad(2, 8, 1);
  struct Case {
    std::vector<LoadMatrix> loads;
    double quantile;
    std::string expected;
  };
  LoadMatrix negative = ok;
  negative.at(1, 3) = -1.0;
  const Case cases[] = {
      {{}, 1.0, "no loads"},
      {{ok, SkewedLoad(3, 8, 2)},
       1.0,
       "load 1 has 3 layers x 8 experts, load 0 has 2 x 8"},
      {{ok, negative}, 1.0, "load 1"},
      {{ok}, 0.0, "quantile = 0.000000: must be in (0, 1]"},
      {{ok}, 1.5, "quantile = 1.500000: must be in (0, 1]"},
      {{SkewedLoad(2, 16, 1)}, 1.0, "cannot hold 16 experts"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.expected);
    RobustPlanOptions o;
    o.quantile = c.quantile;
    StatusOr<RobustPlan> p = PlanRobust(c.loads, t, o);
    ASSERT_FALSE(p.ok());
    EXPECT_EQ(p.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(p.status().message().find(c.expected), std::string::npos)
        << p.status().message();
  }
}

// A layer without load in any workload keeps the initial placement.
TEST(RobustPlanTest, UnloadedLayerKeepsTheInitialPlacement) {
  const Topology t = *MakeTopology(8, 2, 5);
  LoadMatrix load = SkewedLoad(2, 8, 3);
  for (double& v : load.mutable_row(0)) v = 0.0;
  StatusOr<RobustPlan> p = PlanRobust({load, load}, t);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  const Placement initial = Placement::Initial(2, 8, t);
  EXPECT_TRUE(std::equal(initial.layer(0).begin(), initial.layer(0).end(),
                         p->placement.layer(0).begin()));
  EXPECT_EQ(p->imbalance[0][0], 1.0);
}

TEST(HeatFileTest, RoundTripsExactly) {
  HeatFile heat;
  heat.num_layers = 2;
  heat.num_experts = 3;
  LoadMatrix a(2, 3), b(2, 3);
  a.at(0, 0) = 1.0 / 3.0;
  a.at(1, 2) = 12345678.0;
  b.at(0, 1) = 0.1;
  heat.loads = {a, b};
  heat.steps = {600, 7};
  const std::string text = HeatFileToJson(heat);
  StatusOr<HeatFile> back = ParseHeatFile(text);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->num_layers, 2);
  EXPECT_EQ(back->num_experts, 3);
  EXPECT_EQ(back->loads, heat.loads);
  EXPECT_EQ(back->steps, heat.steps);
  EXPECT_EQ(HeatFileToJson(*back), text);
}

TEST(HeatFileTest, RejectsBrokenFiles) {
  const struct {
    const char* text;
    const char* expected;
  } cases[] = {
      {"[1]", "top level is an array, not an object"},
      {R"({"num_layers": 1})", "missing key \"eplb_heat\""},
      {R"({"eplb_heat": 2, "num_layers": 1, "num_experts": 2,
           "workloads": []})",
       "eplb_heat = 2: must be an integer in [1, 1]"},
      {R"({"eplb_heat": 1, "num_layers": 0, "num_experts": 2,
           "workloads": []})",
       "num_layers = 0"},
      {R"({"eplb_heat": 1, "num_layers": 1, "num_experts": 2})",
       "missing key \"workloads\""},
      {R"({"eplb_heat": 1, "num_layers": 1, "num_experts": 2,
           "workloads": [{"steps": 1, "load": [[1, 2], [3, 4]]}]})",
       "workloads[0].load: must be an array of num_layers = 1 rows, is 2 "
       "rows"},
      {R"({"eplb_heat": 1, "num_layers": 1, "num_experts": 2,
           "workloads": [{"steps": 1, "load": [[1, 2, 3]]}]})",
       "workloads[0].load[0]: must be an array of num_experts = 2"},
      {R"({"eplb_heat": 1, "num_layers": 1, "num_experts": 2,
           "workloads": [{"steps": 1, "load": [[1, -2]]}]})",
       "workloads[0].load[0][1] = -2: must be a finite number >= 0"},
      {R"({"eplb_heat": 1, "num_layers": 1, "num_experts": 2,
           "workloads": [{"load": [[1, 2]]}]})",
       "workloads[0]: missing key \"steps\""},
      {R"({"eplb_heat": 1, "num_layers": 1, "num_exp)", "malformed JSON"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.text);
    StatusOr<HeatFile> heat = ParseHeatFile(c.text);
    ASSERT_FALSE(heat.ok());
    EXPECT_NE(heat.status().message().find(c.expected), std::string::npos)
        << heat.status().message();
    EXPECT_EQ(heat.status().message().find('\n'), std::string::npos);
  }
}

}  // namespace
}  // namespace eplb
