// Policy 3, FlashLB (spec §6.3): plans each layer on statistics over time
// rather than on one aggregate.
//
// Per layer:
// 1. Shots. The window's per-step samples are grouped into at most 64 shots
//    of consecutive steps (a layer with no samples, or with all-zero
//    samples, is one shot: the aggregate). Over the shots: mean μ, variance
//    σ² and covariance C of every expert's load (ShotStats).
// 2. Trigger. A layer planned before is re-planned only when its balance
//    degraded: the current placement's mean/max rank load on μ fell below
//    0.9 x the ratio after the last plan, or below 0.85 (0.95 and 0.9 with
//    fewer than 32 ranks). Layers that hold their balance are left alone.
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
//    peak-to-average rank load.
// 6. Swap refinement (the project's addition): pairwise swaps on μ, kept only
//    when the shot score is not worse. The greedy steps leave a few tenths
//    of a percent on the table that swaps recover: on the DeepSeek-V3
//    prefill aggregate at EP32 / 288 slots the mean in-sample imbalance
//    falls to about 1.0002.
// 7. Minimal redeploy: planned ranks are matched to current ranks by maximum
//    overlap (Hungarian); the frame keeps the overlapping experts in place.
//    The layer is adopted only when its shot score beats the current one.
//
// Unlike the reference, replica counts are capped at R, layers that do not
// improve are never migrated, and every layer is scored on the windowed
// shots. Deterministic: fixed loop orders, ties to the lower id.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <numeric>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "eplb/status.h"
#include "policy/algorithms.h"
#include "policy/flashlb_stats.h"
#include "policy/layer_policy.h"
#include "policy/policies.h"

