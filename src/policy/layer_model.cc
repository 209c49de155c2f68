// The layer model (layer_model.h): shots and their statistics, the shot
// score, FlashLB's search (risk-aware placement and FlashTree), the
// incremental layer and the shot-scored swaps. The steps named below are
// those of FlashLB's description in flashlb_policy.cc.
#include "policy/layer_model.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <numeric>
#include <span>
#include <vector>

#include "eplb/dispatch.h"
#include "eplb/load.h"
#include "policy/algorithms.h"
#include "policy/layer_policy.h"
#include "policy/shot_stats.h"

// Hot loops of the shot-scored swaps get an AVX2 clone besides the baseline
// one, picked at load time (GCC and Clang on x86-64 with glibc). Both clones
// add the same terms in the same order: results are bit-identical.
// ThreadSanitizer builds keep one clone: their runtime is not ready when
// the ifunc resolvers run.
#if defined(__SANITIZE_THREAD__)
#define EPLB_NO_CLONES 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define EPLB_NO_CLONES 1
#endif
#endif
#if defined(__x86_64__) && defined(__GLIBC__) && !defined(EPLB_NO_CLONES)
#define EPLB_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define EPLB_VECTOR_CLONES
#endif

namespace eplb::policy {

namespace {

constexpr double kZ = 0.6745;  // 75th percentile of the standard normal.
constexpr int kMaxShots = 128;
constexpr int kDepth = 4;  // FlashTree groups.
constexpr int kWidth = 8;  // Replicas a group may gain or lose.
// Re-plans (step 8): the partners of the hot rank that the swaps try.
constexpr int kSwapPartners = 2;
// Slots of each side that a swap search tries (all when K is at most this).
constexpr int kSwapSlots = 12;
// Work bound of the statistics: a layer keeps at most kShotBudget / E² shots
// (covariances cost S·E²), and never fewer than kMinShots nor more than
// kMaxShots: 128 shots for 64 experts, 64 for 128, 16 for 256.
constexpr int kShotBudget = 1 << 20;
constexpr int kMinShots = 8;
}  // namespace

void LayerModel::Load(const LayerContext& ctx) {
  keys_sorted_ = false;  // Place's order belongs to the last layer.
  e_ = ctx.num_experts;
  r_ = ctx.topology->num_ranks;
  k_ = ctx.topology->slots_per_rank;
  move_cost_scale_ = ctx.move_cost_scale;
  dispatch_ = ctx.options != nullptr ? ctx.options->dispatch
                                     : DispatchMode::kRoundRobin;
  shot_tokens_.clear();  // DispatchScore's, rebuilt on first use.
  shots_.clear();
  whole_tokens_ = false;
  if (ctx.samples != nullptr) {
    const int budget = kShotBudget / std::max(1, e_ * e_);
    const int max_shots = std::clamp(budget, kMinShots, kMaxShots);
    shots_ = GroupIntoShots(*ctx.samples, ctx.layer, max_shots,
                            ctx.newest_steps, ctx.newest_weight);
    const int64_t steps =
        WeightedStepCount(*ctx.samples, ctx.newest_steps, ctx.newest_weight);
    // Per-step samples (two steps or more; one is an aggregate), one step
    // per shot, in whole tokens: replicas split each expert's tokens as the
    // default dispatch does. A balanced dispatch splits them as
    // the step needs, closer to even shares than to round robin's odd
    // tokens.
    whole_tokens_ = dispatch_ == DispatchMode::kRoundRobin && steps >= 2 &&
                    steps <= max_shots &&
                    std::all_of(shots_.begin(), shots_.end(), IsTokenCount);
  }
  if (std::all_of(shots_.begin(), shots_.end(),
                  [](double v) { return v == 0.0; })) {
    // No (non-zero) samples: the aggregate is the only shot.
    shots_.assign(ctx.load.begin(), ctx.load.end());
    whole_tokens_ = false;
  }
  s_ = static_cast<int>(shots_.size() / static_cast<size_t>(e_));
  shots_t_.resize(shots_.size());
  for (int t = 0; t < s_; ++t) {
    for (int e = 0; e < e_; ++e) {
      shots_t_[static_cast<size_t>(e) * s_ + t] =
          shots_[static_cast<size_t>(t) * e_ + e];
    }
  }
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

void LayerModel::ComputeMeansOnly() {
  var_.assign(e_, 0.0);
  spread_ = false;
  cov_.clear();
  risk_ = mean_;
}

void LayerModel::CountReplicas(std::span<const int32_t> layer) {
  count_.assign(e_, 0);
  for (int32_t e : layer) ++count_[e];
  inv_count_.resize(e_);
  for (int e = 0; e < e_; ++e) {
    inv_count_[e] = count_[e] > 0 ? 1.0 / count_[e] : 0.0;
  }
}

namespace {

// The default dispatch's split of whole tokens: replica j of c
// receives floor(x / c) tokens, plus one when j < x mod c, of an expert's x
// tokens in each of n shots. Adds that share to load[t]. With x a whole
// number in [0, 2^31), w = trunc((x + 0.5) / c) is floor(x / c) exactly
// ((x + 0.5) / c lies at least 0.5 / c from an integer, far above the
// rounding of the multiply), r = x - w c is exact, and for whole
// numbers min(max(r - j, 0), 1) is the test j < r: no branch, so the loop
// vectorizes, and both clones compute the same exact values.
EPLB_VECTOR_CLONES
void AddWholeShares(const double* x, int n, int c, int j, double* load) {
  const double inv = 1.0 / c;
  const double dc = c;
  const double dj = j;
  for (int t = 0; t < n; ++t) {
    const double w =
        static_cast<double>(static_cast<int32_t>((x[t] + 0.5) * inv));
    const double r = x[t] - w * dc;
    load[t] += w + std::min(std::max(r - dj, 0.0), 1.0);
  }
}

}  // namespace

void LayerModel::AddSlotShares(std::span<const int32_t> layer, size_t p,
                               double* load) {
  const int32_t e = layer[p];
  const double* col = shots_t_.data() + static_cast<size_t>(e) * s_;
  if (whole_tokens_ && count_[e] > 1) {
    AddWholeShares(col, s_, count_[e], replica_[p], load);
  } else {
    const double inv = inv_count_[e];
    for (int t = 0; t < s_; ++t) load[t] += col[t] * inv;
  }
}

void LayerModel::ReplicaIndices(std::span<const int32_t> layer) {
  replica_.resize(layer.size());
  seen_.assign(e_, 0);
  for (size_t p = 0; p < layer.size(); ++p) replica_[p] = seen_[layer[p]]++;
}

double LayerModel::Score(std::span<const int32_t> layer) {
  CountReplicas(layer);
  ReplicaIndices(layer);
  // Rank loads per shot ([R][S]), slot by slot: each rank's sum adds its
  // slots in slot order.
  score_load_.assign(static_cast<size_t>(r_) * s_, 0.0);
  for (size_t p = 0; p < layer.size(); ++p) {
    AddSlotShares(layer, p, score_load_.data() + (p / k_) * s_);
  }
  double total = 0.0;
  for (int t = 0; t < s_; ++t) {
    if (inv_avg_[t] == 0.0) {
      total += 1.0;  // A shot without load is balanced.
      continue;
    }
    double peak = 0.0;
    for (int r = 0; r < r_; ++r) {
      peak = std::max(peak, score_load_[static_cast<size_t>(r) * s_ + t]);
    }
    total += peak * inv_avg_[t];
  }
  return total / s_;
}

double LayerModel::DispatchScore(std::span<const int32_t> layer) {
  if (dispatch_ != DispatchMode::kBalanced) return Score(layer);
  if (balancer_ == nullptr || balancer_->num_experts() != e_ ||
      balancer_->num_ranks() != r_ || balancer_->slots_per_rank() != k_) {
    balancer_ = std::make_unique<BalancedDispatcher>(e_, r_, k_);
  }
  if (shot_tokens_.empty()) {
    // The shots in whole tokens, once per Load: each shot's counts, or
    // (shots that are not token counts) scaled to a million tokens.
    shot_tokens_.assign(shots_.size(), 0);
    shot_total_.assign(s_, 0);
    for (int t = 0; t < s_; ++t) {
      const double* x = shots_.data() + static_cast<size_t>(t) * e_;
      int64_t* out = shot_tokens_.data() + static_cast<size_t>(t) * e_;
      double sum = 0.0;
      bool whole = true;
      for (int e = 0; e < e_; ++e) {
        sum += x[e];
        whole = whole && IsTokenCount(x[e]);
      }
      if (!(sum > 0.0)) continue;
      const double scale = whole ? 1.0 : 1e6 / sum;
      for (int e = 0; e < e_; ++e) {
        out[e] = std::llround(x[e] * scale);
        shot_total_[t] += out[e];
      }
    }
  }
  balancer_->SetPlacement(layer);
  quotas_.resize(static_cast<size_t>(r_) * k_);
  double total = 0.0;
  for (int t = 0; t < s_; ++t) {
    if (shot_total_[t] == 0) {
      total += 1.0;  // A shot without load is balanced.
      continue;
    }
    const int64_t peak = balancer_->ComputeQuotas(
        std::span<const int64_t>(
            shot_tokens_.data() + static_cast<size_t>(t) * e_,
            static_cast<size_t>(e_)),
        quotas_);
    total +=
        static_cast<double>(peak) * r_ / static_cast<double>(shot_total_[t]);
  }
  return total / s_;
}

double LayerModel::Cost(std::span<const int32_t> current,
                        std::span<const int32_t> layer, double move_cost) {
  return Score(layer) + move_cost * MovedExperts(current, layer, r_, k_);
}

double LayerModel::MoveCost() const {
  return move_cost_scale_ * kShotMovePenalty / (static_cast<double>(r_) * k_);
}

int LayerModel::BestRank(int e, double share, double var_e, double inv) const {
  int best = -1;
  double best_cost = 0.0;
  for (int r = 0; r < r_; ++r) {
    if (used_[r] == k_ || holds_[static_cast<size_t>(r) * e_ + e]) continue;
    double cost = rank_mean_[r] + share;
    // The spread term is >= 0: skip its square root when the mean part alone
    // cannot win.
    if (spread_ && !(best >= 0 && cost >= best_cost)) {
      const double v = rank_var_[r] + var_e +
                       2.0 * rank_cov_[static_cast<size_t>(r) * e_ + e] * inv;
      cost += kZ * std::sqrt(std::max(0.0, v));
    }
    if (best < 0 || cost < best_cost) {
      best = r;
      best_cost = cost;
    }
  }
  return best;
}

void LayerModel::ClearRanks() {
  used_.assign(r_, 0);
  rank_mean_.assign(r_, 0.0);
  // Only the entries set since the last clear, when they are all known
  // (FlashTree clears this R x E table for every placement it scores).
  if (held_known_ && holds_.size() == static_cast<size_t>(r_) * e_) {
    for (size_t i : held_) holds_[i] = 0;
  } else {
    holds_.assign(static_cast<size_t>(r_) * e_, 0);
  }
  held_.clear();
  held_known_ = true;
  if (spread_) {
    rank_var_.assign(r_, 0.0);
    rank_cov_.assign(static_cast<size_t>(r_) * e_, 0.0);
  }
}

bool LayerModel::Place(std::span<const int32_t> count,
                       std::vector<int32_t>* layer) {
  layer->assign(static_cast<size_t>(r_) * k_, -1);
  share_.resize(e_);
  for (int e = 0; e < e_; ++e) share_[e] = mean_[e] / count[e];
  auto before = [](const Key& a, const Key& b) {
    return a.share > b.share || (a.share == b.share && a.expert < b.expert);
  };
  if (keys_sorted_ && static_cast<int>(keys_.size()) == e_) {
    // The order of the last placement of this layer, with new shares: the
    // FlashTree's counts differ from it in a few experts, so an insertion
    // sort is nearly linear (the order is total: the same result).
    for (Key& key : keys_) key.share = share_[key.expert];
    for (size_t i = 1; i < keys_.size(); ++i) {
      const Key key = keys_[i];
      size_t j = i;
      for (; j > 0 && before(key, keys_[j - 1]); --j) keys_[j] = keys_[j - 1];
      keys_[j] = key;
    }
  } else {
    keys_.resize(e_);
    for (int e = 0; e < e_; ++e) keys_[e] = {share_[e], e};
    std::sort(keys_.begin(), keys_.end(), before);
    keys_sorted_ = true;
  }
  ClearRanks();
  if (!spread_) return PlaceOnMeans(count, layer);
  for (const Key& key : keys_) {
    const int32_t e = key.expert;
    const double inv = 1.0 / count[e];
    const double share = share_[e];
    const double var_e = var_[e] * inv * inv;
    for (int rep = 0; rep < count[e]; ++rep) {
      const int best = BestRank(e, share, var_e, inv);
      if (best < 0) return false;
      (*layer)[static_cast<size_t>(best) * k_ + used_[best]++] = e;
      Hold(best, e);
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

bool LayerModel::PlaceOnMeans(std::span<const int32_t> count,
                              std::vector<int32_t>* layer) {
  // BestRank on the means alone is the lightest rank with room that does
  // not hold the expert: a heap of the ranks with room (lightest on top,
  // lowest id on ties), the ranks that hold it set aside meanwhile.
  heap_.Reset(r_);
  for (const Key& key : keys_) {
    const int32_t e = key.expert;
    for (int rep = 0; rep < count[e]; ++rep) {
      const int best = heap_.SeekTop(
          [&](int r) { return holds_[static_cast<size_t>(r) * e_ + e] != 0; });
      if (best < 0) return false;
      (*layer)[static_cast<size_t>(best) * k_ + used_[best]++] = e;
      Hold(best, e);
      rank_mean_[best] += share_[e];
      heap_.TakeTop(rank_mean_[best], used_[best] < k_);
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
  // Without spread (one aggregate, or experts that never vary) the counts
  // above minimise the largest share exactly and the tree only tries other
  // packings, which the swaps below beat: skipping it left the shipped
  // DeepSeek-V3 plans as balanced or better and synthetic ones at 128
  // ranks better, in two thirds of the time.
  const int depth = spread_ ? kDepth : 0;
  for (int g = 0; g < depth; ++g) {
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

bool LayerModel::Incremental(std::span<const int32_t> current,
                             std::span<const int32_t> count, int max_receives,
                             std::vector<int32_t>* layer) {
  const int slots = r_ * k_;
  std::vector<int32_t>& lay = *layer;
  lay.assign(current.begin(), current.end());
  share_.resize(e_);
  for (int e = 0; e < e_; ++e) share_[e] = mean_[e] / count[e];
  count_.assign(e_, 0);
  for (int32_t e : current) ++count_[e];
  rank_mean_.assign(r_, 0.0);
  for (int p = 0; p < slots; ++p) rank_mean_[p / k_] += share_[lay[p]];
  // Surplus replicas leave the most loaded rank first (the larger share,
  // then the lower slot, on ties). Every freed slot receives an expert: with
  // a receive limit, ranks below it free slots first.
  freed_.assign(r_, 0);
  auto below = [&](int p) {
    return max_receives <= 0 || freed_[p / k_] < max_receives;
  };
  for (;;) {
    int drop = -1;
    for (int p = 0; p < slots; ++p) {
      const int32_t e = lay[p];
      if (e < 0 || count_[e] <= count[e]) continue;
      if (drop < 0) {
        drop = p;
        continue;
      }
      const double a = rank_mean_[p / k_];
      const double b = rank_mean_[drop / k_];
      if (below(p) != below(drop)) {
        if (below(p)) drop = p;
      } else if (a > b || (a == b && share_[e] > share_[lay[drop]])) {
        drop = p;
      }
    }
    if (drop < 0) break;
    rank_mean_[drop / k_] -= share_[lay[drop]];
    --count_[lay[drop]];
    ++freed_[drop / k_];
    lay[drop] = -1;
  }
  // The kept replicas, as Place would have added them.
  ClearRanks();
  auto add = [&](int r, int32_t e) {
    const double inv = 1.0 / count[e];
    ++used_[r];
    Hold(r, e);
    rank_mean_[r] += share_[e];
    if (spread_) {
      double* acc = rank_cov_.data() + static_cast<size_t>(r) * e_;
      rank_var_[r] += var_[e] * inv * inv + 2.0 * acc[e] * inv;
      const double* col = cov_.data() + static_cast<size_t>(e) * e_;
      for (int s = 0; s < e_; ++s) acc[s] += col[s] * inv;
    }
  };
  auto remove = [&](int r, int32_t e) {
    const double inv = 1.0 / count[e];
    --used_[r];
    holds_[static_cast<size_t>(r) * e_ + e] = 0;
    rank_mean_[r] -= share_[e];
    if (spread_) {
      double* acc = rank_cov_.data() + static_cast<size_t>(r) * e_;
      const double* col = cov_.data() + static_cast<size_t>(e) * e_;
      for (int s = 0; s < e_; ++s) acc[s] -= col[s] * inv;
      rank_var_[r] -= var_[e] * inv * inv + 2.0 * acc[e] * inv;
    }
  };
  for (int p = 0; p < slots; ++p) {
    if (lay[p] >= 0) add(p / k_, lay[p]);
  }
  keys_.clear();
  keys_sorted_ = false;
  for (int e = 0; e < e_; ++e) {
    if (count_[e] < count[e]) keys_.push_back({share_[e], e});
  }
  std::sort(keys_.begin(), keys_.end(), [](const Key& a, const Key& b) {
    return a.share > b.share || (a.share == b.share && a.expert < b.expert);
  });
  for (const Key& key : keys_) {
    const int32_t e = key.expert;
    const double inv = 1.0 / count[e];
    const double var_e = var_[e] * inv * inv;
    for (int rep = count_[e]; rep < count[e]; ++rep) {
      const int best = BestRank(e, key.share, var_e, inv);
      if (best < 0) {
        // Every rank with room holds e: some expert f of a rank q without e
        // moves into the room (rank r), and e takes f's slot.
        int r = 0;
        while (used_[r] == k_) ++r;
        int from = -1;
        for (int p = 0; p < slots && from < 0; ++p) {
          const int q = p / k_;
          const int32_t f = lay[p];
          if (f >= 0 && !holds_[static_cast<size_t>(q) * e_ + e] &&
              !holds_[static_cast<size_t>(r) * e_ + f]) {
            from = p;
          }
        }
        if (from < 0) return false;
        const int32_t f = lay[from];
        remove(from / k_, f);
        int32_t* room = lay.data() + static_cast<size_t>(r) * k_;
        *std::find(room, room + k_, -1) = f;
        add(r, f);
        lay[from] = e;
        add(from / k_, e);
        continue;
      }
      int32_t* slot = lay.data() + static_cast<size_t>(best) * k_;
      *std::find(slot, slot + k_, -1) = e;
      add(best, e);
    }
  }
  return true;
}

namespace {

// Σ min(v[i], cap[i]) in four partial sums (vectorizable, fixed order).
EPLB_VECTOR_CLONES
double SumMin(const double* v, const double* cap, int n) {
  double part[4] = {0.0, 0.0, 0.0, 0.0};
  int i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int k = 0; k < 4; ++k) part[k] += std::min(v[i + k], cap[i + k]);
  }
  for (; i < n; ++i) part[0] += std::min(v[i], cap[i]);
  return (part[0] + part[1]) + (part[2] + part[3]);
}

// Σ over shots of the peak's change when slot values va and vb trade ranks
// h (loads lh) and q (loads lq): the new peak is the largest of the other
// ranks' peak `other`, h's and q's new loads; `peak` is the old one. Four
// partial sums (a fixed order, so the result is the same on every run and
// with every instruction set) let the compiler use vector instructions.
EPLB_VECTOR_CLONES
double PeakChange(const double* va, const double* vb, const double* lh,
                  const double* lq, const double* other, const double* peak,
                  int n) {
  double part[4] = {0.0, 0.0, 0.0, 0.0};
  int i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int k = 0; k < 4; ++k) {
      const double d = va[i + k] - vb[i + k];
      part[k] +=
          std::max(other[i + k], std::max(lh[i + k] - d, lq[i + k] + d)) -
          peak[i + k];
    }
  }
  for (; i < n; ++i) {
    const double d = va[i] - vb[i];
    part[0] += std::max(other[i], std::max(lh[i] - d, lq[i] + d)) - peak[i];
  }
  return (part[0] + part[1]) + (part[2] + part[3]);
}

}  // namespace

void LayerModel::BestSwap(std::span<const int32_t> lay, int h, double move_cost,
                          double* best, int* best_a, int* best_b) {
  const int n = static_cast<int>(peak_.size());
  // Partners: the ranks with the most room below h's peaks.
  for (int q = 0; q < r_; ++q) {
    double room = 0.0;
    const double* load = shot_load_.data() + static_cast<size_t>(q) * n;
    for (int i = 0; i < n; ++i) {
      if (peak_rank_[i] == h) room += peak_[i] - load[i];
    }
    room_[q] = room;
  }
  partners_.clear();
  for (int q = 0; q < r_; ++q) {
    if (q != h) partners_.push_back(q);
  }
  const int num_partners =
      std::min(static_cast<int>(partners_.size()), kSwapPartners);
  std::partial_sort(partners_.begin(), partners_.begin() + num_partners,
                    partners_.end(), [&](int a, int b) {
                      return room_[a] > room_[b] ||
                             (room_[a] == room_[b] && a < b);
                    });
  const double* lh = shot_load_.data() + static_cast<size_t>(h) * n;
  for (int j = 0; j < num_partners; ++j) {
    const int q = partners_[j];
    const double* lq = shot_load_.data() + static_cast<size_t>(q) * n;
    // Per shot, the peak over the ranks other than h and q.
    for (int i = 0; i < n; ++i) {
      if (peak_rank_[i] != h && peak_rank_[i] != q) {
        other_[i] = peak_[i];
        continue;
      }
      double o = 0.0;
      for (int r = 0; r < r_; ++r) {
        if (r != h && r != q) {
          o = std::max(o, shot_load_[static_cast<size_t>(r) * n + i]);
        }
      }
      other_[i] = o;
    }
    // Bounds on the gain: a shot's peak falls only where h or q holds it,
    // by at most the gap to the other ranks and the load that leaves. The
    // gaps are 0 in the other shots, where min(load >= 0, 0) adds nothing.
    for (int i = 0; i < n; ++i) {
      const double gap = peak_[i] - other_[i];
      gap_h_[i] = peak_rank_[i] == h ? gap : 0.0;
      gap_q_[i] = peak_rank_[i] == q ? gap : 0.0;
    }
    for (int s = 0; s < k_; ++s) {
      const double* va = slot_val_.data() + static_cast<size_t>(h * k_ + s) * n;
      const double* vb = slot_val_.data() + static_cast<size_t>(q * k_ + s) * n;
      gain_a_[s] = SumMin(va, gap_h_.data(), n) / s_;
      gain_b_[s] = SumMin(vb, gap_q_.data(), n) / s_;
    }
    // With many slots per rank, only the kSwapSlots slots of each side with
    // the largest bound on their gain take part (ties to the lower slot), so
    // that a search costs O(kSwapSlots² · shots) whatever K is.
    TopSlots(gain_a_, &top_a_);
    TopSlots(gain_b_, &top_b_);
    for (int sa : top_a_) {
      const int pa = h * k_ + sa;
      const int32_t ea = lay[pa];
      if (holds_[static_cast<size_t>(q) * e_ + ea]) continue;
      const double* va = slot_val_.data() + static_cast<size_t>(pa) * n;
      const double gain_a = gain_a_[sa];
      for (int sb : top_b_) {
        const int pb = q * k_ + sb;
        const int32_t eb = lay[pb];
        if (holds_[static_cast<size_t>(h) * e_ + eb]) continue;
        const int to_h = IsNew(h, eb) - IsNew(h, ea);
        const int to_q = IsNew(q, ea) - IsNew(q, eb);
        if (max_receives_ > 0 &&
            ((to_h > 0 && receives_[h] + to_h > max_receives_) ||
             (to_q > 0 && receives_[q] + to_q > max_receives_))) {
          continue;
        }
        const int moved = to_h + to_q;
        if (move_cost * moved - gain_a - gain_b_[sb] >= *best) continue;
        const double* vb = slot_val_.data() + static_cast<size_t>(pb) * n;
        const double sum =
            PeakChange(va, vb, lh, lq, other_.data(), peak_.data(), n);
        const double delta = sum / s_ + move_cost * moved;
        if (delta < *best) {
          *best = delta;
          *best_a = pa;
          *best_b = pb;
        }
      }
    }
  }
}

void LayerModel::TopSlots(const std::vector<double>& gain,
                          std::vector<int>* top) const {
  top->resize(k_);
  std::iota(top->begin(), top->end(), 0);
  if (k_ <= kSwapSlots) return;
  std::partial_sort(top->begin(), top->begin() + kSwapSlots, top->end(),
                    [&](int a, int b) {
                      return gain[a] > gain[b] || (gain[a] == gain[b] && a < b);
                    });
  top->resize(kSwapSlots);
  std::sort(top->begin(), top->end());  // Slot order, as a full scan.
}

void LayerModel::FillSlotValues(std::span<const int32_t> lay, int n) {
  // Per slot and per rank, the load in each loaded shot, in units of the
  // shot's mean rank load ([P][S'] and [R][S'], shots without load left
  // out: their score term is constant).
  CountReplicas(lay);
  ReplicaIndices(lay);
  slot_val_.assign(lay.size() * n, 0.0);
  shot_load_.assign(static_cast<size_t>(r_) * n, 0.0);
  for (size_t p = 0; p < lay.size(); ++p) UpdateSlotValues(lay, p, n);
}

void LayerModel::UpdateSlotValues(std::span<const int32_t> lay, size_t p,
                                  int n) {
  share_buf_.assign(s_, 0.0);
  AddSlotShares(lay, p, share_buf_.data());
  double* v = slot_val_.data() + p * n;
  double* load = shot_load_.data() + (p / k_) * n;
  for (int t = 0, i = 0; t < s_; ++t) {
    if (inv_avg_[t] == 0.0) continue;
    const double now = share_buf_[t] * inv_avg_[t];
    load[i] += now - v[i];
    v[i] = now;
    ++i;
  }
}

void LayerModel::RefreshShares(std::span<const int32_t> lay, int32_t e, int n) {
  if (count_[e] <= 1) return;
  int replica = 0;
  for (size_t p = 0; p < lay.size(); ++p) {
    if (lay[p] != e) continue;
    replica_[p] = replica++;
    UpdateSlotValues(lay, p, n);
  }
}

int LayerModel::SwapOnShots(std::span<const int32_t> current, double move_cost,
                            int max_swaps, int max_receives,
                            std::vector<int32_t>* layer) {
  std::vector<int32_t>& lay = *layer;
  const int slots = r_ * k_;
  holds_.assign(static_cast<size_t>(r_) * e_, 0);
  held_known_ = false;  // Swaps below set entries ClearRanks cannot list.
  cur_holds_.assign(static_cast<size_t>(r_) * e_, 0);
  for (int p = 0; p < slots; ++p) {
    holds_[static_cast<size_t>(p / k_) * e_ + lay[p]] = 1;
    cur_holds_[static_cast<size_t>(p / k_) * e_ + current[p]] = 1;
  }
  max_receives_ = max_receives;
  receives_.assign(r_, 0);
  for (int p = 0; p < slots; ++p) receives_[p / k_] += IsNew(p / k_, lay[p]);
  int n = 0;
  for (int t = 0; t < s_; ++t) n += inv_avg_[t] > 0.0 ? 1 : 0;
  if (n == 0) return 0;
  FillSlotValues(lay, n);
  peak_.resize(n);
  gain_a_.resize(k_);
  gain_b_.resize(k_);
  peak_rank_.resize(n);
  other_.resize(n);
  gap_h_.resize(n);
  gap_q_.resize(n);
  room_.resize(r_);
  int swaps = 0;
  for (; swaps < max_swaps; ++swaps) {
    hot_count_.assign(r_, 0);
    for (int i = 0; i < n; ++i) {
      int top = 0;
      for (int r = 1; r < r_; ++r) {
        if (shot_load_[static_cast<size_t>(r) * n + i] >
            shot_load_[static_cast<size_t>(top) * n + i]) {
          top = r;
        }
      }
      peak_[i] = shot_load_[static_cast<size_t>(top) * n + i];
      peak_rank_[i] = top;
      ++hot_count_[top];
    }
    // The hot rank: the peak in the most shots (lower id on ties).
    const int hot = static_cast<int>(
        std::max_element(hot_count_.begin(), hot_count_.end()) -
        hot_count_.begin());
    double best = 0.0;
    int best_a = -1;
    int best_b = -1;
    BestSwap(lay, hot, move_cost, &best, &best_a, &best_b);
    // Scores are about 1: a swap must gain more than rounding.
    if (best_a < 0 || !(best < -kMinRelativeGain)) break;
    const int h = best_a / k_;
    const int q = best_b / k_;
    const int32_t ea = lay[best_a];
    const int32_t eb = lay[best_b];
    double* va = slot_val_.data() + static_cast<size_t>(best_a) * n;
    double* vb = slot_val_.data() + static_cast<size_t>(best_b) * n;
    double* load_h = shot_load_.data() + static_cast<size_t>(h) * n;
    double* load_q = shot_load_.data() + static_cast<size_t>(q) * n;
    for (int i = 0; i < n; ++i) {
      const double d = va[i] - vb[i];
      load_h[i] -= d;
      load_q[i] += d;
      std::swap(va[i], vb[i]);
    }
    receives_[h] += IsNew(h, eb) - IsNew(h, ea);
    receives_[q] += IsNew(q, ea) - IsNew(q, eb);
    SwapSlots(lay, holds_, e_, k_, best_a, best_b);
    // In whole tokens, a replicated expert's shares follow its replicas'
    // order, which the swap may have changed.
    if (whole_tokens_) {
      RefreshShares(lay, ea, n);
      RefreshShares(lay, eb, n);
    }
  }
  return swaps;
}

}  // namespace eplb::policy
