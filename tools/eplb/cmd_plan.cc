// eplb plan: run a balancing policy on a load and write the planned map.
#include <charconv>
#include <chrono>
#include <cstdio>
#include <limits>
#include <memory>

#include "cli_util.h"
#include "eplb/io.h"
#include "eplb/limits.h"
#include "eplb/policy.h"

namespace eplb::cli {
namespace {

struct PlanFlags {
  std::string load_path;
  std::string current_path;
  std::string out_path;
  bool out_given = false;  // --out "" is an error, not "no output".
  std::string policy = "swift";
  TopologyFlags topology;
  int groups = 1;
  int window = 0;  // 0: every step.
  uint64_t seed = 0;
  double migration_budget = 1.0;
  std::string dispatch = "rr";
  bool json = false;
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

int RunPlan(const PlanFlags& f) {
  // Fail before planning, never after.
  if (f.out_given) {
    Status out = CheckWritablePath(f.out_path);
    if (!out.ok()) return Fail(out.WithPrefix("--out"));
  }
  StatusOr<LoadTrace> trace = ReadLoadFile(f.load_path);
  if (!trace.ok()) return Fail(trace.status());
  if (f.window < 0)
    return Fail("--window = " + std::to_string(f.window) + ": must be >= 0");
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
  options.seed = f.seed;
  options.migration_budget = f.migration_budget;
  StatusOr<DispatchMode> dispatch = ParseDispatchMode(f.dispatch);
  if (!dispatch.ok()) return Fail(dispatch.status().WithPrefix("--dispatch"));
  options.dispatch = *dispatch;
  const auto start = std::chrono::steady_clock::now();
  StatusOr<Plan> plan =
      (*policy)->Rebalance({&current, &load, &samples, *topology}, options);
  const double plan_ms = std::chrono::duration<double, std::milli>(
                             std::chrono::steady_clock::now() - start)
                             .count();
  if (!plan.ok()) return Fail(plan.status());
  if (f.out_given) {
    Status written = WriteExpertMapJson(f.out_path, plan->placement);
    if (!written.ok()) return Fail(written);
  }
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
  cmd->add_option("--load", f->load_path,
                  "Load file: trace CSV or SGLang logical_count JSON")
      ->required();
  f->topology.Register(cmd, /*require=*/true);
  cmd->add_option("--groups", f->groups,
                  "Expert groups (hierarchical default policy when nodes > 1)")
      ->check(IntRange(1, kMaxExperts));
  cmd->add_option(
      "--policy", f->policy,
      "0 random, 1 default, 2 swift, 3 flashlb, or best (default: swift)");
  cmd->add_option("--current", f->current_path,
                  "Map serving now (default: the initial placement)");
  cmd->add_option("--window", f->window,
                  "Plan on the last STEPS steps (default: all)")
      ->check(IntRange(0, kMaxSteps));
  cmd->add_option("--seed", f->seed, "Seed of the random policy")
      ->check(IntRange(0, std::numeric_limits<int64_t>::max()));
  cmd->add_option("--migration-budget", f->migration_budget,
                  "Swift and FlashLB: the most the plan may move, as a "
                  "fraction of all slots (default 1: no limit)")
      ->check(CLI::Validator(
          [](std::string& text) -> std::string {
            double v = 0;
            const char* end = text.data() + text.size();
            const auto [ptr, ec] = std::from_chars(text.data(), end, v);
            if (ec == std::errc() && ptr == end && v > 0 && v <= 1) return {};
            return text.substr(0, 40) + " is not a number in (0, 1]";
          },
          "(0, 1]"));
  cmd->add_option("--dispatch", f->dispatch,
                  "The dispatch Swift and FlashLB plan for: rr (default) or "
                  "balanced")
      ->check(CLI::IsMember({"rr", "balanced"}));
  CLI::Option* out = cmd->add_option("--out", f->out_path,
                                     "Write the planned map here (atomically)");
  cmd->add_flag("--json", f->json, "Print one JSON object");
  cmd->callback([f, exit_code, out] {
    f->out_given = out->count() > 0;
    *exit_code = RunPlan(*f);
  });
}

}  // namespace eplb::cli
