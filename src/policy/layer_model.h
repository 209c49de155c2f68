// The model of one layer, shared by SwiftBalancer, FlashLB and the policy
// frame (layer_policy.h): the window's per-step samples grouped into shots,
// their statistics, the shot score and the searches over placements. Defined
// in layer_model.cc; the step numbers below are those of FlashLB's
// description in flashlb_policy.cc. Private to the library.
#ifndef EPLB_SRC_POLICY_LAYER_MODEL_H_
#define EPLB_SRC_POLICY_LAYER_MODEL_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "eplb/dispatch.h"
#include "policy/algorithms.h"
#include "policy/layer_policy.h"
#include "policy/shot_stats.h"

namespace eplb::policy {

// What moving every slot of a layer costs a re-plan, in shot score: each
// moved expert costs kShotMovePenalty / (R * K).
inline constexpr double kShotMovePenalty = 0.25;
// A plan must beat the current score by more than rounding (rank sums in a
// different slot order) to count as a gain.
inline constexpr double kMinRelativeGain = 1e-12;
// Shot-scored swaps refining a policy's extra candidates (the ones planned
// from DeepSeek's algorithm): fewer than its main candidates' 2R once R
// grows, to bound the plan time of wide groups.
inline constexpr int ExtraSwaps(int num_ranks) {
  return num_ranks > 16 ? num_ranks : 16;
}

// One layer's shots, statistics and the search over placements. Reused
// across layers to keep its buffers.
class LayerModel {
 public:
  // Loads the shots of ctx's layer and their means.
  void Load(const LayerContext& ctx);
  // Variances, covariances and risk loads (O(S·E²)); only for layers that
  // are planned.
  void ComputeSpread();
  // Or none: every expert's risk load is its mean (O(E)); Incremental and
  // the greedy placement then work on the means alone.
  void ComputeMeansOnly();

  std::span<const double> mean() const { return mean_; }

  // Mean over shots of each shot's peak / average rank load ([R*K] layer);
  // with whole_tokens_, replicas split their expert's tokens as the default
  // dispatch does (AddSlotShares), else evenly.
  double Score(std::span<const int32_t> layer);
  // The shot score under the dispatch of the options Load was given: Score
  // for round robin; for balanced dispatch each shot's tokens are split over
  // the replicas by BalancedDispatcher (the exact min-max split; shots that
  // are not whole token counts are scaled to a million tokens first).
  // Slower than Score (a flow per shot): for choosing among candidates.
  double DispatchScore(std::span<const int32_t> layer);
  // Score(layer) + move_cost x the experts `layer` moves against `current`.
  double Cost(std::span<const int32_t> current, std::span<const int32_t> layer,
              double move_cost);
  // kShotMovePenalty / (R * K) times the context's move_cost_scale (Load):
  // the cost of one moved expert.
  double MoveCost() const;
  // The FlashTree search plus swap refinement: the best-scoring layer.
  std::vector<int32_t> Search();
  // From `current`, a layer with replica counts `count` that moves few
  // experts: keeps min(old, new) replicas of every expert (surplus ones
  // leave the most loaded rank first) and puts the missing replicas into the
  // freed slots with the risk-aware greedy (step 8); with max_receives > 0,
  // ranks below it free slots first. Needs ComputeSpread.
  // False when a replica finds no rank even by making way (not seen in
  // practice).
  bool Incremental(std::span<const int32_t> current,
                   std::span<const int32_t> count, int max_receives,
                   std::vector<int32_t>* layer);
  // Pairwise swaps scored on the shots: up to max_swaps times, the swap
  // between the hot rank and a partner that most lowers score + move_cost x
  // (slots whose expert is new to the rank against `current`), while it
  // lowers it; a swap never takes a rank's new slots above max_receives
  // (> 0). Returns the number of swaps made.
  int SwapOnShots(std::span<const int32_t> current, double move_cost,
                  int max_swaps, int max_receives, std::vector<int32_t>* layer);

 private:
  struct Key {  // An expert's place in the LPT order.
    double share;
    int32_t expert;
  };

  // Empty ranks for the greedy placement: used_, rank_mean_, holds_ and,
  // with spread, rank_var_ and rank_cov_.
  void ClearRanks();
  // Risk-aware LPT for the given counts; false when some replica finds no
  // rank (all ranks with room hold its expert).
  bool Place(std::span<const int32_t> count, std::vector<int32_t>* layer);
  // Place without spread (the means alone): a heap of ranks instead of a
  // scan, O(R*K * c * log R) instead of O(R*K * R).
  bool PlaceOnMeans(std::span<const int32_t> count,
                    std::vector<int32_t>* layer);
  // The rank with a free slot, not holding e, whose 75th-percentile load
  // after taking a replica of e (mean `share`, variance `var_e`, 1/count
  // `inv`) is lowest; -1 when none. Lowest rank on ties.
  int BestRank(int e, double share, double var_e, double inv) const;
  // Moves one replica into group g (dir > 0) or out of it (dir < 0): the
  // receiving side's expert with the largest risk share gains one (below
  // R), the giving side's expert whose share after the loss is smallest
  // loses one. False when either side has no candidate.
  bool Shift(std::vector<int32_t>* count, int g, int dir) const;
  // The best swap between hot rank h and one of its partners, on
  // SwapOnShots' state: where one lowers the cost change below *best, sets
  // *best and the two slots.
  void BestSwap(std::span<const int32_t> lay, int h, double move_cost,
                double* best, int* best_a, int* best_b);

