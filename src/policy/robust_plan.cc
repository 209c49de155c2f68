// PlanRobust: one placement for several workloads' loads (eplb/robust.h).
//
// Per layer, every workload's load is normalised to total 1, so a rank's
// load in workload w is its share of w's tokens and the max/mean rank load
// is R x the peak share. The objective of a layer is the chosen quantile,
// over the workloads, of their peak rank share.
//
// Starts: the policies' plans of the whole model, made from the workloads
// together: "best" and "default" on the sum of the normalised loads, "best"
// on their per-expert maximum (replicas for every expert that is hot
// anywhere), and "swift" and "flashlb" given the normalised workloads as
// their per-step samples (they score each candidate on every workload).
// Every start is scored per layer and improved by a local search; the layer
// keeps the best result (the earlier start on ties).
//
// Local search (best improvement): the target is the busiest rank of the
// workload at the quantile. The moves that unload it are tried: swapping one
// of its slots with a slot of another rank, re-pointing one of its slots
// holding a replicated expert to another expert, and re-pointing a slot of
// another rank (holding a replicated expert) to one of the target's
// experts, adding it a replica. A move must keep the layer valid (no expert
// twice on a rank, every expert placed) and lower the score, compared in
// order: the objective, then the sum of every workload's peak, then the
// sum of squared rank shares (so that a plateau of the objective still
// moves load off the peak). The search stops when no move lowers it or
// after max_moves_per_layer moves.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "eplb/policy.h"
#include "eplb/robust.h"
#include "policy/parallel.h"

namespace eplb {
namespace {

// Scores are compared with this absolute tolerance (rank shares are
// around 1 / R): a move must gain more than rounding noise.
constexpr double kTolerance = 1e-12;

struct Score {
  double objective = 0.0;
  double peak_sum = 0.0;
  double squares = 0.0;
};

// Whether `a` is lower than `b` by more than the tolerance, in order.
bool Better(const Score& a, const Score& b) {
  if (a.objective < b.objective - kTolerance) return true;
  if (a.objective > b.objective + kTolerance) return false;
  if (a.peak_sum < b.peak_sum - kTolerance) return true;
  if (a.peak_sum > b.peak_sum + kTolerance) return false;
  return a.squares < b.squares - kTolerance;
}

// The local search of one layer, over the workloads loaded on it.
class LayerSearch {
 public:
  // `shares`: [W][E] normalised loads (each sums to 1).
  LayerSearch(const std::vector<std::vector<double>>& shares, int num_ranks,
              int slots_per_rank, int num_experts, double quantile)
      : x_(shares),
        r_(num_ranks),
        k_(slots_per_rank),
        e_(num_experts),
        w_(static_cast<int>(shares.size())),
        q_(quantile),
        count_(num_experts),
        holds_(static_cast<size_t>(num_ranks) * num_experts),
        holder_offsets_(num_experts + 1),
        holder_ranks_(static_cast<size_t>(num_ranks) * slots_per_rank),
        load_(static_cast<size_t>(w_) * num_ranks),
        order_(static_cast<size_t>(w_) * num_ranks),
        peak_(w_),
        new_peak_(w_),
        scratch_(w_),
        stamp_(num_ranks, 0) {}

  void Reset(std::span<const int32_t> layer) {
    slots_.assign(layer.begin(), layer.end());
    Rebuild();
  }
  const std::vector<int32_t>& slots() const { return slots_; }
  const Score& score() const { return score_; }

  // Applies improving moves until none is left or `max_moves` are made.
  int Run(int max_moves) {
    int moves = 0;
    while (moves < max_moves && Step()) ++moves;
    return moves;
  }

 private:
  double Share(int w, int e) const { return x_[w][e]; }
  double& Load(int w, int r) { return load_[static_cast<size_t>(w) * r_ + r]; }
  double LoadOf(int w, int r) const {
    return load_[static_cast<size_t>(w) * r_ + r];
  }
  bool Holds(int r, int e) const {
    return holds_[static_cast<size_t>(r) * e_ + e] != 0;
  }

  // The objective of per-workload peaks.
  double Objective(const std::vector<double>& peaks) {
    if (q_ >= 1.0) return *std::max_element(peaks.begin(), peaks.end());
    std::copy(peaks.begin(), peaks.end(), scratch_.begin());
    const int rank =
        std::max(1, static_cast<int>(std::ceil(q_ * static_cast<double>(w_))));
    std::nth_element(scratch_.begin(), scratch_.begin() + (rank - 1),
                     scratch_.end());
    return scratch_[rank - 1];
  }

