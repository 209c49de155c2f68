// Token dispatch over an expert's replicas: how many of a step's tokens for
// each logical expert go to each of its physical replicas.
//
// Two dispatches:
//  - round robin (`rr`, the default, what vLLM and vllm-ascend do): within a
//    step, the i-th token routed to expert e goes to replica i mod c of e,
//    replicas in ascending physical id, so replica j receives
//    n / c + (j < n % c) of the expert's n tokens (WholeTokenShare);
//  - balanced: every rank computes, from the same step's token counts summed
//    over ranks, how many tokens each replica receives so that the busiest
//    rank receives as few as possible (whole tokens, deterministic), then maps
//    each token's logical expert to a physical slot honouring those quotas.
//
// BalancedDispatcher is thread-compatible (one object per serving thread);
// it sizes its buffers at construction, and SetPlacement, ComputeQuotas and
// MapTokens never allocate, lock or block.
#ifndef EPLB_DISPATCH_H_
#define EPLB_DISPATCH_H_

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "eplb/placement.h"
#include "eplb/status.h"

namespace eplb {

enum class DispatchMode { kRoundRobin, kBalanced };

// "rr" or "balanced".
std::string_view DispatchModeName(DispatchMode mode);
// Parses "rr" / "round-robin" / "balanced"; InvalidArgument names the value
// and the valid ones.
StatusOr<DispatchMode> ParseDispatchMode(std::string_view name);

// Round-robin quotas of one layer and step: slot_quota[p] (p in [0, R*K)) =
// the tokens the default dispatch sends to physical slot p, under the
// layer's `routing` (BuildLayerRouting); `counts` [E] tokens per logical
// expert (>= 0). The one definition of the default dispatch's split: the
// replay and the benchmarks use it. O(R*K + E); never allocates.
void RoundRobinQuotas(const LayerRouting& routing,
                      std::span<const int64_t> counts,
                      std::span<int64_t> slot_quota);

// The balanced dispatch of one layer shape (docs/dispatch.md).
//
// Per placement: SetPlacement. Per step and layer: ComputeQuotas from the
// step's token counts per logical expert, summed over every rank that sends
// tokens (the same counts on every rank, so every rank computes the same
// quotas), then MapTokens on each rank's own router output.
//
// Quotas: an expert with one replica sends all its tokens there; the tokens
// of a replicated expert are split over its replicas so that the largest rank
// load (a rank's load: the sum of its slots' quotas) is the integer optimum.
// Ties are broken by ids only, so the quotas are a function of the placement
// and the counts: the same on every machine and build.
class BalancedDispatcher {
 public:
  // Sizes every buffer for `num_experts` logical experts on `num_ranks` x
  // `slots_per_rank` physical slots. Preconditions (EPLB_CHECK): all >= 1,
  // R*K >= E and K <= E.
  BalancedDispatcher(int num_experts, int num_ranks, int slots_per_rank);

  int num_experts() const { return num_experts_; }
  int num_ranks() const { return num_ranks_; }
  int slots_per_rank() const { return slots_per_rank_; }
  int num_slots() const { return num_ranks_ * slots_per_rank_; }

  // Takes one layer's placement [R*K] (physical id -> logical expert).
  // Preconditions (EPLB_CHECK, as for a committed plan, which passed
  // CheckPlacement): every id in [0, E), every expert present, no expert
  // twice on a rank. Forgets the quotas of the previous placement.
  // O(R*K + E); never allocates.
  void SetPlacement(std::span<const int32_t> layer);

  // One step: `counts` [E] tokens per logical expert (>= 0, EPLB_CHECK) ->
  // `slot_quota` [R*K] tokens per physical slot. Each expert's count is split
  // over its replicas only (whole tokens, none negative), and the largest
  // rank load is the optimum of the integer problem. Returns that largest
  // rank load. Precondition: SetPlacement was called. Deterministic; never
  // allocates. Near O(R*K + E) in practice (see dispatch.cc for the bound).
  int64_t ComputeQuotas(std::span<const int64_t> counts,
                        std::span<int64_t> slot_quota);
  int64_t ComputeQuotas(std::span<const int32_t> counts,
                        std::span<int64_t> slot_quota);

