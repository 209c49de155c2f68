// Seeded generator of synthetic expert-load traces: families of routing
// traffic unlike the one trace the project ships, so that a balancing policy
// tuned on that trace can be judged on traffic it has not seen
// (bench/dynamic_main.cc runs every policy on all of them).
//
// Every family is a small, documented model of how a MoE router spreads a
// step's tokens over the experts (bench/README.md describes each and its
// measured statistics). The same spec gives a bit-identical trace on every
// machine and standard library: the random stream is xoshiro256** seeded
// through splitmix64, every draw is made with integer arithmetic only
// (no std:: distribution, no floating-point transcendental function), and
// the token picks use integer alias tables. Not part of the library.
#ifndef EPLB_BENCH_TRACE_GEN_H_
#define EPLB_BENCH_TRACE_GEN_H_

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "eplb/load.h"
#include "eplb/status.h"

namespace eplb::bench {

// xoshiro256** (Blackman and Vigna), its state filled by splitmix64 from one
// 64-bit seed. Every method is exact integer arithmetic, so a seed gives the
// same stream everywhere.
class Rng {
 public:
  explicit Rng(uint64_t seed);
  // Seeds from several words (family, seed, step, layer, ...) mixed together,
  // so that each (step, layer) has its own stream, independent of the
  // trace's length.
  static Rng ForKey(std::initializer_list<uint64_t> key);

  uint64_t Next();
  // Uniform in [0, n), n > 0: Lemire's multiply-and-reject, exact (no bias).
  uint64_t Below(uint64_t n);
  // Uniform in [lo, hi] (inclusive), lo <= hi.
  int64_t Between(int64_t lo, int64_t hi);
  // True with probability num / den exactly (0 <= num <= den, den > 0).
  bool Chance(uint64_t num, uint64_t den);

 private:
  uint64_t s_[4];
};

// Draws an index with probability proportional to integer weights: Vose's
// alias method done in integers (each column holds `total` units; a draw is
// one column and one threshold compare), so O(1) per draw and exact.
class AliasTable {
 public:
  // Weights >= 0, not all zero, their sum times the count below 2^63.
  void Reset(std::span<const uint64_t> weights);
  int Draw(Rng& rng) const;
  int size() const { return static_cast<int>(threshold_.size()); }

 private:
  std::vector<uint64_t> threshold_;  // Draws below it keep the column.
  std::vector<int32_t> alias_;
  uint64_t total_ = 0;
};

// Adds `tokens` tokens to `counts`, each token picking `top_k` distinct
// experts from `table` (sequential sampling without replacement, done by
// redrawing an expert the token already picked). Precondition: at least
// top_k experts have a non-zero weight.
void DrawTokens(const AliasTable& table, int64_t tokens, int top_k, Rng& rng,
                std::span<double> counts);

// One family of traces and its default shape.
struct FamilyInfo {
  std::string_view name;
  std::string_view summary;  // One line, for --list.
  int steps = 0;
  int layers = 0;
  int experts = 0;
  int top_k = 0;
  int tokens = 0;           // Mean tokens per step.
  bool fixed_shape = true;  // Layers / experts / top-k come from real data.
};

// domains, topics, skew, sparse, drift, burst, dsv3, dsv3-mix, puffin-fold,
// puffin-reversed.
const std::vector<FamilyInfo>& Families();
// NotFound lists the valid names.
StatusOr<FamilyInfo> FindFamily(std::string_view name);

struct TraceSpec {
  std::string family;
  uint64_t seed = 1;
  // 0 = the family's default. For the families drawn from real data
  // (fixed_shape) only `steps` (a prefix) and, for dsv3, `tokens` apply.
  int steps = 0;
  int layers = 0;
  int experts = 0;
  int top_k = 0;
  int tokens = 0;
  int fold = -1;         // puffin-fold: 0..3; -1 = seed mod 4.
  std::string data_dir;  // The repository's data/ (dsv3*, puffin-*).
};

// dsv3-mix: the three workloads (data/dsv3-sglang file names, without
// .json) that `seed` draws from the eight shipped, in the order the trace
// serves them; each differs from the one before it.
std::array<const char*, 3> Dsv3MixWorkloads(uint64_t seed);

// Generates the trace: [steps][layers][experts] whole token counts.
// InvalidArgument names a bad field by its eplb_gen_trace flag (--top-k 9:
// ...) and its value; NotFound an unknown family or a missing data file.
StatusOr<LoadTrace> GenerateTrace(const TraceSpec& spec);

// What a trace looks like, for calibration and the docs. A (step, layer)'s
// tokens are its assignments over top_k; its hottest share is its busiest
// expert's count over those tokens. Percentiles are nearest-rank over the
// (step, layer) pairs that routed a token.
struct TraceStats {
  double hottest_share_median = 0;
  double hottest_share_p90 = 0;
  double tokens_mean = 0;  // Per step (layer 0).
  int64_t tokens_min = 0;
  int64_t tokens_max = 0;
  // How well one 16-step window predicts the next: the mean over layers and
  // pairs of consecutive windows of the share of a window's 8 hottest
  // experts that are among the next window's 8 hottest.
  double hot_set_overlap = 0;
};
TraceStats MeasureTrace(const LoadTrace& trace, int top_k);

}  // namespace eplb::bench

#endif  // EPLB_BENCH_TRACE_GEN_H_
