#include "eplb/dispatch.h"

#include <algorithm>
#include <bit>
#include <limits>
#include <string>
#include <type_traits>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define EPLB_DISPATCH_AVX512 1
#endif

#include "eplb/load.h"

namespace eplb {

std::string_view DispatchModeName(DispatchMode mode) {
  return mode == DispatchMode::kBalanced ? "balanced" : "rr";
}

StatusOr<DispatchMode> ParseDispatchMode(std::string_view name) {
  if (name == "rr" || name == "round-robin") return DispatchMode::kRoundRobin;
  if (name == "balanced") return DispatchMode::kBalanced;
  return InvalidArgumentError("dispatch '" + std::string(name) +
                              "': must be rr or balanced");
}

void RoundRobinQuotas(const LayerRouting& routing,
                      std::span<const int64_t> counts,
                      std::span<int64_t> slot_quota) {
  std::fill(slot_quota.begin(), slot_quota.end(), 0);
  // Replica j of an expert is its j-th slot in ascending physical id.
  for (int e = 0; e < routing.num_experts; ++e) {
    const std::span<const int32_t> reps = routing.ReplicasOf(e);
    const auto c = static_cast<int64_t>(reps.size());
    if (counts[e] <= 0) continue;
    for (int64_t j = 0; j < c; ++j) {
      slot_quota[reps[j]] = WholeTokenShare(counts[e], c, j);
    }
  }
}

// --- BalancedDispatcher ---------------------------------------------------
//
// The quota problem. An expert with one replica puts all its tokens on that
// replica's rank: a fixed load base[r]. A replicated expert ("node") must
// place its n_e tokens on the ranks holding its replicas. Rank loads are
// base[r] plus what the nodes place there; we want the smallest possible
// largest load. For a cap T, the placements with every rank load <= T are
// the flows of a bipartite network: source -> node (capacity n_e) -> rank
// (one edge per replica, unbounded) -> sink (capacity T - base[r]). The
// integer optimum is the smallest T whose maximum flow carries every token;
// capacities are integers, so an integer flow exists whenever any flow does.
//
// We search T upwards, keeping the flow (raising T only raises the sink
// capacities, so the flow stays valid):
//  1. T starts at a lower bound of every placement: the largest of
//     max_r base[r], ceil(total tokens / R) and, for each node alone,
//     ceil((n_e + base of its ranks) / its replica count).
//  2. Fill: every node pushes its unplaced tokens directly onto its replica
//     ranks, up to T; then shortest augmenting paths (breadth-first search,
//     as Edmonds-Karp; each search augments every shortest path it found)
//     move tokens through shared nodes: node -> full rank -> another node
//     that has tokens there -> ... -> a rank below T.
//  3. If tokens remain unplaced, the last search's reachable part is a
//     minimum cut: nodes S (those with unplaced tokens, and those that hold
//     tokens on a reached rank) and the ranks N(S) holding their replicas,
//     all full. No reached rank carries tokens of a node outside S (its
//     reverse edge would have been followed), so
//       n(S) + base(N(S)) = |N(S)| * T + unplaced(S) > |N(S)| * T.
//     Every placement puts S's tokens on N(S) alone, so every placement has
//     a rank of N(S) at ceil((n(S) + base(N(S))) / |N(S)|) > T or more: a
//     new lower bound. Raise T to it and go to 2.
// T only ever takes values that are lower bounds, and the loop stops when T
// is feasible: T is the optimum. (This is Newton's method on the cut
// function |N(S)| * T - n(S) - base(N(S)): S minimises it at the old T, so
// between rounds the bottleneck's rank count |N(S)| strictly falls, and
// there are at most R rounds; on real loads one or two.)
//
// Cost per step: O(R*K + E) to gather the fixed loads and write the quotas,
// plus the flow on the small graph (V = nodes + ranks vertices, F = one edge
// per replica of a replicated expert: 24 nodes and 56 edges on the
// DeepSeek-V3 benchmark layer): shortest augmenting paths bound a round by
// O(V * F^2), and in practice a few searches follow the direct fill.
// Everything is indexed by ids and visited in ascending order, so the result
// is deterministic.
namespace {

constexpr int32_t kUnseen = -2;  // BFS: not reached.
constexpr int32_t kSource = -1;  // BFS: a node with unplaced tokens.
// A cursor that never runs out: the last replica takes every occurrence.
constexpr int64_t kNever = std::numeric_limits<int64_t>::max();
// A cursor word's count unit and its largest count.
constexpr uint64_t kOne = uint64_t{1} << 32;
constexpr int64_t kWordMax = 0xffffffff;
// The vector loop's table entries: a slot (or -1: out of range), or, for a
// replica that can run out, kBounded | the expert's bounded index << 16 |
// the slot. A replica that cannot run out has kUnbounded occurrences left.
constexpr int32_t kBounded = int32_t{1} << 30;
constexpr int32_t kBoundedIndexBits = 0x3fff0000;
constexpr int32_t kSlotBits = 0xffff;
constexpr int32_t kUnbounded = std::numeric_limits<int32_t>::max();
// Ids per block of the vector loop (its list holds positions in 16 bits).
constexpr size_t kMapBlock = 1024;

bool CpuHasAvx512() {
#ifdef EPLB_DISPATCH_AVX512
  // Also right when a dispatcher is built by a static initializer, before
  // the runtime's own CPU detection has run.
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

}  // namespace

BalancedDispatcher::BalancedDispatcher(int num_experts, int num_ranks,
                                       int slots_per_rank)
    : num_experts_(num_experts),
      num_ranks_(num_ranks),
      slots_per_rank_(slots_per_rank) {
  EPLB_CHECK_MSG(num_experts >= 1 && num_ranks >= 1 && slots_per_rank >= 1,
                 "BalancedDispatcher: shape must be positive");
  EPLB_CHECK_MSG(
      static_cast<int64_t>(num_ranks) * slots_per_rank >= num_experts &&
          slots_per_rank <= num_experts,
      "BalancedDispatcher: needs R*K >= E and K <= E");
  const auto e = static_cast<size_t>(num_experts);
  const auto r = static_cast<size_t>(num_ranks);
  const auto s = static_cast<size_t>(num_slots());
  replica_begin_.resize(e + 1);
  replicas_.resize(s);
  fixed_begin_.resize(r + 1);
  fixed_slot_.resize(s);
  fixed_expert_.resize(s);
  edge_slot_.resize(s);
  node_expert_.resize(e);
  node_edge_begin_.resize(e + 1);
  edge_node_.resize(s);
  edge_rank_.resize(s);
  rank_edge_begin_.resize(r + 1);
  rank_edges_.resize(s);
  quota_.resize(s);
  load_.resize(r);
  need_.resize(e);
  flow_.resize(s);
  node_parent_.resize(e);
  rank_parent_.resize(r);
  queue_.resize(e);
  found_.resize(r);
  cursor_.resize(e + 1);
  reserve_.resize(e + 1);
  replica_at_.resize(e);
  last_replica_.resize(e);
  EPLB_CHECK_MSG(num_slots() < kBounded, "BalancedDispatcher: too many slots");
  lookup_.assign(e + 1, -1);
  bounded_expert_.resize(e);
  padded_ = (e + 15) / 16 * 16;
  counters_.assign(5 * padded_ + 16, 0);
  const auto address = reinterpret_cast<uintptr_t>(counters_.data());
  counters_at_ = (64 - address % 64) % 64 / sizeof(int32_t);
  // A block's list, and room for one whole vector written past it.
  block_list_.resize(kMapBlock + 16);
  set_vector_mapping(true);
}

void BalancedDispatcher::set_vector_mapping(bool on) {
  // The vector loop's entries hold a slot in 16 bits and a bounded index in
  // 14.
  vector_mapping_ = on && CpuHasAvx512() && num_slots() <= kSlotBits + 1 &&
                    num_experts_ <= (kBoundedIndexBits >> 16) + 1;
}

void BalancedDispatcher::SetPlacement(std::span<const int32_t> layer) {
  const int num_experts = num_experts_;
  const int k = slots_per_rank_;
  EPLB_CHECK_MSG(layer.size() == static_cast<size_t>(num_slots()),
                 "BalancedDispatcher: placement must have R*K slots");
  has_placement_ = false;
  has_quotas_ = false;

  // Replica lists (CSR), ascending physical id: a counting sort.
  std::fill(replica_begin_.begin(), replica_begin_.end(), 0);
  for (int32_t e : layer) {
    EPLB_CHECK_MSG(e >= 0 && e < num_experts,
                   "BalancedDispatcher: expert id out of range");
    ++replica_begin_[e + 1];
  }
  for (int e = 0; e < num_experts; ++e) {
    EPLB_CHECK_MSG(replica_begin_[e + 1] > 0,
                   "BalancedDispatcher: an expert has no replica");
    replica_begin_[e + 1] += replica_begin_[e];
  }
  std::copy(replica_begin_.begin(), replica_begin_.end() - 1,
            replica_at_.begin());
  for (size_t p = 0; p < layer.size(); ++p) {
    replicas_[replica_at_[layer[p]]++] = static_cast<int32_t>(p);
  }

  // Nodes and edges: one node per replicated expert, one edge per replica.
  int nodes = 0;
  int edges = 0;
  for (int e = 0; e < num_experts; ++e) {
    const int32_t begin = replica_begin_[e];
    const int32_t end = replica_begin_[e + 1];
    if (end - begin == 1) continue;
    node_expert_[nodes] = e;
    node_edge_begin_[nodes] = edges;
    for (int32_t i = begin; i < end; ++i) {
      const int32_t rank = replicas_[i] / k;
      // Ascending ids: two replicas on one rank would be neighbours.
      EPLB_CHECK_MSG(i == begin || replicas_[i - 1] / k != rank,
                     "BalancedDispatcher: an expert appears twice on a rank");
      edge_slot_[edges] = replicas_[i];
      edge_node_[edges] = nodes;
      edge_rank_[edges] = rank;
      ++edges;
    }
    ++nodes;
  }
  node_edge_begin_[nodes] = edges;
  num_nodes_ = nodes;

  // Slots of experts with one replica, by rank.
  int fixed = 0;
  for (int r = 0, p = 0; r < num_ranks_; ++r) {
    fixed_begin_[r] = fixed;
    for (int s = 0; s < k; ++s, ++p) {
      const int32_t e = layer[p];
      if (replica_begin_[e + 1] - replica_begin_[e] > 1) continue;
      fixed_slot_[fixed] = p;
      fixed_expert_[fixed] = e;
      ++fixed;
    }
  }
  fixed_begin_[num_ranks_] = fixed;

  // Cursors of the experts with one replica: set once per placement.
  for (int32_t i = 0; i < fixed; ++i) {
    SetCursor(fixed_expert_[i], kNever, fixed_slot_[i]);
    lookup_[fixed_expert_[i]] = fixed_slot_[i];
  }
  SetCursor(num_experts, kNever, -1);
  lookup_[num_experts] = -1;

  // Edges by rank (CSR), ascending edge id; rank_parent_ is scratch here.
  std::fill(rank_edge_begin_.begin(), rank_edge_begin_.end(), 0);
  for (int j = 0; j < edges; ++j) ++rank_edge_begin_[edge_rank_[j] + 1];
  for (int r = 0; r < num_ranks_; ++r) {
    rank_edge_begin_[r + 1] += rank_edge_begin_[r];
  }
  std::copy(rank_edge_begin_.begin(), rank_edge_begin_.end() - 1,
            rank_parent_.begin());
  for (int j = 0; j < edges; ++j)
    rank_edges_[rank_parent_[edge_rank_[j]]++] = j;
  has_placement_ = true;
}

int64_t BalancedDispatcher::ComputeQuotas(std::span<const int64_t> counts,
                                          std::span<int64_t> slot_quota) {
  return Quotas(counts, slot_quota);
}

int64_t BalancedDispatcher::ComputeQuotas(std::span<const int32_t> counts,
                                          std::span<int64_t> slot_quota) {
  return Quotas(counts, slot_quota);
}

template <typename Count>
int64_t BalancedDispatcher::Quotas(std::span<const Count> counts,
                                   std::span<int64_t> slot_quota) {
  EPLB_CHECK_MSG(has_placement_, "BalancedDispatcher: no placement set");
  EPLB_CHECK_MSG(counts.size() == static_cast<size_t>(num_experts_),
                 "BalancedDispatcher: counts must have E entries");
  EPLB_CHECK_MSG(slot_quota.size() == static_cast<size_t>(num_slots()),
                 "BalancedDispatcher: slot_quota must have R*K entries");
  const int num_ranks = num_ranks_;
  // The sign bits ORed: one check, and a loop the compiler vectorizes.
  int64_t total = 0;
  Count signs = 0;
  for (Count c : counts) {
    total += c;
    signs |= c;
  }
  EPLB_CHECK_MSG(signs >= 0, "BalancedDispatcher: negative token count");

  // Fixed loads: experts with one replica.
  int64_t cap = (total + num_ranks - 1) / num_ranks;
  for (int r = 0; r < num_ranks; ++r) {
    int64_t base = 0;
    for (int32_t i = fixed_begin_[r]; i < fixed_begin_[r + 1]; ++i) {
      base += counts[fixed_expert_[i]];
    }
    load_[r] = base;
    cap = std::max(cap, base);
  }
  int64_t unplaced = 0;
  for (int n = 0; n < num_nodes_; ++n) {
    need_[n] = counts[node_expert_[n]];
    unplaced += need_[n];
    // One expert alone: its tokens and its ranks' fixed loads share them.
    int64_t tokens = need_[n];
    const int32_t begin = node_edge_begin_[n];
    const int32_t end = node_edge_begin_[n + 1];
    for (int32_t j = begin; j < end; ++j) tokens += load_[edge_rank_[j]];
    cap = std::max(cap, (tokens + end - begin - 1) / (end - begin));
  }
  std::fill(flow_.begin(), flow_.begin() + node_edge_begin_[num_nodes_], 0);

  while (true) {
    // Direct fill, then augmenting paths.
    for (int n = 0; n < num_nodes_ && unplaced > 0; ++n) {
      for (int32_t j = node_edge_begin_[n];
           j < node_edge_begin_[n + 1] && need_[n] > 0; ++j) {
        const int32_t r = edge_rank_[j];
        const int64_t x = std::min(need_[n], cap - load_[r]);
        if (x <= 0) continue;
        flow_[j] += x;
        load_[r] += x;
        need_[n] -= x;
        unplaced -= x;
      }
    }
    while (unplaced > 0) {
      const int64_t moved = Augment(cap);
      if (moved == 0) break;
      unplaced -= moved;
    }
    if (unplaced == 0) break;
    // The search failed: its reached nodes and ranks bound the optimum.
    int64_t tokens = 0;
    int64_t ranks = 0;
    for (int r = 0; r < num_ranks; ++r) {
      if (rank_parent_[r] == kUnseen) continue;
      tokens += load_[r];
      ++ranks;
    }
    for (int n = 0; n < num_nodes_; ++n) {
      if (node_parent_[n] != kUnseen) tokens += need_[n];
    }
    const int64_t next = (tokens + ranks - 1) / ranks;
    EPLB_CHECK_MSG(next > cap, "BalancedDispatcher: the bound did not rise");
    cap = next;
  }

  int64_t max_load = 0;
  for (int r = 0; r < num_ranks; ++r) max_load = std::max(max_load, load_[r]);
  for (int32_t i = 0; i < fixed_begin_[num_ranks]; ++i) {
    quota_[fixed_slot_[i]] = counts[fixed_expert_[i]];
  }
  for (int32_t j = 0; j < node_edge_begin_[num_nodes_]; ++j) {
    quota_[edge_slot_[j]] = flow_[j];
  }
  std::copy(quota_.begin(), quota_.end(), slot_quota.begin());
  has_quotas_ = true;
  return max_load;
}

template int64_t BalancedDispatcher::Quotas(std::span<const int64_t>,
                                            std::span<int64_t>);
template int64_t BalancedDispatcher::Quotas(std::span<const int32_t>,
                                            std::span<int64_t>);

int64_t BalancedDispatcher::Augment(int64_t cap) {
  // Breadth-first from every node with unplaced tokens, one level of nodes
  // at a time; a full rank is expanded when first reached, to the nodes that
  // have tokens on it. The first level that reaches ranks below cap ends the
  // search: the tree paths to those ranks are the shortest augmenting paths.
  std::fill(node_parent_.begin(), node_parent_.begin() + num_nodes_, kUnseen);
  std::fill(rank_parent_.begin(), rank_parent_.end(), kUnseen);
  int head = 0;
  int tail = 0;
  for (int n = 0; n < num_nodes_; ++n) {
    if (need_[n] > 0) {
      node_parent_[n] = kSource;
      queue_[tail++] = n;
    }
  }
  int found = 0;
  while (head < tail && found == 0) {
    for (const int level_end = tail; head < level_end; ++head) {
      const int32_t n = queue_[head];
      for (int32_t j = node_edge_begin_[n]; j < node_edge_begin_[n + 1]; ++j) {
        const int32_t r = edge_rank_[j];
        if (rank_parent_[r] != kUnseen) continue;
        rank_parent_[r] = j;
        if (load_[r] < cap) {
          found_[found++] = r;
          continue;
        }
        for (int32_t i = rank_edge_begin_[r]; i < rank_edge_begin_[r + 1];
             ++i) {
          const int32_t back = rank_edges_[i];
          const int32_t node = edge_node_[back];
          if (flow_[back] > 0 && node_parent_[node] == kUnseen) {
            node_parent_[node] = back;
            queue_[tail++] = node;
          }
        }
      }
    }
  }
  // Augment along each path in turn, with what the earlier ones left: r
  // gains, the ranks on the way trade tokens one for one.
  int64_t placed = 0;
  for (int f = 0; f < found; ++f) {
    const int32_t r = found_[f];
    int64_t amount = cap - load_[r];
    for (int32_t at = r;;) {
      const int32_t node = edge_node_[rank_parent_[at]];
      const int32_t back = node_parent_[node];
      if (back == kSource) {
        amount = std::min(amount, need_[node]);
        break;
      }
      amount = std::min(amount, flow_[back]);
      at = edge_rank_[back];
    }
    if (amount == 0) continue;
    load_[r] += amount;
    for (int32_t at = r;;) {
      flow_[rank_parent_[at]] += amount;
      const int32_t node = edge_node_[rank_parent_[at]];
      const int32_t back = node_parent_[node];
      if (back == kSource) {
        need_[node] -= amount;
        break;
      }
      flow_[back] -= amount;
      at = edge_rank_[back];
    }
    placed += amount;
  }
  return placed;
}

void BalancedDispatcher::SetCursor(size_t x, int64_t left, int32_t slot) {
  const int64_t word_left = std::min(left, kWordMax);
  reserve_[x] = left == kNever ? kNever : left - word_left;
  cursor_[x] =
      (static_cast<uint64_t>(word_left) << 32) | static_cast<uint32_t>(slot);
}

void BalancedDispatcher::StartCursors(std::span<const int64_t> offsets) {
  EPLB_CHECK_MSG(has_quotas_, "BalancedDispatcher: no quotas computed");
  int64_t signs = 0;
  for (int64_t offset : offsets) signs |= offset;
  EPLB_CHECK_MSG(signs >= 0, "BalancedDispatcher: negative offset");
  vector_ready_ = vector_mapping_;
  num_bounded_ = 0;
  for (int n = 0; n < num_nodes_; ++n) {
    const int32_t e = node_expert_[n];
    const int32_t begin = replica_begin_[e];
    int32_t last = begin;
    for (int32_t i = begin; i < replica_begin_[e + 1]; ++i) {
      if (quota_[replicas_[i]] > 0) last = i;
    }
    // Skip the replicas that the occurrences on lower ranks fill.
    int64_t skip = offsets.empty() ? 0 : offsets[e];
    int32_t i = begin;
    while (i < last && skip >= quota_[replicas_[i]]) {
      skip -= quota_[replicas_[i]];
      ++i;
    }
    replica_at_[e] = i;
    last_replica_[e] = last;
    SetCursor(e, i == last ? kNever : quota_[replicas_[i]] - skip,
              replicas_[i]);
    if (i == last) {
      lookup_[e] = replicas_[i];
    } else {
      const int32_t d = num_bounded_++;
      bounded_expert_[d] = e;
      lookup_[e] = kBounded | d << 16 | replicas_[i];
      remaining()[d] = static_cast<int32_t>(
          std::min<int64_t>(quota_[replicas_[i]] - skip, kUnbounded));
    }
    // The vector loop counts in 32 bits: a replica's quota must fit.
    for (int32_t j = i; j < last; ++j) {
      if (quota_[replicas_[j]] >= kUnbounded) vector_ready_ = false;
    }
  }
  // The lanes past the last bounded index in its group of 16 never run out.
  for (size_t d = num_bounded_; d % 16 != 0; ++d) remaining()[d] = kUnbounded;
}

int32_t BalancedDispatcher::NextReplica(size_t x) {
  int32_t i = replica_at_[x] + 1;
  while (quota_[replicas_[i]] == 0) ++i;
  replica_at_[x] = i;
  return i;
}

void BalancedDispatcher::Advance(uint64_t* cursor, size_t x) {
  const auto slot = static_cast<int32_t>(static_cast<uint32_t>(cursor[x]));
  int64_t left = reserve_[x];
  if (left == 0) {
    // Moves on: a replica with a quota follows, since the last one has an
    // unbounded reserve.
    const int32_t i = NextReplica(x);
    left = i == last_replica_[x] ? kNever : quota_[replicas_[i]];
    cursor[x] = static_cast<uint32_t>(replicas_[i]);
  } else {
    cursor[x] = static_cast<uint32_t>(slot);
  }
  const int64_t word_left = std::min(left, kWordMax);
  reserve_[x] = left == kNever ? kNever : left - word_left;
  cursor[x] |= static_cast<uint64_t>(word_left) << 32;
}

template <typename Id>
void BalancedDispatcher::Map(std::span<const Id> topk_ids,
                             std::span<const int64_t> offsets,
                             std::span<Id> physical_ids) {
  EPLB_CHECK_MSG(
      topk_ids.size() == physical_ids.size(),
      "BalancedDispatcher: topk_ids and physical_ids differ in size");
  StartCursors(offsets);
  if (vector_ready_) {
    MapVector(topk_ids.data(), physical_ids.data(), topk_ids.size());
  } else {
    MapScalar(topk_ids.data(), physical_ids.data(), topk_ids.size());
  }
}

template <typename Id>
void BalancedDispatcher::MapScalar(const Id* ids_in, Id* out_in, size_t n) {
  using U = std::make_unsigned_t<Id>;
  const auto num_experts = static_cast<U>(num_experts_);
  // Restrict: the ids and the output do not overlap each other or the
  // cursors, so the compiler may keep the unrolled loads ahead of the
  // stores. Advance writes the cursors through `cursor` too.
  uint64_t* __restrict cursor = cursor_.data();
  const Id* __restrict ids = ids_in;
  Id* __restrict out = out_in;
  // One occurrence: the slot in the word's low half, one count off the high
  // half; when the count was the last, the cursor moves on (rare: at most
  // once per replica and per 2^32 occurrences).
  auto map_one = [&](size_t i) {
    // Out-of-range ids (negative ones too, as unsigned) hit entry [E].
    const auto u = static_cast<U>(ids[i]);
    const size_t x = u < num_experts ? u : num_experts;
    const uint64_t word = cursor[x];
    cursor[x] = word - kOne;
    out[i] = static_cast<Id>(static_cast<int32_t>(static_cast<uint32_t>(word)));
    if (word < 2 * kOne) [[unlikely]] {
      Advance(cursor, x);
    }
  };
  // Unrolled by 8 (one top-8 token): fewer loop branches per id.
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    map_one(i);
    map_one(i + 1);
    map_one(i + 2);
    map_one(i + 3);
    map_one(i + 4);
    map_one(i + 5);
    map_one(i + 6);
    map_one(i + 7);
  }
  for (; i < n; ++i) map_one(i);
}

// --- The vector loop ------------------------------------------------------
//
// The scalar loop steps a cursor for every id. Most ids belong to experts
// whose current replica cannot run out in this call (one replica, or the
// last replica with a quota), and for those the slot is a table lookup. So,
// per block of kMapBlock ids:
//  1. Sixteen ids at a time: look up each id's entry (a gather), write its
//     slot, and list the ids whose replica can run out ("bounded"), tagged
//     with their position in the block.
//  2. Count the listed ids per expert (four counter arrays in turn, so that
//     a hot expert's counts do not wait on each other).
//  3. For every bounded expert (sixteen at a time): if the block used fewer
//     occurrences than its replica had left, subtract; the slots written in
//     step 1 are right. Otherwise re-walk that expert's listed ids in order,
//     moving to its next replica with a quota where one runs out, as the
//     cursors do. That happens at most once per replica per call.
// The output is the scalar loop's, id for id.

void BalancedDispatcher::AdvanceLookup(int32_t d) {
  const int32_t x = bounded_expert_[d];
  const int32_t i = NextReplica(x);
  if (i == last_replica_[x]) {
    lookup_[x] = replicas_[i];
    remaining()[d] = kUnbounded;
  } else {
    lookup_[x] = kBounded | d << 16 | replicas_[i];
    remaining()[d] = static_cast<int32_t>(quota_[replicas_[i]]);
  }
}

#ifdef EPLB_DISPATCH_AVX512
// GCC 12 takes the intrinsics' undefined pass-through operands for
// uninitialized reads.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

// A lambda's body in a function with AVX-512 enabled needs the attribute
// too.
#define EPLB_AVX512_LAMBDA __attribute__((target("avx512f")))

namespace {

// The first min(n, 16) lanes.
inline __mmask16 FirstLanes(size_t n) {
  return n >= 16 ? __mmask16{0xffff} : static_cast<__mmask16>((1u << n) - 1);
}

// Sixteen ids from `ids` (lanes not in `keep` read as 0) as table indices:
// out-of-range ids (negative ones too, as unsigned) become E.
__attribute__((target("avx512f"))) inline __m512i LoadIndices(
    const int32_t* ids, __mmask16 keep, uint32_t num_experts) {
  return _mm512_min_epu32(_mm512_maskz_loadu_epi32(keep, ids),
                          _mm512_set1_epi32(static_cast<int32_t>(num_experts)));
}
__attribute__((target("avx512f"))) inline __m512i LoadIndices(
    const int64_t* ids, __mmask16 keep, uint32_t num_experts) {
  const __m512i e = _mm512_set1_epi64(num_experts);
  const __m512i lo = _mm512_min_epu64(
      _mm512_maskz_loadu_epi64(static_cast<__mmask8>(keep), ids), e);
  const __m512i hi = _mm512_min_epu64(
      _mm512_maskz_loadu_epi64(static_cast<__mmask8>(keep >> 8), ids + 8), e);
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(lo)),
                            _mm512_cvtepi64_epi32(hi), 1);
}

