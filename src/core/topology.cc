#include "eplb/topology.h"

#include <string>

#include "eplb/limits.h"

namespace eplb {

StatusOr<Topology> MakeTopology(int num_experts, int num_ranks,
                                int slots_per_rank, int ranks_per_node) {
  if (num_experts < 1) {
    return InvalidArgumentError("experts = " + std::to_string(num_experts) +
                                ": must be >= 1");
  }
  if (num_ranks < 1) {
    return InvalidArgumentError("ranks = " + std::to_string(num_ranks) +
                                ": must be >= 1");
  }
  if (slots_per_rank < 1) {
    return InvalidArgumentError(
        "slots_per_rank = " + std::to_string(slots_per_rank) +
        ": must be >= 1");
  }
  if (num_ranks > kMaxRanks) {
    return InvalidArgumentError("ranks = " + std::to_string(num_ranks) +
                                ": exceeds the limit of " +
                                std::to_string(kMaxRanks) + " ranks");
  }
  if (num_experts > kMaxExperts) {
    return InvalidArgumentError("experts = " + std::to_string(num_experts) +
                                ": exceeds the limit of " +
                                std::to_string(kMaxExperts) + " experts");
  }
  if (ranks_per_node == 0) ranks_per_node = num_ranks;
  if (ranks_per_node < 1 || num_ranks % ranks_per_node != 0) {
    return InvalidArgumentError(
        "ranks_per_node = " + std::to_string(ranks_per_node) +
        ": must divide ranks = " + std::to_string(num_ranks));
  }
  const int64_t slots = static_cast<int64_t>(num_ranks) * slots_per_rank;
  if (slots < num_experts) {
    return InvalidArgumentError(
        "ranks * slots_per_rank = " + std::to_string(num_ranks) + " * " +
        std::to_string(slots_per_rank) + " = " + std::to_string(slots) +
        " < experts = " + std::to_string(num_experts) +
        ": every expert needs a slot");
  }
  if (slots_per_rank > num_experts) {
    return InvalidArgumentError(
        "slots_per_rank = " + std::to_string(slots_per_rank) +
        " > experts = " + std::to_string(num_experts) +
        ": a rank would have to hold an expert twice");
  }
  if (slots > kMaxSlots) {
    return InvalidArgumentError(
        "ranks * slots_per_rank = " + std::to_string(slots) +
        ": exceeds the limit of " + std::to_string(kMaxSlots) +
        " slots per layer");
  }
  return Topology{.num_ranks = num_ranks,
                  .ranks_per_node = ranks_per_node,
                  .slots_per_rank = slots_per_rank};
}

StatusOr<Topology> MakeTopologyFromRedundant(int num_experts, int num_ranks,
                                             int num_redundant,
                                             int ranks_per_node) {
  if (num_redundant < 0) {
    return InvalidArgumentError("redundant = " + std::to_string(num_redundant) +
                                ": must be >= 0");
  }
  if (num_ranks < 1) {
    return InvalidArgumentError("ranks = " + std::to_string(num_ranks) +
                                ": must be >= 1");
  }
  const int64_t slots = static_cast<int64_t>(num_experts) + num_redundant;
  if (slots > kMaxSlots) {
    return InvalidArgumentError("redundant = " + std::to_string(num_redundant) +
                                ": experts + " +
                                "redundant = " + std::to_string(slots) +
                                " slots exceeds the limit of " +
                                std::to_string(kMaxSlots) + " slots per layer");
  }
  if (slots % num_ranks != 0) {
    return InvalidArgumentError(
        "(experts + redundant) % ranks = (" + std::to_string(num_experts) +
        " + " + std::to_string(num_redundant) + ") % " +
        std::to_string(num_ranks) + " = " + std::to_string(slots % num_ranks) +
        ": must be 0 (every rank has the same number of slots)");
  }
  return MakeTopology(num_experts, num_ranks,
                      static_cast<int>(slots / num_ranks), ranks_per_node);
}

}  // namespace eplb
