#include "eplb/placement.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <string_view>

#include "eplb/load.h"

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

// Invariants 1-2 and id range for one layer; appends to `out`. A second
// replica on a rank is a violation under MapTarget::kVllmAscend only.
void CheckLayer(const Placement& p, int l, MapTarget target,
                std::vector<Violation>* out) {
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
      if (seen_rank[e] == r && target == MapTarget::kVllmAscend) {
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

std::string_view MapTargetName(MapTarget target) {
  switch (target) {
    case MapTarget::kVllmAscend:
      return "vllm-ascend";
    case MapTarget::kSglang:
      return "sglang";
  }
  return "unknown";
}

StatusOr<MapTarget> ParseMapTarget(std::string_view name) {
  for (const MapTarget target : {MapTarget::kVllmAscend, MapTarget::kSglang}) {
    if (name == MapTargetName(target)) return target;
  }
  return InvalidArgumentError("map target '" + std::string(name) +
                              "': unknown (valid: vllm-ascend, sglang)");
}

std::vector<Violation> CheckPlacement(const Placement& placement,
                                      MapTarget target) {
  std::vector<Violation> out;
  if (placement.num_experts() > placement.num_slots()) {
    out.push_back({-1, -1, -1,
                   std::to_string(placement.num_experts()) +
                       " experts do not fit in " +
                       std::to_string(placement.num_slots()) + " slots"});
  }
  for (int l = 0; l < placement.num_layers(); ++l) {
    CheckLayer(placement, l, target, &out);
  }
  return out;
}

std::vector<int> ColocatedLayers(const Placement& placement) {
  std::vector<int> layers;
  const int e_count = placement.num_experts();
  std::vector<int> seen_rank(e_count);
  for (int l = 0; l < placement.num_layers(); ++l) {
    std::fill(seen_rank.begin(), seen_rank.end(), -1);
    bool colocated = false;
    for (int r = 0; r < placement.num_ranks() && !colocated; ++r) {
      for (int s = 0; s < placement.slots_per_rank(); ++s) {
        const int32_t e = placement.at(l, r, s);
        if (e < 0 || e >= e_count) continue;
        if (seen_rank[e] == r) {
          colocated = true;
          break;
        }
        seen_rank[e] = r;
      }
    }
    if (colocated) layers.push_back(l);
  }
  return layers;
}

std::string ColocationWarning(std::span<const int> layers) {
  if (layers.empty()) return "";
  constexpr size_t kMaxNamed = 16;
  std::string out = layers.size() == 1 ? "layer " : "layers ";
  for (size_t i = 0; i < layers.size() && i < kMaxNamed; ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(layers[i]);
  }
  if (layers.size() > kMaxNamed) {
    out += " and " + std::to_string(layers.size() - kMaxNamed) + " more";
  }
  out +=
      ": an expert twice on one rank (DeepSeek's and SGLang's planners allow "
      "it; eplb's policies and vllm-ascend do not)";
  return out;
}

namespace {

// One layer's state during a repair: the slots, how many replicas of each
// expert every rank holds, and (with a load) every rank's load.
class LayerRepair {
 public:
  LayerRepair(Placement* placement, int layer, std::span<const double> load)
      : p_(*placement),
        layer_(layer),
        num_ranks_(placement->num_ranks()),
        k_(placement->slots_per_rank()),
        num_experts_(placement->num_experts()),
        holds_(static_cast<size_t>(num_ranks_) * num_experts_, 0),
        share_(num_experts_, 0.0),
        rank_load_(num_ranks_, 0.0),
        has_load_(!load.empty()) {
    std::vector<int> count(num_experts_, 0);
    for (int r = 0; r < num_ranks_; ++r) {
      for (int s = 0; s < k_; ++s) {
        const int32_t e = p_.at(layer_, r, s);
        ++Holds(r, e);
        ++count[e];
      }
    }
    if (has_load_) {
      for (int e = 0; e < num_experts_; ++e) share_[e] = load[e] / count[e];
      for (int r = 0; r < num_ranks_; ++r) {
        for (int s = 0; s < k_; ++s)
          rank_load_[r] += share_[p_.at(layer_, r, s)];
      }
    }
  }

  // Swaps duplicates away until none is left; returns how many duplicates
  // there were and adds the swaps to `*swaps`. Precondition: no expert has
  // more replicas than there are ranks.
  StatusOr<int> Run(int* swaps) {
    int duplicates = 0;
    for (int r = 0; r < num_ranks_; ++r) {
      for (int s = 0; s < k_; ++s) {
        if (IsDuplicate(r, s)) ++duplicates;
      }
    }
    int left = duplicates;
    while (left > 0) {
      bool moved = false;
      for (int r = 0; r < num_ranks_ && !moved; ++r) {
        for (int s = 0; s < k_ && !moved; ++s) {
          if (!IsDuplicate(r, s)) continue;
          const int partner = BestPartner(r, s);
          if (partner < 0) continue;
          left -= Swap(r, s, partner);
          ++*swaps;
          moved = true;
        }
      }
      if (!moved) {
        return InternalError("layer " + std::to_string(layer_) +
                             ": no swap moves any of its " +
                             std::to_string(left) + " duplicates");
      }
    }
    return duplicates;
  }

 private:
  int& Holds(int r, int32_t e) {
    return holds_[static_cast<size_t>(r) * num_experts_ + e];
  }

  // Slot s of rank r holds a replica that an earlier slot of r also holds.
  bool IsDuplicate(int r, int s) const {
    const int32_t e = p_.at(layer_, r, s);
    for (int before = 0; before < s; ++before) {
      if (p_.at(layer_, r, before) == e) return true;
    }
    return false;
  }

  // The best physical id to swap duplicate (r, s) with, or -1 when none
  // keeps both ranks free of duplicates.
  int BestPartner(int r, int s) {
    const int32_t e = p_.at(layer_, r, s);
    // The three busiest ranks: the busiest rank other than two given ones is
    // among them.
    std::array<int, 3> top = {-1, -1, -1};
    if (has_load_) {
      for (int q = 0; q < num_ranks_; ++q) {
        int carry = q;  // Inserted into `top`, kept sorted busiest first.
        for (int& t : top) {
          if (t < 0) {
            t = carry;
            break;
          }
          if (rank_load_[carry] > rank_load_[t]) std::swap(t, carry);
        }
      }
    }
    struct Score {
      double peak = 0;     // The busiest rank's load after the swap.
      double pair = 0;     // The busier of the two swapped ranks after it.
      bool single = true;  // The partner is not itself a duplicate.
    };
    // Loads differ from their sums in other orders by rounding only.
    double scale = 0;
    for (const double v : rank_load_) scale = std::max(scale, v);
    const double eps = 1e-9 * scale;
    auto better = [eps](const Score& a, const Score& b) {
      if (a.peak < b.peak - eps) return true;
      if (a.peak > b.peak + eps) return false;
      if (a.pair < b.pair - eps) return true;
      if (a.pair > b.pair + eps) return false;
      return !a.single && b.single;
    };
    int best = -1;
    Score best_score;
    for (int r2 = 0; r2 < num_ranks_; ++r2) {
      if (r2 == r || Holds(r2, e) > 0) continue;
      for (int s2 = 0; s2 < k_; ++s2) {
        const int32_t f = p_.at(layer_, r2, s2);
        if (Holds(r, f) > 0) continue;
        Score score;
        score.single = Holds(r2, f) < 2;
        if (has_load_) {
          const double load_r = rank_load_[r] - share_[e] + share_[f];
          const double load_r2 = rank_load_[r2] - share_[f] + share_[e];
          score.pair = std::max(load_r, load_r2);
          score.peak = score.pair;
          for (const int t : top) {
            if (t >= 0 && t != r && t != r2) {
              score.peak = std::max(score.peak, rank_load_[t]);
              break;
            }
          }
        }
        if (best < 0 || better(score, best_score)) {
          best = r2 * k_ + s2;
          best_score = score;
        }
      }
    }
    return best;
  }

  // Exchanges slot (r, s) with physical id `partner`; returns how many
  // duplicates that removed (1, or 2 when the partner was one too).
  int Swap(int r, int s, int partner) {
    const int r2 = partner / k_;
    const int s2 = partner % k_;
    const int32_t e = p_.at(layer_, r, s);
    const int32_t f = p_.at(layer_, r2, s2);
    const int fixed = Holds(r2, f) > 1 ? 2 : 1;
    p_.set(layer_, r, s, f);
    p_.set(layer_, r2, s2, e);
    --Holds(r, e);
    ++Holds(r, f);
    --Holds(r2, f);
    ++Holds(r2, e);
    if (has_load_) {
      rank_load_[r] += share_[f] - share_[e];
      rank_load_[r2] += share_[e] - share_[f];
    }
    return fixed;
  }

  Placement& p_;
  const int layer_;
  const int num_ranks_;
  const int k_;
  const int num_experts_;
  std::vector<int> holds_;         // [R][E]: replicas of e on r.
  std::vector<double> share_;      // [E]: load of one replica of e.
  std::vector<double> rank_load_;  // [R].
  const bool has_load_;
};

// InvalidArgument naming the first expert with more replicas than ranks.
Status CheckReplicasFitRanks(const Placement& placement) {
  std::vector<int> count(placement.num_experts());
  for (int l = 0; l < placement.num_layers(); ++l) {
    std::fill(count.begin(), count.end(), 0);
    for (const int32_t e : placement.layer(l)) ++count[e];
    for (int e = 0; e < placement.num_experts(); ++e) {
      if (count[e] > placement.num_ranks()) {
        return InvalidArgumentError("layer " + std::to_string(l) + ": expert " +
                                    std::to_string(e) + " has " +
                                    std::to_string(count[e]) + " replicas on " +
                                    std::to_string(placement.num_ranks()) +
                                    " ranks, so two of them must share a rank");
      }
    }
  }
  return Status::Ok();
}

}  // namespace

// Why a movable duplicate always exists: let rank r hold expert e twice.
// Some rank t lacks e (e has at most R replicas, two of them on r). If no
// swap moves this duplicate, every slot of every such t holds an expert of
// r other than e: t's K slots hold at most K - 2 distinct experts, so t
// holds some g twice, with t's experts a strict subset of r's. Repeating
// the argument from t gives ranks with ever fewer distinct experts, which
// cannot go on: some duplicate along the way has a swap.
StatusOr<ColocationRepair> RepairColocated(Placement* placement,
                                           const LoadMatrix* load) {
  EPLB_RETURN_IF_ERROR(
      ViolationsToStatus(CheckPlacement(*placement, MapTarget::kSglang)));
  if (load != nullptr && (load->num_layers() != placement->num_layers() ||
                          load->num_experts() != placement->num_experts())) {
    return InvalidArgumentError(
        "the load has " + std::to_string(load->num_layers()) + " layers x " +
        std::to_string(load->num_experts()) + " experts but the map has " +
        std::to_string(placement->num_layers()) + " x " +
        std::to_string(placement->num_experts()));
  }
  if (load != nullptr) EPLB_RETURN_IF_ERROR(ValidateLoad(*load));
  EPLB_RETURN_IF_ERROR(CheckReplicasFitRanks(*placement));
  Placement repaired = *placement;
  ColocationRepair report;
  for (const int l : ColocatedLayers(repaired)) {
    LayerRepair layer(
        &repaired, l,
        load != nullptr ? load->row(l) : std::span<const double>());
    EPLB_ASSIGN_OR_RETURN(const int duplicates, layer.Run(&report.swaps));
    report.duplicates += duplicates;
    report.layers.push_back(l);
  }
  *placement = std::move(repaired);
  return report;
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
  std::vector<int32_t> scratch(3 * static_cast<size_t>(slots_per_rank));
  KeepSlots(current_layer, plan_layer, num_ranks, slots_per_rank, scratch);
}

void KeepSlots(std::span<const int32_t> current_layer,
               std::span<int32_t> plan_layer, int num_ranks, int slots_per_rank,
               std::span<int32_t> scratch) {
  const int k = slots_per_rank;
  const std::span<int32_t> planned = scratch.first(k);
  const std::span<int32_t> placed = scratch.subspan(k, k);  // planned[i] put.
  const std::span<int32_t> taken = scratch.subspan(2 * k, k);  // Slot filled.
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
