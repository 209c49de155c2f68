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

TEST(AlgorithmsTest, MatchRanksAtTwoThousandRanksIsExact) {
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

// Random valid layer: every expert once, the rest random without
// co-location.
std::vector<int32_t> RandomLayer(int e, int r, int k, std::mt19937& rng) {
  for (;;) {
    std::vector<int32_t> layer(static_cast<size_t>(r) * k);
    std::iota(layer.begin(), layer.begin() + e, 0);
    for (size_t i = e; i < layer.size(); ++i)
      layer[i] = static_cast<int32_t>(rng() % static_cast<unsigned>(e));
    std::shuffle(layer.begin(), layer.end(), rng);
    bool ok = true;
    for (int q = 0; q < r && ok; ++q) {
      std::set<int32_t> seen(layer.begin() + q * k, layer.begin() + q * k + k);
      ok = static_cast<int>(seen.size()) == k;
    }
    if (ok) return layer;
  }
}

TEST(AlgorithmsTest, MatchRanksFindsTheMaximumOverlapOfEveryRelabelling) {
  // Differential test against brute force over all R! relabellings.
  std::mt19937 rng(11);
  for (int trial = 0; trial < 300; ++trial) {
    const int r = 2 + static_cast<int>(rng() % 5);  // 2..6 ranks.
    const int k = 1 + static_cast<int>(rng() % 3);
    const int e = std::max(k, r * k - static_cast<int>(rng() % (r + 1)));
    const std::vector<int32_t> current = RandomLayer(e, r, k, rng);
    std::vector<int32_t> plan = RandomLayer(e, r, k, rng);
    std::vector<int> perm(r);
    std::iota(perm.begin(), perm.end(), 0);
    int best_moved = 1 << 30;
    do {
      std::vector<int32_t> relabelled(plan.size());
      for (int j = 0; j < r; ++j) {
        std::copy_n(plan.begin() + perm[j] * k, k, relabelled.begin() + j * k);
      }
      best_moved =
          std::min(best_moved, MovedExperts(current, relabelled, r, k));
    } while (std::next_permutation(perm.begin(), perm.end()));
    std::vector<int32_t> sorted_ranks_before;
    for (int j = 0; j < r; ++j) {
      std::vector<int32_t> rank(plan.begin() + j * k, plan.begin() + j * k + k);
      std::sort(rank.begin(), rank.end());
      sorted_ranks_before.insert(sorted_ranks_before.end(), rank.begin(),
                                 rank.end());
    }
    MatchRanksToCurrent(current, plan, r, k);
    SCOPED_TRACE("trial " + std::to_string(trial));
    EXPECT_EQ(MovedExperts(current, plan, r, k), best_moved);
    // Whole ranks relabelled: the same multiset of ranks.
    std::vector<std::vector<int32_t>> before, after;
    for (int j = 0; j < r; ++j) {
      before.emplace_back(sorted_ranks_before.begin() + j * k,
                          sorted_ranks_before.begin() + j * k + k);
      std::vector<int32_t> rank(plan.begin() + j * k, plan.begin() + j * k + k);
      std::sort(rank.begin(), rank.end());
      after.push_back(rank);
    }
    std::sort(before.begin(), before.end());
    std::sort(after.begin(), after.end());
    EXPECT_EQ(before, after);
  }
}

// The documented rule of PlaceLpt written as a plain scan over the ranks
// (the library uses a heap): the reference for the differential test.
std::vector<int32_t> PlaceLptByScan(const std::vector<double>& load,
                                    const std::vector<int32_t>& count, int r,
                                    int k) {
  const int n = static_cast<int>(load.size());
  std::vector<double> share(n);
  std::vector<int32_t> order;
  for (int e = 0; e < n; ++e) {
    share[e] = load[e] / count[e];
    for (int c = 0; c < count[e]; ++c) order.push_back(e);
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return share[a] > share[b]; });
  std::vector<int32_t> layer(static_cast<size_t>(r) * k, -1);
  std::vector<int> used(r, 0);
  std::vector<double> rank_load(r, 0.0);
  auto holds = [&](int q, int32_t e) {
    return std::find(layer.begin() + q * k, layer.begin() + q * k + used[q],
                     e) != layer.begin() + q * k + used[q];
  };
  for (int32_t e : order) {
    int best = -1;
    for (int q = 0; q < r; ++q) {
      if (used[q] == k || holds(q, e)) continue;
      if (best < 0 || rank_load[q] < rank_load[best]) best = q;
    }
    if (best < 0) return {};  // The repair path: not compared.
    layer[best * k + used[best]++] = e;
    rank_load[best] += share[e];
  }
  return layer;
}

