// Controller: the dynamic EPLB cycle, counted in forward steps.
//
//   steps 0 .. H-1       collect heat (HeatRecorder)
//   end of step H-1      snapshot the window; hand it to the planner thread
//   steps H .. H+A-1     serve normally while the policy runs
//   end of step H+A-1    take the plan if it is ready; if it is late, keep
//                        serving on the current map and take it at the end
//                        of the first step it is ready
//   next steps           migrate the changed layers, largest predicted gain
//                        first: a step's batch starts before its forward and
//                        commits (weights verified, then each layer's routing
//                        table switches atomically) after it. One layer per
//                        step, or with eplb_link_gbytes_per_s several, while
//                        the busiest receiving rank's bytes fit in the link's
//                        bandwidth x the step time and its staging buffers
//   then                 (recording mode) write the map
//
// The next collection starts at the end of step H-1
// (eplb_heat_during_migration, the default): heat is counted while the plan
// runs and migrates, and a committed layer's heat so far moves to its new
// slots (HeatRecorder::RemapLayer), so a cycle takes H steps. A collection
// ends only once the last plan has finished migrating (a window past H steps
// then ends at once). Off: the heat is
// cleared when the migration ends and the next collection starts then.
//
// Ending a collection early, after at least 2 steps, when the heat so far
// says enough (see HeatShowsImbalance): fast warm-up (eplb_fast_warmup, on
// by default) until a plan has been committed, the imbalance of the cold
// initial placement being clearly beyond sampling noise; shift re-plans
// (eplb_shift_replan, on by default) afterwards, the serving placement
// meeting clearly more imbalance than its plan predicted (the traffic
// moved), in the whole window or in its newest 3 steps alone (a shift in the
// middle of a long collection; the planner's window is then those steps).
// The plan is then due A steps later as usual. With the heat collected
// during migration, a plan that comes due when the steps collected since
// its window show such a shift is dropped (it fits traffic that has gone)
// and those steps are handed over at once, marked shifted.
//
// A shift can end (a burst of a few steps). The placement that served
// before the first plan made on a shift is kept until a regular plan is
// taken. A plan made on a shift is dropped when due if the serving
// placement would carry the newest 2 steps better than it, and waits (up to
// 2 steps) while neither is clearly better or the newest step alone favours
// the serving placement; once such a plan serves, the layers migrate back
// to the kept placement, with no plan, when it would carry the newest 3
// steps better (CompareCarried). After either, shift re-plans rest for 4
// heat intervals: bursty traffic's next burst would be chased as well.
//
// Threads: the serving thread calls BeforeForward / AfterForward and the
// recorder; it never waits on the planner (a lock-free handshake: an atomic
// state and a semaphore) and, unless sync_migration is set, never waits on a
// transfer. The planner runs on its own thread, started by Start();
// Shutdown() is idempotent and joins it. A plan that throws, fails or breaks
// the placement invariants (CheckPlan) is logged and counted, and the current
// map keeps serving.
//
// Several processes (one per rank, as in an engine): each passes its own
// weights and the job's Collective. Heat is summed over the ranks before it
// is judged or planned from; every rank plans from the same sums, so the
// plans agree, and a plan is taken only when every rank has it and its hash
// is the same on every rank (a mismatch skips the cycle, logged and
// counted); layers commit on every rank at the same step. The calls to
// BeforeForward / AfterForward are then collective: every rank makes them
// for every step, with the same num_tokens (the whole batch's count).
#ifndef EPLB_CONTROLLER_H_
#define EPLB_CONTROLLER_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <iterator>
#include <limits>
#include <memory>
#include <string>
#include <string_view>

#include "eplb/clock.h"
#include "eplb/collective.h"
#include "eplb/config.h"
#include "eplb/migration.h"
#include "eplb/model.h"
#include "eplb/placement.h"
#include "eplb/policy.h"
#include "eplb/recorder.h"
#include "eplb/status.h"
#include "eplb/topology.h"
#include "eplb/transport.h"
#include "eplb/weights.h"

