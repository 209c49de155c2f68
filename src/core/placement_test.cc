#include "eplb/placement.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "eplb/load.h"

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

TEST(PlacementTest, MapTargetNamesRoundTrip) {
  for (const MapTarget t : {MapTarget::kVllmAscend, MapTarget::kSglang}) {
    const StatusOr<MapTarget> parsed = ParseMapTarget(MapTargetName(t));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, t);
  }
  const StatusOr<MapTarget> bad = ParseMapTarget("vllm");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(),
            "map target 'vllm': unknown (valid: vllm-ascend, sglang)");
}

// SGLang's rules allow an expert twice on a rank; the other invariants hold
// under both targets.
TEST(PlacementTest, CheckPlacementUnderSglangRulesAllowsColocation) {
  const Placement colocated =
      FromLayers({{{7, 7, 0, 3, 5}, {6, 1, 4, 2, 2}}}, 8);
  EXPECT_TRUE(CheckPlacement(colocated, MapTarget::kSglang).empty());
  EXPECT_EQ(CheckPlacement(colocated).size(), 2u);
  EXPECT_EQ(CheckPlacement(colocated, MapTarget::kVllmAscend).size(), 2u);
  const Placement broken = FromLayers({{{7, 7, 0, 3, 5}, {6, 1, 4, 2, 9}}}, 8);
  const std::vector<Violation> v = CheckPlacement(broken, MapTarget::kSglang);
  ASSERT_EQ(v.size(), 1u);
  EXPECT_EQ(v[0].ToString(),
            "layer 0, device 1, slot 4: expert 9 out of range [0, 8)");
  const Placement missing = FromLayers({{{7, 7, 0, 3, 5}, {6, 1, 4, 2, 2}}}, 9);
  const std::vector<Violation> m = CheckPlacement(missing, MapTarget::kSglang);
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0].ToString(), "layer 0: expert 8 is on no device");
}

TEST(PlacementTest, ColocatedLayersAndTheirWarning) {
  const Placement p = FromLayers({{{0, 1, 2}, {3, 0, 1}},
                                  {{0, 0, 2}, {3, 1, 1}},
                                  {{0, 1, 2}, {3, 2, 1}},
                                  {{3, 1, 3}, {0, 2, 1}}},
                                 4);
  EXPECT_EQ(ColocatedLayers(p), (std::vector<int>{1, 3}));
  EXPECT_EQ(ColocatedLayers(Fixture()), std::vector<int>{});
  EXPECT_EQ(ColocationWarning(std::vector<int>{}), "");
  EXPECT_EQ(ColocationWarning(std::vector<int>{3}),
            "layer 3: an expert twice on one rank (DeepSeek's and SGLang's "
            "planners allow it; eplb's policies and vllm-ascend do not)");
  EXPECT_EQ(ColocationWarning(std::vector<int>{3, 7, 12}),
            "layers 3, 7, 12: an expert twice on one rank (DeepSeek's and "
            "SGLang's planners allow it; eplb's policies and vllm-ascend do "
            "not)");
  std::vector<int> many(20);
  for (int i = 0; i < 20; ++i) many[i] = i;
  EXPECT_TRUE(ColocationWarning(many).starts_with(
      "layers 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 and 4 "
      "more: an expert twice"));
}

// Layer 1 of tests/data/deepseek_colocated.json: DeepSeek's algorithm put
// both replicas of expert 2 on rank 3.
Placement DeepSeekColocated() {
  return FromLayers({{{6, 4, 5}, {6, 4, 1}, {7, 2, 3}, {7, 0, 5}},
                     {{3, 1, 7}, {3, 1, 7}, {4, 6, 5}, {2, 2, 0}},
                     {{5, 7, 0}, {5, 7, 4}, {5, 2, 3}, {1, 6, 2}}},
                    8);
}

// Replica counts of every layer: what a repair must keep.
std::vector<std::vector<int>> ReplicaCounts(const Placement& p) {
  std::vector<std::vector<int>> counts(p.num_layers(),
                                       std::vector<int>(p.num_experts(), 0));
  for (int l = 0; l < p.num_layers(); ++l) {
    for (const int32_t e : p.layer(l)) ++counts[l][e];
  }
  return counts;
}