namespace eplb::policy {

std::vector<double> GroupIntoShots(const LoadTrace& trace, int layer,
                                   int max_shots) {
  const int64_t steps = trace.num_steps();
  const int n = trace.num_experts();
  if (steps == 0) return {};
  const int64_t shots = std::min<int64_t>(steps, max_shots);
  std::vector<double> out(static_cast<size_t>(shots) * n, 0.0);
  for (int64_t i = 0; i < shots; ++i) {
    double* dst = out.data() + static_cast<size_t>(i) * n;
    for (int64_t t = i * steps / shots; t < (i + 1) * steps / shots; ++t) {
      std::span<const double> row = trace.row(static_cast<int>(t), layer);
      for (int e = 0; e < n; ++e) dst[e] += row[e];
    }
  }
  return out;
}

ShotStats::ShotStats(int num_experts) : n_(num_experts) { Reset(); }

void ShotStats::Reset() {
  count_ = 0;
  shift_.assign(n_, 0.0);
  sum_.assign(n_, 0.0);
  cross_.assign(static_cast<size_t>(n_) * n_, 0.0);
}

void ShotStats::Add(std::span<const double> shot) {
  EPLB_CHECK(static_cast<int>(shot.size()) == n_);
  // An empty window has all-zero sums (Reset), so only the shift changes.
  if (count_ == 0) std::copy(shot.begin(), shot.end(), shift_.begin());
  ++count_;
  Accumulate(shot, +1.0);
}

void ShotStats::AddBatch(std::span<const double> shots) {
  const size_t num_shots = n_ == 0 ? 0 : shots.size() / static_cast<size_t>(n_);
  EPLB_CHECK(num_shots * n_ == shots.size());
  if (num_shots == 0) return;
  if (count_ == 0) std::copy_n(shots.begin(), n_, shift_.begin());
  count_ += static_cast<int>(num_shots);
  // Centred shots, padded with zero columns to a multiple of the tile.
  constexpr int kTile = 4;
  const int width = (n_ + kTile - 1) / kTile * kTile;
  std::vector<double> d(num_shots * width, 0.0);
  for (size_t t = 0; t < num_shots; ++t) {
    for (int e = 0; e < n_; ++e) {
      const double v = shots[t * n_ + e] - shift_[e];
      d[t * width + e] = v;
      sum_[e] += v;
    }
  }
  // A rank-S update of the upper triangle, 4 x 4 sums at a time held in
  // registers while the shots stream past: one pass over the matrix
  // instead of one per shot, and 16 multiply-adds per 8 loads.
  for (int e0 = 0; e0 < width; e0 += kTile) {
    for (int s0 = e0; s0 < width; s0 += kTile) {
      double acc[kTile][kTile] = {};
      for (size_t t = 0; t < num_shots; ++t) {
        const double* x = d.data() + t * width;
        for (int i = 0; i < kTile; ++i) {
          for (int j = 0; j < kTile; ++j) acc[i][j] += x[e0 + i] * x[s0 + j];
        }
      }
      for (int i = 0; i < kTile && e0 + i < n_; ++i) {
        double* row = cross_.data() + static_cast<size_t>(e0 + i) * n_;
        for (int j = std::max(0, e0 + i - s0); j < kTile && s0 + j < n_; ++j) {
          row[s0 + j] += acc[i][j];
        }
      }
    }
  }
}

void ShotStats::Remove(std::span<const double> shot) {
  EPLB_CHECK(static_cast<int>(shot.size()) == n_);
  if (count_ <= 1) {
    // The window is empty again: start over exactly rather than leave
    // rounding residue in the sums.
    Reset();
    return;
  }
  --count_;
  Accumulate(shot, -1.0);
}

void ShotStats::Accumulate(std::span<const double> shot, double sign) {
  d_.resize(n_);
  for (int e = 0; e < n_; ++e) {
    d_[e] = shot[e] - shift_[e];
    sum_[e] += sign * d_[e];
  }
  for (int e = 0; e < n_; ++e) {
    const double a = sign * d_[e];
    if (a == 0.0) continue;  // Nothing to add to this row.
    double* row = cross_.data() + static_cast<size_t>(e) * n_;
    for (int s = e; s < n_; ++s) row[s] += a * d_[s];
  }
}

double ShotStats::Mean(int e) const {
  return count_ == 0 ? 0.0 : shift_[e] + sum_[e] / count_;
}

double ShotStats::Covariance(int e, int s) const {
  if (count_ < 2) return 0.0;
  const int lo = std::min(e, s);
  const int hi = std::max(e, s);
  const double c = cross_[static_cast<size_t>(lo) * n_ + hi];
  return (c - sum_[e] * sum_[s] / count_) / (count_ - 1);
}

double ShotStats::Variance(int e) const {
  return std::max(0.0, Covariance(e, e));
}

void ShotStats::CovarianceMatrix(std::vector<double>* out) const {
  out->assign(static_cast<size_t>(n_) * n_, 0.0);
  if (count_ < 2) return;
  // Covariance() inlined, with the same operations (bit-identical).
  for (int e = 0; e < n_; ++e) {
    const double* row = cross_.data() + static_cast<size_t>(e) * n_;
    (*out)[static_cast<size_t>(e) * n_ + e] = Variance(e);
    for (int s = e + 1; s < n_; ++s) {
      const double c = (row[s] - sum_[e] * sum_[s] / count_) / (count_ - 1);
      (*out)[static_cast<size_t>(e) * n_ + s] = c;
      (*out)[static_cast<size_t>(s) * n_ + e] = c;
    }
  }
}

namespace {

constexpr double kZ = 0.6745;  // 75th percentile of the standard normal.
constexpr int kMaxShots = 64;
constexpr int kDepth = 4;  // FlashTree groups.
constexpr int kWidth = 8;  // Replicas a group may gain or lose.
// A plan must beat the current score by more than rounding (rank sums in a
// different slot order) to count as a gain.
constexpr double kMinRelativeGain = 1e-12;

// One layer's shots, statistics and the search over placements. Reused
// across layers to keep its buffers.
class LayerModel {
 public:
  // Loads the shots of ctx's layer and their means.
  void Load(const LayerContext& ctx);
  // Variances, covariances and risk loads (O(S·E²)); only for layers that
  // are planned.
  void ComputeSpread();

  std::span<const double> mean() const { return mean_; }

  // Mean over shots of each shot's peak / average rank load ([R*K] layer).
  double Score(std::span<const int32_t> layer);
  // The FlashTree search plus swap refinement: the best-scoring layer.
  std::vector<int32_t> Search();

 private:
  struct Key {  // An expert's place in the LPT order.
    double share;
    int32_t expert;
  };

  // Risk-aware LPT for the given counts; false when some replica finds no
  // rank (all ranks with room hold its expert).
  bool Place(std::span<const int32_t> count, std::vector<int32_t>* layer);
  // Moves one replica into group g (dir > 0) or out of it (dir < 0): the
  // receiving side's expert with the largest risk share gains one (below
  // R), the giving side's expert whose share after the loss is smallest
  // loses one. False when either side has no candidate.
  bool Shift(std::vector<int32_t>* count, int g, int dir) const;

