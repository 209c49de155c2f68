// Property tests over every policy: seeded random loads and topologies, each
// case printing its seed. Every plan must place every expert, never put an
// expert twice on a rank, keep K slots per rank, keep staying experts in
// their slots, report its own imbalance and moves truthfully, and be
// bit-identical across runs and thread counts.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>

#include "eplb/load.h"
#include "eplb/placement.h"
#include "eplb/policy.h"
#include "policy/algorithms.h"

namespace eplb {
namespace {

struct Case {
  int layers, experts, ranks, slots, ranks_per_node, groups;
};

struct Inputs {
  Topology topology;
  Placement current;
  LoadMatrix load;
  LoadTrace samples;
};

// Skewed loads (a few hot experts), some all-zero layers, and a current
// placement that is either the initial one or a random valid one.
Inputs MakeInputs(const Case& c, uint32_t seed) {
  std::mt19937 rng(seed);
  Inputs in{*MakeTopology(c.experts, c.ranks, c.slots, c.ranks_per_node),
            Placement(), LoadMatrix(c.layers, c.experts),
            LoadTrace(8, c.layers, c.experts)};
  in.current = Placement::Initial(c.layers, c.experts, in.topology);
  std::exponential_distribution<double> skew(1.0);
  for (int l = 0; l < c.layers; ++l) {
    const bool zero = rng() % 7 == 0;
    for (int s = 0; s < 8; ++s) {
      for (int e = 0; e < c.experts; ++e) {
        const double v = zero ? 0.0 : std::floor(std::pow(skew(rng), 3) * 100);
        in.samples.at(s, l, e) = v;
      }
    }
  }
  in.load = in.samples.Aggregate();
  if (rng() % 2 == 0) {  // Start from a shuffled valid placement.
    auto random = *CreatePolicy("random");
    for (int round = 0; round < 5; ++round) {
      PolicyOptions o;
      o.seed = rng();
      in.current =
          random->Rebalance({&in.current, &in.load, nullptr, in.topology}, o)
              ->placement;
    }
  }
  return in;
}

class PolicyPropertyTest : public ::testing::TestWithParam<std::string> {};

TEST_P(PolicyPropertyTest, ValidDeterministicAndTruthful) {
  const Case cases[] = {
      {3, 8, 2, 5, 2, 1},  {4, 16, 4, 5, 2, 4},  {2, 64, 8, 9, 4, 8},
      {3, 12, 8, 2, 4, 4}, {2, 32, 16, 3, 4, 8}, {2, 256, 32, 9, 8, 8},
      {2, 20, 5, 6, 5, 5}, {2, 6, 6, 1, 3, 3},   {2, 9, 3, 9, 1, 3},
  };
  for (const Case& c : cases) {
    for (uint32_t seed = 1; seed <= 6; ++seed) {
      SCOPED_TRACE("policy " + GetParam() + ", seed " + std::to_string(seed) +
                   ", E=" + std::to_string(c.experts) + " R=" +
                   std::to_string(c.ranks) + " K=" + std::to_string(c.slots));
      const Inputs in = MakeInputs(c, seed);
      PolicyOptions options;
      options.num_groups = c.groups;
      options.seed = seed;
      const PolicyInput input{&in.current, &in.load, &in.samples, in.topology};
      StatusOr<Plan> a = (*CreatePolicy(GetParam()))->Rebalance(input, options);
      ASSERT_TRUE(a.ok()) << a.status().ToString();
      // Again, on three threads: the same plan, bit for bit.
      PolicyOptions threaded = options;
      threaded.num_threads = 3;
      StatusOr<Plan> b =
          (*CreatePolicy(GetParam()))->Rebalance(input, threaded);
      ASSERT_TRUE(b.ok());
      EXPECT_EQ(a->placement, b->placement) << "not deterministic";
      std::vector<Violation> bad = CheckPlan(in.current, a->placement);
      ASSERT_TRUE(bad.empty()) << bad[0].ToString();
      ASSERT_EQ(static_cast<int>(a->layers.size()), c.layers);
      for (int l = 0; l < c.layers; ++l) {
        const LayerPlan& info = a->layers[l];
        const bool changed = !std::equal(a->placement.layer(l).begin(),
                                         a->placement.layer(l).end(),
                                         in.current.layer(l).begin());
        EXPECT_EQ(info.changed, changed) << "layer " << l;
        EXPECT_DOUBLE_EQ(info.predicted_imbalance,
                         LayerImbalance(a->placement.layer(l), in.load.row(l),
                                        c.ranks, c.slots));
        EXPECT_EQ(
            info.moved_experts,
            policy::MovedExperts(in.current.layer(l), a->placement.layer(l),
                                 c.ranks, c.slots));
        EXPECT_EQ(info.moved_experts,
                  info.intra_node_moves + info.inter_node_moves);
        EXPECT_GE(info.predicted_imbalance, info.lower_bound - 1e-9);
        bool zero = true;
        for (double v : in.load.row(l)) zero = zero && v == 0.0;
        if (zero) {
          EXPECT_FALSE(info.changed) << "all-zero layer " << l << " moved";
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllPolicies, PolicyPropertyTest,
                         ::testing::Values("random", "default", "swift",
                                           "flashlb", "best"),
                         [](const auto& param_info) {
                           return param_info.param;
                         });

// Policies that claim to improve must not make a layer worse: on the load
// when they plan from it alone, on the per-step samples when given them.
TEST(PolicyTest, ImprovingPoliciesNeverWorsenALayer) {
  for (const char* name : {"swift", "flashlb", "best"}) {
    for (uint32_t seed = 1; seed <= 4; ++seed) {
      SCOPED_TRACE(std::string(name) + " seed " + std::to_string(seed));
      const Inputs in = MakeInputs({3, 64, 8, 9, 8, 1}, seed);
      StatusOr<Plan> p =
          (*CreatePolicy(name))
              ->Rebalance({&in.current, &in.load, nullptr, in.topology}, {});
      ASSERT_TRUE(p.ok());
      for (const LayerPlan& l : p->layers) {
        EXPECT_LE(l.predicted_imbalance, l.current_imbalance + 1e-12);
      }
      if (std::string(name) == "best") continue;  // Plans on the load only.
      p = (*CreatePolicy(name))
              ->Rebalance({&in.current, &in.load, &in.samples, in.topology},
                          {});
      ASSERT_TRUE(p.ok());
      for (int l = 0; l < in.current.num_layers(); ++l) {
        EXPECT_LE(StepImbalance(p->placement, l, in.samples),
                  StepImbalance(in.current, l, in.samples) + 1e-12)
            << "layer " << l;
      }
    }
  }
}

TEST(PolicyTest, FactoryByNumberAndName) {
  const std::pair<const char*, const char*> names[] = {
      {"0", "random"},  {"1", "default"}, {"2", "swift"},
      {"3", "flashlb"}, {"best", "best"}, {"SWIFT", "swift"}};
  for (const auto& [key, name] : names) {
    StatusOr<std::unique_ptr<Policy>> p = CreatePolicy(key);
    ASSERT_TRUE(p.ok()) << key;
    EXPECT_EQ((*p)->name(), name);
  }
  StatusOr<std::unique_ptr<Policy>> bad = CreatePolicy("greedy");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("unknown policy 'greedy'"),
            std::string::npos);
}

TEST(PolicyTest, BadInputIsRejectedWithTheReason) {
  const Topology t = *MakeTopology(8, 2, 5);
  const Placement cur = Placement::Initial(2, 8, t);
  auto policy = *CreatePolicy("swift");
  auto run = [&](const LoadMatrix& load) {
    return policy->Rebalance({&cur, &load, nullptr, t}, {}).status();
  };
  EXPECT_NE(
      run(LoadMatrix(3, 8)).message().find("load has 3 layers x 8 experts"),
      std::string::npos);
  EXPECT_NE(run(LoadMatrix(2, 9)).message().find("2 layers x 9 experts"),
            std::string::npos);
  LoadMatrix nan(2, 8);
  nan.at(1, 3) = std::numeric_limits<double>::quiet_NaN();
  EXPECT_NE(run(nan).message().find("layer 1, expert 3 is NaN"),
            std::string::npos);
  LoadMatrix neg(2, 8);
  neg.at(0, 2) = -5;
  EXPECT_NE(run(neg).message().find("layer 0, expert 2 is -5"),
            std::string::npos);
  LoadMatrix inf(2, 8);
  inf.at(0, 0) = std::numeric_limits<double>::infinity();
  EXPECT_NE(run(inf).message().find("is inf"), std::string::npos);
  // Topology disagreeing with the map.
  LoadMatrix ok(2, 8);
  Status wrong =
      policy->Rebalance({&cur, &ok, nullptr, *MakeTopology(8, 4, 3)}, {})
          .status();
  EXPECT_NE(wrong.message().find("current map has 2 ranks x 5 slots"),
            std::string::npos);
  // An invalid current map.
  Placement broken = cur;
  broken.set(0, 0, 0,
             1);  // Expert 1 twice on rank 0, expert 0 still on rank 1.
  broken.set(0, 1, 3, 1);
  Status invalid = policy->Rebalance({&broken, &ok, nullptr, t}, {}).status();
  EXPECT_NE(invalid.message().find("current map"), std::string::npos)
      << invalid.message();
}

TEST(PolicyTest, AllZeroLayersKeepTheirPlacement) {
  const Topology t = *MakeTopology(8, 2, 5);
  const Placement cur = Placement::Initial(2, 8, t);
  LoadMatrix load(2, 8);
  for (const char* name : {"random", "default", "swift", "flashlb", "best"}) {
    StatusOr<Plan> p =
        (*CreatePolicy(name))->Rebalance({&cur, &load, nullptr, t}, {});
    ASSERT_TRUE(p.ok()) << name;
    EXPECT_EQ(p->placement, cur) << name;
    EXPECT_EQ(p->layers[0].predicted_imbalance, 1.0);
  }
}

TEST(PolicyTest, HierarchicalFallsBackToGlobalAndSaysSo) {
  const Topology t = *MakeTopology(12, 8, 2, 4);
  const Placement cur = Placement::Initial(1, 12, t);
  LoadMatrix load(1, 12);
  for (int e = 0; e < 12; ++e) load.at(0, e) = 10 + e * e;
  PolicyOptions o;
  o.num_groups = 5;  // Does not divide 12 experts.
  StatusOr<Plan> p =
      (*CreatePolicy("default"))->Rebalance({&cur, &load, nullptr, t}, o);
  ASSERT_TRUE(p.ok());
  ASSERT_EQ(p->notes.size(), 1u);
  EXPECT_NE(p->notes[0].find("12 % 5 != 0"), std::string::npos) << p->notes[0];
  o.num_groups = 3;  // 3 groups on 2 nodes.
  p = (*CreatePolicy("default"))->Rebalance({&cur, &load, nullptr, t}, o);
  ASSERT_EQ(p->notes.size(), 1u);
  EXPECT_NE(p->notes[0].find("3 % 2 != 0"), std::string::npos) << p->notes[0];
}

TEST(PolicyTest, MaxReceivesPerRankRejectsLayersThatExceedIt) {
  const Topology t = *MakeTopology(16, 4, 5);
  const Placement cur = Placement::Initial(1, 16, t);
  LoadMatrix load(1, 16);
  for (int e = 0; e < 16; ++e) load.at(0, e) = (e % 5 == 0) ? 500 : 10;
  PolicyOptions o;
  o.max_receives_per_rank = 1;
  StatusOr<Plan> p =
      (*CreatePolicy("default"))->Rebalance({&cur, &load, nullptr, t}, o);
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(CheckPlan(cur, p->placement, 1).empty());
  if (!p->layers[0].changed) {
    ASSERT_FALSE(p->notes.empty());
    EXPECT_NE(p->notes[0].find("max_receives_per_rank = 1"), std::string::npos);
  }
}

}  // namespace
}  // namespace eplb
