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

void RankHeap::Reset(int n) {
  heap_.clear();
  aside_.clear();
  // Equal loads, ids ascending: already a heap.
  for (int r = 0; r < n; ++r) heap_.push_back({0.0, r});
}

void RankHeap::SiftDown(size_t i) {
  const size_t n = heap_.size();
  const Entry e = heap_[i];
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= n) break;
    if (c + 1 < n && Lighter(heap_[c + 1], heap_[c])) ++c;
    if (!Lighter(heap_[c], e)) break;
    heap_[i] = heap_[c];
    i = c;
  }
  heap_[i] = e;
}

void RankHeap::RaiseTop(double load) {
  heap_[0].load = load;
  SiftDown(0);
}

void RankHeap::TakeTop(double load, bool has_room) {
  if (has_room) {
    RaiseTop(load);
  } else {
    PopTop();
  }
  Restore();
}

void RankHeap::PopTop() {
  heap_[0] = heap_.back();
  heap_.pop_back();
  if (!heap_.empty()) SiftDown(0);
}

void RankHeap::Push(double load, int32_t rank) {
  size_t i = heap_.size();
  heap_.push_back({load, rank});
  const Entry e = heap_[i];
  while (i > 0 && Lighter(e, heap_[(i - 1) / 2])) {
    heap_[i] = heap_[(i - 1) / 2];
    i = (i - 1) / 2;
  }
  heap_[i] = e;
}