  // Replica counts (count_, inv_count_) of `layer`.
  void CountReplicas(std::span<const int32_t> layer);
  // Each slot's replica index (replica_): 0 for its expert's lowest slot.
  void ReplicaIndices(std::span<const int32_t> layer);
  // Adds slot p's load in each shot to load[S]: its replica's whole-token
  // share of its expert's tokens (the default dispatch) when whole_tokens_,
  // else an even share; count_, inv_count_ and replica_ current.
  void AddSlotShares(std::span<const int32_t> layer, size_t p, double* load);
  // SwapOnShots' values of slot p (slot_val_) from AddSlotShares, moving its
  // rank's shot_load_ by the change.
  void UpdateSlotValues(std::span<const int32_t> lay, size_t p, int n);
  // 1 when rank r does not hold expert e in SwapOnShots' current layer.
  int IsNew(int r, int32_t e) const {
    return cur_holds_[static_cast<size_t>(r) * e_ + e] ? 0 : 1;
  }
  // The slots (in slot order) with the kSwapSlots largest gains, or all.
  void TopSlots(const std::vector<double>& gain, std::vector<int>* top) const;
  // SwapOnShots' slot_val_ and shot_load_ for `lay` over the n loaded shots.
  void FillSlotValues(std::span<const int32_t> lay, int n);
  // After a swap in whole tokens: expert e's replica indices, slot values
  // and their ranks' loads, which follow its replicas' slot order.
  void RefreshShares(std::span<const int32_t> lay, int32_t e, int n);

  int e_ = 0;
  int r_ = 0;
  int k_ = 0;
  double move_cost_scale_ = 1.0;  // LayerContext::move_cost_scale.
  int s_ = 0;                     // Shots.
  std::vector<double> shots_;     // [S][E]
  std::vector<double> shots_t_;   // [E][S]: shots_ transposed.
  std::vector<double> inv_avg_;   // [S]: R / shot total (0: no load).
  std::vector<double> mean_;      // [E]
  std::vector<double> var_;       // [E]
  std::vector<double> risk_;      // [E]: μ + zσ.
  std::vector<double> cov_;       // [E][E], when spread_.
  bool spread_ = false;           // Some expert varies over the shots.
  // Every shot is one step of whole-token counts: slot loads follow the
  // default dispatch (AddSlotShares).
  bool whole_tokens_ = false;
  DispatchMode dispatch_ = DispatchMode::kRoundRobin;
  std::unique_ptr<BalancedDispatcher> balancer_;
  std::vector<int64_t> shot_tokens_;  // [S][E]: DispatchScore's counts.
  std::vector<int64_t> shot_total_;   // [S]: their sums.
  std::vector<int64_t> quotas_;       // [R*K]
  ShotStats stats_;
  // Scratch.
  std::vector<int32_t> group_;      // [E]: FlashTree group.
  std::vector<int32_t> order_;      // [E]: experts by risk load.
  std::vector<Key> keys_;           // [E]: placement order.
  bool keys_sorted_ = false;        // keys_ is Place's order for this layer.
  std::vector<double> share_;       // [E]
  std::vector<double> inv_count_;   // [E]
  std::vector<int32_t> count_;      // [E]
  std::vector<int> replica_;        // [R*K]: see ReplicaIndices.
  std::vector<int> seen_;           // [E]: ReplicaIndices' scratch.
  std::vector<double> score_load_;  // [R][S]: Score's rank loads.
  std::vector<double> share_buf_;   // [S]: one slot's shares.
  std::vector<int> used_;           // [R]
  std::vector<double> rank_mean_;   // [R]
  std::vector<double> rank_var_;    // [R]
  std::vector<double> rank_cov_;    // [R][E]: Cov(rank load, x_e).
  std::vector<char> holds_;         // [R][E]
  std::vector<size_t> held_;        // Entries of holds_ set since a clear,
  bool held_known_ = false;         // when every one is listed there.
  // Sets holds_ for rank r and expert e, listing it for ClearRanks.
  void Hold(int r, int e) {
    const size_t i = static_cast<size_t>(r) * e_ + e;
    holds_[i] = 1;
    held_.push_back(i);
  }
  std::vector<int> freed_;  // [R]: Incremental's freed slots.
  RankHeap heap_;           // PlaceOnMeans' ranks with room.
  // SwapOnShots, over the loaded shots S' only; loads in units of the
  // shot's mean rank load.
  std::vector<char> cur_holds_;    // [R][E]: the current layer.
  std::vector<double> slot_val_;   // [R*K][S']: each slot's load.
  std::vector<double> shot_load_;  // [R][S']
  std::vector<double> peak_;       // [S']
  std::vector<int> peak_rank_;     // [S']: lowest id on ties.
  std::vector<double> other_;      // [S']: peak without h and a partner.
  std::vector<double> gap_h_;      // [S']: peak - other_ where h peaks, or 0.
  std::vector<double> gap_q_;      // [S']: the same where the partner peaks.
  std::vector<int> hot_count_;     // [R]: shots where the rank peaks.
  std::vector<double> room_;       // [R]: room below the hot rank's peaks.
  std::vector<int> partners_;      // [R]
  std::vector<double> gain_a_;     // [K]: bound on a hot-rank slot's gain.
  std::vector<double> gain_b_;     // [K]: bound on a partner slot's gain.
  std::vector<int> top_a_;         // Slots of h and of the partner that a
  std::vector<int> top_b_;         // swap search tries (see TopSlots).
  std::vector<int> receives_;      // [R]: slots new to the rank.
  int max_receives_ = 0;           // 0: no limit.
};

}  // namespace eplb::policy

#endif  // EPLB_SRC_POLICY_LAYER_MODEL_H_