  int e_ = 0;
  int r_ = 0;
  int k_ = 0;
  int s_ = 0;                    // Shots.
  std::vector<double> shots_;    // [S][E]
  std::vector<double> inv_avg_;  // [S]: R / shot total (0: no load).
  std::vector<double> mean_;     // [E]
  std::vector<double> var_;      // [E]
  std::vector<double> risk_;     // [E]: μ + zσ.
  std::vector<double> cov_;      // [E][E], when spread_.
  bool spread_ = false;          // Some expert varies over the shots.
  ShotStats stats_;
  // Scratch.
  std::vector<int32_t> group_;     // [E]: FlashTree group.
  std::vector<int32_t> order_;     // [E]: experts by risk load.
  std::vector<Key> keys_;          // [E]: placement order.
  std::vector<double> share_;      // [E]
  std::vector<double> inv_count_;  // [E]
  std::vector<int32_t> count_;     // [E]
  std::vector<int> used_;          // [R]
  std::vector<double> rank_mean_;  // [R]
  std::vector<double> rank_var_;   // [R]
  std::vector<double> rank_cov_;   // [R][E]: Cov(rank load, x_e).
  std::vector<char> holds_;        // [R][E]
};

void LayerModel::Load(const LayerContext& ctx) {
  e_ = ctx.num_experts;
  r_ = ctx.topology->num_ranks;
  k_ = ctx.topology->slots_per_rank;
  shots_.clear();
  if (ctx.samples != nullptr) {
    shots_ = GroupIntoShots(*ctx.samples, ctx.layer, kMaxShots);
  }
  if (std::all_of(shots_.begin(), shots_.end(),
                  [](double v) { return v == 0.0; })) {
    // No (non-zero) samples: the aggregate is the only shot.
    shots_.assign(ctx.load.begin(), ctx.load.end());
  }
  s_ = static_cast<int>(shots_.size() / static_cast<size_t>(e_));
  mean_.assign(e_, 0.0);
  inv_avg_.assign(s_, 0.0);
  for (int t = 0; t < s_; ++t) {
    const double* x = shots_.data() + static_cast<size_t>(t) * e_;
    double total = 0.0;
    for (int e = 0; e < e_; ++e) {
      mean_[e] += x[e];
      total += x[e];
    }
    if (total > 0.0) inv_avg_[t] = r_ / total;
  }
  for (double& m : mean_) m /= s_;
}

void LayerModel::ComputeSpread() {
  var_.assign(e_, 0.0);
  spread_ = false;
  if (s_ > 1) {
    if (stats_.num_experts() != e_) stats_ = ShotStats(e_);
    stats_.Reset();
    stats_.AddBatch(shots_);
    for (int e = 0; e < e_; ++e) {
      var_[e] = stats_.Variance(e);
      spread_ = spread_ || var_[e] > 0.0;
    }
  }
  if (spread_) {
    stats_.CovarianceMatrix(&cov_);
  } else {
    cov_.clear();
  }
  risk_.resize(e_);
  for (int e = 0; e < e_; ++e) risk_[e] = mean_[e] + kZ * std::sqrt(var_[e]);
}

double LayerModel::Score(std::span<const int32_t> layer) {
  count_.assign(e_, 0);
  for (int32_t e : layer) ++count_[e];
  inv_count_.resize(e_);
  for (int e = 0; e < e_; ++e) {
    inv_count_[e] = count_[e] > 0 ? 1.0 / count_[e] : 0.0;
  }
  double total = 0.0;
  for (int t = 0; t < s_; ++t) {
    if (inv_avg_[t] == 0.0) {
      total += 1.0;  // A shot without load is balanced.
      continue;
    }
    const double* x = shots_.data() + static_cast<size_t>(t) * e_;
    double peak = 0.0;
    for (int r = 0; r < r_; ++r) {
      const int32_t* slots = layer.data() + static_cast<size_t>(r) * k_;
      double sum = 0.0;
      for (int s = 0; s < k_; ++s) sum += x[slots[s]] * inv_count_[slots[s]];
      peak = std::max(peak, sum);
    }
    total += peak * inv_avg_[t];
  }
  return total / s_;
}

bool LayerModel::Place(std::span<const int32_t> count,
                       std::vector<int32_t>* layer) {
  layer->assign(static_cast<size_t>(r_) * k_, -1);
  share_.resize(e_);
  for (int e = 0; e < e_; ++e) share_[e] = mean_[e] / count[e];
  keys_.resize(e_);
  for (int e = 0; e < e_; ++e) keys_[e] = {share_[e], e};
  std::sort(keys_.begin(), keys_.end(), [](const Key& a, const Key& b) {
    return a.share > b.share || (a.share == b.share && a.expert < b.expert);
  });
  used_.assign(r_, 0);
  rank_mean_.assign(r_, 0.0);
  holds_.assign(static_cast<size_t>(r_) * e_, 0);
  if (spread_) {
    rank_var_.assign(r_, 0.0);
    rank_cov_.assign(static_cast<size_t>(r_) * e_, 0.0);
  }
  for (const Key& key : keys_) {
    const int32_t e = key.expert;
    const double inv = 1.0 / count[e];
    const double share = share_[e];
    const double var_e = var_[e] * inv * inv;
    for (int rep = 0; rep < count[e]; ++rep) {
      int best = -1;
      double best_cost = 0.0;
      for (int r = 0; r < r_; ++r) {
        if (used_[r] == k_ || holds_[static_cast<size_t>(r) * e_ + e]) continue;
        double cost = rank_mean_[r] + share;
        // The spread term is >= 0: skip its square root when the mean part
        // alone cannot win.
        if (spread_ && !(best >= 0 && cost >= best_cost)) {
          const double v =
              rank_var_[r] + var_e +
              2.0 * rank_cov_[static_cast<size_t>(r) * e_ + e] * inv;
          cost += kZ * std::sqrt(std::max(0.0, v));
        }
        if (best < 0 || cost < best_cost) {
          best = r;
          best_cost = cost;
        }
      }
      if (best < 0) return false;
      (*layer)[static_cast<size_t>(best) * k_ + used_[best]++] = e;
      holds_[static_cast<size_t>(best) * e_ + e] = 1;
      rank_mean_[best] += share;
      if (spread_) {
        double* acc = rank_cov_.data() + static_cast<size_t>(best) * e_;
        rank_var_[best] += var_e + 2.0 * acc[e] * inv;
        const double* col = cov_.data() + static_cast<size_t>(e) * e_;
        for (int s = 0; s < e_; ++s) acc[s] += col[s] * inv;
      }
    }
  }
  return true;
}

bool LayerModel::Shift(std::vector<int32_t>* count, int g, int dir) const {
  std::vector<int32_t>& c = *count;
  int gain = -1;
  int lose = -1;
  double gain_share = 0.0;
  double lose_share = 0.0;
  for (int e = 0; e < e_; ++e) {
    const bool receiving = (group_[e] == g) == (dir > 0);
    if (receiving) {
      if (c[e] >= r_) continue;
      const double share = risk_[e] / c[e];
      if (gain < 0 || share > gain_share) {
        gain = e;
        gain_share = share;
      }
    } else {
      if (c[e] <= 1) continue;
      const double share = risk_[e] / (c[e] - 1);
      if (lose < 0 || share < lose_share) {
        lose = e;
        lose_share = share;
      }
    }
  }
  if (gain < 0 || lose < 0) return false;
  ++c[gain];
  --c[lose];
  return true;
}

std::vector<int32_t> LayerModel::Search() {
  // Groups: experts by risk load descending (lower id on ties), cut into
  // kDepth runs of near-equal size.
  order_.resize(e_);
  std::iota(order_.begin(), order_.end(), 0);
  std::sort(order_.begin(), order_.end(), [&](int32_t a, int32_t b) {
    return risk_[a] > risk_[b] || (risk_[a] == risk_[b] && a < b);
  });
  group_.resize(e_);
  for (int i = 0; i < e_; ++i) {
    group_[order_[i]] =
        static_cast<int32_t>(static_cast<int64_t>(i) * kDepth / e_);
  }

  std::vector<int32_t> best_count = MinMaxReplicaCounts(risk_, r_ * k_, r_);
  std::vector<int32_t> best;
  if (!Place(best_count, &best)) best = PlaceLpt(mean_, best_count, r_, k_);
  double best_score = Score(best);

  // Counts already scored (moving a replica out of group g and then into
  // group g + 1 often meets the same counts twice); a repeat cannot
  // improve on the best, which is at most its score.
  std::vector<std::vector<int32_t>> seen = {best_count};
  std::vector<int32_t> count;
  std::vector<int32_t> candidate;
  for (int g = 0; g < kDepth; ++g) {
    for (int dir : {+1, -1}) {
      bool improved = false;
      count = best_count;
      for (int step = 0; step < kWidth; ++step) {
        if (!Shift(&count, g, dir) ||
            std::find(seen.begin(), seen.end(), count) != seen.end()) {
          break;
        }
        seen.push_back(count);
        if (!Place(count, &candidate)) break;
        const double score = Score(candidate);
        if (!(score < best_score)) break;  // Early stop: no longer improving.
        improved = true;
        best_score = score;
        best_count = count;
        best.swap(candidate);
      }
      if (improved) break;  // The other direction undoes this one.
    }
  }

  // Swaps on the mean loads; stop once a swap gains less than 1e-9 of the
  // mean rank load.
  const double total = std::accumulate(mean_.begin(), mean_.end(), 0.0);
  candidate = best;
  if (RefineBySwaps(candidate, mean_, r_, k_, /*max_swaps=*/64 * r_,
                    1e-9 * total / r_) > 0 &&
      Score(candidate) <= best_score) {
    best.swap(candidate);
  }
  return best;
}

// mean/max rank load ("balancedness"); 1 for a layer without load.
double Ratio(std::span<const int32_t> layer, std::span<const double> load,
             int num_ranks, int slots_per_rank) {
  return 1.0 / LayerImbalance(layer, load, num_ranks, slots_per_rank);
}

// Largest number of slots of a rank whose expert is new to that rank.
int MaxReceives(std::span<const int32_t> current, std::span<const int32_t> plan,
                int num_ranks, int slots_per_rank) {
  int most = 0;
  for (int r = 0; r < num_ranks; ++r) {
    std::span<const int32_t> cur = current.subspan(
        static_cast<size_t>(r) * slots_per_rank, slots_per_rank);
    int receives = 0;
    for (int s = 0; s < slots_per_rank; ++s) {
      const int32_t e = plan[static_cast<size_t>(r) * slots_per_rank + s];
      if (std::find(cur.begin(), cur.end(), e) == cur.end()) ++receives;
    }
    most = std::max(most, receives);
  }
  return most;
}

class FlashLbPolicy final : public LayerPolicy {
 public:
  std::string_view name() const override { return "flashlb"; }

