// eplb plan: run a balancing policy on a load and write the planned map; with
// several loads (repeated --load, an eplb heat file, or
// --workloads-from-steps), plan one robust map for all of them (PlanRobust).
#include <chrono>
#include <cstdio>
#include <fstream>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "cli_util.h"
#include "eplb/io.h"
#include "eplb/limits.h"
#include "eplb/policy.h"
#include "eplb/robust.h"

namespace eplb::cli {
namespace {

struct PlanFlags {
  std::vector<std::string> load_paths;  // --load, repeatable.
  std::string load_path;                // The first.
  std::string current_path;
  std::string out_path;
  bool out_given = false;  // --out "" is an error, not "no output".
  std::string policy = "swift";
  TopologyFlags topology;
  int groups = 1;
  int threads = 1;
  int window = 0;  // 0: every step.
  uint64_t seed = 0;
  double migration_budget = 1.0;
  std::string dispatch = "rr";
  bool json = false;
  // Robust planning (several workloads, or --robust-quantile).
  double robust_quantile = 1.0;
  bool robust_quantile_given = false;
  bool workloads_from_steps = false;
  bool policy_given = false;
  bool current_given = false;
};

struct Summary {
  double mean = 1.0, max = 1.0, current_mean = 1.0, bound_mean = 1.0;
  int moved = 0, intra = 0, inter = 0, changed = 0;
  int kept = 0, incremental = 0, full = 0;
  double predicted_gain = 0.0;  // Sum over layers of the score gained.
};

Summary Summarise(const Plan& plan) {
  Summary s;
  const double n = static_cast<double>(plan.layers.size());
  if (plan.layers.empty()) return s;
  s.mean = s.current_mean = s.bound_mean = 0.0;
  s.max = 0.0;
  for (const LayerPlan& l : plan.layers) {
    s.mean += l.predicted_imbalance / n;
    s.current_mean += l.current_imbalance / n;
    s.bound_mean += l.lower_bound / n;
    s.max = std::max(s.max, l.predicted_imbalance);
    s.moved += l.moved_experts;
    s.intra += l.intra_node_moves;
    s.inter += l.inter_node_moves;
    s.changed += l.changed ? 1 : 0;
    if (!l.changed) {
      ++s.kept;
    } else if (l.choice == LayerChoice::kFull) {
      ++s.full;
    } else {
      ++s.incremental;
    }
    if (l.changed) s.predicted_gain += l.current_score - l.predicted_score;
  }
  return s;
}

// Mean over layers of StepImbalance.
double StepImbalanceMean(const Placement& p, const LoadTrace& samples) {
  double total = 0.0;
  for (int l = 0; l < p.num_layers(); ++l) {
    total += StepImbalance(p, l, samples);
  }
  return total / p.num_layers();
}

// Whether the file at `path` starts as an eplb heat file does
// ({"eplb_heat": ...); false when it cannot be read (its reader says why).
bool IsHeatFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char head[32] = {};
  in.read(head, sizeof head);
  const std::string_view text =
      StripUtf8Bom(std::string_view(head, static_cast<size_t>(in.gcount())));
  const size_t brace = text.find_first_not_of(" \t\r\n");
  return brace != std::string_view::npos && text[brace] == '{' &&
         text.substr(brace + 1).find_first_not_of(" \t\r\n") !=
             std::string_view::npos &&
         text.substr(text.find_first_not_of(" \t\r\n", brace + 1))
             .starts_with("\"eplb_heat\"");
}

// One workload of a robust plan: its load and where it came from.
struct Workload {
  std::string source;  // "FILE", "FILE workload 2" or "FILE step 7".
  LoadMatrix load;
  int steps = 0;
};

// The workloads of one --load file: an eplb heat file holds several (one per
// recorded run); any other load file is one workload (the sum of its last
// --window steps), or one per step with --workloads-from-steps.
Status ReadWorkloads(const std::string& path, const PlanFlags& f,
                     std::vector<Workload>* out) {
  if (IsHeatFile(path)) {
    StatusOr<HeatFile> heat = ReadHeatFile(path);
    if (!heat.ok()) return heat.status();
    if (heat->loads.empty()) {
      return InvalidArgumentError(path + ": the heat file holds no workload");
    }
    for (size_t w = 0; w < heat->loads.size(); ++w) {
      out->push_back({path + " workload " + std::to_string(w),
                      std::move(heat->loads[w]),
                      static_cast<int>(heat->steps[w])});
    }
    return Status::Ok();
  }
  EPLB_ASSIGN_OR_RETURN(const LoadTrace trace, ReadLoadFile(path));
  const int end = trace.num_steps();
  const int begin = f.window > 0 ? std::max(0, end - f.window) : 0;
  if (!f.workloads_from_steps) {
    out->push_back({path, trace.Aggregate(begin, end), end - begin});
    return Status::Ok();
  }
  for (int s = begin; s < end; ++s) {
    out->push_back(
        {path + " step " + std::to_string(s), trace.Aggregate(s, s + 1), 1});
  }
  return Status::Ok();
}

// Several workloads (or --robust-quantile): one map for all of them
// (PlanRobust), reported per workload.
// Runs plan_fn (a StatusOr of something with a `placement`), timing it into
// *plan_ms, and writes the planned map to --out when given (a failed write
// is the result then).
template <typename PlanFn>
auto PlanTimedAndWritten(const PlanFlags& f, PlanFn plan_fn, double* plan_ms)
    -> decltype(plan_fn()) {
  const auto start = std::chrono::steady_clock::now();
  auto plan = plan_fn();
  *plan_ms = std::chrono::duration<double, std::milli>(
                 std::chrono::steady_clock::now() - start)
                 .count();
  if (plan.ok() && f.out_given) {
    Status written = WriteExpertMapJson(f.out_path, plan->placement);
    if (!written.ok()) return written;
  }
  return plan;
}

int RunRobustPlan(const PlanFlags& f) {
  if (f.policy_given) {
    return Fail("--policy = " + f.policy +
                ": a plan for several workloads uses the robust planner, "
                "not a policy (drop --policy)");
  }
  if (f.current_given) {
    return Fail("--current = " + f.current_path +
                ": a plan for several workloads is a static map planned "
                "from scratch (drop --current)");
  }
  std::vector<Workload> workloads;
  for (const std::string& path : f.load_paths) {
    Status read = ReadWorkloads(path, f, &workloads);
    if (!read.ok()) return Fail(read);
  }
  if (workloads.empty()) return Fail("--load: no workload read");
  const Workload& first = workloads.front();
  for (const Workload& w : workloads) {
    if (w.load.num_layers() != first.load.num_layers() ||
        w.load.num_experts() != first.load.num_experts()) {
      return Fail("--load " + w.source + " has " +
                  std::to_string(w.load.num_layers()) + " layers x " +
                  std::to_string(w.load.num_experts()) +
                  " experts, but --load " + first.source + " has " +
                  std::to_string(first.load.num_layers()) + " x " +
                  std::to_string(first.load.num_experts()) +
                  ": every workload must have the same shape");
    }
  }
  StatusOr<Topology> topology = f.topology.Make(first.load.num_experts());
  if (!topology.ok()) return Fail(topology.status());
  std::vector<LoadMatrix> loads;
  loads.reserve(workloads.size());
  for (const Workload& w : workloads) loads.push_back(w.load);
  RobustPlanOptions options;
  options.quantile = f.robust_quantile;
  options.num_groups = f.groups;
  options.num_threads = f.threads;
  double plan_ms = 0.0;
  StatusOr<RobustPlan> plan = PlanTimedAndWritten(
      f, [&] { return PlanRobust(loads, *topology, options); }, &plan_ms);
  if (!plan.ok()) return Fail(plan.status());
  const std::vector<WorkloadImbalance> per =
      SummariseWorkloads(plan->placement, loads);
  double objective_mean = 0.0, start_mean = 0.0;
  for (const RobustLayer& l : plan->layers) {
    objective_mean += l.objective / static_cast<double>(plan->layers.size());
    start_mean += l.start_objective / static_cast<double>(plan->layers.size());
  }
  double worst_mean = 0.0, worst_layer = 0.0;
  for (const WorkloadImbalance& w : per) {
    worst_mean = std::max(worst_mean, w.mean);
    worst_layer = std::max(worst_layer, w.worst);
  }
  if (f.json) {
    nlohmann::json list = nlohmann::json::array();
    for (size_t i = 0; i < workloads.size(); ++i) {
      list.push_back({{"load", workloads[i].source},
                      {"steps", workloads[i].steps},
                      {"imbalance_mean", per[i].mean},
                      {"imbalance_max", per[i].worst}});
    }
    nlohmann::json out = {{"policy", "robust"},
                          {"robust_quantile", f.robust_quantile},
                          {"layers", first.load.num_layers()},
                          {"experts", first.load.num_experts()},
                          {"ranks", topology->num_ranks},
                          {"ranks_per_node", topology->ranks_per_node},
                          {"slots_per_rank", topology->slots_per_rank},
                          {"plan_ms", plan_ms},
                          {"objective_mean", objective_mean},
                          {"start_objective_mean", start_mean},
                          {"worst_workload_imbalance_mean", worst_mean},
                          {"worst_workload_imbalance_max", worst_layer},
                          {"workloads", list}};
    PrintJson(out);
    return 0;
  }
  std::printf(
      "robust plan for %zu workloads (quantile %g), %d layers x %d experts, "
      "%d ranks x %d slots, plan %.0f ms\n",
      workloads.size(), f.robust_quantile, first.load.num_layers(),
      first.load.num_experts(), topology->num_ranks, topology->slots_per_rank,
      plan_ms);
  std::printf(
      "objective (quantile of the workloads' max/mean, mean over layers): "
      "%.4f from the best start -> %.4f planned\n",
      start_mean, objective_mean);
  for (size_t i = 0; i < workloads.size(); ++i) {
    std::printf("  %s: imbalance %.4f mean, %.4f worst layer\n",
                workloads[i].source.c_str(), per[i].mean, per[i].worst);
  }
  if (f.out_given) std::printf("wrote %s\n", f.out_path.c_str());
  return 0;
}

int RunPlan(const PlanFlags& f) {
  // Fail before planning, never after.
  if (f.out_given) {
    Status out = CheckWritablePath(f.out_path);
    if (!out.ok()) return Fail(out.WithPrefix("--out"));
  }
  if (f.window < 0)
    return Fail("--window = " + std::to_string(f.window) + ": must be >= 0");
  if (f.load_paths.size() > 1 || f.robust_quantile_given ||
      f.workloads_from_steps) {
    return RunRobustPlan(f);
  }
  // A heat file (several workloads) is planned robustly too.
  if (IsHeatFile(f.load_path)) return RunRobustPlan(f);
  StatusOr<LoadTrace> trace = ReadLoadFile(f.load_path);
  if (!trace.ok()) return Fail(trace.status());
  const int end = trace->num_steps();
  const int begin = f.window > 0 ? std::max(0, end - f.window) : 0;
  const LoadMatrix load = trace->Aggregate(begin, end);
  // Samples of the window, for FlashLB.
  LoadTrace samples(end - begin, trace->num_layers(), trace->num_experts());
  for (int s = begin; s < end; ++s) {
    for (int l = 0; l < trace->num_layers(); ++l) {
      for (int e = 0; e < trace->num_experts(); ++e) {
        samples.at(s - begin, l, e) = trace->at(s, l, e);
      }
    }
  }
  StatusOr<Topology> topology = f.topology.Make(load.num_experts());
  if (!topology.ok()) return Fail(topology.status());
  StatusOr<std::unique_ptr<Policy>> policy = CreatePolicy(f.policy);
  if (!policy.ok()) return Fail(policy.status());
  StatusOr<Placement> current_map = MapOrInitial(
      f.current_path, load.num_layers(), load.num_experts(), *topology);
  if (!current_map.ok()) return Fail(current_map.status());
  const Placement& current = *current_map;
  PolicyOptions options;
  options.num_groups = f.groups;
  options.num_threads = f.threads;
  options.seed = f.seed;
  options.migration_budget = f.migration_budget;
  StatusOr<DispatchMode> dispatch = ParseDispatchMode(f.dispatch);
  if (!dispatch.ok()) return Fail(dispatch.status().WithPrefix("--dispatch"));
  options.dispatch = *dispatch;
  double plan_ms = 0.0;
  StatusOr<Plan> plan = PlanTimedAndWritten(
      f,
      [&] {
        return (*policy)->Rebalance({&current, &load, &samples, *topology},
                                    options);
      },
      &plan_ms);
  if (!plan.ok()) return Fail(plan.status());
  for (const std::string& note : plan->notes) {
    std::fprintf(stderr, "eplb: note: %s\n", note.c_str());
  }
  const Summary s = Summarise(*plan);
  const bool stepwise = samples.num_steps() >= 2;
  const double current_steps =
      stepwise ? StepImbalanceMean(current, samples) : 0.0;
  const double planned_steps =
      stepwise ? StepImbalanceMean(plan->placement, samples) : 0.0;
  if (f.json) {
    nlohmann::json per_layer = nlohmann::json::array();
    nlohmann::json bounds = nlohmann::json::array();
    for (size_t l = 0; l < plan->layers.size(); ++l) {
      const LayerPlan& p = plan->layers[l];
      per_layer.push_back({{"layer", l},
                           {"changed", p.changed},
                           {"current_imbalance", p.current_imbalance},
                           {"predicted_imbalance", p.predicted_imbalance},
                           {"lower_bound", p.lower_bound},
                           {"moved_experts", p.moved_experts},
                           {"choice", LayerChoiceName(p.choice)},
                           {"current_score", p.current_score},
                           {"predicted_score", p.predicted_score}});
      bounds.push_back(p.lower_bound);
    }
    nlohmann::json out = {{"policy", std::string((*policy)->name())},
                          {"load", f.load_path},
                          {"steps", end - begin},
                          {"layers", load.num_layers()},
                          {"experts", load.num_experts()},
                          {"ranks", topology->num_ranks},
                          {"ranks_per_node", topology->ranks_per_node},
                          {"slots_per_rank", topology->slots_per_rank},
                          {"plan_ms", plan_ms},
                          {"current_imbalance_mean", s.current_mean},
                          {"imbalance_mean", s.mean},
                          {"imbalance_max", s.max},
                          {"imbalance_lower_bound_mean", s.bound_mean},
                          {"imbalance_lower_bound", bounds},
                          {"moved_experts", s.moved},
                          {"intra_node_moves", s.intra},
                          {"inter_node_moves", s.inter},
                          {"changed_layers", s.changed},
                          {"dispatch", f.dispatch},
                          {"migration_budget", f.migration_budget},
                          {"layers_kept", s.kept},
                          {"layers_incremental", s.incremental},
                          {"layers_full", s.full},
                          {"predicted_gain", s.predicted_gain},
                          {"notes", plan->notes},
                          {"per_layer", per_layer}};
    // The same per-workload figures a robust plan reports.
    out["workloads"] = nlohmann::json::array({{{"load", f.load_path},
                                               {"steps", end - begin},
                                               {"imbalance_mean", s.mean},
                                               {"imbalance_max", s.max}}});
    if (stepwise) {
      out["current_step_imbalance_mean"] = current_steps;
      out["step_imbalance_mean"] = planned_steps;
    }
    PrintJson(out);
    return 0;
  }
  std::printf(
      "policy %s on %s (%d steps), %d layers x %d experts, %d ranks x %d "
      "slots\n",
      std::string((*policy)->name()).c_str(), f.load_path.c_str(), end - begin,
      load.num_layers(), load.num_experts(), topology->num_ranks,
      topology->slots_per_rank);
  std::printf(
      "imbalance (max/mean): current %.4f -> planned %.4f mean, %.4f worst "
      "layer"
      " (lower bound %.4f mean)\n",
      s.current_mean, s.mean, s.max, s.bound_mean);
  if (stepwise) {
    std::printf(
        "step by step (mean over steps of each step's max/mean): current "
        "%.4f -> planned %.4f\n",
        current_steps, planned_steps);
  }
  std::printf(
      "changed layers %d, moved experts %d (intra-node %d, inter-node %d), "
      "plan %.2f ms\n",
      s.changed, s.moved, s.intra, s.inter, plan_ms);
  std::printf(
      "layers kept %d, re-planned incrementally %d, fully %d; predicted "
      "gain %.4f (score, summed over layers)\n",
      s.kept, s.incremental, s.full, s.predicted_gain);
  if (f.out_given) std::printf("wrote %s\n", f.out_path.c_str());
  return 0;
}

}  // namespace

