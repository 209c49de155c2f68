// Tests of the dispatches: DispatchMode names, round-robin quotas, and
// BalancedDispatcher (quotas checked against a brute force and an
// independent max-flow reference on seeded random cases; the token mapping
// against the quotas, token order, bad ids, per-rank offsets; no allocation
// in the per-step calls).
#include "eplb/dispatch.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <numeric>
#include <queue>
#include <span>
#include <string>
#include <vector>

#include "core/splitmix.h"
#include "eplb/load.h"
#include "eplb/placement.h"
#include "eplb/sim/replay.h"
#include "eplb/topology.h"
#include "testing/counting_new.h"

namespace eplb {
namespace {

// A seeded stream of small integers, the same on every platform.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  // Uniform-ish in [0, n).
  int Below(int n) {
    return static_cast<int>(internal::SplitMix64(&state_) %
                            static_cast<uint64_t>(n));
  }

 private:
  uint64_t state_;
};

// A valid layer [R*K]: every expert once on a random slot, the other slots
// random experts not yet on their rank.
std::vector<int32_t> RandomPlacement(Rng& rng, int e, int r, int k) {
  std::vector<int32_t> layer(static_cast<size_t>(r) * k, -1);
  std::vector<int> free_slots(layer.size());
  std::iota(free_slots.begin(), free_slots.end(), 0);
  for (int x = 0; x < e; ++x) {
    const int i = rng.Below(static_cast<int>(free_slots.size()));
    layer[free_slots[i]] = x;
    free_slots.erase(free_slots.begin() + i);
  }
  for (int p : free_slots) {
    const int rank = p / k;
    while (true) {
      const int32_t x = rng.Below(e);
      const auto begin = layer.begin() + static_cast<ptrdiff_t>(rank) * k;
      if (std::find(begin, begin + k, x) == begin + k) {
        layer[p] = x;
        break;
      }
    }
  }
  return layer;
}

// Skewed counts in [0, max]: some zeros, some hot.
std::vector<int64_t> RandomCounts(Rng& rng, int e, int max) {
  std::vector<int64_t> counts(e);
  for (int64_t& c : counts) {
    const int kind = rng.Below(4);
    c = kind == 0 ? 0 : kind == 1 ? rng.Below(max + 1) : rng.Below(max / 4 + 1);
  }
  return counts;
}

std::vector<int64_t> RankLoadsOf(std::span<const int64_t> slot_quota, int r,
                                 int k) {
  std::vector<int64_t> loads(r, 0);
  for (size_t p = 0; p < slot_quota.size(); ++p) loads[p / k] += slot_quota[p];
  return loads;
}

// --- References -----------------------------------------------------------

// Edmonds-Karp on a dense capacity matrix.
int64_t MaxFlow(std::vector<std::vector<int64_t>> cap, int source, int sink) {
  const int n = static_cast<int>(cap.size());
  int64_t flow = 0;
  while (true) {
    std::vector<int> parent(n, -1);
    parent[source] = source;
    std::queue<int> queue;
    queue.push(source);
    while (!queue.empty() && parent[sink] < 0) {
      const int u = queue.front();
      queue.pop();
      for (int v = 0; v < n; ++v) {
        if (parent[v] < 0 && cap[u][v] > 0) {
          parent[v] = u;
          queue.push(v);
        }
      }
    }
    if (parent[sink] < 0) return flow;
    int64_t b = std::numeric_limits<int64_t>::max();
    for (int v = sink; v != source; v = parent[v]) {
      b = std::min(b, cap[parent[v]][v]);
    }
    for (int v = sink; v != source; v = parent[v]) {
      cap[parent[v]][v] -= b;
      cap[v][parent[v]] += b;
    }
    flow += b;
  }
}

// Whether some split keeps every rank at or below `cap`: a flow source ->
// expert -> rank of each replica -> sink (capacity cap - fixed load).
bool Feasible(const std::vector<int32_t>& layer,
              const std::vector<int64_t>& counts, int r, int k, int64_t cap) {
  const int e = static_cast<int>(counts.size());
  std::vector<int> replicas(e, 0);
  for (int32_t x : layer) ++replicas[x];
  std::vector<int64_t> fixed(r, 0);
  for (size_t p = 0; p < layer.size(); ++p) {
    if (replicas[layer[p]] == 1) fixed[p / k] += counts[layer[p]];
  }
  const int source = e + r;
  const int sink = e + r + 1;
  std::vector<std::vector<int64_t>> g(e + r + 2,
                                      std::vector<int64_t>(e + r + 2, 0));
  int64_t free_tokens = 0;
  for (int x = 0; x < e; ++x) {
    if (replicas[x] > 1) {
      g[source][x] = counts[x];
      free_tokens += counts[x];
    }
  }
  for (size_t p = 0; p < layer.size(); ++p) {
    if (replicas[layer[p]] > 1) g[layer[p]][e + p / k] = counts[layer[p]];
  }
  for (int rank = 0; rank < r; ++rank) {
    if (fixed[rank] > cap) return false;
    g[e + rank][sink] = cap - fixed[rank];
  }
  return MaxFlow(g, source, sink) == free_tokens;
}

// The smallest feasible cap, by binary search.
int64_t MaxFlowOptimum(const std::vector<int32_t>& layer,
                       const std::vector<int64_t>& counts, int r, int k) {
  int64_t lo = 0;
  int64_t hi = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (Feasible(layer, counts, r, k, mid)) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

// Tries every split of every expert's tokens over its replicas.
int64_t BruteForceOptimum(const std::vector<int32_t>& layer,
                          const std::vector<int64_t>& counts, int r, int k) {
  std::vector<int> slots;  // Slots grouped by expert.
  std::vector<int> first;  // Whether slots[i] is its expert's first.
  for (int x = 0; x < static_cast<int>(counts.size()); ++x) {
    bool is_first = true;
    for (size_t p = 0; p < layer.size(); ++p) {
      if (layer[p] != x) continue;
      slots.push_back(static_cast<int>(p));
      first.push_back(is_first);
      is_first = false;
    }
  }
  std::vector<int64_t> loads(r, 0);
  int64_t best = std::numeric_limits<int64_t>::max();
  // i: the next slot; left: tokens of its expert not placed yet.
  auto place = [&](auto&& self, size_t i, int64_t left) -> void {
    if (i == slots.size() || first[i]) {
      if (left != 0) return;  // The previous expert kept tokens back.
      if (i == slots.size()) {
        best = std::min(best, *std::max_element(loads.begin(), loads.end()));
        return;
      }
      left = counts[layer[slots[i]]];
    }
    const bool last = i + 1 == slots.size() || first[i + 1];
    for (int64_t x = last ? left : 0; x <= left; ++x) {
      loads[slots[i] / k] += x;
      self(self, i + 1, left - x);
      loads[slots[i] / k] -= x;
    }
  };
  place(place, 0, 0);
  return best;
}

// Quotas are a split of each expert's count over its slots.
void ExpectValidQuotas(const std::vector<int32_t>& layer,
                       const std::vector<int64_t>& counts,
                       const std::vector<int64_t>& quota) {
  std::vector<int64_t> sums(counts.size(), 0);
  for (size_t p = 0; p < layer.size(); ++p) {
    EXPECT_GE(quota[p], 0) << "slot " << p;
    sums[layer[p]] += quota[p];
  }
  EXPECT_EQ(sums, counts);
}

struct Shape {
  int e;
  int r;
  int k;
};

// A random shape with R*K >= E >= K.
Shape RandomShape(Rng& rng, int max_r, int max_k) {
  Shape s;
  s.r = 1 + rng.Below(max_r);
  s.k = 1 + rng.Below(max_k);
  s.e = s.k + rng.Below(s.r * s.k - s.k + 1);
  return s;
}

std::string Describe(uint64_t seed, const Shape& s) {
  return "seed " + std::to_string(seed) + ": E=" + std::to_string(s.e) +
         " R=" + std::to_string(s.r) + " K=" + std::to_string(s.k);
}

// --- DispatchMode and round robin ---------------------------------------

TEST(DispatchModeTest, NamesRoundTrip) {
  EXPECT_EQ(DispatchModeName(DispatchMode::kRoundRobin), "rr");
  EXPECT_EQ(DispatchModeName(DispatchMode::kBalanced), "balanced");
  for (DispatchMode m : {DispatchMode::kRoundRobin, DispatchMode::kBalanced}) {
    StatusOr<DispatchMode> parsed = ParseDispatchMode(DispatchModeName(m));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, m);
  }
  StatusOr<DispatchMode> rr = ParseDispatchMode("round-robin");
  ASSERT_TRUE(rr.ok());
  EXPECT_EQ(*rr, DispatchMode::kRoundRobin);
  StatusOr<DispatchMode> bad = ParseDispatchMode("fastest");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("'fastest'"), std::string::npos);
  EXPECT_NE(bad.status().message().find("rr or balanced"), std::string::npos);
}

