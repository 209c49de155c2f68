// ShotStats and GroupIntoShots (shot_stats.h): the per-step samples of a
// layer grouped into shots, and their incremental mean / variance /
// covariance.
#include "policy/shot_stats.h"

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "eplb/load.h"
#include "eplb/status.h"

namespace eplb::policy {

int64_t WeightedStepCount(const LoadTrace& trace, int newest_steps,
                          int newest_weight) {
  EPLB_CHECK(newest_steps >= 0 && newest_steps <= trace.num_steps() &&
             newest_weight >= 1);
  return trace.num_steps() +
         static_cast<int64_t>(newest_weight - 1) * newest_steps;
}

std::vector<double> GroupIntoShots(const LoadTrace& trace, int layer,
                                   int max_shots, int newest_steps,
                                   int newest_weight) {
  const int64_t real_steps = trace.num_steps();
  const int64_t steps = WeightedStepCount(trace, newest_steps, newest_weight);
  const int n = trace.num_experts();
  if (steps == 0) return {};
  const int64_t shots = std::min<int64_t>(steps, max_shots);
  std::vector<double> out(static_cast<size_t>(shots) * n, 0.0);
  for (int64_t i = 0; i < shots; ++i) {
    double* dst = out.data() + static_cast<size_t>(i) * n;
    for (int64_t t = i * steps / shots; t < (i + 1) * steps / shots; ++t) {
      // Past the trace's own steps: its newest ones again.
      const int64_t from = t < real_steps ? t
                                          : real_steps - newest_steps +
                                                (t - real_steps) % newest_steps;
      std::span<const double> row = trace.row(static_cast<int>(from), layer);
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

}  // namespace eplb::policy
