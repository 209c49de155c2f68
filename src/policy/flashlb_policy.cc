// Policy 3, FlashLB: plans each layer on statistics over time rather than
// on one aggregate. The shots and their statistics (step 1), the shot score,
// the search (steps 3-6), the incremental layer and the shot-scored swaps
// are the layer model's (layer_model.h, shared with SwiftBalancer and the
// policy frame); this file holds the trigger (step 2) and the candidates
// (steps 7-8).
//
// Per layer:
// 1. Shots. The window's per-step samples are grouped into at most
//    clamp(2^20 / E², 8, 128) shots (128 for 64 experts, 16 for 256)
//    of consecutive steps (a layer with no samples, or with all-zero
//    samples, is one shot: the aggregate). Over the shots: mean μ, variance
//    σ² and covariance C of every expert's load (ShotStats).
// 2. Trigger (under round robin, or with 32 ranks and more; see "The
//    trigger under balanced dispatch" below). A layer planned before is
//    re-planned only when its balance degraded: the current placement's
//    mean/max rank load on μ fell below 0.9 x the ratio after the last
//    plan, or below 0.85 (0.95 and 0.9 with fewer than 32 ranks). A layer that
//    holds its balance on μ is not re-planned, but still gets the shot-scored
//    swaps of step 8 from its current placement (kept only when they pay for
//    their moves): the means hide experts that are hot in the same steps.
// 3. Replica counts. The risk-aware load μ + zσ (z = 0.6745, the 75th
//    percentile of a normal) is shared by an expert's replicas; counts
//    minimise the largest risk share (MinMaxReplicaCounts, capped at R).
// 4. Risk-aware LPT. Replicas in order of μ/c descending go to the rank that
//    minimises the 75th percentile of its load over the shots, treating a
//    rank's load as normal: mean μ_rank + μ_e/c, variance σ²_rank + σ²_e/c² +
//    2·Cov(rank, e)/c. Cov(rank, e) = Σ_{s on rank} C[e][s]/c_s is kept per
//    rank and expert, updated in O(E) when a replica lands, so that every
//    candidate costs O(1). Anti-correlated experts thus share ranks.
// 5. FlashTree. Experts sorted by μ + zσ fall into 4 groups; group by group,
//    a hill climb moves up to 8 replicas into (or out of) the group, taking
//    them from (giving them to) the other groups' experts whose risk share
//    suffers least, and keeps a move while the score improves. The score is
//    what the layer meets in service: the mean over shots of each shot's
//    peak-to-average rank load. Only with spread: on one aggregate (or
//    experts that never vary) the counts of step 3 are exactly min-max and
//    the swaps of step 6 beat the other packings the tree would try.
// 6. Swap refinement (the project's addition): pairwise swaps on μ, kept only
//    when the shot score is not worse. The greedy steps leave a few tenths
//    of a percent on the table that swaps recover: on the DeepSeek-V3
//    prefill aggregate at EP32 / 288 slots the mean in-sample imbalance
//    falls to about 1.0002.
// 7. Minimal redeploy: planned ranks are matched to current ranks by maximum
//    overlap (Hungarian); the frame keeps the overlapping experts in place.
//    Then up to 2R shot-scored swaps (step 8's, with its move cost).
// 8. Candidates. The policy offers the policy frame (layer_policy.h), which
//    chooses, the plan of steps 3-7; an incremental layer with its replica
//    counts (from the current layer every expert keeps min(old, new) of its
//    replicas, surplus ones leaving the most loaded rank first; the missing
//    ones go into the freed slots by the greedy of step 4, an expert of
//    another rank making way when every rank with room holds the expert;
//    then up to 2R swaps scored on the shots, each between the hot rank
//    (the peak in the most shots) and one of the 2 ranks with the most room
//    below its peaks (kSwapPartners), moves counted against the current
//    layer); the same toward the replica counts of DeepSeek's algorithm; and
//    DeepSeek's full plan matched to the current ranks and refined by swaps.
//    A layer that is not re-planned (step 2) offers only its swaps. The
//    frame scores every candidate under the dispatch in use and pays
//    kShotMovePenalty (0.25 of score for moving every slot of the layer) per
//    moved expert, within the migration budget; a layer still in the initial
//    placement is planned for balance alone (or, in the dynamic cycle,
//    paying for moves so that it commits sooner).
//
// Why re-plans are move-aware: on a short window, a plan for balance alone
// fits the window's noise and reshuffles most of the layer each cycle. In
// the replay of the DeepSeek-V2-Lite trace at EP8 with 8 redundant slots and
// 16-step windows, full re-plans moved 57% of the slots per rebalance for a
// realized median / p90 imbalance of about 1.48 / 1.94; the incremental ones
// keep what earlier windows placed well and fix the hot ranks: 18% moved,
// 1.44 / 1.86. With 128 steps of history, a move cost of 0.25 and the swaps
// of steps 2 and 7 the same replay reaches 1.39 / 1.74 with about 5% of the
// slots moved per rebalance (a move cost of 0.5 and 64 steps: 1.41 / 1.78;
// the replay in --no-pace mode compares settings exactly). A re-plan costs
// the full search plus the incremental layer (about 1.3x a first plan on
// DeepSeek-V3 at EP32 when every layer re-plans).
//
// The walk at width. With 32 ranks and more under round-robin dispatch, a
// re-planned layer also offers SwiftBalancer's walk from the current layer
// (its cheapest improving re-points and swaps), refined by the shot-scored
// swaps. There the candidates above buy their balance with more moves than
// the walk needs, and the cycle serves the old placement while they
// migrate. On the DeepSeek-V3-shaped `dsv3` traffic at EP32 + 32 (four
// seeds, H 16, A 2) it lowered the realized median by 0.008-0.012 and the
// whole-trace p90 by about 0.1, steady-state p90 within +-0.02, with a third
// fewer moves. Not below 32 ranks: on the top-1 EP8 families it raised the
// p90 (topics 1.638 -> 1.720); nor under balanced dispatch, which evens
// replicas per step and where it raised two seeds' median by 0.012.
//
// The trigger under balanced dispatch. The trigger judges a layer on its
// means split evenly over replicas (round robin's split), and a layer it
// holds gets only swaps scored the same way. Balanced dispatch splits each
// step's tokens over the replicas by load, so a layer whose means hold can
// still gain from another replica mix that only the frame's dispatch-aware
// score sees. Below 32 ranks under balanced dispatch every layer therefore
// offers the full set of candidates each cycle (plans stay cheap there). On
// the EP8 families (seeds 1-4 of topics, domains and burst, 1-2 of skew,
// sparse and drift, the DeepSeek-V2-Lite folds; H 16, A 2) the realized
// median fell on nearly every trace (burst 1.091-1.115 -> 1.078-1.100,
// puffin folds 1.258-1.279 -> 1.250-1.270, topics 1.062-1.075 ->
// 1.062-1.071), with 0-10% more moves. At width it stays: on `dsv3` at
// EP32 + 32 the medians fell by 0.002-0.009 too, but one seed's steady p90
// rose from 1.164 to 1.215 and, paced on two cores, 5 of 15 plans came late
// against 1.
//
// Unlike the reference, replica counts are capped at R, layers that do not
// improve are never migrated, every layer is scored on the windowed shots,
// and re-plans weigh balance against moved experts. Deterministic: fixed
// loop orders, ties to the lower id.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "eplb/load.h"
#include "eplb/status.h"
#include "policy/algorithms.h"
#include "policy/default_eplb.h"
#include "policy/layer_model.h"
#include "policy/layer_policy.h"
#include "policy/policies.h"

