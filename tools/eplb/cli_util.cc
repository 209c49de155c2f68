#include "cli_util.h"

#include <cstdio>
#include <iostream>

#include "eplb/io.h"

namespace eplb::cli {

int Fail(const Status& status) { return Fail(status.message()); }

int Fail(const std::string& message) {
  std::fprintf(stderr, "eplb: %s\n", message.c_str());
  return kExitFailure;
}

void PrintJson(const nlohmann::json& j) { std::cout << j.dump() << std::endl; }

void TopologyFlags::Register(CLI::App* cmd, bool require) {
  CLI::Option* r =
      cmd->add_option("--ranks", ranks, "Ranks (devices) of the EP group")
          ->check(CLI::PositiveNumber);
  if (require) r->required();
  CLI::Option* k = cmd->add_option("--slots-per-rank", slots_per_rank,
                                   "Expert slots on every rank (K)")
                       ->check(CLI::PositiveNumber);
  CLI::Option* n =
      cmd->add_option("--redundant", redundant,
                      "Redundant experts N = R*K - E (alternative to "
                      "--slots-per-rank)")
          ->check(CLI::NonNegativeNumber);
  k->excludes(n);
  cmd->add_option("--ranks-per-node", ranks_per_node,
                  "Ranks per node (default: all ranks on one node)")
      ->check(CLI::PositiveNumber);
}

StatusOr<Topology> TopologyFlags::Make(int num_experts) const {
  if (slots_per_rank > 0) {
    return MakeTopology(num_experts, ranks, slots_per_rank, ranks_per_node);
  }
  if (redundant >= 0) {
    return MakeTopologyFromRedundant(num_experts, ranks, redundant,
                                     ranks_per_node);
  }
  return InvalidArgumentError(
      "one of --slots-per-rank and --redundant is required");
}

StatusOr<Placement> MapOrInitial(const std::string& path, int num_layers,
                                 int num_experts, const Topology& topology) {
  if (path.empty())
    return Placement::Initial(num_layers, num_experts, topology);
  return ReadExpertMapJson(
      path, MapExpectations{.num_layers = num_layers,
                            .num_ranks = topology.num_ranks,
                            .num_experts = num_experts,
                            .slots_per_rank = topology.slots_per_rank});
}

}  // namespace eplb::cli
