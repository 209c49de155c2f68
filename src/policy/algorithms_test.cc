#include "policy/algorithms.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <set>

#include "eplb/load.h"

namespace eplb::policy {
namespace {

// Brute force: the smallest achievable max share over all count vectors
// (small cases only), the differential reference for MinMaxReplicaCounts.
double BruteMinMaxShare(const std::vector<double>& w, int slots, int cap) {
  const int n = static_cast<int>(w.size());
  double best = 1e300;
  std::vector<int> c(n, 1);
  while (true) {
    if (std::accumulate(c.begin(), c.end(), 0) == slots) {
      double worst = 0;
      for (int e = 0; e < n; ++e) worst = std::max(worst, w[e] / c[e]);
      best = std::min(best, worst);
    }
    int i = 0;
    while (i < n && ++c[i] > cap) c[i++] = 1;
    if (i == n) break;
  }
  return best;
}

TEST(AlgorithmsTest, MinMaxReplicaCountsIsOptimal) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    SCOPED_TRACE(trial);
    const int n = 2 + static_cast<int>(rng() % 4);
    const int cap = 1 + static_cast<int>(rng() % 3);
    const int slots = n + static_cast<int>(rng() % (n * (cap - 1) + 1));
    std::vector<double> w(n);
    for (double& v : w) v = static_cast<double>(rng() % 100);
    std::vector<int32_t> c = MinMaxReplicaCounts(w, slots, cap);
    EXPECT_EQ(std::accumulate(c.begin(), c.end(), 0), slots);
    double worst = 0;
    for (int e = 0; e < n; ++e) {
      EXPECT_GE(c[e], 1);
      EXPECT_LE(c[e], cap);
      worst = std::max(worst, w[e] / c[e]);
    }
    EXPECT_DOUBLE_EQ(worst, BruteMinMaxShare(w, slots, cap));
  }
}

TEST(AlgorithmsTest, MinMaxReplicaCountsTiesGoToLowerId) {
  std::vector<double> w = {5, 5, 5};
  EXPECT_EQ(MinMaxReplicaCounts(w, 4, 3), (std::vector<int32_t>{2, 1, 1}));
}

void ExpectValidLayer(const std::vector<int32_t>& layer, int n, int r, int k) {
  ASSERT_EQ(static_cast<int>(layer.size()), r * k);
  std::set<int32_t> all(layer.begin(), layer.end());
  EXPECT_EQ(static_cast<int>(all.size()), n) << "every expert placed";
  for (int rank = 0; rank < r; ++rank) {
    std::set<int32_t> s(layer.begin() + rank * k, layer.begin() + rank * k + k);
    EXPECT_EQ(static_cast<int>(s.size()), k) << "duplicate on rank " << rank;
  }
}

TEST(AlgorithmsTest, LptPlacementIsValidAndBalanced) {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 50; ++trial) {
    const int r = 2 + static_cast<int>(rng() % 8);
    const int n = r * (1 + static_cast<int>(rng() % 4));
    const int k = n / r + 1 + static_cast<int>(rng() % 2);
    std::vector<double> w(n);
    for (double& v : w) v = static_cast<double>(1 + rng() % 1000);
    std::vector<int32_t> c = MinMaxReplicaCounts(w, r * k, r);
    std::vector<int32_t> layer = PlaceLpt(w, c, r, k);
    SCOPED_TRACE(trial);
    ExpectValidLayer(layer, n, r, k);
    const double before = LayerImbalance(layer, w, r, k);
    RefineBySwaps(layer, w, r, k, 1000, 1e-12);
    ExpectValidLayer(layer, n, r, k);
    EXPECT_LE(LayerImbalance(layer, w, r, k), before + 1e-12);
    EXPECT_GE(LayerImbalance(layer, w, r, k),
              ImbalanceLowerBound(w, r, k) - 1e-12);
  }
}

TEST(AlgorithmsTest, LptRepairsWhenOnlyHoldersHaveRoom) {
  // Three replicas of expert 0 on 3 ranks of 2 slots: the greedy order can
  // leave the last replica with only a holder free; the repair must avoid a
  // duplicate.
  std::vector<double> w = {30, 1, 1, 1};
  std::vector<int32_t> c = {3, 1, 1, 1};
  ExpectValidLayer(PlaceLpt(w, c, 3, 2), 4, 3, 2);
}

TEST(AlgorithmsTest, RefineBySwapsRespectsFrozenSlots) {
  // Rank 0 holds both heavy experts; swapping would help, but both of its
  // slots are frozen.
  std::vector<int32_t> layer = {0, 1, 2, 3};
  std::vector<double> w = {10, 10, 1, 1};
  std::vector<char> frozen = {1, 1, 0, 0};
  EXPECT_EQ(RefineBySwaps(layer, w, 2, 2, 10, 0.0, frozen), 0);
  EXPECT_EQ(layer, (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(RefineBySwaps(layer, w, 2, 2, 10, 0.0), 1);
  EXPECT_DOUBLE_EQ(LayerImbalance(layer, w, 2, 2), 1.0);
}

TEST(AlgorithmsTest, MatchRanksMaximisesOverlap) {
  std::vector<int32_t> current = {0, 1, 2, 3, 4, 5};
  std::vector<int32_t> plan = {4, 5, 0, 9, 2, 3};  // Ranks rotated.
  MatchRanksToCurrent(current, plan, 3, 2);
  EXPECT_EQ(plan, (std::vector<int32_t>{0, 9, 2, 3, 4, 5}));
  EXPECT_EQ(MovedExperts(current, plan, 3, 2), 1);
}

TEST(AlgorithmsTest, MatchRanksAboveTheExactLimitIsGreedyAndFast) {
  // One slot per rank, 64 experts over 2048 ranks: the plan's ranks are the
  // current ranks shuffled, so a perfect relabelling moves nothing.
  const int r = 2048;
  std::vector<int32_t> current(r);
  for (int i = 0; i < r; ++i) current[i] = i % 64;
  std::vector<int32_t> plan = current;
  std::mt19937 rng(7);
  std::shuffle(plan.begin(), plan.end(), rng);
  std::vector<int32_t> sorted_before = plan;
  std::sort(sorted_before.begin(), sorted_before.end());
  MatchRanksToCurrent(current, plan, r, 1);
  std::vector<int32_t> sorted_after = plan;
  std::sort(sorted_after.begin(), sorted_after.end());
  EXPECT_EQ(sorted_after, sorted_before);  // Ranks relabelled, not changed.
  EXPECT_EQ(MovedExperts(current, plan, r, 1), 0);
}

TEST(AlgorithmsTest, LowerBoundCases) {
  std::vector<double> zero(8, 0.0);
  EXPECT_EQ(ImbalanceLowerBound(zero, 2, 4), 1.0);
  // One expert with all the load on 4 ranks x 1 slot, 4 experts: it cannot
  // be replicated (no free slot), so a rank carries everything: 4x the mean.
  std::vector<double> hot = {8, 0, 0, 0};
  EXPECT_DOUBLE_EQ(ImbalanceLowerBound(hot, 4, 1), 4.0);
  // With 2 slots a rank, 4 extra slots: 4 replicas, 2 each -> 2 / (8/4) = 1.
  EXPECT_DOUBLE_EQ(ImbalanceLowerBound(hot, 4, 2), 1.0);
}

}  // namespace
}  // namespace eplb::policy
