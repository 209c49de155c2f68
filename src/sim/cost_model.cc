#include "eplb/sim/cost_model.h"

#include <algorithm>
#include <cctype>

namespace eplb {

const std::vector<HardwareProfile>& HardwareProfiles() {
  // Peak dense tensor throughput and link bandwidth are vendors' public
  // figures (rounded); efficiency and the per-layer times are the model's
  // assumptions, the same for every profile so profiles compare fairly
  // (docs/cost_model.md).
  static const auto* const profiles = new std::vector<HardwareProfile>{
      {"a2", 313, 0.4, 56, 60, 120},    // Ascend 910B (Atlas A2), HCCS link.
      {"a3", 752, 0.4, 196, 60, 60},    // Ascend 910C (Atlas A3), UB link.
      {"h100", 989, 0.4, 450, 40, 50},  // H100 SXM, NVLink 4 (one direction).
  };
  return *profiles;
}

StatusOr<HardwareProfile> FindHardwareProfile(std::string_view name) {
  std::string key(name);
  for (char& c : key)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  std::string valid;
  for (const HardwareProfile& p : HardwareProfiles()) {
    if (p.name == key) return p;
    valid += (valid.empty() ? "" : ", ") + p.name;
  }
  return NotFoundError("unknown hardware '" + std::string(name) +
                       "' (valid: " + valid + ")");
}

double ExpertSeconds(const HardwareProfile& hw, const ModelSpec& model,
                     double assignments) {
  const double flops = 6.0 * static_cast<double>(model.hidden_size) *
                       static_cast<double>(model.expert_ffn_size) * assignments;
  return flops / (hw.peak_tflops * 1e12 * hw.moe_efficiency);
}

double MoeLayerSeconds(const HardwareProfile& hw, const ModelSpec& model,
                       std::span<const double> rank_assignments,
                       double* utilization) {
  double peak = 0, total = 0;
  for (double a : rank_assignments) {
    peak = std::max(peak, a);
    total += a;
  }
  if (utilization != nullptr) {
    *utilization =
        peak > 0 ? total / static_cast<double>(rank_assignments.size()) / peak
                 : 1.0;
  }
  return ExpertSeconds(hw, model, peak) + hw.layer_overhead_us * 1e-6;
}

double TransferSeconds(const HardwareProfile& hw, double bytes) {
  return bytes / (hw.link_gbytes_per_s * 1e9);
}

}  // namespace eplb