  // Recomputes counts, holders, loads, orders and the score from slots_.
  void Rebuild() {
    std::fill(count_.begin(), count_.end(), 0);
    std::fill(holds_.begin(), holds_.end(), 0);
    for (int s = 0; s < r_ * k_; ++s) {
      ++count_[slots_[s]];
      holds_[static_cast<size_t>(s / k_) * e_ + slots_[s]] = 1;
    }
    holder_offsets_[0] = 0;
    for (int e = 0; e < e_; ++e) {
      holder_offsets_[e + 1] = holder_offsets_[e] + count_[e];
    }
    std::vector<int32_t> fill(holder_offsets_.begin(),
                              holder_offsets_.end() - 1);
    for (int s = 0; s < r_ * k_; ++s) {
      holder_ranks_[fill[slots_[s]]++] = s / k_;
    }
    score_ = Score{};
    for (int w = 0; w < w_; ++w) {
      for (int r = 0; r < r_; ++r) {
        double sum = 0.0;
        for (int j = 0; j < k_; ++j) {
          const int32_t e = slots_[r * k_ + j];
          sum += Share(w, e) / count_[e];
        }
        Load(w, r) = sum;
        score_.squares += sum * sum;
      }
      int32_t* order = order_.data() + static_cast<size_t>(w) * r_;
      for (int r = 0; r < r_; ++r) order[r] = r;
      std::sort(order, order + r_, [&](int32_t a, int32_t b) {
        const double la = LoadOf(w, a), lb = LoadOf(w, b);
        return la != lb ? la > lb : a < b;
      });
      peak_[w] = LoadOf(w, order[0]);
      score_.peak_sum += peak_[w];
    }
    score_.objective = Objective(peak_);
  }

  std::span<const int32_t> HoldersOf(int e) const {
    return {holder_ranks_.data() + holder_offsets_[e],
            static_cast<size_t>(holder_offsets_[e + 1] - holder_offsets_[e])};
  }

  // The busiest rank of workload w among those not stamped `mark`.
  double MaxUnmarked(int w, int mark) const {
    const int32_t* order = order_.data() + static_cast<size_t>(w) * r_;
    for (int i = 0; i < r_; ++i) {
      if (stamp_[order[i]] != mark) return LoadOf(w, order[i]);
    }
    return 0.0;
  }

  // The score after swapping slots a (on rank ra) and b (on rank rb).
  Score ScoreSwap(int a, int b) {
    const int ra = a / k_, rb = b / k_;
    const int32_t ea = slots_[a], eb = slots_[b];
    const int mark = ++mark_;
    stamp_[ra] = stamp_[rb] = mark;
    Score s;
    s.squares = score_.squares;
    for (int w = 0; w < w_; ++w) {
      const double d = Share(w, eb) / count_[eb] - Share(w, ea) / count_[ea];
      const double la = LoadOf(w, ra), lb = LoadOf(w, rb);
      const double na = la + d, nb = lb - d;
      s.squares += na * na + nb * nb - la * la - lb * lb;
      new_peak_[w] = std::max({MaxUnmarked(w, mark), na, nb});
      s.peak_sum += new_peak_[w];
    }
    s.objective = Objective(new_peak_);
    return s;
  }

  // The score after re-pointing slot `slot` (expert a, count >= 2) to
  // expert b (not on the slot's rank).
  Score ScoreRepoint(int slot, int32_t b) {
    const int r = slot / k_;
    const int32_t a = slots_[slot];
    const int ca = count_[a], cb = count_[b];
    const int mark = ++mark_;
    for (int32_t h : HoldersOf(a)) stamp_[h] = mark;
    for (int32_t h : HoldersOf(b)) stamp_[h] = mark;
    Score s;
    s.squares = score_.squares;
    for (int w = 0; w < w_; ++w) {
      const double xa = Share(w, a), xb = Share(w, b);
      const double gain_a = xa / (ca - 1) - xa / ca;  // Other holders of a.
      const double loss_b = xb / cb - xb / (cb + 1);  // Holders of b.
      double peak = MaxUnmarked(w, mark);
      for (int32_t h : HoldersOf(a)) {
        const double old = LoadOf(w, h);
        const double now =
            h == r ? old - xa / ca + xb / (cb + 1) : old + gain_a;
        s.squares += now * now - old * old;
        peak = std::max(peak, now);
      }
      for (int32_t h : HoldersOf(b)) {
        const double old = LoadOf(w, h);
        const double now = old - loss_b;
        s.squares += now * now - old * old;
        peak = std::max(peak, now);
      }
      new_peak_[w] = peak;
      s.peak_sum += peak;
    }
    s.objective = Objective(new_peak_);
    return s;
  }

