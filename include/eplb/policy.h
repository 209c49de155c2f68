// Balancing policies: from the current placement and a load to a
// new placement with redundant replicas of hot experts.
//
// A Policy is a pure function of its inputs (plus, for FlashLB, the state it
// keeps between calls): the same inputs give a bit-identical plan on every
// rank and every run. Ties go to the lower id; comparisons are exactly
// ordered. Every plan passes the placement invariants (CheckPlan) before it is
// returned: a layer a policy would break keeps its current placement, and the
// plan says so in `notes`.
//
// Policies are thread-compatible: one object must not be used from two
// threads at once; distinct objects may run concurrently.
#ifndef EPLB_POLICY_H_
#define EPLB_POLICY_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "eplb/dispatch.h"
#include "eplb/load.h"
#include "eplb/placement.h"
#include "eplb/status.h"
#include "eplb/topology.h"

namespace eplb {

struct PolicyInput {
  const Placement* current = nullptr;  // [L][R][K]: what serves now.
  const LoadMatrix* load = nullptr;    // [L][E]: the window's aggregate.
  const LoadTrace* samples = nullptr;  // [T][L][E]: per-step samples
                                       // (FlashLB); may be null.
  Topology topology;                   // Must match `current`.
  // The newest `window_steps` steps of `samples` are the window whose sum
  // is `load` (the dynamic cycle's heat interval); 0: not known, every
  // sample is alike.
  int window_steps = 0;
  // The window was cut short because the serving placement met clearly more
  // imbalance than planned (the controller's shift re-plan): the traffic
  // moved, and its newest steps are what comes next.
  bool window_shifted = false;
};

struct PolicyOptions {
  int num_groups = 1;             // Expert groups (hierarchical DefaultEplb).
  uint64_t seed = 0;              // Random policy.
  int max_receives_per_rank = 0;  // Per layer; 0 = K (no limit).
  // The dispatch the engine splits tokens with: Swift and FlashLB score
  // their candidates under it.
  DispatchMode dispatch = DispatchMode::kRoundRobin;
  // Swift and FlashLB re-plans: the most one plan may move, as a fraction of
  // all slots (L * R * K); layers get their moves in order of predicted gain
  // per moved expert. In (0, 1]. A first plan of a layer (nothing planned
  // before) is not limited.
  double migration_budget = 0.25;
  // Swift and FlashLB: a layer still in the default initial placement
  // (nothing planned for it yet) is planned for balance alone, as a static
  // map is; with quick_first_plan (the dynamic cycle sets it) its moves cost
  // score as a re-plan's do (still outside the budget), so that the first
  // plan commits sooner, more layers fitting a step's transfers.
  bool quick_first_plan = false;
  // Swift and FlashLB re-plans: a layer whose chosen placement scores more
  // than this above its best full candidate (a fresh plan matched to the
  // current ranks: DeepSeek's, Swift's min-max, FlashLB's search) takes that
  // candidate instead, while the migration budget left pays for the extra
  // moves, the layers furthest behind first. So a plan from any placement is
  // never clearly worse than a full re-plan. < 0: off. The dynamic cycle
  // turns it off: there each moved expert also costs serving time, and the
  // replay of every trace family served worse with it.
  double full_plan_tolerance = 0.01;
  // Swift and FlashLB re-plans on settled traffic: when the per-step samples,
  // measured with enough tokens to tell, show traffic that is not moving
  // now (docs/policies.md, "Settled traffic"), a moved expert costs this
  // fraction of its usual score, in the policy's searches and in its choice
  // of what to migrate. A move is paid once, and where the traffic keeps its
  // shape what it buys keeps paying; where the traffic shifts, a placement
  // fitted closely to it serves the next traffic worse, which the full cost
  // guards against. In (0, 1]; 1: off.
  double settled_move_discount = 0.25;
  // Swift and FlashLB on dense traffic: where the per-step samples hold
  // enough tokens that the newest window is a precise estimate of the
  // current traffic (docs/policies.md, "Dense traffic"), the newest
  // window counts this many times in the history they score on; the older
  // steps still hedge against traffic that returns. Where the traffic moved,
  // the newest window alone is scored; on sparse or per-prompt traffic, the
  // history as it is. In [1, 16]; 1: off.
  int recent_window_weight = 3;
  // Threads that plan layers in parallel (the calling thread is one of
  // them; every policy but "random", whose layers take microseconds, gains
  // from it). Layers are independent, so any count gives the same plan, bit
  // for bit.
  int num_threads = 1;
};

// Which of its candidates a policy chose for a layer.
enum class LayerChoice {
  kKept,         // The current placement keeps serving.
  kIncremental,  // A few moves from the current placement.
  kFull,         // A fresh plan, matched to the current placement.
};
std::string_view LayerChoiceName(LayerChoice choice);  // "kept", ...

// What a plan did to one layer.
struct LayerPlan {
  bool changed = false;
  double current_imbalance = 1.0;    // max/mean of `current` under the load.
  double predicted_imbalance = 1.0;  // max/mean of the plan under the load.
  double lower_bound = 1.0;          // No placement with these slots beats it.
  int moved_experts = 0;             // Slots whose expert is new to the rank.
  int intra_node_moves = 0;          // Moves with a source on the same node.
  int inter_node_moves = 0;          // Moves that cross nodes.
  LayerChoice choice = LayerChoice::kKept;
  // What the policy predicts the layer meets in service, current and
  // planned: with per-step samples the mean over steps of each step's
  // max/mean rank load under the dispatch in use, else the imbalance on the
  // load. predicted_score - current_score <= 0 is the predicted gain.
  double current_score = 1.0;
  double predicted_score = 1.0;
};

struct Plan {
  Placement placement;
  std::vector<LayerPlan> layers;  // [L]
  std::vector<std::string>
      notes;  // Fallbacks and rejected layers, one line each.
};

class Policy {
 public:
  virtual ~Policy() = default;
  virtual std::string_view name() const = 0;
  // Plans every layer. InvalidArgument for inputs that disagree in shape or
  // hold negative / non-finite loads. All-zero layers keep their placement.
  virtual StatusOr<Plan> Rebalance(const PolicyInput& input,
                                   const PolicyOptions& options) = 0;
};

// By number (0-3) or name: random, default, swift, flashlb, best.
StatusOr<std::unique_ptr<Policy>> CreatePolicy(std::string_view name_or_number);

}  // namespace eplb

#endif  // EPLB_POLICY_H_
