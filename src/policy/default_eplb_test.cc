#include "policy/default_eplb.h"

#include <gtest/gtest.h>

#include <map>
#include <vector>

#include "eplb/load.h"
#include "eplb/policy.h"

namespace eplb::policy {
namespace {

// DeepSeek's README test vector: 2 layers, 12 experts, 16 slots,
// 4 groups, 2 nodes, 8 ranks.
const std::vector<std::vector<double>> kWeight = {
    {90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86},
    {20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27}};
const std::vector<std::vector<int32_t>> kPhy2Log = {
    {5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1},
    {7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1}};

TEST(DefaultEplbTest, DeepSeekReadmeVectorIndexForIndex) {
  for (int l = 0; l < 2; ++l) {
    SCOPED_TRACE(l);
    EXPECT_EQ(DeepSeekRebalanceLayer(kWeight[l], 16, 4, 2, 8), kPhy2Log[l]);
  }
}

TEST(DefaultEplbTest, ReadmeVectorRankLoads) {
  const std::vector<std::vector<double>> expected = {
      {86.5, 113, 121.5, 125, 131.5, 147.5, 152, 156},
      {117.5, 118.5, 120.5, 123, 152, 172, 173, 179.5}};
  for (int l = 0; l < 2; ++l) {
    std::vector<double> loads = RankLoads(kPhy2Log[l], kWeight[l], 8, 2);
    std::sort(loads.begin(), loads.end());
    EXPECT_EQ(loads, expected[l]);
  }
}

TEST(DefaultEplbTest, PolicyOneReproducesTheVectorUpToSlotKeeping) {
  LoadMatrix load(2, 12);
  for (int l = 0; l < 2; ++l) {
    for (int e = 0; e < 12; ++e) load.at(l, e) = kWeight[l][e];
  }
  Topology t = *MakeTopology(12, 8, 2, 4);
  Placement initial = Placement::Initial(2, 12, t);
  auto policy = *CreatePolicy("1");
  PolicyOptions options;
  options.num_groups = 4;
  StatusOr<Plan> plan =
      policy->Rebalance({&initial, &load, nullptr, t}, options);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  EXPECT_TRUE(plan->notes.empty());
  for (int l = 0; l < 2; ++l) {
    for (int r = 0; r < 8; ++r) {
      std::multiset<int32_t> got, want;
      for (int s = 0; s < 2; ++s) {
        got.insert(plan->placement.at(l, r, s));
        want.insert(kPhy2Log[l][r * 2 + s]);
      }
      EXPECT_EQ(got, want) << "layer " << l << " rank " << r;
    }
  }
}

TEST(DefaultEplbTest, BalancedPackingSkipsRanksHoldingTheExpert) {
  // Two replicas of expert 0 (equal weight) and two light experts: plain
  // greedy would put both replicas on different packs anyway; force a clash
  // with weights that make pack 0 the lightest twice.
  std::vector<double> w = {10, 10, 1, 1};
  std::vector<int32_t> keys = {0, 0, 1, 2};
  Packing p = BalancedPacking(w, 2, keys);
  EXPECT_NE(p.pack[0], p.pack[1]);
  Packing plain = BalancedPacking(w, 2);
  EXPECT_NE(plain.pack[0], plain.pack[1]);
}

TEST(DefaultEplbTest, ReplicasCappedAtRanks) {
  // One very hot expert: DeepSeek would give it every extra slot; capped at
  // the rank count it never needs two replicas on one rank.
  std::vector<double> w = {1000, 1, 1, 1};
  Replication rep = ReplicateExperts(w, 8, 2);
  EXPECT_EQ(rep.count, (std::vector<int32_t>{2, 2, 2, 2}));
  std::vector<int32_t> phy2log = DeepSeekRebalanceLayer(w, 8, 1, 1, 2);
  for (int r = 0; r < 2; ++r) {
    std::set<int32_t> s(phy2log.begin() + r * 4, phy2log.begin() + r * 4 + 4);
    EXPECT_EQ(s.size(), 4u);
  }
}

}  // namespace
}  // namespace eplb::policy