namespace eplb {

struct ControllerOptions {
  EplbConfig config;  // Validated (ParseEplbConfig); mode and intervals.
  Topology topology;
  int num_layers = 0;
  int num_experts = 0;
  Placement initial;  // The map serving at step 0.
  std::unique_ptr<Policy>
      policy;  // Null: CreatePolicy(config.eplb_policy_type).
  // Its dispatch and migration_budget are taken from the config.
  PolicyOptions policy_options;
  // The engine's expert weights (not owned): the slots of `initial` on the
  // ranks this process hosts, and their staging buffers (receives a
  // migrating batch may land on one rank; two whole layers' worth,
  // 2 x slots_per_rank, let a step commit a fully re-planned layer and
  // more).
  ExpertWeights* weights = nullptr;
  Transport* transport = nullptr;    // Not owned.
  Collective* collective = nullptr;  // Not owned; LocalCollective() if null.
  Clock* clock = nullptr;            // Not owned; SystemClock() when null.
  int64_t real_expert_bytes = 1;     // Bytes of one expert (model, quant).
  int64_t transfer_timeout_nanos = 10'000'000'000;
  int max_num_reqs = 256;  // Prefill / decode split of the stage filter.
  // Per-step logical loads kept for FlashLB across cycles (at least H): a
  // sliding window of the last `sample_history` collected steps. Each window
  // is converted to logical experts under the placement it was collected
  // with, so history survives migrations.
  int sample_history = 128;
  bool sync_migration = false;  // Stop the world: migrate every layer at once.
  // Simulation only, never for serving: the serving thread waits for the
  // plan at the step it is due and for each layer's transfers at the end of
  // its step, so that a replay's figures do not depend on the machine's
  // speed (no cycle is late; commits land on the step they start).
  bool lockstep = false;
  // Called on the serving thread when a layer commits: the step from which
  // it serves, and the committed placement.
  std::function<void(int64_t step, int layer, const Placement& placement)>
      on_commit;
  // Where problems are logged (one line each); stderr when null.
  std::function<void(std::string_view line)> log;
};

// Upper bounds (seconds) of the plan-time histogram's buckets; a last,
// unbounded bucket follows.
inline constexpr double kPlanTimeBoundsSeconds[] = {
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0};
inline constexpr int kPlanTimeBuckets =
    static_cast<int>(std::size(kPlanTimeBoundsSeconds)) + 1;

// Trivially copyable (the controller publishes it with a seqlock).
struct ControllerStats {
  int64_t steps = 0;
  int64_t cycles = 0;           // Cycles whose plan was taken.
  int64_t rebalances = 0;       // Cycles that committed at least one layer.
  int64_t cycles_late = 0;      // Plan not ready after A steps.
  int64_t plan_late_steps = 0;  // Steps served waiting for late plans.
  int64_t plans_failed = 0;     // Policy threw or returned an error.
  int64_t plans_rejected = 0;   // Plan broke an invariant.
  // Plans dropped when due because the traffic shifted while they were
  // made; the steps since were planned at once (eplb_shift_replan).
  int64_t plans_superseded = 0;
  // Shifts that ended (a burst), with eplb_shift_replan: a plan made on a
  // shift dropped when due because the serving placement carries the steps
  // since better, or the placement before it migrated back to when it
  // carries the newest steps better (during such a plan's migration, which
  // then stops, or once it serves).
  int64_t shifts_reverted = 0;
  int64_t layers_committed = 0;
  // Layers whose migration was aborted, or refused when it was to start:
  // each kept the placement it had.
  int64_t layers_aborted = 0;
  int64_t experts_moved = 0;
  int64_t bytes_moved = 0;   // Real expert sizes.
  int64_t maps_written = 0;  // Recording mode.
  // Recording with eplb_record_heat_path: workloads in the heat file after
  // this run added its own (0 until shutdown, or when it could not).
  int64_t heat_workloads = 0;
  int64_t max_stall_nanos =
      0;  // Longest the serving thread waited on migration.
  int64_t total_stall_nanos = 0;
  int64_t max_plan_nanos = 0;   // Planner thread, per plan.
  int64_t last_plan_nanos = 0;  // The latest plan taken.
  // Steps served before the first plan was fully committed; -1 until then.
  int64_t warmup_steps = -1;
  // Over the plans taken: layers the policy kept, re-planned incrementally
  // or re-planned fully, and the predicted gain of the changed layers (sum
  // of current_score - predicted_score).
  int64_t layers_kept = 0;
  int64_t layers_incremental = 0;
  int64_t layers_full = 0;
  double predicted_gain = 0.0;
  // Layers that migrated back to the placement before a shift that ended
  // (no plan: counted in none of the above).
  int64_t layers_reverted = 0;
  int64_t max_layers_per_step = 0;  // Largest batch committed in one step.
  // Plans whose hash differed between ranks (the cycle was skipped).
  int64_t plan_hash_mismatches = 0;
  // Every plan's time on the planner thread: how many fell in each bucket
  // (not cumulative; bucket i holds times <= kPlanTimeBoundsSeconds[i] and
  // above the bound before), and their sum.
  int64_t plan_time_buckets[kPlanTimeBuckets] = {};
  int64_t plans_timed = 0;
  int64_t plan_nanos_sum = 0;
};

class Controller {
 public:
  // Checks the options (shapes agree, config mode is dynamic or recording or
  // static). InvalidArgument names the problem.
  static StatusOr<std::unique_ptr<Controller>> Create(
      ControllerOptions options);
  ~Controller();  // Shutdown().
  Controller(const Controller&) = delete;
  Controller& operator=(const Controller&) = delete;

