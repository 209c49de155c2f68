// Generalization harness for dynamic balancing: replays every policy through
// the dynamic cycle (eplb::RunReplay, lockstep simulation, H = 16, A = 2) on
// traffic families none of them was tuned on (bench/trace_gen.h), on the
// shipped DeepSeek-V2-Lite trace and on re-orderings of it, under each token
// dispatch, next to two references per trace: no balancing, and a
// window-clairvoyant floor (each window of H steps served by a plan made on
// that very window). Prints one Markdown table (bench/results/dynamic.md
// holds a full run).
//
// With --seeds N the generated families are replayed at seeds 1..N (the
// shipped trace and its re-orderings have no seed), and a second table gives,
// per family, dispatch and policy, the worst margin against `default` over
// the seeds.
//
// Usage: eplb_bench_dynamic [--traces a,b] [--policies a,b]
//                           [--dispatches rr,balanced] [--quick] [--seeds N]
//                           [--data-dir DIR] [--out FILE.md]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <exception>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "bench/trace_gen.h"
#include "eplb/dispatch.h"
#include "eplb/io.h"
#include "eplb/policy.h"
#include "eplb/sim/replay.h"

namespace {

using eplb::DispatchMode;
using eplb::LayerRouting;
using eplb::LoadTrace;
using eplb::Placement;
using eplb::Topology;

constexpr int kHeatInterval = 16;  // H: steps of heat per cycle.
constexpr int kAlgoInterval = 2;   // A: steps the planner may take.
// The dispatches every trace is replayed under (one line to add or remove).
constexpr DispatchMode kDispatches[] = {DispatchMode::kRoundRobin,
                                        DispatchMode::kBalanced};
const char* const kPolicies[] = {"swift", "flashlb", "default"};
// The window-clairvoyant floor plans with these.
const char* const kFloorPolicies[] = {"default"};

// One trace of the harness and the EP group it is replayed on.
struct TraceCase {
  std::string name = {};    // As --traces names it.
  std::string family = {};  // trace_gen family; empty: the shipped trace.
  int fold = -1;            // puffin-fold.
  int tokens = 0;           // Mean tokens per step; 0: the family's.
  int layers = 0;           // 0: the family's.
  int top_k = 0;            // 0: the family's.
  int ranks = 8;
  int redundant = 8;
  std::string model = {};  // Preset; empty: the one matching the shape.
  int steady_from = 64;    // First step of the steady-state figures.
  int quick_steps = 200;
  uint64_t seed = 1;      // Generated families: the generator's seed.
  bool seeded = false;    // The family takes a seed (set by Run).
  std::string base = {};  // The name without the seed suffix.
};

std::vector<TraceCase> AllCases() {
  std::vector<TraceCase> cases;
  for (const char* f :
       {"topics", "domains", "skew", "sparse", "drift", "burst"}) {
    cases.push_back({.name = f, .family = f});
  }
  // Steady, dense traffic at Qwen3-30B-A3B's shape (48 layers x 128
  // experts, top-8): `sparse`'s stable hot set at 4096 tokens per step,
  // EP16 + 16. Little noise and no shift: what a move buys keeps paying.
  cases.push_back({.name = "steady-dense",
                   .family = "sparse",
                   .tokens = 4096,
                   .layers = 48,
                   .top_k = 8,
                   .ranks = 16,
                   .redundant = 16});
  // DeepSeek-V3 scale on EP32 + 32 with its preset.
  const TraceCase dsv3{.name = "dsv3",
                       .family = "dsv3",
                       .ranks = 32,
                       .redundant = 32,
                       .model = "deepseek-v3",
                       .steady_from = 80,
                       .quick_steps = 120};
  cases.push_back(dsv3);
  // The same at 8192 tokens per step (256 per rank): denser batches, so
  // less sampling noise per expert than dsv3's 3072.
  TraceCase dense = dsv3;
  dense.name = "dsv3-8k";
  dense.tokens = 8192;
  cases.push_back(dense);
  // dsv3 with three workloads each seed draws from the eight shipped: the
  // policies meet orders of workloads they were not tuned on.
  TraceCase mix = dsv3;
  mix.name = mix.family = "dsv3-mix";
  cases.push_back(mix);
  cases.push_back({.name = "dsv2lite"});
  for (int fold = 0; fold < 4; ++fold) {
    cases.push_back({.name = "puffin-fold" + std::to_string(fold),
                     .family = "puffin-fold",
                     .fold = fold});
  }
  cases.push_back({.name = "puffin-reversed", .family = "puffin-reversed"});
  return cases;
}

// Median and p90, nearest rank, as the replay summarises (src/replay).
struct Figures {
  double median = 0, p90 = 0;
};
std::optional<Figures> Percentiles(std::vector<double> v) {
  if (v.empty()) return std::nullopt;
  std::sort(v.begin(), v.end());
  auto pct = [&](double p) {
    const size_t i =
        static_cast<size_t>(std::ceil(p * static_cast<double>(v.size())));
    return v[std::clamp<size_t>(i, 1, v.size()) - 1];
  };
  return Figures{pct(0.5), pct(0.9)};
}

// Whole-trace and steady-state figures of a [steps][L] imbalance log (0 =
// the layer routed no token: not scored).
template <typename T>
std::pair<std::optional<Figures>, std::optional<Figures>> Summarise(
    const std::vector<T>& by_step_layer, int layers, int steady_from) {
  std::vector<double> whole, steady;
  for (size_t i = 0; i < by_step_layer.size(); ++i) {
    const double x = static_cast<double>(by_step_layer[i]);
    if (x <= 0) continue;
    whole.push_back(x);
    if (static_cast<int>(i / layers) >= steady_from) steady.push_back(x);
  }
  return {Percentiles(std::move(whole)), Percentiles(std::move(steady))};
}

// max / mean rank load; 0 when the layer routed no token, as the replay.
double Imbalance(const std::vector<double>& ranks) {
  double peak = 0, total = 0;
  for (double x : ranks) {
    peak = std::max(peak, x);
    total += x;
  }
  return total > 0 ? peak / (total / static_cast<double>(ranks.size())) : 0.0;
}

// The tokens each rank receives [R] for one layer's counts under a placement
// ([R*K]) and its routing.
using RankLoadsFn = std::function<std::vector<double>(
    std::span<const int32_t>, const LayerRouting&, std::span<const double>)>;

// How to score a dispatch outside the replay, for `num_experts` experts on
// `t`.
RankLoadsFn RankLoadsUnder(DispatchMode mode, int num_experts,
                           const Topology& t) {
  if (mode == DispatchMode::kRoundRobin) {
    return [](std::span<const int32_t>, const LayerRouting& routing,
              std::span<const double> counts) {
      return eplb::DispatchRankLoads(routing, counts);
    };
  }
  // One dispatcher (and its buffers) for every call.
  auto d = std::make_shared<eplb::BalancedDispatcher>(num_experts, t.num_ranks,
                                                      t.slots_per_rank);
  auto tokens = std::make_shared<std::vector<int64_t>>(num_experts);
  auto quota = std::make_shared<std::vector<int64_t>>(t.num_slots());
  return [d, tokens, quota](std::span<const int32_t> layer,
                            const LayerRouting& routing,
                            std::span<const double> counts) {
    d->SetPlacement(layer);
    for (size_t e = 0; e < counts.size(); ++e) {
      (*tokens)[e] = std::llround(counts[e]);
    }
    d->ComputeQuotas(std::span<const int64_t>(*tokens), *quota);
    std::vector<double> ranks(routing.num_ranks, 0.0);
    for (size_t p = 0; p < quota->size(); ++p) {
      ranks[p / routing.slots_per_rank] += static_cast<double>((*quota)[p]);
    }
    return ranks;
  };
}

// Realized imbalance [steps][L] when, in each window of `window` steps,
// the placement `plan(begin, end)` serves.
std::vector<double> ScoreWindows(const LoadTrace& trace, const Topology& t,
                                 int window,
                                 const std::function<Placement(int, int)>& plan,
                                 const RankLoadsFn& loads) {
  const int layers = trace.num_layers();
  std::vector<double> out(static_cast<size_t>(trace.num_steps()) * layers, 0);
  for (int begin = 0; begin < trace.num_steps(); begin += window) {
    const int end = std::min(trace.num_steps(), begin + window);
    const Placement p = plan(begin, end);
    for (int l = 0; l < layers; ++l) {
      const LayerRouting routing =
          eplb::BuildLayerRouting(p.layer(l), trace.num_experts(), t);
      for (int s = begin; s < end; ++s) {
        out[static_cast<size_t>(s) * layers + l] =
            Imbalance(loads(p.layer(l), routing, trace.row(s, l)));
      }
    }
  }
  return out;
}

// One row of the table.
struct Row {
  std::string trace = {}, dispatch = {}, label = {};
  std::string base = {};  // The trace's name without its seed suffix.
  uint64_t seed = 1;
  std::optional<Figures> whole = {}, steady = {};
  std::string moved = "–", rebalances = "–", late = "–", seconds = "–";
};

std::string Fixed(double x, int digits) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.*f", digits, x);
  return buf;
}

