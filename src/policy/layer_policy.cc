#include "policy/layer_policy.h"

#include <algorithm>
#include <numeric>
#include <string>

#include "policy/algorithms.h"

namespace eplb::policy {

Status ValidatePolicyInput(const PolicyInput& input) {
  if (input.current == nullptr || input.load == nullptr) {
    return InvalidArgumentError(
        "policy input needs a current placement and a load");
  }
  const Placement& cur = *input.current;
  const LoadMatrix& load = *input.load;
  const Topology& t = input.topology;
  if (cur.num_ranks() != t.num_ranks ||
      cur.slots_per_rank() != t.slots_per_rank) {
    return InvalidArgumentError(
        "current map has " + std::to_string(cur.num_ranks()) + " ranks x " +
        std::to_string(cur.slots_per_rank()) + " slots but the topology has " +
        std::to_string(t.num_ranks) + " ranks x " +
        std::to_string(t.slots_per_rank) + " slots");
  }
  if (t.ranks_per_node < 1 || t.num_ranks % t.ranks_per_node != 0) {
    return InvalidArgumentError(
        "ranks_per_node = " + std::to_string(t.ranks_per_node) +
        ": must divide ranks = " + std::to_string(t.num_ranks));
  }
  if (load.num_layers() != cur.num_layers() ||
      load.num_experts() != cur.num_experts()) {
    return InvalidArgumentError(
        "load has " + std::to_string(load.num_layers()) + " layers x " +
        std::to_string(load.num_experts()) +
        " experts but the current map has " + std::to_string(cur.num_layers()) +
        " layers x " + std::to_string(cur.num_experts()) + " experts");
  }
  if (cur.slots_per_rank() > cur.num_experts()) {
    return InvalidArgumentError(
        "slots_per_rank = " + std::to_string(cur.slots_per_rank()) +
        " > experts = " + std::to_string(cur.num_experts()) +
        ": more redundant slots than can be used without duplicates on a rank");
  }
  EPLB_RETURN_IF_ERROR(ValidateLoad(load));
  if (input.samples != nullptr) {
    const LoadTrace& s = *input.samples;
    if (s.num_layers() != cur.num_layers() ||
        s.num_experts() != cur.num_experts()) {
      return InvalidArgumentError(
          "samples have " + std::to_string(s.num_layers()) + " layers x " +
          std::to_string(s.num_experts()) +
          " experts but the current map has " +
          std::to_string(cur.num_layers()) + " layers x " +
          std::to_string(cur.num_experts()) + " experts");
    }
    EPLB_RETURN_IF_ERROR(ValidateLoad(s));
  }
  Status valid = ViolationsToStatus(CheckPlacement(cur));
  if (!valid.ok()) return valid.WithPrefix("current map");
  return Status::Ok();
}

Status LayerPolicy::Begin(const PolicyInput&, const PolicyOptions&,
                          std::vector<std::string>*) {
  return Status::Ok();
}

namespace {

// Moves of a layer change, split by whether a current holder of the expert
// shares the receiving rank's node.
void CountMoves(std::span<const int32_t> cur, std::span<const int32_t> plan,
                const Topology& t, int num_experts, LayerPlan* out) {
  const int k = t.slots_per_rank;
  std::vector<char> on_rank(static_cast<size_t>(t.num_ranks) * num_experts, 0);
  std::vector<char> on_node(static_cast<size_t>(t.num_nodes()) * num_experts,
                            0);
  for (int phy = 0; phy < t.num_slots(); ++phy) {
    on_rank[static_cast<size_t>(phy / k) * num_experts + cur[phy]] = 1;
    on_node[static_cast<size_t>(t.NodeOf(phy / k)) * num_experts + cur[phy]] =
        1;
  }
  for (int phy = 0; phy < t.num_slots(); ++phy) {
    const int r = phy / k;
    const int32_t e = plan[phy];
    if (on_rank[static_cast<size_t>(r) * num_experts + e]) continue;
    ++out->moved_experts;
    if (on_node[static_cast<size_t>(t.NodeOf(r)) * num_experts + e]) {
      ++out->intra_node_moves;
    } else {
      ++out->inter_node_moves;
    }
  }
}

}  // namespace

StatusOr<Plan> LayerPolicy::Rebalance(const PolicyInput& input,
                                      const PolicyOptions& options) {
  EPLB_RETURN_IF_ERROR(ValidatePolicyInput(input));
  const Placement& cur = *input.current;
  const Topology& t = input.topology;
  const int r = t.num_ranks;
  const int k = t.slots_per_rank;
  const int e = cur.num_experts();
  Plan plan{cur, std::vector<LayerPlan>(cur.num_layers()), {}};
  EPLB_RETURN_IF_ERROR(Begin(input, options, &plan.notes));
  const int max_receives = options.max_receives_per_rank;
  Placement one_cur(1, r, k, e);
  Placement one_plan(1, r, k, e);
  for (int l = 0; l < cur.num_layers(); ++l) {
    std::span<const double> load = input.load->row(l);
    LayerPlan& info = plan.layers[l];
    info.current_imbalance = LayerImbalance(cur.layer(l), load, r, k);
    info.predicted_imbalance = info.current_imbalance;
    info.lower_bound = ImbalanceLowerBound(load, r, k);
    if (std::all_of(load.begin(), load.end(),
                    [](double v) { return v == 0.0; })) {
      continue;  // No load: keep the layer.
    }
    LayerContext ctx{l,  e,        cur.layer(l),          load, input.samples,
                     &t, &options, info.current_imbalance};
    std::vector<int32_t> planned = PlanLayer(ctx);
    if (planned.empty()) continue;
    if (static_cast<int>(planned.size()) != r * k) {
      plan.notes.push_back(
          "layer " + std::to_string(l) + ": policy " + std::string(name()) +
          " returned a layer of the wrong size; kept the current layer");
      continue;
    }
    KeepSlots(cur.layer(l), planned, r, k);
    std::copy(cur.layer(l).begin(), cur.layer(l).end(),
              one_cur.mutable_layer(0).begin());
    std::copy(planned.begin(), planned.end(),
              one_plan.mutable_layer(0).begin());
    std::vector<Violation> bad = CheckPlan(one_cur, one_plan, max_receives);
    if (!bad.empty()) {
      bad[0].layer = l;
      plan.notes.push_back("layer " + std::to_string(l) +
                           ": rejected plan of policy " + std::string(name()) +
                           " (" + bad[0].ToString() +
                           "); kept the current layer");
      continue;
    }
    if (std::equal(planned.begin(), planned.end(), cur.layer(l).begin()))
      continue;
    std::copy(planned.begin(), planned.end(),
              plan.placement.mutable_layer(l).begin());
    info.changed = true;
    info.predicted_imbalance = LayerImbalance(planned, load, r, k);
    CountMoves(cur.layer(l), planned, t, e, &info);
  }
  return plan;
}

}  // namespace eplb::policy
