#include "policy/default_eplb.h"

#include <algorithm>
#include <numeric>

#include "eplb/status.h"
#include "policy/algorithms.h"
#include "policy/layer_policy.h"
#include "policy/policies.h"

namespace eplb::policy {

Packing BalancedPacking(std::span<const double> weight, int num_packs,
                        std::span<const int32_t> keys) {
  const int n = static_cast<int>(weight.size());
  EPLB_CHECK(num_packs > 0 && n % num_packs == 0);
  const int per_pack = n / num_packs;
  Packing out{std::vector<int32_t>(n), std::vector<int32_t>(n, 0)};
  if (per_pack == 1) {  // One item a pack: no co-location possible.
    std::iota(out.pack.begin(), out.pack.end(), 0);
    return out;
  }
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return weight[a] > weight[b]; });
  std::vector<double> pack_weight(num_packs, 0.0);
  std::vector<int32_t> pack_items(num_packs, 0);
  // [pack][key]: keys held by each pack, for the co-location check.
  const int num_keys =
      keys.empty() ? 0 : *std::max_element(keys.begin(), keys.end()) + 1;
  std::vector<char> pack_keys(static_cast<size_t>(num_packs) * num_keys, 0);
  // The packs with room, lightest on top (lowest index on ties); packs
  // holding the item's key are set aside while the heap is searched, so
  // each item costs O(log packs) plus the packs it clashes with.
  RankHeap heap;
  heap.Reset(num_packs);
  for (int32_t item : order) {
    const int best = heap.SeekTop([&](int p) {
      return !keys.empty() &&
             pack_keys[static_cast<size_t>(p) * num_keys + keys[item]];
    });
    // Every pack with room holds the key: the lightest of them.
    const int p = best >= 0 ? best : heap.first_seen();
    out.pack[item] = p;
    out.rank_in_pack[item] = pack_items[p]++;
    pack_weight[p] += weight[item];
    if (!keys.empty())
      pack_keys[static_cast<size_t>(p) * num_keys + keys[item]] = 1;
    if (best >= 0) {
      heap.TakeTop(pack_weight[p], pack_items[p] < per_pack);
    } else {
      heap.Restore(p);
      if (pack_items[p] < per_pack) heap.Push(pack_weight[p], p);
    }
  }
  return out;
}

Replication ReplicateExperts(std::span<const double> weight, int num_phy,
                             int max_count) {
  const int n = static_cast<int>(weight.size());
  EPLB_CHECK(n <= num_phy && static_cast<int64_t>(n) * max_count >= num_phy);
  Replication out{std::vector<int32_t>(num_phy), std::vector<int32_t>(n, 1)};
  std::iota(out.phy2log.begin(), out.phy2log.begin() + n, 0);
  // The expert with the largest share weight / count on top (lowest id on
  // ties); one that reaches max_count leaves the heap.
  struct Entry {
    double share;
    int32_t expert;
  };
  auto lower = [](const Entry& a, const Entry& b) {
    return a.share < b.share || (a.share == b.share && a.expert > b.expert);
  };
  std::vector<Entry> heap;
  if (max_count > 1) {
    for (int e = 0; e < n; ++e) heap.push_back({weight[e], e});
  }
  std::make_heap(heap.begin(), heap.end(), lower);
  for (int i = n; i < num_phy; ++i) {
    std::pop_heap(heap.begin(), heap.end(), lower);
    const int best = heap.back().expert;
    heap.pop_back();
    out.phy2log[i] = best;
    if (++out.count[best] < max_count) {
      heap.push_back({weight[best] / out.count[best], best});
      std::push_heap(heap.begin(), heap.end(), lower);
    }
  }
  return out;
}

namespace {

std::vector<int32_t> Inverse(std::span<const int32_t> perm) {
  std::vector<int32_t> inv(perm.size());
  for (size_t i = 0; i < perm.size(); ++i)
    inv[perm[i]] = static_cast<int32_t>(i);
  return inv;
}

}  // namespace

