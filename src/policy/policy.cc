// CreatePolicy: the factory by number and name.
#include "eplb/policy.h"

#include <cctype>
#include <string>

#include "policy/policies.h"

namespace eplb {

std::string_view LayerChoiceName(LayerChoice choice) {
  switch (choice) {
    case LayerChoice::kKept:
      return "kept";
    case LayerChoice::kIncremental:
      return "incremental";
    case LayerChoice::kFull:
      return "full";
  }
  return "unknown";
}

StatusOr<std::unique_ptr<Policy>> CreatePolicy(
    std::string_view name_or_number) {
  std::string key(name_or_number);
  for (char& c : key)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (key == "0" || key == "random") return policy::NewRandomPolicy();
  if (key == "1" || key == "default" || key == "defaulteplb") {
    return policy::NewDefaultEplbPolicy();
  }
  if (key == "2" || key == "swift" || key == "swiftbalancer") {
    return policy::NewSwiftPolicy();
  }
  if (key == "3" || key == "flashlb") return policy::NewFlashLbPolicy();
  if (key == "best") return policy::NewBestPolicy();
  return InvalidArgumentError(
      "unknown policy '" + std::string(name_or_number) +
      "' (valid: 0 random, 1 default, 2 swift, 3 flashlb, best)");
}

}  // namespace eplb
