// Policy 0, Random: per layer, swap two slots on two distinct
// ranks such that no rank ends up with a duplicate. Seeded and deterministic
// (splitmix64, not std:: distributions, whose output is
// implementation-defined). For tests.
#include <cstdint>
#include <vector>

#include "core/splitmix.h"
#include "policy/layer_policy.h"
#include "policy/policies.h"

namespace eplb::policy {
namespace {

bool RankHolds(std::span<const int32_t> layer, int rank, int k, int32_t e) {
  for (int s = 0; s < k; ++s) {
    if (layer[rank * k + s] == e) return true;
  }
  return false;
}

class RandomPolicy final : public LayerPolicy {
 public:
  std::string_view name() const override { return "random"; }

 protected:
  std::vector<int32_t> PlanLayer(const LayerContext& ctx) override {
    const int r = ctx.topology->num_ranks;
    const int k = ctx.topology->slots_per_rank;
    if (r < 2) return {};
    uint64_t state =
        ctx.options->seed ^ (0x632be59bd9b4e019ULL * (ctx.layer + 1));
    std::vector<int32_t> layer(ctx.current.begin(), ctx.current.end());
    // A few tries; a layer where no valid swap is found stays as it is.
    for (int attempt = 0; attempt < 64; ++attempt) {
      const int a = static_cast<int>(internal::SplitMix64(&state) %
                                     static_cast<uint64_t>(r * k));
      const int b = static_cast<int>(internal::SplitMix64(&state) %
                                     static_cast<uint64_t>(r * k));
      const int ra = a / k, rb = b / k;
      if (ra == rb || layer[a] == layer[b]) continue;
      if (RankHolds(layer, rb, k, layer[a]) ||
          RankHolds(layer, ra, k, layer[b]))
        continue;
      std::swap(layer[a], layer[b]);
      return layer;
    }
    return {};
  }
};

}  // namespace

std::unique_ptr<Policy> NewRandomPolicy() {
  return std::make_unique<RandomPolicy>();
}

}  // namespace eplb::policy
