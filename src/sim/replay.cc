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

// Imbalance of rank loads; 0 when the layer had no tokens (not scored).
double Imbalance(std::span<const double> ranks) {
  double peak = 0, total = 0;
  for (double x : ranks) {
    peak = std::max(peak, x);
    total += x;
  }
  return total > 0 ? peak / (total / static_cast<double>(ranks.size())) : 0.0;
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

}  // namespace

StatusOr<ReplayResult> RunReplay(const LoadTrace& trace,
                                 const ReplayOptions& o) {
  const Topology& t = o.topology;
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
                        MakeTopology(num_experts, t.num_ranks, t.slots_per_rank,
                                     t.ranks_per_node));
  (void)checked;
  const EplbMode mode = o.config.mode();
  // One process per rank, or one for all.
  Collective* collective =
      o.collective != nullptr ? o.collective : LocalCollective();
  const bool multi = collective->size() > 1;
  if (multi && collective->size() != t.num_ranks) {
    return InvalidArgumentError(
        "replay over " + std::to_string(collective->size()) +
        " processes needs one per rank, but there are " +
        std::to_string(t.num_ranks) + " ranks");
  }
  if (multi && o.transport == nullptr) {
    return InvalidArgumentError(
        "replay over several processes needs their transport");
  }
  const int me = collective->rank();
  auto hosts = [&](int rank) { return !multi || rank == me; };
  // Logs are written by one process (they describe the whole job).
  const bool writer = me == 0;
  Placement initial = Placement::Initial(num_layers, num_experts, t);
  if (o.config.expert_map_path.has_value()) {
    EPLB_ASSIGN_OR_RETURN(
        initial,
        ReadExpertMapJson(*o.config.expert_map_path,
                          MapExpectations{.num_layers = num_layers,
                                          .num_ranks = t.num_ranks,
                                          .num_experts = num_experts,
                                          .slots_per_rank = t.slots_per_rank}));
  }
  const std::string policy_name =
      o.policy.empty() ? std::to_string(o.config.eplb_policy_type) : o.policy;
  EPLB_ASSIGN_OR_RETURN(std::unique_ptr<Policy> policy,
                        CreatePolicy(policy_name));
  ReplayResult result;
  result.policy = std::string(policy->name());
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

  // The engine's side of the seam: weights, transport, collective.
  SyntheticWeightsOptions wopts{
      .topology = t,
      .num_layers = num_layers,
      .num_experts = num_experts,
      .real_expert_bytes = ExpertBytes(o.model, o.quant),
      .tensors = ExpertTensors(o.model, o.quant),
      .memory_budget_bytes = o.memory_budget_bytes};
  if (multi) wopts.hosted_ranks = {me};
  EPLB_ASSIGN_OR_RETURN(std::unique_ptr<SyntheticWeights> weights,
                        SyntheticWeights::Create(wopts, initial));
  if (o.verify_outputs && weights->stored_expert_bytes() < kFfnWeightBytes) {
    return InvalidArgumentError(
        "verifying outputs needs " + std::to_string(kFfnWeightBytes) +
        " stored bytes per expert, the memory budget gives " +
        std::to_string(weights->stored_expert_bytes()) +
        "; raise the memory budget");
  }
  std::unique_ptr<Transport> owned_transport;
  Transport* transport = o.transport;
  if (transport == nullptr) {
    EPLB_ASSIGN_OR_RETURN(owned_transport,
                          CreateInProcessTransport({.num_threads = 1}));
    transport = owned_transport.get();
  }
  if (o.faults.fail_every > 0 || o.faults.corrupt_every > 0 ||
      o.faults.delay_nanos > 0) {
    owned_transport = WrapWithFaults(
        owned_transport != nullptr
            ? std::move(owned_transport)
            : std::unique_ptr<Transport>(new TransportRef(transport)),
        o.faults);
    transport = owned_transport.get();
  }
  ControllerOptions copts;
  copts.config = o.config;
  copts.config.eplb_dispatch = o.dispatch;
  // The simulated hardware's link, unless the config names one.
  if (copts.config.eplb_link_gbytes_per_s <= 0.0) {
    copts.config.eplb_link_gbytes_per_s = o.hardware.link_gbytes_per_s;
  }
  copts.topology = t;
  copts.num_layers = num_layers;
  copts.num_experts = num_experts;
  copts.initial = initial;
  copts.policy = std::move(policy);
  copts.weights = weights.get();
  copts.transport = transport;
  copts.collective = collective;
  copts.real_expert_bytes = ExpertBytes(o.model, o.quant);
  copts.max_num_reqs = o.max_num_reqs;
  copts.sample_history = o.sample_history;
  copts.sync_migration = o.sync_migration;
  copts.lockstep = !o.pace;
  copts.log = o.log;
  copts.on_commit = [&](int64_t step, int layer, const Placement& p) {
    write_line(PlacementLine(step, layer, p));
  };
  EPLB_ASSIGN_OR_RETURN(std::unique_ptr<Controller> controller,
                        Controller::Create(std::move(copts)));
  controller->Start();
  result.weight_scale = weights->scale();
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
  // file gave the starting placement.
  const Placement unbalanced = Placement::Initial(num_layers, num_experts, t);
  std::vector<LayerRouting> baseline_routing;
  baseline_routing.reserve(num_layers);
  for (int l = 0; l < num_layers; ++l) {
    baseline_routing.push_back(
        BuildLayerRouting(unbalanced.layer(l), num_experts, t));
  }
  Side with, without;
  std::vector<double> counts(num_experts);
  std::vector<int64_t> tokens_of(num_experts);
  std::vector<int64_t> slot_counts(t.num_slots());
  std::vector<int64_t> base_slots(t.num_slots());
  std::vector<double> ranks(t.num_ranks);
  std::vector<double> base(t.num_ranks);
  // Balanced dispatch: one dispatcher per layer and side, told each
  // placement as it starts serving.
  const bool balanced = o.dispatch == DispatchMode::kBalanced;
  std::vector<BalancedDispatcher> with_dispatch, base_dispatch;
  std::vector<int32_t> dispatched;  // [L][R*K]: what with_dispatch holds.
  if (balanced) {
    for (int l = 0; l < num_layers; ++l) {
      with_dispatch.emplace_back(num_experts, t.num_ranks, t.slots_per_rank);
      base_dispatch.emplace_back(num_experts, t.num_ranks, t.slots_per_rank);
      with_dispatch.back().SetPlacement(initial.layer(l));
      base_dispatch.back().SetPlacement(unbalanced.layer(l));
    }
    dispatched = initial.data();
  }
  // The dispatch of both sides: the same rule, each under its own routing.
  auto dispatch = [&](const LayerRouting& routing, BalancedDispatcher* d,
                      std::span<int64_t> slots) {
    if (balanced) {
      d->ComputeQuotas(tokens_of, slots);
    } else {
      RoundRobinQuotas(routing, tokens_of, slots);
    }
  };
  auto rank_sums = [&](std::span<const int64_t> slots, std::span<double> out) {
    std::fill(out.begin(), out.end(), 0.0);
    for (int phy = 0; phy < t.num_slots(); ++phy) {
      out[phy / t.slots_per_rank] += static_cast<double>(slots[phy]);
    }
  };
  std::string rank_log;
  // The heat this process records: its own ranks' slots.
  std::vector<int64_t> my_slots(t.num_slots());
  // Output verification: each expert's original weights, and the running
  // occurrence count of each expert over the slots of a layer.
  std::vector<std::byte> original;
  std::vector<int64_t> occurrence(num_experts);
  if (o.verify_outputs) {
    const auto bytes = static_cast<size_t>(weights->stored_expert_bytes());
    original.resize(static_cast<size_t>(num_layers) * num_experts * bytes);
    for (int l = 0; l < num_layers; ++l) {
      for (int e = 0; e < num_experts; ++e) {
        weights->FillExpert(
            l, e,
            std::span<std::byte>(original).subspan(
                (static_cast<size_t>(l) * num_experts + e) * bytes, bytes));
      }
    }
  }
  auto verify_layer = [&](int64_t step, int l,
                          std::span<const int64_t> slot_tokens) {
    const auto bytes = static_cast<size_t>(weights->stored_expert_bytes());
    const Placement& serving = controller->placement();
    std::fill(occurrence.begin(), occurrence.end(), 0);
    float x[kFfnModel], y[kFfnModel], want[kFfnModel];
    for (int phy = 0; phy < t.num_slots(); ++phy) {
      const int r = phy / t.slots_per_rank;
      const int e = serving.at(l, r, phy % t.slots_per_rank);
      const int64_t first = occurrence[e];
      occurrence[e] += slot_tokens[phy];
      if (!hosts(r)) continue;
      const std::span<const std::byte> slot =
          weights->SlotBytes(r, l, phy % t.slots_per_rank);
      const std::span<const std::byte> ref =
          std::span<const std::byte>(original).subspan(
              (static_cast<size_t>(l) * num_experts + e) * bytes, bytes);
      for (int64_t j = first; j < occurrence[e]; ++j) {
        TokenActivation(step, l, e, j, x);
        ExpertFfn(slot, x, y);
        ExpertFfn(ref, x, want);
        ++result.outputs_verified;
        if (std::memcmp(y, want, sizeof(y)) != 0) ++result.outputs_mismatched;
      }
    }
  };
  int64_t first_done = -1;  // Replay steps before the first plan committed.
  const double dense_s = o.hardware.dense_us_per_layer * 1e-6 * num_layers;
  const auto wall_start = std::chrono::steady_clock::now();
  int64_t bytes_before = 0;
  for (int64_t s = 0; s < steps; ++s) {
    int64_t stop[1] = {o.interrupt != nullptr && o.interrupt->load() ? 1 : 0};
    // Every process stops at the same step (their calls are collective).
    if (multi && !collective->AllReduceMax(stop).ok()) stop[0] = 1;
    if (stop[0] != 0) {
      result.interrupted = true;
      break;
    }
    const auto step_start = std::chrono::steady_clock::now();
    controller->BeforeForward();
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
      for (int e = 0; e < num_experts; ++e) {
        tokens_of[e] = std::llround(counts[e]);
      }
      if (l == 0) {
        double assignments = 0;
        for (double c : counts) assignments += c;
        tokens = std::llround(assignments / std::max(1, o.model.top_k));
      }
      // With balancing: the routing in force at this step.
      std::shared_ptr<const LayerRouting> routing =
          controller->routing().Get(l);
      if (balanced) {
        // The committed placement is what the routing serves (both change
        // together on this thread).
        const std::span<const int32_t> now = controller->placement().layer(l);
        int32_t* held =
            dispatched.data() + static_cast<size_t>(l) * t.num_slots();
        if (!std::equal(now.begin(), now.end(), held)) {
          std::copy(now.begin(), now.end(), held);
          with_dispatch[l].SetPlacement(now);
        }
      }
      dispatch(*routing, balanced ? &with_dispatch[l] : nullptr, slot_counts);
      if (multi) {
        // This rank's slots only; the controller sums the ranks' heat.
        std::fill(my_slots.begin(), my_slots.end(), 0);
        std::copy_n(slot_counts.begin() + me * t.slots_per_rank,
                    t.slots_per_rank, my_slots.begin() + me * t.slots_per_rank);
        controller->recorder().RecordSlotCounts(l, my_slots);
      } else {
        controller->recorder().RecordSlotCounts(l, slot_counts);
      }
      if (o.verify_outputs) verify_layer(s, l, slot_counts);
      rank_sums(slot_counts, ranks);
      if (writer && !o.rank_load_log_path.empty()) {
        for (int r = 0; r < t.num_ranks; ++r) {
          rank_log += std::to_string(s) + ',' + std::to_string(l) + ',' +
                      std::to_string(r) + ',' +
                      std::to_string(std::llround(ranks[r])) + '\n';
        }
      }
      double util = 1;
      step_with += MoeLayerSeconds(o.hardware, o.model, ranks, &util);
      const double x = Imbalance(ranks);
      // Without: the default placement throughout.
      dispatch(baseline_routing[l], balanced ? &base_dispatch[l] : nullptr,
               base_slots);
      rank_sums(base_slots, base);
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
    if (o.pace) {
      // The forward pass: the step lasts its modelled time.
      std::this_thread::sleep_until(
          step_start +
          std::chrono::nanoseconds(static_cast<int64_t>(step_with * 1e9)));
    }
    controller->AfterForward(tokens, step_with);
    if (first_done < 0) first_done = controller->stats().warmup_steps;
    // Migration traffic of this step: stop-the-world stalls the step; async
    // copies overlap the forward and only cost what exceeds it.
    const int64_t bytes_now = controller->stats().bytes_moved;
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
    if (o.progress) o.progress(s + 1, steps);
  }
  controller->Shutdown();
  if (multi) {
    int64_t sums[2] = {result.outputs_verified, result.outputs_mismatched};
    EPLB_RETURN_IF_ERROR(
        collective->AllReduceSum(sums).WithPrefix("summing the outputs"));
    result.outputs_verified = sums[0];
    result.outputs_mismatched = sums[1];
  }
  result.wall_ms = std::chrono::duration<double, std::milli>(
                       std::chrono::steady_clock::now() - wall_start)
                       .count();
  const ControllerStats cs = controller->stats();
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
  result.max_layers_per_step = cs.max_layers_per_step;
  result.warmup_steps = cs.warmup_steps;
  result.plan_hash_mismatches = cs.plan_hash_mismatches;
  if (cs.rebalances > 0) {
    result.moved_per_rebalance =
        static_cast<double>(cs.experts_moved) /
        static_cast<double>(cs.rebalances) /
        (static_cast<double>(num_layers) * t.num_slots());
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
  return result;
}

}  // namespace eplb
