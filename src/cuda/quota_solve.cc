// The host parts of the device quota solver (quota_solve.h): the graph a
// placement gives, and the phases run in plain loops.
#include "cuda/quota_solve.h"

#include <algorithm>
#include <string>
#include <vector>

namespace eplb::cuda::internal {

Status BuildQuotaGraph(std::span<const int32_t> layer, const QuotaGraph& shape,
                       int slots_per_rank, int32_t* g) {
  const int num_experts = shape.num_experts;
  const int k = slots_per_rank;
  if (layer.size() != static_cast<size_t>(shape.num_slots)) {
    return InvalidArgumentError(
        "DeviceQuotaSolver: placement of " + std::to_string(layer.size()) +
        " slots: must have " + std::to_string(shape.num_slots));
  }
  // Replica lists, ascending physical id (a counting sort), as the host.
  std::vector<int32_t> begin(num_experts + 1, 0), replicas(layer.size());
  for (size_t p = 0; p < layer.size(); ++p) {
    const int32_t e = layer[p];
    if (e < 0 || e >= num_experts) {
      return InvalidArgumentError("DeviceQuotaSolver: slot " +
                                  std::to_string(p) + " holds expert " +
                                  std::to_string(e) + ": out of range");
    }
    ++begin[e + 1];
  }
  for (int e = 0; e < num_experts; ++e) {
    if (begin[e + 1] == 0) {
      return InvalidArgumentError("DeviceQuotaSolver: expert " +
                                  std::to_string(e) + " has no replica");
    }
    begin[e + 1] += begin[e];
  }
  std::vector<int32_t> at(begin.begin(), begin.end() - 1);
  for (size_t p = 0; p < layer.size(); ++p) {
    replicas[at[layer[p]]++] = static_cast<int32_t>(p);
  }
  int nodes = 0, edges = 0;
  for (int e = 0; e < num_experts; ++e) {
    if (begin[e + 1] - begin[e] == 1) continue;
    g[shape.node_expert + nodes] = e;
    g[shape.node_edge_begin + nodes] = edges;
    for (int32_t i = begin[e]; i < begin[e + 1]; ++i) {
      const int32_t rank = replicas[i] / k;
      if (i > begin[e] && replicas[i - 1] / k == rank) {
        return InvalidArgumentError(
            "DeviceQuotaSolver: expert " + std::to_string(e) +
            " appears twice on rank " + std::to_string(rank));
      }
      g[shape.edge_slot + edges] = replicas[i];
      g[shape.edge_node + edges] = nodes;
      g[shape.edge_rank + edges] = rank;
      ++edges;
    }
    ++nodes;
  }
  g[shape.node_edge_begin + nodes] = edges;
  g[shape.num_nodes] = nodes;
  int fixed = 0;
  for (int r = 0, p = 0; r < shape.num_ranks; ++r) {
    g[shape.fixed_begin + r] = fixed;
    for (int j = 0; j < k; ++j, ++p) {
      const int32_t e = layer[p];
      if (begin[e + 1] - begin[e] > 1) continue;
      g[shape.fixed_slot + fixed] = p;
      g[shape.fixed_expert + fixed] = e;
      ++fixed;
    }
  }
  g[shape.fixed_begin + shape.num_ranks] = fixed;
  // Edges by rank, ascending edge id.
  int32_t* rank_begin = g + shape.rank_edge_begin;
  std::fill(rank_begin, rank_begin + shape.num_ranks + 1, 0);
  for (int j = 0; j < edges; ++j) ++rank_begin[g[shape.edge_rank + j] + 1];
  for (int r = 0; r < shape.num_ranks; ++r) rank_begin[r + 1] += rank_begin[r];
  std::vector<int32_t> fill(rank_begin, rank_begin + shape.num_ranks);
  for (int j = 0; j < edges; ++j) {
    g[shape.rank_edges + fill[g[shape.edge_rank + j]]++] = j;
  }
  return Status::Ok();
}

int64_t SolveQuotasOnHost(const int32_t* g, const QuotaGraph& s,
                          const QuotaScratch& w, const int64_t* counts,
                          int64_t* slot_quota) {
  int64_t total = 0;
  bool negative = false;
  for (int e = 0; e < s.num_experts; ++e) {
    total += counts[e];
    negative |= counts[e] < 0;
  }
  if (negative) {
    std::fill(slot_quota, slot_quota + s.num_slots, 0);
    return -1;
  }
  int64_t cap = (total + s.num_ranks - 1) / s.num_ranks;
  for (int r = 0; r < s.num_ranks; ++r) {
    cap = QuotaMax(cap, QuotaRankBase(g, s, counts, r, w));
  }
  const int num_nodes = g[s.num_nodes];
  int64_t unplaced = 0;
  for (int n = 0; n < num_nodes; ++n) {
    cap = QuotaMax(cap, QuotaNodeBound(g, s, counts, n, w));
    unplaced += w.need[n];
  }
  if (QuotaFlow(g, s, w, cap, unplaced) < 0) {
    std::fill(slot_quota, slot_quota + s.num_slots, 0);
    return -1;
  }
  for (int32_t i = 0; i < g[s.fixed_begin + s.num_ranks]; ++i) {
    QuotaFixedSlot(g, s, counts, i, slot_quota);
  }
  for (int32_t j = 0; j < g[s.node_edge_begin + num_nodes]; ++j) {
    QuotaEdgeSlot(g, s, j, w, slot_quota);
  }
  int64_t max_load = 0;
  for (int r = 0; r < s.num_ranks; ++r)
    max_load = QuotaMax(max_load, w.load[r]);
  return max_load;
}

}  // namespace eplb::cuda::internal
