// Fuzzes balanced dispatch's quotas two ways at once: BalancedDispatcher
// (the host's) and the GPU solver's phases run on the host
// (src/cuda/quota_solve.h: the graph a placement gives, then the flow, the
// kernel's algorithm step for step).
//
// Input (binary): byte 0 picks the experts E (1-48), byte 1 the ranks R
// (1-12), byte 2 the slots per rank K (raised to fit E, at most E); then
// R*K bytes of placement (expert = byte % E, except 255 -> -1 and 254 -> E,
// out of range), then E little-endian 16-bit token counts (missing bytes
// read as 0).
//
// Properties: no crash; a placement the graph builder rejects gets a
// one-line error, and one it accepts is one the host dispatcher accepts
// too (the host checks it and aborts otherwise); both give the same quotas
// and the same largest rank load; no quota is negative, each expert's
// replicas' quotas sum to its count, and the largest load is the largest
// rank sum, at least ceil(total / R).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cuda/quota_solve.h"
#include "eplb/dispatch.h"
#include "fuzz_check.h"

namespace {

using eplb::fuzz::Check;

uint8_t At(const uint8_t* data, size_t size, size_t i) {
  return i < size ? data[i] : 0;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace internal = eplb::cuda::internal;
  const int e = 1 + At(data, size, 0) % 48;
  const int r = 1 + At(data, size, 1) % 12;
  int k = 1 + At(data, size, 2) % 8;
  k = std::min(std::max(k, (e + r - 1) / r), e);
  const int s = r * k;
  size_t at = 3;
  std::vector<int32_t> layer(s);
  for (int32_t& x : layer) {
    const uint8_t b = At(data, size, at++);
    x = b == 255 ? -1 : b == 254 ? e : b % e;
  }
  std::vector<int64_t> counts(e);
  for (int64_t& c : counts) {
    c = At(data, size, at) | (At(data, size, at + 1) << 8);
    at += 2;
  }

  const internal::QuotaGraph shape(e, r, s);
  std::vector<int32_t> graph(shape.size);
  const eplb::Status built =
      internal::BuildQuotaGraph(layer, shape, k, graph.data());
  if (!built.ok()) {
    eplb::fuzz::CheckOneLine(built.message());
    return 0;
  }
  eplb::BalancedDispatcher host(e, r, k);
  host.SetPlacement(layer);
  std::vector<int64_t> want(s);
  const int64_t want_max = host.ComputeQuotas(counts, want);

  const internal::HostQuotaScratch scratch(shape);
  std::vector<int64_t> got(s, -1);
  const int64_t got_max = internal::SolveQuotasOnHost(
      graph.data(), shape, scratch.view(), counts.data(), got.data());
  Check(got == want, "the GPU solver's quotas differ from the host's");
  Check(got_max == want_max,
        "the GPU solver's largest load differs from the host's");

  std::vector<int64_t> per_expert(e, 0), per_rank(r, 0);
  for (int p = 0; p < s; ++p) {
    Check(want[p] >= 0, "a negative quota");
    per_expert[layer[p]] += want[p];
    per_rank[p / k] += want[p];
  }
  Check(per_expert == counts, "an expert's quotas do not sum to its count");
  int64_t total = 0;
  for (int64_t c : counts) total += c;
  const int64_t max_rank = *std::max_element(per_rank.begin(), per_rank.end());
  Check(max_rank == want_max, "the largest load is not the largest rank sum");
  Check(want_max >= (total + r - 1) / r,
        "a largest load below the mean rank load");
  return 0;
}
