#include "eplb/load.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace eplb {

LoadMatrix LoadTrace::Aggregate(int begin_step, int end_step) const {
  begin_step = std::clamp(begin_step, 0, num_steps_);
  end_step = std::clamp(end_step, begin_step, num_steps_);
  LoadMatrix out(num_layers_, num_experts_);
  const size_t cells = static_cast<size_t>(num_layers_) * num_experts_;
  std::vector<double> sum(cells, 0.0);
  for (int s = begin_step; s < end_step; ++s) {
    const double* src = data_.data() + static_cast<size_t>(s) * cells;
    for (size_t i = 0; i < cells; ++i) sum[i] += src[i];
  }
  for (int l = 0; l < num_layers_; ++l) {
    std::copy_n(sum.begin() + static_cast<ptrdiff_t>(l) * num_experts_,
                num_experts_, out.mutable_row(l).begin());
  }
  return out;
}

LoadTrace TraceFromAggregate(const LoadMatrix& load) {
  LoadTrace trace(1, load.num_layers(), load.num_experts());
  for (int l = 0; l < load.num_layers(); ++l) {
    for (int e = 0; e < load.num_experts(); ++e)
      trace.at(0, l, e) = load.at(l, e);
  }
  return trace;
}

namespace {
bool BadValue(double v) { return !std::isfinite(v) || v < 0.0; }
std::string Describe(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return std::to_string(v);
}
}  // namespace

Status ValidateLoad(const LoadMatrix& load) {
  for (int l = 0; l < load.num_layers(); ++l) {
    for (int e = 0; e < load.num_experts(); ++e) {
      if (BadValue(load.at(l, e))) {
        return InvalidArgumentError("load of layer " + std::to_string(l) +
                                    ", expert " + std::to_string(e) + " is " +
                                    Describe(load.at(l, e)) +
                                    ": must be finite and >= 0");
      }
    }
  }
  return Status::Ok();
}

Status ValidateLoad(const LoadTrace& trace) {
  for (int s = 0; s < trace.num_steps(); ++s) {
    for (int l = 0; l < trace.num_layers(); ++l) {
      for (int e = 0; e < trace.num_experts(); ++e) {
        const double v = trace.at(s, l, e);
        if (BadValue(v)) {
          return InvalidArgumentError(
              "load of step " + std::to_string(s) + ", layer " +
              std::to_string(l) + ", expert " + std::to_string(e) + " is " +
              Describe(v) + ": must be finite and >= 0");
        }
      }
    }
  }
  return Status::Ok();
}

std::vector<double> RankLoads(std::span<const int32_t> layer,
                              std::span<const double> expert_load,
                              int num_ranks, int slots_per_rank) {
  const int num_experts = static_cast<int>(expert_load.size());
  std::vector<int> count(num_experts, 0);
  for (int32_t e : layer) {
    if (e >= 0 && e < num_experts) ++count[e];
  }
  std::vector<double> loads(num_ranks, 0.0);
  for (int r = 0; r < num_ranks; ++r) {
    double sum = 0.0;
    for (int s = 0; s < slots_per_rank; ++s) {
      const int32_t e = layer[static_cast<size_t>(r) * slots_per_rank + s];
      if (e >= 0 && e < num_experts) sum += expert_load[e] / count[e];
    }
    loads[r] = sum;
  }
  return loads;
}

double RankImbalance(std::span<const double> loads) {
  double total = 0.0;
  double peak = 0.0;
  for (double v : loads) {
    total += v;
    peak = std::max(peak, v);
  }
  if (total <= 0.0) return 1.0;
  return peak / (total / static_cast<double>(loads.size()));
}

double LayerImbalance(std::span<const int32_t> layer,
                      std::span<const double> expert_load, int num_ranks,
                      int slots_per_rank) {
  return RankImbalance(
      RankLoads(layer, expert_load, num_ranks, slots_per_rank));
}

double StepImbalance(const Placement& placement, int layer,
                     const LoadTrace& samples) {
  const int steps = samples.num_steps();
  if (steps == 0) return 1.0;
  const std::span<const int32_t> slots = placement.layer(layer);
  const int num_ranks = placement.num_ranks();
  const int per_rank = placement.slots_per_rank();
  bool whole = true;
  for (int t = 0; t < steps && whole; ++t) {
    const std::span<const double> row = samples.row(t, layer);
    whole = std::all_of(row.begin(), row.end(), IsTokenCount);
  }
  if (!whole) {
    double sum = 0.0;
    for (int t = 0; t < steps; ++t) {
      sum += LayerImbalance(slots, samples.row(t, layer), num_ranks, per_rank);
    }
    return sum / steps;
  }
  // Whole tokens: the default dispatch; j counts the expert's slots in slot
  // order.
  std::vector<int64_t> count(samples.num_experts(), 0);
  std::vector<int64_t> replica(slots.size());
  for (size_t p = 0; p < slots.size(); ++p) replica[p] = count[slots[p]]++;
  std::vector<double> loads(num_ranks);
  double sum = 0.0;
  for (int t = 0; t < steps; ++t) {
    const std::span<const double> tokens = samples.row(t, layer);
    std::fill(loads.begin(), loads.end(), 0.0);
    for (size_t p = 0; p < slots.size(); ++p) {
      const int32_t e = slots[p];
      loads[p / per_rank] += static_cast<double>(WholeTokenShare(
          static_cast<int64_t>(tokens[e]), count[e], replica[p]));
    }
    sum += RankImbalance(loads);
  }
  return sum / steps;
}

StatusOr<ImbalanceReport> ComputeImbalance(const Placement& placement,
                                           const LoadMatrix& load) {
  if (placement.num_layers() != load.num_layers() ||
      placement.num_experts() != load.num_experts()) {
    return InvalidArgumentError(
        "load has " + std::to_string(load.num_layers()) + " layers x " +
        std::to_string(load.num_experts()) + " experts but the map has " +
        std::to_string(placement.num_layers()) + " layers x " +
        std::to_string(placement.num_experts()) + " experts");
  }
  ImbalanceReport report;
  report.per_layer.reserve(placement.num_layers());
  double sum = 0.0;
  double sum_balancedness = 0.0;
  double peak = 0.0;
  for (int l = 0; l < placement.num_layers(); ++l) {
    const double x =
        LayerImbalance(placement.layer(l), load.row(l), placement.num_ranks(),
                       placement.slots_per_rank());
    report.per_layer.push_back(x);
    sum += x;
    sum_balancedness += 1.0 / x;
    peak = std::max(peak, x);
  }
  if (placement.num_layers() > 0) {
    const double n = placement.num_layers();
    report.mean = sum / n;
    report.max = peak;
    report.balancedness_mean = sum_balancedness / n;
    report.excess_mean = report.mean - 1.0;
  }
  return report;
}

}  // namespace eplb
