// A documented serving-cost model (docs/cost_model.md): how long a forward
// step takes when every MoE layer waits for its most loaded rank. Used by the
// replay to turn realized rank loads into simulated TTFT, TPOT and device
// utilisation. Pure functions: thread-safe.
#ifndef EPLB_COST_MODEL_H_
#define EPLB_COST_MODEL_H_

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "eplb/model.h"
#include "eplb/status.h"

namespace eplb {

// Public peak figures of an accelerator, and the model's two fitted knobs.
struct HardwareProfile {
  std::string name;
  double peak_tflops = 0;  // Dense BF16/FP16 tensor throughput.
  double moe_efficiency =
      0;  // Fraction of peak a grouped expert matmul reaches.
  double link_gbytes_per_s = 0;  // Device-to-device bandwidth (one direction).
  double layer_overhead_us =
      0;  // Dispatch + combine (all-to-all) per MoE layer.
  double dense_us_per_layer =
      0;  // Attention and dense parts, per layer per step.
};

// "a2" (Ascend 910B), "a3" (Ascend 910C), "h100"; NotFound lists them.
StatusOr<HardwareProfile> FindHardwareProfile(std::string_view name);
const std::vector<HardwareProfile>& HardwareProfiles();

// Seconds one rank spends on `assignments` token-expert pairs of one layer:
// 6 * H * I flops each (gate, up, down) at peak * efficiency.
double ExpertSeconds(const HardwareProfile& hw, const ModelSpec& model,
                     double assignments);

// One MoE layer: the slowest rank plus the layer overhead. `rank_assignments`
// [R]. Also returns the layer's utilisation (mean rank time / max rank
// time; 1 when idle) through `utilization` when non-null.
double MoeLayerSeconds(const HardwareProfile& hw, const ModelSpec& model,
                       std::span<const double> rank_assignments,
                       double* utilization = nullptr);

// Seconds to move `bytes` over one link (stop-the-world migration).
double TransferSeconds(const HardwareProfile& hw, double bytes);

}  // namespace eplb

#endif  // EPLB_COST_MODEL_H_
