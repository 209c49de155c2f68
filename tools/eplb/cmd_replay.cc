// eplb replay: the main job. Replays a real trace through the recorder,
// controller and migration engine, and reports balance, migration and
// (modelled) serving impact, with and without balancing.
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "cli_util.h"
#include "eplb/config.h"
#include "eplb/io.h"
#include "eplb/limits.h"
#include "eplb/policy.h"
#include "eplb/sim/replay.h"
#include "eplb/sim/report.h"
#ifdef EPLB_HAVE_MPI
#include "eplb/mpi.h"
#endif
#ifdef EPLB_HAVE_HTTP
#include "eplb/metrics_server.h"
#endif

namespace eplb::cli {
namespace {

std::atomic<bool> g_interrupted{false};
extern "C" void OnSigint(int) { g_interrupted.store(true); }

struct ReplayFlags {
  std::string trace;
  std::string model;
  std::string quant = "bf16";
  std::string hardware = "a2";
  int ranks = 0;
  int redundant = -1;
  int ranks_per_node = 0;
  std::string policy;
  std::string config_path;
  int heat_interval = 0;
  int algo_interval = 0;
  int batch_steps = 0;
  bool sync = false;
  bool no_pace = false;
  std::string placement_log;
  std::string rank_load_log;
  std::string dispatch;
  int64_t steady_from = -1;
  std::string report;
  bool json = false;
  std::string transport = "inprocess";
  bool verify_outputs = false;
  int corrupt_every = 0;
  bool forge_checksums = false;
  int fail_rank = -1;
  int64_t fail_at_step = -1;
  int64_t rank_timeout_ms = 5000;
  int metrics_port = 0;
  std::string metrics_host = "0.0.0.0";
  std::string metrics_file;
  bool metrics_heat = false;
  // The output flags given on the command line, with their paths.
  std::vector<std::pair<std::string, const std::string*>> outputs;
};

// The trace shipped in data/: found next to the sources (build tree) or the
// installed share directory.
std::string EmbeddedTrace() {
  const char* rel = "dsv2lite-puffin/prefill_by_prompt.csv";
  for (const std::string& dir :
       {std::string(EPLB_DATA_DIR), std::string(EPLB_INSTALL_DATA_DIR)}) {
    std::string p = dir + "/" + rel;
    if (std::filesystem::is_regular_file(p)) return p;
  }
  return std::string(EPLB_DATA_DIR) + "/" + rel;
}

// The replay's log lines seen, for printing each once.
constexpr size_t kMaxLogLines = 100;
struct LogRepeats {
  std::mutex mu;
  std::map<std::string, int64_t> count;
  int64_t dropped = 0;  // Distinct lines beyond kMaxLogLines.