  void Start();  // Starts the planner thread (static mode: nothing).
  // Idempotent; waits for the planner's current plan. In recording mode,
  // writes the map once more when layers committed since the last write
  // (a run that ends mid-migration records what it served last). With
  // eplb_record_heat_path, rank 0 then appends the run's heat (the sum of
  // its collected windows) to the heat file as one workload, written
  // atomically, and records instead one robust map planned over every
  // workload of the file (PlanRobust); a heat file it cannot read or that
  // does not match the model is logged (key and file named) and left as it
  // was, and so is the map. Only rank 0 writes the map and the heat file
  // when a heat file is set.
  void Shutdown();

  // --- Serving thread. ---
  HeatRecorder& recorder() { return *recorder_; }
  void BeforeForward();
  // `step_seconds`: how long the step's forward took, for the migration's
  // per-step byte budget; 0: measured with the clock between calls.
  void AfterForward(int64_t num_tokens, double step_seconds = 0.0);

  // --- Any thread. ---
  const RoutingTable& routing() const { return *routing_; }
  // The figures as of the serving thread's last BeforeForward /
  // AfterForward (a seqlock snapshot: never blocks the serving thread,
  // never torn).
  ControllerStats stats() const;
  // Whether the planner thread is computing a plan right now (it was handed
  // a window and has not finished). For a gauge of planner activity, or a
  // test that waits for a slow plan without sleeping.
  bool planning() const;
  // Serving thread only: the committed placement.
  const Placement& placement() const { return migration_->placement(); }
  const ExpertWeights& weights() const { return migration_->weights(); }
  int64_t step() const { return step_; }

