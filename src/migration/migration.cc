#include "eplb/migration.h"

#include <algorithm>
#include <string>

namespace eplb {
namespace {

// "3" or "3, 5 and 9".
std::string LayerList(const std::vector<int>& layers) {
  std::string out;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (i > 0) out += i + 1 == layers.size() ? " and " : ", ";
    out += std::to_string(layers[i]);
  }
  return out;
}

}  // namespace

std::vector<Transfer> PlanLayerTransfers(int layer,
                                         std::span<const int32_t> current,
                                         std::span<const int32_t> target,
                                         const Topology& t,
                                         int64_t real_expert_bytes) {
  const int k = t.slots_per_rank;
  const int num_slots = t.num_slots();
  int num_experts = 0;
  for (int32_t e : current) num_experts = std::max(num_experts, e + 1);
  // Holders of each expert in `current`: (rank, slot), ascending.
  std::vector<std::vector<std::pair<int, int>>> holders(num_experts);
  for (int phy = 0; phy < num_slots; ++phy) {
    if (current[phy] >= 0) holders[current[phy]].emplace_back(phy / k, phy % k);
  }
  std::vector<int> sends(t.num_ranks, 0);
  std::vector<int> staging(t.num_ranks, 0);
  std::vector<Transfer> out;
  for (int phy = 0; phy < num_slots; ++phy) {
    const int32_t e = target[phy];
    if (e == current[phy]) continue;
    const int r = phy / k;
    EPLB_CHECK(e >= 0 && e < num_experts && !holders[e].empty());
    // Own rank first, then the node, then anyone; fewest sends, lowest rank.
    int best = -1;
    int best_tier = 3;
    for (size_t i = 0; i < holders[e].size(); ++i) {
      const int h = holders[e][i].first;
      const int tier = h == r ? 0 : (t.NodeOf(h) == t.NodeOf(r) ? 1 : 2);
      if (best < 0 || tier < best_tier ||
          (tier == best_tier && tier > 0 &&
           sends[h] < sends[holders[e][best].first])) {
        best = static_cast<int>(i);
        best_tier = tier;
      }
    }
    const auto [src_rank, src_slot] = holders[e][best];
    const bool local = src_rank == r;
    if (!local) ++sends[src_rank];
    out.push_back(Transfer{.layer = layer,
                           .expert = e,
                           .src_rank = src_rank,
                           .src_slot = src_slot,
                           .dst_rank = r,
                           .dst_slot = phy % k,
                           .staging = staging[r]++,
                           .local = local,
                           .real_bytes = real_expert_bytes});
  }
  std::sort(out.begin(), out.end(), [](const Transfer& a, const Transfer& b) {
    if (a.src_rank != b.src_rank) return a.src_rank < b.src_rank;
    if (a.dst_rank != b.dst_rank) return a.dst_rank < b.dst_rank;
    return a.dst_slot < b.dst_slot;
  });
  return out;
}

// ------------------------------------------------------------ MigrationEngine

StatusOr<std::unique_ptr<MigrationEngine>> MigrationEngine::Create(
    const MigrationOptions& o, const Placement& initial) {
  if (o.transport == nullptr)
    return InvalidArgumentError("migration needs a transport");
  if (o.weights == nullptr)
    return InvalidArgumentError("migration needs the expert weights");
  if (o.weights->num_tensors() < 1 || o.weights->staging_per_rank() < 1) {
    return InvalidArgumentError(
        "migration: the expert weights need >= 1 tensor and >= 1 staging "
        "buffer per rank");
  }
  if (initial.num_ranks() != o.topology.num_ranks ||
      initial.slots_per_rank() != o.topology.slots_per_rank ||
      initial.num_layers() != o.num_layers ||
      initial.num_experts() != o.num_experts) {
    return InvalidArgumentError(
        "migration: the initial placement does not match the topology, "
        "layers or experts");
  }
  auto engine = std::unique_ptr<MigrationEngine>(new MigrationEngine());
  engine->options_ = o;
  if (engine->options_.clock == nullptr) engine->options_.clock = SystemClock();
  if (engine->options_.collective == nullptr) {
    engine->options_.collective = LocalCollective();
  }
  engine->placement_ = initial;
  engine->known_checksums_.assign(
      static_cast<size_t>(o.num_layers) * o.num_experts, 0);
  return engine;
}

MigrationEngine::~MigrationEngine() {
  // Copies read and write our buffers: let them end first.
  if (batch_ != nullptr) batch_->Wait();
  if (draining_ != nullptr) draining_->Wait();
}

Status MigrationEngine::Start(int layer, std::span<const int32_t> target) {
  const std::pair<int, std::span<const int32_t>> one[] = {{layer, target}};
  return StartBatch(one);
}