TEST(RoundRobinQuotasTest, EqualsWholeTokenShareAndTheReplayDispatch) {
  for (uint64_t seed = 0; seed < 50; ++seed) {
    Rng rng(seed);
    const Shape s = RandomShape(rng, 6, 5);
    SCOPED_TRACE(Describe(seed, s));
    const std::vector<int32_t> layer = RandomPlacement(rng, s.e, s.r, s.k);
    const std::vector<int64_t> counts = RandomCounts(rng, s.e, 100);
    const LayerRouting routing =
        BuildLayerRouting(layer, s.e, Topology{s.r, s.r, s.k});
    std::vector<int64_t> quota(layer.size(), -1);
    RoundRobinQuotas(routing, counts, quota);

    // Replica j of c, in ascending physical id, gets WholeTokenShare.
    std::vector<int64_t> expected(layer.size());
    for (int x = 0; x < s.e; ++x) {
      std::vector<size_t> reps;
      for (size_t p = 0; p < layer.size(); ++p) {
        if (layer[p] == x) reps.push_back(p);
      }
      for (size_t j = 0; j < reps.size(); ++j) {
        expected[reps[j]] =
            WholeTokenShare(counts[x], static_cast<int64_t>(reps.size()),
                            static_cast<int64_t>(j));
      }
    }
    EXPECT_EQ(quota, expected);

    // The replay's per-rank loads are these quotas summed per rank.
    const std::vector<double> as_double(counts.begin(), counts.end());
    const std::vector<double> ranks = DispatchRankLoads(routing, as_double);
    for (int r = 0; r < s.r; ++r) {
      int64_t sum = 0;
      for (int k = 0; k < s.k; ++k)
        sum += quota[static_cast<size_t>(r) * s.k + k];
      EXPECT_EQ(ranks[r], static_cast<double>(sum)) << "rank " << r;
    }
  }
}

