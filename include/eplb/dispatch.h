// Token dispatch over an expert's replicas: how many of a step's tokens for
// each logical expert go to each of its physical replicas.
//
// Two dispatches:
//  - round robin (`rr`, the default, what vLLM and vllm-ascend do): within a
//    step, the i-th token routed to expert e goes to replica i mod c of e,
//    replicas in ascending physical id, so replica j receives
//    n / c + (j < n % c) of the expert's n tokens (WholeTokenShare);
//  - balanced: every rank computes, from the same step's token counts summed
//    over ranks, how many tokens each replica receives so that the busiest
//    rank receives as few as possible (whole tokens, deterministic), then maps
//    each token's logical expert to a physical slot honouring those quotas.
//
// BalancedDispatcher is thread-compatible (one object per serving thread);
// it sizes its buffers at construction, and SetPlacement, ComputeQuotas and
// MapTokens never allocate, lock or block.
#ifndef EPLB_DISPATCH_H_
#define EPLB_DISPATCH_H_

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "eplb/status.h"

namespace eplb {

enum class DispatchMode { kRoundRobin, kBalanced };

// "rr" or "balanced".
std::string_view DispatchModeName(DispatchMode mode);
// Parses "rr" / "round-robin" / "balanced"; InvalidArgument names the value
// and the valid ones.
StatusOr<DispatchMode> ParseDispatchMode(std::string_view name);

// Round-robin quotas of one layer and step: slot_quota[p] (p in [0, R*K)) =
// the tokens the default dispatch sends to physical slot p. `layer` [R*K]
// physical -> logical; `counts` [E] tokens per logical expert (>= 0).
// O(R*K + E); allocates two [E] counters (BalancedDispatcher is the
// allocation-free path).
void RoundRobinQuotas(std::span<const int32_t> layer,
                      std::span<const int64_t> counts,
                      std::span<int64_t> slot_quota);

}  // namespace eplb

#endif  // EPLB_DISPATCH_H_
