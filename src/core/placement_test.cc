#include "eplb/placement.h"

#include <gtest/gtest.h>

#include <vector>

namespace eplb {
namespace {

Placement FromLayers(
    const std::vector<std::vector<std::vector<int32_t>>>& layers,
    int num_experts) {
  Placement p(static_cast<int>(layers.size()),
              static_cast<int>(layers[0].size()),
              static_cast<int>(layers[0][0].size()), num_experts);
  for (size_t l = 0; l < layers.size(); ++l) {
    for (size_t r = 0; r < layers[l].size(); ++r) {
      for (size_t s = 0; s < layers[l][r].size(); ++s) {
        p.set(static_cast<int>(l), static_cast<int>(r), static_cast<int>(s),
              layers[l][r][s]);
      }
    }
  }
  return p;
}

// The vllm-ascend fixture: 1 layer, 2 devices x 5 slots, 8 experts.
Placement Fixture() {
  return FromLayers({{{7, 2, 0, 3, 5}, {6, 1, 4, 7, 2}}}, 8);
}

TEST(PlacementTest, InitialPlacementMatchesSpecExample) {
  Topology t = *MakeTopologyFromRedundant(8, 2, 2);
  Placement p = Placement::Initial(3, 8, t);
  EXPECT_EQ(p.num_layers(), 3);
  for (int l = 0; l < 3; ++l) {
    std::vector<int32_t> layer(p.layer(l).begin(), p.layer(l).end());
    EXPECT_EQ(layer, (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7, 0, 1}));
  }
  EXPECT_TRUE(CheckPlacement(p).empty());
  // DeepSeek-V3 at EP32 / 288 slots: redundant copies of experts 0..31.
  Placement big = Placement::Initial(1, 256, *MakeTopology(256, 32, 9));
  EXPECT_EQ(big.at(0, 28, 3), 255);
  EXPECT_EQ(big.at(0, 28, 4), 0);
  EXPECT_EQ(big.at(0, 31, 8), 31);
  EXPECT_EQ(MaxReplicaCount(big), 2);
}

TEST(PlacementTest, FixtureDerivedStructures) {
  Topology t = *MakeTopology(8, 2, 5);
  LayerRouting r = BuildLayerRouting(Fixture().layer(0), 8, t);
  EXPECT_EQ(r.replica_count, (std::vector<int32_t>{1, 1, 2, 1, 1, 1, 1, 2}));
  std::vector<int32_t> rank1(r.expert_map.begin() + 8, r.expert_map.end());
  EXPECT_EQ(rank1, (std::vector<int32_t>{-1, 1, 4, -1, 2, -1, 0, 3}));
  std::vector<int32_t> seven(r.ReplicasOf(7).begin(), r.ReplicasOf(7).end());
  EXPECT_EQ(seven, (std::vector<int32_t>{0, 8}));
  // Own replica preferred.
  EXPECT_EQ(r.Log2Phy(0, 7), 0);
  EXPECT_EQ(r.Log2Phy(1, 7), 8);
  EXPECT_EQ(r.Log2Phy(0, 2), 1);
  EXPECT_EQ(r.Log2Phy(1, 2), 9);
  // Single replica elsewhere.
  EXPECT_EQ(r.Log2Phy(1, 0), 2);
  EXPECT_EQ(r.Log2Phy(0, 6), 5);
}

TEST(PlacementTest, Log2PhyPrefersRankThenNodeThenSpreads) {
  // 4 ranks x 3 slots, 2 ranks per node.
  Placement p = FromLayers({{{0, 1, 2}, {3, 4, 5}, {6, 7, 0}, {1, 0, 4}}}, 8);
  ASSERT_TRUE(CheckPlacement(p).empty());
  LayerRouting two_nodes =
      BuildLayerRouting(p.layer(0), 8, *MakeTopology(8, 4, 3, 2));
  EXPECT_EQ(two_nodes.Log2Phy(1, 0), 0);   // Node 0 holds phy 0.
  EXPECT_EQ(two_nodes.Log2Phy(2, 0), 8);   // Own.
  EXPECT_EQ(two_nodes.Log2Phy(3, 0), 10);  // Own.
  EXPECT_EQ(two_nodes.Log2Phy(1, 1), 1);   // Node 0.
  EXPECT_EQ(two_nodes.Log2Phy(2, 1), 9);   // Node 1.
  // One node: candidate (rank + expert) % replica_count among all.
  LayerRouting one_node =
      BuildLayerRouting(p.layer(0), 8, *MakeTopology(8, 4, 3));
  EXPECT_EQ(one_node.Log2Phy(1, 0), 8);  // (1 + 0) % 3 = 1 -> {0, 8, 10}[1].
  EXPECT_EQ(one_node.Log2Phy(1, 1), 1);  // (1 + 1) % 2 = 0 -> {1, 9}[0].
  EXPECT_EQ(one_node.Log2Phy(2, 1), 9);  // (2 + 1) % 2 = 1.
  EXPECT_EQ(one_node.ExpertMap(3, 4), 2);
  EXPECT_EQ(one_node.ExpertMap(0, 4), -1);
}

TEST(PlacementTest, Log2PhyOfMissingExpertIsMinusOne) {
  std::vector<int32_t> layer = {0, 1, 2, 0};
  LayerRouting r = BuildLayerRouting(layer, 4, Topology{2, 2, 2});
  EXPECT_EQ(r.replica_count[3], 0);
  EXPECT_EQ(r.Log2Phy(0, 3), -1);
  EXPECT_TRUE(r.ReplicasOf(3).empty());
}

TEST(PlacementTest, CheckPlacementLocatesEveryViolation) {
  Placement p = FromLayers(
      {{{7, 2, 0, 3, 5}, {6, 1, 4, 7, 2}}, {{7, 7, 0, 3, 5}, {6, 1, 4, 9, -1}}},
      8);
  std::vector<Violation> v = CheckPlacement(p);
  ASSERT_EQ(v.size(), 4u);
  EXPECT_EQ(v[0].ToString(),
            "layer 1, device 0, slot 1: expert 7 appears twice "
            "on the device (slots 0 and 1)");
  EXPECT_EQ(v[1].ToString(),
            "layer 1, device 1, slot 3: expert 9 out of range [0, 8)");
  EXPECT_EQ(v[2].ToString(),
            "layer 1, device 1, slot 4: expert -1 out of range [0, 8)");
  EXPECT_EQ(v[3].ToString(), "layer 1: expert 2 is on no device");
  Status s = ViolationsToStatus(v);
  EXPECT_NE(s.message().find("4 problems; first: layer 1, device 0, slot 1"),
            std::string::npos);
  EXPECT_TRUE(ViolationsToStatus({}).ok());
}

TEST(PlacementTest, CheckPlanSlotKeepingAndReceives) {
  Placement current = Fixture();
  Placement plan = current;
  EXPECT_TRUE(CheckPlan(current, plan).empty());
  // Expert 2 stays on device 0 but moves from slot 1 to slot 4.
  plan.set(0, 0, 1, 5);
  plan.set(0, 0, 4, 2);
  std::vector<Violation> v = CheckPlan(current, plan);
  ASSERT_EQ(v.size(), 2u);
  EXPECT_EQ(
      v[0].ToString(),
      "layer 0, device 0, slot 1: expert 5 stays on the device but moves from "
      "slot 4");
  EXPECT_EQ(
      v[1].ToString(),
      "layer 0, device 0, slot 4: expert 2 stays on the device but moves from "
      "slot 1");
  // Two receives on device 1 with a limit of 1.
  plan = current;
  plan.set(0, 1, 3, 3);  // 7 -> 3
  plan.set(0, 1, 4, 5);  // 2 -> 5
  EXPECT_TRUE(CheckPlan(current, plan, 2).empty());
  v = CheckPlan(current, plan, 1);
  ASSERT_EQ(v.size(), 1u);
  EXPECT_EQ(v[0].ToString(),
            "layer 0, device 1: 2 receives exceed max_receives_per_rank = 1");
  // A plan of another shape.
  v = CheckPlan(current, Placement::Initial(2, 8, *MakeTopology(8, 2, 5)));
  ASSERT_EQ(v.size(), 1u);
  EXPECT_NE(v[0].message.find("does not match"), std::string::npos);
}

TEST(PlacementTest, KeepSlotsKeepsStayingExperts) {
  std::vector<int32_t> current = {7, 2, 0, 3, 5, 6, 1, 4, 7, 2};
  std::vector<int32_t> plan = {0, 1, 2, 3, 4, 5, 6, 7, 2, 3};
  KeepSlots(current, plan, 2, 5);
  // Rank 0 keeps 2 (slot 1), 0 (slot 2), 3 (slot 3); 1 and 4 fill slots 0, 4.
  // Rank 1 keeps 6 (slot 0), 7 (slot 3), 2 (slot 4); 5 and 3 fill slots 1, 2.
  EXPECT_EQ(plan, (std::vector<int32_t>{1, 2, 0, 3, 4, 6, 5, 3, 7, 2}));
  Placement cur(1, 2, 5, 8), next(1, 2, 5, 8);
  std::copy(current.begin(), current.end(), cur.mutable_layer(0).begin());
  std::copy(plan.begin(), plan.end(), next.mutable_layer(0).begin());
  EXPECT_TRUE(CheckPlan(cur, next).empty());
}

}  // namespace
}  // namespace eplb