// --- BalancedDispatcher::ComputeQuotas ------------------------------------

TEST(BalancedDispatcherTest, MatchesBruteForceOnTinyCases) {
  for (uint64_t seed = 0; seed < 400; ++seed) {
    Rng rng(seed);
    const Shape s = RandomShape(rng, 3, 3);
    SCOPED_TRACE(Describe(seed, s));
    const std::vector<int32_t> layer = RandomPlacement(rng, s.e, s.r, s.k);
    const std::vector<int64_t> counts = RandomCounts(rng, s.e, 6);
    BalancedDispatcher d(s.e, s.r, s.k);
    d.SetPlacement(layer);
    std::vector<int64_t> quota(layer.size());
    const int64_t max_load = d.ComputeQuotas(counts, quota);
    const int64_t optimum = BruteForceOptimum(layer, counts, s.r, s.k);
    EXPECT_EQ(max_load, optimum);
    // The max-flow reference agrees with the brute force too.
    EXPECT_EQ(MaxFlowOptimum(layer, counts, s.r, s.k), optimum);
    ExpectValidQuotas(layer, counts, quota);
    const std::vector<int64_t> loads = RankLoadsOf(quota, s.r, s.k);
    EXPECT_EQ(*std::max_element(loads.begin(), loads.end()), max_load);
  }
}

TEST(BalancedDispatcherTest, MatchesMaxFlowReferenceOnRandomCases) {
  for (uint64_t seed = 0; seed < 300; ++seed) {
    Rng rng(seed);
    const Shape s = RandomShape(rng, 10, 6);
    SCOPED_TRACE(Describe(seed, s));
    const std::vector<int32_t> layer = RandomPlacement(rng, s.e, s.r, s.k);
    const std::vector<int64_t> counts = RandomCounts(rng, s.e, 1000);
    BalancedDispatcher d(s.e, s.r, s.k);
    d.SetPlacement(layer);
    std::vector<int64_t> quota(layer.size());
    const int64_t max_load = d.ComputeQuotas(counts, quota);
    EXPECT_EQ(max_load, MaxFlowOptimum(layer, counts, s.r, s.k));
    ExpectValidQuotas(layer, counts, quota);
    const std::vector<int64_t> loads = RankLoadsOf(quota, s.r, s.k);
    EXPECT_EQ(*std::max_element(loads.begin(), loads.end()), max_load);
    // Never worse than round robin (a split of its own).
    std::vector<int64_t> rr(layer.size());
    RoundRobinQuotas(BuildLayerRouting(layer, s.e, Topology{s.r, s.r, s.k}),
                     counts, rr);
    const std::vector<int64_t> rr_loads = RankLoadsOf(rr, s.r, s.k);
    EXPECT_LE(max_load, *std::max_element(rr_loads.begin(), rr_loads.end()));
  }
}

TEST(BalancedDispatcherTest, MatchesMaxFlowReferenceAtDeepSeekV3Scale) {
  // 256 experts on 32 ranks x 9 slots: 32 redundant slots.
  for (uint64_t seed = 0; seed < 8; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    Rng rng(seed);
    const std::vector<int32_t> layer = RandomPlacement(rng, 256, 32, 9);
    const std::vector<int64_t> counts = RandomCounts(rng, 256, 2000);
    BalancedDispatcher d(256, 32, 9);
    d.SetPlacement(layer);
    std::vector<int64_t> quota(layer.size());
    const int64_t max_load = d.ComputeQuotas(counts, quota);
    EXPECT_EQ(max_load, MaxFlowOptimum(layer, counts, 32, 9));
    ExpectValidQuotas(layer, counts, quota);
  }
}

