#include "policy/algorithms.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <queue>

#include "eplb/status.h"

namespace eplb::policy {

std::vector<int32_t> MinMaxReplicaCounts(std::span<const double> load,
                                         int num_slots, int max_count) {
  const int n = static_cast<int>(load.size());
  EPLB_CHECK(n <= num_slots &&
             static_cast<int64_t>(n) * max_count >= num_slots);
  std::vector<int32_t> count(n, 1);
  struct Entry {
    double share;
    int32_t expert;
  };
  // Top: largest share, then lowest id.
  auto lower = [](const Entry& a, const Entry& b) {
    return a.share < b.share || (a.share == b.share && a.expert > b.expert);
  };
  std::priority_queue<Entry, std::vector<Entry>, decltype(lower)> heap(lower);
  if (max_count > 1) {
    for (int e = 0; e < n; ++e) heap.push({load[e], e});
  }
  for (int left = num_slots - n; left > 0; --left) {
    const Entry top = heap.top();
    heap.pop();
    const int c = ++count[top.expert];
    if (c < max_count) heap.push({load[top.expert] / c, top.expert});
  }
  return count;
}

namespace {

// Per-rank occupancy of one layer under construction.
class RankFill {
 public:
  RankFill(int num_ranks, int slots_per_rank, int num_experts)
      : k_(slots_per_rank),
        e_(num_experts),
        layer_(static_cast<size_t>(num_ranks) * slots_per_rank, -1),
        used_(num_ranks, 0),
        load_(num_ranks, 0.0),
        holds_(static_cast<size_t>(num_ranks) * num_experts, 0) {}

  bool Holds(int r, int e) const {
    return holds_[static_cast<size_t>(r) * e_ + e];
  }
  bool Full(int r) const { return used_[r] == k_; }
  double load(int r) const { return load_[r]; }
  int32_t at(int r, int s) const {
    return layer_[static_cast<size_t>(r) * k_ + s];
  }

  void Put(int r, int e, double share) {
    layer_[static_cast<size_t>(r) * k_ + used_[r]++] = e;
    holds_[static_cast<size_t>(r) * e_ + e] = 1;
    load_[r] += share;
  }
  // Replaces expert `old_e` in slot s of rank r by `e`.
  void Replace(int r, int s, int e, double old_share, double share) {
    const int old_e = at(r, s);
    holds_[static_cast<size_t>(r) * e_ + old_e] = 0;
    holds_[static_cast<size_t>(r) * e_ + e] = 1;
    layer_[static_cast<size_t>(r) * k_ + s] = e;
    load_[r] += share - old_share;
  }
  std::vector<int32_t> Take() { return std::move(layer_); }

 private:
  int k_;
  int e_;
  std::vector<int32_t> layer_;
  std::vector<int> used_;
  std::vector<double> load_;
  std::vector<char> holds_;
};

}  // namespace

std::vector<int32_t> PlaceLpt(std::span<const double> load,
                              std::span<const int32_t> count, int num_ranks,
                              int slots_per_rank) {
  const int n = static_cast<int>(load.size());
  std::vector<double> share(n);
  std::vector<int32_t> order;
  order.reserve(static_cast<size_t>(num_ranks) * slots_per_rank);
  for (int e = 0; e < n; ++e) {
    share[e] = load[e] / count[e];
    for (int c = 0; c < count[e]; ++c) order.push_back(e);
  }
  EPLB_CHECK(static_cast<int>(order.size()) == num_ranks * slots_per_rank);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return share[a] > share[b]; });
  RankFill fill(num_ranks, slots_per_rank, n);
  for (int32_t e : order) {
    int best = -1;
    int best_any = -1;  // Lightest rank with room, even if it holds e.
    for (int r = 0; r < num_ranks; ++r) {
      if (fill.Full(r)) continue;
      if (best_any < 0 || fill.load(r) < fill.load(best_any)) best_any = r;
      if (fill.Holds(r, e)) continue;
      if (best < 0 || fill.load(r) < fill.load(best)) best = r;
    }
    if (best >= 0) {
      fill.Put(best, e, share[e]);
      continue;
    }
    // Every rank with room holds e: move some expert f of a rank q without e
    // onto best_any, and put e in f's slot on q.
    bool repaired = false;
    for (int q = 0; q < num_ranks && !repaired; ++q) {
      if (fill.Holds(q, e) || !fill.Full(q)) continue;
      for (int s = 0; s < slots_per_rank && !repaired; ++s) {
        const int f = fill.at(q, s);
        if (fill.Holds(best_any, f)) continue;
        fill.Replace(q, s, e, share[f], share[e]);
        fill.Put(best_any, f, share[f]);
        repaired = true;
      }
    }
    EPLB_CHECK_MSG(repaired, "PlaceLpt: no rank can take a replica");
  }
  return fill.Take();
}

