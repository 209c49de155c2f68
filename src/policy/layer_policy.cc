#include "policy/layer_policy.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "policy/algorithms.h"
#include "policy/layer_model.h"
#include "policy/parallel.h"

namespace eplb::policy {
namespace {

// ReadTrafficHistory sees that the traffic moved a while ago when the
// window before the newest predicts the newest better than all older steps
// by this much log-likelihood per token: noise alone keeps it below about
// 0.03 on per-prompt traffic, while a topic switch a window ago lifts it to
// 0.1-1.
constexpr double kRecentGainPerToken = 0.05;
// And calls the traffic dense (the newest window counts more; the traffic
// may be settled) only where the advantage's sampling scale is at most this:
// below it a shift worth re-planning for stands clearly out of the noise
// (DeepSeek-V3 at 3072 tokens a step: 0.001, with the dispersion of its
// per-step mixes; 8192 tokens: 0.0006), above it (the top-1 and top-2 families
// at 75-512 tokens a step: 0.015-0.06; per-prompt traffic: 0.01-0.1) the test
// cannot tell one regime from several.
constexpr double kSettledMaxNoise = 0.01;
// How far below zero, in multiples of its sampling scale, the advantage may
// fall on settled traffic: a newest window that the window before predicts
// clearly worse than the older steps do holds a shift of its own.
constexpr double kSettledNoiseMultiple = 2.0;
// Half a token per expert: an expert unseen before is unlikely, not
// impossible.
constexpr double kHistoryPrior = 0.5;

// The newest `w` steps of `samples`.
LoadTrace NewestSteps(const LoadTrace& samples, int w) {
  LoadTrace out(w, samples.num_layers(), samples.num_experts());
  const size_t cells =
      static_cast<size_t>(samples.num_layers()) * samples.num_experts();
  std::copy(samples.data().end() - static_cast<ptrdiff_t>(w * cells),
            samples.data().end(), out.mutable_data().begin());
  return out;
}

// Pearson's chi-square per degree of freedom of steps [begin, end) of one
// layer (rows: steps, columns: experts with tokens), each step's total
// spread by the window's shares; `sum` [E] is the window's sum per expert.
// 0 when the window has fewer than two experts with tokens or fewer than two
// steps.
double Dispersion(const LoadTrace& samples, int layer, int begin, int end,
                  std::span<const double> sum) {
  double total = 0.0;
  int experts = 0;
  for (double v : sum) {
    total += v;
    experts += v > 0.0 ? 1 : 0;
  }
  if (experts < 2 || end - begin < 2) return 0.0;
  double chi = 0.0;
  for (int t = begin; t < end; ++t) {
    std::span<const double> row = samples.row(t, layer);
    const double step_total = std::accumulate(row.begin(), row.end(), 0.0);
    if (step_total <= 0.0) continue;
    for (size_t e = 0; e < sum.size(); ++e) {
      if (sum[e] <= 0.0) continue;
      const double expected = sum[e] / total * step_total;
      const double d = row[e] - expected;
      chi += d * d / expected;
    }
  }
  return chi / ((experts - 1.0) * (end - begin - 1.0));
}

}  // namespace

Status ValidatePolicyInput(const PolicyInput& input) {
  if (input.current == nullptr || input.load == nullptr) {
    return InvalidArgumentError(
        "policy input needs a current placement and a load");
  }
  const Placement& cur = *input.current;
  const LoadMatrix& load = *input.load;
  const Topology& t = input.topology;
  if (cur.num_ranks() != t.num_ranks ||
      cur.slots_per_rank() != t.slots_per_rank) {
    return InvalidArgumentError(
        "current map has " + std::to_string(cur.num_ranks()) + " ranks x " +
        std::to_string(cur.slots_per_rank()) + " slots but the topology has " +
        std::to_string(t.num_ranks) + " ranks x " +
        std::to_string(t.slots_per_rank) + " slots");
  }
  if (t.ranks_per_node < 1 || t.num_ranks % t.ranks_per_node != 0) {
    return InvalidArgumentError(
        "ranks_per_node = " + std::to_string(t.ranks_per_node) +
        ": must divide ranks = " + std::to_string(t.num_ranks));
  }
  if (load.num_layers() != cur.num_layers() ||
      load.num_experts() != cur.num_experts()) {
    return InvalidArgumentError(
        "load has " + std::to_string(load.num_layers()) + " layers x " +
        std::to_string(load.num_experts()) +
        " experts but the current map has " + std::to_string(cur.num_layers()) +
        " layers x " + std::to_string(cur.num_experts()) + " experts");
  }
  if (cur.slots_per_rank() > cur.num_experts()) {
    return InvalidArgumentError(
        "slots_per_rank = " + std::to_string(cur.slots_per_rank()) +
        " > experts = " + std::to_string(cur.num_experts()) +
        ": more redundant slots than can be used without duplicates on a rank");
  }
  EPLB_RETURN_IF_ERROR(ValidateLoad(load));
  if (input.samples != nullptr) {
    const LoadTrace& s = *input.samples;
    if (s.num_layers() != cur.num_layers() ||
        s.num_experts() != cur.num_experts()) {
      return InvalidArgumentError(
          "samples have " + std::to_string(s.num_layers()) + " layers x " +
          std::to_string(s.num_experts()) +
          " experts but the current map has " +
          std::to_string(cur.num_layers()) + " layers x " +
          std::to_string(cur.num_experts()) + " experts");
    }
    EPLB_RETURN_IF_ERROR(ValidateLoad(s));
  }
  Status valid = ViolationsToStatus(CheckPlacement(cur));
  if (!valid.ok()) return valid.WithPrefix("current map");
  return Status::Ok();
}

Status LayerPolicy::Begin(const PolicyInput&, const PolicyOptions&,
                          std::vector<std::string>*) {
  return Status::Ok();
}

void LayerPolicy::PlanCandidates(const LayerContext&,
                                 std::vector<LayerCandidate>*) {}

void LayerPolicy::Chosen(int, std::span<const int32_t>, double) {}

TrafficHistory ReadTrafficHistory(const PolicyInput& input) {
  TrafficHistory h;
  h.moved = input.window_shifted;
  h.noise = std::numeric_limits<double>::infinity();
  const LoadTrace* samples = input.samples;
  if (samples == nullptr) return h;
  const int steps = samples->num_steps();
  const int w = input.window_steps;
  if (w < 1 || 2 * w > steps) return h;
  // A: the newest w steps; C: the w before them; B: all older steps.
  const int e_count = samples->num_experts();
  std::vector<double> a(e_count), b(e_count), c(e_count);
  double advantage = 0.0;  // log L(A | C) - log L(A | B).
  double tokens = 0.0;     // In A.
  double c_tokens = 0.0;   // In C.
  double dispersion = 0.0;
  int dispersed_layers = 0;
  for (int l = 0; l < samples->num_layers(); ++l) {
    std::fill(a.begin(), a.end(), 0.0);
    std::fill(b.begin(), b.end(), 0.0);
    std::fill(c.begin(), c.end(), 0.0);
    for (int t = 0; t < steps; ++t) {
      std::span<const double> row = samples->row(t, l);
      std::vector<double>& into = t >= steps - w ? a : b;
      for (int e = 0; e < e_count; ++e) into[e] += row[e];
      if (t >= steps - 2 * w && t < steps - w) {
        for (int e = 0; e < e_count; ++e) c[e] += row[e];
      }
    }
    double nb = kHistoryPrior * e_count, nc = kHistoryPrior * e_count;
    for (int e = 0; e < e_count; ++e) {
      nb += b[e];
      nc += c[e];
      c_tokens += c[e];
    }
    for (int e = 0; e < e_count; ++e) {
      if (a[e] == 0.0) continue;
      tokens += a[e];
      advantage += a[e] * (std::log((c[e] + kHistoryPrior) / nc) -
                           std::log((b[e] + kHistoryPrior) / nb));
    }
    const double d = Dispersion(*samples, l, steps - 2 * w, steps - w, c);
    if (d > 0.0) {
      dispersion += d;
      ++dispersed_layers;
    }
  }
  if (tokens <= 0.0) return h;
  h.advantage = advantage / tokens;
  h.moved = h.moved || h.advantage > kRecentGainPerToken;
  // An idle window C vouches for nothing: not settled.
  if (c_tokens <= 0.0) return h;
  h.dispersion =
      std::max(1.0, dispersed_layers > 0 ? dispersion / dispersed_layers : 1.0);
  h.noise = h.dispersion * (e_count - 1) /
            (c_tokens / static_cast<double>(samples->num_layers()));
  h.dense = h.noise <= kSettledMaxNoise;
  h.settled =
      !h.moved && h.dense && h.advantage >= -kSettledNoiseMultiple * h.noise;
  return h;
}

const LoadTrace* ChooseScoringSamples(const PolicyInput& input,
                                      LoadTrace* recent) {
  return ChooseScoringSamples(input, ReadTrafficHistory(input), recent);
}

const LoadTrace* ChooseScoringSamples(const PolicyInput& input,
                                      const TrafficHistory& history,
                                      LoadTrace* recent) {
  const LoadTrace* samples = input.samples;
  if (samples == nullptr || samples->num_steps() < 2) return samples;
  const int w = input.window_steps;
  if (w < 1 || w >= samples->num_steps()) return samples;
  if (!history.moved) return samples;
  // The newest window alone predicts what comes next.
  *recent = NewestSteps(*samples, w);
  return recent;
}

int NewestWindowWeight(const PolicyInput& input, const TrafficHistory& history,
                       int recent_weight) {
  const LoadTrace* samples = input.samples;
  const int w = input.window_steps;
  if (samples == nullptr || w < 1 || w >= samples->num_steps()) return 1;
  if (history.moved || !history.dense) return 1;
  return std::max(1, recent_weight);
}

namespace {

// What a policy sees of layer `l` of `input`, scoring on `samples`.
LayerContext MakeContext(int l, const PolicyInput& input,
                         const PolicyOptions& options, const LoadTrace* samples,
                         double current_imbalance) {
  LayerContext ctx;
  ctx.layer = l;
  ctx.num_experts = input.current->num_experts();
  ctx.current = input.current->layer(l);
  ctx.load = input.load->row(l);
  ctx.samples = samples;
  ctx.topology = &input.topology;
  ctx.options = &options;
  ctx.current_imbalance = current_imbalance;
  return ctx;
}

// Moves of a layer change, split by whether a current holder of the expert
// shares the receiving rank's node.
void CountMoves(std::span<const int32_t> cur, std::span<const int32_t> plan,
                const Topology& t, int num_experts, LayerPlan* out) {
  const int k = t.slots_per_rank;
  // [node][expert]: nodes are few, so this stays small at any width (a
  // rank's own experts are found among its K slots).
  std::vector<char> on_node(static_cast<size_t>(t.num_nodes()) * num_experts,
                            0);
  for (int phy = 0; phy < t.num_slots(); ++phy) {
    on_node[static_cast<size_t>(t.NodeOf(phy / k)) * num_experts + cur[phy]] =
        1;
  }
  for (int phy = 0; phy < t.num_slots(); ++phy) {
    const int r = phy / k;
    const int32_t e = plan[phy];
    const auto rank_begin = cur.begin() + static_cast<ptrdiff_t>(r) * k;
    if (std::find(rank_begin, rank_begin + k, e) != rank_begin + k) continue;
    ++out->moved_experts;
    if (on_node[static_cast<size_t>(t.NodeOf(r)) * num_experts + e]) {
      ++out->intra_node_moves;
    } else {
      ++out->inter_node_moves;
    }
  }
}

}  // namespace

StatusOr<Plan> LayerPolicy::Rebalance(const PolicyInput& input,
                                      const PolicyOptions& options) {
  EPLB_RETURN_IF_ERROR(ValidatePolicyInput(input));
  if (!(options.settled_move_discount > 0.0 &&
        options.settled_move_discount <= 1.0)) {
    return InvalidArgumentError("settled_move_discount = " +
                                std::to_string(options.settled_move_discount) +
                                ": must be in (0, 1]");
  }
  if (options.recent_window_weight < 1 || options.recent_window_weight > 16) {
    return InvalidArgumentError("recent_window_weight = " +
                                std::to_string(options.recent_window_weight) +
                                ": must be in [1, 16]");
  }
  const Placement& cur = *input.current;
  const Topology& t = input.topology;
  const int r = t.num_ranks;
  const int k = t.slots_per_rank;
  const int e = cur.num_experts();
  Plan plan{cur, std::vector<LayerPlan>(cur.num_layers()), {}};
  EPLB_RETURN_IF_ERROR(Begin(input, options, &plan.notes));
  if (Selects()) return RebalanceSelecting(input, options, std::move(plan));
  const int max_receives = options.max_receives_per_rank;
  std::vector<std::vector<std::string>> layer_notes(cur.num_layers());
  // One layer. Layers are independent (PlanLayer keeps no state across
  // layers), so workers may plan them in any order: the same plan.
  auto plan_layer = [&](int l) {
    std::span<const double> load = input.load->row(l);
    LayerPlan& info = plan.layers[l];
    info.current_imbalance = LayerImbalance(cur.layer(l), load, r, k);
    info.predicted_imbalance = info.current_imbalance;
    info.lower_bound = ImbalanceLowerBound(load, r, k);
    if (std::all_of(load.begin(), load.end(),
                    [](double v) { return v == 0.0; })) {
      return;  // No load: keep the layer.
    }
    const LayerContext ctx =
        MakeContext(l, input, options, input.samples, info.current_imbalance);
    std::vector<int32_t> planned = PlanLayer(ctx);
    if (planned.empty()) return;
    if (static_cast<int>(planned.size()) != r * k) {
      layer_notes[l].push_back(
          "layer " + std::to_string(l) + ": policy " + std::string(name()) +
          " returned a layer of the wrong size; kept the current layer");
      return;
    }
    KeepSlots(cur.layer(l), planned, r, k);
    Placement one_cur(1, r, k, e);
    Placement one_plan(1, r, k, e);
    std::copy(cur.layer(l).begin(), cur.layer(l).end(),
              one_cur.mutable_layer(0).begin());
    std::copy(planned.begin(), planned.end(),
              one_plan.mutable_layer(0).begin());
    std::vector<Violation> bad = CheckPlan(one_cur, one_plan, max_receives);
    if (!bad.empty()) {
      bad[0].layer = l;
      layer_notes[l].push_back("layer " + std::to_string(l) +
                               ": rejected plan of policy " +
                               std::string(name()) + " (" + bad[0].ToString() +
                               "); kept the current layer");
      return;
    }
    if (std::equal(planned.begin(), planned.end(), cur.layer(l).begin())) {
      return;
    }
    std::copy(planned.begin(), planned.end(),
              plan.placement.mutable_layer(l).begin());
    info.changed = true;
    info.choice = LayerChoice::kFull;
    info.predicted_imbalance = LayerImbalance(planned, load, r, k);
    info.current_score = info.current_imbalance;
    info.predicted_score = info.predicted_imbalance;
    CountMoves(cur.layer(l), planned, t, e, &info);
  };
  ForEachIndex(cur.num_layers(), options.num_threads, plan_layer);
  for (std::vector<std::string>& n : layer_notes) {
    plan.notes.insert(plan.notes.end(), n.begin(), n.end());
  }
  return plan;
}

namespace {

// One option of a layer in the selection: the current placement (index 0,
// no moves) or a candidate.
struct Option {
  double score = 0.0;  // Predicted shot score under the dispatch.
  int moves = 0;       // Experts new to their rank.
  LayerChoice choice = LayerChoice::kKept;
  std::vector<int32_t> layer;  // Empty for the current placement.
};

// A step along a layer's lower convex hull of (moves, score): from option
// `from` to option `to`, gaining `gain` score for `moves` more moves.
struct HullStep {
  double slope = 0.0;  // Gain per move.
  int layer = 0;
  int index = 0;  // Position along the layer's hull.
  int to = 0;
  int moves = 0;
};

// The hull steps of one layer's options (options[0] is the current
// placement): each next option has more moves and the best gain per added
// move; only steps that gain more than `move_cost` per move.
void HullSteps(int layer, const std::vector<Option>& options, double move_cost,
               std::vector<HullStep>* out) {
  int at = 0;
  for (int index = 0;; ++index) {
    int best = -1;
    double best_slope = move_cost;
    for (int i = 1; i < static_cast<int>(options.size()); ++i) {
      const int dm = options[i].moves - options[at].moves;
      const double gain = options[at].score - options[i].score;
      if (dm <= 0 || !(gain > 0.0)) continue;
      const double slope = gain / dm;
      // Ties: fewer moves.
      if (slope > best_slope || (best >= 0 && slope == best_slope &&
                                 options[i].moves < options[best].moves)) {
        best = i;
        best_slope = slope;
      }
    }
    if (best < 0) return;
    out->push_back(HullStep{best_slope, layer, index, best,
                            options[best].moves - options[at].moves});
    at = best;
  }
}

}  // namespace

StatusOr<Plan> LayerPolicy::RebalanceSelecting(const PolicyInput& input,
                                               const PolicyOptions& options,
                                               Plan plan) {
  const Placement& cur = *input.current;
  const Topology& t = input.topology;
  const int r = t.num_ranks;
  const int k = t.slots_per_rank;
  const int e = cur.num_experts();
  const int max_receives = options.max_receives_per_rank;
  const TrafficHistory history = ReadTrafficHistory(input);
  LoadTrace recent;
  const LoadTrace* scoring = ChooseScoringSamples(input, history, &recent);
  // Dense traffic: the newest window counts more in the whole history.
  const int newest_weight =
      scoring == input.samples
          ? NewestWindowWeight(input, history, options.recent_window_weight)
          : 1;
  if (scoring == &recent) {
    plan.notes.push_back("scored on the newest " +
                         std::to_string(recent.num_steps()) + " steps only");
  } else if (newest_weight > 1) {
    plan.notes.push_back("dense traffic: the newest window counts " +
                         std::to_string(newest_weight) + " times");
  }
  // Settled traffic: what a move buys keeps paying for longer.
  const double discount = history.settled ? options.settled_move_discount : 1.0;
  if (history.settled && discount < 1.0) {
    char text[32];
    std::snprintf(text, sizeof(text), "%g", discount);
    plan.notes.push_back(std::string("traffic settled: a move costs ") + text +
                         " of its score");
  }
  // What the full candidates plan on: the scored steps' sum, or the window's
  // load without samples of two steps or more.
  LoadMatrix scoring_load = *input.load;
  if (scoring != nullptr && scoring->num_steps() >= 2) {
    LoadMatrix sum = scoring->Aggregate();
    if (newest_weight > 1) {
      const LoadMatrix newest = scoring->Aggregate(
          scoring->num_steps() - input.window_steps, scoring->num_steps());
      for (int l = 0; l < sum.num_layers(); ++l) {
        std::span<double> into = sum.mutable_row(l);
        std::span<const double> add = newest.row(l);
        for (size_t x = 0; x < into.size(); ++x) {
          into[x] += (newest_weight - 1) * add[x];
        }
      }
    }
    if (std::any_of(sum.data().begin(), sum.data().end(),
                    [](double v) { return v > 0.0; })) {
      scoring_load = std::move(sum);
    }
  }
  const Placement initial = Placement::Initial(1, e, t);
  std::vector<std::vector<Option>> layer_options(cur.num_layers());
  std::vector<char> cold(cur.num_layers(), 0);
  std::vector<std::vector<std::string>> layer_notes(cur.num_layers());
  // One layer: its report, candidates and their scores. Layers are
  // independent (a policy keeps per-layer state only), so workers may plan
  // them in any order: the result is the same.
  auto plan_layer = [&](int l, LayerModel& model) {
    std::span<const double> load = input.load->row(l);
    LayerPlan& info = plan.layers[l];
    info.current_imbalance = LayerImbalance(cur.layer(l), load, r, k);
    info.predicted_imbalance = info.current_imbalance;
    info.lower_bound = ImbalanceLowerBound(load, r, k);
    std::span<const double> sload = scoring_load.row(l);
    if (std::all_of(sload.begin(), sload.end(),
                    [](double v) { return v == 0.0; })) {
      return;  // No load: keep the layer.
    }
    LayerContext ctx =
        MakeContext(l, input, options, scoring, info.current_imbalance);
    if (newest_weight > 1) {
      ctx.newest_steps = input.window_steps;
      ctx.newest_weight = newest_weight;
    }
    ctx.scoring_load = sload;
    ctx.cold = std::equal(cur.layer(l).begin(), cur.layer(l).end(),
                          initial.layer(0).begin());
    cold[l] = ctx.cold;
    if (!ctx.cold) ctx.move_cost_scale = discount;
    ctx.static_plan = ctx.cold && !options.quick_first_plan &&
                      (scoring == nullptr || scoring->num_steps() < 2);
    model.Load(ctx);
    ctx.model = &model;
    std::vector<LayerCandidate> candidates;
    PlanCandidates(ctx, &candidates);
    std::vector<Option>& opts = layer_options[l];
    opts.push_back(
        Option{model.DispatchScore(cur.layer(l)), 0, LayerChoice::kKept, {}});
    Placement one_cur(1, r, k, e);
    Placement one_plan(1, r, k, e);
    std::copy(cur.layer(l).begin(), cur.layer(l).end(),
              one_cur.mutable_layer(0).begin());
    for (LayerCandidate& c : candidates) {
      if (static_cast<int>(c.layer.size()) != r * k) {
        layer_notes[l].push_back(
            "layer " + std::to_string(l) + ": policy " + std::string(name()) +
            " returned a layer of the wrong size; passed over");
        continue;
      }
      KeepSlots(cur.layer(l), c.layer, r, k);
      if (std::equal(c.layer.begin(), c.layer.end(), cur.layer(l).begin())) {
        continue;
      }
      // The same layer offered twice (a refinement that found nothing) is
      // scored once.
      if (std::any_of(opts.begin() + 1, opts.end(),
                      [&](const Option& o) { return o.layer == c.layer; })) {
        continue;
      }
      std::copy(c.layer.begin(), c.layer.end(),
                one_plan.mutable_layer(0).begin());
      std::vector<Violation> bad = CheckPlan(one_cur, one_plan, max_receives);
      if (!bad.empty()) {
        bad[0].layer = l;
        layer_notes[l].push_back("layer " + std::to_string(l) + ": " +
                                 std::string(LayerChoiceName(c.choice)) +
                                 " candidate of policy " + std::string(name()) +
                                 " rejected (" + bad[0].ToString() + ")");
        continue;
      }
      const double score = model.DispatchScore(c.layer);
      opts.push_back(Option{score, MovedExperts(cur.layer(l), c.layer, r, k),
                            c.choice, std::move(c.layer)});
    }
  };
  ForEachIndex<LayerModel>(cur.num_layers(), options.num_threads, plan_layer);
  for (std::vector<std::string>& n : layer_notes) {
    plan.notes.insert(plan.notes.end(), n.begin(), n.end());
  }
  // The choice: cold layers take their best score; the others spend the
  // move budget on the best gain per move first.
  std::vector<int> chosen(cur.num_layers(), 0);
  std::vector<HullStep> steps;
  for (int l = 0; l < cur.num_layers(); ++l) {
    const std::vector<Option>& opts = layer_options[l];
    if (opts.empty()) continue;
    const double move_cost = kShotMovePenalty / (static_cast<double>(r) * k);
    if (cold[l]) {
      // Outside the budget. For balance alone, or (quick_first_plan) still
      // paying for moves: a plan that moves less commits sooner (more
      // layers fit a step's transfers), which on a cold start matters more
      // than the last hundredth of balance.
      std::vector<HullStep> own;
      HullSteps(l, opts, options.quick_first_plan ? move_cost : 0.0, &own);
      if (!own.empty()) chosen[l] = own.back().to;
      continue;
    }
    HullSteps(l, opts, discount * move_cost, &steps);
  }
  std::stable_sort(steps.begin(), steps.end(),
                   [](const HullStep& a, const HullStep& b) {
                     if (a.slope != b.slope) return a.slope > b.slope;
                     if (a.layer != b.layer) return a.layer < b.layer;
                     return a.index < b.index;
                   });
  // At least one swap's worth (2 moves), so that a small model can move.
  int64_t budget = std::max<int64_t>(
      2, static_cast<int64_t>(
             std::ceil(options.migration_budget * cur.num_layers() *
                       static_cast<double>(r) * k)));
  std::vector<int> next_index(cur.num_layers(), 0);
  for (const HullStep& s : steps) {
    if (next_index[s.layer] != s.index) continue;  // An earlier step missed.
    if (s.moves > budget) {
      next_index[s.layer] = -1;  // This layer's later steps cost more yet.
      continue;
    }
    budget -= s.moves;
    chosen[s.layer] = s.to;
    ++next_index[s.layer];
  }
  // Never clearly worse than a full re-plan: a layer whose choice scores
  // more than full_plan_tolerance above its best full candidate takes that
  // candidate when the budget left pays for the extra moves (the largest
  // shortfalls first).
  if (const double tolerance = options.full_plan_tolerance; tolerance >= 0.0) {
    struct Shortfall {
      double gap;
      int layer, full;
    };
    std::vector<Shortfall> behind;
    for (int l = 0; l < cur.num_layers(); ++l) {
      const std::vector<Option>& opts = layer_options[l];
      if (opts.empty() || cold[l]) continue;
      int full = -1;
      for (int i = 1; i < static_cast<int>(opts.size()); ++i) {
        if (opts[i].choice == LayerChoice::kFull &&
            (full < 0 || opts[i].score < opts[full].score)) {
          full = i;
        }
      }
      if (full < 0) continue;
      const double gap = opts[chosen[l]].score - opts[full].score;
      if (gap > tolerance) behind.push_back({gap, l, full});
    }
    std::stable_sort(
        behind.begin(), behind.end(),
        [](const Shortfall& a, const Shortfall& b) { return a.gap > b.gap; });
    for (const Shortfall& b : behind) {
      const std::vector<Option>& opts = layer_options[b.layer];
      const int extra = opts[b.full].moves - opts[chosen[b.layer]].moves;
      if (extra > budget) continue;
      budget -= std::max(0, extra);
      chosen[b.layer] = b.full;
    }
  }
  // Each layer's outcome, on the planner's threads too (Chosen is told of
  // one layer at a time; a policy's per-layer state is its own).
  ForEachIndex(cur.num_layers(), options.num_threads, [&](int l) {
    const std::vector<Option>& opts = layer_options[l];
    LayerPlan& info = plan.layers[l];
    if (opts.empty()) return;
    info.current_score = opts[0].score;
    const Option& pick = opts[chosen[l]];
    info.predicted_score = pick.score;
    info.choice = pick.choice;
    std::span<const int32_t> placed =
        pick.layer.empty() ? cur.layer(l)
                           : std::span<const int32_t>(pick.layer);
    Chosen(l, placed, LayerImbalance(placed, scoring_load.row(l), r, k));
    if (pick.layer.empty()) return;
    std::copy(pick.layer.begin(), pick.layer.end(),
              plan.placement.mutable_layer(l).begin());
    info.changed = true;
    info.predicted_imbalance =
        LayerImbalance(pick.layer, input.load->row(l), r, k);
    CountMoves(cur.layer(l), pick.layer, t, e, &info);
  });
  return plan;
}

}  // namespace eplb::policy