__attribute__((target("avx512f"))) inline void StoreSlots(int32_t* out,
                                                          __mmask16 keep,
                                                          __m512i slots) {
  _mm512_mask_storeu_epi32(out, keep, slots);
}
__attribute__((target("avx512f"))) inline void StoreSlots(int64_t* out,
                                                          __mmask16 keep,
                                                          __m512i slots) {
  _mm512_mask_storeu_epi64(
      out, static_cast<__mmask8>(keep),
      _mm512_cvtepi32_epi64(_mm512_castsi512_si256(slots)));
  _mm512_mask_storeu_epi64(
      out + 8, static_cast<__mmask8>(keep >> 8),
      _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(slots, 1)));
}

}  // namespace

template <typename Id>
__attribute__((target("avx512f"))) void BalancedDispatcher::Rewalk(
    int32_t d, size_t begin, size_t listed, Id* out) {
  const uint32_t* list = block_list_.data();
  const int32_t x = bounded_expert_[d];
  int32_t left = remaining()[d];
  int32_t slot = lookup_[x] & kSlotBits;
  const __m512i want = _mm512_set1_epi32(d);
  for (size_t j = 0; j < listed; j += 16) {
    const __mmask16 keep = FirstLanes(listed - j);
    unsigned bits = _mm512_mask_cmpeq_epi32_mask(
        keep, _mm512_srli_epi32(_mm512_loadu_si512(list + j), 16), want);
    for (; bits != 0; bits &= bits - 1) {
      if (left == 0) {
        AdvanceLookup(d);
        slot = lookup_[x] & kSlotBits;
        left = remaining()[d];
      }
      out[begin + (list[j + std::countr_zero(bits)] & 0xffff)] =
          static_cast<Id>(slot);
      --left;
    }
  }
  if (left == 0) {
    AdvanceLookup(d);
  } else {
    remaining()[d] = left;
  }
}