 protected:
  Status Begin(const PolicyInput& input, const PolicyOptions& options,
               std::vector<std::string>* notes) override;
  std::vector<int32_t> PlanLayer(const LayerContext& ctx) override;

 private:
  // The shape the state belongs to; a different shape starts afresh.
  int num_layers_ = -1;
  int num_experts_ = -1;
  Topology topology_;
  // Per layer: mean/max ratio (on the window's means) of what serves after
  // the last plan; < 0 when the layer was never planned.
  std::vector<double> last_ratio_;
  LayerModel model_;
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
  return Status::Ok();
}

std::vector<int32_t> FlashLbPolicy::PlanLayer(const LayerContext& ctx) {
  const int r = ctx.topology->num_ranks;
  const int k = ctx.topology->slots_per_rank;
  model_.Load(ctx);
  const double current_ratio = Ratio(ctx.current, model_.mean(), r, k);
  double& last = last_ratio_[ctx.layer];
  if (last >= 0.0) {
    // Small groups are easier to balance, so they are held to more.
    const double relative = r < 32 ? 0.95 : 0.9;
    const double absolute = r < 32 ? 0.9 : 0.85;
    if (!(current_ratio < relative * last || current_ratio < absolute)) {
      return {};
    }
  }
  model_.ComputeSpread();
  const double current_score = model_.Score(ctx.current);
  std::vector<int32_t> layer = model_.Search();
  if (!(model_.Score(layer) < current_score * (1.0 - kMinRelativeGain))) {
    last = current_ratio;  // No gain: the current layer keeps serving.
    return {};
  }
  MatchRanksToCurrent(ctx.current, layer, r, k);
  const int limit = ctx.options->max_receives_per_rank;
  // A plan over the receive limit is rejected by the frame (with a note), so
  // the current layer is what serves.
  last = limit > 0 && MaxReceives(ctx.current, layer, r, k) > limit
             ? current_ratio
             : Ratio(layer, model_.mean(), r, k);
  return layer;
}

}  // namespace

std::unique_ptr<Policy> NewFlashLbPolicy() {
  return std::make_unique<FlashLbPolicy>();
}

}  // namespace eplb::policy
