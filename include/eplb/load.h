// Expert load (heat): per-layer aggregates and per-step traces, and the
// imbalance measures: max/mean rank load (primary; 1 is perfect balance),
// mean/max (vLLM's "balancedness") and (max - mean) / mean (the excess).
//
// Value types and pure functions: thread-compatible.
#ifndef EPLB_LOAD_H_
#define EPLB_LOAD_H_

#include <cstdint>
#include <span>
#include <vector>

#include "eplb/placement.h"
#include "eplb/status.h"

namespace eplb {

// Tokens routed to each logical expert: [num_layers][num_experts].
class LoadMatrix {
 public:
  LoadMatrix() = default;
  LoadMatrix(int num_layers, int num_experts)
      : num_layers_(num_layers),
        num_experts_(num_experts),
        data_(static_cast<size_t>(num_layers) * num_experts, 0.0) {}

  int num_layers() const { return num_layers_; }
  int num_experts() const { return num_experts_; }
  double at(int layer, int expert) const { return data_[Index(layer, expert)]; }
  double& at(int layer, int expert) { return data_[Index(layer, expert)]; }
  std::span<const double> row(int layer) const {
    return {data_.data() + Index(layer, 0), static_cast<size_t>(num_experts_)};
  }
  std::span<double> mutable_row(int layer) {
    return {data_.data() + Index(layer, 0), static_cast<size_t>(num_experts_)};
  }
  const std::vector<double>& data() const { return data_; }

  friend bool operator==(const LoadMatrix&, const LoadMatrix&) = default;

 private:
  size_t Index(int layer, int expert) const {
    return static_cast<size_t>(layer) * num_experts_ + expert;
  }
  int num_layers_ = 0;
  int num_experts_ = 0;
  std::vector<double> data_;
};

// Per-step loads: [num_steps][num_layers][num_experts]. A trace of one step
// is an aggregate.
class LoadTrace {
 public:
  LoadTrace() = default;
  LoadTrace(int num_steps, int num_layers, int num_experts)
      : num_steps_(num_steps),
        num_layers_(num_layers),
        num_experts_(num_experts),
        data_(static_cast<size_t>(num_steps) * num_layers * num_experts, 0.0) {}

  int num_steps() const { return num_steps_; }
  int num_layers() const { return num_layers_; }
  int num_experts() const { return num_experts_; }
  double at(int step, int layer, int expert) const {
    return data_[Index(step, layer, expert)];
  }
  double& at(int step, int layer, int expert) {
    return data_[Index(step, layer, expert)];
  }
  // [E] loads of one step and layer.
  std::span<const double> row(int step, int layer) const {
    return {data_.data() + Index(step, layer, 0),
            static_cast<size_t>(num_experts_)};
  }
  const std::vector<double>& data() const { return data_; }
  // [steps][layers][experts], row-major, as data().
  std::span<double> mutable_data() { return data_; }

  // Sum over steps [begin, end) (clamped to the trace).
  LoadMatrix Aggregate(int begin_step, int end_step) const;
  LoadMatrix Aggregate() const { return Aggregate(0, num_steps_); }

  friend bool operator==(const LoadTrace&, const LoadTrace&) = default;

 private:
  size_t Index(int step, int layer, int expert) const {
    return (static_cast<size_t>(step) * num_layers_ + layer) * num_experts_ +
           expert;
  }
  int num_steps_ = 0;
  int num_layers_ = 0;
  int num_experts_ = 0;
  std::vector<double> data_;
};

// Wraps an aggregate as a one-step trace.
LoadTrace TraceFromAggregate(const LoadMatrix& load);

// Checks every value is finite and >= 0; InvalidArgument names the first
// bad (step,) layer and expert.
Status ValidateLoad(const LoadMatrix& load);
Status ValidateLoad(const LoadTrace& trace);

// The default dispatch: an expert's n tokens go round robin over
// its c replicas in physical-id order, so replica j (0-based) receives
// n / c tokens, plus one when j < n % c.
constexpr int64_t WholeTokenShare(int64_t n, int64_t c, int64_t j) {
  return n / c + (j < n % c ? 1 : 0);
}
// Whether a load value is a token count the default dispatch can split: a
// whole number in [0, 2^31).
constexpr bool IsTokenCount(double v) {
  return v >= 0.0 && v < 2147483648.0 &&
         static_cast<double>(static_cast<int32_t>(v)) == v;
}

// Load of each rank of one layer `[R*K]` (planning measure): rank load sums
// load[e] / replica_count[e] over its slots. Returns [R].
std::vector<double> RankLoads(std::span<const int32_t> layer,
                              std::span<const double> expert_load,
                              int num_ranks, int slots_per_rank);

// The imbalance measure, everywhere in eplb: the busiest rank's load over
// the mean rank load (max / mean), 1.0 when there is no load.
double RankImbalance(std::span<const double> rank_loads);

// max rank load / mean rank load of one layer; 1.0 when the layer has no load.
double LayerImbalance(std::span<const int32_t> layer,
                      std::span<const double> expert_load, int num_ranks,
                      int slots_per_rank);

// Imbalance of every layer of a placement under a load, in the three
// measures above. max/mean is primary.
struct ImbalanceReport {
  std::vector<double> per_layer;   // max/mean per layer.
  double mean = 1.0;               // Mean over layers of max/mean.
  double max = 1.0;                // Worst layer's max/mean.
  double balancedness_mean = 1.0;  // Mean over layers of mean/max.
  double excess_mean = 0.0;        // Mean over layers of (max - mean) / mean.
};

// Precondition: placement and load agree on layers and experts (InvalidArgument
// otherwise, naming both).
StatusOr<ImbalanceReport> ComputeImbalance(const Placement& placement,
                                           const LoadMatrix& load);

// The balance one layer meets step by step: the mean over the steps of
// `samples` of each step's max / mean rank load (a step without load counts
// 1); 1.0 without steps. When the layer's samples are whole numbers (token
// counts, below 2^31), each expert's tokens are split as the default
// dispatch does (whole tokens, round robin over its replicas in
// slot order); otherwise evenly, as LayerImbalance. What Swift and FlashLB
// plan for when they are given per-step samples. Precondition: shapes agree.
double StepImbalance(const Placement& placement, int layer,
                     const LoadTrace& samples);

}  // namespace eplb

#endif  // EPLB_LOAD_H_