TEST(BalancedDispatcherTest, WithoutReplicasQuotasAreTheCounts) {
  const std::vector<int32_t> layer = {3, 0, 5, 1, 4, 2};  // 3 ranks x 2.
  const std::vector<int64_t> counts = {7, 0, 9, 4, 1, 12};
  BalancedDispatcher d(6, 3, 2);
  d.SetPlacement(layer);
  std::vector<int64_t> quota(6);
  EXPECT_EQ(d.ComputeQuotas(counts, quota), 12);  // Rank 1: experts 5, 1.
  EXPECT_EQ(quota, (std::vector<int64_t>{4, 7, 12, 0, 1, 9}));
}

TEST(BalancedDispatcherTest, HotExpertOnEveryRankEvensTheRanks) {
  // 4 ranks x 2: expert 0 on every rank, experts 1-4 once each.
  const std::vector<int32_t> layer = {0, 1, 0, 2, 0, 3, 0, 4};
  const std::vector<int64_t> counts = {100, 10, 20, 30, 40};
  BalancedDispatcher d(5, 4, 2);
  d.SetPlacement(layer);
  std::vector<int64_t> quota(8);
  // Round robin gives each replica 25: rank 3 carries 65.
  EXPECT_EQ(d.ComputeQuotas(counts, quota), 50);
  EXPECT_EQ(quota, (std::vector<int64_t>{40, 10, 30, 20, 20, 30, 10, 40}));
  // Too few hot tokens to even out: the busiest fixed rank sets the bound.
  const std::vector<int64_t> few = {6, 10, 20, 30, 40};
  EXPECT_EQ(d.ComputeQuotas(few, quota), 40);
  ExpectValidQuotas(layer, few, quota);
  EXPECT_EQ(quota[6], 0);  // Nothing more for rank 3.
}

TEST(BalancedDispatcherTest, CapRisesToABottleneckAboveTheAverage) {
  // Expert 0 on ranks 0 and 1 only, everything else idle: the average (34)
  // is not reachable, the optimum is half the hot tokens.
  const std::vector<int32_t> layer = {0, 1, 0, 2, 3, 4};
  const std::vector<int64_t> counts = {101, 0, 0, 0, 0};
  BalancedDispatcher d(5, 3, 2);
  d.SetPlacement(layer);
  std::vector<int64_t> quota(6);
  EXPECT_EQ(d.ComputeQuotas(counts, quota), 51);
  ExpectValidQuotas(layer, counts, quota);
}

TEST(BalancedDispatcherTest, AugmentingPathMovesTokensThroughASharedExpert) {
  // Expert 0 on ranks 1 and 2, expert 1 on ranks 0 and 1, expert 2 (7
  // tokens) fixed on rank 0. Filling expert 0 first fills rank 1, so expert
  // 1's tokens only fit once expert 0's move from rank 1 to rank 2.
  const std::vector<int32_t> layer = {1, 2, 0, 1, 0, 3};
  const std::vector<int64_t> counts = {10, 10, 7, 0};
  BalancedDispatcher d(4, 3, 2);
  d.SetPlacement(layer);
  std::vector<int64_t> quota(6);
  EXPECT_EQ(d.ComputeQuotas(counts, quota), 9);
  ExpectValidQuotas(layer, counts, quota);
  EXPECT_EQ(RankLoadsOf(quota, 3, 2), (std::vector<int64_t>{9, 9, 9}));
}

TEST(BalancedDispatcherTest, DeterministicAcrossCallsObjectsAndPlacements) {
  Rng rng(7);
  const std::vector<int32_t> layer = RandomPlacement(rng, 64, 8, 10);
  const std::vector<int32_t> other = RandomPlacement(rng, 64, 8, 10);
  const std::vector<int64_t> counts = RandomCounts(rng, 64, 500);
  BalancedDispatcher a(64, 8, 10);
  BalancedDispatcher b(64, 8, 10);
  a.SetPlacement(layer);
  b.SetPlacement(other);
  std::vector<int64_t> first(80), again(80), scratch(80), fresh(80);
  const int64_t max_load = a.ComputeQuotas(counts, first);
  EXPECT_EQ(a.ComputeQuotas(counts, again), max_load);
  EXPECT_EQ(first, again);
  b.ComputeQuotas(counts, scratch);  // Another layer's state in between.
  b.SetPlacement(layer);
  EXPECT_EQ(b.ComputeQuotas(counts, fresh), max_load);
  EXPECT_EQ(first, fresh);
}

TEST(BalancedDispatcherTest, Int32CountsGiveTheSameQuotas) {
  Rng rng(11);
  const std::vector<int32_t> layer = RandomPlacement(rng, 40, 6, 9);
  const std::vector<int64_t> counts = RandomCounts(rng, 40, 300);
  const std::vector<int32_t> counts32(counts.begin(), counts.end());
  BalancedDispatcher d(40, 6, 9);
  d.SetPlacement(layer);
  std::vector<int64_t> q64(54), q32(54);
  EXPECT_EQ(d.ComputeQuotas(counts, q64), d.ComputeQuotas(counts32, q32));
  EXPECT_EQ(q64, q32);
}

// --- BalancedDispatcher::MapTokens ----------------------------------------

