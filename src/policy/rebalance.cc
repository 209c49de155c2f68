#include "eplb/rebalance.h"

#include <string>

#include "eplb/placement.h"
#include "eplb/topology.h"

namespace eplb {

StatusOr<RebalanceResult> RebalanceExperts(const RebalanceRequest& r) {
  if (r.weight == nullptr || r.weight->num_layers() < 1 ||
      r.weight->num_experts() < 1) {
    return InvalidArgumentError(
        "weight: must be [layers, experts] with at least one of each");
  }
  const int num_layers = r.weight->num_layers();
  const int num_experts = r.weight->num_experts();
  auto bad = [](const std::string& what, int64_t value,
                const std::string& why) {
    return InvalidArgumentError(what + " = " + std::to_string(value) + ": " +
                                why);
  };
  if (r.num_gpus < 1) return bad("num_gpus", r.num_gpus, "must be >= 1");
  if (r.num_replicas < num_experts) {
    return bad("num_replicas", r.num_replicas,
               "must be >= the number of experts (" +
                   std::to_string(num_experts) + ")");
  }
  if (r.num_replicas % r.num_gpus != 0) {
    return bad(
        "num_replicas", r.num_replicas,
        "must be a multiple of num_gpus (" + std::to_string(r.num_gpus) + ")");
  }
  if (r.num_nodes < 1 || r.num_gpus % r.num_nodes != 0) {
    return bad("num_nodes", r.num_nodes,
               "must be >= 1 and divide num_gpus (" +
                   std::to_string(r.num_gpus) + ")");
  }
  if (r.num_groups < 1) return bad("num_groups", r.num_groups, "must be >= 1");
  EPLB_RETURN_IF_ERROR(ValidateLoad(*r.weight).WithPrefix("weight"));
  EPLB_ASSIGN_OR_RETURN(
      Topology topology,
      MakeTopology(num_experts, r.num_gpus, r.num_replicas / r.num_gpus,
                   r.num_gpus / r.num_nodes));
  Placement current;
  if (r.current.empty()) {
    current = Placement::Initial(num_layers, num_experts, topology);
  } else {
    const size_t want = static_cast<size_t>(num_layers) * r.num_replicas;
    if (r.current.size() != want) {
      return InvalidArgumentError(
          "current: has " + std::to_string(r.current.size()) +
          " entries, must be [layers, num_replicas] = " + std::to_string(want));
    }
    current = Placement(num_layers, topology.num_ranks, topology.slots_per_rank,
                        num_experts);
    for (int l = 0; l < num_layers; ++l) {
      std::span<int32_t> row = current.mutable_layer(l);
      for (int p = 0; p < r.num_replicas; ++p) {
        const int64_t e = r.current[static_cast<size_t>(l) * r.num_replicas +
                                    static_cast<size_t>(p)];
        if (e < 0 || e >= num_experts) {
          return InvalidArgumentError(
              "current[" + std::to_string(l) + "][" + std::to_string(p) +
              "] = " + std::to_string(e) + ": not an expert id in [0, " +
              std::to_string(num_experts) + ")");
        }
        row[static_cast<size_t>(p)] = static_cast<int32_t>(e);
      }
    }
    EPLB_RETURN_IF_ERROR(
        ViolationsToStatus(CheckPlacement(current)).WithPrefix("current"));
  }
  EPLB_ASSIGN_OR_RETURN(std::unique_ptr<Policy> policy, CreatePolicy(r.policy));
  PolicyOptions options = r.options;
  options.num_groups = r.num_groups;
  PolicyInput input;
  input.current = &current;
  input.load = r.weight;
  input.topology = topology;
  RebalanceResult out;
  EPLB_ASSIGN_OR_RETURN(out.plan, policy->Rebalance(input, options));
  out.num_layers = num_layers;
  out.num_replicas = r.num_replicas;
  out.num_experts = num_experts;
  out.max_replicas = r.num_replicas - num_experts + 1;
  const Placement& p = out.plan.placement;
  out.phy2log.resize(static_cast<size_t>(num_layers) * r.num_replicas);
  out.log2phy.assign(
      static_cast<size_t>(num_layers) * num_experts * out.max_replicas, -1);
  out.logcnt.assign(static_cast<size_t>(num_layers) * num_experts, 0);
  for (int l = 0; l < num_layers; ++l) {
    std::span<const int32_t> row = p.layer(l);
    for (int phy = 0; phy < r.num_replicas; ++phy) {
      const int32_t e = row[static_cast<size_t>(phy)];
      out.phy2log[static_cast<size_t>(l) * r.num_replicas + phy] = e;
      const size_t le = static_cast<size_t>(l) * num_experts + e;
      out.log2phy[le * out.max_replicas +
                  static_cast<size_t>(out.logcnt[le]++)] = phy;
    }
  }
  return out;
}

}  // namespace eplb