int ChangedSlots(const Placement& a, const Placement& b) {
  int changed = 0;
  for (size_t i = 0; i < a.data().size(); ++i) {
    changed += a.data()[i] != b.data()[i] ? 1 : 0;
  }
  return changed;
}

// Without a load: the first slot, by physical id, of a rank that lacks the
// duplicate's expert and holds an expert the duplicate's rank lacks.
TEST(PlacementTest, RepairColocatedSwapsWithTheLowestIdWithoutALoad) {
  Placement p = DeepSeekColocated();
  const StatusOr<ColocationRepair> repair = RepairColocated(&p);
  ASSERT_TRUE(repair.ok()) << repair.status().ToString();
  EXPECT_EQ(repair->duplicates, 1);
  EXPECT_EQ(repair->swaps, 1);
  EXPECT_EQ(repair->layers, std::vector<int>{1});
  // Rank 3's second 2 (physical 10) and rank 0's 3 (physical 0) swap.
  const std::vector<int32_t> layer(p.layer(1).begin(), p.layer(1).end());
  EXPECT_EQ(layer, (std::vector<int32_t>{2, 1, 7, 3, 1, 7, 4, 6, 5, 2, 3, 0}));
  EXPECT_TRUE(CheckPlacement(p).empty());
  EXPECT_EQ(ReplicaCounts(p), ReplicaCounts(DeepSeekColocated()));
  EXPECT_EQ(ChangedSlots(p, DeepSeekColocated()), 2);
}

// With the load DeepSeek planned for (tests/data/deepseek_colocated_load.json
// layer 1): the swap that leaves the swapped ranks least loaded.
TEST(PlacementTest, RepairColocatedKeepsTheBalanceUnderALoad) {
  LoadMatrix load(3, 8);
  const double layer1[] = {1, 77, 87, 91, 44, 9, 40, 46};
  for (int e = 0; e < 8; ++e) {
    load.at(0, e) = 10;
    load.at(1, e) = layer1[e];
    load.at(2, e) = 10;
  }
  Placement p = DeepSeekColocated();
  const double before = LayerImbalance(p.layer(1), load.row(1), 4, 3);
  const StatusOr<ColocationRepair> repair = RepairColocated(&p, &load);
  ASSERT_TRUE(repair.ok()) << repair.status().ToString();
  // Rank loads 107, 107, 93, 88: swapping rank 3's 2 (43.5 a replica) with
  // rank 2's 4 (44) leaves 92.5 and 88.5 under the busiest 107.
  const std::vector<int32_t> layer(p.layer(1).begin(), p.layer(1).end());
  EXPECT_EQ(layer, (std::vector<int32_t>{3, 1, 7, 3, 1, 7, 2, 6, 5, 2, 4, 0}));
  EXPECT_TRUE(CheckPlacement(p).empty());
  EXPECT_DOUBLE_EQ(LayerImbalance(p.layer(1), load.row(1), 4, 3), before);
}

// A partner that is itself a duplicate is preferred: one swap fixes two.
TEST(PlacementTest, RepairColocatedPrefersASwapThatFixesTwo) {
  Placement p = FromLayers({{{0, 0, 1}, {2, 3, 4}, {5, 5, 6}}}, 7);
  const StatusOr<ColocationRepair> repair = RepairColocated(&p);
  ASSERT_TRUE(repair.ok()) << repair.status().ToString();
  EXPECT_EQ(repair->duplicates, 2);
  EXPECT_EQ(repair->swaps, 1);
  const std::vector<int32_t> layer(p.layer(0).begin(), p.layer(0).end());
  EXPECT_EQ(layer, (std::vector<int32_t>{0, 5, 1, 2, 3, 4, 0, 5, 6}));
}