// Router output: `tokens` tokens of `top_k` distinct experts each.
std::vector<int32_t> RandomTopk(Rng& rng, int e, int tokens, int top_k) {
  std::vector<int32_t> ids;
  for (int t = 0; t < tokens; ++t) {
    const size_t begin = ids.size();
    while (ids.size() - begin < static_cast<size_t>(top_k)) {
      // Low ids are hotter: the smaller of two draws.
      const int32_t x = std::min(rng.Below(e), rng.Below(e));
      if (std::find(ids.begin() + static_cast<ptrdiff_t>(begin), ids.end(),
                    x) == ids.end()) {
        ids.push_back(x);
      }
    }
  }
  return ids;
}

std::vector<int64_t> Histogram(std::span<const int32_t> ids, int n) {
  std::vector<int64_t> h(n, 0);
  for (int32_t x : ids) ++h[x];
  return h;
}

// The mapping the header promises: the k-th occurrence of e goes to the
// replica whose run (replicas in ascending physical id, each repeated
// quota times) holds position offset[e] + k; past the end, the last
// replica with a quota (or e's first replica).
std::vector<int32_t> ExpectedMapping(const std::vector<int32_t>& layer,
                                     const std::vector<int64_t>& quota,
                                     const std::vector<int32_t>& ids, int e,
                                     const std::vector<int64_t>& offsets) {
  std::vector<std::vector<int32_t>> runs(e);
  std::vector<int32_t> tail(e, -1);
  for (size_t p = 0; p < layer.size(); ++p) {
    const int32_t x = layer[p];
    if (tail[x] < 0 || quota[p] > 0) tail[x] = static_cast<int32_t>(p);
    for (int64_t i = 0; i < quota[p]; ++i) {
      runs[x].push_back(static_cast<int32_t>(p));
    }
  }
  std::vector<int64_t> seen(offsets);
  std::vector<int32_t> out;
  for (int32_t x : ids) {
    if (x < 0 || x >= e) {
      out.push_back(-1);
      continue;
    }
    const int64_t k = seen[x]++;
    out.push_back(k < static_cast<int64_t>(runs[x].size()) ? runs[x][k]
                                                           : tail[x]);
  }
  return out;
}

TEST(BalancedDispatcherTest, MapTokensFillsTheQuotasInTokenOrder) {
  for (uint64_t seed = 0; seed < 40; ++seed) {
    Rng rng(seed);
    const Shape s = RandomShape(rng, 8, 9);
    SCOPED_TRACE(Describe(seed, s));
    const int top_k = std::min(s.e, 1 + rng.Below(8));
    const std::vector<int32_t> layer = RandomPlacement(rng, s.e, s.r, s.k);
    const std::vector<int32_t> ids =
        RandomTopk(rng, s.e, 1 + rng.Below(300), top_k);
    const std::vector<int64_t> counts = Histogram(ids, s.e);
    BalancedDispatcher d(s.e, s.r, s.k);
    d.SetPlacement(layer);
    std::vector<int64_t> quota(layer.size());
    d.ComputeQuotas(counts, quota);

    std::vector<int32_t> mapped(ids.size());
    d.MapTokens(ids, mapped);
    // Every token lands on a replica of its expert, and the slots receive
    // exactly their quotas.
    std::vector<int64_t> received(layer.size(), 0);
    for (size_t i = 0; i < ids.size(); ++i) {
      ASSERT_GE(mapped[i], 0);
      ASSERT_LT(mapped[i], static_cast<int32_t>(layer.size()));
      EXPECT_EQ(layer[mapped[i]], ids[i]) << "token id " << i;
      ++received[mapped[i]];
    }
    EXPECT_EQ(received, quota);
    EXPECT_EQ(mapped, ExpectedMapping(layer, quota, ids, s.e,
                                      std::vector<int64_t>(s.e, 0)));

    // int64 ids map the same; the cursors restart at every call.
    const std::vector<int64_t> ids64(ids.begin(), ids.end());
    std::vector<int64_t> mapped64(ids.size());
    d.MapTokens(ids64, mapped64);
    EXPECT_EQ(mapped64, std::vector<int64_t>(mapped.begin(), mapped.end()));
  }
}

TEST(BalancedDispatcherTest, MapTokensGivesBadIdsMinusOne) {
  // 2 ranks x 2: expert 0 on both ranks, 1 and 2 once.
  const std::vector<int32_t> layer = {0, 1, 2, 0};
  BalancedDispatcher d(3, 2, 2);
  d.SetPlacement(layer);
  std::vector<int64_t> quota(4);
  EXPECT_EQ(d.ComputeQuotas(std::vector<int64_t>{4, 3, 1}, quota), 4);
  ASSERT_EQ(quota, (std::vector<int64_t>{1, 3, 1, 3}));
  const int32_t kMin32 = std::numeric_limits<int32_t>::min();
  const std::vector<int32_t> ids = {0, -1, 0, 3, 0, kMin32, 1, 0, 2, 1, 1};
  std::vector<int32_t> mapped(ids.size());
  d.MapTokens(ids, mapped);
  // Bad ids take no quota: expert 0's four tokens still go 1 + 3.
  EXPECT_EQ(mapped, (std::vector<int32_t>{0, -1, 3, -1, 3, -1, 1, 3, 2, 1, 1}));

  const std::vector<int64_t> ids64 = {0,
                                      3,
                                      -1,
                                      std::numeric_limits<int64_t>::max(),
                                      std::numeric_limits<int64_t>::min(),
                                      2};
  std::vector<int64_t> mapped64(ids64.size());
  d.MapTokens(ids64, mapped64);
  EXPECT_EQ(mapped64, (std::vector<int64_t>{0, -1, -1, -1, -1, 2}));
}

