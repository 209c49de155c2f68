// Topology of the expert-parallel group: ranks, nodes and slots.
//
// Value type; thread-safe to read.
#ifndef EPLB_TOPOLOGY_H_
#define EPLB_TOPOLOGY_H_

#include "eplb/status.h"

namespace eplb {

struct Topology {
  int num_ranks = 0;       // R: devices of the EP group.
  int ranks_per_node = 0;  // Ranks sharing a node; R when there is one node.
  int slots_per_rank = 0;  // K: expert slots on every rank.

  int num_slots() const { return num_ranks * slots_per_rank; }  // R*K.
  int num_nodes() const { return num_ranks / ranks_per_node; }
  int NodeOf(int rank) const { return rank / ranks_per_node; }
  // N = R*K - E: slots left for replicas of hot experts.
  int NumRedundant(int num_experts) const { return num_slots() - num_experts; }

  friend bool operator==(const Topology&, const Topology&) = default;
};

// Builds and checks a topology for `num_experts` experts: R >= 1, K >= 1,
// R*K >= E (every expert fits), K <= E (a rank never needs a duplicate), and
// ranks_per_node dividing R (0 means one node). InvalidArgument shows the
// arithmetic that failed.
StatusOr<Topology> MakeTopology(int num_experts, int num_ranks,
                                int slots_per_rank, int ranks_per_node = 0);

// Same, from N redundant experts: requires (E + N) % R == 0.
StatusOr<Topology> MakeTopologyFromRedundant(int num_experts, int num_ranks,
                                             int num_redundant,
                                             int ranks_per_node = 0);

}  // namespace eplb

#endif  // EPLB_TOPOLOGY_H_