  void Summarise() {
    std::lock_guard<std::mutex> lock(mu);
    for (const auto& [line, n] : count) {
      if (n > 1) {
        std::fprintf(stderr, "eplb: (%lld times in all) %s\n",
                     static_cast<long long>(n), line.c_str());
      }
    }
    if (dropped > 0) {
      std::fprintf(stderr, "eplb: ... and %lld more distinct log lines\n",
                   static_cast<long long>(dropped));
    }
  }
};

std::string Bytes(double b) {
  char buf[64];
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (b >= 1000 && u < 4) {
    b /= 1000;
    ++u;
  }
  std::snprintf(buf, sizeof buf, "%.1f %s", b, units[u]);
  return buf;
}

int RunReplayCommand(const ReplayFlags& f) {
  // One process per rank: MPI first, so that every process fails alike.
  const bool mpi = f.transport == "mpi";
  if (!mpi && f.transport != "inprocess") {
    return Fail(InvalidArgumentError("--transport " + f.transport +
                                     ": must be inprocess or mpi"));
  }
  if (f.rank_timeout_ms < 1 || f.rank_timeout_ms > 3'600'000) {
    return Fail(InvalidArgumentError("--rank-timeout-ms " +
                                     std::to_string(f.rank_timeout_ms) +
                                     ": must be in [1, 3600000]"));
  }
  if (f.corrupt_every < 0) {
    return Fail(InvalidArgumentError("--corrupt-every " +
                                     std::to_string(f.corrupt_every) +
                                     ": must be >= 0"));
  }
  if (f.metrics_port != 0 && (f.metrics_port < 1 || f.metrics_port > 65535)) {
    return Fail(InvalidArgumentError("--metrics-port " +
                                     std::to_string(f.metrics_port) +
                                     ": must be in [1, 65535]"));
  }
  if (!f.policy.empty()) {
    // A misspelt policy fails before the trace is read.
    StatusOr<std::unique_ptr<Policy>> policy = CreatePolicy(f.policy);
    if (!policy.ok()) return Fail(policy.status());
  }
  // Every output path fails now, not after the whole run ("" included:
  // a flag given empty is a mistake, not "no output").
  for (const auto& [flag, path] : f.outputs) {
    Status dir = CheckWritablePath(*path);
    if (!dir.ok()) return Fail(dir.WithPrefix(flag));
  }
#ifndef EPLB_HAVE_HTTP
  if (f.metrics_port != 0) {
    return Fail(FailedPreconditionError(
        "--metrics-port: this eplb was built without cpp-httplib (install "
        "libcpp-httplib-dev and rebuild)"));
  }
#endif
  if (f.forge_checksums && f.corrupt_every == 0) {
    return Fail(InvalidArgumentError(
        "--forge-checksums: needs --corrupt-every (nothing to forge)"));
  }
#ifdef EPLB_HAVE_MPI
  std::unique_ptr<MpiJob> job;
  std::unique_ptr<Transport> mpi_transport;
  if (mpi) {
    StatusOr<std::unique_ptr<MpiJob>> j = MpiJob::Init(nullptr, nullptr);
    if (!j.ok()) return Fail(j.status().WithPrefix("--transport mpi"));
    job = std::move(*j);
  }
  const int process = job != nullptr ? job->rank() : 0;
#else
  if (mpi) {
    return Fail(FailedPreconditionError(
        "--transport mpi: this eplb was built without MPI (install "
        "libopenmpi-dev and rebuild)"));
  }
  const int process = 0;
#endif
  // Rank 0 speaks for the job.
  const bool speaks = process == 0;
  const bool embedded = f.trace.empty();
  const std::string trace_path = embedded ? EmbeddedTrace() : f.trace;
  StatusOr<LoadTrace> trace = ReadLoadFile(trace_path);
  if (!trace.ok()) return Fail(trace.status());
  std::string note;
  ModelSpec model;
  if (!f.model.empty()) {
    StatusOr<ModelSpec> m = FindModelPreset(f.model);
    if (!m.ok()) return Fail(m.status().WithPrefix("--model"));
    model = *m;
  } else {
    model = ModelForShape(trace->num_layers(), trace->num_experts(), &note);
  }
  StatusOr<QuantType> quant = ParseQuantType(f.quant);
  if (!quant.ok()) return Fail(quant.status().WithPrefix("--quant"));
  StatusOr<HardwareProfile> hw = FindHardwareProfile(f.hardware);
  if (!hw.ok()) return Fail(hw.status().WithPrefix("--hardware"));

  // The config: a file (validated like an engine's, environment guard
  // included) or a dynamic default; flags override it.
  const ReplayDefaults defaults = DefaultReplay(embedded);
  EplbConfig config = defaults.config;
  std::vector<std::string> warnings;
  if (!f.config_path.empty()) {
    StatusOr<ParsedConfig> parsed =
        ReadEplbConfig(f.config_path, ReadConfigEnv());
    if (!parsed.ok()) return Fail(parsed.status());
    config = parsed->config;
    warnings = parsed->warnings;
  }
  if (f.heat_interval > 0)
    config.expert_heat_collection_interval = f.heat_interval;
  if (f.algo_interval > 0)
    config.algorithm_execution_interval = f.algo_interval;
  if (f.redundant >= 0) config.num_redundant_experts = f.redundant;
  const int ranks = f.ranks > 0 ? f.ranks : defaults.ranks;
  StatusOr<int> slots = ValidateConfigForModel(config, trace->num_layers(),
                                               trace->num_experts(), ranks);
  if (!slots.ok()) return Fail(slots.status());
  StatusOr<Topology> topology =
      MakeTopology(trace->num_experts(), ranks, *slots, f.ranks_per_node);
  if (!topology.ok()) return Fail(topology.status());
  // The fault injection's flags, before any note is printed (the replay
  // checks them again).
  if (f.fail_rank >= 0 || f.fail_at_step >= 0) {
    if (f.fail_rank < 1 || f.fail_rank >= topology->num_ranks) {
      return Fail("fail rank " + std::to_string(f.fail_rank) +
                  ": must be in [1, " +
                  std::to_string(topology->num_ranks - 1) +
                  "] (rank 0 prints the job's results)");
    }
    if (f.fail_at_step < 0) {
      return Fail("fail rank " + std::to_string(f.fail_rank) +
                  " needs the step it fails at (--fail-at-step >= 0)");
    }
  }

  ReplayOptions o;
#ifdef EPLB_HAVE_MPI
  if (job != nullptr) {
    if (job->size() != topology->num_ranks) {
      return Fail(InvalidArgumentError(
          "--ranks " + std::to_string(topology->num_ranks) + " but mpirun " +
          "started " + std::to_string(job->size()) +
          " processes: --transport mpi runs one process per rank"));
    }
    StatusOr<std::unique_ptr<Transport>> t = job->CreateTransport({});
    if (!t.ok()) return Fail(t.status());
    mpi_transport = std::move(*t);
    job->set_collective_timeout_nanos(f.rank_timeout_ms * 1'000'000);
    o.collective = &job->collective();
    o.transport = mpi_transport.get();
    // A lost process: the old transport goes first (its batches end), then
    // the job re-forms over the processes that still answer.
    o.recover = [&job, &mpi_transport,
                 timeout = f.rank_timeout_ms *
                           1'000'000]() -> StatusOr<ReplayOptions::Survivors> {
      mpi_transport.reset();
      EPLB_ASSIGN_OR_RETURN(std::vector<int> alive, job->Recover(timeout));
      EPLB_ASSIGN_OR_RETURN(mpi_transport, job->CreateTransport({}));
      return ReplayOptions::Survivors{std::move(alive), mpi_transport.get()};
    };
    o.leave = [&mpi_transport] { mpi_transport.reset(); };
  }
#endif
  o.fail_rank = f.fail_rank;
  o.fail_at_step = f.fail_at_step;
  o.verify_outputs = f.verify_outputs;
  o.faults.corrupt_every = f.corrupt_every;
  o.faults.forge_checksums = f.forge_checksums;
  o.model = model;
  o.quant = *quant;
  o.hardware = *hw;
  o.topology = *topology;
  o.config = config;
  o.policy = f.policy;
  o.batch_steps = f.batch_steps > 0 ? f.batch_steps : defaults.batch_steps;
  o.sync_migration = f.sync;
  o.pace = !f.no_pace;
  o.placement_log_path = f.placement_log;
  o.rank_load_log_path = f.rank_load_log;
  o.steady_from = f.steady_from;
  o.dispatch = config.eplb_dispatch;
  if (!f.dispatch.empty()) {
    StatusOr<DispatchMode> d = ParseDispatchMode(f.dispatch);
    if (!d.ok()) return Fail(d.status().WithPrefix("--dispatch"));
    o.dispatch = *d;
  }
  o.metrics_heat = f.metrics_heat;
#ifdef EPLB_HAVE_HTTP
  std::unique_ptr<MetricsServer> metrics_server;
  if (f.metrics_port != 0 && speaks) {
    StatusOr<std::unique_ptr<MetricsServer>> server =
        MetricsServer::Start(f.metrics_host, f.metrics_port);
    if (!server.ok()) return Fail(server.status().WithPrefix("--metrics-port"));
    metrics_server = std::move(*server);
    o.metrics = [&metrics_server](const std::string& text) {
      metrics_server->Set(text);
    };
  }
#endif
  o.interrupt = &g_interrupted;
  // Each distinct line once (a plan late every cycle would otherwise print
  // a line per cycle), and at most kMaxLogLines of them; the repeats are
  // counted and summed up after the run.
  auto repeats = std::make_shared<LogRepeats>();
  o.log = [speaks = speaks, repeats](std::string_view line) {
    if (!speaks) return;
    std::lock_guard<std::mutex> lock(repeats->mu);
    int64_t& seen = repeats->count[std::string(line)];
    if (seen++ > 0) return;
    if (repeats->count.size() > kMaxLogLines) {
      ++repeats->dropped;
      return;
    }
    std::fprintf(stderr, "eplb: %.*s\n", static_cast<int>(line.size()),
                 line.data());
  };
  if (speaks) {
    for (const std::string& w : warnings)
      std::fprintf(stderr, "eplb: warning: %s\n", w.c_str());
    if (!note.empty()) std::fprintf(stderr, "eplb: note: %s\n", note.c_str());
  }
  const bool bar = speaks && !f.json && isatty(STDERR_FILENO);
  if (bar) {
    o.progress = [](int64_t step, int64_t steps) {
      const int width = 40;
      const int done =
          static_cast<int>(width * step / std::max<int64_t>(1, steps));
      std::fprintf(stderr, "\r[%s%s] step %lld/%lld",
                   std::string(done, '#').c_str(),
                   std::string(width - done, ' ').c_str(),
                   static_cast<long long>(step), static_cast<long long>(steps));
      if (step == steps) std::fprintf(stderr, "\n");
    };
  }
  std::signal(SIGINT, OnSigint);
  StatusOr<ReplayResult> r = RunReplay(*trace, o);
  std::signal(SIGINT, SIG_DFL);
  if (speaks) repeats->Summarise();
  if (!r.ok()) return Fail(r.status());
  if (!speaks || r->failed_here) return r->interrupted ? 130 : 0;
  if (r->interrupted)
    std::fprintf(stderr, "\neplb: interrupted after %lld steps\n",
                 static_cast<long long>(r->steps));
  const double real_expert = static_cast<double>(ExpertBytes(model, *quant));
  // Static mode serves one map throughout: its column and title say so.
  const bool is_static = config.mode() == EplbMode::kStatic;
  const std::string column = is_static ? "static map" : r->policy;
  const std::string balancing =
      is_static
          ? "static map " + config.expert_map_path.value_or("")
          : "policy " + r->policy + ", H=" +
                std::to_string(config.expert_heat_collection_interval) +
                " A=" + std::to_string(config.algorithm_execution_interval);
  char title[1024];
  std::snprintf(
      title, sizeof title,
      "%s: %lld steps of %d trace steps, %d layers x %d experts; %s %s "
      "(%s per expert), %d ranks x %d slots (%d redundant), %s, %s "
      "migration, %s dispatch, hardware %s",
      embedded ? "shipped trace dsv2lite-puffin/prefill_by_prompt.csv"
               : trace_path.c_str(),
      static_cast<long long>(r->steps), o.batch_steps, trace->num_layers(),
      trace->num_experts(), model.name.c_str(), f.quant.c_str(),
      Bytes(real_expert).c_str(), topology->num_ranks, topology->slots_per_rank,
      config.num_redundant_experts, balancing.c_str(),
      f.sync ? "stop-the-world" : "async",
      std::string(DispatchModeName(o.dispatch)).c_str(), hw->name.c_str());
  if (!f.report.empty()) {
    Status s =
        WriteFileAtomic(f.report, ReplayReportHtml(*r, o, title, column));
    if (!s.ok()) return Fail(s);
  }
  if (!f.metrics_file.empty()) {
    Status s = WriteFileAtomic(f.metrics_file, r->metrics);
    if (!s.ok()) return Fail(s.WithPrefix("--metrics-file"));
  }
  if (f.json) {
    std::printf("%s\n",
                ReplayResultJson(*r, o, trace_path, f.transport).c_str());
    return r->interrupted ? 130 : 0;
  }
  std::printf("%s\n\n", title);
  std::printf("%-28s %14s %14s\n", "", "no balancing", column.c_str());
  std::printf("%-28s %14.3f %14.3f\n", "imbalance median",
              r->baseline_imbalance.median, r->imbalance.median);
  std::printf("%-28s %14.3f %14.3f\n", "imbalance p90",
              r->baseline_imbalance.p90, r->imbalance.p90);
  if (r->steady_from >= 0) {
    char label[64];
    std::snprintf(label, sizeof label, "  from step %lld: median",
                  static_cast<long long>(r->steady_from));
    std::printf("%-28s %14s %14.3f\n", label, "", r->imbalance_steady.median);
    std::printf("%-28s %14s %14.3f\n", "  from that step: p90", "",
                r->imbalance_steady.p90);
  }
  if (f.verify_outputs) {
    std::printf("%-28s %14s %14s\n", "outputs mismatched", "-",
                (std::to_string(r->outputs_mismatched) + " of " +
                 std::to_string(r->outputs_verified))
                    .c_str());
  }
  std::printf("%-28s %14s %14lld\n", "rebalances", "-",
              static_cast<long long>(r->rebalances));
  std::printf("%-28s %14s %14s\n", "layers kept / incr. / full", "-",
              (std::to_string(r->layers_kept) + " / " +
               std::to_string(r->layers_incremental) + " / " +
               std::to_string(r->layers_full))
                  .c_str());
  std::printf("%-28s %14s %14lld\n", "layers migrated back", "-",
              static_cast<long long>(r->layers_reverted));
  std::printf("%-28s %14s %14s\n", "plans late (steps waited)", "-",
              (std::to_string(r->cycles_late) + " (" +
               std::to_string(r->plan_late_steps) + ")")
                  .c_str());
  std::printf("%-28s %14s %14lld\n", "plans dropped for a shift", "-",
              static_cast<long long>(r->plans_superseded));
  std::printf("%-28s %14s %14lld\n", "shifts reverted", "-",
              static_cast<long long>(r->shifts_reverted));
  std::printf("%-28s %14s %11.2f ms\n", "slowest plan", "-", r->max_plan_ms);
  std::printf("%-28s %14s %14lld\n", "experts moved", "0",
              static_cast<long long>(r->experts_moved));
  std::printf("%-28s %14s %14s\n", "bytes moved (real size)", "0",
              Bytes(static_cast<double>(r->bytes_moved)).c_str());
  std::printf("%-28s %14s %13.1f%%\n", "slots moved per rebalance", "-",
              100 * r->moved_per_rebalance);
  std::printf("%-28s %14s %11.2f ms\n", "max stall (wall clock)", "-",
              r->max_stall_ms);
  std::printf("%-28s %11.2f ms %11.2f ms\n", "TTFT p99 (cost model)",
              r->baseline_ttft_p99_ms, r->ttft_p99_ms);
  std::printf("%-28s %11.2f ms %11.2f ms\n", "TPOT avg (cost model)",
              r->baseline_tpot_avg_ms, r->tpot_avg_ms);
  std::printf("%-28s %13.1f%% %13.1f%%\n", "device utilization",
              100 * r->baseline_utilization, 100 * r->utilization);
  if (!f.report.empty()) std::printf("\nreport: %s\n", f.report.c_str());
  return r->interrupted ? 130 : 0;
}

}  // namespace

void AddReplayCommand(CLI::App* app, int* exit_code) {
  auto f = std::make_shared<ReplayFlags>();
  CLI::App* cmd = app->add_subcommand(
      "replay",
      "Replay a real trace through the dynamic balancer (the main job)");
  cmd->add_option(
      "--trace", f->trace,
      "Trace CSV or SGLang dump (default: the shipped DeepSeek-V2-Lite trace)");
  cmd->add_option("--model", f->model,
                  "Model preset (default: the one matching the trace)");
  cmd->add_option("--quant", f->quant, "Expert quant type (default bf16)");
  cmd->add_option("--hardware", f->hardware,
                  "Cost-model profile: a2, a3, h100 (default a2)");
  cmd->add_option("--ranks", f->ranks,
                  "Ranks (default 16 on the shipped trace, else 8)")
      ->check(IntRange(1, kMaxRanks));
  cmd->add_option("--redundant", f->redundant,
                  "Redundant experts (default 16 on the shipped trace, else 8)")
      ->check(IntRange(0, kMaxSlots));
  cmd->add_option("--ranks-per-node", f->ranks_per_node, "Ranks per node")
      ->check(IntRange(1, kMaxRanks));
  cmd->add_option("--policy", f->policy,
                  "Policy name or number (default: the config's, else swift)");
  cmd->add_option(
      "--config", f->config_path,
      "eplb_config JSON (needs DYNAMIC_EPLB=true for dynamic modes)");
  cmd->add_option("--heat-interval", f->heat_interval,
                  "Steps of heat per cycle (default 8)")
      ->check(IntAtLeast(1));
  cmd->add_option("--algo-interval", f->algo_interval,
                  "Steps the planner may take (default 1)")
      ->check(IntAtLeast(1));
  cmd->add_option("--batch-steps", f->batch_steps,
                  "Trace steps per replay step (default 16 on the shipped "
                  "trace, else 1)")
      ->check(IntAtLeast(1));
  cmd->add_flag("--sync-migration", f->sync,
                "Stop-the-world migration, for comparison");
  cmd->add_flag("--no-pace", f->no_pace,
                "Simulate: steps back to back, each plan waited for at its due "
                "step and each layer's transfers within its step (figures do "
                "not depend on the machine's speed)");
  cmd->add_option("--placement-log", f->placement_log,
                  "Write every placement change as JSON lines");
  cmd->add_option("--rank-load-log", f->rank_load_log,
                  "Write CSV step,layer,rank,tokens: the tokens every rank "
                  "received at every step and layer under the dispatch");
  cmd->add_option("--dispatch", f->dispatch,
                  "How tokens split over an expert's replicas: rr (round "
                  "robin, default, as vLLM) or balanced")
      ->check(CLI::IsMember({"rr", "balanced"}));
  cmd->add_option("--steady-from", f->steady_from,
                  "Report the figures from this step on as the steady state "
                  "(default: from the first plan's last commit)")
      ->check(IntRange(0, kMaxSteps));
  cmd->add_option("--report", f->report, "Write a self-contained HTML report");
  cmd->add_flag("--json", f->json, "Print one JSON object");
  cmd->add_option("--transport", f->transport,
                  "inprocess (default: one process hosts every rank) or mpi "
                  "(one process per rank: mpirun -np R eplb replay "
                  "--transport mpi --ranks R ...)");
  cmd->add_flag("--verify-outputs", f->verify_outputs,
                "Run every token through its expert's FFN on the weights its "
                "slot holds and check the output bit for bit against the "
                "expert's original weights");
  cmd->add_option("--fail-rank", f->fail_rank,
                  "Fault injection: this rank (not 0) stops serving and its "
                  "weights are gone at --fail-at-step; the others recover "
                  "and serve on")
      ->check(IntRange(0, kMaxRanks - 1));
  cmd->add_option("--fail-at-step", f->fail_at_step,
                  "The replay step at which --fail-rank fails")
      ->check(IntRange(0, kMaxSteps));
  cmd->add_option("--rank-timeout-ms", f->rank_timeout_ms,
                  "--transport mpi: a rank that does not answer a collective "
                  "call within this time is taken for lost (default 5000)");
  cmd->add_option("--corrupt-every", f->corrupt_every,
                  "Testing: flip a byte of every N-th transferred expert "
                  "after it lands (the layer must not commit)");
  cmd->add_option("--metrics-port", f->metrics_port,
                  "Serve GET /metrics (Prometheus text format) on this port "
                  "while the replay runs (rank 0)");
  cmd->add_option("--metrics-host", f->metrics_host,
                  "Address the metrics endpoint binds (default 0.0.0.0)")
      ->check(CLI::Validator(
          [](std::string& host) -> std::string {
            return host.empty() ? "\"\" is not an address" : "";
          },
          "non-empty"));
  cmd->add_option("--metrics-file", f->metrics_file,
                  "Write the final metrics (Prometheus text format)");
  cmd->add_flag("--metrics-heat", f->metrics_heat,
                "Include each expert's tokens of the latest step in the "
                "metrics (layers x experts series)");
  cmd->add_flag("--forge-checksums", f->forge_checksums,
                "Testing, with --corrupt-every: the corrupted transfers also "
                "report the checksum of what landed, so they pass the "
                "migration's check and commit (--verify-outputs must catch "
                "them)");
  cmd->callback([f, exit_code, cmd] {
    const std::pair<const char*, const std::string*> outputs[] = {
        {"--placement-log", &f->placement_log},
        {"--rank-load-log", &f->rank_load_log},
        {"--report", &f->report},
        {"--metrics-file", &f->metrics_file}};
    f->outputs.clear();
    for (const auto& [flag, path] : outputs) {
      if (cmd->count(flag) > 0) f->outputs.emplace_back(flag, path);
    }
    *exit_code = RunReplayCommand(*f);
  });
}

}  // namespace eplb::cli
