// "best": the project's own policy for static maps. Replica counts that
// minimise the largest share, a greedy LPT placement that never co-locates,
// then pairwise-swap local search until no swap lowers the peak; finally the
// ranks are relabelled to keep as many experts in place as possible (minimal
// redeploy). Keeps the current layer when the plan is not better.
#include <vector>

#include "policy/algorithms.h"
#include "policy/layer_policy.h"
#include "policy/policies.h"

namespace eplb::policy {
namespace {

class BestPolicy final : public LayerPolicy {
 public:
  std::string_view name() const override { return "best"; }

 protected:
  std::vector<int32_t> PlanLayer(const LayerContext& ctx) override {
    const int r = ctx.topology->num_ranks;
    const int k = ctx.topology->slots_per_rank;
    std::vector<int32_t> layer = PlanMinMax(ctx.load, r, k);
    MatchRanksToCurrent(ctx.current, layer, r, k);
    if (LayerImbalance(layer, ctx.load, r, k) >= ctx.current_imbalance)
      return {};
    return layer;
  }
};

}  // namespace

std::unique_ptr<Policy> NewBestPolicy() {
  return std::make_unique<BestPolicy>();
}

}  // namespace eplb::policy
