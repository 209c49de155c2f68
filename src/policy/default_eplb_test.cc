#include "policy/default_eplb.h"

#include <gtest/gtest.h>

#include <map>
#include <numeric>
#include <random>
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

// DeepSeek's balanced_packing and replicate_experts written as the plain
// scans of their description (the library keeps heaps): the references of
// the differential tests below.
Packing PackingByScan(const std::vector<double>& w, int packs,
                      const std::vector<int32_t>& keys) {
  const int n = static_cast<int>(w.size());
  const int per = n / packs;
  Packing out{std::vector<int32_t>(n), std::vector<int32_t>(n, 0)};
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return w[a] > w[b]; });
  std::vector<double> weight(packs, 0.0);
  std::vector<int> items(packs, 0);
  std::vector<std::set<int32_t>> held(packs);
  for (int32_t item : order) {
    int best = -1, clash = -1;
    for (int p = 0; p < packs; ++p) {
      if (items[p] >= per) continue;
      int& slot = !keys.empty() && held[p].count(keys[item]) ? clash : best;
      if (slot < 0 || weight[p] < weight[slot]) slot = p;
    }
    const int p = best >= 0 ? best : clash;
    out.pack[item] = p;
    out.rank_in_pack[item] = items[p]++;
    weight[p] += w[item];
    if (!keys.empty()) held[p].insert(keys[item]);
  }
  return out;
}

TEST(DefaultEplbTest, HeapsPackAndReplicateAsThePlainScansDo) {
  std::mt19937 rng(3);
  for (int trial = 0; trial < 200; ++trial) {
    const int packs = 1 + static_cast<int>(rng() % 40);
    const int per = 2 + static_cast<int>(rng() % 6);
    const int experts =
        std::max(per, packs * per - static_cast<int>(rng() % (packs + 1)));
    std::vector<double> w(experts);
    for (double& v : w)
      v = 1.0 + static_cast<double>(rng() % (trial % 2 ? 8 : 1000));
    SCOPED_TRACE("trial " + std::to_string(trial));
    // Replication: the largest weight / count below the cap, lowest id on
    // ties.
    const int cap = packs;
    if (static_cast<int64_t>(experts) * cap < packs * per) continue;
    const Replication rep = ReplicateExperts(w, packs * per, cap);
    std::vector<int32_t> count(experts, 1);
    for (int i = experts; i < packs * per; ++i) {
      int best = -1;
      for (int e = 0; e < experts; ++e) {
        if (count[e] >= cap) continue;
        if (best < 0 || w[e] / count[e] > w[best] / count[best]) best = e;
      }
      ASSERT_EQ(rep.phy2log[i], best) << "replica " << i;
      ++count[best];
    }
    EXPECT_EQ(rep.count, count);
    // Packing the replicas, with and without keys.
    std::vector<double> phy(packs * per);
    for (int p = 0; p < packs * per; ++p) {
      phy[p] = w[rep.phy2log[p]] / rep.count[rep.phy2log[p]];
    }
    const Packing keyed = BalancedPacking(phy, packs, rep.phy2log);
    const Packing keyed_ref = PackingByScan(phy, packs, rep.phy2log);
    EXPECT_EQ(keyed.pack, keyed_ref.pack);
    EXPECT_EQ(keyed.rank_in_pack, keyed_ref.rank_in_pack);
    const Packing plain = BalancedPacking(phy, packs);
    const Packing plain_ref = PackingByScan(phy, packs, {});
    EXPECT_EQ(plain.pack, plain_ref.pack);
  }
}

}  // namespace
}  // namespace eplb::policy