  // Per-token mapping honouring the quotas of the last ComputeQuotas call:
  // `topk_ids` [T*top_k] logical ids in token order -> `physical_ids` (same
  // size, not overlapping `topk_ids`). The occurrences of expert e, in token
  // order, fill e's replicas in ascending physical id: the first quota[p0] go
  // to p0, the next quota[p1] to p1, and so on (replicas with quota 0 get
  // none). Occurrences beyond e's counted tokens stay on the replica the
  // counted ones ended on (e's first replica when it had no counted tokens), so
  // a miscount never sends a token to a slot without e. Ids outside [0, E) map
  // to -1 and take no quota. Precondition: ComputeQuotas was called since
  // SetPlacement. O(R*K + T*top_k) (plus O(E) with offsets); never allocates.
  void MapTokens(std::span<const int32_t> topk_ids,
                 std::span<int32_t> physical_ids);
  void MapTokens(std::span<const int64_t> topk_ids,
                 std::span<int64_t> physical_ids);

  // The same when every rank maps only its own tokens: the global token
  // order of expert e is rank 0's occurrences, then rank 1's, and so on, and
  // `offsets` [E] (>= 0) gives where this rank's first occurrence of e stands
  // in it (the tokens of e on lower ranks; GlobalCountsAndOffsets). Together
  // the ranks then honour the quotas exactly. The overloads above are these
  // with zero offsets.
  void MapTokens(std::span<const int32_t> topk_ids,
                 std::span<const int64_t> offsets,
                 std::span<int32_t> physical_ids);
  void MapTokens(std::span<const int64_t> topk_ids,
                 std::span<const int64_t> offsets,
                 std::span<int64_t> physical_ids);

  // Whether MapTokens uses its AVX-512 loop (the same output as the scalar
  // one, id for id). On by default where the CPU has AVX-512F and the shape
  // fits it (at most 2^16 slots and 16,384 experts); `on` is ignored where
  // they do not. For tests and benchmarks.
  void set_vector_mapping(bool on);
  bool vector_mapping() const { return vector_mapping_; }

 private:
  template <typename Count>
  int64_t Quotas(std::span<const Count> counts, std::span<int64_t> slot_quota);
  // Shortest augmenting paths under `cap`, all of one length: returns the
  // tokens they placed, 0 when there is none (then the search's reach marks
  // a minimum cut).
  int64_t Augment(int64_t cap);
  // Sets cursor x to `left` occurrences (kNever: unbounded) on `slot`.
  void SetCursor(size_t x, int64_t left, int32_t slot);
  void StartCursors(std::span<const int64_t> offsets);
  // Moves expert x to its next replica with a quota (one follows: the last
  // with a quota is never left); returns its index in replicas_.
  int32_t NextReplica(size_t x);
  // Cursor x ran out: refill it from its reserve, or move to the expert's
  // next replica with a quota. `cursor` is cursor_.data().
  void Advance(uint64_t* cursor, size_t x);
  template <typename Id>
  void Map(std::span<const Id> topk_ids, std::span<const int64_t> offsets,
           std::span<Id> physical_ids);
  // Map's loops after StartCursors: one cursor step per id, or (AVX-512,
  // dispatch.cc "The vector loop") table lookups of 16 ids at a time.
  template <typename Id>
  void MapScalar(const Id* ids, Id* out, size_t n);
  template <typename Id>
  void MapVector(const Id* ids, Id* out, size_t n);
  // The vector loop after a block: settles the counts of the block's bounded
  // ids, and re-walks those of an expert whose replica ran out in it.
  template <typename Id>
  void SettleBlock(size_t begin, size_t listed, Id* out);
  template <typename Id>
  void Rewalk(int32_t d, size_t begin, size_t listed, Id* out);
  // The replica of bounded index d ran out: the vector loop's table moves
  // on to the expert's next replica with a quota.
  void AdvanceLookup(int32_t d);

  int num_experts_;
  int num_ranks_;
  int slots_per_rank_;
  bool has_placement_ = false;
  bool has_quotas_ = false;
  bool vector_mapping_ = false;