template <typename Id>
__attribute__((target("avx512f"))) void BalancedDispatcher::SettleBlock(
    size_t begin, size_t listed, Id* out) {
  const uint32_t* list = block_list_.data();
  const size_t stride = padded_;
  int32_t* c0 = block_counts();
  int32_t* c1 = c0 + stride;
  int32_t* c2 = c1 + stride;
  int32_t* c3 = c2 + stride;
  size_t j = 0;
  for (; j + 4 <= listed; j += 4) {
    ++c0[list[j] >> 16];
    ++c1[list[j + 1] >> 16];
    ++c2[list[j + 2] >> 16];
    ++c3[list[j + 3] >> 16];
  }
  for (; j < listed; ++j) ++c0[list[j] >> 16];
  const __m512i zero = _mm512_setzero_si512();
  int32_t* left_at = remaining();
  for (size_t k = 0; k < static_cast<size_t>(num_bounded_); k += 16) {
    const __m512i used = _mm512_add_epi32(
        _mm512_add_epi32(_mm512_load_si512(c0 + k), _mm512_load_si512(c1 + k)),
        _mm512_add_epi32(_mm512_load_si512(c2 + k), _mm512_load_si512(c3 + k)));
    _mm512_store_si512(c0 + k, zero);
    _mm512_store_si512(c1 + k, zero);
    _mm512_store_si512(c2 + k, zero);
    _mm512_store_si512(c3 + k, zero);
    const __m512i left = _mm512_load_si512(left_at + k);
    // Every replica that can run out has at least 1 occurrence left, so an
    // expert with no listed id in the block is not among these.
    const __mmask16 ran_out = _mm512_cmpge_epi32_mask(used, left);
    _mm512_store_si512(left_at + k,
                       _mm512_mask_sub_epi32(
                           left, static_cast<__mmask16>(~ran_out), left, used));
    for (unsigned bits = ran_out; bits != 0; bits &= bits - 1) {
      Rewalk(static_cast<int32_t>(k) + std::countr_zero(bits), begin, listed,
             out);
    }
  }
}