void AddPlanCommand(CLI::App* app, int* exit_code) {
  auto f = std::make_shared<PlanFlags>();
  CLI::App* cmd =
      app->add_subcommand("plan", "Plan a balanced placement with a policy");
  cmd->add_option("--load", f->load_paths,
                  "Load file: trace CSV, SGLang logical_count JSON or an eplb "
                  "heat file. Repeat it to plan one map for several "
                  "workloads (robust plan)")
      ->required()
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  CLI::Option* quantile =
      cmd->add_option("--robust-quantile", f->robust_quantile,
                      "Robust plan: minimise this quantile over the "
                      "workloads of their per-layer imbalance (1 = the "
                      "worst workload, 0.5 = the median; default 1)")
          ->check(FractionInUnitInterval());
  cmd->add_flag("--workloads-from-steps", f->workloads_from_steps,
                "Robust plan: every step of a --load file is one workload "
                "(for dumps whose steps are separate recordings)");
  f->topology.Register(cmd, /*require=*/true);
  cmd->add_option("--groups", f->groups,
                  "Expert groups (hierarchical default policy when nodes > 1)")
      ->check(IntRange(1, kMaxExperts));
  CLI::Option* policy = cmd->add_option(
      "--policy", f->policy,
      "0 random, 1 default, 2 swift, 3 flashlb, or best (default: swift)");
  CLI::Option* current =
      cmd->add_option("--current", f->current_path,
                      "Map serving now (default: the initial placement)");
  cmd->add_option("--window", f->window,
                  "Plan on the last STEPS steps (default: all)")
      ->check(IntRange(0, kMaxSteps));
  cmd->add_option("--threads", f->threads,
                  "Threads that plan layers in parallel (default 1; any "
                  "count gives the same plan)")
      ->check(IntRange(1, 256));
  cmd->add_option("--seed", f->seed, "Seed of the random policy")
      ->check(IntRange(0, std::numeric_limits<int64_t>::max()));
  cmd->add_option("--migration-budget", f->migration_budget,
                  "Swift and FlashLB: the most the plan may move, as a "
                  "fraction of all slots (default 1: no limit)")
      ->check(FractionInUnitInterval());
  cmd->add_option("--dispatch", f->dispatch,
                  "The dispatch Swift and FlashLB plan for: rr (default) or "
                  "balanced")
      ->check(CLI::IsMember({"rr", "balanced"}));
  CLI::Option* out = cmd->add_option("--out", f->out_path,
                                     "Write the planned map here (atomically)");
  cmd->add_flag("--json", f->json, "Print one JSON object");
  cmd->callback([f, exit_code, out, quantile, policy, current] {
    f->out_given = out->count() > 0;
    f->robust_quantile_given = quantile->count() > 0;
    f->policy_given = policy->count() > 0;
    f->current_given = current->count() > 0;
    f->load_path = f->load_paths.empty() ? "" : f->load_paths.front();
    *exit_code = RunPlan(*f);
  });
}

}  // namespace eplb::cli
