// Building blocks shared by the policies: replica counts, placement, swap
// refinement, minimal redeploy and the lower bound. Pure functions over one
// layer; deterministic (ties go to the lower id). Private to the library.
#ifndef EPLB_SRC_POLICY_ALGORITHMS_H_
#define EPLB_SRC_POLICY_ALGORITHMS_H_

#include <cstdint>
#include <span>
#include <vector>

namespace eplb::policy {

// Replica counts minimising the largest share load[e] / count[e]: start at 1,
// give each further replica to the expert with the largest share below
// `max_count` (lowest id on ties). Optimal for that min-max objective.
// Precondition: E <= num_slots <= E * max_count. O(num_slots log E).
std::vector<int32_t> MinMaxReplicaCounts(std::span<const double> load,
                                         int num_slots, int max_count);

// Greedy longest-processing-time placement: replicas in order of share
// descending (expert id, then replica, ascending on ties), each onto the
// least-loaded rank (lowest id on ties) with a free slot that does not hold
// the expert. Returns [R*K]. Precondition: sum(count) == R*K, count[e] <= R.
// O(R*K * R).
std::vector<int32_t> PlaceLpt(std::span<const double> load,
                              std::span<const int32_t> count, int num_ranks,
                              int slots_per_rank);

// Pairwise-swap local search on a full layer [R*K]: repeatedly takes the
// most loaded rank and applies the swap of one of its replicas with a
// replica of another rank that most lowers the pair's peak, while the peak
// falls by more than `min_gain` (absolute load). Never co-locates; slots with
// frozen[phy] set do not move. At most `max_swaps` swaps. Returns the number
// of swaps made. O(max_swaps * R * K^2).
int RefineBySwaps(std::span<int32_t> layer, std::span<const double> load,
                  int num_ranks, int slots_per_rank, int max_swaps,
                  double min_gain, std::span<const char> frozen = {});

// Trades the experts of slots a and b (on different ranks) of `layer` [R*K]
// and updates `holds` [R][E] (non-zero where a rank holds an expert) to match.
void SwapSlots(std::span<int32_t> layer, std::span<char> holds, int num_experts,
               int slots_per_rank, int a, int b);

// Relabels the ranks of `plan` [R*K] so that each keeps as many experts of a
// current rank as possible: a minimum-cost assignment (Hungarian, integer
// costs K - overlap) of planned ranks to current ranks. O(R^3 + R*K) up to
// kMaxExactMatchRanks ranks; above, a greedy match in O(R*K) (each planned
// rank takes the first free current rank holding one of its experts:
// exact at one slot per rank, near it otherwise), so large EP groups plan
// in time linear in their slots.
inline constexpr int kMaxExactMatchRanks = 256;
void MatchRanksToCurrent(std::span<const int32_t> current,
                         std::span<int32_t> plan, int num_ranks,
                         int slots_per_rank);

// Experts copied onto a rank that did not hold them (spec: moved experts).
int MovedExperts(std::span<const int32_t> current,
                 std::span<const int32_t> plan, int num_ranks,
                 int slots_per_rank);

// A lower bound on the max/mean imbalance of any placement of `load` on R
// ranks of K slots with at most one replica of an expert per rank: the peak
// rank load is at least the mean, and at least the largest share under the
// best possible replica counts (MinMaxReplicaCounts with the cap R). 1.0 for
// an all-zero layer.
double ImbalanceLowerBound(std::span<const double> load, int num_ranks,
                           int slots_per_rank);

}  // namespace eplb::policy

#endif  // EPLB_SRC_POLICY_ALGORITHMS_H_
