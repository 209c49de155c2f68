// DeepSeek's open-source EPLB algorithm as pure functions on one
// layer, with the project's one fix: packing never puts a second replica of
// an expert on a rank that already holds one. Private to the library.
#ifndef EPLB_SRC_POLICY_DEFAULT_EPLB_H_
#define EPLB_SRC_POLICY_DEFAULT_EPLB_H_

#include <cstdint>
#include <span>
#include <vector>

namespace eplb::policy {

// Result of balanced_packing: the pack of every item and its place in it.
struct Packing {
  std::vector<int32_t> pack;          // [n]
  std::vector<int32_t> rank_in_pack;  // [n]
};

// Items sorted by weight descending (stable: lower index first on ties) go to
// the lightest pack with room (n / num_packs items each; lowest pack on
// ties). When `keys` is non-empty, a pack that already holds an item of the
// same key is skipped while another pack with room exists.
// Precondition: n % num_packs == 0. O(n log n + n * c * log num_packs), c
// the packs an item clashes with (a heap of packs).
Packing BalancedPacking(std::span<const double> weight, int num_packs,
                        std::span<const int32_t> keys = {});

// Result of replicate_experts.
struct Replication {
  std::vector<int32_t> phy2log;  // [num_phy]: first n are 0..n-1.
  std::vector<int32_t> count;    // [n]: replicas of each expert.
};

// Starts with one replica each; gives each further replica to the expert
// with the largest weight / count below `max_count` (lowest id on ties).
// Precondition: n <= num_phy <= n * max_count. O(num_phy * log n) (a heap).
Replication ReplicateExperts(std::span<const double> weight, int num_phy,
                             int max_count);

// DeepSeek's rebalance for one layer: hierarchical when num_nodes > 1 and
// num_groups % num_nodes == 0, global otherwise. Returns phy2log [num_slots].
// Preconditions: num_slots % num_ranks == 0, num_ranks % num_nodes == 0,
// weight.size() % num_groups == 0.
std::vector<int32_t> DeepSeekRebalanceLayer(std::span<const double> weight,
                                            int num_slots, int num_groups,
                                            int num_nodes, int num_ranks);

}  // namespace eplb::policy

#endif  // EPLB_SRC_POLICY_DEFAULT_EPLB_H_