namespace eplb::policy {

namespace {

// From this many ranks on, a re-plan under round robin also offers
// SwiftBalancer's walk (see "The walk at width" above).
constexpr int kWideRanks = 32;

// mean/max rank load ("balancedness"); 1 for a layer without load.
double Ratio(std::span<const int32_t> layer, std::span<const double> load,
             int num_ranks, int slots_per_rank) {
  return 1.0 / LayerImbalance(layer, load, num_ranks, slots_per_rank);
}

class FlashLbPolicy final : public LayerPolicy {
 public:
  std::string_view name() const override { return "flashlb"; }

 protected:
  Status Begin(const PolicyInput& input, const PolicyOptions& options,
               std::vector<std::string>* notes) override;
  bool Selects() const override { return true; }
  std::vector<int32_t> PlanLayer(const LayerContext&) override { return {}; }
  void PlanCandidates(const LayerContext& ctx,
                      std::vector<LayerCandidate>* out) override;
  void Chosen(int layer, std::span<const int32_t> placement,
              double scoring_imbalance) override;

 private:
  // The shape the state belongs to; a different shape starts afresh.
  int num_layers_ = -1;
  int num_experts_ = -1;
  Topology topology_;
  // Per layer: mean/max ratio (on the scored means) of what serves after
  // the last re-plan; < 0 when the layer was never planned.
  std::vector<double> last_ratio_;
  // Per layer: this plan ran the full search (its choice sets last_ratio_).
  std::vector<char> searched_;
};

Status FlashLbPolicy::Begin(const PolicyInput& input, const PolicyOptions&,
                            std::vector<std::string>*) {
  const Placement& cur = *input.current;
  if (cur.num_layers() != num_layers_ || cur.num_experts() != num_experts_ ||
      !(input.topology == topology_)) {
    num_layers_ = cur.num_layers();
    num_experts_ = cur.num_experts();
    topology_ = input.topology;
    last_ratio_.assign(num_layers_, -1.0);
  }
  searched_.assign(num_layers_, 0);
  return Status::Ok();
}

void FlashLbPolicy::PlanCandidates(const LayerContext& ctx,
                                   std::vector<LayerCandidate>* out) {
  const int r = ctx.topology->num_ranks;
  const int k = ctx.topology->slots_per_rank;
  LayerModel& model = *ctx.model;
  const int limit = ctx.options->max_receives_per_rank;
  const double move_cost =
      ctx.cold && !ctx.options->quick_first_plan ? 0.0 : model.MoveCost();
  const double last = last_ratio_[ctx.layer];
  // The trigger holds only where it measures what the ranks will meet: under
  // round robin, or at width, where it also bounds the plan time (see "The
  // trigger under balanced dispatch" above).
  const bool triggered =
      ctx.options->dispatch == DispatchMode::kRoundRobin || r >= kWideRanks;
  if (triggered && !ctx.cold && last >= 0.0) {
    // Small groups are easier to balance, so they are held to more.
    const double relative = r < kWideRanks ? 0.95 : 0.9;
    const double absolute = r < kWideRanks ? 0.9 : 0.85;
    const double current_ratio = Ratio(ctx.current, model.mean(), r, k);
    if (!(current_ratio < relative * last || current_ratio < absolute)) {
      // Balanced on the means: no full re-plan, but a few swaps scored on
      // the shots may still pay for their moves.
      std::vector<int32_t> layer(ctx.current.begin(), ctx.current.end());
      if (model.SwapOnShots(ctx.current, move_cost, /*max_swaps=*/2 * r, limit,
                            &layer) > 0) {
        out->push_back({std::move(layer), LayerChoice::kIncremental});
      }
      return;
    }
  }
  if (r >= kWideRanks && !ctx.static_plan &&
      ctx.options->dispatch == DispatchMode::kRoundRobin) {
    // At width under round robin: SwiftBalancer's walk, refined by the
    // shot-scored swaps (see "The walk at width" above).
    std::vector<int32_t> walked = SwiftWalk(ctx);
    model.SwapOnShots(ctx.current, move_cost, /*max_swaps=*/2 * r, limit,
                      &walked);
    out->push_back({std::move(walked), LayerChoice::kIncremental});
  }
  searched_[ctx.layer] = 1;
  model.ComputeSpread();
  std::vector<int32_t> full = model.Search();
  MatchRanksToCurrent(ctx.current, full, r, k);
  model.SwapOnShots(ctx.current, move_cost, /*max_swaps=*/2 * r, limit, &full);
  // A static plan for balance alone on one aggregate (moves are free): the
  // search's plan, refined on that aggregate, is the candidate. The
  // incremental ones cannot beat it, and DeepSeek's plan (which the shots of
  // a dynamic re-plan may favour) did not on the shipped DeepSeek-V3 loads
  // nor on synthetic ones up to 1024 ranks; together they were most of the
  // plan time at width.
  if (ctx.static_plan) {
    out->push_back({std::move(full), LayerChoice::kFull});
    return;
  }
  // Few moves from the current layer toward the full plan's replica counts.
  std::vector<int32_t> count(ctx.num_experts, 0);
  for (int32_t e : full) ++count[e];
  std::vector<int32_t> incremental;
  if (model.Incremental(ctx.current, count, limit, &incremental)) {
    model.SwapOnShots(ctx.current, move_cost, /*max_swaps=*/2 * r, limit,
                      &incremental);
    out->push_back({std::move(incremental), LayerChoice::kIncremental});
  }
  out->push_back({std::move(full), LayerChoice::kFull});
  // DeepSeek's replication and packing on the same load: a plan of another
  // kind, which the means may favour when the shots are few.
  std::vector<int32_t> deepseek = DeepSeekRebalanceLayer(
      ctx.scoring_load, r * k, /*num_groups=*/1, /*num_nodes=*/1, r);
  // And few moves toward its replica counts.
  std::fill(count.begin(), count.end(), 0);
  for (int32_t e : deepseek) ++count[e];
  std::vector<int32_t> recount;
  if (model.Incremental(ctx.current, count, limit, &recount)) {
    model.SwapOnShots(ctx.current, move_cost, ExtraSwaps(r), limit, &recount);
    out->push_back({std::move(recount), LayerChoice::kIncremental});
  }
  MatchRanksToCurrent(ctx.current, deepseek, r, k);
  model.SwapOnShots(ctx.current, move_cost, ExtraSwaps(r), limit, &deepseek);
  out->push_back({std::move(deepseek), LayerChoice::kFull});
}

void FlashLbPolicy::Chosen(int layer, std::span<const int32_t>,
                           double scoring_imbalance) {
  if (searched_[layer]) last_ratio_[layer] = 1.0 / scoring_imbalance;
}

}  // namespace

std::unique_ptr<Policy> NewFlashLbPolicy() {
  return std::make_unique<FlashLbPolicy>();
}

}  // namespace eplb::policy
