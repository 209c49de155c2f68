// Constructors of the concrete policies (private; the public entry is
// CreatePolicy in eplb/policy.h).
#ifndef EPLB_SRC_POLICY_POLICIES_H_
#define EPLB_SRC_POLICY_POLICIES_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "eplb/policy.h"

namespace eplb::policy {

std::unique_ptr<Policy> NewRandomPolicy();       // 0
std::unique_ptr<Policy> NewDefaultEplbPolicy();  // 1
std::unique_ptr<Policy> NewSwiftPolicy();        // 2
std::unique_ptr<Policy> NewFlashLbPolicy();      // 3
std::unique_ptr<Policy> NewBestPolicy();         // "best"

struct LayerContext;
// SwiftBalancer's walk (swift_policy.cc): the layer reached from the current
// one by the cheapest improving steps (re-points and swaps, each lowering the
// most loaded rank's peak by >= 1% of the mean rank load), or the current
// layer when it is balanced within 1%. FlashLB offers it too at width.
std::vector<int32_t> SwiftWalk(const LayerContext& ctx);

}  // namespace eplb::policy

#endif  // EPLB_SRC_POLICY_POLICIES_H_
