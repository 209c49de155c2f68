// DeepSeek's and vLLM's entry point, on eplb's policies:
//   rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus)
//     -> (phy2log, log2phy, logcnt)
// with their shapes and meaning, for engines (and the Python module) that
// call a balancer by that signature.
#ifndef EPLB_REBALANCE_H_
#define EPLB_REBALANCE_H_

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "eplb/load.h"
#include "eplb/policy.h"
#include "eplb/status.h"

namespace eplb {

struct RebalanceRequest {
  const LoadMatrix* weight = nullptr;  // [L][E] load per logical expert.
  int num_replicas = 0;                // Physical experts: a multiple of
                                       // num_gpus, >= E.
  int num_groups = 1;                  // Expert groups (group-limited
                                       // routing); see PolicyOptions.
  int num_nodes = 1;                   // Dividing num_gpus.
  int num_gpus = 0;                    // Ranks.
  // The policy by name or number ("default", "swift", "flashlb", "best",
  // "random", 0-3).
  std::string_view policy = "default";
  // The placement serving now, phy2log [L][num_replicas]; empty: the
  // default initial placement. The incremental policies (swift, flashlb)
  // move as little as they can from it.
  std::span<const int64_t> current;
  PolicyOptions options;  // num_groups is taken from above.
};

struct RebalanceResult {
  int num_layers = 0;
  int num_replicas = 0;  // Physical experts per layer.
  int num_experts = 0;   // Logical experts per layer.
  int max_replicas = 0;  // log2phy's last dimension: num_replicas - E + 1.
  // [L][num_replicas]: the logical expert of each physical one (physical
  // p = rank * (num_replicas / num_gpus) + slot).
  std::vector<int64_t> phy2log;
  // [L][E][max_replicas]: each expert's physical ids, ascending, -1 padded.
  std::vector<int64_t> log2phy;
  std::vector<int64_t> logcnt;  // [L][E]: replicas of each expert.
  Plan plan;                    // The policy's report.
};

// Plans with the named policy. InvalidArgument names the argument and its
// value (shapes, divisibility, a `current` that is not a valid placement,
// negative or non-finite loads); NotFound for an unknown policy.
// Unlike DeepSeek's reference, no two replicas of an expert share a rank.
StatusOr<RebalanceResult> RebalanceExperts(const RebalanceRequest& request);

}  // namespace eplb

#endif  // EPLB_REBALANCE_H_
