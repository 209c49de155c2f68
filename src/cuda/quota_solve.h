// The quota solver of DeviceQuotaSolver (eplb/cuda/dispatch.h) as phases
// that compile for both host and device: BalancedDispatcher::Quotas
// (src/core/dispatch.cc explains the algorithm) split into the parts a
// thread block runs in parallel (per rank, per replicated expert, per slot:
// independent work and order-free integer sums and maxima) and the flow
// search one thread walks. The kernel in quotas.cu runs the phases with
// barriers between them; SolveQuotasOnHost runs the same phases in plain
// loops, so a test without a GPU checks the port against the host's
// dispatcher slot for slot.
#ifndef EPLB_SRC_CUDA_QUOTA_SOLVE_H_
#define EPLB_SRC_CUDA_QUOTA_SOLVE_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "eplb/status.h"

#if defined(__CUDACC__)
#define EPLB_HOST_DEVICE __host__ __device__
#else
#define EPLB_HOST_DEVICE
#endif

namespace eplb::cuda::internal {

// A placement's quota graph in one int32 array: where each table starts.
// Built on the host by BuildQuotaGraph (the same tables, in the same order,
// as BalancedDispatcher::SetPlacement builds):
//  - fixed_*: the slots of experts with one replica, by rank (CSR);
//  - node_*: the replicated experts ("nodes"), ascending expert id, and
//    their edges (one per replica, ascending physical id);
//  - edge_*: each edge's node, rank and physical slot;
//  - rank_edge_begin / rank_edges: each rank's edges, ascending edge id;
//  - num_nodes: one int, the node count.
struct QuotaGraph {
  int num_experts = 0, num_ranks = 0, num_slots = 0;
  int fixed_begin = 0, fixed_slot = 0, fixed_expert = 0, node_expert = 0,
      node_edge_begin = 0, edge_node = 0, edge_rank = 0, edge_slot = 0,
      rank_edge_begin = 0, rank_edges = 0, num_nodes = 0, size = 0;

  QuotaGraph() = default;
  QuotaGraph(int e, int r, int s) : num_experts(e), num_ranks(r), num_slots(s) {
    int at = 0;
    auto take = [&at](int n) {
      const int here = at;
      at += n;
      return here;
    };
    fixed_begin = take(r + 1);
    fixed_slot = take(s);
    fixed_expert = take(s);
    node_expert = take(e);
    node_edge_begin = take(e + 1);
    edge_node = take(s);
    edge_rank = take(s);
    edge_slot = take(s);
    rank_edge_begin = take(r + 1);
    rank_edges = take(s);
    num_nodes = take(1);
    size = at;
  }
};

// Working arrays of one solve: int64 load [R], need [E], flow [S]; int32
// node_parent [E], rank_parent [R], queue [E], found [R].
struct QuotaScratch {
  int64_t *load, *need, *flow;
  int32_t *node_parent, *rank_parent, *queue, *found;
};

// Bytes of QuotaScratch for a shape, int64 part first.
inline size_t QuotaScratchWideBytes(const QuotaGraph& s) {
  return sizeof(int64_t) *
         (static_cast<size_t>(s.num_ranks) + s.num_experts + s.num_slots);
}
inline size_t QuotaScratchNarrowBytes(const QuotaGraph& s) {
  return sizeof(int32_t) * 2 *
         (static_cast<size_t>(s.num_experts) + s.num_ranks);
}
// Points `w` into `wide` (QuotaScratchWideBytes) and `narrow`.
EPLB_HOST_DEVICE inline QuotaScratch QuotaScratchAt(const QuotaGraph& s,
                                                    int64_t* wide,
                                                    int32_t* narrow) {
  QuotaScratch w{};
  w.load = wide;
  w.need = wide + s.num_ranks;
  w.flow = wide + s.num_ranks + s.num_experts;
  w.node_parent = narrow;
  w.rank_parent = narrow + s.num_experts;
  w.queue = narrow + s.num_experts + s.num_ranks;
  w.found = narrow + 2 * s.num_experts + s.num_ranks;
  return w;
}

// QuotaScratch's arrays on the host (SolveQuotasOnHost's).
class HostQuotaScratch {
 public:
  explicit HostQuotaScratch(const QuotaGraph& s)
      : wide_(QuotaScratchWideBytes(s) / sizeof(int64_t)),
        narrow_(QuotaScratchNarrowBytes(s) / sizeof(int32_t)),
        view_(QuotaScratchAt(s, wide_.data(), narrow_.data())) {}
  HostQuotaScratch(const HostQuotaScratch&) = delete;
  HostQuotaScratch& operator=(const HostQuotaScratch&) = delete;
  const QuotaScratch& view() const { return view_; }

