#include "eplb/sim/replay.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <thread>

#include "eplb/controller.h"
#include "eplb/io.h"
#include "eplb/load.h"
#include "eplb/metrics.h"
#include "eplb/migration.h"
#include "eplb/sim/expert_ffn.h"
#include "eplb/sim/synthetic_weights.h"
#include "eplb/transport.h"

namespace eplb {

std::vector<double> DispatchRankLoads(const LayerRouting& routing,
                                      std::span<const double> counts) {
  std::vector<int64_t> tokens(counts.size());
  for (size_t e = 0; e < counts.size(); ++e)
    tokens[e] = std::llround(counts[e]);
  std::vector<int64_t> slots(static_cast<size_t>(routing.num_ranks) *
                             routing.slots_per_rank);
  RoundRobinQuotas(routing, tokens, slots);
  std::vector<double> ranks(routing.num_ranks, 0.0);
  for (size_t phy = 0; phy < slots.size(); ++phy) {
    ranks[phy / routing.slots_per_rank] += static_cast<double>(slots[phy]);
  }
  return ranks;
}

namespace {

Distribution Summarise(std::vector<double> v) {
  Distribution d;
  if (v.empty()) return d;
  std::sort(v.begin(), v.end());
  // Nearest-rank percentiles.
  auto pct = [&](double p) {
    const size_t i =
        static_cast<size_t>(std::ceil(p * static_cast<double>(v.size())));
    return v[std::clamp<size_t>(i, 1, v.size()) - 1];
  };
  d.median = pct(0.5);
  d.p90 = pct(0.9);
  d.p99 = pct(0.99);
  d.max = v.back();
  double sum = 0;
  for (double x : v) sum += x;
  d.mean = sum / static_cast<double>(v.size());
  return d;
}

// Imbalance of rank loads (RankImbalance); 0 when the layer had no tokens
// (not scored).
double Imbalance(std::span<const double> ranks) {
  double total = 0;
  for (double x : ranks) total += x;
  return total > 0 ? RankImbalance(ranks) : 0.0;
}

std::string PlacementLine(int64_t step, int layer, const Placement& p) {
  std::string s = "{\"step\": " + std::to_string(step) +
                  ", \"layer\": " + std::to_string(layer) +
                  ", \"placement\": [";
  for (int r = 0; r < p.num_ranks(); ++r) {
    s += r ? ", [" : "[";
    for (int k = 0; k < p.slots_per_rank(); ++k) {
      if (k) s += ", ";
      s += std::to_string(p.at(layer, r, k));
    }
    s += "]";
  }
  s += "]}\n";
  return s;
}

// A transport the caller owns, wrapped without taking it over.
class TransportRef final : public Transport {
 public:
  explicit TransportRef(Transport* inner) : inner_(inner) {}
  StatusOr<std::unique_ptr<TransferBatch>> Start(
      std::span<const Transfer> transfers, ExpertWeights* weights) override {
    return inner_->Start(transfers, weights);
  }