void SwapSlots(std::span<int32_t> layer, std::span<char> holds, int num_experts,
               int slots_per_rank, int a, int b) {
  const size_t ra = static_cast<size_t>(a / slots_per_rank) * num_experts;
  const size_t rb = static_cast<size_t>(b / slots_per_rank) * num_experts;
  const int32_t ea = layer[a];
  const int32_t eb = layer[b];
  holds[ra + ea] = 0;
  holds[rb + eb] = 0;
  holds[ra + eb] = 1;
  holds[rb + ea] = 1;
  layer[a] = eb;
  layer[b] = ea;
}

int RefineBySwaps(std::span<int32_t> layer, std::span<const double> load,
                  int num_ranks, int slots_per_rank, int max_swaps,
                  double min_gain, std::span<const char> frozen) {
  const int n = static_cast<int>(load.size());
  const int k = slots_per_rank;
  std::vector<int32_t> count(n, 0);
  for (int32_t e : layer) ++count[e];
  std::vector<double> share(n, 0.0);
  for (int e = 0; e < n; ++e)
    share[e] = count[e] > 0 ? load[e] / count[e] : 0.0;
  std::vector<char> holds(static_cast<size_t>(num_ranks) * n, 0);
  std::vector<double> rank_load(num_ranks, 0.0);
  for (int r = 0; r < num_ranks; ++r) {
    for (int s = 0; s < k; ++s) {
      const int32_t e = layer[static_cast<size_t>(r) * k + s];
      holds[static_cast<size_t>(r) * n + e] = 1;
      rank_load[r] += share[e];
    }
  }
  auto is_frozen = [&](int phy) { return !frozen.empty() && frozen[phy]; };
  int swaps = 0;
  while (swaps < max_swaps) {
    const int h =
        static_cast<int>(std::max_element(rank_load.begin(), rank_load.end()) -
                         rank_load.begin());
    double best_peak = rank_load[h] - min_gain;
    int best_a = -1;
    int best_b = -1;
    for (int r = 0; r < num_ranks; ++r) {
      if (r == h || rank_load[r] >= best_peak) continue;
      for (int sa = 0; sa < k; ++sa) {
        const int pa = h * k + sa;
        if (is_frozen(pa)) continue;
        const int32_t ea = layer[pa];
        if (holds[static_cast<size_t>(r) * n + ea]) continue;
        for (int sb = 0; sb < k; ++sb) {
          const int pb = r * k + sb;
          if (is_frozen(pb)) continue;
          const int32_t eb = layer[pb];
          const double d = share[ea] - share[eb];
          if (d <= 0.0 || holds[static_cast<size_t>(h) * n + eb]) continue;
          const double peak = std::max(rank_load[h] - d, rank_load[r] + d);
          if (peak < best_peak) {
            best_peak = peak;
            best_a = pa;
            best_b = pb;
          }
        }
      }
    }
    if (best_a < 0) break;
    const int r = best_b / k;
    const int32_t ea = layer[best_a];
    const int32_t eb = layer[best_b];
    const double d = share[ea] - share[eb];
    rank_load[h] -= d;
    rank_load[r] += d;
    SwapSlots(layer, holds, n, k, best_a, best_b);
    ++swaps;
  }
  return swaps;
}

