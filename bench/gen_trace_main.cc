// eplb_gen_trace: writes one trace of a family of bench/trace_gen.h as trace
// CSV (docs/formats.md), for `eplb replay --trace` and the tests.
//
//   eplb_gen_trace --family NAME [--seed S] [--steps T] [--layers L]
//                  [--experts E] [--top-k K] [--tokens N] [--fold F]
//                  [--data-dir DIR] [--stats] --out FILE.csv
//   eplb_gen_trace --list
//
// The same flags give a byte-identical file on every machine. Errors are one
// line on stderr: exit 2 for a bad command line (a flag or its value), 1 for
// anything else (a missing data file, a write that failed).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <string>

#include "bench/trace_gen.h"
#include "eplb/io.h"

namespace {

constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

int Run(int argc, char** argv) {
  CLI::App app{
      "eplb_gen_trace: seeded synthetic expert-load traces (trace CSV)"};
  eplb::bench::TraceSpec spec;
  spec.data_dir = std::string(EPLB_SOURCE_DIR) + "/data";
  std::string out;
  bool list = false, stats = false;
  app.add_flag("--list", list, "Print the families, one a line, and exit");
  app.add_option("--family", spec.family, "Family (see --list)");
  app.add_option("--seed", spec.seed, "Seed (default 1)");
  app.add_option("--steps", spec.steps, "Steps (default: the family's)")
      ->check(CLI::Range(1, 100000));
  app.add_option("--layers", spec.layers, "MoE layers (default: the family's)")
      ->check(CLI::Range(1, 1024));
  app.add_option("--experts", spec.experts, "Experts (default: the family's)")
      ->check(CLI::Range(2, 4096));
  app.add_option("--top-k", spec.top_k,
                 "Experts each token picks (default: the family's)")
      ->check(CLI::Range(1, 64));
  app.add_option("--tokens", spec.tokens,
                 "Mean tokens per step (default: the family's)")
      ->check(CLI::Range(1, 1000000));
  app.add_option("--fold", spec.fold,
                 "puffin-fold: the fold 0..3 (default: seed mod 4)")
      ->check(CLI::Range(0, 3));
  app.add_option("--data-dir", spec.data_dir,
                 "The repository's data/ (dsv3 and puffin-* read from it)");
  app.add_flag("--stats", stats,
               "Also print the trace's statistics (hottest-expert share, "
               "tokens, hot-set overlap)");
  app.add_option("--out", out, "Trace CSV to write");
  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {  // --help.
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "eplb_gen_trace: %s (see --help)\n", e.what());
    return kExitUsage;
  }
  if (list) {
    for (const eplb::bench::FamilyInfo& f : eplb::bench::Families()) {
      std::printf("%-16s %.*s\n", std::string(f.name).c_str(),
                  static_cast<int>(f.summary.size()), f.summary.data());
    }
    return 0;
  }
  if (spec.family.empty() || out.empty()) {
    std::fprintf(stderr,
                 "eplb_gen_trace: --family and --out are required (see "
                 "--help)\n");
    return kExitUsage;
  }
  eplb::StatusOr<eplb::bench::FamilyInfo> family =
      eplb::bench::FindFamily(spec.family);
  if (!family.ok()) {
    std::string names;
    for (const eplb::bench::FamilyInfo& f : eplb::bench::Families()) {
      names += (names.empty() ? "" : ", ") + std::string(f.name);
    }
    std::fprintf(stderr, "eplb_gen_trace: --family %s: must be one of %s\n",
                 spec.family.c_str(), names.c_str());
    return kExitUsage;
  }
  eplb::StatusOr<eplb::LoadTrace> trace = eplb::bench::GenerateTrace(spec);
  if (!trace.ok()) {
    std::fprintf(stderr, "eplb_gen_trace: %s\n",
                 trace.status().message().c_str());
    return trace.status().code() == eplb::StatusCode::kInvalidArgument
               ? kExitUsage
               : kExitFailure;
  }
  if (eplb::Status s = eplb::WriteTraceCsv(out, *trace); !s.ok()) {
    std::fprintf(stderr, "eplb_gen_trace: %s\n", s.message().c_str());
    return kExitFailure;
  }
  if (stats) {
    const eplb::bench::TraceStats st = eplb::bench::MeasureTrace(
        *trace, spec.top_k ? spec.top_k : family->top_k);
    const std::string which =
        spec.family == "puffin-fold"
            ? "fold " +
                  std::to_string(spec.fold >= 0 ? spec.fold : spec.seed % 4)
            : "seed " + std::to_string(spec.seed);
    std::printf(
        "%s %s: %d steps x %d layers x %d experts; tokens per step mean %.1f "
        "(%lld-%lld); hottest share median %.3f, p90 %.3f; hot-set overlap "
        "%.3f\n",
        spec.family.c_str(), which.c_str(), trace->num_steps(),
        trace->num_layers(), trace->num_experts(), st.tokens_mean,
        static_cast<long long>(st.tokens_min),
        static_cast<long long>(st.tokens_max), st.hottest_share_median,
        st.hottest_share_p90, st.hot_set_overlap);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "eplb_gen_trace: %s\n", e.what());
  }
  return kExitFailure;
}
