#include "eplb/migration.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "core/splitmix.h"

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

// ---------------------------------------------------------------- WeightStore

StatusOr<std::unique_ptr<WeightStore>> WeightStore::Create(
    const WeightStoreOptions& o, const Placement& initial) {
  const Topology& t = o.topology;
  if (o.real_expert_bytes <= 0) {
    return InvalidArgumentError(
        "real_expert_bytes = " + std::to_string(o.real_expert_bytes) +
        ": must be > 0");
  }
  if (initial.num_ranks() != t.num_ranks ||
      initial.slots_per_rank() != t.slots_per_rank ||
      initial.num_layers() != o.num_layers ||
      initial.num_experts() != o.num_experts) {
    return InvalidArgumentError(
        "weight store: the initial placement does not match "
        "the topology, layers or experts");
  }
  auto store = std::unique_ptr<WeightStore>(new WeightStore());
  store->topology_ = t;
  store->num_layers_ = o.num_layers;
  store->num_experts_ = o.num_experts;
  store->staging_per_rank_ =
      o.staging_per_rank > 0 ? o.staging_per_rank : t.slots_per_rank;
  const int64_t buffers =
      static_cast<int64_t>(t.num_ranks) *
      (static_cast<int64_t>(o.num_layers) * t.slots_per_rank +
       store->staging_per_rank_);
  // Largest multiple of 8 bytes per buffer within the budget.
  const int64_t fit = (o.memory_budget_bytes / buffers) / 8 * 8;
  if (fit < 64) {
    return InvalidArgumentError("memory budget " +
                                std::to_string(o.memory_budget_bytes) +
                                " bytes for " + std::to_string(buffers) +
                                " expert buffers leaves under 64 bytes each");
  }
  // One scale for every tensor; rounding each up to 8 bytes may overflow the
  // fit, in which case the scale grows until the layout fits.
  std::vector<ExpertTensor> tensors = o.tensors;
  if (tensors.empty()) {
    tensors.push_back(
        ExpertTensor{"expert", DType::kBf16, {}, o.real_expert_bytes});
  }
  if (static_cast<int64_t>(tensors.size()) * 8 > fit) {
    return InvalidArgumentError(
        "weight store: " + std::to_string(tensors.size()) +
        " tensors do not fit in " + std::to_string(fit) +
        " bytes per expert buffer");
  }
  int64_t real_total = 0;
  for (const ExpertTensor& x : tensors) real_total += x.num_bytes;
  if (real_total != o.real_expert_bytes) {
    return InvalidArgumentError("weight store: tensors add up to " +
                                std::to_string(real_total) + " bytes, not " +
                                std::to_string(o.real_expert_bytes));
  }
  for (int64_t scale = std::max<int64_t>(1, (real_total + fit - 1) / fit);;
       ++scale) {
    store->tensors_.clear();
    int64_t offset = 0;
    for (const ExpertTensor& x : tensors) {
      const int64_t stored =
          std::max<int64_t>(8, ((x.num_bytes + scale - 1) / scale + 7) / 8 * 8);
      store->tensors_.push_back({x.name, offset, stored, x.num_bytes});
      offset += stored;
    }
    if (offset <= fit) {
      store->stored_bytes_ = offset;
      store->scale_ = scale;
      break;
    }
  }
  store->pool_.reset(
      new std::byte[static_cast<size_t>(buffers * store->stored_bytes_)]);
  store->slot_buffer_.resize(static_cast<size_t>(t.num_ranks) * o.num_layers *
                             t.slots_per_rank);
  store->staging_buffer_.resize(static_cast<size_t>(t.num_ranks) *
                                store->staging_per_rank_);
  int32_t next = 0;
  for (int32_t& id : store->slot_buffer_) id = next++;
  for (int32_t& id : store->staging_buffer_) id = next++;
  store->expected_.assign(static_cast<size_t>(o.num_layers) * o.num_experts, 0);
  for (int r = 0; r < t.num_ranks; ++r) {
    for (int l = 0; l < o.num_layers; ++l) {
      for (int s = 0; s < t.slots_per_rank; ++s) {
        const int32_t id =
            store->slot_buffer_[(static_cast<size_t>(r) * o.num_layers + l) *
                                    t.slots_per_rank +
                                s];
        store->Fill(
            {store->Buffer(id), static_cast<size_t>(store->stored_bytes_)}, l,
            initial.at(l, r, s));
      }
    }
  }
  return store;
}

std::byte* WeightStore::Buffer(int32_t id) const {
  return pool_.get() +
         static_cast<size_t>(id) * static_cast<size_t>(stored_bytes_);
}

std::span<const std::byte> WeightStore::Slot(int rank, int layer,
                                             int slot) const {
  const int32_t id =
      slot_buffer_[(static_cast<size_t>(rank) * num_layers_ + layer) *
                       topology_.slots_per_rank +
                   slot];
  return {Buffer(id), static_cast<size_t>(stored_bytes_)};
}

std::span<std::byte> WeightStore::Staging(int rank, int index) {
  if (index < 0 || index >= staging_per_rank_) return {};
  const int32_t id =
      staging_buffer_[static_cast<size_t>(rank) * staging_per_rank_ + index];
  return {Buffer(id), static_cast<size_t>(stored_bytes_)};
}

void WeightStore::Fill(std::span<std::byte> buffer, int layer,
                       int expert) const {
  uint64_t x = (static_cast<uint64_t>(layer) << 32) ^
               static_cast<uint64_t>(expert) ^ 0x2545f4914f6cdd1dULL;
  for (size_t i = 0; i + 8 <= buffer.size(); i += 8) {
    const uint64_t w = internal::SplitMix64(&x);
    std::memcpy(buffer.data() + i, &w, 8);
  }
}

