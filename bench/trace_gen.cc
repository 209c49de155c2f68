// The trace families of trace_gen.h. Each family builds, for every (step,
// layer), integer weights over the experts (its model of the router's
// preferences at that step), then draws the step's tokens from them, each
// token picking top-k distinct experts.
//
// Determinism: every random choice comes from an Rng keyed by (family, seed,
// purpose, step, layer, ...) and every weight is an integer computed with
// integer arithmetic, so the same spec gives the same counts on any machine,
// compiler or standard library, and a trace with fewer steps is a prefix of
// one with more (the per-layer state machines advance step by step), except
// for dsv3, whose workload switches sit at fractions of its length.
#include "bench/trace_gen.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <limits>
#include <span>
#include <string>
#include <tuple>
#include <utility>

#include "eplb/io.h"

namespace eplb::bench {
namespace {

__extension__ using Uint128 = unsigned __int128;

uint64_t SplitMix64(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

// FNV-1a: a family's name as a stream key (stable across builds, unlike
// std::hash).
uint64_t NameKey(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (char c : s) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ULL;
  }
  return h;
}

// Purposes of the random streams of one family.
enum Purpose : uint64_t {
  kTokensStream = 1,  // Tokens per step.
  kDrawStream,        // The token picks of a (step, layer).
  kPopularityStream,  // Permutations and shapes of popularity.
  kScheduleStream,    // Domain / workload switches.
  kSurgeStream,       // Per-layer surge / burst state machines.
  kNoiseStream,       // Per-step multiplicative noise.
};

// floor(sqrt(x)), exact: the correctly rounded double square root, then
// corrected by whole steps (so no platform's rounding can change it).
uint64_t IntSqrt(uint64_t x) {
  uint64_t r = static_cast<uint64_t>(std::sqrt(static_cast<double>(x)));
  while (r > 0 && r * r > x) --r;
  while ((r + 1) * (r + 1) <= x) ++r;
  return r;
}

// Zipf-like popularity by rank r = 0..n-1: w(r) proportional to
// 1 / (r + q)^s, with q = q_milli / 1000 and s = s_half / 2 in {0.5, 1, 1.5,
// 2}, in integers: x = (r + q) * 1000, x^s built from whole powers and one
// integer square root as an exact fraction, and w(r) = 2^36 * x(0)^s / x(r)^s
// (rank 0 gets 2^36, every rank at least 1).
std::vector<uint64_t> ZipfWeights(int n, uint64_t q_milli, int s_half) {
  struct Fraction {
    Uint128 num, den;
  };
  auto power = [&](int r) {
    const uint64_t x = static_cast<uint64_t>(r) * 1000 + q_milli;
    Fraction p{1, 1};
    for (int i = 0; i < s_half / 2; ++i) p.num *= x;
    if (s_half % 2 == 1) {
      p.num *= IntSqrt(x << 32);  // sqrt(x) = sqrt(x * 2^32) / 2^16.
      p.den = 1ULL << 16;
    }
    return p;
  };
  const Fraction p0 = power(0);
  std::vector<uint64_t> w(n);
  for (int r = 0; r < n; ++r) {
    const Fraction p = power(r);
    const Uint128 v =
        (static_cast<Uint128>(1) << 36) * p0.num * p.den / (p0.den * p.num);
    w[r] = std::max<uint64_t>(1, static_cast<uint64_t>(v));
  }
  return w;
}

// A uniformly random permutation of 0..n-1 (Fisher-Yates).
std::vector<int> Permutation(int n, Rng& rng) {
  std::vector<int> p(n);
  for (int i = 0; i < n; ++i) p[i] = i;
  for (int i = n - 1; i > 0; --i) {
    std::swap(p[i], p[rng.Below(static_cast<uint64_t>(i) + 1)]);
  }
  return p;
}

// Popularity by rank placed on experts: expert perm[r] gets rank r's weight.
std::vector<uint64_t> Scatter(const std::vector<uint64_t>& by_rank,
                              const std::vector<int>& perm) {
  std::vector<uint64_t> w(by_rank.size());
  for (size_t r = 0; r < by_rank.size(); ++r) w[perm[r]] = by_rank[r];
  return w;
}

// Tokens of a step: uniform in [lo, hi].
int64_t StepTokens(uint64_t family, uint64_t seed, int step, int64_t lo,
                   int64_t hi) {
  Rng rng =
      Rng::ForKey({family, seed, kTokensStream, static_cast<uint64_t>(step)});
  return rng.Between(lo, hi);
}

// Everything a synthetic family needs to fill its trace.
struct Gen {
  uint64_t family;
  uint64_t seed;
  int steps, layers, experts, top_k, tokens;
  LoadTrace trace;
  AliasTable table;