 private:
  struct Planner;
  Controller() = default;
  void Log(const std::string& line);
  // Where the heat collected so far shows, in most layers, the serving
  // placement's max/mean rank load above what was expected of it (1 for the
  // initial placement, else what the last plan predicted) by more than
  // twice the sampling noise of a balanced layer, sqrt(2 ln R / mean rank
  // load) (the largest of R Poisson counts exceeds their mean by about that
  // much): in the whole window, or (after the warm-up) in its newest steps
  // alone, each of them carrying at least half their mean heat.
  // After a plan made on a shift, also whether the traffic went back: the
  // placement kept from before it carries the newest steps better.
  enum class Seen { kNothing, kInWindow, kInNewestSteps, kWentBack };
  // `went_back_only`: the test for traffic going back alone.
  Seen HeatShowsImbalance(bool went_back_only = false);
  // The test on one sum of heat ([L][R*K], summed over the ranks).
  bool ShowsImbalance(std::span<const int64_t> heat);
  // The verdict on a plan made on a shift, when it is due: whether the
  // serving placement carries the newest steps better than the plan would
  // (ended), the plan better (goes on), or neither (unclear). The same on
  // every rank, which all make the same collective calls.
  enum class ShiftVerdict { kGoesOn, kEnded, kUnclear };
  ShiftVerdict JudgeShiftPlan();
  // The newest `steps` steps' heat ([L][R*K]) and counted steps, each
  // summed over the ranks, in heat_window_; with `with_last`, the newest
  // step's heat alone too. `ok` is false when the all-reduce failed. Every
  // rank calls it at the same point.
  struct Newest {
    std::span<int64_t> heat;
    std::span<int64_t> last;
    int64_t counted = 0;
    bool ok = false;
  };
  Newest SumNewest(int steps, bool with_last);
  // Whether placement `a` would carry `heat` ([L][R*K], collected under
  // the serving placement) better than placement `b`, and whether `b`
  // would carry it better than `a`: a lower max / mean rank load in 3 of 4
  // layers with heat, and by at least kWentBackGain on average, each
  // expert's tokens split evenly over its replicas in both. Both see the
  // same tokens, so most of their sampling noise cancels. Neither, when
  // the heat does not tell them apart.
  struct Carried {
    bool a_better = false;
    bool b_better = false;
  };
  Carried CompareCarried(std::span<const int64_t> heat, const Placement& a,
                         const Placement& b);
  // A shift ended (a plan made on it dropped, or the placement before it
  // migrated back to), seen on the newest `back_steps` steps: counted, shift
  // re-plans rest for a while, and the shift's steps are forgotten (the
  // next job tells the planner).
  void OnShiftEnded(int back_steps);
  // The traffic went back: the layers migrate back to went_back_from_.
  // `back_steps`: the newest steps that showed the traffic going back.
  void MigrateBack(int back_steps);
  // While a plan made on a shift migrates: went_back_from_ carries the
  // newest steps better than that plan (the shift ended). The same on every
  // rank.
  bool ShiftPlanOutlived();
  // Shift re-plans are on and not resting after a shift that ended.
  bool ShiftReplansOn() const {
    return options_.config.eplb_shift_replan && step_ >= quiet_until_;
  }
  // Whether a plan was ever fully committed (the warm-up is over).
  bool CommittedOnce() const { return stats_.warmup_steps >= 0; }
  // Hands the collected window to the planner; `shifted`: a shift cut it
  // short; `newest` > 0: the planner's window is only its newest steps.
  void EndCollect(bool shifted, int newest = 0);
  // Ends the collection early when HeatShowsImbalance sees enough (marked
  // shifted after the warm-up; the newest steps alone when only they show
  // it), or migrates back when the traffic went back. Whether it did.
  bool EndCollectIfClear(bool went_back_only = false);
  void TakePlan();
  // Starts migrating to plan_ from the serving placement; `layers` [L]:
  // what each layer is predicted to meet, and its gain (the order).
  // `reverting`: a migration back (MigrateBack), counted as such.
  void StartMigration(std::span<const LayerPlan> layers, bool reverting);
  // The layers the next migration step starts: the next in order, then more
  // while the batch fits the staging buffers and the step's byte budget.
  std::vector<int> NextBatch();
  void MigrateStep(bool before);
  void EndCycle();
  // Recording mode: writes the serving placement to the record path.
  void RecordMap();
  // Recording with a heat file: the shutdown's accumulation and robust map.
  void RecordRobustMap();

