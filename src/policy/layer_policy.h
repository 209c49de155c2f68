// LayerPolicy: the shared frame of every policy. It validates the inputs,
// plans each layer through the subclass, applies slot keeping (invariant 4),
// checks every planned layer against the placement invariants (CheckPlan) and
// keeps the current layer (with a note) when a check fails, and fills the
// per-layer report. Private to the library.
//
// Policies that select (Swift and FlashLB) offer several candidates per
// layer instead of one plan, and the frame chooses:
//  - what to score on: the per-step samples of the whole history, or only
//    the newest window when the traffic moved (ChooseScoringSamples);
//  - per layer, the current placement or one candidate, by predicted gain
//    (the shot score under the dispatch in use) against the experts moved:
//    a move must buy kShotMovePenalty / (R * K) of score (times
//    settled_move_discount on settled traffic, ReadTrafficHistory), and one
//    plan moves at most migration_budget x L x R x K experts, spent on the
//    best gain per move first. A layer still in the default initial
//    placement (cold) is planned for balance alone, outside the budget.
#ifndef EPLB_SRC_POLICY_LAYER_POLICY_H_
#define EPLB_SRC_POLICY_LAYER_POLICY_H_

#include <span>
#include <string>
#include <vector>

#include "eplb/policy.h"

namespace eplb::policy {

class LayerModel;

// What a policy sees of one layer.
struct LayerContext {
  int layer = 0;
  int num_experts = 0;
  std::span<const int32_t> current;  // [R*K]
  std::span<const double> load;      // [E]
  const LoadTrace* samples = nullptr;
  // The newest `newest_steps` steps of `samples` count `newest_weight` times
  // (dense traffic: NewestWindowWeight).
  int newest_steps = 0;
  int newest_weight = 1;
  const Topology* topology = nullptr;
  const PolicyOptions* options = nullptr;
  double current_imbalance = 1.0;  // Of `current` under `load`.
  // Selecting policies only:
  // The aggregate of the samples the frame scores on [E] (`load` when it
  // scores on the newest window, or without samples).
  std::span<const double> scoring_load;
  // Loaded with the layer's scoring samples (LayerModel::Load).
  LayerModel* model = nullptr;
  // `current` is the default initial placement: nothing was planned for this
  // layer yet, so a plan is for balance alone (moves are free).
  bool cold = false;
  // What a move costs, as a multiple of kShotMovePenalty / (R * K): the
  // frame's settled_move_discount on settled traffic (ReadTrafficHistory),
  // else 1. LayerModel::MoveCost() includes it.
  double move_cost_scale = 1.0;
  // A cold layer planned for balance alone (no quick_first_plan) on one
  // aggregate (no per-step samples of two steps or more): moves are free and
  // the score is the imbalance on that aggregate, so candidates that save
  // moves cannot win.
  bool static_plan = false;
};

// One placement a selecting policy offers for a layer.
struct LayerCandidate {
  std::vector<int32_t> layer;  // [R*K]
  LayerChoice choice = LayerChoice::kIncremental;
};

class LayerPolicy : public Policy {
 public:
  StatusOr<Plan> Rebalance(const PolicyInput& input,
                           const PolicyOptions& options) final;

 protected:
  // Called once before the layers; may add notes (fallbacks) or reject the
  // input (InvalidArgument).
  virtual Status Begin(const PolicyInput& input, const PolicyOptions& options,
                       std::vector<std::string>* notes);
  // The planned layer [R*K] (slot keeping is applied afterwards), or an empty
  // vector to keep the current layer. Not called for all-zero layers. Called
  // concurrently for different layers when options.num_threads > 1: it may
  // read what Begin set, never write shared state.
  virtual std::vector<int32_t> PlanLayer(const LayerContext& ctx) = 0;

  // Selecting policies return true and offer candidates through
  // PlanCandidates (PlanLayer is then not called).
  virtual bool Selects() const { return false; }
  virtual void PlanCandidates(const LayerContext& ctx,
                              std::vector<LayerCandidate>* candidates);
  // Told which placement the frame chose for a layer ([R*K], the current
  // one when it kept it), and its imbalance on ctx.scoring_load. Called
  // concurrently for different layers (as PlanCandidates is): it may write
  // only that layer's state.
  virtual void Chosen(int layer, std::span<const int32_t> placement,
                      double scoring_imbalance);

 private:
  StatusOr<Plan> RebalanceSelecting(const PolicyInput& input,
                                    const PolicyOptions& options, Plan plan);
};

// What the per-step samples say about the traffic's history. With A the
// newest window (input.window_steps steps), C the window before it and B
// every older step, `advantage` is log L(A | C) - log L(A | B) per token of
// A: the log-likelihood of A's counts under C's and under B's distribution
// (each smoothed by half a token per expert), summed over layers. Computed
// when the samples hold at least two windows; O(steps x L x E).
struct TrafficHistory {
  // Score on the newest window only: the window was cut short by a shift
  // (window_shifted), or C predicts A clearly better than B does
  // (advantage > 0.05).
  bool moved = false;
  // Enough tokens to measure the traffic closely: noise <= 0.01.
  bool dense = false;
  // Not moving now, measured with enough tokens to tell: not moved, dense,
  // and advantage >= -2 x noise (the window before predicts the newest at
  // least as well as the older steps do, within the noise).
  bool settled = false;
  double advantage = 0.0;
  // The advantage's sampling scale, dispersion x (E - 1) / n: a
  // distribution estimated from n multinomial draws (n: C's tokens per
  // layer) misses the true one by about (E - 1) / (2n) of log-likelihood
  // per token, and counts that vary more than multinomial draws (per-prompt
  // traffic) miss it by `dispersion` times that. Infinite when not
  // computed.
  double noise = 0.0;
  // C's Pearson chi-square per degree of freedom (its steps x experts
  // table, each step's total spread by C's shares), averaged over layers and
  // at least 1: 1 for multinomial draws, far more where each step has its
  // own mix.
  double dispersion = 1.0;
};
TrafficHistory ReadTrafficHistory(const PolicyInput& input);

// Which samples a selecting policy scores on: `input.samples` whole, or (in
// `*recent`, returned) only its newest `input.window_steps` steps when the
// traffic moved (TrafficHistory::moved). Null without samples.
const LoadTrace* ChooseScoringSamples(const PolicyInput& input,
                                      LoadTrace* recent);
// The same for a history already read (ReadTrafficHistory(input)).
const LoadTrace* ChooseScoringSamples(const PolicyInput& input,
                                      const TrafficHistory& history,
                                      LoadTrace* recent);
// How many times the newest window counts when the whole history is scored:
// `recent_weight` (PolicyOptions::recent_window_weight) where the traffic
// did not move and is dense (TrafficHistory::dense) and the samples hold
// more than one window, else 1.
int NewestWindowWeight(const PolicyInput& input, const TrafficHistory& history,
                       int recent_weight);

// Checks the shapes and values of a PolicyInput (shared with non-layer
// policies).
Status ValidatePolicyInput(const PolicyInput& input);

}  // namespace eplb::policy

#endif  // EPLB_SRC_POLICY_LAYER_POLICY_H_