uint64_t WeightStore::Checksum(std::span<const std::byte> bytes) {
  // FNV-1a over 64-bit words: fast, and any flipped byte changes it.
  uint64_t h = 0xcbf29ce484222325ULL;
  size_t i = 0;
  for (; i + 8 <= bytes.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, bytes.data() + i, 8);
    h = (h ^ w) * 0x100000001b3ULL;
  }
  for (; i < bytes.size(); ++i) {
    h = (h ^ static_cast<uint64_t>(bytes[i])) * 0x100000001b3ULL;
  }
  return h;
}

uint64_t WeightStore::ExpectedChecksum(int layer, int expert) const {
  uint64_t& cached =
      expected_[static_cast<size_t>(layer) * num_experts_ + expert];
  if (cached == 0) {
    std::vector<std::byte> tmp(static_cast<size_t>(stored_bytes_));
    Fill(tmp, layer, expert);
    cached = Checksum(tmp) | 1;  // Never 0, so 0 means "not computed".
  }
  return cached;
}

void WeightStore::CommitStaging(int rank, int index, int layer, int slot) {
  std::swap(
      staging_buffer_[static_cast<size_t>(rank) * staging_per_rank_ + index],
      slot_buffer_[(static_cast<size_t>(rank) * num_layers_ + layer) *
                       topology_.slots_per_rank +
                   slot]);
}

Status WeightStore::Verify(const Placement& placement) const {
  for (int l = 0; l < num_layers_; ++l) {
    for (int r = 0; r < topology_.num_ranks; ++r) {
      for (int s = 0; s < topology_.slots_per_rank; ++s) {
        if ((Checksum(Slot(r, l, s)) | 1) !=
            ExpectedChecksum(l, placement.at(l, r, s))) {
          return DataLossError("layer " + std::to_string(l) + ", device " +
                               std::to_string(r) + ", slot " +
                               std::to_string(s) +
                               ": weights are not those of expert " +
                               std::to_string(placement.at(l, r, s)));
        }
      }
    }
  }
  return Status::Ok();
}

// ------------------------------------------------------------ MigrationEngine

StatusOr<std::unique_ptr<MigrationEngine>> MigrationEngine::Create(
    const MigrationOptions& o, const Placement& initial) {
  if (o.transport == nullptr)
    return InvalidArgumentError("migration needs a transport");
  auto engine = std::unique_ptr<MigrationEngine>(new MigrationEngine());
  engine->options_ = o;
  if (engine->options_.clock == nullptr) engine->options_.clock = SystemClock();
  engine->placement_ = initial;
  EPLB_ASSIGN_OR_RETURN(
      engine->store_,
      WeightStore::Create(
          WeightStoreOptions{.topology = o.topology,
                             .num_layers = o.num_layers,
                             .num_experts = o.num_experts,
                             .real_expert_bytes = o.real_expert_bytes,
                             .tensors = o.tensors,
                             .memory_budget_bytes = o.memory_budget_bytes,
                             .staging_per_rank = o.staging_per_rank},
          initial));
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
        CheckPlan(cur, next, store_->staging_per_rank());
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
      if (staging[r] > store_->staging_per_rank()) {
        return InvalidArgumentError(
            "migration of " + std::to_string(layers.size()) +
            " layers: device " + std::to_string(r) + " would receive " +
            std::to_string(staging[r]) + " experts, more than its " +
            std::to_string(store_->staging_per_rank()) + " staging buffers");
      }
    }
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
                        options_.transport->Start(transfers, store_.get()));
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
  if (!batch_->Done()) {
    if (options_.clock->NowNanos() - started_at_ <= options_.timeout_nanos) {
      return State::kInFlight;
    }
    // Timed out: copies may still write staging buffers, so the batch drains
    // before they are reused (live slots were never touched); the serving
    // thread does not wait for it.
    draining_ = std::move(batch_);
    last_error_ = DeadlineExceededError(
        "layer " + LayerList(in_flight_) + ": transfers exceeded " +
        std::to_string(options_.timeout_nanos / 1'000'000) + " ms");
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
  batch_.reset();
  // Each layer commits only when every one of its staging buffers verified;
  // the others keep their placement.
  const int slots = options_.topology.num_slots();
  for (size_t i = 0; i < layers.size(); ++i) {
    const int layer = layers[i];
    Status s = batch_status;
    for (size_t j = 0; s.ok() && j < transfers_.size(); ++j) {
      const Transfer& t = transfers_[j];
      if (t.layer != layer) continue;
      if ((WeightStore::Checksum(store_->Staging(t.dst_rank, t.staging)) | 1) !=
          store_->ExpectedChecksum(layer, t.expert)) {
        s = DataLossError("layer " + std::to_string(layer) + ", device " +
                          std::to_string(t.dst_rank) + ", slot " +
                          std::to_string(t.dst_slot) +
                          ": checksum mismatch for expert " +
                          std::to_string(t.expert) + " from device " +
                          std::to_string(t.src_rank));
      }
    }
    if (!s.ok()) {
      last_error_ = s;
      ++stats_.layers_aborted;
      aborted_.push_back(layer);
      continue;
    }
    for (const Transfer& t : transfers_) {
      if (t.layer != layer) continue;
      store_->CommitStaging(t.dst_rank, t.staging, layer, t.dst_slot);
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
