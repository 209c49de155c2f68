// Statistics over time for the layer model (layer_model.h): per-step samples
// grouped into "shots", and the mean / variance / covariance of expert loads
// over a window of shots with incremental (Add) and sliding (Remove + Add)
// updates. The definitions live in shot_stats.cc. Private to the library.
#ifndef EPLB_SRC_POLICY_SHOT_STATS_H_
#define EPLB_SRC_POLICY_SHOT_STATS_H_

#include <cstdint>
#include <span>
#include <vector>

#include "eplb/load.h"

namespace eplb::policy {

// Groups the steps of one layer of `trace` into min(T, max_shots) shots of
// consecutive steps, shot i summing steps [i*T/S, (i+1)*T/S) (sizes differ by
// at most one; the split depends only on T and S). The steps are the
// trace's, followed by its newest `newest_steps` steps newest_weight - 1
// more times (T = steps + (newest_weight - 1) * newest_steps), so that the
// newest count newest_weight times without a copy of the trace. Returns
// [S][E] row-major; empty when the trace has no steps. Preconditions:
// max_shots >= 1, 0 <= newest_steps <= steps, newest_weight >= 1.
std::vector<double> GroupIntoShots(const LoadTrace& trace, int layer,
                                   int max_shots, int newest_steps = 0,
                                   int newest_weight = 1);
// T above: the steps GroupIntoShots groups.
int64_t WeightedStepCount(const LoadTrace& trace, int newest_steps,
                          int newest_weight);

// Sums over a window of shots: Σx, Σx² and Σx xᵀ (upper triangle), each
// taken about a fixed shift (the first shot added to an empty window) so that
// the variance does not cancel catastrophically when loads are large and
// steady. Add and Remove cost O(E²) (AddBatch O(S·E²)); the queries are
// O(1) (the matrix O(E²)). Remove must be given a shot that is in the window.
// Statistics are unbiased (divide by n - 1); variances and covariances are 0
// below two shots. Thread-compatible value type.
class ShotStats {
 public:
  explicit ShotStats(int num_experts = 0);

  int num_experts() const { return n_; }
  int count() const { return count_; }

  void Reset();
  void Add(std::span<const double> shot);     // [E]
  void Remove(std::span<const double> shot);  // [E]
  // Adds shots [S][E] at once: the same sums as S calls of Add (up to
  // rounding), several times faster for a whole window.
  void AddBatch(std::span<const double> shots);

  double Mean(int e) const;
  double Variance(int e) const;  // Clamped at 0.
  double Covariance(int e, int s) const;
  // The symmetric covariance matrix [E][E] (diagonal = Variance).
  void CovarianceMatrix(std::vector<double>* out) const;

 private:
  int n_ = 0;
  int count_ = 0;
  std::vector<double> shift_;  // [E]
  std::vector<double> sum_;    // [E]: Σ (x - shift).
  // [E][E], s >= e only: Σ (x_e - shift_e)(x_s - shift_s).
  std::vector<double> cross_;
  std::vector<double> d_;  // Scratch: one centred shot.

  // Adds (sign +1) or removes (sign -1) one shot's terms.
  void Accumulate(std::span<const double> shot, double sign);
};

}  // namespace eplb::policy

#endif  // EPLB_SRC_POLICY_SHOT_STATS_H_
