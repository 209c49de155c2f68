// The replay's defaults and its result as JSON (eplb/sim/replay.h).
#include <nlohmann/json.hpp>

#include "eplb/sim/replay.h"

namespace eplb {

ReplayDefaults DefaultReplay(bool shipped_trace) {
  ReplayDefaults d;
  d.ranks = shipped_trace ? 16 : 8;
  d.batch_steps = shipped_trace ? 16 : 1;
  d.config.dynamic_eplb = true;
  d.config.expert_heat_collection_interval = 8;
  d.config.algorithm_execution_interval = 1;
  d.config.num_redundant_experts = shipped_trace ? 16 : 8;
  return d;
}

namespace {

nlohmann::json Dist(const Distribution& d) {
  return nlohmann::json{{"median", d.median},
                        {"p90", d.p90},
                        {"p99", d.p99},
                        {"mean", d.mean},
                        {"max", d.max}};
}

}  // namespace

std::string ReplayResultJson(const ReplayResult& r, const ReplayOptions& o,
                             std::string_view trace,
                             std::string_view transport) {
  const EplbConfig& c = o.config;
  nlohmann::json j = {{"trace", trace},
                      {"model", o.model.name},
                      {"quant", QuantTypeName(o.quant)},
                      {"hardware", o.hardware.name},
                      {"mode", r.mode},
                      {"steps", r.steps},
                      {"batch_steps", o.batch_steps},
                      {"layers", o.model.num_moe_layers},
                      {"experts", o.model.num_experts},
                      {"ranks", o.topology.num_ranks},
                      {"slots_per_rank", o.topology.slots_per_rank},
                      {"redundant", c.num_redundant_experts},
                      {"policy", r.policy},
                      {"heat_interval", c.expert_heat_collection_interval},
                      {"algo_interval", c.algorithm_execution_interval},
                      {"sync_migration", o.sync_migration},
                      {"dispatch", DispatchModeName(o.dispatch)},
                      {"imbalance", Dist(r.imbalance)},
                      {"baseline_imbalance", Dist(r.baseline_imbalance)},
                      {"steady_from", r.steady_from},
                      {"imbalance_steady", Dist(r.imbalance_steady)},
                      {"warmup_steps", r.warmup_steps},
                      {"rebalances", r.rebalances},
                      {"cycles_late", r.cycles_late},
                      {"plan_late_steps", r.plan_late_steps},
                      {"max_plan_ms", r.max_plan_ms},
                      {"plans_failed", r.plans_failed},
                      {"layers_committed", r.layers_committed},
                      {"layers_aborted", r.layers_aborted},
                      {"experts_moved", r.experts_moved},
                      {"bytes_moved", r.bytes_moved},
                      {"moved_per_rebalance", r.moved_per_rebalance},
                      {"max_stall_ms", r.max_stall_ms},
                      {"ttft_p99_ms", r.ttft_p99_ms},
                      {"tpot_avg_ms", r.tpot_avg_ms},
                      {"utilization", r.utilization},
                      {"baseline_ttft_p99_ms", r.baseline_ttft_p99_ms},
                      {"baseline_tpot_avg_ms", r.baseline_tpot_avg_ms},
                      {"baseline_utilization", r.baseline_utilization},
                      {"maps_written", r.maps_written},
                      {"layers_kept", r.layers_kept},
                      {"layers_incremental", r.layers_incremental},
                      {"layers_full", r.layers_full},
                      {"predicted_gain", r.predicted_gain},
                      {"layers_reverted", r.layers_reverted},
                      {"max_layers_per_step", r.max_layers_per_step},
                      {"weight_scale", r.weight_scale},
                      {"transport", transport},
                      {"processes", r.processes},
                      {"plan_hash_mismatches", r.plan_hash_mismatches},
                      {"plans_superseded", r.plans_superseded},
                      {"shifts_reverted", r.shifts_reverted},
                      {"outputs_verified", r.outputs_verified},
                      {"outputs_mismatched",
                       o.verify_outputs ? nlohmann::json(r.outputs_mismatched)
                                        : nlohmann::json(nullptr)},
                      {"ranks_failed", r.ranks_failed},
                      {"final_ranks", r.final_ranks},
                      {"tokens_dropped", r.tokens_dropped},
                      {"tokens_delayed", r.tokens_delayed},
                      {"recovery_steps", r.recovery_steps},
                      {"experts_lost", r.experts_lost},
                      {"experts_reloaded", r.experts_reloaded},
                      {"bytes_reloaded", r.bytes_reloaded},
                      {"interrupted", r.interrupted},
                      {"wall_ms", r.wall_ms}};
  return j.dump();
}

}  // namespace eplb
