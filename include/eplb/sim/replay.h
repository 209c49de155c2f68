// Replay: feeds a recorded trace, step by step, through the real recorder,
// controller and migration engine, while a step loop plays the forward
// passes; measures the realized balance and, through the cost model, the
// serving impact, with and without balancing. It drives the library through
// the seam an engine uses: its weights are SyntheticWeights (an
// ExpertWeights), its transport and collective are the in-process ones, or,
// with one process per rank (eplb replay --transport mpi), MPI's: each
// process then hosts one rank's weights, records the heat of the tokens its
// slots serve, and the controller sums it with the other ranks'.
//
// With verify_outputs, every rank runs a small expert FFN (sim/expert_ffn.h)
// for every token its slots receive, on the weights in the slot, and checks
// the output bit for bit against the expert's original weights (what the
// initial placement computes without balancing).
//
// Each replay step takes `batch_steps` consecutive trace steps. In a step,
// every expert's tokens go to its replicas under the routing in force at
// that step, split by the default dispatch (whole tokens, round
// robin over replicas in physical-id order); a rank's load is the tokens its
// slots received, and the realized imbalance of a (step, layer) is max / mean
// rank load. Steps with no tokens in a layer are not scored.
#ifndef EPLB_REPLAY_H_
#define EPLB_REPLAY_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "eplb/collective.h"
#include "eplb/config.h"
#include "eplb/dispatch.h"
#include "eplb/load.h"
#include "eplb/model.h"
#include "eplb/placement.h"
#include "eplb/sim/cost_model.h"
#include "eplb/status.h"
#include "eplb/topology.h"
#include "eplb/transport.h"