TEST(PlacementTest, RepairColocatedLeavesAValidMapAlone) {
  Placement p = Fixture();
  const StatusOr<ColocationRepair> repair = RepairColocated(&p);
  ASSERT_TRUE(repair.ok());
  EXPECT_EQ(repair->duplicates, 0);
  EXPECT_EQ(repair->swaps, 0);
  EXPECT_TRUE(repair->layers.empty());
  EXPECT_EQ(p, Fixture());
}

TEST(PlacementTest, RepairColocatedRejectsWhatCannotBeRepaired) {
  // Expert 3 has 5 replicas on 4 ranks: two must share one.
  const Placement crowded =
      FromLayers({{{3, 1, 3}, {3, 7, 0}, {3, 6, 5}, {2, 3, 4}}}, 8);
  Placement p = crowded;
  StatusOr<ColocationRepair> repair = RepairColocated(&p);
  ASSERT_FALSE(repair.ok());
  EXPECT_EQ(repair.status().message(),
            "layer 0: expert 3 has 5 replicas on 4 ranks, so two of them must "
            "share a rank");
  EXPECT_EQ(p, crowded);
  // Other broken invariants stay errors.
  Placement missing = FromLayers({{{0, 0, 1}, {2, 3, 4}}}, 6);
  repair = RepairColocated(&missing);
  ASSERT_FALSE(repair.ok());
  EXPECT_EQ(repair.status().message(), "layer 0: expert 5 is on no device");
  // A load of another shape.
  Placement ds = DeepSeekColocated();
  const LoadMatrix load(2, 8);
  repair = RepairColocated(&ds, &load);
  ASSERT_FALSE(repair.ok());
  EXPECT_EQ(repair.status().message(),
            "the load has 2 layers x 8 experts but the map has 3 x 8");
  EXPECT_EQ(ds, DeepSeekColocated());
}

// Random placements with every expert on at most R ranks: the repair always
// succeeds, keeps every replica count, changes two slots a swap and no more
// than two per duplicate, and is deterministic.
TEST(PlacementTest, RepairColocatedRepairsRandomPlacements) {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 300; ++trial) {
    const int ranks = 2 + static_cast<int>(rng() % 6);
    const int k = 2 + static_cast<int>(rng() % 5);
    // At least K experts, so that R replicas each can fill R*K slots.
    const int experts =
        k + static_cast<int>(rng() % static_cast<unsigned>(ranks * k - k + 1));
    // Replica counts in [1, ranks] summing to R*K.
    std::vector<int> count(experts, 1);
    int extra = ranks * k - experts;
    while (extra > 0) {
      const int e = static_cast<int>(rng() % experts);
      if (count[e] < ranks) {
        ++count[e];
        --extra;
      }
    }
    std::vector<int32_t> slots;
    for (int e = 0; e < experts; ++e) slots.insert(slots.end(), count[e], e);
    std::shuffle(slots.begin(), slots.end(), rng);
    Placement p(1, ranks, k, experts);
    std::copy(slots.begin(), slots.end(), p.mutable_layer(0).begin());
    LoadMatrix load(1, experts);
    for (int e = 0; e < experts; ++e)
      load.at(0, e) = static_cast<double>(rng() % 1000);
    for (const LoadMatrix* l : {static_cast<const LoadMatrix*>(nullptr),
                                static_cast<const LoadMatrix*>(&load)}) {
      SCOPED_TRACE("trial " + std::to_string(trial) +
                   (l != nullptr ? " with load" : ""));
      Placement repaired = p;
      const StatusOr<ColocationRepair> repair = RepairColocated(&repaired, l);
      ASSERT_TRUE(repair.ok()) << repair.status().ToString();
      EXPECT_TRUE(CheckPlacement(repaired).empty());
      EXPECT_EQ(ReplicaCounts(repaired), ReplicaCounts(p));
      const int changed = ChangedSlots(p, repaired);
      EXPECT_LE(changed, 2 * repair->swaps);
      EXPECT_LE(repair->swaps, repair->duplicates);
      Placement again = p;
      ASSERT_TRUE(RepairColocated(&again, l).ok());
      EXPECT_EQ(again, repaired);
    }
  }
}

}  // namespace
}  // namespace eplb