Status MigrationEngine::StartLayers(std::span<const int> layers,
                                    const Placement& plan) {
  if (plan.num_layers() != placement_.num_layers() ||
      plan.num_slots() != placement_.num_slots()) {
    return InvalidArgumentError("migration: the plan's shape differs");
  }
  std::vector<std::pair<int, std::span<const int32_t>>> batch;
  for (int layer : layers) {
    if (layer < 0 || layer >= plan.num_layers()) {
      return InvalidArgumentError("migration of layer " +
                                  std::to_string(layer) + ": bad layer");
    }
    batch.emplace_back(layer, plan.layer(layer));
  }
  return StartBatch(batch);
}

Status MigrationEngine::StartBatch(
    std::span<const std::pair<int, std::span<const int32_t>>> layers) {
  if (!in_flight_.empty()) {
    return FailedPreconditionError(
        "layer " + std::to_string(in_flight_.front()) + " is still migrating");
  }
  if (draining_ != nullptr) {
    if (!draining_->Done()) {
      return UnavailableError(
          "staging buffers still drain a timed-out migration");
    }
    draining_.reset();
  }
  if (layers.empty()) return InvalidArgumentError("migration of no layer");
  const Topology& t = options_.topology;
  Placement cur(1, t.num_ranks, t.slots_per_rank, placement_.num_experts());
  Placement next = cur;
  std::vector<Transfer> transfers;
  // Staging buffers used so far on each rank by earlier layers of the batch.
  std::vector<int> staging(t.num_ranks, 0);
  for (size_t i = 0; i < layers.size(); ++i) {
    const auto [layer, target] = layers[i];
    if (layer < 0 || layer >= placement_.num_layers() ||
        static_cast<int>(target.size()) != t.num_slots()) {
      return InvalidArgumentError("migration of layer " +
                                  std::to_string(layer) +
                                  ": bad layer or target size");
    }
    for (size_t j = 0; j < i; ++j) {
      if (layers[j].first == layer) {
        return InvalidArgumentError("migration of layer " +
                                    std::to_string(layer) + ": listed twice");
      }
    }
    std::copy(placement_.layer(layer).begin(), placement_.layer(layer).end(),
              cur.mutable_layer(0).begin());
    std::copy(target.begin(), target.end(), next.mutable_layer(0).begin());
    std::vector<Violation> bad =
        CheckPlan(cur, next, options_.weights->staging_per_rank());
    if (!bad.empty()) {
      bad[0].layer = layer;
      return InvalidArgumentError("migration rejected: " + bad[0].ToString());
    }
    std::vector<Transfer> mine = PlanLayerTransfers(
        layer, placement_.layer(layer), target, t, options_.real_expert_bytes);
    std::vector<int> used(t.num_ranks, 0);
    for (Transfer& x : mine) {
      x.staging += staging[x.dst_rank];
      ++used[x.dst_rank];
    }
    for (int r = 0; r < t.num_ranks; ++r) {
      staging[r] += used[r];
      if (staging[r] > options_.weights->staging_per_rank()) {
        return InvalidArgumentError(
            "migration of " + std::to_string(layers.size()) +
            " layers: device " + std::to_string(r) + " would receive " +
            std::to_string(staging[r]) + " experts, more than its " +
            std::to_string(options_.weights->staging_per_rank()) +
            " staging buffers");
      }
    }
    for (Transfer& x : mine)
      x.source_checksum = known_checksum(layer, x.expert);
    transfers.insert(transfers.end(), mine.begin(), mine.end());
  }
  // One batch: every rank pair still enumerates its transfers in one order.
  std::stable_sort(transfers.begin(), transfers.end(),
                   [](const Transfer& a, const Transfer& b) {
                     if (a.src_rank != b.src_rank)
                       return a.src_rank < b.src_rank;
                     return a.dst_rank < b.dst_rank;
                   });
  EPLB_ASSIGN_OR_RETURN(batch_,
                        options_.transport->Start(transfers, options_.weights));
  transfers_ = std::move(transfers);
  in_flight_.clear();
  targets_.clear();
  for (const auto& [layer, target] : layers) {
    in_flight_.push_back(layer);
    targets_.insert(targets_.end(), target.begin(), target.end());
  }
  committed_.clear();
  aborted_.clear();
  started_at_ = options_.clock->NowNanos();
  return Status::Ok();
}

MigrationEngine::State MigrationEngine::Poll() {
  if (in_flight_.empty()) return State::kIdle;
  // Every rank's view: copies still running here, and past the deadline.
  const bool done = batch_->Done();
  int64_t view[2] = {
      done ? 0 : 1,
      !done && options_.clock->NowNanos() - started_at_ > options_.timeout_nanos
          ? 1
          : 0};
  if (!options_.collective->AllReduceMax(view).ok()) view[1] = 1;
  if (view[0] != 0) {
    if (view[1] == 0) return State::kInFlight;
    // Timed out: copies may still write staging buffers, so the batch drains
    // before they are reused (live slots were never touched); the serving
    // thread does not wait for it.
    draining_ = std::move(batch_);
    last_error_ = DeadlineExceededError(
        "layer " + LayerList(in_flight_) + ": transfers exceeded " +
        std::to_string(options_.timeout_nanos / 1'000'000) + " ms" +
        (done ? " on another rank" : ""));
    stats_.layers_aborted += static_cast<int64_t>(in_flight_.size());
    committed_.clear();
    aborted_ = std::move(in_flight_);
    in_flight_.clear();
    return State::kAborted;
  }
  return Finish();
}

