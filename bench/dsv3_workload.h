// The DeepSeek-V3 workload the hot-path benchmarks share: the model's shape
// at EP32 with 32 redundant slots, the shipped prefill_in1024 loads, and
// router output drawn from them with fixed seeds. Benchmark-only.
//
// Real router ids: each token picks 8 distinct experts, one after another,
// with probability proportional to a real layer's expert loads (by default
// the most skewed layer of prefill_in1024, hottest expert about 8x the mean).
// Hot experts come early in a token, as in the router's score-sorted top-k.
#ifndef EPLB_BENCH_DSV3_WORKLOAD_H_
#define EPLB_BENCH_DSV3_WORKLOAD_H_

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <span>
#include <vector>

#include "eplb/io.h"
#include "eplb/load.h"

namespace eplb_bench {

constexpr int kLayers = 58;
constexpr int kExperts = 256;
constexpr int kRanks = 32;
constexpr int kSlotsPerRank = 9;  // 288 slots: 32 redundant.
constexpr int kTopK = 8;

// The shipped DeepSeek-V3 prefill_in1024 aggregate (one step, 58 layers);
// exits when it cannot be read.
inline const eplb::LoadTrace& Dsv3Prefill1024() {
  static const eplb::LoadTrace* const trace = [] {
    auto t = eplb::ReadLoadFile(EPLB_SOURCE_DIR
                                "/data/dsv3-sglang/prefill_in1024.json");
    if (!t.ok() || t->num_experts() != kExperts || t->num_layers() != kLayers) {
      std::fprintf(stderr, "bench: cannot read prefill_in1024: %s\n",
                   t.status().ToString().c_str());
      std::exit(1);
    }
    return new eplb::LoadTrace(*std::move(t));
  }();
  return *trace;
}

// The layer with the largest max / mean expert load.
inline int MostSkewedLayer() {
  const eplb::LoadTrace& trace = Dsv3Prefill1024();
  int best = 0;
  double best_skew = 0;
  for (int l = 0; l < trace.num_layers(); ++l) {
    std::span<const double> loads = trace.row(0, l);
    double sum = 0, max = 0;
    for (double v : loads) {
      sum += v;
      max = std::max(max, v);
    }
    if (sum > 0 && max * kExperts / sum > best_skew) {
      best_skew = max * kExperts / sum;
      best = l;
    }
  }
  return best;
}

// [tokens][kTopK] router output: per token, 8 distinct experts drawn one
// after another in proportion to `layer`'s loads (default: the most skewed).
template <typename Id>
std::vector<Id> RealTopkIds(int64_t tokens, uint64_t seed = 42,
                            int layer = -1) {
  const std::span<const double> loads =
      Dsv3Prefill1024().row(0, layer < 0 ? MostSkewedLayer() : layer);
  std::mt19937_64 rng(seed);
  std::vector<Id> ids;
  ids.reserve(static_cast<size_t>(tokens) * kTopK);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::vector<double> weights;
  for (int64_t t = 0; t < tokens; ++t) {
    weights.assign(loads.begin(), loads.end());
    double total = 0;
    for (double w : weights) total += w;
    for (int k = 0; k < kTopK; ++k) {
      double r = unit(rng) * total;
      int e = 0;
      while (e + 1 < kExperts && (r >= weights[e] || weights[e] == 0)) {
        r -= weights[e];
        ++e;
      }
      total -= weights[e];
      weights[e] = 0;
      ids.push_back(static_cast<Id>(e));
    }
  }
  return ids;
}

}  // namespace eplb_bench

#endif  // EPLB_BENCH_DSV3_WORKLOAD_H_