std::vector<int32_t> DeepSeekRebalanceLayer(std::span<const double> weight,
                                            int num_slots, int num_groups,
                                            int num_nodes, int num_ranks) {
  const int num_experts = static_cast<int>(weight.size());
  if (num_nodes <= 1 || num_groups % num_nodes != 0) {
    num_groups = 1;
    num_nodes = 1;
  }
  EPLB_CHECK(num_experts % num_groups == 0 && num_slots % num_ranks == 0 &&
             num_ranks % num_nodes == 0);
  const int group_size = num_experts / num_groups;
  const int groups_per_node = num_groups / num_nodes;
  const int experts_per_node = num_experts / num_nodes;
  const int slots_per_node = num_slots / num_nodes;
  const int ranks_per_node = num_ranks / num_nodes;
  const int slots_per_rank = num_slots / num_ranks;

  // Step 1: pack expert groups onto nodes by group weight.
  std::vector<double> group_weight(num_groups, 0.0);
  for (int e = 0; e < num_experts; ++e)
    group_weight[e / group_size] += weight[e];
  const Packing groups = BalancedPacking(group_weight, num_nodes);
  std::vector<int32_t> log2mlog(num_experts);
  for (int e = 0; e < num_experts; ++e) {
    const int g = e / group_size;
    log2mlog[e] = (groups.pack[g] * groups_per_node + groups.rank_in_pack[g]) *
                      group_size +
                  e % group_size;
  }
  const std::vector<int32_t> mlog2log = Inverse(log2mlog);

  std::vector<int32_t> phy2log(num_slots);
  std::vector<double> node_weight(experts_per_node);
  std::vector<double> phy_weight(slots_per_node);
  for (int node = 0; node < num_nodes; ++node) {
    // Step 2: replicate inside the node, at most one replica per rank.
    for (int j = 0; j < experts_per_node; ++j) {
      node_weight[j] = weight[mlog2log[node * experts_per_node + j]];
    }
    const Replication rep =
        ReplicateExperts(node_weight, slots_per_node, ranks_per_node);
    // Step 3: pack the replicas onto the node's ranks.
    for (int p = 0; p < slots_per_node; ++p) {
      phy_weight[p] = node_weight[rep.phy2log[p]] / rep.count[rep.phy2log[p]];
    }
    const Packing packs =
        BalancedPacking(phy_weight, ranks_per_node, rep.phy2log);
    for (int p = 0; p < slots_per_node; ++p) {
      const int local = packs.pack[p] * slots_per_rank + packs.rank_in_pack[p];
      phy2log[node * slots_per_node + local] =
          mlog2log[node * experts_per_node + rep.phy2log[p]];
    }
  }
  return phy2log;
}

}  // namespace eplb::policy

// Policy 1: DeepSeek's algorithm per layer, then slot keeping (by the frame).
namespace eplb::policy {
namespace {

class DefaultEplbPolicy final : public LayerPolicy {
 public:
  std::string_view name() const override { return "default"; }

 protected:
  Status Begin(const PolicyInput& input, const PolicyOptions& options,
               std::vector<std::string>* notes) override {
    const Topology& t = input.topology;
    const int groups = options.num_groups;
    const int e = input.current->num_experts();
    num_groups_ = 1;
    num_nodes_ = 1;
    if (t.num_nodes() <= 1) return Status::Ok();
    if (groups < 1 || e % groups != 0) {
      notes->push_back("hierarchical policy needs groups dividing experts (" +
                       std::to_string(e) + " % " + std::to_string(groups) +
                       " != 0); falling back to the global policy");
    } else if (groups % t.num_nodes() != 0) {
      notes->push_back("hierarchical policy needs nodes dividing groups (" +
                       std::to_string(groups) + " % " +
                       std::to_string(t.num_nodes()) +
                       " != 0); falling back to the global policy");
    } else if (t.slots_per_rank > e / t.num_nodes()) {
      notes->push_back(
          "hierarchical policy needs slots_per_rank <= experts per node (" +
          std::to_string(t.slots_per_rank) + " > " + std::to_string(e) + " / " +
          std::to_string(t.num_nodes()) +
          "); falling back to the global policy");
    } else {
      num_groups_ = groups;
      num_nodes_ = t.num_nodes();
    }
    return Status::Ok();
  }

  std::vector<int32_t> PlanLayer(const LayerContext& ctx) override {
    return DeepSeekRebalanceLayer(ctx.load, ctx.topology->num_slots(),
                                  num_groups_, num_nodes_,
                                  ctx.topology->num_ranks);
  }

 private:
  int num_groups_ = 1;
  int num_nodes_ = 1;
};

}  // namespace

std::unique_ptr<Policy> NewDefaultEplbPolicy() {
  return std::make_unique<DefaultEplbPolicy>();
}

}  // namespace eplb::policy
