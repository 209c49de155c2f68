// LayerPolicy: the shared frame of every policy. It validates the inputs,
// plans each layer through the subclass, applies slot keeping (invariant 4),
// checks every planned layer against spec §3.4 and keeps the current layer
// (with a note) when a check fails, and fills the per-layer report. Private
// to the library.
#ifndef EPLB_SRC_POLICY_LAYER_POLICY_H_
#define EPLB_SRC_POLICY_LAYER_POLICY_H_

#include <span>
#include <string>
#include <vector>

#include "eplb/policy.h"

namespace eplb::policy {

// What a policy sees of one layer.
struct LayerContext {
  int layer = 0;
  int num_experts = 0;
  std::span<const int32_t> current;  // [R*K]
  std::span<const double> load;      // [E]
  const LoadTrace* samples = nullptr;
  const Topology* topology = nullptr;
  const PolicyOptions* options = nullptr;
  double current_imbalance = 1.0;  // Of `current` under `load`.
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
  // vector to keep the current layer. Not called for all-zero layers.
  virtual std::vector<int32_t> PlanLayer(const LayerContext& ctx) = 0;
};

// Checks the shapes and values of a PolicyInput (shared with non-layer
// policies).
Status ValidatePolicyInput(const PolicyInput& input);

}  // namespace eplb::policy

#endif  // EPLB_SRC_POLICY_LAYER_POLICY_H_