std::string Cell(const std::optional<Figures>& f, bool median) {
  if (!f) return "n/a";
  return Fixed(median ? f->median : f->p90, 3);
}

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t comma = s.find(',', start);
    const size_t end = comma == std::string::npos ? s.size() : comma;
    if (end > start) out.push_back(s.substr(start, end - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

std::string MachineLine() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line, model = "unknown CPU";
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  }
  char date[64];
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", &tm);
  return model + ", " + std::to_string(std::thread::hardware_concurrency()) +
         " cores, compiler " __VERSION__ + "; " + date;
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
      .count();
}

// Per family, dispatch and policy (not `default`), over its seeds: the
// largest relative excess of each figure over `default`'s in the same
// replay setting, with the seed where it occurs.
std::string SeedTable(const std::vector<Row>& rows,
                      const std::vector<std::string>& policies) {
  std::string md =
      "\nEach policy against `default` through the same cycle, over the "
      "seeds: the largest relative excess of its figure over `default`'s "
      "(negative: below `default` at every seed) and the seed where it "
      "occurs.\n\n| trace | dispatch | policy | seeds | median | p90 | "
      "steady median | steady p90 |\n|---|---|---|---|---|---|---|---|\n";
  std::vector<std::string> done;
  for (const Row& first : rows) {
    if (first.label == "default" || std::find(policies.begin(), policies.end(),
                                              first.label) == policies.end()) {
      continue;
    }
    const std::string key =
        first.base + "|" + first.dispatch + "|" + first.label;
    if (std::find(done.begin(), done.end(), key) != done.end()) continue;
    done.push_back(key);
    // Worst excess per figure: {excess, seed}.
    std::pair<double, uint64_t> worst[4];
    for (auto& w : worst) w = {-1e300, 0};
    int seeds = 0;
    bool missing = false;
    for (const Row& r : rows) {
      if (r.base != first.base || r.dispatch != first.dispatch ||
          r.label != first.label) {
        continue;
      }
      const Row* d = nullptr;
      for (const Row& x : rows) {
        if (x.trace == r.trace && x.dispatch == r.dispatch &&
            x.label == "default") {
          d = &x;
        }
      }
      if (!d || !r.whole || !d->whole || !r.steady || !d->steady) {
        missing = true;
        continue;
      }
      ++seeds;
      const double mine[4] = {r.whole->median, r.whole->p90, r.steady->median,
                              r.steady->p90};
      const double theirs[4] = {d->whole->median, d->whole->p90,
                                d->steady->median, d->steady->p90};
      for (int i = 0; i < 4; ++i) {
        const double excess = mine[i] / theirs[i] - 1.0;
        if (excess > worst[i].first) worst[i] = {excess, r.seed};
      }
    }
    md += "| " + first.base + " | " + first.dispatch + " | " + first.label +
          " | " + std::to_string(seeds) + (missing ? " (some n/a)" : "");
    for (const auto& [excess, seed] : worst) {
      md += seeds == 0 ? " | n/a"
                       : " | " + std::string(excess >= 0 ? "+" : "") +
                             Fixed(100 * excess, 1) + "% (s" +
                             std::to_string(seed) + ")";
    }
    md += " |\n";
  }
  return md;
}

