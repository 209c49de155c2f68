#include "cli_util.h"

#include <charconv>
#include <cstdio>
#include <iostream>
#include <limits>

#include "eplb/io.h"
#include "eplb/limits.h"

namespace eplb::cli {

CLI::Validator IntRange(int64_t min, int64_t max) {
  const std::string range =
      "[" + std::to_string(min) + ", " + std::to_string(max) + "]";
  return CLI::Validator(
      [min, max, range](std::string& text) -> std::string {
        int64_t value = 0;
        const char* end = text.data() + text.size();
        const auto [ptr, ec] = std::from_chars(text.data(), end, value);
        if (ec == std::errc() && ptr == end && value >= min && value <= max) {
          return {};
        }
        std::string shown = text.substr(0, 40);
        if (text.size() > 40) shown += "...";
        return shown + " is not an integer in " + range;
      },
      range);
}

CLI::Validator IntAtLeast(int64_t min) {
  return IntRange(min, std::numeric_limits<int>::max());
}

CLI::Validator FractionInUnitInterval() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        double v = 0;
        const char* end = text.data() + text.size();
        const auto [ptr, ec] = std::from_chars(text.data(), end, v);
        if (ec == std::errc() && ptr == end && v > 0 && v <= 1) return {};
        return text.substr(0, 40) + " is not a number in (0, 1]";
      },
      "(0, 1]");
}

int Fail(const Status& status) { return Fail(status.message()); }

int Fail(const std::string& message) {
  std::fprintf(stderr, "eplb: %s\n", message.c_str());
  return kExitFailure;
}

void PrintJson(const nlohmann::json& j) { std::cout << j.dump() << std::endl; }

void TopologyFlags::Register(CLI::App* cmd, bool require) {
  CLI::Option* r =
      cmd->add_option("--ranks", ranks, "Ranks (devices) of the EP group")
          ->check(IntRange(1, kMaxRanks));
  if (require) r->required();
  CLI::Option* k = cmd->add_option("--slots-per-rank", slots_per_rank,
                                   "Expert slots on every rank (K)")
                       ->check(IntRange(1, kMaxExperts));
  CLI::Option* n =
      cmd->add_option("--redundant", redundant,
                      "Redundant experts N = R*K - E (alternative to "
                      "--slots-per-rank)")
          ->check(IntRange(0, kMaxSlots));
  k->excludes(n);
  cmd->add_option("--ranks-per-node", ranks_per_node,
                  "Ranks per node (default: all ranks on one node)")
      ->check(IntRange(1, kMaxRanks));
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
  const int64_t cells = int64_t{num_layers} * topology.num_slots();
  if (cells > kMaxMapCells) {
    return InvalidArgumentError(std::to_string(num_layers) + " layers x " +
                                std::to_string(topology.num_slots()) +
                                " slots = " + std::to_string(cells) +
                                " map cells exceeds the limit of " +
                                std::to_string(kMaxMapCells));
  }
  if (path.empty())
    return Placement::Initial(num_layers, num_experts, topology);
  return ReadExpertMapJson(
      path, MapExpectations{.num_layers = num_layers,
                            .num_ranks = topology.num_ranks,
                            .num_experts = num_experts,
                            .slots_per_rank = topology.slots_per_rank});
}

}  // namespace eplb::cli