 private:
  std::vector<int64_t> wide_;
  std::vector<int32_t> narrow_;
  QuotaScratch view_;
};

// Fills `graph` [shape.size] from `layer` [R*K] (physical id -> expert),
// validating it as BalancedDispatcher::SetPlacement does (InvalidArgument
// naming the slot, expert or rank instead of a crash).
Status BuildQuotaGraph(std::span<const int32_t> layer, const QuotaGraph& shape,
                       int slots_per_rank, int32_t* graph);

constexpr int32_t kQuotaUnseen = -2;  // Flow search: not reached.
constexpr int32_t kQuotaSource = -1;  // Flow search: a node with tokens left.

EPLB_HOST_DEVICE inline int64_t QuotaMin(int64_t a, int64_t b) {
  return a < b ? a : b;
}
EPLB_HOST_DEVICE inline int64_t QuotaMax(int64_t a, int64_t b) {
  return a < b ? b : a;
}

// Phase 1, per rank r: its fixed load (the tokens of its single-replica
// experts) into load[r]; returns it (a lower bound of the cap).
EPLB_HOST_DEVICE inline int64_t QuotaRankBase(const int32_t* g,
                                              const QuotaGraph& s,
                                              const int64_t* counts, int r,
                                              const QuotaScratch& w) {
  int64_t base = 0;
  for (int32_t i = g[s.fixed_begin + r]; i < g[s.fixed_begin + r + 1]; ++i) {
    base += counts[g[s.fixed_expert + i]];
  }
  w.load[r] = base;
  return base;
}

// Phase 2, per node n (after phase 1): need[n] = its tokens, its edges'
// flow 0; returns the node's own bound of the cap: its tokens plus its
// ranks' fixed loads, spread evenly over its replicas, rounded up.
EPLB_HOST_DEVICE inline int64_t QuotaNodeBound(const int32_t* g,
                                               const QuotaGraph& s,
                                               const int64_t* counts, int n,
                                               const QuotaScratch& w) {
  const int64_t need = counts[g[s.node_expert + n]];
  w.need[n] = need;
  int64_t tokens = need;
  const int32_t begin = g[s.node_edge_begin + n];
  const int32_t end = g[s.node_edge_begin + n + 1];
  for (int32_t j = begin; j < end; ++j) {
    tokens += w.load[g[s.edge_rank + j]];
    w.flow[j] = 0;
  }
  return (tokens + end - begin - 1) / (end - begin);
}

// One breadth-first search from every node with unplaced tokens, then every
// shortest augmenting path it found (BalancedDispatcher::Augment).
EPLB_HOST_DEVICE inline int64_t QuotaAugment(const int32_t* g,
                                             const QuotaGraph& s,
                                             const QuotaScratch& w,
                                             int64_t cap) {
  const int num_nodes = g[s.num_nodes];
  const int32_t* node_edge_begin = g + s.node_edge_begin;
  const int32_t* edge_rank = g + s.edge_rank;
  const int32_t* edge_node = g + s.edge_node;
  const int32_t* rank_edge_begin = g + s.rank_edge_begin;
  const int32_t* rank_edges = g + s.rank_edges;
  for (int n = 0; n < num_nodes; ++n) w.node_parent[n] = kQuotaUnseen;
  for (int r = 0; r < s.num_ranks; ++r) w.rank_parent[r] = kQuotaUnseen;
  int head = 0, tail = 0;
  for (int n = 0; n < num_nodes; ++n) {
    if (w.need[n] > 0) {
      w.node_parent[n] = kQuotaSource;
      w.queue[tail++] = n;
    }
  }
  int found = 0;
  while (head < tail && found == 0) {
    for (const int level_end = tail; head < level_end; ++head) {
      const int32_t n = w.queue[head];
      for (int32_t j = node_edge_begin[n]; j < node_edge_begin[n + 1]; ++j) {
        const int32_t r = edge_rank[j];
        if (w.rank_parent[r] != kQuotaUnseen) continue;
        w.rank_parent[r] = j;
        if (w.load[r] < cap) {
          w.found[found++] = r;
          continue;
        }
        for (int32_t i = rank_edge_begin[r]; i < rank_edge_begin[r + 1]; ++i) {
          const int32_t back = rank_edges[i];
          const int32_t node = edge_node[back];
          if (w.flow[back] > 0 && w.node_parent[node] == kQuotaUnseen) {
            w.node_parent[node] = back;
            w.queue[tail++] = node;
          }
        }
      }
    }
  }
  int64_t placed = 0;
  for (int f = 0; f < found; ++f) {
    const int32_t r = w.found[f];
    int64_t amount = cap - w.load[r];
    for (int32_t at = r;;) {
      const int32_t node = edge_node[w.rank_parent[at]];
      const int32_t back = w.node_parent[node];
      if (back == kQuotaSource) {
        amount = QuotaMin(amount, w.need[node]);
        break;
      }
      amount = QuotaMin(amount, w.flow[back]);
      at = edge_rank[back];
    }
    if (amount == 0) continue;
    w.load[r] += amount;
    for (int32_t at = r;;) {
      w.flow[w.rank_parent[at]] += amount;
      const int32_t node = edge_node[w.rank_parent[at]];
      const int32_t back = w.node_parent[node];
      if (back == kQuotaSource) {
        w.need[node] -= amount;
        break;
      }
      w.flow[back] -= amount;
      at = edge_rank[back];
    }
    placed += amount;
  }
  return placed;
}

// Phase 3, one thread (after phase 2): places the nodes' `unplaced` tokens
// from the lower bound `cap` upwards (direct fill, augmenting paths, the
// cut's bound). Returns the final cap, or -1 if the bound failed to rise
// (cannot happen; the host checks it).
EPLB_HOST_DEVICE inline int64_t QuotaFlow(const int32_t* g, const QuotaGraph& s,
                                          const QuotaScratch& w, int64_t cap,
                                          int64_t unplaced) {
  const int num_nodes = g[s.num_nodes];
  const int32_t* node_edge_begin = g + s.node_edge_begin;
  const int32_t* edge_rank = g + s.edge_rank;
  while (true) {
    for (int n = 0; n < num_nodes && unplaced > 0; ++n) {
      for (int32_t j = node_edge_begin[n];
           j < node_edge_begin[n + 1] && w.need[n] > 0; ++j) {
        const int32_t r = edge_rank[j];
        const int64_t x = QuotaMin(w.need[n], cap - w.load[r]);
        if (x <= 0) continue;
        w.flow[j] += x;
        w.load[r] += x;
        w.need[n] -= x;
        unplaced -= x;
      }
    }
    while (unplaced > 0) {
      const int64_t moved = QuotaAugment(g, s, w, cap);
      if (moved == 0) break;
      unplaced -= moved;
    }
    if (unplaced == 0) return cap;
    int64_t tokens = 0;
    int64_t ranks = 0;
    for (int r = 0; r < s.num_ranks; ++r) {
      if (w.rank_parent[r] == kQuotaUnseen) continue;
      tokens += w.load[r];
      ++ranks;
    }
    for (int n = 0; n < num_nodes; ++n) {
      if (w.node_parent[n] != kQuotaUnseen) tokens += w.need[n];
    }
    const int64_t next = (tokens + ranks - 1) / ranks;
    if (next <= cap) return -1;
    cap = next;
  }
}

// Phase 4, per fixed slot i (i < g[fixed_begin + R]): its quota is all its
// expert's tokens.
EPLB_HOST_DEVICE inline void QuotaFixedSlot(const int32_t* g,
                                            const QuotaGraph& s,
                                            const int64_t* counts, int32_t i,
                                            int64_t* slot_quota) {
  slot_quota[g[s.fixed_slot + i]] = counts[g[s.fixed_expert + i]];
}

// Phase 4, per edge j: its slot's quota is the edge's flow.
EPLB_HOST_DEVICE inline void QuotaEdgeSlot(const int32_t* g,
                                           const QuotaGraph& s, int32_t j,
                                           const QuotaScratch& w,
                                           int64_t* slot_quota) {
  slot_quota[g[s.edge_slot + j]] = w.flow[j];
}

// The phases in plain loops on the host (the kernel's reference): `counts`
// [E] -> `slot_quota` [S]; returns the largest rank load, or -1 (every quota
// 0) for a negative count.
int64_t SolveQuotasOnHost(const int32_t* g, const QuotaGraph& s,
                          const QuotaScratch& w, const int64_t* counts,
                          int64_t* slot_quota);

}  // namespace eplb::cuda::internal

#endif  // EPLB_SRC_CUDA_QUOTA_SOLVE_H_