TEST(BalancedDispatcherTest, MapTokensKeepsUncountedTokensOnTheLastReplica) {
  // 3 ranks x 3: expert 0 on every rank, expert 4 on ranks 0 and 2, the
  // others once.
  const std::vector<int32_t> layer = {0, 1, 4, 0, 2, 5, 0, 3, 4};
  BalancedDispatcher d(6, 3, 3);
  d.SetPlacement(layer);
  std::vector<int64_t> quota(9);
  // Rank 1 is at the optimum (12) with its fixed load alone, so expert 0's
  // 8 tokens must go 5 + 3 (in some order) to ranks 0 and 2.
  ASSERT_EQ(d.ComputeQuotas(std::vector<int64_t>{8, 7, 12, 7, 0, 0}, quota),
            12);
  ASSERT_EQ(quota[3], 0);
  ASSERT_GT(quota[0], 0);
  ASSERT_GT(quota[6], 0);
  const std::vector<int32_t> ids = {0, 4, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0};
  std::vector<int32_t> mapped(ids.size());
  d.MapTokens(ids, mapped);
  // Expert 0: its counted 8 fill slots 0 and 6 (slot 3 has no quota); the
  // 9th and 10th stay on slot 6. Expert 4 had no counted token: its first
  // replica, slot 2.
  EXPECT_EQ(mapped,
            ExpectedMapping(layer, quota, ids, 6, std::vector<int64_t>(6, 0)));
  EXPECT_EQ(mapped[10], 6);
  EXPECT_EQ(mapped[11], 6);
  EXPECT_EQ(mapped[1], 2);
  EXPECT_EQ(mapped[9], 2);
  // Offsets past the counted tokens: everything on the last replica.
  std::vector<int64_t> offsets = {8, 0, 0, 0, 5, 0};
  d.MapTokens(ids, offsets, mapped);
  EXPECT_EQ(mapped, (std::vector<int32_t>{6, 2, 6, 6, 6, 6, 6, 6, 6, 2, 6, 6}));
}

TEST(BalancedDispatcherTest, QuotasBeyond32BitsMapFromAnyOffset) {
  // 2 ranks x 2: experts 0 and 1 on both ranks.
  const std::vector<int32_t> layer = {0, 1, 1, 0};
  BalancedDispatcher d(2, 2, 2);
  d.SetPlacement(layer);
  std::vector<int64_t> quota(4);
  const int64_t half = 5'000'000'000;  // Above 2^32.
  EXPECT_EQ(d.ComputeQuotas(std::vector<int64_t>{2 * half, 0}, quota), half);
  ASSERT_EQ(quota, (std::vector<int64_t>{half, 0, 0, half}));
  const std::vector<int32_t> ids = {0, 0, 1, 0, 0, 0};
  std::vector<int32_t> mapped(ids.size());
  d.MapTokens(ids, mapped);
  EXPECT_EQ(mapped, (std::vector<int32_t>{0, 0, 1, 0, 0, 0}));
  // Two tokens short of the first replica's quota.
  d.MapTokens(ids, std::vector<int64_t>{half - 2, 0}, mapped);
  EXPECT_EQ(mapped, (std::vector<int32_t>{0, 0, 1, 3, 3, 3}));
  // Past every counted token: the last replica.
  d.MapTokens(ids, std::vector<int64_t>{2 * half + 7, 0}, mapped);
  EXPECT_EQ(mapped, (std::vector<int32_t>{3, 3, 1, 3, 3, 3}));
}