  ControllerOptions options_;
  std::unique_ptr<HeatRecorder> recorder_;
  std::unique_ptr<RoutingTable> routing_;
  std::unique_ptr<MigrationEngine> migration_;
  std::unique_ptr<Planner> planner_;
  // AfterForward's work (the stats are published after it).
  void Advance(int64_t num_tokens, double step_seconds);
  // Serving thread: stats_ with the migration engine's figures merged in,
  // published to published_ under stats_seq_ (odd while writing).
  void PublishStats();
  ControllerStats stats_;
  static constexpr size_t kStatsWords = sizeof(ControllerStats) / 8;
  std::atomic<uint64_t> stats_seq_{0};
  std::array<std::atomic<uint64_t>, kStatsWords> published_{};
  int64_t step_ = 0;        // Steps served.
  int64_t cycle_step_ = 0;  // Steps since the phase (plan, migrate) began.
  int64_t collected_ = 0;   // Steps in the window being collected.
  bool heat_during_migration_ = false;  // The config's key.
  // The placement the plan being migrated started from: a committing
  // layer's heat moves from it to the new one (HeatRecorder::RemapLayer).
  Placement from_;
  enum class Phase { kCollect, kPlan, kMigrate } phase_ = Phase::kCollect;
  Placement plan_;           // The plan being migrated.
  std::vector<int> layers_;  // Changed layers, in migration order.
  // [L][R]: the plan's receives per layer and rank (experts new to it).
  std::vector<int> receives_;
  size_t next_layer_ = 0;
  bool committed_this_cycle_ = false;
  // Recording mode: layers committed since the map was last written.
  bool record_pending_ = false;
  // Recording with a heat file: the run's logical heat, summed over its
  // collected windows ([L][E]), and their steps.
  LoadMatrix run_heat_;
  int64_t run_heat_steps_ = 0;
  bool shut_down_ = false;
  // [L]: the imbalance each layer's serving placement was expected to meet.
  std::vector<double> expected_;
  // HeatShowsImbalance's copies: the window ([L][R*K]), its counted steps,
  // the newest steps ([L][R*K]) and their per-step totals.
  std::vector<int64_t> heat_window_;
  std::vector<double> rank_heat_;  // [R]: its rank loads.
  // The placement served when the first plan made on a shift since the
  // last regular plan was taken; the test for traffic going back compares
  // against it while went_back_armed_.
  Placement went_back_from_;
  bool went_back_armed_ = false;
  // An empty range of served steps [kNoStep, -kNoStep]: widening it by any
  // range with std::min / std::max gives that range.
  static constexpr int64_t kNoStep = std::numeric_limits<int64_t>::max();
  // The first step of the shift cut since the last regular plan (-1: none),
  // and the steps of shifts that ended, for the planner to forget: served
  // steps [forget_from_, forget_to_] (none while forget_from_ >
  // forget_to_).
  int64_t shift_from_ = -1;
  int64_t forget_from_ = kNoStep;
  int64_t forget_to_ = -kNoStep;
  // No shift re-plan before this step (after a shift that ended).
  int64_t quiet_until_ = 0;
  // CompareCarried's scratch: [E] logical tokens, [E] replica counts of
  // each placement, [R] rank loads under `b` (rank_heat_ holds `a`'s).
  std::vector<double> went_back_tokens_;
  std::vector<int> replicas_a_;
  std::vector<int> replicas_b_;
  std::vector<double> rank_heat_b_;
  // [L]: what CompareCarried found of each layer (`b` as the current, `a`
  // as the plan): the migration back's predictions and order.
  std::vector<LayerPlan> went_back_layers_;
  std::vector<int32_t> keep_slots_scratch_;  // [3K]: KeepSlots' scratch.
  int64_t layers_not_started_ = 0;     // Migrations refused at their start.
  bool migrating_shift_plan_ = false;  // The migration is a shift plan's.
  double step_seconds_ = 0.0;          // The last step's duration.
  int64_t last_step_nanos_ = -1;       // Clock at the last AfterForward.
};

}  // namespace eplb

#endif  // EPLB_CONTROLLER_H_
