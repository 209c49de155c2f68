// Wide expert parallelism: full-plan time and balance of every policy from
// the initial placement at 32 to 1024 ranks, with 256 and 512 experts, on
// synthetic Zipf loads (58 layers), and the speed-up of planning with two
// threads. Prints Markdown (bench/results/wide.md comes from it).
//
// The loads: layer l of experts E gives the expert at popularity rank r the
// weight 1 / (r + q)^1 times a jitter in [0.8, 1.2), q drawn per layer in
// [E/32, E/16], and the ranks scattered over the experts by a per-layer
// permutation: the hottest expert takes 5.6-9x the mean, as real routing
// does. Slots per rank are E/R + 1 (one redundant slot per rank) below E
// ranks, 2 at E ranks and 1 above.
//
// Usage: eplb_bench_wide [--quick] [--threads-only] [--reps N]
//                        [--only POLICY EXPERTS RANKS SLOTS] [--threads N]
//                        [--replan]
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/splitmix.h"
#include "eplb/load.h"
#include "eplb/policy.h"

namespace {

using eplb::LoadMatrix;
using eplb::Placement;
using eplb::Topology;

constexpr int kLayers = 58;

double Unit(uint64_t* s) {
  return static_cast<double>(eplb::internal::SplitMix64(s) >> 11) /
         9007199254740992.0;
}

LoadMatrix ZipfLoad(int experts, uint64_t seed) {
  LoadMatrix load(kLayers, experts);
  for (int l = 0; l < kLayers; ++l) {
    uint64_t s = seed * 1000003 + static_cast<uint64_t>(l);
    const double q =
        experts / 32.0 + Unit(&s) * (experts / 16.0 - experts / 32.0);
    std::vector<int> perm(experts);
    for (int i = 0; i < experts; ++i) perm[i] = i;
    for (int i = experts - 1; i > 0; --i) {
      std::swap(
          perm[i],
          perm[eplb::internal::SplitMix64(&s) % static_cast<uint64_t>(i + 1)]);
    }
    for (int r = 0; r < experts; ++r) {
      load.at(l, perm[r]) = 1e6 / (r + q) * (0.8 + 0.4 * Unit(&s));
    }
  }
  return load;
}

struct Result {
  double ms = 0;     // Best of the repetitions.
  double mean = 0;   // Mean over layers of max/mean.
  double worst = 0;  // Worst layer.
  int moved = 0;     // Experts new to their rank, all layers.
  Placement placement;
};

Result Run(const char* policy, const Placement& current, const LoadMatrix& load,
           const Topology& t, int threads, int reps) {
  Result r;
  r.ms = 1e300;
  for (int rep = 0; rep < reps; ++rep) {
    std::unique_ptr<eplb::Policy> p = *eplb::CreatePolicy(policy);
    eplb::PolicyOptions o;
    o.num_threads = threads;
    o.migration_budget = 1.0;  // As `eplb plan`: no move budget.
    const auto start = std::chrono::steady_clock::now();
    auto plan = p->Rebalance({&current, &load, nullptr, t}, o);
    const double ms = std::chrono::duration<double, std::milli>(
                          std::chrono::steady_clock::now() - start)
                          .count();
    if (!plan.ok()) {
      std::fprintf(stderr, "%s: %s\n", policy,
                   plan.status().ToString().c_str());
      std::exit(1);
    }
    r.ms = std::min(r.ms, ms);
    if (rep == 0) {
      r.placement = plan->placement;
      double sum = 0;
      for (const eplb::LayerPlan& lp : plan->layers) {
        r.moved += lp.moved_experts;
        sum += lp.predicted_imbalance;
        r.worst = std::max(r.worst, lp.predicted_imbalance);
      }
      r.mean = sum / static_cast<double>(plan->layers.size());
    } else if (!(plan->placement == r.placement)) {
      std::fprintf(stderr, "%s: two runs planned differently\n", policy);
      std::exit(1);
    }
    // A slow plan is timed once: it is far from any budget anyway.
    if (ms > 2000) break;
  }
  return r;
}

struct Layout {
  int experts, ranks, slots;
};

// DeepSeek's algorithm as its reference implements it (Python and numpy:
// bench/wide_reference.py on the same loads), timed in this run: "ms mean
// worst", or "" when python3 with numpy is not there.
std::string Reference(const Layout& lay) {
  const std::string cmd = std::string(EPLB_PYTHON) + " " + EPLB_SOURCE_DIR +
                          "/bench/wide_reference.py " +
                          std::to_string(lay.experts) + " " +
                          std::to_string(lay.ranks) + " " +
                          std::to_string(lay.slots) + " 2>/dev/null";
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return "";
  char line[256] = {0};
  const bool got = std::fgets(line, sizeof line, pipe) != nullptr;
  const int rc = pclose(pipe);
  if (!got || rc != 0) return "";
  double ms = 0, mean = 0, worst = 0;
  if (std::sscanf(line, "%lf %lf %lf", &ms, &mean, &worst) != 3) return "";
  char out[128];
  std::snprintf(out, sizeof out, "%.0f ms, %.4f / %.4f", ms, mean, worst);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, threads_only = false;
  int reps = 3;
  int only_threads = 1;
  bool only_replan = false;
  std::string only_policy;
  Layout only{0, 0, 0};
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      quick = true;
    } else if (std::strcmp(argv[i], "--threads-only") == 0) {
      threads_only = true;
    } else if (std::strcmp(argv[i], "--only") == 0 && i + 4 < argc) {
      // --only POLICY EXPERTS RANKS SLOTS: one plan, for profiling.
      only_policy = argv[++i];
      only.experts = std::atoi(argv[++i]);
      only.ranks = std::atoi(argv[++i]);
      only.slots = std::atoi(argv[++i]);
    } else if (std::strcmp(argv[i], "--replan") == 0) {
      only_replan = true;
    } else if (std::strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
      only_threads = std::max(1, std::atoi(argv[++i]));
    } else if (std::strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr,
                   "usage: eplb_bench_wide [--quick] [--threads-only] "
                   "[--reps N] [--only POLICY EXPERTS RANKS SLOTS] "
                   "[--threads N] [--replan]\n");
      return 2;
    }
  }
  if (!only_policy.empty()) {
    auto t = eplb::MakeTopology(only.experts, only.ranks, only.slots);
    if (!t.ok()) {
      std::fprintf(stderr, "%s\n", t.status().ToString().c_str());
      return 2;
    }
    const LoadMatrix load = ZipfLoad(only.experts, 7);
    const Placement initial = Placement::Initial(kLayers, only.experts, *t);
    Result r = Run(only_policy.c_str(), initial, load, *t, only_threads, reps);
    if (only_replan) {
      // From that plan to another load of the same kind.
      r = Run(only_policy.c_str(), r.placement, ZipfLoad(only.experts, 8), *t,
              only_threads, reps);
    }
    std::printf("%s %d/%d/%d: %.1f ms, mean %.4f, worst %.4f\n",
                only_policy.c_str(), only.experts, only.ranks, only.slots, r.ms,
                r.mean, r.worst);
    return 0;
  }
  std::vector<Layout> layouts;
  for (int experts : {256, 512}) {
    for (int ranks : {32, 64, 128, 256, 1024}) {
      if (quick && ranks != 128 && ranks != 1024) continue;
      // One redundant slot per rank below E ranks; at E ranks two slots
      // (one would leave no redundant slot); above, one.
      const int slots = ranks < experts    ? experts / ranks + 1
                        : ranks == experts ? 2
                                           : 1;
      layouts.push_back({experts, ranks, slots});
    }
  }
  const char* const policies[] = {"default", "swift", "flashlb", "best",
                                  "random"};
  if (!threads_only) {
    // From the initial placement (a first plan), then from that plan to
    // another load of the same kind (a re-plan: every candidate is built).
    std::printf(
        "| experts / ranks / slots per rank | policy | first plan ms (1 "
        "thread) | mean imbalance | worst layer | re-plan ms | re-plan mean "
        "| re-plan worst | moved per layer |\n"
        "|---|---|---|---|---|---|---|---|---|\n");
    std::vector<std::string> references;
    for (const Layout& lay : layouts) {
      const LoadMatrix load = ZipfLoad(lay.experts, 7);
      const LoadMatrix next = ZipfLoad(lay.experts, 8);
      const Topology t = *eplb::MakeTopology(lay.experts, lay.ranks, lay.slots);
      const Placement initial = Placement::Initial(kLayers, lay.experts, t);
      const std::string ref = Reference(lay);
      char row[160];
      std::snprintf(
          row, sizeof row, "| %d / %d / %d | %s |", lay.experts, lay.ranks,
          lay.slots,
          ref.empty() ? "not run (no python3 with numpy)" : ref.c_str());
      references.push_back(row);
      for (const char* p : policies) {
        const Result r = Run(p, initial, load, t, 1, reps);
        const Result re = Run(p, r.placement, next, t, 1, reps);
        std::printf(
            "| %d / %d / %d | %s | %.1f | %.4f | %.4f | %.1f | %.4f | %.4f | "
            "%.1f |\n",
            lay.experts, lay.ranks, lay.slots, p, r.ms, r.mean, r.worst, re.ms,
            re.mean, re.worst, re.moved / static_cast<double>(kLayers));
        std::fflush(stdout);
      }
    }
    std::printf(
        "\nDeepSeek's algorithm as its reference runs it (Python and numpy, "
        "`bench/wide_reference.py`), first plan on the same loads, in this "
        "run:\n\n| experts / ranks / slots per rank | plan time, mean / "
        "worst layer |\n|---|---|\n");
    for (const std::string& row : references) std::printf("%s\n", row.c_str());
  }
  // Threads: the same plans with 1 and 2 threads (same bytes, checked).
  std::printf(
      "\n| experts / ranks / slots per rank | policy | 1 thread ms | 2 "
      "threads ms | speed-up | same plan |\n|---|---|---|---|---|---|\n");
  for (const Layout& lay : {Layout{512, 128, 5}, Layout{256, 128, 3}}) {
    const LoadMatrix load = ZipfLoad(lay.experts, 7);
    const Topology t = *eplb::MakeTopology(lay.experts, lay.ranks, lay.slots);
    const Placement initial = Placement::Initial(kLayers, lay.experts, t);
    for (const char* p : policies) {
      // Interleaved, best of many: the two timings meet the same machine.
      Result one = Run(p, initial, load, t, 1, 1);
      Result two = Run(p, initial, load, t, 2, 1);
      for (int rep = 1; rep < std::max(reps, 11); ++rep) {
        one.ms = std::min(one.ms, Run(p, initial, load, t, 1, 1).ms);
        two.ms = std::min(two.ms, Run(p, initial, load, t, 2, 1).ms);
      }
      std::printf("| %d / %d / %d | %s | %.1f | %.1f | %.2fx | %s |\n",
                  lay.experts, lay.ranks, lay.slots, p, one.ms, two.ms,
                  one.ms / two.ms,
                  one.placement == two.placement ? "yes" : "NO");
      std::fflush(stdout);
    }
  }
  return 0;
}
