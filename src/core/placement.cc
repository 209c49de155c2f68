#include "eplb/placement.h"

#include <algorithm>
#include <string>

namespace eplb {

Placement::Placement(int num_layers, int num_ranks, int slots_per_rank,
                     int num_experts, int32_t fill)
    : num_layers_(num_layers),
      num_ranks_(num_ranks),
      slots_per_rank_(slots_per_rank),
      num_experts_(num_experts),
      data_(static_cast<size_t>(num_layers) * num_ranks * slots_per_rank,
            fill) {
  EPLB_CHECK(num_layers >= 0 && num_ranks >= 0 && slots_per_rank >= 0 &&
             num_experts >= 0);
}

Placement Placement::Initial(int num_layers, int num_experts,
                             const Topology& topology) {
  EPLB_CHECK(num_experts > 0 && topology.num_slots() >= num_experts);
  Placement p(num_layers, topology.num_ranks, topology.slots_per_rank,
              num_experts);
  for (int l = 0; l < num_layers; ++l) {
    std::span<int32_t> layer = p.mutable_layer(l);
    for (int i = 0; i < p.num_slots(); ++i) {
      layer[i] = i < num_experts ? i : (i - num_experts) % num_experts;
    }
  }
  return p;
}

LayerRouting BuildLayerRouting(std::span<const int32_t> layer, int num_experts,
                               const Topology& topology) {
  const int num_ranks = topology.num_ranks;
  const int k = topology.slots_per_rank;
  EPLB_CHECK(static_cast<int>(layer.size()) == num_ranks * k);
  LayerRouting out;
  out.num_ranks = num_ranks;
  out.slots_per_rank = k;
  out.num_experts = num_experts;
  out.replica_count.assign(num_experts, 0);
  out.expert_map.assign(static_cast<size_t>(num_ranks) * num_experts, -1);
  out.log2phy.assign(static_cast<size_t>(num_ranks) * num_experts, -1);
  for (int phy = 0; phy < num_ranks * k; ++phy) {
    const int32_t e = layer[phy];
    EPLB_CHECK(e >= -1 && e < num_experts);
    if (e < 0) continue;
    ++out.replica_count[e];
    int32_t& local =
        out.expert_map[static_cast<size_t>(phy / k) * num_experts + e];
    if (local < 0) local = phy % k;  // Lowest slot if (invalidly) duplicated.
  }
  out.replica_offsets.assign(num_experts + 1, 0);
  for (int e = 0; e < num_experts; ++e) {
    out.replica_offsets[e + 1] = out.replica_offsets[e] + out.replica_count[e];
  }
  out.replicas.assign(out.replica_offsets[num_experts], 0);
  std::vector<int32_t> fill(out.replica_offsets.begin(),
                            out.replica_offsets.end() - 1);
  for (int phy = 0; phy < num_ranks * k; ++phy) {
    const int32_t e = layer[phy];
    if (e >= 0) out.replicas[fill[e]++] = phy;  // Ascending by construction.
  }
  // log2phy: own rank, else own node, else all; candidate (r + e) % n.
  std::vector<int32_t> candidates;
  candidates.reserve(num_ranks * k);
  for (int r = 0; r < num_ranks; ++r) {
    const int node = topology.NodeOf(r);
    for (int e = 0; e < num_experts; ++e) {
      std::span<const int32_t> reps = out.ReplicasOf(e);
      if (reps.empty()) continue;
      candidates.clear();
      for (int32_t phy : reps) {
        if (phy / k == r) candidates.push_back(phy);
      }
      if (candidates.empty()) {
        for (int32_t phy : reps) {
          if (topology.NodeOf(phy / k) == node) candidates.push_back(phy);
        }
      }
      std::span<const int32_t> pool =
          candidates.empty() ? reps : std::span<const int32_t>(candidates);
      out.log2phy[static_cast<size_t>(r) * num_experts + e] =
          pool[static_cast<size_t>(r + e) % pool.size()];
    }
  }
  return out;
}

std::string Violation::ToString() const {
  std::string out;
  auto part = [&out](const char* name, int value) {
    if (value < 0) return;
    if (!out.empty()) out += ", ";
    out += name;
    out += ' ';
    out += std::to_string(value);
  };
  part("layer", layer);
  part("device", rank);
  part("slot", slot);
  if (!out.empty()) out += ": ";
  out += message;
  return out;
}

namespace {

// Invariants 1-2 and id range for one layer; appends to `out`.
void CheckLayer(const Placement& p, int l, std::vector<Violation>* out) {
  const int e_count = p.num_experts();
  const int k = p.slots_per_rank();
  std::vector<int> seen_slot(e_count, -1);  // Slot of e on the current rank.
  std::vector<int> seen_rank(e_count, -1);
  std::vector<char> placed(e_count, 0);
  for (int r = 0; r < p.num_ranks(); ++r) {
    for (int s = 0; s < k; ++s) {
      const int32_t e = p.at(l, r, s);
      if (e < 0 || e >= e_count) {
        out->push_back({l, r, s,
                        "expert " + std::to_string(e) + " out of range [0, " +
                            std::to_string(e_count) + ")"});
        continue;
      }
      placed[e] = 1;
      if (seen_rank[e] == r) {
        out->push_back({l, r, s,
                        "expert " + std::to_string(e) +
                            " appears twice on the device (slots " +
                            std::to_string(seen_slot[e]) + " and " +
                            std::to_string(s) + ")"});
        continue;
      }
      seen_rank[e] = r;
      seen_slot[e] = s;
    }
  }
  for (int e = 0; e < e_count; ++e) {
    if (!placed[e]) {
      out->push_back(
          {l, -1, -1, "expert " + std::to_string(e) + " is on no device"});
    }
  }
}

}  // namespace

std::vector<Violation> CheckPlacement(const Placement& placement) {
  std::vector<Violation> out;
  if (placement.num_experts() > placement.num_slots()) {
    out.push_back({-1, -1, -1,
                   std::to_string(placement.num_experts()) +
                       " experts do not fit in " +
                       std::to_string(placement.num_slots()) + " slots"});
  }
  for (int l = 0; l < placement.num_layers(); ++l)
    CheckLayer(placement, l, &out);
  return out;
}

std::vector<Violation> CheckPlan(const Placement& current,
                                 const Placement& plan,
                                 int max_receives_per_rank) {
  if (current.num_layers() != plan.num_layers() ||
      current.num_ranks() != plan.num_ranks() ||
      current.slots_per_rank() != plan.slots_per_rank() ||
      current.num_experts() != plan.num_experts()) {
    return {{-1, -1, -1,
             "plan shape [" + std::to_string(plan.num_layers()) + "][" +
                 std::to_string(plan.num_ranks()) + "][" +
                 std::to_string(plan.slots_per_rank()) + "] with " +
                 std::to_string(plan.num_experts()) +
                 " experts does not match the current placement [" +
                 std::to_string(current.num_layers()) + "][" +
                 std::to_string(current.num_ranks()) + "][" +
                 std::to_string(current.slots_per_rank()) + "] with " +
                 std::to_string(current.num_experts()) + " experts"}};
  }
  std::vector<Violation> out = CheckPlacement(plan);
  const int k = plan.slots_per_rank();
  for (int l = 0; l < plan.num_layers(); ++l) {
    for (int r = 0; r < plan.num_ranks(); ++r) {
      int receives = 0;
      for (int s = 0; s < k; ++s) {
        const int32_t e = plan.at(l, r, s);
        if (e == current.at(l, r, s)) continue;
        ++receives;
        for (int old = 0; old < k; ++old) {
          if (current.at(l, r, old) == e) {
            out.push_back({l, r, s,
                           "expert " + std::to_string(e) +
                               " stays on the device " +
                               "but moves from slot " + std::to_string(old)});
            break;
          }
        }
      }
      if (max_receives_per_rank > 0 && receives > max_receives_per_rank) {
        out.push_back({l, r, -1,
                       std::to_string(receives) + " receives exceed " +
                           "max_receives_per_rank = " +
                           std::to_string(max_receives_per_rank)});
      }
    }
  }
  std::stable_sort(
      out.begin(), out.end(),
      [](const Violation& a, const Violation& b) { return a.layer < b.layer; });
  return out;
}

Status ViolationsToStatus(const std::vector<Violation>& violations) {
  if (violations.empty()) return Status::Ok();
  if (violations.size() == 1) {
    return InvalidArgumentError(violations[0].ToString());
  }
  return InvalidArgumentError(std::to_string(violations.size()) +
                              " problems; first: " + violations[0].ToString());
}

void KeepSlots(std::span<const int32_t> current_layer,
               std::span<int32_t> plan_layer, int num_ranks,
               int slots_per_rank) {
  const int k = slots_per_rank;
  std::vector<int32_t> planned(k);
  std::vector<char> placed(k);  // planned[i] already put in a slot.
  std::vector<char> taken(k);   // Slot s already filled.
  for (int r = 0; r < num_ranks; ++r) {
    std::span<const int32_t> cur = current_layer.subspan(r * k, k);
    std::span<int32_t> out = plan_layer.subspan(r * k, k);
    std::copy(out.begin(), out.end(), planned.begin());
    std::fill(placed.begin(), placed.end(), 0);
    std::fill(taken.begin(), taken.end(), 0);
    // Experts already on the rank keep their slot.
    for (int i = 0; i < k; ++i) {
      for (int s = 0; s < k; ++s) {
        if (!taken[s] && planned[i] >= 0 && cur[s] == planned[i]) {
          out[s] = planned[i];
          taken[s] = placed[i] = 1;
          break;
        }
      }
    }
    // The rest fill the free slots in planned order.
    int s = 0;
    for (int i = 0; i < k; ++i) {
      if (placed[i]) continue;
      while (taken[s]) ++s;
      out[s] = planned[i];
      taken[s] = 1;
    }
  }
}

int MaxReplicaCount(const Placement& placement) {
  int best = 0;
  std::vector<int> count(placement.num_experts());
  for (int l = 0; l < placement.num_layers(); ++l) {
    std::fill(count.begin(), count.end(), 0);
    for (int32_t e : placement.layer(l)) {
      if (e >= 0 && e < placement.num_experts())
        best = std::max(best, ++count[e]);
    }
  }
  return best;
}

}  // namespace eplb