struct Options {
  std::vector<std::string> traces, policies;
  std::vector<DispatchMode> dispatches;
  bool quick = false;
  int seeds = 1;  // Generated families at seeds 1..seeds.
  std::string data_dir;
  std::string out;
  std::string command;
};

int Run(const Options& opt) {
  const auto run_start = std::chrono::steady_clock::now();
  std::vector<Row> rows;
  std::vector<std::string> trace_lines, notes;
  // "rr and balanced" -> the traces where every policy's rows under the two
  // dispatches came out the same in every figure.
  std::map<std::string, std::vector<std::string>> same_dispatch;
  bool steady_missing = false;
  // The selected traces, the generated families once per seed ("topics",
  // "topics s2", ...).
  std::vector<TraceCase> cases;
  for (const TraceCase& selected : AllCases()) {
    if (std::find(opt.traces.begin(), opt.traces.end(), selected.name) ==
        opt.traces.end()) {
      continue;
    }
    // The families drawn from real data without a token count take no seed.
    bool seeded = false;
    if (!selected.family.empty() && selected.fold < 0) {
      const eplb::bench::FamilyInfo info =
          *eplb::bench::FindFamily(selected.family);
      seeded = !(info.fixed_shape && info.tokens == 0);
    }
    for (int seed = 1; seed <= (seeded ? opt.seeds : 1); ++seed) {
      TraceCase c = selected;
      c.seeded = seeded;
      c.base = selected.name;
      c.seed = static_cast<uint64_t>(seed);
      if (seed > 1) c.name += " s" + std::to_string(seed);
      cases.push_back(std::move(c));
    }
  }
  for (const TraceCase& c : cases) {
    // The trace.
    const auto gen_start = std::chrono::steady_clock::now();
    eplb::StatusOr<LoadTrace> trace = eplb::InternalError("not loaded");
    int top_k = 6;
    std::string what;
    if (c.family.empty()) {
      trace = eplb::ReadLoadFile(opt.data_dir +
                                 "/dsv2lite-puffin/prefill_by_prompt.csv");
      what = "shipped DeepSeek-V2-Lite trace, one prompt per step";
      if (trace.ok() && opt.quick && trace->num_steps() > c.quick_steps) {
        LoadTrace prefix(c.quick_steps, trace->num_layers(),
                         trace->num_experts());
        std::copy_n(trace->data().begin(), prefix.data().size(),
                    prefix.mutable_data().begin());
        trace = std::move(prefix);
      }
    } else {
      eplb::bench::TraceSpec spec;
      spec.family = c.family;
      spec.fold = c.fold;
      spec.tokens = c.tokens;
      spec.layers = c.layers;
      spec.top_k = c.top_k;
      spec.seed = c.seed;
      spec.steps = opt.quick ? c.quick_steps : 0;
      spec.data_dir = opt.data_dir;
      trace = eplb::bench::GenerateTrace(spec);
      const eplb::bench::FamilyInfo info = *eplb::bench::FindFamily(c.family);
      top_k = c.top_k > 0 ? c.top_k : info.top_k;
      what =
          "`" + c.family + "`" +
          (c.fold >= 0 ? " fold " + std::to_string(c.fold)
                       : (c.seeded ? " seed " + std::to_string(c.seed) : "")) +
          (c.top_k > 0 ? ", top-" + std::to_string(c.top_k) : "") +
          (c.layers > 0 ? ", " + std::to_string(c.layers) + " layers" : "") +
          (c.tokens > 0 ? ", " + std::to_string(c.tokens) + " tokens" : "");
      if (c.family == "dsv3-mix") {
        const auto w = eplb::bench::Dsv3MixWorkloads(c.seed);
        what += ": " + std::string(w[0]) + ", " + w[1] + ", " + w[2];
      }
    }
    if (!trace.ok()) {
      std::fprintf(stderr, "eplb_bench_dynamic: %s: %s\n", c.name.c_str(),
                   trace.status().message().c_str());
      return 1;
    }
    const double gen_s = SecondsSince(gen_start);
    const int layers = trace->num_layers(), experts = trace->num_experts();
    eplb::ModelSpec model =
        c.model.empty()
            ? eplb::ModelForShape(trace->num_layers(), trace->num_experts())
            : *eplb::FindModelPreset(c.model);
    eplb::StatusOr<Topology> topology =
        eplb::MakeTopologyFromRedundant(experts, c.ranks, c.redundant);
    if (!topology.ok()) {
      std::fprintf(stderr, "eplb_bench_dynamic: %s: %s\n", c.name.c_str(),
                   topology.status().message().c_str());
      return 1;
    }
    const eplb::bench::TraceStats st = eplb::bench::MeasureTrace(*trace, top_k);
    trace_lines.push_back(
        "| " + c.name + " | " + what + " | " +
        std::to_string(trace->num_steps()) + " x " + std::to_string(layers) +
        " x " + std::to_string(experts) + ", top-" + std::to_string(top_k) +
        " | " + model.name + ", EP" + std::to_string(c.ranks) + " + " +
        std::to_string(c.redundant) + " | " + Fixed(st.tokens_mean, 0) + " (" +
        std::to_string(st.tokens_min) + "–" + std::to_string(st.tokens_max) +
        ") | " + Fixed(st.hottest_share_median, 3) + " / " +
        Fixed(st.hottest_share_p90, 3) + " | " + Fixed(st.hot_set_overlap, 2) +
        " | " + std::to_string(c.steady_from) + " | " + Fixed(gen_s, 1) +
        " s |");
    const Placement initial = Placement::Initial(layers, experts, *topology);

    for (DispatchMode mode : opt.dispatches) {
      const std::string dname(eplb::DispatchModeName(mode));
      const RankLoadsFn loads = RankLoadsUnder(mode, experts, *topology);
      // No balancing: the initial placement throughout. Whole-trace figures
      // come from the replay below; the steady-state ones are scored here.
      Row none{.trace = c.name, .dispatch = dname, .label = "no balancing"};
      std::optional<Figures> none_whole_here;
      {
        const auto s =
            Summarise(ScoreWindows(
                          *trace, *topology, trace->num_steps(),
                          [&](int, int) { return Placement(initial); }, loads),
                      layers, c.steady_from);
        none_whole_here = s.first;
        none.steady = s.second;
      }
      const size_t none_index = rows.size();
      rows.push_back(none);
      // Two references per window of H steps, planned by `default` from the
      // initial placement on the window's sum: the window-clairvoyant floor
      // (the plan serves the very steps it was planned on) and the fresh
      // plan (it serves the next window, at once: what the cycle would meet
      // without its A + migration steps of staleness).
      for (const char* fp : kFloorPolicies) {
        for (const bool fresh : {false, true}) {
          Row floor{.trace = c.name,
                    .dispatch = dname,
                    .label = std::string(fresh ? "previous window's plan ("
                                               : "floor (") +
                             fp + (fresh ? ", at once)" : ", per window)")};
          const auto t0 = std::chrono::steady_clock::now();
          std::unique_ptr<eplb::Policy> policy = *eplb::CreatePolicy(fp);
          bool failed = false;
          const auto plan = [&](int begin, int end) {
            if (fresh) {
              if (begin == 0) return Placement(initial);
              end = begin;
              begin = std::max(0, begin - kHeatInterval);
            }
            const eplb::LoadMatrix agg = trace->Aggregate(begin, end);
            eplb::StatusOr<eplb::Plan> p = policy->Rebalance(
                {&initial, &agg, nullptr, *topology}, eplb::PolicyOptions{});
            if (!p.ok()) {
              failed = true;
              return Placement(initial);
            }
            return p->placement;
          };
          const auto s = Summarise(
              ScoreWindows(*trace, *topology, kHeatInterval, plan, loads),
              layers, c.steady_from);
          if (failed)
            notes.push_back(c.name + ": a reference plan by " + fp + " failed");
          floor.whole = s.first;
          floor.steady = s.second;
          floor.seconds = Fixed(SecondsSince(t0), 1);
          rows.push_back(floor);
        }
      }
      // The policies through the dynamic cycle.
      for (const std::string& name : opt.policies) {
        eplb::ReplayOptions o;
        o.model = model;
        o.hardware = *eplb::FindHardwareProfile("a2");
        o.topology = *topology;
        o.config.dynamic_eplb = true;
        o.config.expert_heat_collection_interval = kHeatInterval;
        o.config.algorithm_execution_interval = kAlgoInterval;
        o.config.num_redundant_experts = c.redundant;
        o.policy = name;
        o.dispatch = mode;
        o.steady_from = c.steady_from;
        o.pace = false;
        o.log = [&](std::string_view line) {
          std::fprintf(stderr, "eplb_bench_dynamic: %s %s %s: %.*s\n",
                       c.name.c_str(), dname.c_str(), name.c_str(),
                       static_cast<int>(line.size()), line.data());
        };
        const auto t0 = std::chrono::steady_clock::now();
        eplb::StatusOr<eplb::ReplayResult> r = eplb::RunReplay(*trace, o);
        const double secs = SecondsSince(t0);
        if (!r.ok()) {
          std::fprintf(stderr, "eplb_bench_dynamic: %s %s %s: %s\n",
                       c.name.c_str(), dname.c_str(), name.c_str(),
                       r.status().message().c_str());
          return 1;
        }
        std::fprintf(stderr, "%-16s %-8s %-8s %6.1f s  median %.3f p90 %.3f\n",
                     c.name.c_str(), dname.c_str(), name.c_str(), secs,
                     r->imbalance.median, r->imbalance.p90);
        Row row{.trace = c.name,
                .dispatch = dname,
                .label = r->policy,
                .base = c.base,
                .seed = c.seed};
        row.whole = Figures{r->imbalance.median, r->imbalance.p90};
        if (r->imbalance_by_step_layer.size() ==
            static_cast<size_t>(r->steps) * layers) {
          row.steady =
              Summarise(r->imbalance_by_step_layer, layers, c.steady_from)
                  .second;
        } else {
          steady_missing = true;
        }
        row.moved = Fixed(100 * r->moved_per_rebalance, 1) + "%";
        row.rebalances = std::to_string(r->rebalances);
        row.late = std::to_string(r->cycles_late);
        row.seconds = Fixed(secs, 1);
        if (r->plans_failed > 0) {
          std::string note = c.name;
          note.append(" ").append(dname).append(" ").append(name);
          note.append(": ").append(std::to_string(r->plans_failed));
          note.append(" plans failed");
          notes.push_back(std::move(note));
        }
        if (r->layers_aborted > 0) {
          notes.push_back(c.name + " " + dname + " " + name + ": " +
                          std::to_string(r->layers_aborted) +
                          " layer migrations aborted or refused (the log "
                          "on stderr says why)");
        }
        rows.push_back(row);
        // The replay's own no-balancing figures, checked against ours.
        Row& none_row = rows[none_index];
        if (!none_row.whole) {
          none_row.whole =
              Figures{r->baseline_imbalance.median, r->baseline_imbalance.p90};
          if (none_whole_here &&
              (none_whole_here->median != none_row.whole->median ||
               none_whole_here->p90 != none_row.whole->p90)) {
            notes.push_back(c.name + " " + dname +
                            ": the replay's no-balancing figures (" +
                            Fixed(none_row.whole->median, 4) + " / " +
                            Fixed(none_row.whole->p90, 4) +
                            ") differ from the harness's own scoring (" +
                            Fixed(none_whole_here->median, 4) + " / " +
                            Fixed(none_whole_here->p90, 4) + ")");
          }
        }
      }
      if (!rows[none_index].whole) rows[none_index].whole = none_whole_here;
    }
    // Dispatches whose policy rows came out the same in every figure.
    for (size_t d = 1; d < opt.dispatches.size(); ++d) {
      const std::string a(eplb::DispatchModeName(opt.dispatches[0]));
      const std::string b(eplb::DispatchModeName(opt.dispatches[d]));
      bool same = !opt.policies.empty();
      for (const std::string& p : opt.policies) {
        const Row *ra = nullptr, *rb = nullptr;
        for (const Row& row : rows) {
          if (row.trace != c.name || row.label != p) continue;
          if (row.dispatch == a) ra = &row;
          if (row.dispatch == b) rb = &row;
        }
        same = same && ra && rb && ra->whole && rb->whole &&
               ra->whole->median == rb->whole->median &&
               ra->whole->p90 == rb->whole->p90 && ra->moved == rb->moved &&
               ra->rebalances == rb->rebalances;
      }
      if (same) {
        std::string key = a;
        key += " and " + b;
        same_dispatch[key].push_back(c.name);
      }
    }
  }

  // The report.
  std::string md;
  md += "# Dynamic balancing on traffic the policies were not tuned on\n\n";
  md += "`" + opt.command + "` — " + MachineLine() + "; total run time " +
        Fixed(SecondsSince(run_start), 0) + " s.\n\n";
  md +=
      "Every row replays the trace through the dynamic cycle "
      "(`eplb::RunReplay`, lockstep simulation: `pace = false`, the same "
      "figures on every machine) with H = " +
      std::to_string(kHeatInterval) +
      " steps of heat per cycle and A = " + std::to_string(kAlgoInterval) +
      " steps for the plan, one trace step per replay step. Figures are the "
      "realized imbalance (busiest rank's tokens over the mean rank's) of "
      "every (step, layer) that routed a token, median and p90 by nearest "
      "rank, over the whole trace and from the steady-state step on. "
      "`default` is DeepSeek's algorithm through the same cycle. `no "
      "balancing` serves the initial placement throughout; `floor` plans, "
      "for each consecutive window of H steps, on that very window's "
      "aggregate from the initial placement and serves it during the window "
      "(clairvoyant: what a planner that knew each window in advance would "
      "get); `previous window's plan` plans the same way on the window "
      "before and serves it at once (no staleness: what the cycle would "
      "meet if plans took no A steps and migrations no time). Both are "
      "scored under the row's dispatch. Moved: slots moved per rebalance "
      "over all slots; late: cycles whose plan missed its step; s: "
      "wall-clock seconds of the replay (or of the reference's planning and "
      "scoring).\n\n";
  md +=
      "| trace | what | steps x layers x experts | model, EP group | tokens "
      "per step: mean (range) | hottest share median / p90 | hot-set overlap "
      "| steady from | generated in |\n|---|---|---|---|---|---|---|---|---|\n";
  for (const std::string& l : trace_lines) md += l + "\n";
  md +=
      "\nHottest share: the busiest expert's tokens over the step's tokens, "
      "per (step, layer). Hot-set overlap: the share of one 16-step window's "
      "8 hottest experts (per layer) still among the next window's 8 hottest "
      "(1 = a stable hot set).\n\n";
  md +=
      "| trace | dispatch | policy | median | p90 | steady median | steady "
      "p90 | moved per rebalance | rebalances | late | s |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (const Row& r : rows) {
    md += "| " + r.trace + " | " + r.dispatch + " | " + r.label + " | " +
          Cell(r.whole, true) + " | " + Cell(r.whole, false) + " | " +
          Cell(r.steady, true) + " | " + Cell(r.steady, false) + " | " +
          r.moved + " | " + r.rebalances + " | " + r.late + " | " + r.seconds +
          " |\n";
  }
  if (opt.seeds > 1 && std::find(opt.policies.begin(), opt.policies.end(),
                                 "default") != opt.policies.end()) {
    md += SeedTable(rows, opt.policies);
  }
  for (const auto& [pair, traces] : same_dispatch) {
    std::string list;
    for (const std::string& t : traces) list += (list.empty() ? "" : ", ") + t;
    std::string note = "every policy's rows under " + pair;
    note +=
        " dispatch are the same in every figure shown (the replays did not "
        "differ) on: ";
    note += list;
    notes.push_back(std::move(note));
  }
  if (steady_missing) {
    notes.push_back(
        "steady-state figures of the policies: n/a, as the replay returned "
        "no per-(step, layer) imbalance log (ReplayResult::"
        "imbalance_by_step_layer empty)");
  }
  if (!notes.empty()) {
    md += "\nNotes:\n\n";
    for (const std::string& n : notes) md += "- " + n + "\n";
  }
  std::fputs(md.c_str(), stdout);
  if (!opt.out.empty()) {
    if (eplb::Status s = eplb::WriteFileAtomic(opt.out, md); !s.ok()) {
      std::fprintf(stderr, "eplb_bench_dynamic: %s\n", s.message().c_str());
      return 1;
    }
  }
  return 0;
}

}  // namespace