TEST(BalancedDispatcherTest, MapTokensWithOffsetsHonoursTheQuotasAcrossRanks) {
  for (uint64_t seed = 0; seed < 20; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    Rng rng(seed);
    constexpr int kE = 24, kR = 4, kK = 8, kSources = 4;
    const std::vector<int32_t> layer = RandomPlacement(rng, kE, kR, kK);
    // Each sending rank's own router output, and its counts.
    std::vector<std::vector<int32_t>> local(kSources);
    std::vector<int64_t> rank_counts;
    std::vector<int32_t> all_ids;
    for (auto& ids : local) {
      ids = RandomTopk(rng, kE, rng.Below(60), 4);
      const std::vector<int64_t> h = Histogram(ids, kE);
      rank_counts.insert(rank_counts.end(), h.begin(), h.end());
      all_ids.insert(all_ids.end(), ids.begin(), ids.end());
    }
    BalancedDispatcher d(kE, kR, kK);
    d.SetPlacement(layer);
    std::vector<int32_t> all_mapped(all_ids.size());
    std::vector<int64_t> quota(layer.size());
    std::vector<int64_t> counts(kE), offsets(kE);
    GlobalCountsAndOffsets(rank_counts, 0, counts, offsets);
    d.ComputeQuotas(counts, quota);
    d.MapTokens(all_ids, all_mapped);

    // Every rank maps its own tokens from its offsets: together they are
    // the mapping of all tokens in rank order, so the quotas hold exactly.
    std::vector<int32_t> joined;
    for (int s = 0; s < kSources; ++s) {
      std::vector<int64_t> c(kE);
      GlobalCountsAndOffsets(rank_counts, s, c, offsets);
      EXPECT_EQ(c, counts);
      std::vector<int32_t> mapped(local[s].size());
      d.MapTokens(local[s], offsets, mapped);
      const std::vector<int64_t> ids64(local[s].begin(), local[s].end());
      std::vector<int64_t> mapped64(ids64.size());
      d.MapTokens(ids64, offsets, mapped64);
      EXPECT_EQ(mapped64, std::vector<int64_t>(mapped.begin(), mapped.end()));
      joined.insert(joined.end(), mapped.begin(), mapped.end());
    }
    EXPECT_EQ(joined, all_mapped);
    std::vector<int64_t> received(layer.size(), 0);
    for (int32_t p : joined) ++received[p];
    EXPECT_EQ(received, quota);
  }
}

// The AVX-512 loop against the scalar one and the promised mapping, over
// many blocks of 1024 ids: counts that match the ids, counts short of them
// and beyond them, offsets, ids out of range, shapes past 256 experts, and
// replicas without a quota.
TEST(BalancedDispatcherTest, VectorLoopMapsAsTheScalarLoop) {
  {
    BalancedDispatcher probe(2, 1, 2);
    if (!probe.vector_mapping()) {
      GTEST_SKIP() << "this CPU has no AVX-512F: MapTokens runs its scalar "
                      "loop only";
    }
  }
  for (uint64_t seed = 0; seed < 30; ++seed) {
    Rng rng(seed);
    // Every fifth case at DeepSeek-V3's shape or past 256 experts.
    const bool wide = seed % 5 == 0;
    const int e = wide ? (seed % 2 == 0 ? 256 : 320) : 2 + rng.Below(40);
    const int r = wide ? 32 : 1 + rng.Below(8);
    const int k = std::max((e + r - 1) / r + 1 + rng.Below(3), 1);
    if (k > e) continue;
    SCOPED_TRACE("seed " + std::to_string(seed) + ": E=" + std::to_string(e) +
                 " R=" + std::to_string(r) + " K=" + std::to_string(k));
    const std::vector<int32_t> layer = RandomPlacement(rng, e, r, k);
    std::vector<int32_t> ids =
        RandomTopk(rng, e, 1 + rng.Below(wide ? 8192 : 700),
                   std::min(e, 1 + rng.Below(8)));
    std::vector<int64_t> counts = Histogram(ids, e);
    // Miscounts: some experts counted short, some beyond their ids.
    if (seed % 3 == 1) {
      for (int64_t& c : counts) c = c * (1 + rng.Below(3)) / 2;
    }
    // Ids out of range, kept out of the counts.
    if (seed % 4 == 2) {
      for (int32_t& x : ids) {
        if (rng.Below(50) == 0) x = rng.Below(2) == 0 ? -1 - rng.Below(5) : e;
      }
    }
    std::vector<int64_t> offsets(e, 0);
    if (seed % 2 == 1) {
      for (int64_t& o : offsets) o = rng.Below(40);
    }
    BalancedDispatcher d(e, r, k);
    d.SetPlacement(layer);
    std::vector<int64_t> quota(layer.size());
    d.ComputeQuotas(counts, quota);

    const std::vector<int32_t> want =
        ExpectedMapping(layer, quota, ids, e, offsets);
    const std::vector<int64_t> ids64(ids.begin(), ids.end());
    const std::vector<int64_t> want64(want.begin(), want.end());
    for (bool vector : {true, false}) {
      d.set_vector_mapping(vector);
      ASSERT_EQ(d.vector_mapping(), vector);
      std::vector<int32_t> mapped(ids.size(), -7);
      std::vector<int64_t> mapped64(ids.size(), -7);
      if (seed % 2 == 1) {
        d.MapTokens(ids, offsets, mapped);
        d.MapTokens(ids64, offsets, mapped64);
      } else {
        d.MapTokens(ids, mapped);
        d.MapTokens(ids64, mapped64);
      }
      EXPECT_EQ(mapped, want) << (vector ? "vector" : "scalar") << " loop";
      EXPECT_EQ(mapped64, want64) << (vector ? "vector" : "scalar") << " loop";
    }
  }
}