template <typename Id>
__attribute__((target("avx512f"))) void BalancedDispatcher::MapVector(
    const Id* ids, Id* out, size_t n) {
  const int32_t* lookup = lookup_.data();
  uint32_t* list = block_list_.data();
  const auto num_experts = static_cast<uint32_t>(num_experts_);
  const __m512i bounded = _mm512_set1_epi32(kBounded);
  const __m512i slot_bits = _mm512_set1_epi32(kSlotBits);
  const __m512i index_bits = _mm512_set1_epi32(kBoundedIndexBits);
  const __m512i sixteen = _mm512_set1_epi32(16);
  for (size_t begin = 0; begin < n; begin += kMapBlock) {
    const size_t end = std::min(n, begin + kMapBlock);
    size_t listed = 0;
    // Each lane's position in the block.
    __m512i at =
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    // One group of 16 ids (the lanes in `keep`): write every slot, list the
    // bounded ones.
    auto group = [&](size_t i, __mmask16 keep) EPLB_AVX512_LAMBDA {
      const __m512i x = LoadIndices(ids + i, keep, num_experts);
      const __m512i entry = _mm512_i32gather_epi32(x, lookup, 4);
      const __mmask16 m = _mm512_cmpge_epi32_mask(entry, bounded) & keep;
      StoreSlots(out + i, keep,
                 _mm512_mask_and_epi32(entry, m, entry, slot_bits));
      // at | (entry & index bits): the bounded index << 16 | position.
      const __m512i tagged =
          _mm512_ternarylogic_epi32(at, entry, index_bits, 0xf8);
      _mm512_storeu_si512(list + listed,
                          _mm512_maskz_compress_epi32(m, tagged));
      listed += static_cast<size_t>(std::popcount(static_cast<unsigned>(m)));
      at = _mm512_add_epi32(at, sixteen);
    };
    size_t i = begin;
    for (; i + 16 <= end; i += 16) group(i, 0xffff);
    if (i < end) group(i, FirstLanes(end - i));
    if (listed > 0) SettleBlock(begin, listed, out);
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#else
template <typename Id>
void BalancedDispatcher::MapVector(const Id* ids, Id* out, size_t n) {
  MapScalar(ids, out, n);
}
#endif

void BalancedDispatcher::MapTokens(std::span<const int32_t> topk_ids,
                                   std::span<int32_t> physical_ids) {
  Map(topk_ids, {}, physical_ids);
}

void BalancedDispatcher::MapTokens(std::span<const int64_t> topk_ids,
                                   std::span<int64_t> physical_ids) {
  Map(topk_ids, {}, physical_ids);
}

void BalancedDispatcher::MapTokens(std::span<const int32_t> topk_ids,
                                   std::span<const int64_t> offsets,
                                   std::span<int32_t> physical_ids) {
  EPLB_CHECK_MSG(offsets.size() == static_cast<size_t>(num_experts_),
                 "BalancedDispatcher: offsets must have E entries");
  Map(topk_ids, offsets, physical_ids);
}

void BalancedDispatcher::MapTokens(std::span<const int64_t> topk_ids,
                                   std::span<const int64_t> offsets,
                                   std::span<int64_t> physical_ids) {
  EPLB_CHECK_MSG(offsets.size() == static_cast<size_t>(num_experts_),
                 "BalancedDispatcher: offsets must have E entries");
  Map(topk_ids, offsets, physical_ids);
}

void GlobalCountsAndOffsets(std::span<const int64_t> rank_counts, int rank,
                            std::span<int64_t> counts,
                            std::span<int64_t> offsets) {
  const size_t num_experts = counts.size();
  EPLB_CHECK_MSG(num_experts > 0 && offsets.size() == num_experts &&
                     rank_counts.size() % num_experts == 0,
                 "GlobalCountsAndOffsets: rank_counts must be [S][E]");
  const size_t num_sources = rank_counts.size() / num_experts;
  EPLB_CHECK_MSG(rank >= 0 && static_cast<size_t>(rank) < num_sources,
                 "GlobalCountsAndOffsets: rank out of range");
  std::fill(counts.begin(), counts.end(), 0);
  for (size_t s = 0; s < num_sources; ++s) {
    if (s == static_cast<size_t>(rank)) {
      std::copy(counts.begin(), counts.end(), offsets.begin());
    }
    const int64_t* row = rank_counts.data() + s * num_experts;
    for (size_t e = 0; e < num_experts; ++e) counts[e] += row[e];
  }
}

}  // namespace eplb
