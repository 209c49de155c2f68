#include "eplb/dispatch.h"

#include <algorithm>
#include <string>

#include "eplb/load.h"

namespace eplb {

std::string_view DispatchModeName(DispatchMode mode) {
  return mode == DispatchMode::kBalanced ? "balanced" : "rr";
}

StatusOr<DispatchMode> ParseDispatchMode(std::string_view name) {
  if (name == "rr" || name == "round-robin") return DispatchMode::kRoundRobin;
  if (name == "balanced") return DispatchMode::kBalanced;
  return InvalidArgumentError("dispatch '" + std::string(name) +
                              "': must be rr or balanced");
}

void RoundRobinQuotas(std::span<const int32_t> layer,
                      std::span<const int64_t> counts,
                      std::span<int64_t> slot_quota) {
  // Replica j of an expert is its j-th slot in ascending physical id.
  std::vector<int32_t> seen(counts.size(), 0);
  std::vector<int32_t> total(counts.size(), 0);
  for (int32_t e : layer) ++total[e];
  for (size_t p = 0; p < layer.size(); ++p) {
    const int32_t e = layer[p];
    slot_quota[p] = WholeTokenShare(counts[e], total[e], seen[e]++);
  }
}

}  // namespace eplb
