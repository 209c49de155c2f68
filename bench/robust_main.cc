// Leave-one-out benchmark of robust static maps (eplb/robust.h): for each
// workload of a phase, a map is planned on all the OTHER workloads of that
// phase and serves the one left out. Compared with the single-workload maps
// (each other workload's own map, by FlashLB and by "best", serving the left
// out one) and with "best" planned on the sum of the others' normalised loads
// (what a robust plan without its min-max search would give).
//
// Two data sets: the eight real DeepSeek-V3 workloads (data/dsv3-sglang:
// 6 prefill, 2 decode; EP32, 288 slots, one node), and synthetic traffic the
// method was not tuned on: each family of bench/trace_gen.h (seed 1, its
// default shape), cut into 6 consecutive segments of equal length, each
// segment one workload (128 experts on 16 ranks x 10 slots).
//
// Prints Markdown (bench/results/robust.md).
//
// Usage: eplb_bench_robust [--quantile Q] [--quick] [--data-dir DIR]
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "bench/trace_gen.h"
#include "eplb/io.h"
#include "eplb/policy.h"
#include "eplb/robust.h"

namespace {

using eplb::LoadMatrix;
using eplb::Placement;
using eplb::Topology;

struct Figures {
  double mean = 0.0;   // Mean over the left-out cases of the mean imbalance.
  double worst = 0.0;  // Worst layer over all left-out cases.
  double worst_mean = 0.0;  // Worst left-out case's mean imbalance.
};

void Add(Figures* f, double mean, double worst, int n) {
  f->mean += mean / n;
  f->worst = std::max(f->worst, worst);
  f->worst_mean = std::max(f->worst_mean, mean);
}

Placement PlanSingle(const char* policy, const LoadMatrix& load,
                     const Topology& t) {
  const Placement initial =
      Placement::Initial(load.num_layers(), load.num_experts(), t);
  std::unique_ptr<eplb::Policy> p = *eplb::CreatePolicy(policy);
  eplb::PolicyOptions o;
  o.migration_budget = 1.0;
  auto plan = p->Rebalance({&initial, &load, nullptr, t}, o);
  if (!plan.ok()) {
    std::fprintf(stderr, "%s: %s\n", policy, plan.status().ToString().c_str());
    std::exit(1);
  }
  return plan->placement;
}

eplb::WorkloadImbalance Serve(const Placement& p, const LoadMatrix& load) {
  return eplb::SummariseWorkloads(p, {load})[0];
}

struct Totals {
  Figures robust, sum, flashlb, best;
  double in_sample = 0.0;  // Robust map on its own workloads: mean of means.
  double plan_s = 0.0;
  std::vector<int> start_wins;  // Layers won by each start.
  std::vector<std::string> start_names;
  int64_t moves = 0, layers = 0;
  int max_moves = 0;
};

// Leave-one-out over `loads` (names for the rows); prints one row per
// left-out workload and returns the totals.
Totals LeaveOneOut(const std::vector<std::string>& names,
                   const std::vector<LoadMatrix>& loads, const Topology& t,
                   const eplb::RobustPlanOptions& options, bool rows) {
  const int n = static_cast<int>(loads.size());
  std::vector<Placement> flash, best;
  for (const LoadMatrix& l : loads) {
    flash.push_back(PlanSingle("flashlb", l, t));
    best.push_back(PlanSingle("best", l, t));
  }
  Totals tot;
  for (int out = 0; out < n; ++out) {
    std::vector<LoadMatrix> train;
    LoadMatrix sum(loads[0].num_layers(), loads[0].num_experts());
    for (int i = 0; i < n; ++i) {
      if (i == out) continue;
      train.push_back(loads[i]);
      for (int l = 0; l < sum.num_layers(); ++l) {
        double total = 0.0;
        for (double v : loads[i].row(l)) total += v;
        if (total <= 0.0) continue;
        for (int e = 0; e < sum.num_experts(); ++e) {
          sum.at(l, e) += loads[i].at(l, e) / total;
        }
      }
    }
    const auto start = std::chrono::steady_clock::now();
    auto plan = eplb::PlanRobust(train, t, options);
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    if (!plan.ok()) {
      std::fprintf(stderr, "%s\n", plan.status().ToString().c_str());
      std::exit(1);
    }
    tot.plan_s += secs / n;
    tot.start_names = plan->starts;
    tot.start_wins.resize(plan->starts.size());
    for (const eplb::RobustLayer& l : plan->layers) {
      ++tot.start_wins[l.start];
      tot.moves += l.moves;
      ++tot.layers;
      tot.max_moves = std::max(tot.max_moves, l.moves);
    }
    const auto own = eplb::SummariseWorkloads(plan->placement, train);
    double own_mean = 0.0;
    for (const auto& o : own)
      own_mean += o.mean / static_cast<double>(own.size());
    tot.in_sample += own_mean / n;
    const auto r = Serve(plan->placement, loads[out]);
    const auto s = Serve(PlanSingle("best", sum, t), loads[out]);
    Figures f1, f2;  // Single-workload maps: over the other workloads.
    for (int i = 0; i < n; ++i) {
      if (i == out) continue;
      const auto a = Serve(flash[i], loads[out]);
      const auto b = Serve(best[i], loads[out]);
      Add(&f1, a.mean, a.worst, n - 1);
      Add(&f2, b.mean, b.worst, n - 1);
    }
    Add(&tot.robust, r.mean, r.worst, n);
    Add(&tot.sum, s.mean, s.worst, n);
    Add(&tot.flashlb, f1.mean, f1.worst, n);
    Add(&tot.best, f2.mean, f2.worst, n);
    // The worst single map's mean, for the "worst case" figure.
    tot.flashlb.worst_mean = std::max(tot.flashlb.worst_mean, f1.worst_mean);
    tot.best.worst_mean = std::max(tot.best.worst_mean, f2.worst_mean);
    if (rows) {
      std::printf(
          "| %s | %.4f / %.4f | %.4f / %.4f | %.4f / %.4f (%.4f) | %.4f / "
          "%.4f (%.4f) | %.4f | %.1f |\n",
          names[out].c_str(), r.mean, r.worst, s.mean, s.worst, f1.mean,
          f1.worst, f1.worst_mean, f2.mean, f2.worst, f2.worst_mean, own_mean,
          secs);
    }
  }
  return tot;
}

void PrintSearch(const Totals& t) {
  std::printf("\nLayers won by each start:");
  for (size_t i = 0; i < t.start_wins.size(); ++i) {
    std::printf("%s %s %d", i ? "," : "", t.start_names[i].c_str(),
                t.start_wins[i]);
  }
  std::printf("; local-search moves per layer: mean %.1f, max %d.\n",
              static_cast<double>(t.moves) /
                  static_cast<double>(std::max<int64_t>(1, t.layers)),
              t.max_moves);
}

void PrintHeader() {
  std::printf(
      "| left out | robust map: mean / worst layer | best on the sum: mean / "
      "worst | single maps, flashlb: mean / worst (worst map's mean) | single "
      "maps, best: mean / worst (worst map's mean) | robust in-sample mean | "
      "plan s |\n|---|---|---|---|---|---|---|\n");
}

void PrintTotals(const char* what, const Totals& t) {
  std::printf(
      "| **%s** | **%.4f / %.4f** (worst case %.4f) | %.4f / %.4f (%.4f) | "
      "%.4f / %.4f (%.4f) | %.4f / %.4f (%.4f) | %.4f | %.1f |\n",
      what, t.robust.mean, t.robust.worst, t.robust.worst_mean, t.sum.mean,
      t.sum.worst, t.sum.worst_mean, t.flashlb.mean, t.flashlb.worst,
      t.flashlb.worst_mean, t.best.mean, t.best.worst, t.best.worst_mean,
      t.in_sample, t.plan_s);
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir = std::string(EPLB_SOURCE_DIR) + "/data";
  eplb::RobustPlanOptions options;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quantile" && i + 1 < argc) {
      options.quantile = std::atof(argv[++i]);
    } else if (a == "--quick") {
      quick = true;
    } else if (a == "--data-dir" && i + 1 < argc) {
      dir = argv[++i];
    } else {
      std::fprintf(stderr,
                   "usage: eplb_bench_robust [--quantile Q] [--quick] "
                   "[--data-dir DIR]\n");
      return 2;
    }
  }
  std::printf(
      "# Robust static maps: leave-one-out\n\nEach row: a map planned on "
      "every OTHER workload of the phase serves the workload left out; "
      "figures are its max/mean rank load, mean over layers / worst layer. "
      "Quantile %.2f. Single maps: each other workload's own map (mean over "
      "them / worst layer of any of them; in brackets the worst single map's "
      "mean).\n",
      options.quantile);

  // --- DeepSeek-V3 ---
  const char* const prefill[] = {
      "prefill_in512",         "prefill_in1024",       "prefill_in2048",
      "prefill_in1000out1000", "prefill_in2000out100", "prefill_in500out1500"};
  const char* const decode[] = {"decode_in1000out1000", "decode_in1800out100"};
  const Topology t = *eplb::MakeTopology(256, 32, 9, 32);
  std::printf(
      "\n## DeepSeek-V3 (58 layers x 256 experts), EP32, 288 slots, "
      "one node\n\n");
  for (int phase = 0; phase < 2; ++phase) {
    std::vector<std::string> names;
    std::vector<LoadMatrix> loads;
    const int n = phase == 0 ? 6 : 2;
    for (int i = 0; i < n; ++i) {
      const std::string w = phase == 0 ? prefill[i] : decode[i];
      auto trace =
          eplb::ReadSglangLogicalCount(dir + "/dsv3-sglang/" + w + ".json");
      if (!trace.ok()) {
        std::fprintf(stderr, "%s\n", trace.status().ToString().c_str());
        return 1;
      }
      names.push_back(w);
      loads.push_back(trace->Aggregate());
    }
    std::printf("### %s\n\n",
                phase == 0 ? "prefill (6 workloads)" : "decode (2 workloads)");
    PrintHeader();
    const Totals tot = LeaveOneOut(names, loads, t, options, true);
    PrintTotals(phase == 0 ? "prefill" : "decode", tot);
    PrintSearch(tot);
    std::printf("\n");
  }

  // --- Synthetic ---
  std::printf(
      "## Synthetic families (bench/trace_gen.h, seed 1), 6 segments each, "
      "128 experts on 16 ranks x 10 slots\n\n| family | robust: mean / "
      "worst (worst case) | best on the sum | single, flashlb | single, best "
      "| robust in-sample | plan s |\n|---|---|---|---|---|---|---|\n");
  std::vector<std::string> families = {"topics", "domains", "drift",
                                       "burst",  "skew",    "sparse"};
  if (quick) families = {"topics", "drift"};
  std::vector<std::string> search;
  for (const std::string& family : families) {
    eplb::bench::TraceSpec spec;
    spec.family = family;
    spec.seed = 1;
    spec.data_dir = dir;
    auto trace = eplb::bench::GenerateTrace(spec);
    if (!trace.ok()) {
      std::fprintf(stderr, "%s\n", trace.status().ToString().c_str());
      return 1;
    }
    const int segments = 6;
    const int len = trace->num_steps() / segments;
    std::vector<std::string> names;
    std::vector<LoadMatrix> loads;
    for (int s = 0; s < segments; ++s) {
      names.push_back(family + "[" + std::to_string(s) + "]");
      loads.push_back(trace->Aggregate(s * len, (s + 1) * len));
    }
    const Topology ts = *eplb::MakeTopology(trace->num_experts(), 16, 10, 16);
    const Totals tot = LeaveOneOut(names, loads, ts, options, false);
    PrintTotals(family.c_str(), tot);
    search.push_back(
        family + ": " +
        std::to_string(tot.moves / std::max<int64_t>(1, tot.layers)) +
        " moves per layer (max " + std::to_string(tot.max_moves) + ")");
  }
  std::printf("\nLocal search:");
  for (size_t i = 0; i < search.size(); ++i) {
    std::printf("%s %s", i ? "," : "", search[i].c_str());
  }
  std::printf(".\n");
  return 0;
}
