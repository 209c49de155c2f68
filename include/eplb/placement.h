// Placement of logical experts on physical slots, and the structures derived
// from it.
//
// A Placement is the source of truth: int
// [num_layers][num_ranks][slots_per_rank] holding the logical expert of every
// slot. Physical id = rank * K + slot. LayerRouting holds the per-layer views
// an engine needs (replica counts, the per-rank expert map, log2phy, logical ->
// physical lists). Both are value types: thread-compatible.
#ifndef EPLB_PLACEMENT_H_
#define EPLB_PLACEMENT_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "eplb/status.h"
#include "eplb/topology.h"

namespace eplb {

class LoadMatrix;

class Placement {
 public:
  Placement() = default;
  // All slots hold `fill` (-1: empty, not a valid placement until filled).
  Placement(int num_layers, int num_ranks, int slots_per_rank, int num_experts,
            int32_t fill = -1);

  // The default placement (the engine's initial one): physical i holds i < E ?
  // i : (i - E) % E. Precondition: R*K >= E (EPLB_CHECK).
  static Placement Initial(int num_layers, int num_experts,
                           const Topology& topology);

  int num_layers() const { return num_layers_; }
  int num_ranks() const { return num_ranks_; }
  int slots_per_rank() const { return slots_per_rank_; }
  int num_experts() const { return num_experts_; }
  int num_slots() const { return num_ranks_ * slots_per_rank_; }  // Per layer.

  int32_t at(int layer, int rank, int slot) const {
    return data_[Index(layer, rank, slot)];
  }
  void set(int layer, int rank, int slot, int32_t expert) {
    data_[Index(layer, rank, slot)] = expert;
  }
  // [R*K] physical -> logical of one layer.
  std::span<const int32_t> layer(int layer) const {
    return {data_.data() + static_cast<size_t>(layer) * num_slots(),
            static_cast<size_t>(num_slots())};
  }
  std::span<int32_t> mutable_layer(int layer) {
    return {data_.data() + static_cast<size_t>(layer) * num_slots(),
            static_cast<size_t>(num_slots())};
  }
  // [L][R][K] flattened.
  const std::vector<int32_t>& data() const { return data_; }

  friend bool operator==(const Placement&, const Placement&) = default;

 private:
  size_t Index(int layer, int rank, int slot) const {
    return (static_cast<size_t>(layer) * num_ranks_ + rank) * slots_per_rank_ +
           slot;
  }

  int num_layers_ = 0;
  int num_ranks_ = 0;
  int slots_per_rank_ = 0;
  int num_experts_ = 0;
  std::vector<int32_t> data_;
};

// Per-layer views derived from a placement.
struct LayerRouting {
  int num_ranks = 0;
  int slots_per_rank = 0;
  int num_experts = 0;
  std::vector<int32_t> replica_count;  // [E]
  std::vector<int32_t> expert_map;     // [R][E]: local slot of e on r, or -1.
  std::vector<int32_t> log2phy;        // [R][E]: physical id r's tokens go to.
  std::vector<int32_t> replica_offsets;  // [E+1]: CSR offsets into `replicas`.
  std::vector<int32_t> replicas;         // Physical ids, ascending per expert.

  // Physical ids of e's replicas in ascending order.
  std::span<const int32_t> ReplicasOf(int expert) const {
    return {replicas.data() + replica_offsets[expert],
            static_cast<size_t>(replica_offsets[expert + 1] -
                                replica_offsets[expert])};
  }
  int32_t ExpertMap(int rank, int expert) const {
    return expert_map[static_cast<size_t>(rank) * num_experts + expert];
  }
  int32_t Log2Phy(int rank, int expert) const {
    return log2phy[static_cast<size_t>(rank) * num_experts + expert];
  }
};

// Builds the routing of one layer `[R*K]` for `topology`.
//
// log2phy choice rule (documented in docs/formats.md, tested): the candidates
// are e's replicas in ascending physical id; if rank r holds e, only r's own
// replicas are candidates; else, if r's node holds e, only the node's
// replicas; else all. r's tokens go to candidate (r + e) % num_candidates, so
// ranks spread over replicas. An expert with no replica maps to -1.
// Precondition: every id in [-1, E) (EPLB_CHECK); -1 slots are ignored.
// O(R*E + R*K).
LayerRouting BuildLayerRouting(std::span<const int32_t> layer, int num_experts,
                               const Topology& topology);

// One broken invariant, located. `rank` / `slot` are -1 when not applicable.
struct Violation {
  int layer = -1;
  int rank = -1;
  int slot = -1;
  std::string message;  // e.g. "expert 17 appears twice (slots 2 and 5)".