  // One best-improvement move; false when none lowers the score.
  bool Step() {
    // The target: the busiest rank of the workload at the quantile (the
    // lower workload id on ties).
    std::vector<int> by_peak(w_);
    for (int w = 0; w < w_; ++w) by_peak[w] = w;
    std::stable_sort(by_peak.begin(), by_peak.end(),
                     [&](int a, int b) { return peak_[a] < peak_[b]; });
    const int rank = std::max(
        1, std::min(w_,
                    static_cast<int>(std::ceil(q_ * static_cast<double>(w_)))));
    // Ties at the quantile's value: the lowest id among them.
    int wt = by_peak[rank - 1];
    for (int w = 0; w < w_; ++w) {
      if (peak_[w] == peak_[wt] && w < wt) wt = w;
    }
    const int rt = order_[static_cast<size_t>(wt) * r_];

    enum class Kind { kNone, kSwap, kRepoint };
    Kind best_kind = Kind::kNone;
    int best_a = -1;
    int32_t best_b = -1;
    Score best = score_;
    auto consider = [&](const Score& s, Kind kind, int a, int32_t b) {
      if (Better(s, best)) {
        best = s;
        best_kind = kind;
        best_a = a;
        best_b = b;
      }
    };
    const int num_slots = r_ * k_;
    for (int i = rt * k_; i < (rt + 1) * k_; ++i) {
      const int32_t ea = slots_[i];
      const double ta = Share(wt, ea) / count_[ea];
      // Swaps with every slot of another rank.
      for (int j = 0; j < num_slots; ++j) {
        const int rj = j / k_;
        if (rj == rt) continue;
        const int32_t eb = slots_[j];
        if (eb == ea || Holds(rj, ea) || Holds(rt, eb)) continue;
        if (Share(wt, eb) / count_[eb] >= ta) continue;  // Must unload rt.
        consider(ScoreSwap(i, j), Kind::kSwap, i, j);
      }
      // Re-point this slot to an expert rt does not hold.
      if (count_[ea] >= 2) {
        for (int32_t eb = 0; eb < e_; ++eb) {
          if (Holds(rt, eb)) continue;
          if (Share(wt, eb) / (count_[eb] + 1) >= ta) continue;
          consider(ScoreRepoint(i, eb), Kind::kRepoint, i, eb);
        }
      }
    }
    // A replica of one of rt's experts elsewhere, in place of a replicated
    // expert of another rank.
    for (int i = rt * k_; i < (rt + 1) * k_; ++i) {
      const int32_t eb = slots_[i];
      if (Share(wt, eb) <= 0.0 || count_[eb] >= r_) continue;
      for (int j = 0; j < num_slots; ++j) {
        const int rj = j / k_;
        if (rj == rt || Holds(rj, eb) || count_[slots_[j]] < 2) continue;
        consider(ScoreRepoint(j, eb), Kind::kRepoint, j, eb);
      }
    }
    if (best_kind == Kind::kNone) return false;
    if (best_kind == Kind::kSwap) {
      std::swap(slots_[best_a], slots_[best_b]);
    } else {
      slots_[best_a] = best_b;
    }
    Rebuild();
    return true;
  }