  // Draws the step's tokens for one layer from `weights`.
  void Fill(int step, int layer, const std::vector<uint64_t>& weights,
            int64_t step_tokens) {
    table.Reset(weights);
    Rng rng =
        Rng::ForKey({family, seed, kDrawStream, static_cast<uint64_t>(step),
                     static_cast<uint64_t>(layer)});
    std::span<double> row(
        trace.mutable_data().data() +
            (static_cast<size_t>(step) * layers + layer) * experts,
        static_cast<size_t>(experts));
    DrawTokens(table, step_tokens, top_k, rng, row);
  }
  Rng Stream(Purpose purpose, uint64_t a = 0, uint64_t b = 0) const {
    return Rng::ForKey({family, seed, purpose, a, b});
  }
};

// Adds to expert `x` the weight that makes it take `share_milli` / 1000 of
// the draws of a top-1 pick: a mixture of the base distribution and x.
void AddSurge(std::vector<uint64_t>& w, int x, uint64_t share_milli) {
  uint64_t total = 0;
  for (uint64_t v : w) total += v;
  w[x] += total * share_milli / (1000 - share_milli);
}

// domains: decode traffic switching abruptly between three domains. Each
// domain has, per layer, its own random permutation of a Zipf popularity
// (s = 1, q = 0.95); the domain changes after 30 to 150 steps (uniform) to
// one of the other two. Per layer, surges: with probability 11/100 per step
// (when none runs) one of the domain's 8 hottest experts takes 20-55% of the
// layer's tokens for 1 to 3 steps: a few similar requests in the batch. The
// tokens per step are uniform in +-23% of the mean (100-160 at 130).
// Calibrated (q and the surge rate) so that the hottest expert's share of a
// (step, layer) is about 1/5 at the median and 2/5 at p90: 0.200 / 0.407 at
// seed 1, 0.200-0.201 / 0.406-0.417 at seeds 2-4.
void GenDomains(Gen& g) {
  constexpr int kDomains = 3, kHotSet = 8;
  // pop[d][l]: weights, hot[d][l]: its hottest experts.
  std::vector<std::vector<std::vector<uint64_t>>> pop(kDomains);
  std::vector<std::vector<std::vector<int>>> hot(kDomains);
  const std::vector<uint64_t> zipf = ZipfWeights(g.experts, 950, 2);
  for (int d = 0; d < kDomains; ++d) {
    for (int l = 0; l < g.layers; ++l) {
      Rng rng = g.Stream(kPopularityStream, d, l);
      const std::vector<int> perm = Permutation(g.experts, rng);
      pop[d].push_back(Scatter(zipf, perm));
      hot[d].emplace_back(perm.begin(),
                          perm.begin() + std::min(kHotSet, g.experts));
    }
  }
  // The domain of every step.
  std::vector<int> domain(g.steps);
  {
    Rng rng = g.Stream(kScheduleStream);
    int d = static_cast<int>(rng.Below(kDomains));
    for (int s = 0; s < g.steps;) {
      const int len = static_cast<int>(rng.Between(30, 150));
      for (int i = 0; i < len && s < g.steps; ++i) domain[s++] = d;
      d = (d + 1 + static_cast<int>(rng.Below(kDomains - 1))) % kDomains;
    }
  }
  const int64_t lo = g.tokens - g.tokens * 3 / 13;
  const int64_t hi = g.tokens + g.tokens * 3 / 13;
  std::vector<Rng> surge_rng;
  surge_rng.reserve(static_cast<size_t>(g.layers));
  for (int l = 0; l < g.layers; ++l) {
    surge_rng.push_back(g.Stream(kSurgeStream, l));
  }
  std::vector<int> surge_left(g.layers, 0), surge_expert(g.layers, 0);
  std::vector<uint64_t> surge_share(g.layers, 0);
  std::vector<uint64_t> w;
  for (int s = 0; s < g.steps; ++s) {
    const int64_t n = StepTokens(g.family, g.seed, s, lo, hi);
    const int d = domain[s];
    const bool switched = s > 0 && domain[s - 1] != d;
    for (int l = 0; l < g.layers; ++l) {
      Rng& rng = surge_rng[l];
      if (switched) surge_left[l] = 0;  // A surge ends with its domain.
      if (surge_left[l] == 0 && rng.Chance(11, 100)) {
        surge_expert[l] = hot[d][l][rng.Below(hot[d][l].size())];
        surge_share[l] = static_cast<uint64_t>(rng.Between(200, 550));
        surge_left[l] = static_cast<int>(rng.Between(1, 3));
      }
      w = pop[d][l];
      if (surge_left[l] > 0) {
        AddSurge(w, surge_expert[l], surge_share[l]);
        --surge_left[l];
      }
      g.Fill(s, l, w, n);
    }
  }
}

// topics: decode traffic switching abruptly between three topics, like
// `domains`, but without surges: within a topic each layer's popularity is
// stable (a random permutation of 1 / (rank + q)^s per topic and layer: s =
// 1 with q uniform in 0.3-1.5, or for a third of them s = 1.5 with q in
// 1.2-3.5, so the hottest expert takes 14-46% of a layer's tokens),
// and only a mild per-step jitter (each expert's weight x a factor in
// 0.625-1.375, the sum of 4 uniform draws) and the token draws vary. A
// topic lasts 60-200 steps (uniform). The hot experts persist within a
// topic, so a plan of the last window predicts the next one well, unlike
// `domains`, whose surges no plan can foresee.
void GenTopics(Gen& g) {
  constexpr int kTopics = 3;
  std::vector<std::vector<std::vector<uint64_t>>> pop(kTopics);
  for (int d = 0; d < kTopics; ++d) {
    for (int l = 0; l < g.layers; ++l) {
      Rng rng = g.Stream(kPopularityStream, d, l);
      // A third of the layers are steeper (s = 1.5).
      const bool steep = rng.Below(3) == 0;
      const uint64_t q_milli = static_cast<uint64_t>(
          steep ? rng.Between(1200, 3500) : rng.Between(300, 1500));
      const std::vector<uint64_t> zipf =
          ZipfWeights(g.experts, q_milli, steep ? 3 : 2);
      pop[d].push_back(Scatter(zipf, Permutation(g.experts, rng)));
    }
  }
  std::vector<int> topic(g.steps);
  {
    Rng rng = g.Stream(kScheduleStream);
    int d = static_cast<int>(rng.Below(kTopics));
    for (int s = 0; s < g.steps;) {
      const int len = static_cast<int>(rng.Between(60, 200));
      for (int i = 0; i < len && s < g.steps; ++i) topic[s++] = d;
      d = (d + 1 + static_cast<int>(rng.Below(kTopics - 1))) % kTopics;
    }
  }
  const int64_t lo = g.tokens - g.tokens * 3 / 13;
  const int64_t hi = g.tokens + g.tokens * 3 / 13;
  std::vector<uint64_t> w(g.experts);
  for (int s = 0; s < g.steps; ++s) {
    const int64_t n = StepTokens(g.family, g.seed, s, lo, hi);
    for (int l = 0; l < g.layers; ++l) {
      Rng noise = g.Stream(kNoiseStream, static_cast<uint64_t>(s),
                           static_cast<uint64_t>(l));
      const std::vector<uint64_t>& base = pop[topic[s]][l];
      for (int e = 0; e < g.experts; ++e) {
        int64_t factor = 1024;
        for (int i = 0; i < 4; ++i) factor += noise.Between(-96, 96);
        w[e] = (base[e] >> 10) * static_cast<uint64_t>(factor) + 1;
      }
      g.Fill(s, l, w, n);
    }
  }
}

// skew: heavy, stable skew. Per layer a random permutation; the experts
// after the hottest follow a Zipf popularity (s = 1, q = 2) and the hottest
// is 3 to 8 times the next (uniform per layer). Nothing changes over time:
// only the token draws vary. Tokens uniform in +-23% of the mean.
void GenSkew(Gen& g) {
  std::vector<std::vector<uint64_t>> pop;
  const std::vector<uint64_t> zipf = ZipfWeights(g.experts, 2000, 2);
  for (int l = 0; l < g.layers; ++l) {
    Rng rng = g.Stream(kPopularityStream, l);
    std::vector<uint64_t> by_rank = zipf;
    if (g.experts > 1) {
      by_rank[0] =
          by_rank[1] * static_cast<uint64_t>(rng.Between(3000, 8000)) / 1000;
    }
    pop.push_back(Scatter(by_rank, Permutation(g.experts, rng)));
  }
  const int64_t lo = g.tokens - g.tokens * 3 / 13;
  const int64_t hi = g.tokens + g.tokens * 3 / 13;
  for (int s = 0; s < g.steps; ++s) {
    const int64_t n = StepTokens(g.family, g.seed, s, lo, hi);
    for (int l = 0; l < g.layers; ++l) g.Fill(s, l, pop[l], n);
  }
}

// sparse: few tokens per step (uniform in [0.4, 1.6] x the mean: 30-120 at
// 75) with top-2 routing over a stable hot set (per layer a random
// permutation of a Zipf popularity, s = 1, q = 3): the step-to-step noise
// of so few draws dominates the differences a planner could exploit.
void GenSparse(Gen& g) {
  std::vector<std::vector<uint64_t>> pop;
  const std::vector<uint64_t> zipf = ZipfWeights(g.experts, 3000, 2);
  for (int l = 0; l < g.layers; ++l) {
    Rng rng = g.Stream(kPopularityStream, l);
    pop.push_back(Scatter(zipf, Permutation(g.experts, rng)));
  }
  const int64_t lo = std::max<int64_t>(1, g.tokens * 2 / 5);
  const int64_t hi = std::max<int64_t>(lo, g.tokens * 8 / 5);
  for (int s = 0; s < g.steps; ++s) {
    const int64_t n = StepTokens(g.family, g.seed, s, lo, hi);
    for (int l = 0; l < g.layers; ++l) g.Fill(s, l, pop[l], n);
  }
}

// drift: popularity that rotates slowly. Per layer the experts sit on a ring
// in a random order; four bumps of popularity (Cauchy-shaped, height 1x-4x,
// half-width 1.5-4 positions, over a floor of 1/40 of the tallest) move along
// the ring, each at its own speed, 1/64 to 1/16 of a position per step in
// either direction (9 to 37 positions over 600 steps): a bump moves by its
// half-width in 24 to 256 steps, so the hot set turns over in hundreds of
// steps. Positions are fixed point
// (1/64), so the weights are exact integers.
void GenDrift(Gen& g) {
  constexpr int kBumps = 4;
  constexpr int64_t kFix = 64;  // Fixed-point positions.
  struct Bump {
    int64_t start;  // Position at step 0, in 1/kFix.
    int64_t speed;  // 1/kFix positions per step (signed).
    uint64_t height;
    int64_t width;  // Half-width, in 1/kFix.
  };
  std::vector<std::vector<int>> ring(g.layers);  // ring[l][x]: expert at x.
  std::vector<std::vector<Bump>> bumps(g.layers);
  for (int l = 0; l < g.layers; ++l) {
    Rng rng = g.Stream(kPopularityStream, l);
    ring[l] = Permutation(g.experts, rng);
    for (int b = 0; b < kBumps; ++b) {
      Bump bump;
      bump.start = static_cast<int64_t>(
          rng.Below(static_cast<uint64_t>(g.experts) * kFix));
      bump.speed = rng.Between(1, 4) * (rng.Chance(1, 2) ? 1 : -1);
      bump.height = static_cast<uint64_t>(rng.Between(1 << 20, 4 << 20));
      bump.width = rng.Between(3 * kFix / 2, 4 * kFix);
      bumps[l].push_back(bump);
    }
  }
  const int64_t circ = static_cast<int64_t>(g.experts) * kFix;
  const uint64_t floor = (4ULL << 20) / 40;
  const int64_t lo = g.tokens - g.tokens * 3 / 13;
  const int64_t hi = g.tokens + g.tokens * 3 / 13;
  std::vector<uint64_t> w(g.experts);
  for (int s = 0; s < g.steps; ++s) {
    const int64_t n = StepTokens(g.family, g.seed, s, lo, hi);
    for (int l = 0; l < g.layers; ++l) {
      for (int x = 0; x < g.experts; ++x) {
        uint64_t v = floor;
        for (const Bump& b : bumps[l]) {
          // Circular distance from the bump's centre to position x.
          const int64_t centre = ((b.start + b.speed * s) % circ + circ) % circ;
          int64_t dist = std::abs(x * kFix - centre);
          dist = std::min(dist, circ - dist);
          const uint64_t w2 = static_cast<uint64_t>(b.width * b.width);
          v += b.height * w2 / (w2 + static_cast<uint64_t>(dist * dist));
        }
        w[ring[l][x]] = v;
      }
      g.Fill(s, l, w, n);
    }
  }
}

// burst: a stable base (per layer a random permutation of a Zipf
// popularity, s = 1, q = 3) with occasional bursts. A burst starts with
// probability 1/40 at a step with none running and lasts 2 to 6 steps;
// in every layer 1 to 3 experts drawn from all experts (a burst of, say,
// code or one language wakes experts that are otherwise cold) take 30-60%
// of the tokens between them, for the whole burst. Top-2.
void GenBurst(Gen& g) {
  std::vector<std::vector<uint64_t>> pop;
  const std::vector<uint64_t> zipf = ZipfWeights(g.experts, 3000, 2);
  for (int l = 0; l < g.layers; ++l) {
    Rng rng = g.Stream(kPopularityStream, l);
    pop.push_back(Scatter(zipf, Permutation(g.experts, rng)));
  }
  const int64_t lo = g.tokens - g.tokens * 3 / 13;
  const int64_t hi = g.tokens + g.tokens * 3 / 13;
  Rng rng = g.Stream(kSurgeStream);
  int left = 0;
  // burst_experts[l]: the bursting experts of layer l; share in 1/1000.
  std::vector<std::vector<int>> burst_experts(g.layers);
  uint64_t share = 0;
  std::vector<uint64_t> w;
  for (int s = 0; s < g.steps; ++s) {
    if (left == 0 && rng.Chance(1, 40)) {
      left = static_cast<int>(rng.Between(2, 6));
      share = static_cast<uint64_t>(rng.Between(300, 600));
      for (int l = 0; l < g.layers; ++l) {
        const int k = static_cast<int>(
            rng.Between(1, std::min(3, std::max(1, g.experts - 1))));
        burst_experts[l].clear();
        while (static_cast<int>(burst_experts[l].size()) < k) {
          const int e = static_cast<int>(rng.Below(g.experts));
          if (std::find(burst_experts[l].begin(), burst_experts[l].end(), e) ==
              burst_experts[l].end()) {
            burst_experts[l].push_back(e);
          }
        }
      }
    }
    const int64_t n = StepTokens(g.family, g.seed, s, lo, hi);
    for (int l = 0; l < g.layers; ++l) {
      w = pop[l];
      if (left > 0) {
        // The burst's share of the draws, split evenly over its experts.
        uint64_t total = 0;
        for (uint64_t v : w) total += v;
        const uint64_t extra = total * share / (1000 - share);
        for (int e : burst_experts[l]) w[e] += extra / burst_experts[l].size();
      }
      g.Fill(s, l, w, n);
    }
    if (left > 0) --left;
  }
}

// dsv3: DeepSeek-V3 scale (58 MoE layers x 256 experts, top-8). Each step's
// tokens (uniform in [2/3, 4/3] x the mean: 2048-4096 at 3072) are drawn
// from one of the shipped per-workload aggregates of DeepSeek-V3
// (data/dsv3-sglang), each expert's weight multiplied by a per-step factor
// in [0.72, 1.28] (1 + the sum of four uniform draws in +-0.07: sd about
// 0.08), the batch-to-batch variation of a workload. The workload switches
// twice: prefill_in1024, then decode_in1000out1000, then
// prefill_in2000out100, the switches at a third and two thirds of the
// steps, each moved by up to a twelfth of the steps (seeded). Every token
// picks 8 distinct experts one after another (sampling without
// replacement), so an expert's expected share is close to, but a little
// flatter than, its share of the aggregate's assignments. Group-limited
// routing (top-4 of 8 expert groups) is not modelled.
StatusOr<LoadTrace> GenDsv3(Gen& g, const std::string& data_dir,
                            std::span<const char* const> workloads) {
  std::vector<LoadMatrix> loads;
  for (const char* name : workloads) {
    const std::string path = data_dir + "/dsv3-sglang/" + name + ".json";
    EPLB_ASSIGN_OR_RETURN(LoadTrace t, ReadLoadFile(path));
    if (t.num_layers() != g.layers || t.num_experts() != g.experts) {
      return InvalidArgumentError(path + ": " + std::to_string(t.num_layers()) +
                                  " x " + std::to_string(t.num_experts()) +
                                  ", expected 58 x 256");
    }
    loads.push_back(t.Aggregate());
  }
  Rng sched = g.Stream(kScheduleStream);
  const int64_t jitter = g.steps / 12;
  const int64_t first = g.steps / 3 + sched.Between(-jitter, jitter);
  const int64_t second = 2 * g.steps / 3 + sched.Between(-jitter, jitter);
  const int64_t lo = g.tokens * 2 / 3, hi = g.tokens * 4 / 3;
  std::vector<uint64_t> w(g.experts);
  for (int s = 0; s < g.steps; ++s) {
    const int wl = s < first ? 0 : (s < second ? 1 : 2);
    const int64_t n = StepTokens(g.family, g.seed, s, lo, hi);
    for (int l = 0; l < g.layers; ++l) {
      Rng noise = g.Stream(kNoiseStream, static_cast<uint64_t>(s),
                           static_cast<uint64_t>(l));
      std::span<const double> agg = loads[wl].row(l);
      for (int e = 0; e < g.experts; ++e) {
        int64_t factor = 1024;
        for (int i = 0; i < 4; ++i) factor += noise.Between(-72, 72);
        // Whole-number aggregates (the shipped ones are); +1 keeps every
        // expert possible.
        const uint64_t base =
            static_cast<uint64_t>(std::llround(std::max(0.0, agg[e]))) + 1;
        w[e] = base * static_cast<uint64_t>(factor);
      }
      g.Fill(s, l, w, n);
    }
  }
  return std::move(g.trace);
}

// The workloads dsv3 serves, in order.
constexpr const char* kDsv3Order[] = {"prefill_in1024", "decode_in1000out1000",
                                      "prefill_in2000out100"};

// Every workload aggregate shipped in data/dsv3-sglang.
constexpr const char* kDsv3Workloads[] = {
    "decode_in1000out1000", "decode_in1800out100",  "prefill_in1000out1000",
    "prefill_in1024",       "prefill_in2000out100", "prefill_in2048",
    "prefill_in500out1500", "prefill_in512"};

}  // namespace

std::array<const char*, 3> Dsv3MixWorkloads(uint64_t seed) {
  constexpr uint64_t kCount = std::size(kDsv3Workloads);
  Rng pick = Rng::ForKey({NameKey("dsv3-mix"), seed, kPopularityStream, 0, 0});
  std::array<const char*, 3> chosen{};
  uint64_t last = kCount;
  for (const char*& c : chosen) {
    uint64_t i;
    do {
      i = pick.Below(kCount);
    } while (i == last);
    c = kDsv3Workloads[i];
    last = i;
  }
  return chosen;
}

namespace {

// puffin-fold / puffin-reversed: the shipped DeepSeek-V2-Lite trace, one
// prompt per step, re-ordered.
StatusOr<LoadTrace> GenPuffin(const TraceSpec& spec, bool reversed,
                              int max_steps) {
  const std::string path =
      spec.data_dir + "/dsv2lite-puffin/prefill_by_prompt.csv";
  EPLB_ASSIGN_OR_RETURN(LoadTrace t, ReadLoadFile(path));
  std::vector<int> order;
  if (reversed) {
    for (int s = t.num_steps() - 1; s >= 0; --s) order.push_back(s);
  } else {
    int fold = spec.fold;
    if (fold < 0) fold = static_cast<int>(spec.seed % 4);
    for (int s = fold; s < t.num_steps(); s += 4) order.push_back(s);
  }
  if (max_steps > 0 && static_cast<int>(order.size()) > max_steps) {
    order.resize(max_steps);
  }
  LoadTrace out(static_cast<int>(order.size()), t.num_layers(),
                t.num_experts());
  const size_t step_size =
      static_cast<size_t>(t.num_layers()) * t.num_experts();
  for (size_t i = 0; i < order.size(); ++i) {
    std::copy_n(
        t.data().begin() + static_cast<ptrdiff_t>(order[i] * step_size),
        step_size,
        out.mutable_data().begin() + static_cast<ptrdiff_t>(i * step_size));
  }
  return out;
}

double NearestRank(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i =
      static_cast<size_t>(std::ceil(p * static_cast<double>(v.size())));
  return v[std::clamp<size_t>(i, 1, v.size()) - 1];
}

}  // namespace

Rng::Rng(uint64_t seed) {
  uint64_t state = seed;
  for (uint64_t& s : s_) s = SplitMix64(&state);
}

Rng Rng::ForKey(std::initializer_list<uint64_t> key) {
  uint64_t h = 0x243f6a8885a308d3ULL;
  for (uint64_t k : key) {
    uint64_t state = h ^ k;
    h = SplitMix64(&state);
  }
  return Rng(h);
}

uint64_t Rng::Next() {
  const uint64_t result = Rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = Rotl(s_[3], 45);
  return result;
}

uint64_t Rng::Below(uint64_t n) {
  Uint128 m = static_cast<Uint128>(Next()) * n;
  uint64_t low = static_cast<uint64_t>(m);
  if (low < n) {
    const uint64_t threshold = (0 - n) % n;
    while (low < threshold) {
      m = static_cast<Uint128>(Next()) * n;
      low = static_cast<uint64_t>(m);
    }
  }
  return static_cast<uint64_t>(m >> 64);
}

int64_t Rng::Between(int64_t lo, int64_t hi) {
  return lo + static_cast<int64_t>(Below(static_cast<uint64_t>(hi - lo) + 1));
}

bool Rng::Chance(uint64_t num, uint64_t den) { return Below(den) < num; }

void AliasTable::Reset(std::span<const uint64_t> weights) {
  const size_t n = weights.size();
  threshold_.assign(n, 0);
  alias_.assign(n, 0);
  total_ = 0;
  for (uint64_t w : weights) total_ += w;
  // Column i holds `total_` units: scaled[i] = w[i] * n of them are its own
  // until the small ones are topped up from the large ones (Vose).
  std::vector<uint64_t> scaled(n);
  std::vector<int32_t> small, large;
  for (size_t i = 0; i < n; ++i) {
    scaled[i] = weights[i] * n;
    (scaled[i] < total_ ? small : large).push_back(static_cast<int32_t>(i));
  }
  while (!small.empty() && !large.empty()) {
    const int32_t s = small.back(), l = large.back();
    small.pop_back();
    threshold_[s] = scaled[s];
    alias_[s] = l;
    scaled[l] -= total_ - scaled[s];
    if (scaled[l] < total_) {
      large.pop_back();
      small.push_back(l);
    }
  }
  // What is left holds exactly `total_` units (integer arithmetic).
  for (int32_t i : small) threshold_[i] = total_, alias_[i] = i;
  for (int32_t i : large) threshold_[i] = total_, alias_[i] = i;
}

int AliasTable::Draw(Rng& rng) const {
  const auto i = static_cast<int32_t>(rng.Below(threshold_.size()));
  return rng.Below(total_) < threshold_[i] ? i : alias_[i];
}

void DrawTokens(const AliasTable& table, int64_t tokens, int top_k, Rng& rng,
                std::span<double> counts) {
  int picked[64];
  for (int64_t t = 0; t < tokens; ++t) {
    for (int j = 0; j < top_k; ++j) {
      int e;
      do {
        e = table.Draw(rng);
      } while (std::find(picked, picked + j, e) != picked + j);
      picked[j] = e;
      counts[e] += 1;
    }
  }
}

const std::vector<FamilyInfo>& Families() {
  static const std::vector<FamilyInfo> kFamilies = {
      {"domains",
       "top-1 decode, 3 domains switching every 30-150 steps, per-layer "
       "surges (hottest share ~1/5 median, ~2/5 p90)",
       600, 24, 128, 1, 130, false},
      {"topics",
       "top-1 decode, 3 topics switching every 60-200 steps, each with a "
       "stable per-layer popularity (hot experts persist within a topic)",
       600, 24, 128, 1, 130, false},
      {"skew", "top-1, heavy stable skew: the hottest expert 3-8x the next",
       600, 24, 128, 1, 512, false},
      {"sparse", "top-2, 30-120 tokens per step over a stable hot set", 600, 24,
       128, 2, 75, false},
      {"drift", "top-2, popularity bumps rotating slowly around the experts",
       600, 24, 128, 2, 256, false},
      {"burst",
       "top-2, stable base; bursts of 2-6 steps where 1-3 experts take "
       "30-60%",
       600, 24, 128, 2, 256, false},
      {"dsv3",
       "DeepSeek-V3 58x256 top-8, 2048-4096 tokens per step from the shipped "
       "workload aggregates, two workload switches",
       240, 58, 256, 8, 3072, true},
      {"dsv3-mix",
       "dsv3 with three workloads the seed draws from the eight shipped "
       "(each differs from the one before)",
       240, 58, 256, 8, 3072, true},
      {"puffin-fold",
       "the shipped DeepSeek-V2-Lite prompts i with i mod 4 = fold (--fold, "
       "else seed mod 4)",
       250, 26, 64, 6, 0, true},
      {"puffin-reversed", "the shipped DeepSeek-V2-Lite prompts, last first",
       1000, 26, 64, 6, 0, true},
  };
  return kFamilies;
}

StatusOr<FamilyInfo> FindFamily(std::string_view name) {
  std::string names;
  for (const FamilyInfo& f : Families()) {
    if (f.name == name) return f;
    names += (names.empty() ? "" : ", ") + std::string(f.name);
  }
  return NotFoundError("family '" + std::string(name) + "': must be one of " +
                       names);
}

StatusOr<LoadTrace> GenerateTrace(const TraceSpec& spec) {
  EPLB_ASSIGN_OR_RETURN(const FamilyInfo f, FindFamily(spec.family));
  // Messages name the generator's flags (eplb_gen_trace), which are the
  // spec's fields.
  auto bad = [](const char* flag, int64_t value, const std::string& why) {
    return InvalidArgumentError(std::string(flag) + " " +
                                std::to_string(value) + ": " + why);
  };
  for (auto [flag, value] : {std::pair{"--steps", spec.steps},
                             {"--layers", spec.layers},
                             {"--experts", spec.experts},
                             {"--top-k", spec.top_k},
                             {"--tokens", spec.tokens}}) {
    if (value < 0) return bad(flag, value, "must be >= 0 (0: the default)");
  }
  if (f.fixed_shape) {
    for (auto [flag, value, fixed] :
         {std::tuple{"--layers", spec.layers, f.layers},
          {"--experts", spec.experts, f.experts},
          {"--top-k", spec.top_k, f.top_k}}) {
      if (value != 0 && value != fixed) {
        return bad(flag, value,
                   "family " + std::string(f.name) +
                       " takes it from the data (" + std::to_string(fixed) +
                       ")");
      }
    }
    if (spec.tokens != 0 && f.tokens == 0) {
      return bad("--tokens", spec.tokens,
                 "family " + std::string(f.name) + " replays real prompts");
    }
  }
  if (spec.fold < -1 || spec.fold > 3) {
    return bad("--fold", spec.fold, "must be 0..3");
  }
  if (spec.family == "puffin-fold" || spec.family == "puffin-reversed") {
    return GenPuffin(spec, spec.family == "puffin-reversed", spec.steps);
  }
  Gen g{.family = NameKey(f.name),
        .seed = spec.seed,
        .steps = spec.steps ? spec.steps : f.steps,
        .layers = spec.layers ? spec.layers : f.layers,
        .experts = spec.experts ? spec.experts : f.experts,
        .top_k = spec.top_k ? spec.top_k : f.top_k,
        .tokens = spec.tokens ? spec.tokens : f.tokens,
        .trace = {},
        .table = {}};
  if (g.experts < 2 || g.experts > 4096) {
    return bad("--experts", g.experts, "must be 2..4096");
  }
  if (g.layers > 1024) return bad("--layers", g.layers, "must be <= 1024");
  if (g.steps > 100000) return bad("--steps", g.steps, "must be <= 100000");
  if (g.top_k > std::min(g.experts, 64)) {
    return bad("--top-k", g.top_k, "must be <= min(experts, 64)");
  }
  if (g.tokens > 1000000) return bad("--tokens", g.tokens, "must be <= 10^6");
  g.trace = LoadTrace(g.steps, g.layers, g.experts);
  if (f.name == "domains") {
    GenDomains(g);
  } else if (f.name == "topics") {
    GenTopics(g);
  } else if (f.name == "skew") {
    GenSkew(g);
  } else if (f.name == "sparse") {
    GenSparse(g);
  } else if (f.name == "drift") {
    GenDrift(g);
  } else if (f.name == "burst") {
    GenBurst(g);
  } else if (f.name == "dsv3") {
    return GenDsv3(g, spec.data_dir, kDsv3Order);
  } else if (f.name == "dsv3-mix") {
    return GenDsv3(g, spec.data_dir, Dsv3MixWorkloads(g.seed));
  }
  return std::move(g.trace);
}

TraceStats MeasureTrace(const LoadTrace& trace, int top_k) {
  TraceStats st;
  std::vector<double> shares;
  double tokens_sum = 0;
  st.tokens_min = std::numeric_limits<int64_t>::max();
  for (int s = 0; s < trace.num_steps(); ++s) {
    for (int l = 0; l < trace.num_layers(); ++l) {
      double total = 0, peak = 0;
      for (double c : trace.row(s, l)) {
        total += c;
        peak = std::max(peak, c);
      }
      const double tokens = total / top_k;
      if (l == 0) {
        tokens_sum += tokens;
        st.tokens_min = std::min<int64_t>(st.tokens_min, std::llround(tokens));
        st.tokens_max = std::max<int64_t>(st.tokens_max, std::llround(tokens));
      }
      if (total > 0) shares.push_back(peak / tokens);
    }
  }
  if (trace.num_steps() == 0) st.tokens_min = 0;
  st.hottest_share_median = NearestRank(shares, 0.5);
  st.hottest_share_p90 = NearestRank(shares, 0.9);
  st.tokens_mean = trace.num_steps() ? tokens_sum / trace.num_steps() : 0;
  // How much of the next window's hot set one window predicts.
  constexpr int kWindow = 16, kHot = 8;
  const int k = std::min(kHot, trace.num_experts());
  auto hot_sets = [&](int begin) {
    const LoadMatrix m = trace.Aggregate(begin, begin + kWindow);
    std::vector<std::vector<int>> sets(trace.num_layers());
    for (int l = 0; l < trace.num_layers(); ++l) {
      std::vector<int> ids(trace.num_experts());
      for (int e = 0; e < trace.num_experts(); ++e) ids[e] = e;
      std::span<const double> row = m.row(l);
      std::partial_sort(ids.begin(), ids.begin() + k, ids.end(),
                        [&](int a, int b) {
                          return row[a] != row[b] ? row[a] > row[b] : a < b;
                        });
      ids.resize(k);
      std::sort(ids.begin(), ids.end());
      sets[l] = std::move(ids);
    }
    return sets;
  };
  double overlap = 0;
  int pairs = 0;
  if (trace.num_steps() >= 2 * kWindow) {
    std::vector<std::vector<int>> prev = hot_sets(0);
    for (int b = kWindow; b + kWindow <= trace.num_steps(); b += kWindow) {
      std::vector<std::vector<int>> next = hot_sets(b);
      for (int l = 0; l < trace.num_layers(); ++l) {
        std::vector<int> both;
        std::set_intersection(prev[l].begin(), prev[l].end(), next[l].begin(),
                              next[l].end(), std::back_inserter(both));
        overlap += static_cast<double>(both.size()) / k;
        ++pairs;
      }
      prev = std::move(next);
    }
  }
  st.hot_set_overlap = pairs ? overlap / pairs : 0;
  return st;
}

}  // namespace eplb::bench