  // "layer 3, device 5, slot 2: expert 17 ..." (parts that are -1 omitted).
  std::string ToString() const;
};

// Whose rules a map is checked under. The engines differ on one point:
// whether two replicas of one expert may sit on the same rank.
enum class MapTarget {
  // No expert twice on a rank: vllm-ascend's rule, and what eplb's own
  // policies produce and expect.
  kVllmAscend,
  // Replicas of one expert may share a rank: SGLang serves such maps, and
  // DeepSeek's reference planner (rebalance_experts) writes them.
  kSglang,
};
std::string_view MapTargetName(MapTarget target);  // "vllm-ascend", "sglang"
// Parses "vllm-ascend" or "sglang"; InvalidArgument lists the valid names.
StatusOr<MapTarget> ParseMapTarget(std::string_view name);

// Checks the placement invariants (and ids in range) on every layer:
// every expert has >= 1 replica, ids in [0, E), and, under
// MapTarget::kVllmAscend, no expert twice on a rank.
// Returns every violation, in layer, rank, slot order; empty when valid.
std::vector<Violation> CheckPlacement(
    const Placement& placement, MapTarget target = MapTarget::kVllmAscend);

// The layers (ascending) where some rank holds two replicas of one expert.
// Ids outside [0, E) are ignored.
std::vector<int> ColocatedLayers(const Placement& placement);

// The one-line warning for those layers, e.g. "layers 3, 7, 12: an expert
// twice on one rank (DeepSeek's and SGLang's planners allow it; eplb's
// policies and vllm-ascend do not)"; at most 16 layers are named, then
// "and N more". Empty when `layers` is empty.
std::string ColocationWarning(std::span<const int> layers);

// What RepairColocated changed.
struct ColocationRepair {
  int duplicates = 0;       // Replicas that shared a rank with another replica.
  int swaps = 0;            // Slot pairs exchanged.
  std::vector<int> layers;  // Layers changed, ascending.
};

// Moves every replica that shares a rank with another replica of its expert
// to another rank, so the result passes CheckPlacement under
// MapTarget::kVllmAscend. Each move swaps the duplicate with one slot of
// another rank: one holding an expert the duplicate's rank lacks, on a rank
// that lacks the duplicate's expert, so both ranks end with distinct experts
// and every expert keeps its replica count; the other slots stay as they
// are. While a layer has duplicates, the first in physical-id order that
// some swap can move is moved (one always can: see placement.cc).
// The partner slot is chosen by, in order:
//  - with `load` ([L][E], tokens per logical expert, split evenly over an
//    expert's replicas): the lowest busiest-rank load after the swap, then
//    the lower of the two swapped ranks' loads;
//  - a partner that is itself a duplicate (one swap fixes two);
//  - the lowest physical id.
// Without a load the result depends only on the placement. InvalidArgument
// when the placement breaks another invariant (ids out of range, an expert on
// no rank), when an expert has more replicas than there are ranks (two must
// then share one; the message names the layer and the expert), or when
// `load`'s shape differs from the placement's. On error `*placement` is
// unchanged. O(L * D * R * K * (R + K)) for D duplicates per layer.
StatusOr<ColocationRepair> RepairColocated(Placement* placement,
                                           const LoadMatrix* load = nullptr);

// Checks a plan against the placement it replaces: CheckPlacement(plan), same
// shape, invariant 4 (an expert that stays on a rank keeps its slot) and
// invariant 5 (at most `max_receives_per_rank` changed slots per rank and
// layer; <= 0 means no limit).
std::vector<Violation> CheckPlan(const Placement& current,
                                 const Placement& plan,
                                 int max_receives_per_rank = 0);

// Joins violations into one Status (OK when empty): "N problems: first; ...".
Status ViolationsToStatus(const std::vector<Violation>& violations);

// Reorders the slots of each rank of `plan_layer` so that every expert that
// rank r already holds in `current_layer` stays in its current slot
// (invariant 4); other experts fill the remaining slots in their planned
// order. Both are [R*K] with the same R and K. O(R*K^2).
void KeepSlots(std::span<const int32_t> current_layer,
               std::span<int32_t> plan_layer, int num_ranks,
               int slots_per_rank);
// The same with the caller's scratch, at least 3 * slots_per_rank entries:
// never allocates (for the serving thread).
void KeepSlots(std::span<const int32_t> current_layer,
               std::span<int32_t> plan_layer, int num_ranks, int slots_per_rank,
               std::span<int32_t> scratch);

// Replica count of the most replicated expert of any layer.
int MaxReplicaCount(const Placement& placement);

}  // namespace eplb

#endif  // EPLB_PLACEMENT_H_