  // --- Per placement. ---
  std::vector<int32_t> replica_begin_;  // [E+1] CSR into replicas_.
  std::vector<int32_t> replicas_;       // [S] physical ids, ascending per e.
  // Slots of the experts with one replica (fixed loads), by rank (CSR).
  std::vector<int32_t> fixed_begin_;   // [R+1]
  std::vector<int32_t> fixed_slot_;    // [fixed] physical id.
  std::vector<int32_t> fixed_expert_;  // [fixed] its expert.
  // The flow graph of the replicated experts ("nodes", ascending expert id):
  // one edge per replica, from the node to the replica's rank.
  int num_nodes_ = 0;
  std::vector<int32_t> node_expert_;      // [nodes]
  std::vector<int32_t> node_edge_begin_;  // [nodes+1] CSR: edges by node.
  std::vector<int32_t> edge_node_;        // [edges]
  std::vector<int32_t> edge_rank_;        // [edges]
  std::vector<int32_t> edge_slot_;        // [edges] physical id.
  std::vector<int32_t> rank_edge_begin_;  // [R+1] CSR into rank_edges_.
  std::vector<int32_t> rank_edges_;       // Edges by rank, ascending.

  // --- Per step. ---
  std::vector<int64_t> quota_;        // [S] the last quotas.
  std::vector<int64_t> load_;         // [R] rank loads.
  std::vector<int64_t> need_;         // [nodes] tokens not yet placed.
  std::vector<int64_t> flow_;         // [edges] tokens on each replica.
  std::vector<int32_t> node_parent_;  // [nodes] BFS: edge it came by.
  std::vector<int32_t> rank_parent_;  // [R] BFS: edge it came by.
  std::vector<int32_t> queue_;        // [nodes] BFS queue.
  std::vector<int32_t> found_;        // [R] BFS: ranks below cap reached.

  // --- MapTokens' cursors. ---
  // One word per expert, so that a token costs one load and one store: the
  // low 32 bits hold the physical id its next occurrence goes to (-1 in
  // entry [E], where out-of-range ids go), the high 32 bits how many more
  // occurrences that slot takes; what does not fit waits in reserve_. An
  // expert with one replica (and entry [E]) never runs out, so only the
  // replicated experts' cursors are set per call.
  std::vector<uint64_t> cursor_;       // [E+1]
  std::vector<int64_t> reserve_;       // [E+1] kNever: unbounded.
  std::vector<int32_t> replica_at_;    // [E] index in e's replica list.
  std::vector<int32_t> last_replica_;  // [E] where e's counted tokens end.
  // --- The vector loop's state (set by StartCursors). ---
  // Per id x in [0, E]: the table entry of its next occurrence (dispatch.cc,
  // kBounded). The experts whose current replica can run out are numbered
  // 0, 1, ... in this call (their bounded index d).
  std::vector<int32_t> lookup_;
  std::vector<int32_t> bounded_expert_;  // [E] expert of bounded index d.
  int32_t num_bounded_ = 0;
  // Per bounded index: occurrences left on the current replica.
  int32_t* remaining() { return counters_.data() + counters_at_; }
  // Four per-index counters of one block's bounded ids (zero between
  // blocks), and the block's list of them: bounded index << 16 | position.
  int32_t* block_counts() { return remaining() + padded_; }
  std::vector<uint32_t> block_list_;
  // remaining() and block_counts() share one buffer, from counters_at_ (a
  // 64-byte boundary where the buffer's address allows: the vector loop
  // reads and writes them 16 at a time).
  std::vector<int32_t> counters_;
  size_t counters_at_ = 0;
  size_t padded_ = 0;          // E rounded up to 16.
  bool vector_ready_ = false;  // This call may take the vector loop.
};

// Global counts and one rank's offsets from every sending rank's per-expert
// counts `rank_counts` [S][E] (row s: rank s's tokens per expert, e.g. an
// all-gather): `counts` [E] = the column sums (ComputeQuotas' input) and
// `offsets` [E] = the sums of rows [0, rank) (MapTokens' offsets for
// `rank`). O(S*E); never allocates.
void GlobalCountsAndOffsets(std::span<const int64_t> rank_counts, int rank,
                            std::span<int64_t> counts,
                            std::span<int64_t> offsets);

}  // namespace eplb

#endif  // EPLB_DISPATCH_H_