namespace eplb {

struct ReplayOptions {
  ModelSpec model;
  QuantType quant = QuantType::kBf16;
  HardwareProfile hardware;
  Topology topology;
  EplbConfig config;    // Mode, intervals, policy, paths.
  std::string policy;   // Overrides config.eplb_policy_type when set.
  int batch_steps = 1;  // Trace steps per replay step.
  // How each step's tokens for an expert are split over its replicas, on
  // the balanced side and in what the policies plan for ("no balancing" is
  // always the default placement under the same dispatch).
  DispatchMode dispatch = DispatchMode::kRoundRobin;
  // Steady state: the figures of `imbalance_steady` count replay steps from
  // this one on; < 0: from the step after the first rebalance's last
  // commit (warm-up over).
  int64_t steady_from = -1;
  bool sync_migration = false;  // Stop-the-world migration.
  // Each step lasts at least its modelled time in wall-clock time, so the
  // planner thread and the copies race the forward passes as they would in
  // an engine. Off: a simulation in lockstep (ControllerOptions::lockstep):
  // steps run back to back, plans are taken at their due step and layers
  // commit at the end of the step they start, on any machine alike.
  bool pace = true;
  int64_t memory_budget_bytes = 256 << 20;
  int max_num_reqs = 256;
  int sample_history = 128;  // Steps of per-step samples policies see.
  // Called once per replay step (for a progress bar), on the replay thread.
  std::function<void(int64_t step, int64_t steps)> progress;
  // JSON-lines placement log (docs/formats.md); empty: none.
  std::string placement_log_path;
  // CSV "step,layer,rank,tokens": the tokens every rank received at every
  // step and layer under the dispatch in use, zeros included; empty: none.
  std::string rank_load_log_path;
  // Set from a signal handler to stop early; the result covers the steps
  // replayed, and every file written is whole.
  const std::atomic<bool>* interrupt = nullptr;
  std::function<void(std::string_view line)> log;  // Controller problems.
  // One process per rank: the job's collective (size() == the topology's
  // ranks; this process hosts rank collective->rank()) and transport. Null:
  // this process hosts every rank over the in-process transport.
  Collective* collective = nullptr;
  Transport* transport = nullptr;
  // Faults injected into the transport (tests): see WrapWithFaults.
  FaultOptions faults;
  bool verify_outputs = false;
  // A failed rank (fault injection): rank `fail_rank` (its index when the
  // replay starts) stops serving before replay step `fail_at_step` and its
  // weights are gone; -1: none. The survivors switch the lost slots'
  // experts to surviving replicas at once, reload the experts that had no
  // surviving replica from the weight source, re-form the job over
  // themselves (each takes a share of the lost rank's slots, so the same
  // slots serve on fewer ranks) and keep serving, re-planning from there.
  // In one process the failure is simulated; over MPI the failed process
  // leaves (calling `leave`) and the others find out through the transport:
  // the per-step heartbeat (a collective call) times out, and `recover`
  // re-forms the job over the processes that still answer. Rank 0 prints
  // the job's results, so it may not be the one to fail.
  int fail_rank = -1;
  int64_t fail_at_step = -1;
  struct Survivors {
    std::vector<int> processes;      // Indices among the processes before.
    Transport* transport = nullptr;  // Spanning the survivors.
  };
  std::function<StatusOr<Survivors>()> recover;
  std::function<void()> leave;
  // Called on the replay thread after every replay step with the figures so
  // far in the Prometheus text format (eplb/metrics.h; for a /metrics
  // endpoint), and once more at the end with the final ones (as
  // ReplayResult::metrics). With metrics_heat, the exposition includes each
  // logical expert's tokens in the latest step.
  std::function<void(const std::string& exposition)> metrics;
  bool metrics_heat = false;
};

struct Distribution {
  double median = 1, p90 = 1, p99 = 1, mean = 1, max = 1;
};

struct ReplayResult {
  int64_t steps = 0;  // Replay steps run.
  bool interrupted = false;
  std::string policy;
  std::string mode;
  Distribution imbalance;  // Realized, with balancing.
  // The same over replay steps >= steady_from (the step it starts from is
  // reported; -1 when no rebalance finished and steady_from was < 0).
  Distribution imbalance_steady;
  int64_t steady_from = -1;
  // Realized imbalance of every (replay step, layer) with balancing,
  // [steps][L]; 0 where the layer routed no token (not scored).
  std::vector<double> imbalance_by_step_layer;
  // Realized without balancing: the default placement (Placement::Initial)
  // throughout, also when config.expert_map_path gave the starting map.
  Distribution baseline_imbalance;
  std::vector<double> imbalance_per_step;           // Mean over layers.
  std::vector<double> baseline_imbalance_per_step;  // Mean over layers.
  int64_t rebalances = 0;
  int64_t cycles_late = 0;      // Plan not ready after A steps.
  int64_t plan_late_steps = 0;  // Steps served waiting for late plans.
  double max_plan_ms = 0;       // Slowest plan (planner thread, wall clock).
  int64_t plans_failed = 0;
  int64_t layers_committed = 0;
  int64_t layers_aborted = 0;
  int64_t experts_moved = 0;
  int64_t bytes_moved = 0;         // Real expert sizes.
  double moved_per_rebalance = 0;  // Experts moved / rebalance / (L*R*K).
  double max_stall_ms = 0;  // Wall clock: serving thread waiting on migration.
  double wall_ms = 0;
  int64_t weight_scale = 1;  // Real bytes / stored bytes per expert.
  // Cost model.
  double ttft_p99_ms = 0, tpot_avg_ms = 0, utilization = 0;
  double baseline_ttft_p99_ms = 0, baseline_tpot_avg_ms = 0,
         baseline_utilization = 0;
  int64_t maps_written = 0;
  // What the policy chose, over every plan taken (ControllerStats).
  int64_t layers_kept = 0;
  int64_t layers_incremental = 0;
  int64_t layers_full = 0;
  double predicted_gain = 0.0;
  int64_t layers_reverted = 0;  // Migrated back after a shift that ended.
  int64_t max_layers_per_step = 0;
  int64_t warmup_steps = -1;  // Steps before the first plan fully committed.
  int processes = 1;          // Processes the ranks ran in.
  int64_t plan_hash_mismatches = 0;
  // Plans dropped because the traffic shifted while they were made.
  int64_t plans_superseded = 0;
  // Shifts that ended (a burst): their plan dropped when due, or the
  // placement before them migrated back to.
  int64_t shifts_reverted = 0;
  // verify_outputs: tokens whose expert output was checked, and those that
  // differed from the original weights' output (over every rank).
  int64_t outputs_verified = 0;
  int64_t outputs_mismatched = 0;
  // Rank failures: ranks lost; tokens never served (no slot held their
  // expert); tokens that waited for their expert's reload; replay steps
  // from a failure until every expert served again; experts that had no
  // surviving replica; experts loaded from the weight source onto the
  // survivors (real bytes too).
  int ranks_failed = 0;
  int64_t tokens_dropped = 0;
  int64_t tokens_delayed = 0;
  int64_t recovery_steps = 0;
  int64_t experts_lost = 0;
  int64_t experts_reloaded = 0;
  int64_t bytes_reloaded = 0;
  int final_ranks = 0;  // Ranks serving at the end.
  // This process is the one that failed (over MPI): its figures are not
  // the job's.
  bool failed_here = false;
  // The final figures in the Prometheus text format, the cost model's
  // serving figures included.
  std::string metrics;
  // For the report (ReplayReportHtml):
  // layers committed at each replay step (serving from that step) [steps];
  std::vector<int> commits_per_step;
  // mean over the steps served on the starting ranks of each rank's load
  // over the mean rank load, [L][R] (R: the ranks at the start), with and
  // without balancing;
  std::vector<double> rank_layer_load;
  std::vector<double> baseline_rank_layer_load;
  int report_ranks = 0;
  // experts moved and real bytes moved by each rebalance, in order;
  std::vector<int64_t> experts_moved_by_rebalance;
  std::vector<int64_t> bytes_moved_by_rebalance;
  // each plan taken: the replay step it was taken at, its time on the
  // planner thread, and whether it was late; the time a plan may take
  // (algorithm_execution_interval x the mean modelled step).
  std::vector<int64_t> plan_steps;
  std::vector<double> plan_ms;
  std::vector<char> plan_late;
  double plan_budget_ms = 0;
};

// The replay's defaults: one set, used by `eplb replay` and the harnesses
// alike. The shipped DeepSeek-V2-Lite trace (prefill, 64 experts, few
// tokens per trace step) replays on 16 ranks with 16 redundant experts, 16
// trace steps per replay step; any other trace on 8 ranks with 8 redundant
// experts, one trace step per replay step. Both: dynamic mode, heat
// interval 8, algorithm interval 1, the config's other defaults.
struct ReplayDefaults {
  int ranks = 8;
  int batch_steps = 1;
  EplbConfig config;  // num_redundant_experts and the intervals set.
};
ReplayDefaults DefaultReplay(bool shipped_trace);

// The result of a replay as one JSON object on one line (`eplb replay
// --json`; every field is listed in docs/formats.md): the options it ran
// with (model, topology, intervals, dispatch, ...), the balance figures as
// {median, p90, p99, mean, max}, migration, cost model, ranks and outputs.
// `trace` and `transport` name what the caller replayed and over what.
// `outputs_mismatched` is null unless options.verify_outputs.
std::string ReplayResultJson(const ReplayResult& result,
                             const ReplayOptions& options,
                             std::string_view trace,
                             std::string_view transport);

// Replays `trace` (its layers and experts must match the model and the map).
// InvalidArgument for shape mismatches and bad options; NotFound for a
// static map that does not exist.
StatusOr<ReplayResult> RunReplay(const LoadTrace& trace,
                                 const ReplayOptions& options);

// Realized per-rank loads of one layer [R] under a placement's replicas and
// the default dispatch (RoundRobinQuotas summed per rank). `counts` [E]
// token counts, rounded to whole tokens.
std::vector<double> DispatchRankLoads(const LayerRouting& routing,
                                      std::span<const double> counts);

}  // namespace eplb

#endif  // EPLB_REPLAY_H_