  const std::vector<std::vector<double>>& x_;
  const int r_, k_, e_, w_;
  const double q_;
  std::vector<int32_t> slots_;
  std::vector<int32_t> count_;
  std::vector<char> holds_;
  std::vector<int32_t> holder_offsets_;
  std::vector<int32_t> holder_ranks_;
  std::vector<double> load_;    // [W][R]
  std::vector<int32_t> order_;  // [W][R]: ranks by load, descending.
  std::vector<double> peak_;    // [W]
  std::vector<double> new_peak_;
  std::vector<double> scratch_;
  std::vector<int> stamp_;  // [R]
  int mark_ = 0;
  Score score_;
};

Status CheckShapes(const std::vector<LoadMatrix>& loads,
                   const Topology& topology, const RobustPlanOptions& o) {
  if (loads.empty()) return InvalidArgumentError("robust plan: no loads");
  if (!(o.quantile > 0.0 && o.quantile <= 1.0)) {
    return InvalidArgumentError(
        "robust plan: quantile = " + std::to_string(o.quantile) +
        ": must be in (0, 1]");
  }
  if (o.max_moves_per_layer < 0) {
    return InvalidArgumentError("robust plan: max_moves_per_layer = " +
                                std::to_string(o.max_moves_per_layer) +
                                ": must be >= 0");
  }
  if (o.num_groups < 1) {
    return InvalidArgumentError(
        "robust plan: num_groups = " + std::to_string(o.num_groups) +
        ": must be >= 1");
  }
  const LoadMatrix& first = loads.front();
  if (first.num_layers() < 1 || first.num_experts() < 1) {
    return InvalidArgumentError(
        "robust plan: load 0 is empty (" + std::to_string(first.num_layers()) +
        " layers x " + std::to_string(first.num_experts()) + " experts)");
  }
  for (size_t i = 0; i < loads.size(); ++i) {
    const LoadMatrix& m = loads[i];
    if (m.num_layers() != first.num_layers() ||
        m.num_experts() != first.num_experts()) {
      return InvalidArgumentError(
          "robust plan: load " + std::to_string(i) + " has " +
          std::to_string(m.num_layers()) + " layers x " +
          std::to_string(m.num_experts()) + " experts, load 0 has " +
          std::to_string(first.num_layers()) + " x " +
          std::to_string(first.num_experts()));
    }
    EPLB_RETURN_IF_ERROR(
        ValidateLoad(m).WithPrefix("robust plan: load " + std::to_string(i)));
  }
  const int e = first.num_experts();
  if (topology.num_ranks < 1 || topology.slots_per_rank < 1 ||
      topology.num_slots() < e || topology.slots_per_rank > e ||
      topology.ranks_per_node < 1 ||
      topology.num_ranks % topology.ranks_per_node != 0) {
    return InvalidArgumentError(
        "robust plan: topology of " + std::to_string(topology.num_ranks) +
        " ranks x " + std::to_string(topology.slots_per_rank) +
        " slots cannot hold " + std::to_string(e) + " experts");
  }
  return Status::Ok();
}

// A start from a policy: its plan from the initial placement.
StatusOr<Placement> PolicyStart(const char* name, const Placement& initial,
                                const LoadMatrix& load,
                                const LoadTrace* samples,
                                const Topology& topology, int num_groups,
                                int num_threads) {
  EPLB_ASSIGN_OR_RETURN(std::unique_ptr<Policy> policy, CreatePolicy(name));
  PolicyOptions options;
  options.num_groups = num_groups;
  options.num_threads = num_threads;
  options.migration_budget = 1.0;
  EPLB_ASSIGN_OR_RETURN(
      Plan plan,
      policy->Rebalance({&initial, &load, samples, topology}, options));
  return std::move(plan.placement);
}

}  // namespace

double NearestRankQuantile(std::vector<double> values, double q) {
  if (values.empty()) return 1.0;
  const int n = static_cast<int>(values.size());
  const int rank = std::max(1, std::min(n, static_cast<int>(std::ceil(q * n))));
  std::sort(values.begin(), values.end());
  return values[rank - 1];
}

std::vector<WorkloadImbalance> SummariseWorkloads(
    const Placement& placement, const std::vector<LoadMatrix>& loads) {
  std::vector<WorkloadImbalance> out;
  out.reserve(loads.size());
  for (const LoadMatrix& load : loads) {
    WorkloadImbalance wi;
    double sum = 0.0, worst = 0.0;
    for (int l = 0; l < placement.num_layers(); ++l) {
      const double v =
          LayerImbalance(placement.layer(l), load.row(l), placement.num_ranks(),
                         placement.slots_per_rank());
      sum += v;
      worst = std::max(worst, v);
    }
    if (placement.num_layers() > 0) {
      wi.mean = sum / placement.num_layers();
      wi.worst = worst;
    }
    out.push_back(wi);
  }
  return out;
}

StatusOr<RobustPlan> PlanRobust(const std::vector<LoadMatrix>& loads,
                                const Topology& topology,
                                const RobustPlanOptions& options) {
  EPLB_RETURN_IF_ERROR(CheckShapes(loads, topology, options));
  const int num_layers = loads.front().num_layers();
  const int num_experts = loads.front().num_experts();
  const int num_loads = static_cast<int>(loads.size());
  const int r = topology.num_ranks;
  const int k = topology.slots_per_rank;

  // Normalised loads: every workload's layer sums to 1 (all-zero stays 0).
  LoadTrace shares(num_loads, num_layers, num_experts);
  LoadMatrix mean(num_layers, num_experts);
  LoadMatrix peak(num_layers, num_experts);
  for (int w = 0; w < num_loads; ++w) {
    for (int l = 0; l < num_layers; ++l) {
      double total = 0.0;
      for (double v : loads[w].row(l)) total += v;
      if (total <= 0.0) continue;
      for (int e = 0; e < num_experts; ++e) {
        const double v = loads[w].at(l, e) / total;
        shares.at(w, l, e) = v;
        mean.at(l, e) += v / num_loads;
        peak.at(l, e) = std::max(peak.at(l, e), v);
      }
    }
  }

  RobustPlan out;
  const Placement initial =
      Placement::Initial(num_layers, num_experts, topology);
  std::vector<Placement> starts;
  struct StartSpec {
    const char* name;
    const char* policy;
    const LoadMatrix* load;
    const LoadTrace* samples;
  };
  const StartSpec specs[] = {
      {"best on the normalised sum", "best", &mean, nullptr},
      {"default on the normalised sum", "default", &mean, nullptr},
      {"best on the per-expert maximum", "best", &peak, nullptr},
      {"swift on the workloads", "swift", &mean, &shares},
      {"flashlb on the workloads", "flashlb", &mean, &shares},
  };
  for (const StartSpec& spec : specs) {
    StatusOr<Placement> p =
        PolicyStart(spec.policy, initial, *spec.load, spec.samples, topology,
                    options.num_groups, options.num_threads);
    if (!p.ok()) return p.status().WithPrefix(spec.name);
    starts.push_back(*std::move(p));
    out.starts.push_back(spec.name);
  }

  out.placement = initial;
  out.layers.assign(num_layers, RobustLayer{});
  // Layers are independent: each worker writes only its layer (the same
  // plan for any thread count) and keeps its own rows buffer.
  policy::ForEachIndex<std::vector<std::vector<double>>>(
      num_layers, options.num_threads,
      [&](int l, std::vector<std::vector<double>>& x) {
        x.clear();
        for (int w = 0; w < num_loads; ++w) {
          const std::span<const double> row = shares.row(w, l);
          double total = 0.0;
          for (double v : row) total += v;
          if (total > 0.0) x.emplace_back(row.begin(), row.end());
        }
        if (x.empty()) return;  // No load anywhere: the initial layer stays.

        LayerSearch search(x, r, k, num_experts, options.quantile);
        RobustLayer& info = out.layers[l];
        bool have = false;
        Score best;
        std::vector<int32_t> best_layer;
        double best_start = 0.0;
        for (size_t i = 0; i < starts.size(); ++i) {
          search.Reset(starts[i].layer(l));
          const double start_objective = search.score().objective;
          if (i == 0 || start_objective < best_start)
            best_start = start_objective;
          const int moves = search.Run(options.max_moves_per_layer);
          if (!have || Better(search.score(), best)) {
            have = true;
            best = search.score();
            best_layer = search.slots();
            info.moves = moves;
            info.start = static_cast<int>(i);
          }
        }
        info.start_objective = best_start * r;
        info.objective = best.objective * r;
        std::copy(best_layer.begin(), best_layer.end(),
                  out.placement.mutable_layer(l).begin());
      });
  EPLB_RETURN_IF_ERROR(ViolationsToStatus(CheckPlacement(out.placement))
                           .WithPrefix("robust plan (internal error)"));
  out.imbalance.assign(num_loads, std::vector<double>(num_layers, 1.0));
  for (int w = 0; w < num_loads; ++w) {
    for (int l = 0; l < num_layers; ++l) {
      out.imbalance[w][l] =
          LayerImbalance(out.placement.layer(l), loads[w].row(l), r, k);
    }
  }
  return out;
}

}  // namespace eplb