namespace {

int Main(int argc, char** argv) {
  CLI::App app{
      "eplb_bench_dynamic: every policy through the dynamic cycle on "
      "unseen traffic families"};
  std::string traces, policies, dispatches;
  Options opt;
  opt.data_dir = std::string(EPLB_SOURCE_DIR) + "/data";
  std::string all_traces;
  for (const TraceCase& c : AllCases()) {
    all_traces += (all_traces.empty() ? "" : ",") + c.name;
  }
  app.add_option("--traces", traces,
                 "Comma-separated traces (default: " + all_traces + ")");
  app.add_option("--policies", policies,
                 "Comma-separated policies (default: swift,flashlb,default)");
  app.add_option("--dispatches", dispatches,
                 "Comma-separated dispatches (default: rr,balanced)");
  app.add_flag("--quick", opt.quick,
               "Fewer steps (200; dsv3 120) for iterating");
  app.add_option("--seeds", opt.seeds,
                 "Replay the generated families at seeds 1..N and add a table "
                 "of each policy's worst margin against default (default 1)")
      ->check(CLI::Range(1, 100));
  app.add_option("--data-dir", opt.data_dir, "The repository's data/");
  app.add_option("--out", opt.out, "Also write the Markdown to this file");
  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "eplb_bench_dynamic: %s (see --help)\n", e.what());
    return 2;
  }
  const std::vector<std::string> names = Split(all_traces);
  opt.traces = Split(traces.empty() ? all_traces : traces);
  for (const std::string& t : opt.traces) {
    if (std::find(names.begin(), names.end(), t) == names.end()) {
      std::fprintf(stderr,
                   "eplb_bench_dynamic: --traces %s: must be among %s\n",
                   t.c_str(), all_traces.c_str());
      return 2;
    }
  }
  if (policies.empty()) {
    for (const char* p : kPolicies) opt.policies.push_back(p);
  } else {
    opt.policies = Split(policies);
  }
  for (const std::string& p : opt.policies) {
    if (!eplb::CreatePolicy(p).ok()) {
      std::fprintf(stderr, "eplb_bench_dynamic: --policies %s: %s\n", p.c_str(),
                   eplb::CreatePolicy(p).status().message().c_str());
      return 2;
    }
  }
  if (dispatches.empty()) {
    opt.dispatches.assign(std::begin(kDispatches), std::end(kDispatches));
  } else {
    for (const std::string& d : Split(dispatches)) {
      eplb::StatusOr<DispatchMode> m = eplb::ParseDispatchMode(d);
      if (!m.ok()) {
        std::fprintf(stderr, "eplb_bench_dynamic: --dispatches %s\n",
                     m.status().message().c_str());
        return 2;
      }
      opt.dispatches.push_back(*m);
    }
  }
  opt.command = "eplb_bench_dynamic";
  for (int i = 1; i < argc; ++i) opt.command += std::string(" ") + argv[i];
  return Run(opt);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "eplb_bench_dynamic: %s\n", e.what());
    return 1;
  }
}
