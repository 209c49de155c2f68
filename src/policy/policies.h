// Constructors of the concrete policies (private; the public entry is
// CreatePolicy in eplb/policy.h).
#ifndef EPLB_SRC_POLICY_POLICIES_H_
#define EPLB_SRC_POLICY_POLICIES_H_

#include <memory>

#include "eplb/policy.h"

namespace eplb::policy {

std::unique_ptr<Policy> NewRandomPolicy();       // 0
std::unique_ptr<Policy> NewDefaultEplbPolicy();  // 1
std::unique_ptr<Policy> NewSwiftPolicy();        // 2
std::unique_ptr<Policy> NewFlashLbPolicy();      // 3
std::unique_ptr<Policy> NewBestPolicy();         // "best"

}  // namespace eplb::policy

#endif  // EPLB_SRC_POLICY_POLICIES_H_
