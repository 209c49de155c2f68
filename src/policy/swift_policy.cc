// Policy 2, SwiftBalancer: incremental and move-bounded.
//
// Instead of re-planning the redundant slots from scratch and then swapping,
// this SwiftBalancer walks from the current layer by the cheapest improving
// steps, which reaches the same balance with a fraction of the moves:
//  - re-point: a replica of an expert that has several is replaced by one
//    more replica of an expert on the most loaded rank (1 move; this is the
//    published SwiftBalancer's "redundant slots re-planned by largest
//    share", done one slot at a time and only where it helps);
//  - swap: an expert of the most loaded rank trades places with one of
//    another rank (2 moves; the published algorithm's swap phase).
// Each step is the one with the largest peak reduction per moved expert; it
// must lower the most loaded rank's peak by >= 1% of the mean rank load. Rules
// kept from the published algorithm: layers below 1.01 are skipped, at most
// 100 swaps, at most one transfer per ordered (source, destination) rank
// pair, shares are load / count (not the reference's w(c+1)/(c+2)) with
// per-layer means, and a layer is adopted only when its predicted imbalance
// is lower. With nodes, a re-point prefers a source on the receiver's node,
// and a cross-node step (re-point from another node, or a swap between
// nodes) is scored 1% of the mean rank load below its gain per move, so
// traffic crosses nodes only when that buys a clearly lower peak.
//
// The walk is one of five candidates the policy frame weighs against the
// current layer (layer_policy.h): the walk's layer; the same refined by up
// to 2R swaps scored on the per-step samples (LayerModel::SwapOnShots: the
// mean over steps of each step's peak / mean rank load, since the mean
// hides experts that are hot in the same steps); the current layer refined
// by the same swaps (the walk follows the newest window's means, the swaps
// every scored step); few moves toward the
// replica counts of DeepSeek's algorithm on the scored load (every expert
// keeps the replicas it still needs, the missing ones fill the freed
// slots); and DeepSeek's full plan with its ranks matched to the current
// ones, refined by swaps. The frame scores them under the dispatch in use
// and chooses by gain per moved expert within the migration budget, so a
// shift that a few moves cannot follow gets the full plan, and steady
// traffic keeps its placement.
//
// One rule is dropped on purpose: the reference never moves a replica
// received in the same round again. A plan is a diff applied once, so moving
// such a replica on costs no extra transfer (it goes straight to its final
// rank); freezing it left some layers stuck at 1.10-1.17 on the DeepSeek-V3
// data. Every step lowers the sorted rank loads lexicographically, so the
// walk cannot cycle; it is bounded by R*K steps.
#include <algorithm>
#include <numeric>
#include <set>
#include <utility>
#include <vector>

#include "policy/algorithms.h"
#include "policy/default_eplb.h"
#include "policy/layer_model.h"
#include "policy/layer_policy.h"
#include "policy/policies.h"

namespace eplb::policy {
namespace {

constexpr double kSkipBelow = 1.01;
constexpr double kMinGain = 0.01;  // Of the mean rank load.
constexpr int kMaxSwaps = 100;
constexpr int kLightRanks = 8;

// Mutable state of one layer during the walk.
class SwiftLayer {
 public:
  explicit SwiftLayer(const LayerContext& ctx);
  std::vector<int32_t> Run();

 private:
  struct Step {
    double score = 0.0;  // Gain per move.
    int a = -1;          // Slot on the hot rank (swap) or expert (re-point).
    int b = -1;          // Partner slot.
    int source = -1;     // Re-point: rank sending the new replica.
    bool repoint = false;
    bool same_node = false;  // Re-point source on the receiver's node.
    int order = 0;           // Tie-break among equal scores (lower first).
  };
  bool Holds(int r, int e) const {
    return holds_[static_cast<size_t>(r) * n_ + e];
  }
  bool PairFree(int src, int dst) const {
    return !pair_used_[static_cast<size_t>(src) * num_ranks_ + dst];
  }
  void SetHolds(int r, int e, bool v) {
    holds_[static_cast<size_t>(r) * n_ + e] = v;
  }
  double Share(int e) const { return share_[e]; }
  void SetCount(int e, int c) {
    count_[e] = c;
    share_[e] = load_[e] / c;
  }
  // The best source of `e` for receiver `r`: a holder not yet sending to r,
  // on r's node if possible. -1 when none. Sets *same_node.
  int SourceFor(int e, int r, bool* same_node) const;
  // Re-points by gain per move (cross-node ones penalised).
  void ConsiderRepoints(int h, double min_gain, Step* best) const;
  void ConsiderSwaps(int h, double min_gain, Step* best) const;
  void Apply(const Step& s, int h);
  // Moves rank q's load by delta, keeping by_load_ in step.
  void AddLoad(int q, double delta) {
    by_load_.erase({rank_load_[q], q});
    rank_load_[q] += delta;
    by_load_.insert({rank_load_[q], q});
  }