TEST(AlgorithmsTest, LptHeapPlacesAsTheScanDoes) {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 200; ++trial) {
    const int r = 2 + static_cast<int>(rng() % 40);
    const int k = 1 + static_cast<int>(rng() % 6);
    const int e = std::max(k, r * k - static_cast<int>(rng() % (r + 1)));
    std::vector<double> load(e);
    for (double& v : load) v = static_cast<double>(rng() % 1000);
    if (trial % 3 == 0) {
      for (double& v : load) v = std::floor(v / 250);  // Many ties.
    }
    for (double& v : load) v += 1.0;
    const std::vector<int32_t> count = MinMaxReplicaCounts(load, r * k, r);
    const std::vector<int32_t> want = PlaceLptByScan(load, count, r, k);
    if (want.empty()) continue;
    SCOPED_TRACE("trial " + std::to_string(trial));
    EXPECT_EQ(PlaceLpt(load, count, r, k), want);
  }
}

// RefineBySwaps' documented rule as a plain scan of every partner in rank
// order (the library tries partners lightest first and stops early).
int RefineBySwapsByScan(std::vector<int32_t>& layer,
                        const std::vector<double>& load, int r, int k,
                        int max_swaps, double min_gain) {
  const int n = static_cast<int>(load.size());
  std::vector<int32_t> count(n, 0);
  for (int32_t e : layer) ++count[e];
  std::vector<double> share(n, 0.0);
  for (int e = 0; e < n; ++e) share[e] = count[e] ? load[e] / count[e] : 0.0;
  auto rank_load = [&](int q) {
    double sum = 0.0;
    for (int s = 0; s < k; ++s) sum += share[layer[q * k + s]];
    return sum;
  };
  auto holds = [&](int q, int32_t e) {
    return std::find(layer.begin() + q * k, layer.begin() + q * k + k, e) !=
           layer.begin() + q * k + k;
  };
  std::vector<double> loads(r);
  for (int q = 0; q < r; ++q) loads[q] = rank_load(q);
  int swaps = 0;
  while (swaps < max_swaps) {
    const int h = static_cast<int>(
        std::max_element(loads.begin(), loads.end()) - loads.begin());
    double best_peak = loads[h] - min_gain;
    int best_a = -1, best_b = -1;
    for (int q = 0; q < r; ++q) {
      if (q == h) continue;
      for (int sa = 0; sa < k; ++sa) {
        const int32_t ea = layer[h * k + sa];
        if (holds(q, ea)) continue;
        for (int sb = 0; sb < k; ++sb) {
          const int32_t eb = layer[q * k + sb];
          const double d = share[ea] - share[eb];
          if (d <= 0.0 || holds(h, eb)) continue;
          const double peak = std::max(loads[h] - d, loads[q] + d);
          if (peak < best_peak) {
            best_peak = peak;
            best_a = h * k + sa;
            best_b = q * k + sb;
          }
        }
      }
    }
    if (best_a < 0) break;
    const double d = share[layer[best_a]] - share[layer[best_b]];
    loads[h] -= d;
    loads[best_b / k] += d;
    std::swap(layer[best_a], layer[best_b]);
    ++swaps;
  }
  return swaps;
}

TEST(AlgorithmsTest, RefineBySwapsSwapsAsTheFullScanDoes) {
  std::mt19937 rng(9);
  for (int trial = 0; trial < 150; ++trial) {
    const int r = 2 + static_cast<int>(rng() % 30);
    const int k = 1 + static_cast<int>(rng() % 5);
    const int e = std::max(k, r * k - static_cast<int>(rng() % (r + 1)));
    std::vector<double> load(e);
    for (double& v : load) v = 1.0 + static_cast<double>(rng() % 500);
    std::vector<int32_t> fast = RandomLayer(e, r, k, rng);
    std::vector<int32_t> slow = fast;
    SCOPED_TRACE("trial " + std::to_string(trial));
    const int a = RefineBySwaps(fast, load, r, k, 4 * r, 1e-9);
    const int b = RefineBySwapsByScan(slow, load, r, k, 4 * r, 1e-9);
    EXPECT_EQ(a, b);
    EXPECT_EQ(fast, slow);
  }
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