MigrationEngine::State MigrationEngine::Wait() {
  if (in_flight_.empty()) return State::kIdle;
  batch_->Wait();
  return Finish();
}

MigrationEngine::State MigrationEngine::Finish() {
  std::vector<int> layers = std::move(in_flight_);
  in_flight_.clear();
  committed_.clear();
  aborted_.clear();
  const Status batch_status = batch_->result();
  ExpertWeights& w = *options_.weights;
  // Each layer commits only when every one of its staging buffers verified
  // against its sender's checksum, on every rank; the others keep their
  // placement. failed[i] = 1: layer i failed on this rank.
  std::vector<Status> local(layers.size(), batch_status);
  std::vector<int64_t> failed(layers.size(), batch_status.ok() ? 0 : 1);
  for (size_t j = 0; j < transfers_.size(); ++j) {
    const Transfer& t = transfers_[j];
    if (!w.Hosts(t.dst_rank)) continue;
    const size_t i = static_cast<size_t>(
        std::find(layers.begin(), layers.end(), t.layer) - layers.begin());
    if (failed[i] != 0) continue;
    if (batch_->landed_checksum(j) != batch_->source_checksum(j) ||
        batch_->source_checksum(j) == 0) {
      local[i] = DataLossError(
          "layer " + std::to_string(t.layer) + ", device " +
          std::to_string(t.dst_rank) + ", slot " + std::to_string(t.dst_slot) +
          ": checksum mismatch for expert " + std::to_string(t.expert) +
          " from device " + std::to_string(t.src_rank));
      failed[i] = 1;
    }
  }
  // The checksums this process sent or received, for the layers that commit.
  std::vector<uint64_t> sums(transfers_.size(), 0);
  for (size_t j = 0; j < transfers_.size(); ++j) {
    const Transfer& t = transfers_[j];
    if (w.Hosts(t.src_rank) || w.Hosts(t.dst_rank)) {
      sums[j] = batch_->source_checksum(j);
    }
  }
  batch_.reset();
  const std::vector<int64_t> failed_here = failed;
  if (!options_.collective->AllReduceMax(failed).ok()) {
    std::fill(failed.begin(), failed.end(), 1);
  }
  const int slots = options_.topology.num_slots();
  for (size_t i = 0; i < layers.size(); ++i) {
    const int layer = layers[i];
    if (failed[i] != 0) {
      last_error_ = failed_here[i] != 0
                        ? local[i]
                        : DataLossError("layer " + std::to_string(layer) +
                                        ": a transfer failed on another rank");
      ++stats_.layers_aborted;
      aborted_.push_back(layer);
      // A known checksum that failed to verify is learnt afresh.
      for (const Transfer& t : transfers_) {
        if (t.layer == layer) {
          known_checksums_[KnownIndex(layer, t.expert)] = 0;
        }
      }
      continue;
    }
    for (size_t j = 0; j < transfers_.size(); ++j) {
      const Transfer& t = transfers_[j];
      if (t.layer != layer) continue;
      if (w.Hosts(t.dst_rank)) {
        w.CommitStaging(t.dst_rank, t.staging, layer, t.dst_slot);
      }
      // Every receiver verified it against what landed: the expert's own.
      if (sums[j] != 0) {
        known_checksums_[KnownIndex(layer, t.expert)] = sums[j];
      }
      if (t.local) {
        ++stats_.local_copies;
      } else {
        ++stats_.experts_moved;
        stats_.bytes_moved += t.real_bytes;
      }
    }
    std::copy(targets_.begin() + static_cast<ptrdiff_t>(i) * slots,
              targets_.begin() + static_cast<ptrdiff_t>(i + 1) * slots,
              placement_.mutable_layer(layer).begin());
    ++stats_.layers_committed;
    committed_.push_back(layer);
  }
  return aborted_.empty() ? State::kCommitted : State::kAborted;
}

// --------------------------------------------------------------- RoutingTable

RoutingTable::RoutingTable(const Placement& initial, const Topology& topology)
    : topology_(topology),
      num_experts_(initial.num_experts()),
      layers_(initial.num_layers()) {
  for (int l = 0; l < initial.num_layers(); ++l) Publish(l, initial.layer(l));
}

std::shared_ptr<const LayerRouting> RoutingTable::Get(int layer) const {
  const Slot& slot = layers_[layer];
  std::lock_guard<std::mutex> lock(slot.mu);
  return slot.routing;
}

void RoutingTable::Publish(int layer,
                           std::span<const int32_t> layer_placement) {
  auto next = std::make_shared<const LayerRouting>(
      BuildLayerRouting(layer_placement, num_experts_, topology_));
  Slot& slot = layers_[layer];
  std::lock_guard<std::mutex> lock(slot.mu);
  slot.routing.swap(next);  // The old table is released outside readers' view.
}

}  // namespace eplb