  const Topology& t_;
  int num_ranks_, k_, n_;
  std::span<const double> load_;
  std::vector<int32_t> layer_;
  std::vector<int32_t> count_;
  std::vector<double> share_;  // load / count.
  std::vector<double> rank_load_;
  std::vector<char> holds_;
  std::vector<char> pair_used_;
  // [E][R]: the first num_holders_[e] entries are the ranks holding e,
  // ascending (flat, so a layer costs no per-expert allocation).
  std::vector<int> holders_;
  std::vector<int> num_holders_;
  std::span<const int> Holders(int e) const {
    return {holders_.data() + static_cast<size_t>(e) * num_ranks_,
            static_cast<size_t>(num_holders_[e])};
  }
  void AddHolder(int e, int r) {
    int* list = holders_.data() + static_cast<size_t>(e) * num_ranks_;
    int i = num_holders_[e]++;
    for (; i > 0 && list[i - 1] > r; --i) list[i] = list[i - 1];
    list[i] = r;
  }
  void RemoveHolder(int e, int r) {
    int* list = holders_.data() + static_cast<size_t>(e) * num_ranks_;
    int* end = list + num_holders_[e]--;
    std::copy(std::find(list, end, r) + 1, end, std::find(list, end, r));
  }
  // A slot of a replicated expert, with the bounds of a re-point's gain.
  struct Candidate {
    double base;    // Load of its rank without it.
    double f_rise;  // Rise of its expert's share if it goes.
    double others;  // Max new load of the expert's other holders.
    int phy, expert, rank;
  };
  std::vector<Candidate> repointable_;
  // The ranks by (load, id): the lightest first, the hot rank last, so a
  // step costs O(its changes x log R), not O(R).
  std::set<std::pair<double, int>> by_load_;
  std::vector<int> light_;         // The ranks a step searches, by id.
  std::vector<double> min_share_;  // [R]: lightest share per rank.
  double mean_ = 0.0;
  // With nodes, a cross-node move must gain this much more than an
  // intra-node one (1% of the mean rank load) to be preferred.
  double cross_node_penalty_ = 0.0;
  int swaps_ = 0;
};

SwiftLayer::SwiftLayer(const LayerContext& ctx)
    : t_(*ctx.topology),
      num_ranks_(ctx.topology->num_ranks),
      k_(ctx.topology->slots_per_rank),
      n_(ctx.num_experts),
      load_(ctx.load),
      layer_(ctx.current.begin(), ctx.current.end()),
      count_(n_, 0),
      share_(n_, 0.0),
      rank_load_(num_ranks_, 0.0),
      holds_(static_cast<size_t>(num_ranks_) * n_, 0),
      pair_used_(static_cast<size_t>(num_ranks_) * num_ranks_, 0),
      holders_(static_cast<size_t>(n_) * num_ranks_),
      num_holders_(n_, 0),
      min_share_(num_ranks_) {
  repointable_.reserve(layer_.size());
  for (int32_t e : layer_) ++count_[e];
  for (int e = 0; e < n_; ++e) {
    if (count_[e] > 0) SetCount(e, count_[e]);
  }
  for (int phy = 0; phy < static_cast<int>(layer_.size()); ++phy) {
    rank_load_[phy / k_] += Share(layer_[phy]);
    SetHolds(phy / k_, layer_[phy], true);
    AddHolder(layer_[phy], phy / k_);
  }
  for (int r = 0; r < num_ranks_; ++r) by_load_.insert({rank_load_[r], r});
  mean_ = std::accumulate(load_.begin(), load_.end(), 0.0) / num_ranks_;
  if (t_.num_nodes() > 1) cross_node_penalty_ = kMinGain * mean_;
}

int SwiftLayer::SourceFor(int e, int r, bool* same_node) const {
  int src = -1;
  *same_node = false;
  for (int q : Holders(e)) {
    if (!PairFree(q, r)) continue;
    const bool local = t_.NodeOf(q) == t_.NodeOf(r);
    if (src < 0 || (local && !*same_node)) {
      src = q;
      *same_node = local;
    }
  }
  return src;
}

void SwiftLayer::ConsiderRepoints(int h, double min_gain, Step* best) const {
  const double peak = rank_load_[h];
  for (int sa = 0; sa < k_; ++sa) {
    const int e = layer_[h * k_ + sa];
    if (count_[e] >= num_ranks_) continue;
    const double e_new = load_[e] / (count_[e] + 1);
    const double e_drop = Share(e) - e_new;
    // The hot rank's load falls by e_drop at most.
    if (e_drop < min_gain || e_drop < best->score) continue;
    for (const Candidate& c : repointable_) {
      // r's new load, and f's other holders' (less e_drop if they hold e
      // too), bound the gain from below.
      double worst = c.base + e_new;
      if (peak - std::max(worst, c.others - e_drop) < best->score) continue;
      const int f = c.expert, r = c.rank, pb = c.phy;
      if (f == e || Holds(r, e)) continue;
      const double f_rise = c.f_rise;
      // New loads of the other affected ranks: e's holders lose e_drop, f's
      // other holders gain f_rise.
      for (int q : Holders(e)) {
        worst = std::max(worst,
                         rank_load_[q] - e_drop + (Holds(q, f) ? f_rise : 0.0));
      }
      for (int q : Holders(f)) {
        if (q != r) worst = std::max(worst, rank_load_[q] + f_rise);
      }
      const double gain = peak - worst;
      if (gain < min_gain || gain < best->score) continue;
      bool same_node = false;
      const int src = SourceFor(e, r, &same_node);
      if (src < 0) continue;
      const double score = same_node ? gain : gain - cross_node_penalty_;
      // Ties: an intra-node source, then the lower slot on h, then the
      // lower slot re-pointed; independent of the scan order.
      const int order = sa * static_cast<int>(layer_.size()) + pb;
      if (score > best->score ||
          (score == best->score &&
           (same_node > best->same_node ||
            (same_node == best->same_node && order < best->order)))) {
        *best = Step{score, e, pb, src, true, same_node, order};
      }
    }
  }
}

void SwiftLayer::ConsiderSwaps(int h, double min_gain, Step* best) const {
  if (swaps_ >= kMaxSwaps) return;
  const double peak = rank_load_[h];
  for (int r : light_) {
    // A swap gains min(d, peak - load_r - d) <= (peak - load_r) / 2.
    const double room = peak - rank_load_[r];
    if (room < 2 * min_gain || room / 4 <= best->score) continue;
    if (r == h || !PairFree(h, r) || !PairFree(r, h)) continue;
    const bool cross = t_.NodeOf(r) != t_.NodeOf(h);
    for (int sa = 0; sa < k_; ++sa) {
      const int pa = h * k_ + sa;
      const int ea = layer_[pa];
      const double share_a = Share(ea);
      // d = share_a - share_b <= share_a - r's lightest movable share.
      if (std::min(share_a - min_share_[r], room / 2) / 2 <= best->score)
        continue;
      if (Holds(r, ea)) continue;
      for (int sb = 0; sb < k_; ++sb) {
        const int pb = r * k_ + sb;
        const int eb = layer_[pb];
        if (Holds(h, eb)) continue;
        const double d = share_a - Share(eb);
        if (d <= 0.0) continue;
        const double gain = std::min(d, room - d);
        // Two experts move: score per moved expert.
        const double score = gain / 2 - (cross ? cross_node_penalty_ : 0.0);
        if (gain >= min_gain && score > best->score) {
          *best = Step{score, pa, pb, -1, false};
        }
      }
    }
  }
}

void SwiftLayer::Apply(const Step& s, int h) {
  if (s.repoint) {
    const int e = s.a;
    const int f = layer_[s.b];
    const int r = s.b / k_;
    const double e_old = Share(e), f_old = Share(f);
    SetCount(e, count_[e] + 1);
    SetCount(f, count_[f] - 1);
    for (int q : Holders(e)) AddLoad(q, Share(e) - e_old);
    for (int q : Holders(f)) {
      if (q != r) AddLoad(q, Share(f) - f_old);
    }
    AddLoad(r, Share(e) - f_old);
    RemoveHolder(f, r);
    AddHolder(e, r);
    SetHolds(r, f, false);
    SetHolds(r, e, true);
    layer_[s.b] = e;
    pair_used_[static_cast<size_t>(s.source) * num_ranks_ + r] = 1;
    return;
  }
  const int r = s.b / k_;
  const int ea = layer_[s.a], eb = layer_[s.b];
  const double d = Share(ea) - Share(eb);
  AddLoad(h, -d);
  AddLoad(r, d);
  SwapSlots(layer_, holds_, n_, k_, s.a, s.b);
  RemoveHolder(ea, h);
  AddHolder(ea, r);
  RemoveHolder(eb, r);
  AddHolder(eb, h);
  pair_used_[static_cast<size_t>(h) * num_ranks_ + r] = 1;
  pair_used_[static_cast<size_t>(r) * num_ranks_ + h] = 1;
  ++swaps_;
}

std::vector<int32_t> SwiftLayer::Run() {
  const double min_gain = kMinGain * mean_;
  bool widen = false;  // This step searches every rank.
  for (int steps = 0; steps < static_cast<int>(layer_.size()); ++steps) {
    // Only the lightest ranks take new replicas or trade experts with the hot
    // rank (the reference tries only the lightest one); when that finds no
    // step, the same step searches every rank before the walk ends.
    light_.clear();
    const int num_light =
        widen ? num_ranks_ : std::min(num_ranks_, kLightRanks);
    if (widen) {
      light_.resize(num_ranks_);
      std::iota(light_.begin(), light_.end(), 0);
    } else {
      for (auto it = by_load_.begin();
           static_cast<int>(light_.size()) < num_light; ++it) {
        light_.push_back(it->second);
      }
      std::sort(light_.begin(), light_.end());
    }
    repointable_.clear();
    for (int r : light_) {
      double& m = min_share_[r];
      m = 1e300;
      for (int phy = r * k_; phy < (r + 1) * k_; ++phy) {
        const int e = layer_[phy];
        if (count_[e] >= 2) {
          const double rise = load_[e] / (count_[e] - 1) - Share(e);
          double others = 0.0;
          for (int q : Holders(e)) {
            if (q != r) others = std::max(others, rank_load_[q] + rise);
          }
          repointable_.push_back(
              {rank_load_[r] - Share(e), rise, others, phy, e, r});
        }
        m = std::min(m, Share(e));
      }
    }
    // Most loaded rank; the highest id on ties.
    const int h = std::prev(by_load_.end())->second;
    Step best;
    ConsiderRepoints(h, min_gain, &best);
    ConsiderSwaps(h, min_gain, &best);
    if (best.a < 0) {
      if (widen || kLightRanks >= num_ranks_) break;
      widen = true;  // Retry this step over every rank.
      --steps;
      continue;
    }
    widen = false;
    Apply(best, h);
  }
  return layer_;
}

class SwiftPolicy final : public LayerPolicy {
 public:
  std::string_view name() const override { return "swift"; }