 private:
  Transport* inner_;
};

// One scored side of the replay (with or without balancing).
struct Side {
  std::vector<double> imbalance;  // Per scored (step, layer).
  std::vector<double> per_step;   // Mean over layers.
  std::vector<double> step_seconds;
  double utilization_sum = 0;
  int64_t utilization_n = 0;
};

// The serving side of the job: its ranks, weights, transport and controller.
// Rebuilt over the survivors when a rank fails.
struct Serving {
  Topology topology;
  std::vector<int> ranks;  // [R]: each rank's index when the replay started.
  int me = -1;             // The rank this process hosts; -1: every rank.
  std::unique_ptr<SyntheticWeights> weights;
  std::unique_ptr<Transport> owned_transport;
  Transport* transport = nullptr;
  std::unique_ptr<Controller> controller;
  // Balanced dispatch: one dispatcher per layer, told each placement as it
  // starts serving.
  std::vector<BalancedDispatcher> dispatchers;
  std::vector<int32_t> dispatched;  // [L][R*K]: what the dispatchers hold.
  // Output verification: the FFN weights folded from each hosted slot's
  // bytes [L][R*K], and the expert each was folded for (-1: not yet). A
  // slot's bytes change only when a commit or a reload puts another expert
  // there, and then it is folded again.
  std::vector<FfnWeights> ffn;
  std::vector<int32_t> ffn_expert;
  bool Hosts(int rank) const { return me < 0 || rank == me; }
};

// The placement of the survivors of a failure: each survivor keeps its
// slots and takes an equal share of the lost slots (K' = ceil(R*K / R')
// slots per rank), which receive first the experts left without any
// replica, then replicas of the experts with the fewest, lowest id first,
// never twice on a rank.
Placement SurvivorPlacement(const Placement& before,
                            const std::vector<int>& survivors,
                            int new_slots_per_rank,
                            std::vector<int32_t>* lost) {
  const int num_layers = before.num_layers();
  const int num_experts = before.num_experts();
  const int k = before.slots_per_rank();
  const int r2 = static_cast<int>(survivors.size());
  const int k2 = new_slots_per_rank;
  Placement after(num_layers, r2, k2, num_experts);
  lost->clear();
  std::vector<int> replicas(num_experts);
  for (int l = 0; l < num_layers; ++l) {
    std::fill(replicas.begin(), replicas.end(), 0);
    for (int j = 0; j < r2; ++j) {
      for (int s = 0; s < k; ++s) {
        const int32_t e = before.at(l, survivors[j], s);
        after.mutable_layer(l)[static_cast<size_t>(j) * k2 + s] = e;
        ++replicas[e];
      }
    }
    std::vector<int32_t> todo;
    for (int e = 0; e < num_experts; ++e) {
      if (replicas[e] == 0) {
        todo.push_back(e);
        lost->push_back(l * num_experts + e);
      }
    }
    size_t next = 0;
    for (int s = k; s < k2; ++s) {
      for (int j = 0; j < r2; ++j) {
        std::span<int32_t> row = after.mutable_layer(l).subspan(
            static_cast<size_t>(j) * k2, static_cast<size_t>(k2));
        auto on_rank = [&](int32_t e) {
          return std::find(row.begin(), row.begin() + s, e) != row.begin() + s;
        };
        int32_t pick = -1;
        if (next < todo.size()) {
          pick = todo[next++];
        } else {
          for (int e = 0; e < num_experts; ++e) {
            if (on_rank(e)) continue;
            if (pick < 0 || replicas[e] < replicas[pick]) pick = e;
          }
        }
        row[s] = pick;
        ++replicas[pick];
      }
    }
  }
  return after;
}

}  // namespace

StatusOr<ReplayResult> RunReplay(const LoadTrace& trace,
                                 const ReplayOptions& o) {
  const Topology& t0 = o.topology;
  const int num_layers = trace.num_layers();
  const int num_experts = trace.num_experts();
  if (num_experts != o.model.num_experts) {
    return InvalidArgumentError("the trace has " + std::to_string(num_experts) +
                                " experts but model " + o.model.name + " has " +
                                std::to_string(o.model.num_experts));
  }
  if (num_layers != o.model.num_moe_layers) {
    return InvalidArgumentError("the trace has " + std::to_string(num_layers) +
                                " MoE layers but model " + o.model.name +
                                " has " +
                                std::to_string(o.model.num_moe_layers));
  }
  if (o.batch_steps < 1) {
    return InvalidArgumentError(
        "batch_steps = " + std::to_string(o.batch_steps) + ": must be >= 1");
  }
  EPLB_RETURN_IF_ERROR(ValidateLoad(trace));
  EPLB_ASSIGN_OR_RETURN(Topology checked,
                        MakeTopology(num_experts, t0.num_ranks,
                                     t0.slots_per_rank, t0.ranks_per_node));
  (void)checked;
  const EplbMode mode = o.config.mode();
  // One process per rank, or one for all.
  Collective* collective =
      o.collective != nullptr ? o.collective : LocalCollective();
  const bool multi = collective->size() > 1;
  if (multi && collective->size() != t0.num_ranks) {
    return InvalidArgumentError(
        "replay over " + std::to_string(collective->size()) +
        " processes needs one per rank, but there are " +
        std::to_string(t0.num_ranks) + " ranks");
  }
  if (multi && o.transport == nullptr) {
    return InvalidArgumentError(
        "replay over several processes needs their transport");
  }
  if (o.fail_rank >= 0 || o.fail_at_step >= 0) {
    if (o.fail_rank < 1 || o.fail_rank >= t0.num_ranks) {
      return InvalidArgumentError("fail rank " + std::to_string(o.fail_rank) +
                                  ": must be in [1, " +
                                  std::to_string(t0.num_ranks - 1) +
                                  "] (rank 0 prints the job's results)");
    }
    if (o.fail_at_step < 0) {
      return InvalidArgumentError("fail rank " + std::to_string(o.fail_rank) +
                                  " needs the step it fails at (>= 0)");
    }
    if (multi && (!o.recover || !o.leave)) {
      return InvalidArgumentError(
          "failing a rank over several processes needs their recovery");
    }
  }
  // Logs are written by process 0 (they describe the whole job), which
  // never fails.
  const bool writer = collective->rank() == 0;
  Placement initial = Placement::Initial(num_layers, num_experts, t0);
  if (o.config.expert_map_path.has_value()) {
    EPLB_ASSIGN_OR_RETURN(
        initial, ReadExpertMapJson(
                     *o.config.expert_map_path,
                     MapExpectations{.num_layers = num_layers,
                                     .num_ranks = t0.num_ranks,
                                     .num_experts = num_experts,
                                     .slots_per_rank = t0.slots_per_rank}));
  }
  const std::string policy_name =
      o.policy.empty() ? std::to_string(o.config.eplb_policy_type) : o.policy;
  ReplayResult result;
  {
    EPLB_ASSIGN_OR_RETURN(std::unique_ptr<Policy> policy,
                          CreatePolicy(policy_name));
    result.policy = std::string(policy->name());
  }
  result.mode = std::string(EplbModeName(mode));

  // The placement log: checked before the first step.
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> log_file(nullptr,
                                                           &std::fclose);
  if (writer && !o.placement_log_path.empty()) {
    const std::filesystem::path dir =
        std::filesystem::path(o.placement_log_path).parent_path();
    if (!dir.empty() && !std::filesystem::is_directory(dir)) {
      return NotFoundError("placement log " + o.placement_log_path +
                           ": directory " + dir.string() + " does not exist");
    }
    log_file.reset(std::fopen(o.placement_log_path.c_str(), "w"));
    if (log_file == nullptr) {
      return InvalidArgumentError("placement log " + o.placement_log_path +
                                  ": cannot open for writing");
    }
  }
  // The rank-load log is written whole at the end: its place is checked now,
  // so that a bad path fails before the run, not after it.
  if (!o.rank_load_log_path.empty()) {
    const std::filesystem::path path(o.rank_load_log_path);
    const std::filesystem::path dir = path.parent_path();
    if (!dir.empty() && !std::filesystem::is_directory(dir)) {
      return NotFoundError("rank-load log " + o.rank_load_log_path +
                           ": directory " + dir.string() + " does not exist");
    }
    if (std::filesystem::is_directory(path)) {
      return InvalidArgumentError("rank-load log " + o.rank_load_log_path +
                                  ": is a directory");
    }
  }
  auto write_line = [&](const std::string& line) {
    if (log_file == nullptr) return;
    std::fwrite(line.data(), 1, line.size(),
                log_file.get());  // One whole line.
    std::fflush(log_file.get());
  };
  for (int l = 0; l < num_layers; ++l) write_line(PlacementLine(0, l, initial));

  const bool balanced = o.dispatch == DispatchMode::kBalanced;
  const bool faulty = o.faults.fail_every > 0 || o.faults.corrupt_every > 0 ||
                      o.faults.delay_nanos > 0;
  // Builds the engine's side of the seam (weights, transport, collective)
  // and the controller over it, for `topology` starting from `start`.
  auto make_serving = [&](const Topology& topology, const Placement& start,
                          std::vector<int> ranks, int me, Transport* transport,
                          int64_t scale) -> StatusOr<std::unique_ptr<Serving>> {
    auto sv = std::make_unique<Serving>();
    sv->topology = topology;
    sv->ranks = std::move(ranks);
    sv->me = me;
    SyntheticWeightsOptions wopts{
        .topology = topology,
        .num_layers = num_layers,
        .num_experts = num_experts,
        .real_expert_bytes = ExpertBytes(o.model, o.quant),
        .tensors = ExpertTensors(o.model, o.quant),
        .memory_budget_bytes = o.memory_budget_bytes,
        .scale = scale};
    if (me >= 0) wopts.hosted_ranks = {me};
    EPLB_ASSIGN_OR_RETURN(sv->weights, SyntheticWeights::Create(wopts, start));
    sv->transport = transport;
    if (transport == nullptr) {
      EPLB_ASSIGN_OR_RETURN(sv->owned_transport,
                            CreateInProcessTransport({.num_threads = 1}));
      sv->transport = sv->owned_transport.get();
    }
    if (faulty) {
      sv->owned_transport = WrapWithFaults(
          sv->owned_transport != nullptr
              ? std::move(sv->owned_transport)
              : std::unique_ptr<Transport>(new TransportRef(sv->transport)),
          o.faults);
      sv->transport = sv->owned_transport.get();
    }
    ControllerOptions copts;
    copts.config = o.config;
    copts.config.eplb_dispatch = o.dispatch;
    copts.config.num_redundant_experts = topology.num_slots() - num_experts;
    // The simulated hardware's link, unless the config names one.
    if (copts.config.eplb_link_gbytes_per_s <= 0.0) {
      copts.config.eplb_link_gbytes_per_s = o.hardware.link_gbytes_per_s;
    }
    copts.topology = topology;
    copts.num_layers = num_layers;
    copts.num_experts = num_experts;
    copts.initial = start;
    EPLB_ASSIGN_OR_RETURN(copts.policy, CreatePolicy(policy_name));
    copts.weights = sv->weights.get();
    copts.transport = sv->transport;
    copts.collective = collective;
    copts.real_expert_bytes = ExpertBytes(o.model, o.quant);
    copts.max_num_reqs = o.max_num_reqs;
    copts.sample_history = o.sample_history;
    copts.sync_migration = o.sync_migration;
    copts.lockstep = !o.pace;
    copts.log = o.log;
    copts.on_commit = [&write_line, &result](int64_t step, int layer,
                                             const Placement& p) {
      write_line(PlacementLine(step, layer, p));
      if (step >= 0) {
        const auto at = static_cast<size_t>(step);
        if (result.commits_per_step.size() <= at) {
          result.commits_per_step.resize(at + 1, 0);
        }
        ++result.commits_per_step[at];
      }
    };
    EPLB_ASSIGN_OR_RETURN(sv->controller, Controller::Create(std::move(copts)));
    if (balanced) {
      for (int l = 0; l < num_layers; ++l) {
        sv->dispatchers.emplace_back(num_experts, topology.num_ranks,
                                     topology.slots_per_rank);
        sv->dispatchers.back().SetPlacement(start.layer(l));
      }
      sv->dispatched = start.data();
    }
    sv->controller->Start();
    return sv;
  };
  std::vector<int> all_ranks(t0.num_ranks);
  for (int r = 0; r < t0.num_ranks; ++r) all_ranks[r] = r;
  EPLB_ASSIGN_OR_RETURN(
      std::unique_ptr<Serving> sv,
      make_serving(t0, initial, all_ranks, multi ? collective->rank() : -1,
                   o.transport, 0));
  result.weight_scale = sv->weights->scale();
  result.processes = collective->size();

  const int64_t steps = (trace.num_steps() + o.batch_steps - 1) / o.batch_steps;
  if ((mode == EplbMode::kDynamic || mode == EplbMode::kRecording) &&
      o.config.expert_heat_collection_interval +
              o.config.algorithm_execution_interval >=
          steps &&
      o.log && writer) {
    o.log("heat interval " +
          std::to_string(o.config.expert_heat_collection_interval) +
          " + algorithm interval " +
          std::to_string(o.config.algorithm_execution_interval) + " >= the " +
          std::to_string(steps) +
          (o.config.eplb_fast_warmup
               ? " replay steps: only a first plan whose collection the fast "
                 "warm-up cuts short can complete"
               : " replay steps: no rebalance can complete; replaying "
                 "without balancing"));
  }
  // No balancing: the engine's default placement (experts in order, the
  // redundant slots holding experts 0, 1, ...) throughout, also when a map
  // file gave the starting placement, on every rank (no failure).
  const Placement unbalanced = Placement::Initial(num_layers, num_experts, t0);
  std::vector<LayerRouting> baseline_routing;
  baseline_routing.reserve(num_layers);
  std::vector<BalancedDispatcher> base_dispatch;
  for (int l = 0; l < num_layers; ++l) {
    baseline_routing.push_back(
        BuildLayerRouting(unbalanced.layer(l), num_experts, t0));
    if (balanced) {
      base_dispatch.emplace_back(num_experts, t0.num_ranks, t0.slots_per_rank);
      base_dispatch.back().SetPlacement(unbalanced.layer(l));
    }
  }
  Side with, without;
  std::vector<double> counts(num_experts);
  std::vector<int64_t> tokens_of(num_experts);
  std::vector<int64_t> base_slots(t0.num_slots());
  std::vector<double> base(t0.num_ranks);
  // The dispatch of both sides: the same rule, each under its own routing.
  auto dispatch = [&](const LayerRouting& routing, BalancedDispatcher* d,
                      std::span<int64_t> slots) {
    if (balanced) {
      d->ComputeQuotas(tokens_of, slots);
    } else {
      RoundRobinQuotas(routing, tokens_of, slots);
    }
  };
  auto rank_sums = [](const Topology& t, std::span<const int64_t> slots,
                      std::span<double> out) {
    std::fill(out.begin(), out.end(), 0.0);
    for (int phy = 0; phy < t.num_slots(); ++phy) {
      out[phy / t.slots_per_rank] += static_cast<double>(slots[phy]);
    }
  };
  // Output verification: the FFN weights of each expert's original bytes
  // (what the initial placement serves without balancing), and the running
  // occurrence count of each expert over the slots of a layer.
  std::vector<FfnWeights> original;
  std::vector<int64_t> occurrence(num_experts);
  if (o.verify_outputs) {
    std::vector<std::byte> bytes(
        static_cast<size_t>(sv->weights->stored_expert_bytes()));
    original.resize(static_cast<size_t>(num_layers) * num_experts);
    for (int l = 0; l < num_layers; ++l) {
      for (int e = 0; e < num_experts; ++e) {
        sv->weights->FillExpert(l, e, bytes);
        FoldExpertWeights(bytes,
                          &original[static_cast<size_t>(l) * num_experts + e]);
      }
    }
  }
  // This process's outputs verified and mismatched in the current step.
  int64_t step_verified[2] = {0, 0};
  auto verify_layer = [&](int64_t step, int l,
                          std::span<const int64_t> slot_tokens) {
    const Topology& t = sv->topology;
    const Placement& serving = sv->controller->placement();
    if (sv->ffn.empty()) {
      sv->ffn.resize(static_cast<size_t>(num_layers) * t.num_slots());
      sv->ffn_expert.assign(sv->ffn.size(), -1);
    }
    std::fill(occurrence.begin(), occurrence.end(), 0);
    float x[kFfnModel], y[kFfnModel], want[kFfnModel];
    for (int phy = 0; phy < t.num_slots(); ++phy) {
      const int r = phy / t.slots_per_rank;
      const int e = serving.at(l, r, phy % t.slots_per_rank);
      const int64_t first = occurrence[e];
      occurrence[e] += slot_tokens[phy];
      if (!sv->Hosts(r)) continue;
      const size_t at = static_cast<size_t>(l) * t.num_slots() + phy;
      if (sv->ffn_expert[at] != e) {
        FoldExpertWeights(sv->weights->SlotBytes(r, l, phy % t.slots_per_rank),
                          &sv->ffn[at]);
        sv->ffn_expert[at] = e;
      }
      const FfnWeights& ref =
          original[static_cast<size_t>(l) * num_experts + e];
      for (int64_t j = first; j < occurrence[e]; ++j) {
        TokenActivation(step, l, e, j, x);
        ExpertFfn(sv->ffn[at], x, y);
        ExpertFfn(ref, x, want);
        ++step_verified[0];
        if (!SameBits(y, want, kFfnModel)) ++step_verified[1];
      }
    }
  };
  // The controllers' figures, summed over the ones a failure retired.
  ControllerStats retired;
  auto add_stats = [](ControllerStats* sum, const ControllerStats& s) {
    sum->rebalances += s.rebalances;
    sum->cycles_late += s.cycles_late;
    sum->plan_late_steps += s.plan_late_steps;
    sum->plans_failed += s.plans_failed;
    sum->plans_rejected += s.plans_rejected;
    sum->layers_committed += s.layers_committed;
    sum->layers_aborted += s.layers_aborted;
    sum->experts_moved += s.experts_moved;
    sum->bytes_moved += s.bytes_moved;
    sum->maps_written += s.maps_written;
    sum->max_stall_nanos = std::max(sum->max_stall_nanos, s.max_stall_nanos);
    sum->max_plan_nanos = std::max(sum->max_plan_nanos, s.max_plan_nanos);
    sum->layers_kept += s.layers_kept;
    sum->layers_incremental += s.layers_incremental;
    sum->layers_full += s.layers_full;
    sum->predicted_gain += s.predicted_gain;
    sum->layers_reverted += s.layers_reverted;
    sum->max_layers_per_step =
        std::max(sum->max_layers_per_step, s.max_layers_per_step);
    sum->plan_hash_mismatches += s.plan_hash_mismatches;
    sum->plans_superseded += s.plans_superseded;
    sum->shifts_reverted += s.shifts_reverted;
    if (sum->warmup_steps < 0) sum->warmup_steps = s.warmup_steps;
    sum->cycles += s.cycles;
    sum->total_stall_nanos += s.total_stall_nanos;
    for (int b = 0; b < kPlanTimeBuckets; ++b) {
      sum->plan_time_buckets[b] += s.plan_time_buckets[b];
    }
    sum->plans_timed += s.plans_timed;
    sum->plan_nanos_sum += s.plan_nanos_sum;
  };
  // Metrics: the heat of the latest step per logical expert (opt-in).
  LoadMatrix step_heat(o.metrics_heat ? num_layers : 0,
                       o.metrics_heat ? num_experts : 0);
  auto render_metrics = [&](const ControllerStats& cs,
                            const ServingMetrics* serving) {
    MetricsInput in;
    in.stats = &cs;
    const size_t have = result.imbalance_by_step_layer.size();
    if (have >= static_cast<size_t>(num_layers)) {
      in.layer_balance = std::span<const double>(
          result.imbalance_by_step_layer.data() + have - num_layers,
          static_cast<size_t>(num_layers));
    }
    if (o.metrics_heat) in.expert_heat = &step_heat;
    in.serving = serving;
    return RenderPrometheus(in);
  };
  // Experts (l * E + e) whose tokens wait for a reload, and until when.
  std::vector<char> reloading(static_cast<size_t>(num_layers) * num_experts, 0);
  int64_t reload_until = -1;

  // A failure: re-forms the job over `survivors` (indices among the current
  // ranks), reloading what was lost, at replay step `step`.
  auto recover = [&](const std::vector<int>& survivors, Transport* transport,
                     int64_t step) -> Status {
    const Topology& t = sv->topology;
    const int r2 = static_cast<int>(survivors.size());
    if (r2 < 1) return UnavailableError("no rank survived");
    const int k2 = (t.num_slots() + r2 - 1) / r2;
    if (k2 > num_experts) {
      return UnavailableError("the " + std::to_string(r2) +
                              " surviving ranks cannot hold " +
                              std::to_string(t.num_slots()) +
                              " slots without an expert twice on a rank");
    }
    const int per_node = t.ranks_per_node > 0 && r2 % t.ranks_per_node == 0
                             ? t.ranks_per_node
                             : r2;
    EPLB_ASSIGN_OR_RETURN(Topology t2,
                          MakeTopology(num_experts, r2, k2, per_node));
    const Placement before = sv->controller->placement();
    std::vector<int32_t> lost;
    const Placement after = SurvivorPlacement(before, survivors, k2, &lost);
    std::vector<int> ranks2;
    int me2 = -1;
    for (int j = 0; j < r2; ++j) {
      ranks2.push_back(sv->ranks[survivors[j]]);
      if (sv->me >= 0 && survivors[j] == sv->me) me2 = j;
    }
    if (sv->me >= 0 && me2 < 0) {
      return InternalError("this process is not among the survivors");
    }
    // The old controller first: its planner stops and its migration ends
    // (over MPI the old transport is gone, so its batches have ended).
    sv->controller->Shutdown();
    add_stats(&retired, sv->controller->stats());
    std::unique_ptr<Serving> old = std::move(sv);
    EPLB_ASSIGN_OR_RETURN(sv, make_serving(t2, after, std::move(ranks2), me2,
                                           transport, old->weights->scale()));
    // The survivors keep their weights: the slots they held are copied as
    // they are (a wrong byte there shows in the outputs); the new slots
    // were loaded from the weight source.
    const int k = t.slots_per_rank;
    for (int j = 0; j < r2; ++j) {
      if (!sv->Hosts(j)) continue;
      for (int l = 0; l < num_layers; ++l) {
        for (int s = 0; s < k; ++s) {
          for (int x = 0; x < sv->weights->num_tensors(); ++x) {
            std::span<const std::byte> from =
                old->weights->Slot(survivors[j], l, s, x);
            std::span<const std::byte> to = sv->weights->Slot(j, l, s, x);
            std::memcpy(const_cast<std::byte*>(to.data()), from.data(),
                        from.size());
          }
        }
      }
    }
    old.reset();
    ++result.ranks_failed;
    result.experts_lost += static_cast<int64_t>(lost.size());
    const int64_t reloaded = static_cast<int64_t>(num_layers) * r2 * (k2 - k);
    result.experts_reloaded += reloaded;
    result.bytes_reloaded += reloaded * ExpertBytes(o.model, o.quant);
    for (int32_t x : lost) reloading[x] = 1;
    // The lost experts' tokens of this step wait for their reload.
    reload_until = step;
    if (writer && o.log) {
      o.log("rank lost before step " + std::to_string(step) + ": " +
            std::to_string(r2) + " ranks serve on with " + std::to_string(k2) +
            " slots each; " + std::to_string(lost.size()) +
            " experts had no surviving replica and were reloaded");
    }
    for (int l = 0; l < num_layers; ++l) {
      write_line(PlacementLine(step, l, after));
    }
    return Status::Ok();
  };

  std::string rank_log;
  std::vector<int64_t> slot_counts;
  std::vector<int64_t> my_slots;
  std::vector<double> ranks;
  int64_t first_done = -1;  // Replay steps before the first plan committed.
  int64_t recovering_since = -1;
  const double dense_s = o.hardware.dense_us_per_layer * 1e-6 * num_layers;
  const auto wall_start = std::chrono::steady_clock::now();
  int64_t bytes_before = 0;
  result.report_ranks = t0.num_ranks;
  result.rank_layer_load.assign(static_cast<size_t>(num_layers) * t0.num_ranks,
                                0.0);
  result.baseline_rank_layer_load = result.rank_layer_load;
  std::vector<int64_t> load_steps(num_layers, 0);
  ControllerStats seen;  // The previous step's, for the report's series.
  for (int64_t s = 0; s < steps; ++s) {
    // Fault injection: the failing rank stops serving here.
    const bool failing = s == o.fail_at_step && o.fail_rank >= 0 &&
                         o.fail_rank < static_cast<int>(sv->ranks.size());
    if (failing && multi && sv->ranks[sv->me] == o.fail_rank) {
      // Its weights are gone with it; the others will miss its heartbeat.
      sv->controller->Shutdown();
      o.leave();
      result.failed_here = true;
      return result;
    }
    int64_t stop[1] = {o.interrupt != nullptr && o.interrupt->load() ? 1 : 0};
    // The step's heartbeat: every process stops at the same step (their
    // calls are collective), and a process that stopped answering is found.
    if (multi) {
      Status beat = collective->AllReduceMax(stop);
      if (!beat.ok()) {
        EPLB_ASSIGN_OR_RETURN(ReplayOptions::Survivors survivors, o.recover());
        EPLB_RETURN_IF_ERROR(
            recover(survivors.processes, survivors.transport, s));
        recovering_since = s;
        stop[0] = o.interrupt != nullptr && o.interrupt->load() ? 1 : 0;
        EPLB_RETURN_IF_ERROR(collective->AllReduceMax(stop));
      }
    } else if (failing) {
      std::vector<int> survivors;
      for (int r = 0; r < sv->topology.num_ranks; ++r) {
        if (sv->ranks[r] != o.fail_rank) survivors.push_back(r);
      }
      EPLB_RETURN_IF_ERROR(recover(survivors, nullptr, s));
      recovering_since = s;
    }
    if (stop[0] != 0) {
      result.interrupted = true;
      break;
    }
    const Topology& t = sv->topology;
    Controller& controller = *sv->controller;
    slot_counts.resize(t.num_slots());
    my_slots.resize(t.num_slots());
    ranks.resize(t.num_ranks);
    const auto step_start = std::chrono::steady_clock::now();
    controller.BeforeForward();
    double step_with = dense_s, step_without = dense_s;
    double sum_with = 0, sum_without = 0;
    int scored = 0;
    int64_t tokens = 0;
    for (int l = 0; l < num_layers; ++l) {
      std::fill(counts.begin(), counts.end(), 0.0);
      const int end = static_cast<int>(
          std::min<int64_t>(trace.num_steps(), (s + 1) * o.batch_steps));
      for (int ts = static_cast<int>(s * o.batch_steps); ts < end; ++ts) {
        std::span<const double> row = trace.row(ts, l);
        for (int e = 0; e < num_experts; ++e) counts[e] += row[e];
      }
      if (o.metrics_heat) {
        for (int e = 0; e < num_experts; ++e) step_heat.at(l, e) = counts[e];
      }
      int64_t layer_tokens = 0;
      for (int e = 0; e < num_experts; ++e) {
        tokens_of[e] = std::llround(counts[e]);
        layer_tokens += tokens_of[e];
        if (s <= reload_until &&
            reloading[static_cast<size_t>(l) * num_experts + e]) {
          result.tokens_delayed += tokens_of[e];
        }
      }
      if (l == 0) {
        double assignments = 0;
        for (double c : counts) assignments += c;
        tokens = std::llround(assignments / std::max(1, o.model.top_k));
      }
      // With balancing: the routing in force at this step.
      std::shared_ptr<const LayerRouting> routing = controller.routing().Get(l);
      if (balanced) {
        // The committed placement is what the routing serves (both change
        // together on this thread).
        const std::span<const int32_t> now = controller.placement().layer(l);
        int32_t* held =
            sv->dispatched.data() + static_cast<size_t>(l) * t.num_slots();
        if (!std::equal(now.begin(), now.end(), held)) {
          std::copy(now.begin(), now.end(), held);
          sv->dispatchers[l].SetPlacement(now);
        }
      }
      dispatch(*routing, balanced ? &sv->dispatchers[l] : nullptr, slot_counts);
      int64_t served = 0;
      for (int64_t c : slot_counts) served += c;
      result.tokens_dropped += layer_tokens - served;
      if (multi) {
        // This rank's slots only; the controller sums the ranks' heat.
        std::fill(my_slots.begin(), my_slots.end(), 0);
        std::copy_n(slot_counts.begin() + sv->me * t.slots_per_rank,
                    t.slots_per_rank,
                    my_slots.begin() + sv->me * t.slots_per_rank);
        controller.recorder().RecordSlotCounts(l, my_slots);
      } else {
        controller.recorder().RecordSlotCounts(l, slot_counts);
      }
      if (o.verify_outputs) verify_layer(s, l, slot_counts);
      rank_sums(t, slot_counts, ranks);
      if (writer && !o.rank_load_log_path.empty()) {
        for (int r = 0; r < t.num_ranks; ++r) {
          rank_log += std::to_string(s) + ',' + std::to_string(l) + ',' +
                      std::to_string(sv->ranks[r]) + ',' +
                      std::to_string(std::llround(ranks[r])) + '\n';
        }
      }
      double util = 1;
      step_with += MoeLayerSeconds(o.hardware, o.model, ranks, &util);
      const double x = Imbalance(ranks);
      // Without: the default placement throughout.
      dispatch(baseline_routing[l], balanced ? &base_dispatch[l] : nullptr,
               base_slots);
      rank_sums(t0, base_slots, base);
      if (t.num_ranks == t0.num_ranks) {
        // The report's rank x layer loads, on the starting ranks.
        double m = 0, mb = 0;
        for (int r = 0; r < t0.num_ranks; ++r) {
          m += ranks[r];
          mb += base[r];
        }
        if (m > 0 && mb > 0) {
          m /= t0.num_ranks;
          mb /= t0.num_ranks;
          for (int r = 0; r < t0.num_ranks; ++r) {
            const size_t at = static_cast<size_t>(l) * t0.num_ranks + r;
            result.rank_layer_load[at] += ranks[r] / m;
            result.baseline_rank_layer_load[at] += base[r] / mb;
          }
          ++load_steps[l];
        }
      }
      double base_util = 1;
      step_without += MoeLayerSeconds(o.hardware, o.model, base, &base_util);
      const double y = Imbalance(base);
      result.imbalance_by_step_layer.push_back(x);
      if (x > 0) {
        with.imbalance.push_back(x);
        without.imbalance.push_back(y);
        with.utilization_sum += util;
        without.utilization_sum += base_util;
        ++with.utilization_n;
        ++without.utilization_n;
        sum_with += x;
        sum_without += y;
        ++scored;
      }
    }
    if (recovering_since >= 0 && s >= reload_until) {
      // Every expert serves again after this step.
      result.recovery_steps += s - recovering_since + 1;
      recovering_since = -1;
    }
    if (o.pace) {
      // The forward pass: the step lasts its modelled time.
      std::this_thread::sleep_until(
          step_start +
          std::chrono::nanoseconds(static_cast<int64_t>(step_with * 1e9)));
    }
    controller.AfterForward(tokens, step_with);
    if (o.verify_outputs) {
      // Summed over the ranks every step, so that a rank that fails later
      // has its outputs counted.
      if (multi) {
        EPLB_RETURN_IF_ERROR(collective->AllReduceSum(step_verified)
                                 .WithPrefix("summing the outputs"));
      }
      result.outputs_verified += step_verified[0];
      result.outputs_mismatched += step_verified[1];
      step_verified[0] = step_verified[1] = 0;
    }
    if (first_done < 0) first_done = controller.stats().warmup_steps;
    // Migration traffic of this step: stop-the-world stalls the step; async
    // copies overlap the forward and only cost what exceeds it.
    const int64_t bytes_now =
        retired.bytes_moved + controller.stats().bytes_moved;
    const double copy_s = TransferSeconds(
        o.hardware,
        static_cast<double>(bytes_now - bytes_before) / t.num_ranks);
    bytes_before = bytes_now;
    step_with += o.sync_migration ? copy_s : std::max(0.0, copy_s - step_with);
    with.step_seconds.push_back(step_with);
    without.step_seconds.push_back(step_without);
    with.per_step.push_back(scored ? sum_with / scored : 1.0);
    without.per_step.push_back(scored ? sum_without / scored : 1.0);
    ++result.steps;
    {
      // The report's series: moves by rebalance, plans taken.
      ControllerStats now = retired;
      add_stats(&now, controller.stats());
      if (now.rebalances > 0) {
        const auto k = static_cast<size_t>(now.rebalances - 1);
        if (result.experts_moved_by_rebalance.size() <= k) {
          result.experts_moved_by_rebalance.resize(k + 1, 0);
          result.bytes_moved_by_rebalance.resize(k + 1, 0);
        }
        result.experts_moved_by_rebalance[k] +=
            now.experts_moved - seen.experts_moved;
        result.bytes_moved_by_rebalance[k] +=
            now.bytes_moved - seen.bytes_moved;
      }
      if (now.cycles > seen.cycles) {
        result.plan_steps.push_back(s);
        result.plan_ms.push_back(
            static_cast<double>(controller.stats().last_plan_nanos) / 1e6);
        result.plan_late.push_back(now.cycles_late > seen.cycles_late ? 1 : 0);
      }
      seen = now;
    }
    if (o.progress) o.progress(s + 1, steps);
    if (o.metrics) {
      ControllerStats cs = retired;
      add_stats(&cs, controller.stats());
      cs.steps = result.steps;
      o.metrics(render_metrics(cs, nullptr));
    }
  }
  sv->controller->Shutdown();
  result.final_ranks = sv->topology.num_ranks;
  result.wall_ms = std::chrono::duration<double, std::milli>(
                       std::chrono::steady_clock::now() - wall_start)
                       .count();
  ControllerStats cs = retired;
  add_stats(&cs, sv->controller->stats());
  result.imbalance = Summarise(with.imbalance);
  result.steady_from = o.steady_from >= 0 ? o.steady_from : first_done;
  if (result.steady_from >= 0) {
    std::vector<double> steady;
    const size_t first = static_cast<size_t>(result.steady_from) * num_layers;
    for (size_t i = first; i < result.imbalance_by_step_layer.size(); ++i) {
      if (result.imbalance_by_step_layer[i] > 0) {
        steady.push_back(result.imbalance_by_step_layer[i]);
      }
    }
    result.imbalance_steady = Summarise(std::move(steady));
  }
  if (writer && !o.rank_load_log_path.empty()) {
    EPLB_RETURN_IF_ERROR(WriteFileAtomic(o.rank_load_log_path,
                                         "step,layer,rank,tokens\n" + rank_log)
                             .WithPrefix("rank-load log"));
  }
  result.baseline_imbalance = Summarise(without.imbalance);
  result.imbalance_per_step = std::move(with.per_step);
  result.baseline_imbalance_per_step = std::move(without.per_step);
  result.rebalances = cs.rebalances;
  result.cycles_late = cs.cycles_late;
  result.plan_late_steps = cs.plan_late_steps;
  result.max_plan_ms = static_cast<double>(cs.max_plan_nanos) / 1e6;
  result.plans_failed = cs.plans_failed + cs.plans_rejected;
  result.layers_committed = cs.layers_committed;
  result.layers_aborted = cs.layers_aborted;
  result.experts_moved = cs.experts_moved;
  result.bytes_moved = cs.bytes_moved;
  result.maps_written = cs.maps_written;
  result.layers_kept = cs.layers_kept;
  result.layers_incremental = cs.layers_incremental;
  result.layers_full = cs.layers_full;
  result.predicted_gain = cs.predicted_gain;
  result.layers_reverted = cs.layers_reverted;
  result.max_layers_per_step = cs.max_layers_per_step;
  result.warmup_steps = cs.warmup_steps;
  result.plan_hash_mismatches = cs.plan_hash_mismatches;
  result.plans_superseded = cs.plans_superseded;
  result.shifts_reverted = cs.shifts_reverted;
  if (cs.rebalances > 0) {
    result.moved_per_rebalance =
        static_cast<double>(cs.experts_moved) /
        static_cast<double>(cs.rebalances) /
        (static_cast<double>(num_layers) * sv->topology.num_slots());
  }
  result.max_stall_ms = static_cast<double>(cs.max_stall_nanos) / 1e6;
  const Distribution tw = Summarise(with.step_seconds);
  const Distribution tb = Summarise(without.step_seconds);
  result.ttft_p99_ms = tw.p99 * 1e3;
  result.tpot_avg_ms = tw.mean * 1e3;
  result.baseline_ttft_p99_ms = tb.p99 * 1e3;
  result.baseline_tpot_avg_ms = tb.mean * 1e3;
  result.utilization =
      with.utilization_n
          ? with.utilization_sum / static_cast<double>(with.utilization_n)
          : 1;
  result.baseline_utilization =
      without.utilization_n
          ? without.utilization_sum / static_cast<double>(without.utilization_n)
          : 1;
  for (int l = 0; l < num_layers; ++l) {
    for (int r = 0; r < t0.num_ranks && load_steps[l] > 0; ++r) {
      const size_t at = static_cast<size_t>(l) * t0.num_ranks + r;
      result.rank_layer_load[at] /= static_cast<double>(load_steps[l]);
      result.baseline_rank_layer_load[at] /= static_cast<double>(load_steps[l]);
    }
  }
  result.commits_per_step.resize(static_cast<size_t>(result.steps), 0);
  result.plan_budget_ms = o.config.algorithm_execution_interval * tw.mean * 1e3;
  cs.steps = result.steps;
  const ServingMetrics serving{.ttft_p99_seconds = tw.p99,
                               .tpot_avg_seconds = tw.mean,
                               .utilization = result.utilization};
  result.metrics = render_metrics(cs, &serving);
  if (o.metrics) o.metrics(result.metrics);
  return result;
}

}  // namespace eplb