void RankHeap::Restore(int except) {
  for (const Entry& a : aside_) {
    if (a.rank != except) Push(a.load, a.rank);
  }
  aside_.clear();
}

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
  RankHeap heap;  // The ranks with room.
  heap.Reset(num_ranks);
  for (int32_t e : order) {
    const int best = heap.SeekTop([&](int r) { return fill.Holds(r, e); });
    if (best >= 0) {
      fill.Put(best, e, share[e]);
      heap.TakeTop(fill.load(best), !fill.Full(best));
      continue;
    }
    const int best_any = heap.first_seen();  // Lightest with room, holds e.
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
    heap.Restore(best_any);
    if (!fill.Full(best_any)) heap.Push(fill.load(best_any), best_any);
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
  // Each slot's share, so the search reads one array.
  std::vector<double> slot_share(layer.size());
  for (size_t p = 0; p < layer.size(); ++p) slot_share[p] = share[layer[p]];
  auto is_frozen = [&](int phy) { return !frozen.empty() && frozen[phy]; };
  // Partners are tried lightest first, so the search stops at the first one
  // that cannot beat the best swap found; ties between equal peaks still go
  // to the lowest (partner, hot slot, partner slot), as a scan in rank
  // order would find them.
  std::vector<int> by_load(num_ranks);
  std::iota(by_load.begin(), by_load.end(), 0);
  auto lighter = [&](int a, int b) {
    return rank_load[a] < rank_load[b] ||
           (rank_load[a] == rank_load[b] && a < b);
  };
  std::sort(by_load.begin(), by_load.end(), lighter);
  std::vector<int> pos(num_ranks);  // Of each rank in by_load.
  for (int i = 0; i < num_ranks; ++i) pos[by_load[i]] = i;
  // Moves rank q (whose load changed) to its place in by_load.
  auto reorder = [&](int q) {
    int i = pos[q];
    while (i > 0 && lighter(q, by_load[i - 1])) {
      by_load[i] = by_load[i - 1];
      pos[by_load[i]] = i;
      --i;
    }
    while (i + 1 < num_ranks && lighter(by_load[i + 1], q)) {
      by_load[i] = by_load[i + 1];
      pos[by_load[i]] = i;
      ++i;
    }
    by_load[i] = q;
    pos[q] = i;
  };
  // Every rank's shares in ascending order: the best any swap with a partner
  // can do is found from them in O(K) (below), so the K^2 scan runs only
  // for the partners that might beat the best swap so far.
  std::vector<double> sorted(slot_share);
  auto sort_rank = [&](int q) {
    std::sort(sorted.begin() + static_cast<ptrdiff_t>(q) * k,
              sorted.begin() + static_cast<ptrdiff_t>(q + 1) * k);
  };
  for (int q = 0; q < num_ranks; ++q) sort_rank(q);
  int swaps = 0;
  while (swaps < max_swaps) {
    // The most loaded rank, the lowest id on ties: the first of the last
    // run of equal loads in by_load.
    int top = num_ranks - 1;
    while (top > 0 && rank_load[by_load[top - 1]] == rank_load[by_load[top]]) {
      --top;
    }
    const int h = by_load[top];
    double best_peak = rank_load[h] - min_gain;
    int best_a = -1;
    int best_b = -1;
    const double load_h = rank_load[h];
    for (int r : by_load) {
      // A swap of h and r leaves the larger of the two at least at their
      // average: no partner from here on can beat best_peak (a margin for
      // rounding keeps every swap the full scan would take).
      const double load_r = rank_load[r];
      if (0.5 * (load_h + load_r) > best_peak * (1.0 + 1e-12)) break;
      if (r == h) continue;
      // The lowest peak of any swap with r, placement rules aside: for each
      // share s_a of h, the peak max(load_h - d, load_r + d), d = s_a - s_b,
      // falls as d nears (load_h - load_r) / 2 from either side, so only
      // the shares of r nearest s_a - that half can give the lowest (exact
      // in floating point too: both terms are monotone in d).
      const double* hs = sorted.data() + static_cast<size_t>(h) * k;
      const double* rs = sorted.data() + static_cast<size_t>(r) * k;
      const double half = 0.5 * (load_h - load_r);
      double bound = std::numeric_limits<double>::infinity();
      for (int i = 0, j = 0; i < k; ++i) {
        const double t = hs[i] - half;
        while (j < k && rs[j] <= t) ++j;
        if (j > 0 && hs[i] - rs[j - 1] > 0.0) {
          const double d = hs[i] - rs[j - 1];
          bound = std::min(bound, std::max(load_h - d, load_r + d));
        }
        if (j < k && hs[i] - rs[j] > 0.0) {
          const double d = hs[i] - rs[j];
          bound = std::min(bound, std::max(load_h - d, load_r + d));
        }
      }
      if (bound > best_peak * (1.0 + 1e-12)) continue;
      for (int sa = 0; sa < k; ++sa) {
        const int pa = h * k + sa;
        const double share_a = slot_share[pa];
        for (int sb = 0; sb < k; ++sb) {
          const int pb = r * k + sb;
          const double d = share_a - slot_share[pb];
          if (d <= 0.0) continue;
          const double peak = std::max(load_h - d, load_r + d);
          // The arithmetic first: the placement checks run only for a swap
          // that would be the new best.
          if (!(peak < best_peak ||
                (peak == best_peak && best_b >= 0 &&
                 (pb / k < best_b / k ||
                  (pb / k == best_b / k &&
                   (pa < best_a || (pa == best_a && pb < best_b))))))) {
            continue;
          }
          if (is_frozen(pa) || is_frozen(pb) ||
              holds[static_cast<size_t>(r) * n + layer[pa]] ||
              holds[static_cast<size_t>(h) * n + layer[pb]]) {
            continue;
          }
          best_peak = peak;
          best_a = pa;
          best_b = pb;
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
    std::swap(slot_share[best_a], slot_share[best_b]);
    std::copy_n(slot_share.begin() + static_cast<ptrdiff_t>(h) * k, k,
                sorted.begin() + static_cast<ptrdiff_t>(h) * k);
    std::copy_n(slot_share.begin() + static_cast<ptrdiff_t>(r) * k, k,
                sorted.begin() + static_cast<ptrdiff_t>(r) * k);
    sort_rank(h);
    sort_rank(r);
    ++swaps;
    reorder(h);
    reorder(r);
  }
  return swaps;
}

std::vector<int32_t> PlanMinMax(std::span<const double> load, int num_ranks,
                                int slots_per_rank) {
  const int r = num_ranks;
  const int k = slots_per_rank;
  const std::vector<int32_t> count = MinMaxReplicaCounts(load, r * k, r);
  std::vector<int32_t> layer = PlaceLpt(load, count, r, k);
  double total = 0.0;
  for (double v : load) total += v;
  RefineBySwaps(layer, load, r, k, /*max_swaps=*/64 * r, 1e-9 * total / r);
  return layer;
}

namespace {

// A planned rank's overlap with one current rank: `weight` experts of the
// planned rank are held there now.
struct OverlapEdge {
  int32_t col;
  int32_t weight;
};

// Maximum-weight bipartite matching of planned ranks (rows) to current ranks
// (columns) on the sparse overlap graph, exact: rows are inserted one at a
// time by a shortest augmenting path (Dijkstra on reduced costs, dual
// potentials u and v), where every row may also stay unmatched at no gain (a
// private dummy column). Costs are -weight, so the matching found has the
// largest total overlap; rows left unmatched then pair with the free columns
// in order, which adds nothing. Work per row is the part of the graph its
// search visits (typically a few ranks), not R. Ties go to the lower column,
// so the result is deterministic. Returns row_of_col.
std::vector<int> MatchMaxOverlap(std::span<const int32_t> first,
                                 std::span<const OverlapEdge> edge, int n) {
  auto edges_of = [&](int row) {
    return edge.subspan(first[row], first[row + 1] - first[row]);
  };
  // Columns 0..n-1 are current ranks, n + i the dummy of row i.
  constexpr int64_t kInf = std::numeric_limits<int64_t>::max() / 4;
  std::vector<int64_t> u(n, 0), v(2 * static_cast<size_t>(n), 0);
  std::vector<int> row_of_col(2 * static_cast<size_t>(n), -1);
  std::vector<int> col_of_row(n, -1);
  std::vector<int64_t> dist(2 * static_cast<size_t>(n), kInf);
  std::vector<int> pred(2 * static_cast<size_t>(n), -1);  // Row before.
  std::vector<char> done(2 * static_cast<size_t>(n), 0);
  std::vector<int> touched;  // Columns with a finite dist this search.
  std::vector<int> settled;  // Columns popped, in order.
  // Rows reached and their distance (the column through which they were
  // reached has the same distance: the matched edge costs nothing).
  std::vector<std::pair<int, int64_t>> rows;
  // Lowest dist first; at equal dist a free column first (the search ends
  // there: nothing shorter is left), then the lower column.
  struct Item {
    int64_t dist;
    int matched;
    int col;
    bool operator>(const Item& o) const {
      if (dist != o.dist) return dist > o.dist;
      if (matched != o.matched) return matched > o.matched;
      return col > o.col;
    }
  };
  std::priority_queue<Item, std::vector<Item>, std::greater<>> heap;
  // Dual feasibility from the start: u[i] = min over i's edges of the cost
  // (the dummy costs 0), so every reduced cost is >= 0.
  for (int i = 0; i < n; ++i) {
    for (const OverlapEdge& e : edges_of(i)) {
      u[i] = std::min<int64_t>(u[i], -e.weight);
    }
  }
  // Warm start: each row in order takes the lowest free column of a
  // heaviest edge (reduced cost 0, so the duals stay feasible and every
  // matched edge tight); only the rows left need a search.
  for (int i = 0; i < n; ++i) {
    for (const OverlapEdge& e : edges_of(i)) {
      if (-e.weight == u[i] && row_of_col[e.col] < 0) {
        row_of_col[e.col] = i;
        col_of_row[i] = e.col;
        break;
      }
    }
  }
  auto relax = [&](int row, int64_t d) {
    rows.emplace_back(row, d);
    auto offer = [&](int col, int64_t cost) {
      if (done[col]) return;
      const int64_t nd = d + cost - u[row] - v[col];
      if (nd < dist[col]) {
        if (dist[col] == kInf) touched.push_back(col);
        dist[col] = nd;
        pred[col] = row;
        heap.push({nd, row_of_col[col] >= 0 ? 1 : 0, col});
      }
    };
    for (const OverlapEdge& e : edges_of(row)) offer(e.col, -e.weight);
    offer(n + row, 0);
  };
  for (int i0 = 0; i0 < n; ++i0) {
    if (col_of_row[i0] >= 0) continue;  // Matched by the warm start.
    relax(i0, 0);
    int free_col = -1;
    int64_t final_dist = 0;
    while (!heap.empty()) {
      const auto [d, matched, col] = heap.top();
      heap.pop();
      if (done[col] || d != dist[col]) continue;
      done[col] = 1;
      settled.push_back(col);
      if (row_of_col[col] < 0) {
        free_col = col;
        final_dist = d;
        break;
      }
      relax(row_of_col[col], d);
    }
    EPLB_CHECK(free_col >= 0);  // Row i0's own dummy is always free.
    // New potentials keep every reduced cost >= 0 and make the path tight.
    for (const auto& [row, d] : rows) u[row] += final_dist - d;
    for (int col : settled) v[col] -= final_dist - dist[col];
    // Augment along the path back to i0.
    for (int col = free_col;;) {
      const int row = pred[col];
      const int prev = col_of_row[row];  // -1 for i0.
      row_of_col[col] = row;
      col_of_row[row] = col;
      if (row == i0) break;
      col = prev;
    }
    for (int col : touched) {
      dist[col] = kInf;
      done[col] = 0;
    }
    touched.clear();
    settled.clear();
    rows.clear();
    while (!heap.empty()) heap.pop();
  }
  // Rows on their dummy take the free current ranks in order.
  std::vector<int> result(row_of_col.begin(), row_of_col.begin() + n);
  std::vector<char> placed(n, 0);
  for (int j = 0; j < n; ++j) {
    if (result[j] >= 0) placed[result[j]] = 1;
  }
  int next_row = 0;
  for (int j = 0; j < n; ++j) {
    if (result[j] >= 0) continue;
    while (placed[next_row]) ++next_row;
    result[j] = next_row;
    placed[next_row] = 1;
  }
  return result;
}

}  // namespace

void MatchRanksToCurrent(std::span<const int32_t> current,
                         std::span<int32_t> plan, int num_ranks,
                         int slots_per_rank) {
  const int k = slots_per_rank;
  int num_experts = 0;
  for (int32_t e : current) num_experts = std::max(num_experts, e + 1);
  for (int32_t e : plan) num_experts = std::max(num_experts, e + 1);
  // holders[first[e] .. first[e + 1]): the current ranks holding e.
  std::vector<int32_t> first(static_cast<size_t>(num_experts) + 1, 0);
  for (int phy = 0; phy < num_ranks * k; ++phy) ++first[current[phy] + 1];
  for (int e = 0; e < num_experts; ++e) first[e + 1] += first[e];
  std::vector<int32_t> holders(first.back());
  {
    std::vector<int32_t> fill(first.begin(), first.end() - 1);
    for (int phy = 0; phy < num_ranks * k; ++phy) {
      holders[fill[current[phy]]++] = phy / k;
    }
  }
  // Each planned rank's overlap with every current rank it shares an expert
  // with (a rank holds an expert once, so no pair is counted twice).
  std::vector<int32_t> row_first(static_cast<size_t>(num_ranks) + 1, 0);
  std::vector<OverlapEdge> edges;
  edges.reserve(static_cast<size_t>(num_ranks) * k * 2);
  std::vector<int32_t> weight(num_ranks, 0);
  std::vector<int32_t> cols;
  for (int i = 0; i < num_ranks; ++i) {
    for (int s = 0; s < k; ++s) {
      const int32_t e = plan[static_cast<size_t>(i) * k + s];
      for (int32_t h = first[e]; h < first[e + 1]; ++h) {
        if (weight[holders[h]]++ == 0) cols.push_back(holders[h]);
      }
    }
    std::sort(cols.begin(), cols.end());
    for (int32_t j : cols) {
      edges.push_back({j, weight[j]});
      weight[j] = 0;
    }
    cols.clear();
    row_first[i + 1] = static_cast<int32_t>(edges.size());
  }
  const std::vector<int> row_of_col =
      MatchMaxOverlap(row_first, edges, num_ranks);
  std::vector<int32_t> out(plan.size());
  for (int j = 0; j < num_ranks; ++j) {
    std::copy_n(plan.begin() + static_cast<size_t>(row_of_col[j]) * k, k,
                out.begin() + static_cast<size_t>(j) * k);
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