 protected:
  bool Selects() const override { return true; }
  std::vector<int32_t> PlanLayer(const LayerContext&) override { return {}; }

  // Candidates: the walk, the walk refined by shot-scored swaps, and a full
  // re-plan (DeepSeek's replication and packing on the scored steps' load,
  // its ranks matched to the current ones, then the same swaps); the frame
  // weighs them against the current layer.
  void PlanCandidates(const LayerContext& ctx,
                      std::vector<LayerCandidate>* out) override {
    const Topology& t = *ctx.topology;
    const int r = t.num_ranks;
    LayerModel& model = *ctx.model;
    const double move_cost =
        ctx.cold && !ctx.options->quick_first_plan ? 0.0 : model.MoveCost();
    const int limit = ctx.options->max_receives_per_rank;
    const int k = t.slots_per_rank;
    // Two full plans, each matched to the current ranks and refined by
    // shot-scored swaps: the min-max plan (replica counts that minimise the
    // largest share, LPT, swaps on the means), which holds its balance as
    // the group widens, and DeepSeek's, so that Swift is never worse than
    // the default policy on what it scores.
    std::vector<int32_t> minmax = PlanMinMax(ctx.scoring_load, r, k);
    MatchRanksToCurrent(ctx.current, minmax, r, k);
    model.SwapOnShots(ctx.current, move_cost, ExtraSwaps(r), limit, &minmax);
    std::vector<int32_t> full = DeepSeekRebalanceLayer(
        ctx.scoring_load, t.num_slots(), /*num_groups=*/1, /*num_nodes=*/1, r);
    std::vector<int32_t> count(ctx.num_experts, 0);  // DeepSeek's replicas.
    for (int32_t e : full) ++count[e];
    MatchRanksToCurrent(ctx.current, full, r, k);
    // A static plan (ctx.static_plan): the candidates that save moves cannot
    // beat the min-max plan and cost most of the time at width; DeepSeek's
    // plan is offered as it is, a floor.
    if (ctx.static_plan) {
      out->push_back({std::move(minmax), LayerChoice::kFull});
      out->push_back({std::move(full), LayerChoice::kFull});
      return;
    }
    model.SwapOnShots(ctx.current, move_cost, ExtraSwaps(r), limit, &full);
    // The current layer refined by the same swaps: the walk plans on the
    // newest window's means, the swaps on every scored step, so on steady
    // traffic this finds moves that pay where the walk's do not.
    std::vector<int32_t> tuned(ctx.current.begin(), ctx.current.end());
    const int tuned_swaps =
        model.SwapOnShots(ctx.current, move_cost, ExtraSwaps(r), limit, &tuned);
    std::vector<int32_t> walked = SwiftWalk(ctx);
    std::vector<int32_t> swapped;
    if (tuned_swaps < ExtraSwaps(r) && ExtraSwaps(r) <= 2 * r &&
        std::equal(walked.begin(), walked.end(), ctx.current.begin())) {
      // The walk kept the layer: the walk's swaps are the search just run,
      // from the same layer, and it stopped before either limit.
      swapped = tuned;
    } else {
      swapped = walked;
      model.SwapOnShots(ctx.current, move_cost, 2 * r, limit, &swapped);
    }
    // Few moves toward DeepSeek's replica counts: every expert keeps what
    // it still needs, the missing replicas fill the freed slots.
    model.ComputeMeansOnly();
    std::vector<int32_t> recount;
    if (model.Incremental(ctx.current, count, limit, &recount)) {
      model.SwapOnShots(ctx.current, move_cost, ExtraSwaps(r), limit, &recount);
      out->push_back({std::move(recount), LayerChoice::kIncremental});
    }
    if (tuned_swaps > 0) {
      out->push_back({std::move(tuned), LayerChoice::kIncremental});
    }
    out->push_back({std::move(walked), LayerChoice::kIncremental});
    out->push_back({std::move(swapped), LayerChoice::kIncremental});
    out->push_back({std::move(minmax), LayerChoice::kFull});
    out->push_back({std::move(full), LayerChoice::kFull});
  }
};

}  // namespace

std::vector<int32_t> SwiftWalk(const LayerContext& ctx) {
  if (ctx.current_imbalance < kSkipBelow) {
    return std::vector<int32_t>(ctx.current.begin(), ctx.current.end());
  }
  return SwiftLayer(ctx).Run();
}

std::unique_ptr<Policy> NewSwiftPolicy() {
  return std::make_unique<SwiftPolicy>();
}

}  // namespace eplb::policy