namespace {

// Minimum-cost perfect assignment on an n x n integer matrix (Hungarian
// algorithm with potentials). Returns row_of_col[j]. O(n^3).
std::vector<int> AssignMinCost(const std::vector<int64_t>& cost, int n) {
  const int64_t inf = std::numeric_limits<int64_t>::max() / 4;
  std::vector<int64_t> u(n + 1, 0), v(n + 1, 0);
  std::vector<int> p(n + 1, 0), way(n + 1, 0);
  for (int i = 1; i <= n; ++i) {
    p[0] = i;
    int j0 = 0;
    std::vector<int64_t> minv(n + 1, inf);
    std::vector<char> used(n + 1, 0);
    do {
      used[j0] = 1;
      const int i0 = p[j0];
      int64_t delta = inf;
      int j1 = 0;
      for (int j = 1; j <= n; ++j) {
        if (used[j]) continue;
        const int64_t cur =
            cost[static_cast<size_t>(i0 - 1) * n + (j - 1)] - u[i0] - v[j];
        if (cur < minv[j]) {
          minv[j] = cur;
          way[j] = j0;
        }
        if (minv[j] < delta) {
          delta = minv[j];
          j1 = j;
        }
      }
      for (int j = 0; j <= n; ++j) {
        if (used[j]) {
          u[p[j]] += delta;
          v[j] -= delta;
        } else {
          minv[j] -= delta;
        }
      }
      j0 = j1;
    } while (p[j0] != 0);
    do {
      const int j1 = way[j0];
      p[j0] = p[j1];
      j0 = j1;
    } while (j0 != 0);
  }
  std::vector<int> row_of_col(n);
  for (int j = 1; j <= n; ++j) row_of_col[j - 1] = p[j] - 1;
  return row_of_col;
}

// MatchRanksToCurrent above kMaxExactMatchRanks: planned rank i, in
// order, takes the first current rank not yet taken that holds one of its
// experts (in slot order); the ranks left over pair up in order. O(R*K).
void MatchRanksGreedy(std::span<const int32_t> current, std::span<int32_t> plan,
                      int num_ranks, int k, int num_experts) {
  std::vector<std::vector<int>> holders(num_experts);
  for (int r = 0; r < num_ranks; ++r) {
    for (int s = 0; s < k; ++s) {
      std::vector<int>& h = holders[current[static_cast<size_t>(r) * k + s]];
      if (h.empty() || h.back() != r) h.push_back(r);
    }
  }
  std::vector<size_t> next(num_experts, 0);  // First untried holder.
  std::vector<char> taken(num_ranks, 0);
  std::vector<int> row_of_col(num_ranks, -1);
  std::vector<int> unmatched;
  for (int i = 0; i < num_ranks; ++i) {
    int col = -1;
    for (int s = 0; s < k && col < 0; ++s) {
      const int32_t e = plan[static_cast<size_t>(i) * k + s];
      const std::vector<int>& h = holders[e];
      while (next[e] < h.size() && taken[h[next[e]]]) ++next[e];
      if (next[e] < h.size()) col = h[next[e]];
    }
    if (col < 0) {
      unmatched.push_back(i);
      continue;
    }
    taken[col] = 1;
    row_of_col[col] = i;
  }
  size_t u = 0;
  for (int j = 0; j < num_ranks; ++j) {
    if (row_of_col[j] < 0) row_of_col[j] = unmatched[u++];
  }
  std::vector<int32_t> out(plan.size());
  for (int j = 0; j < num_ranks; ++j) {
    std::copy_n(plan.begin() + static_cast<size_t>(row_of_col[j]) * k, k,
                out.begin() + static_cast<size_t>(j) * k);
  }
  std::copy(out.begin(), out.end(), plan.begin());
}

}  // namespace

void MatchRanksToCurrent(std::span<const int32_t> current,
                         std::span<int32_t> plan, int num_ranks,
                         int slots_per_rank) {
  const int k = slots_per_rank;
  int num_experts = 0;
  for (int32_t e : current) num_experts = std::max(num_experts, e + 1);
  for (int32_t e : plan) num_experts = std::max(num_experts, e + 1);
  if (num_ranks > kMaxExactMatchRanks) {
    MatchRanksGreedy(current, plan, num_ranks, k, num_experts);
    return;
  }
  std::vector<char> holds(static_cast<size_t>(num_ranks) * num_experts, 0);
  for (int r = 0; r < num_ranks; ++r) {
    for (int s = 0; s < k; ++s) {
      holds[static_cast<size_t>(r) * num_experts + current[r * k + s]] = 1;
    }
  }
  std::vector<int64_t> cost(static_cast<size_t>(num_ranks) * num_ranks, k);
  for (int i = 0; i < num_ranks; ++i) {
    for (int s = 0; s < k; ++s) {
      const int32_t e = plan[i * k + s];
      for (int j = 0; j < num_ranks; ++j) {
        cost[static_cast<size_t>(i) * num_ranks + j] -=
            holds[static_cast<size_t>(j) * num_experts + e];
      }
    }
  }
  const std::vector<int> row_of_col = AssignMinCost(cost, num_ranks);
  std::vector<int32_t> out(plan.size());
  for (int j = 0; j < num_ranks; ++j) {
    std::copy_n(plan.begin() + row_of_col[j] * k, k, out.begin() + j * k);
  }
  std::copy(out.begin(), out.end(), plan.begin());
}

int MovedExperts(std::span<const int32_t> current,
                 std::span<const int32_t> plan, int num_ranks,
                 int slots_per_rank) {
  const int k = slots_per_rank;
  int moved = 0;
  for (int r = 0; r < num_ranks; ++r) {
    std::span<const int32_t> cur = current.subspan(r * k, k);
    for (int s = 0; s < k; ++s) {
      if (std::find(cur.begin(), cur.end(), plan[r * k + s]) == cur.end())
        ++moved;
    }
  }
  return moved;
}

double ImbalanceLowerBound(std::span<const double> load, int num_ranks,
                           int slots_per_rank) {
  const double total = std::accumulate(load.begin(), load.end(), 0.0);
  if (total <= 0.0) return 1.0;
  const double mean = total / num_ranks;
  const std::vector<int32_t> count =
      MinMaxReplicaCounts(load, num_ranks * slots_per_rank, num_ranks);
  double peak = mean;
  for (size_t e = 0; e < load.size(); ++e)
    peak = std::max(peak, load[e] / count[e]);
  return peak / mean;
}

}  // namespace eplb::policy