// A replica runs out exactly at the end of a block, one id before it and
// one after: the next block starts on the right replica.
TEST(BalancedDispatcherTest, VectorLoopCrossesAReplicaAtABlockEdge) {
  // 2 ranks x 2: expert 0 on both ranks, expert 1 once.
  const std::vector<int32_t> layer = {0, 1, 2, 0};
  BalancedDispatcher d(3, 2, 2);
  d.SetPlacement(layer);
  for (int64_t first : {1023, 1024, 1025, 2048}) {
    SCOPED_TRACE("first replica's quota " + std::to_string(first));
    const std::vector<int32_t> ids(3000, 0);
    std::vector<int64_t> quota(4);
    // Expert 1 (rank 0) and expert 2 (rank 1) tilt the split of expert 0
    // to `first` on rank 0: both ranks then carry 3000 + first.
    d.ComputeQuotas(std::vector<int64_t>{3000, 3000, 2 * first}, quota);
    ASSERT_EQ(quota[0], first);
    std::vector<int32_t> mapped(ids.size());
    d.MapTokens(ids, mapped);
    for (size_t i = 0; i < ids.size(); ++i) {
      ASSERT_EQ(mapped[i], static_cast<int64_t>(i) < first ? 0 : 3)
          << "id " << i;
    }
  }
}

TEST(GlobalCountsAndOffsetsTest, SumsColumnsAndLowerRows) {
  // 3 sending ranks x 2 experts.
  const std::vector<int64_t> rank_counts = {1, 2, 3, 4, 5, 6};
  std::vector<int64_t> counts(2), offsets(2);
  GlobalCountsAndOffsets(rank_counts, 0, counts, offsets);
  EXPECT_EQ(counts, (std::vector<int64_t>{9, 12}));
  EXPECT_EQ(offsets, (std::vector<int64_t>{0, 0}));
  GlobalCountsAndOffsets(rank_counts, 2, counts, offsets);
  EXPECT_EQ(counts, (std::vector<int64_t>{9, 12}));
  EXPECT_EQ(offsets, (std::vector<int64_t>{4, 6}));
}

TEST(BalancedDispatcherTest, PerStepCallsNeverAllocate) {
  if (!testing_util::AllocationsCounted()) {
    GTEST_SKIP() << "allocations are not counted under ThreadSanitizer";
  }
  Rng rng(3);
  const std::vector<int32_t> layer = RandomPlacement(rng, 256, 32, 9);
  const std::vector<int32_t> ids = RandomTopk(rng, 256, 512, 8);
  const std::vector<int64_t> ids64(ids.begin(), ids.end());
  const std::vector<int64_t> counts = Histogram(ids, 256);
  const std::vector<int32_t> counts32(counts.begin(), counts.end());
  const std::vector<int64_t> rank_counts(4 * 256, 1);
  std::vector<int64_t> quota(288), global(256), offsets(256);
  std::vector<int32_t> mapped(ids.size());
  std::vector<int64_t> mapped64(ids.size());
  BalancedDispatcher d(256, 32, 9);

  const int64_t before = testing_util::ThreadAllocations();
  d.SetPlacement(layer);
  d.ComputeQuotas(counts, quota);
  d.ComputeQuotas(counts32, quota);
  d.MapTokens(ids, mapped);
  d.MapTokens(ids64, mapped64);
  GlobalCountsAndOffsets(rank_counts, 1, global, offsets);
  d.MapTokens(ids, offsets, mapped);
  d.MapTokens(ids64, offsets, mapped64);
  EXPECT_EQ(testing_util::ThreadAllocations() - before, 0);
}

TEST(BalancedDispatcherDeathTest, BadUseAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  BalancedDispatcher d(3, 2, 2);
  std::vector<int64_t> quota(4);
  std::vector<int32_t> ids = {0}, mapped(1);
  EXPECT_DEATH(d.ComputeQuotas(std::vector<int64_t>{1, 1, 1}, quota),
               "no placement");
  EXPECT_DEATH(d.SetPlacement(std::vector<int32_t>{0, 0, 1, 2}),
               "twice on a rank");
  EXPECT_DEATH(d.SetPlacement(std::vector<int32_t>{0, 1, 0, 1}), "no replica");
  EXPECT_DEATH(d.SetPlacement(std::vector<int32_t>{0, 1, 2, 3}),
               "out of range");
  d.SetPlacement(std::vector<int32_t>{0, 1, 2, 0});
  EXPECT_DEATH(d.MapTokens(ids, mapped), "no quotas");
  EXPECT_DEATH(d.ComputeQuotas(std::vector<int64_t>{1, -1, 1}, quota),
               "negative");
  EXPECT_DEATH(BalancedDispatcher(5, 2, 2), "R\\*K >= E");
}

}  // namespace
}  // namespace eplb
