#include "eplb/controller.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <semaphore>
#include <thread>
#include <type_traits>

#include "eplb/io.h"
#include "eplb/robust.h"

namespace eplb {
namespace {

// Ending a collection early (fast warm-up, shift re-plan): the fewest
// collected steps a plan is made from (the policies score per-step
// samples), and how far beyond sampling noise the heat must be (see
// HeatShowsImbalance).
constexpr int64_t kMinWarmupSteps = 2;
constexpr double kWarmupNoiseFactor = 2.0;
// After the warm-up the shift test also judges the newest few steps alone,
// so a shift in the middle of a long collection is not diluted by the steps
// before it. When only they show it, the planner's window is those steps
// (the older ones join its history). Each of them must carry at least half
// their mean heat: one large prompt among small steps is not a shift.
constexpr int kShiftNewestSteps = 3;
// After a plan made on a shift: the traffic went back when the placement
// served before it would carry the newest steps at least this much better
// (max / mean rank load, averaged over the layers with heat).
constexpr double kWentBackGain = 0.02;
// A plan made on a shift is judged on the newest 2 steps when due, and
// waits at most 2 steps when they favour neither it nor what serves.
constexpr int kShiftJudgeSteps = 2;
constexpr int64_t kShiftHoldSteps = 2;
// After a shift that ended, shift re-plans rest for this many heat
// intervals: bursty traffic, whose next burst would be chased as well.
constexpr int64_t kQuietIntervals = 4;

}  // namespace

// The planner thread and its lock-free handshake with the serving thread:
// the serving thread writes `job` only while state is kIdle and reads
// `result` only while it is kDone; the planner does the opposite. The
// sample history belongs to the planner thread: the serving thread only
// hands over the window it just collected, so the history's copies stay off
// the serving thread.
struct Controller::Planner {
  enum State : int { kIdle, kRunning, kDone };
  struct Job {
    int64_t id = 0;
    Placement current;
    LoadMatrix load;
    LoadTrace window;      // Logical per-step loads of the collected window.
    bool shifted = false;  // It was cut short by a shift.
    // > 0: the window is only the newest `newest` steps of `window` (the
    // older steps join the history).
    int newest = 0;
    // The served step of the window's newest sample, and served steps
    // [forget_from, forget_to] (none when forget_from > forget_to): a shift
    // that ended, left out of the history and of a regular window.
    int64_t last_step = 0;
    int64_t forget_from = kNoStep;
    int64_t forget_to = -kNoStep;
  };

  Policy* policy = nullptr;
  PolicyOptions options;
  Topology topology;
  Clock* clock = nullptr;
  std::atomic<int> state{kIdle};
  std::atomic<bool> stop{false};
  std::binary_semaphore wake{0};
  Job job;
  StatusOr<Plan> result = InternalError("no plan");
  int64_t result_id = 0;
  int64_t plan_nanos = 0;
  std::thread thread;
  // Planner thread only: the newest `keep` collected steps, [steps][L][E],
  // and the served step of each.
  int keep = 0;
  std::vector<double> history;
  std::vector<int64_t> history_step;
  int history_steps = 0;
  std::vector<int64_t> window_step;  // TakeWindow's: the job's steps.
  LoadTrace samples;
  int window_steps = 0;  // Steps of the newest window in `samples`.

  // Forgets the steps of a shift that ended, appends the job's window to
  // the history (keeping the newest `keep` steps) and copies it into
  // `samples`.
  void TakeWindow() {
    const size_t cells =
        static_cast<size_t>(job.load.num_layers()) * job.load.num_experts();
    window_step.clear();
    for (int j = 0; j < job.window.num_steps(); ++j) {
      window_step.push_back(job.last_step - (job.window.num_steps() - 1 - j));
    }
    if (job.forget_from <= job.forget_to) Forget(cells);
    const int steps = job.window.num_steps();
    window_steps = job.newest > 0 ? std::min(job.newest, steps) : steps;
    history.insert(history.end(), job.window.data().begin(),
                   job.window.data().end());
    history_step.insert(history_step.end(), window_step.begin(),
                        window_step.end());
    history_steps += steps;
    job.window = LoadTrace();
    if (history_steps > keep) {
      const int drop = history_steps - keep;
      history.erase(history.begin(),
                    history.begin() + static_cast<ptrdiff_t>(drop * cells));
      history_step.erase(history_step.begin(), history_step.begin() + drop);
      history_steps = keep;
    }
    samples =
        LoadTrace(history_steps, job.load.num_layers(), job.load.num_experts());
    std::copy(history.begin(), history.end(), samples.mutable_data().begin());
  }

  // A burst that ended would otherwise stay in the samples the policy
  // scores on for `keep` steps, and in the next regular window: its experts
  // would keep replicas the traffic no longer needs. Its steps leave the
  // history, and a regular window (not one cut by a shift) that still holds
  // some of them plans on the rest. Steps are identified by the served step
  // of each sample: exact when every step is counted (the default heat
  // stage); with a stage filter, an approximation every rank makes alike.
  void Forget(size_t cells) {
    auto gone = [&](int64_t step) {
      return step >= job.forget_from && step <= job.forget_to;
    };
    int kept = 0;
    for (int j = 0; j < history_steps; ++j) {
      if (gone(history_step[j])) continue;
      std::copy_n(history.begin() + static_cast<ptrdiff_t>(j * cells), cells,
                  history.begin() + static_cast<ptrdiff_t>(kept * cells));
      history_step[kept] = history_step[j];
      ++kept;
    }
    history.resize(static_cast<size_t>(kept) * cells);
    history_step.resize(kept);
    history_steps = kept;
    const int steps = job.window.num_steps();
    if (job.newest > 0) return;
    std::vector<int> stay;
    for (int j = 0; j < steps; ++j) {
      if (!gone(window_step[j])) stay.push_back(j);
    }
    if (stay.empty() || static_cast<int>(stay.size()) == steps) return;
    LoadTrace window(static_cast<int>(stay.size()), job.window.num_layers(),
                     job.window.num_experts());
    for (size_t j = 0; j < stay.size(); ++j) {
      std::copy_n(
          job.window.data().begin() + static_cast<ptrdiff_t>(stay[j] * cells),
          cells,
          window.mutable_data().begin() + static_cast<ptrdiff_t>(j * cells));
      window_step[j] = window_step[stay[j]];
    }
    window_step.resize(stay.size());
    job.window = std::move(window);
    job.load = job.window.Aggregate();
  }

  void Run() {
    for (;;) {
      wake.acquire();
      if (stop.load(std::memory_order_acquire)) return;
      const int64_t start = clock->NowNanos();
      TakeWindow();
      try {
        result = policy->Rebalance({&job.current, &job.load, &samples, topology,
                                    window_steps, job.shifted},
                                   options);
      } catch (const std::exception& e) {
        result = InternalError(std::string("policy threw: ") + e.what());
      } catch (...) {
        result = InternalError("policy threw a non-standard exception");
      }
      plan_nanos = clock->NowNanos() - start;
      result_id = job.id;
      state.store(kDone, std::memory_order_release);
    }
  }
};

StatusOr<std::unique_ptr<Controller>> Controller::Create(ControllerOptions o) {
  const Topology& t = o.topology;
  if (o.transport == nullptr)
    return InvalidArgumentError("controller needs a transport");
  if (o.weights == nullptr)
    return InvalidArgumentError("controller needs the expert weights");
  if (o.collective == nullptr) o.collective = LocalCollective();
  if (o.initial.num_layers() != o.num_layers ||
      o.initial.num_experts() != o.num_experts ||
      o.initial.num_ranks() != t.num_ranks ||
      o.initial.slots_per_rank() != t.slots_per_rank) {
    return InvalidArgumentError(
        "controller: the initial map does not match the model "
        "and topology");
  }
  EPLB_RETURN_IF_ERROR(
      ViolationsToStatus(CheckPlacement(o.initial)).WithPrefix("initial map"));
  if (o.clock == nullptr) o.clock = SystemClock();
  if (o.policy == nullptr) {
    EPLB_ASSIGN_OR_RETURN(
        o.policy, CreatePolicy(std::to_string(o.config.eplb_policy_type)));
  }
  auto c = std::unique_ptr<Controller>(new Controller());
  EPLB_ASSIGN_OR_RETURN(
      c->recorder_,
      HeatRecorder::Create(HeatRecorderOptions{
          .num_layers = o.num_layers,
          .num_experts = o.num_experts,
          .num_slots = t.num_slots(),
          .ring_steps = std::max(1, o.config.expert_heat_collection_interval),
          .stage = o.config.eplb_heat_collection_stage,
          .max_num_reqs = o.max_num_reqs}));
  c->routing_ = std::make_unique<RoutingTable>(o.initial, t);
  EPLB_ASSIGN_OR_RETURN(
      c->migration_,
      MigrationEngine::Create(
          MigrationOptions{.topology = t,
                           .num_layers = o.num_layers,
                           .num_experts = o.num_experts,
                           .real_expert_bytes = o.real_expert_bytes,
                           .weights = o.weights,
                           .transport = o.transport,
                           .collective = o.collective,
                           .clock = o.clock,
                           .timeout_nanos = o.transfer_timeout_nanos},
          o.initial));
  c->planner_ = std::make_unique<Planner>();
  c->planner_->policy = o.policy.get();
  c->planner_->options = o.policy_options;
  c->planner_->options.dispatch = o.config.eplb_dispatch;
  c->planner_->options.migration_budget = o.config.eplb_migration_budget;
  c->planner_->options.quick_first_plan = true;
  // Moves cost serving time in the cycle: gain per move decides alone.
  c->planner_->options.full_plan_tolerance = -1.0;
  c->planner_->options.num_threads = o.config.eplb_planner_threads;
  c->planner_->topology = t;
  c->planner_->clock = o.clock;
  c->planner_->keep =
      std::max(o.sample_history, o.config.expert_heat_collection_interval);
  c->expected_.assign(o.num_layers, 1.0);
  c->heat_during_migration_ = o.config.eplb_heat_during_migration;
  c->from_ = o.initial;
  // The window's sum and its counted steps, the newest steps' sum and their
  // per-step totals.
  c->heat_window_.assign(2 * static_cast<size_t>(o.num_layers) * t.num_slots() +
                             1 + kShiftNewestSteps,
                         0);
  c->rank_heat_.assign(t.num_ranks, 0.0);
  c->went_back_from_ = o.initial;
  c->went_back_tokens_.assign(o.num_experts, 0.0);
  c->replicas_a_.assign(o.num_experts, 0);
  c->replicas_b_.assign(o.num_experts, 0);
  c->rank_heat_b_.assign(t.num_ranks, 0.0);
  c->went_back_layers_.assign(o.num_layers, LayerPlan{});
  c->keep_slots_scratch_.assign(3 * static_cast<size_t>(t.slots_per_rank), 0);
  if (o.config.mode() == EplbMode::kRecording &&
      o.config.eplb_record_heat_path.has_value()) {
    c->run_heat_ = LoadMatrix(o.num_layers, o.num_experts);
  }
  c->options_ = std::move(o);
  c->PublishStats();
  return c;
}

Controller::~Controller() { Shutdown(); }

void Controller::Start() {
  const EplbMode mode = options_.config.mode();
  if (mode != EplbMode::kDynamic && mode != EplbMode::kRecording) return;
  if (planner_->thread.joinable()) return;
  planner_->thread = std::thread([p = planner_.get()] { p->Run(); });
}

void Controller::Shutdown() {
  if (planner_ != nullptr && planner_->thread.joinable()) {
    planner_->stop.store(true, std::memory_order_release);
    planner_->wake.release();
    planner_->thread.join();
  }
  if (record_pending_) {
    RecordMap();
    PublishStats();
  }
  if (!shut_down_ && run_heat_.num_layers() > 0) {
    RecordRobustMap();
    PublishStats();
  }
  shut_down_ = true;
}

void Controller::Log(const std::string& line) {
  if (options_.log) {
    options_.log(line);
  } else {
    std::fprintf(stderr, "eplb: %s\n", line.c_str());
  }
}

static_assert(std::is_trivially_copyable_v<ControllerStats>);
static_assert(sizeof(ControllerStats) % 8 == 0);

void Controller::PublishStats() {
  ControllerStats s = stats_;
  const MigrationStats& m = migration_->stats();
  s.layers_committed = m.layers_committed;
  s.layers_aborted = m.layers_aborted + layers_not_started_;
  s.experts_moved = m.experts_moved;
  s.bytes_moved = m.bytes_moved;
  const auto words = std::bit_cast<std::array<uint64_t, kStatsWords>>(s);
  const uint64_t seq = stats_seq_.load(std::memory_order_relaxed);
  stats_seq_.store(seq + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  for (size_t i = 0; i < kStatsWords; ++i) {
    published_[i].store(words[i], std::memory_order_relaxed);
  }
  stats_seq_.store(seq + 2, std::memory_order_release);
}

ControllerStats Controller::stats() const {
  std::array<uint64_t, kStatsWords> words;
  for (;;) {
    const uint64_t before = stats_seq_.load(std::memory_order_acquire);
    if (before % 2 != 0) continue;
    for (size_t i = 0; i < kStatsWords; ++i) {
      words[i] = published_[i].load(std::memory_order_relaxed);
    }
    std::atomic_thread_fence(std::memory_order_acquire);
    if (stats_seq_.load(std::memory_order_relaxed) == before) break;
  }
  return std::bit_cast<ControllerStats>(words);
}

bool Controller::planning() const {
  return planner_ != nullptr &&
         planner_->state.load(std::memory_order_acquire) == Planner::kRunning;
}

void Controller::BeforeForward() {
  if (phase_ == Phase::kMigrate) MigrateStep(/*before=*/true);
  PublishStats();
}

void Controller::AfterForward(int64_t num_tokens, double step_seconds) {
  Advance(num_tokens, step_seconds);
  PublishStats();
}

void Controller::Advance(int64_t num_tokens, double step_seconds) {
  recorder_->EndStep(num_tokens);
  ++step_;
  stats_.steps = step_;
  const int64_t now = options_.clock->NowNanos();
  if (step_seconds > 0.0) {
    step_seconds_ = step_seconds;
  } else if (last_step_nanos_ >= 0) {
    step_seconds_ = static_cast<double>(now - last_step_nanos_) * 1e-9;
  }
  last_step_nanos_ = now;
  if (!planner_->thread.joinable()) return;  // Static or disabled: serve only.
  const int64_t h = options_.config.expert_heat_collection_interval;
  const int64_t a = options_.config.algorithm_execution_interval;
  ++cycle_step_;
  ++collected_;
  switch (phase_) {
    case Phase::kCollect:
      if (collected_ >= h) {
        EndCollect(/*shifted=*/false);
      } else if (collected_ >= kMinWarmupSteps) {
        if (CommittedOnce() ? ShiftReplansOn()
                            : options_.config.eplb_fast_warmup) {
          // The planner sees a short window; the plan is due A steps later
          // as usual.
          EndCollectIfClear();
        } else if (went_back_armed_) {
          // Resting after a shift that ended, with the placement before it
          // still kept (a second plan made on the shift was dropped): only
          // the test for traffic going back.
          EndCollectIfClear(/*went_back_only=*/true);
        }
      }
      break;
    case Phase::kPlan:
      // Due A steps after the collection ended; a late plan is taken at the
      // first step it is ready.
      if (cycle_step_ >= a) TakePlan();
      break;
    case Phase::kMigrate:
      MigrateStep(/*before=*/false);
      break;
  }
}

Controller::Seen Controller::HeatShowsImbalance(bool went_back_only) {
  // Buffers sized at Create: nothing allocates on the serving thread.
  const size_t cells =
      static_cast<size_t>(options_.num_layers) * options_.topology.num_slots();
  const std::span<int64_t> buffer(heat_window_);
  const std::span<int64_t> window = buffer.first(cells);
  int64_t& counted = buffer[cells];
  const std::span<int64_t> newest = buffer.subspan(cells + 1, cells);
  const std::span<int64_t> totals =
      buffer.subspan(2 * cells + 1, kShiftNewestSteps);
  // Every rank makes the same all-reduce whatever its own ring holds: the
  // calls follow the step count every rank shares, never this rank's
  // stage-filtered count. A stage filter can count a step on one rank and
  // not on another (each rank classifies its own batch), so the counted
  // steps are summed with the heat and judged after it.
  counted = recorder_->CopyWindow(window);
  // The newest steps alone, once the window holds more than them. A rank
  // whose ring holds fewer steps adds zeros, and a step with no heat fails
  // the condition on the totals below.
  const bool judge_newest = CommittedOnce() && collected_ > kShiftNewestSteps;
  if (judge_newest) recorder_->CopyNewest(kShiftNewestSteps, newest, totals);
  // Every rank judges the same sums.
  if (!options_.collective
           ->AllReduceSum(judge_newest ? buffer : buffer.first(cells + 1))
           .ok()) {
    return Seen::kNothing;
  }
  // At least kMinWarmupSteps counted steps per rank on average.
  if (counted < kMinWarmupSteps * options_.collective->size()) {
    return Seen::kNothing;
  }
  // The newest steps count when each holds at least half its share.
  bool newest_count = judge_newest;
  if (judge_newest) {
    int64_t sum = 0;
    for (int64_t total : totals) sum += total;
    for (int64_t total : totals) {
      if (2 * kShiftNewestSteps * total < sum) newest_count = false;
    }
  }
  // Traffic gone back to what the placement before a shift served is met
  // by that placement at once; a window that mixes it with the shift would
  // also show imbalance, but a plan made on it would come later and fit
  // less.
  if (newest_count && went_back_armed_ &&
      CompareCarried(newest, went_back_from_, migration_->placement())
          .a_better) {
    return Seen::kWentBack;
  }
  if (went_back_only) return Seen::kNothing;
  if (ShowsImbalance(window)) return Seen::kInWindow;
  if (newest_count && ShowsImbalance(newest)) return Seen::kInNewestSteps;
  return Seen::kNothing;
}

Controller::Newest Controller::SumNewest(int steps, bool with_last) {
  const size_t cells =
      static_cast<size_t>(options_.num_layers) * options_.topology.num_slots();
  const std::span<int64_t> buffer =
      std::span(heat_window_).first((with_last ? 2 : 1) * cells + 1);
  Newest n;
  n.heat = buffer.first(cells);
  int64_t& counted = buffer[cells];
  counted = recorder_->CopyNewest(steps, n.heat);
  if (with_last) {
    n.last = buffer.subspan(cells + 1, cells);
    recorder_->CopyNewest(1, n.last);
  }
  n.ok = options_.collective->AllReduceSum(buffer).ok();
  n.counted = counted;
  return n;
}

Controller::ShiftVerdict Controller::JudgeShiftPlan() {
  const Newest newest = SumNewest(kShiftJudgeSteps, /*with_last=*/true);
  if (!newest.ok) return ShiftVerdict::kGoesOn;
  // The plan is ready (kDone): the serving thread may read it. Ranks whose
  // plans differ are skipped later by the hash check; the votes keep their
  // calls alike until then.
  const StatusOr<Plan>& ready = planner_->result;
  int64_t votes[2] = {0, 0};  // Ended; unclear.
  if (ready.ok() &&
      newest.counted >= kMinWarmupSteps * options_.collective->size()) {
    const Placement& serving = migration_->placement();
    // The newest step alone must not favour what serves either: a burst's
    // last step can outweigh the steps after it.
    const Carried steps =
        CompareCarried(newest.heat, serving, ready->placement);
    if (steps.a_better) {
      votes[0] = 1;
    } else if (!steps.b_better ||
               CompareCarried(newest.last, serving, ready->placement)
                   .a_better) {
      votes[1] = 1;
    }
  }
  if (!options_.collective->AllReduceSum(votes).ok()) {
    return ShiftVerdict::kGoesOn;
  }
  if (votes[0] == options_.collective->size()) return ShiftVerdict::kEnded;
  if (votes[0] + votes[1] > 0) return ShiftVerdict::kUnclear;
  return ShiftVerdict::kGoesOn;
}

Controller::Carried Controller::CompareCarried(std::span<const int64_t> heat,
                                               const Placement& a,
                                               const Placement& b) {
  const Topology& t = options_.topology;
  const int k = t.slots_per_rank;
  const int slots = t.num_slots();
  const Placement& now = migration_->placement();
  int loaded = 0;
  int a_lower = 0;
  int b_lower = 0;
  double gain = 0.0;  // Of `a` over `b`.
  for (int l = 0; l < options_.num_layers; ++l) {
    const std::span<const int32_t> serving = now.layer(l);
    const std::span<const int32_t> pa = a.layer(l);
    const std::span<const int32_t> pb = b.layer(l);
    went_back_layers_[l] = LayerPlan{.choice = LayerChoice::kIncremental,
                                     .current_score = 0.0,
                                     .predicted_score = 0.0};
    std::fill(went_back_tokens_.begin(), went_back_tokens_.end(), 0.0);
    std::fill(replicas_a_.begin(), replicas_a_.end(), 0);
    std::fill(replicas_b_.begin(), replicas_b_.end(), 0);
    const int64_t* counts = heat.data() + static_cast<size_t>(l) * slots;
    double total = 0.0;
    for (int p = 0; p < slots; ++p) {
      went_back_tokens_[serving[p]] += static_cast<double>(counts[p]);
      total += static_cast<double>(counts[p]);
      ++replicas_a_[pa[p]];
      ++replicas_b_[pb[p]];
    }
    if (total <= 0.0) continue;
    ++loaded;
    std::fill(rank_heat_.begin(), rank_heat_.end(), 0.0);
    std::fill(rank_heat_b_.begin(), rank_heat_b_.end(), 0.0);
    for (int p = 0; p < slots; ++p) {
      rank_heat_[p / k] += went_back_tokens_[pa[p]] / replicas_a_[pa[p]];
      rank_heat_b_[p / k] += went_back_tokens_[pb[p]] / replicas_b_[pb[p]];
    }
    const double mean = total / t.num_ranks;
    const double peak_a =
        *std::max_element(rank_heat_.begin(), rank_heat_.end());
    const double peak_b =
        *std::max_element(rank_heat_b_.begin(), rank_heat_b_.end());
    LayerPlan& info = went_back_layers_[l];
    info.changed = !std::equal(pa.begin(), pa.end(), pb.begin());
    info.predicted_imbalance = peak_a / mean;
    info.current_imbalance = peak_b / mean;
    if (peak_a < peak_b) ++a_lower;
    if (peak_b < peak_a) ++b_lower;
    gain += (peak_b - peak_a) / mean;
  }
  return Carried{.a_better = loaded > 0 && 4 * a_lower >= 3 * loaded &&
                             gain >= kWentBackGain * loaded,
                 .b_better = loaded > 0 && 4 * b_lower >= 3 * loaded &&
                             -gain >= kWentBackGain * loaded};
}

void Controller::OnShiftEnded(int back_steps) {
  ++stats_.shifts_reverted;
  // Its steps, up to the ones that showed the traffic going back, are
  // forgotten (Planner::Forget), with those of any earlier shift that
  // ended since the last job.
  if (shift_from_ >= 0) {
    forget_from_ = std::min(forget_from_, shift_from_);
    forget_to_ = std::max(forget_to_, step_ - back_steps);
    shift_from_ = -1;
  }
  quiet_until_ =
      step_ + kQuietIntervals * options_.config.expert_heat_collection_interval;
}

bool Controller::EndCollectIfClear(bool went_back_only) {
  switch (HeatShowsImbalance(went_back_only)) {
    case Seen::kNothing:
      return false;
    case Seen::kInWindow:
      EndCollect(/*shifted=*/CommittedOnce());
      return true;
    case Seen::kInNewestSteps:
      EndCollect(/*shifted=*/true, kShiftNewestSteps);
      return true;
    case Seen::kWentBack:
      // What the shift's plans left behind fits traffic that has gone, and
      // the placement before them fits what came back: it migrates back at
      // once, with no plan to wait for. The collection runs on.
      MigrateBack(kShiftNewestSteps);
      return true;
  }
  return false;
}

bool Controller::ShiftPlanOutlived() {
  const Newest newest = SumNewest(kShiftJudgeSteps, /*with_last=*/false);
  return newest.ok &&
         newest.counted >= kShiftJudgeSteps * options_.collective->size() &&
         CompareCarried(newest.heat, went_back_from_, plan_).a_better;
}

void Controller::MigrateBack(int back_steps) {
  OnShiftEnded(back_steps);
  went_back_armed_ = false;
  migrating_shift_plan_ = false;
  // Each rank gets back the experts it held, but an expert it holds now
  // stays in the slot it is in: a migration moves experts between ranks,
  // never within one, and a second plan made on the shift may have put an
  // expert back on its rank in another slot.
  const Placement& serving = migration_->placement();
  const Topology& t = options_.topology;
  plan_ = went_back_from_;
  for (int l = 0; l < options_.num_layers; ++l) {
    KeepSlots(serving.layer(l), plan_.mutable_layer(l), t.num_ranks,
              t.slots_per_rank, keep_slots_scratch_);
    LayerPlan& info = went_back_layers_[l];
    info.changed = !std::equal(serving.layer(l).begin(), serving.layer(l).end(),
                               plan_.layer(l).begin());
    // A layer already back (one a stopped plan had not reached) meets what
    // the kept placement does, not what the plan compared against would.
    if (!info.changed) info.current_imbalance = info.predicted_imbalance;
  }
  StartMigration(went_back_layers_, /*reverting=*/true);
}

bool Controller::ShowsImbalance(std::span<const int64_t> heat) {
  const Topology& t = options_.topology;
  const int k = t.slots_per_rank;
  const int slots = t.num_slots();
  std::vector<double>& ranks = rank_heat_;
  int loaded = 0;
  int clear = 0;
  for (int l = 0; l < options_.num_layers; ++l) {
    std::fill(ranks.begin(), ranks.end(), 0.0);
    const int64_t* counts = heat.data() + static_cast<size_t>(l) * slots;
    double total = 0.0;
    for (int p = 0; p < slots; ++p) {
      ranks[p / k] += static_cast<double>(counts[p]);
      total += static_cast<double>(counts[p]);
    }
    if (total <= 0.0) continue;
    ++loaded;
    const double mean = total / t.num_ranks;
    const double peak = *std::max_element(ranks.begin(), ranks.end());
    // A layer balanced in expectation still peaks by about
    // sqrt(2 ln R / mean) over its mean from sampling noise alone (the
    // largest of R Poisson counts); twice that is not noise.
    const double noise =
        std::sqrt(2.0 * std::log(std::max(2, t.num_ranks)) / mean);
    if (peak / mean - expected_[l] > kWarmupNoiseFactor * noise) ++clear;
  }
  // Most layers must show it: one noisy layer is no reason to plan early.
  // A shift must show in three layers of four: bursty traffic (a few
  // prompts unlike the rest) lifts half the layers beyond Poisson noise now
  // and then, a new topic nearly all of them.
  if (CommittedOnce()) return loaded > 0 && 4 * clear >= 3 * loaded;
  return loaded > 0 && 2 * clear > loaded;
}

void Controller::EndCollect(bool shifted, int newest) {
  // A cycle collects only after its previous plan was taken, so the
  // planner is idle and the window joins its history with this job.
  EPLB_CHECK(planner_->state.load(std::memory_order_acquire) == Planner::kIdle);
  HeatSnapshot snap = recorder_->Snapshot();
  if (snap.num_samples > 0 && snap.steps_counted > snap.num_samples) {
    // The window outgrew the ring while the last plan migrated (heat during
    // migration): plan on its newest H steps, the ring's, not on older
    // traffic that may have moved since.
    std::fill(snap.window.begin(), snap.window.end(), 0);
    const size_t cells = snap.window.size();
    for (int j = 0; j < snap.num_samples; ++j) {
      const int64_t* sample = snap.samples.data() + j * cells;
      for (size_t i = 0; i < cells; ++i) snap.window[i] += sample[i];
    }
  }
  // The job's heat: every rank's tokens (the sums are the same everywhere,
  // so every rank plans the same placement). A failed sum plans from
  // nothing, and the plan's hash check then skips the cycle.
  if (!options_.collective->AllReduceSum(snap.window).ok() ||
      !options_.collective->AllReduceSum(snap.samples).ok()) {
    std::fill(snap.window.begin(), snap.window.end(), 0);
    Log("summing the heat over the ranks failed");
  }
  const Placement& serving = migration_->placement();
  Planner::Job& job = planner_->job;
  job.id = step_;
  job.current = serving;
  job.load = snap.LogicalLoad(serving);
  job.window = snap.LogicalSamples(serving);
  if (run_heat_.num_layers() > 0) {
    // Robust recording: the run's heat (once per cycle, not per step).
    for (int l = 0; l < run_heat_.num_layers(); ++l) {
      std::span<double> sum = run_heat_.mutable_row(l);
      std::span<const double> add = job.load.row(l);
      for (size_t e = 0; e < sum.size(); ++e) sum[e] += add[e];
    }
    run_heat_steps_ += snap.steps_counted;
  }
  job.newest = 0;
  const int steps = job.window.num_steps();
  if (newest > 0 && newest < steps) {
    // The planner's window: the newest steps' sum.
    job.newest = newest;
    job.load = job.window.Aggregate(steps - newest, steps);
  }
  job.shifted = shifted;
  job.last_step = step_;
  job.forget_from = forget_from_;
  job.forget_to = forget_to_;
  forget_from_ = kNoStep;
  forget_to_ = -kNoStep;
  // A shift's traffic starts at the newest steps that showed it.
  if (shifted && shift_from_ < 0) {
    shift_from_ = step_ - (newest > 0 ? newest : kShiftNewestSteps) + 1;
  }
  planner_->state.store(Planner::kRunning, std::memory_order_release);
  planner_->wake.release();
  phase_ = Phase::kPlan;
  cycle_step_ = 0;
  if (heat_during_migration_) {
    recorder_->Clear();
    collected_ = 0;
  }
}

void Controller::TakePlan() {
  if (options_.lockstep) {
    while (planner_->state.load(std::memory_order_acquire) != Planner::kDone) {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
  // Ready on every rank: the plan is taken at the same step everywhere.
  int64_t late[1] = {
      planner_->state.load(std::memory_order_acquire) != Planner::kDone ? 1
                                                                        : 0};
  if (!options_.collective->AllReduceMax(late).ok()) late[0] = 1;
  if (late[0] != 0) {
    // Late: the current map keeps serving, and the plan is taken at the
    // first step it is ready (it still fits what serves: nothing migrates
    // without a plan).
    const int64_t due = options_.config.algorithm_execution_interval;
    if (cycle_step_ == due) {
      ++stats_.cycles_late;
      Log("the plan was not ready after algorithm_execution_interval = " +
          std::to_string(options_.config.algorithm_execution_interval) +
          " steps: serving on the current map until it is");
    }
    ++stats_.plan_late_steps;
    return;
  }
  // A plan made on a shift is judged on the newest steps before it is
  // taken: the shift may have ended (a burst) while it was made. When the
  // steps favour neither the plan nor the serving placement, it waits up to
  // kShiftHoldSteps steps for clearer ones.
  ShiftVerdict verdict = ShiftVerdict::kGoesOn;
  if (planner_->job.shifted && options_.config.eplb_shift_replan &&
      heat_during_migration_ && collected_ >= kMinWarmupSteps) {
    verdict = JudgeShiftPlan();
    if (verdict == ShiftVerdict::kUnclear &&
        cycle_step_ <
            options_.config.algorithm_execution_interval + kShiftHoldSteps) {
      return;
    }
  }
  StatusOr<Plan> plan = std::move(planner_->result);
  planner_->result = InternalError("no plan");
  stats_.max_plan_nanos = std::max(stats_.max_plan_nanos, planner_->plan_nanos);
  {
    const double seconds = static_cast<double>(planner_->plan_nanos) * 1e-9;
    int bucket = 0;
    while (bucket < kPlanTimeBuckets - 1 &&
           seconds > kPlanTimeBoundsSeconds[bucket]) {
      ++bucket;
    }
    ++stats_.plan_time_buckets[bucket];
    ++stats_.plans_timed;
    stats_.last_plan_nanos = planner_->plan_nanos;
    stats_.plan_nanos_sum += planner_->plan_nanos;
  }
  planner_->state.store(Planner::kIdle, std::memory_order_release);
  ++stats_.cycles;
  // The same plan on every rank, or none: the hash of its placement (of
  // the error when it failed).
  const uint64_t hash =
      plan.ok()
          ? ChecksumBytes(std::as_bytes(std::span(plan->placement.data())))
          : 1;
  if (!AllAgree(*options_.collective, hash)) {
    ++stats_.plan_hash_mismatches;
    Log("the plan differs between ranks: cycle skipped, the current map "
        "keeps serving");
    EndCycle();
    return;
  }
  // A regular plan ends the watch for traffic going back, and a shift
  // still open becomes the traffic it plans for.
  if (!planner_->job.shifted) {
    went_back_armed_ = false;
    shift_from_ = -1;
  }
  // A shift while the plan was made: its window ended before the traffic
  // moved, so it fits traffic that has gone. The steps collected since the
  // window was handed over (heat during migration) are judged as a
  // collection's are; when they show a shift, the plan is dropped and they
  // are handed over at once, marked shifted, instead of migrating first and
  // seeing the shift only after. A plan made on a shift is never dropped
  // this way (the traffic it met has moved away from what serves), nor is
  // the warm-up's.
  if (ShiftReplansOn() && heat_during_migration_ && CommittedOnce() &&
      !planner_->job.shifted && collected_ >= kMinWarmupSteps) {
    if (EndCollectIfClear()) {
      // Counted, not logged: a routine step of the cycle, as a shift cut is.
      ++stats_.plans_superseded;
      return;
    }
  }
  if (!plan.ok()) {
    ++stats_.plans_failed;
    Log("plan failed, the current map keeps serving: " +
        plan.status().ToString());
    EndCycle();
    return;
  }
  const Placement& current = migration_->placement();
  std::vector<Violation> bad = CheckPlan(current, plan->placement);
  if (!bad.empty()) {
    ++stats_.plans_rejected;
    Log("plan rejected, the current map keeps serving: " + bad[0].ToString());
    EndCycle();
    return;
  }
  // A plan made on a shift that was over by the time the plan came due (a
  // burst of a few steps): the serving placement carries the newest steps
  // better than the plan would. Dropped, and the placement that fits the
  // traffic serves on.
  if (verdict == ShiftVerdict::kEnded) {
    OnShiftEnded(kShiftJudgeSteps);
    EndCycle();
    return;
  }
  // A plan made on a shift: watch for the traffic going back to what the
  // placement before it served (the first such plan's, until a regular plan).
  if (planner_->job.shifted && !went_back_armed_) {
    went_back_from_ = current;
    went_back_armed_ = true;
  }
  plan_ = std::move(plan->placement);
  StartMigration(plan->layers, /*reverting=*/false);
  migrating_shift_plan_ = planner_->job.shifted && heat_during_migration_;
}

void Controller::StartMigration(std::span<const LayerPlan> layers,
                                bool reverting) {
  const Placement& current = migration_->placement();
  // What each layer should meet once the plan serves: the planned
  // imbalance, or the current one where the layer stays.
  for (int l = 0; l < current.num_layers(); ++l) {
    const LayerPlan& info = layers[l];
    expected_[l] =
        info.changed ? info.predicted_imbalance : info.current_imbalance;
  }
  layers_.clear();
  const Topology& t = options_.topology;
  const int k = t.slots_per_rank;
  receives_.assign(static_cast<size_t>(current.num_layers()) * t.num_ranks, 0);
  for (int l = 0; l < current.num_layers(); ++l) {
    const LayerPlan& info = layers[l];
    if (std::equal(current.layer(l).begin(), current.layer(l).end(),
                   plan_.layer(l).begin())) {
      ++stats_.layers_kept;
      continue;
    }
    layers_.push_back(l);
    if (reverting) {
      ++stats_.layers_reverted;
    } else {
      ++(info.choice == LayerChoice::kFull ? stats_.layers_full
                                           : stats_.layers_incremental);
      stats_.predicted_gain += info.current_score - info.predicted_score;
    }
    // Experts new to each rank: what its staging buffers receive.
    for (int r = 0; r < t.num_ranks; ++r) {
      const std::span<const int32_t> had = current.layer(l).subspan(
          static_cast<size_t>(r) * k, static_cast<size_t>(k));
      for (int j = 0; j < k; ++j) {
        const int32_t e = plan_.at(l, r, j);
        if (std::find(had.begin(), had.end(), e) == had.end()) {
          ++receives_[static_cast<size_t>(l) * t.num_ranks + r];
        }
      }
    }
  }
  // Largest predicted gain first: those layers pay back soonest. The gain
  // is in the policy's score (per step under the dispatch in use) when it
  // reports one, else in imbalance on the window's load.
  auto gain = [&](int l) {
    const LayerPlan& x = layers[l];
    const double score = x.current_score - x.predicted_score;
    return score != 0.0 ? score : x.current_imbalance - x.predicted_imbalance;
  };
  std::stable_sort(layers_.begin(), layers_.end(),
                   [&](int a, int b) { return gain(a) > gain(b); });
  if (layers_.empty()) {
    EndCycle();
    return;
  }
  for (int l = 0; l < current.num_layers(); ++l) {
    std::copy(current.layer(l).begin(), current.layer(l).end(),
              from_.mutable_layer(l).begin());
  }
  next_layer_ = 0;
  committed_this_cycle_ = false;
  phase_ = Phase::kMigrate;
  cycle_step_ = 0;
}

std::vector<int> Controller::NextBatch() {
  const Topology& t = options_.topology;
  const int staging = migration_->weights().staging_per_rank();
  // Bytes the busiest receiving rank may take in one step; one layer per
  // step without a link bandwidth or a step time yet.
  // The longest step of any rank, so every rank makes the same batches.
  int64_t step_nanos[1] = {static_cast<int64_t>(step_seconds_ * 1e9)};
  if (!options_.collective->AllReduceMax(step_nanos).ok()) step_nanos[0] = 0;
  const double budget = options_.config.eplb_link_gbytes_per_s *
                        static_cast<double>(step_nanos[0]);
  std::vector<int> used(t.num_ranks, 0);
  std::vector<int> batch;
  while (next_layer_ < layers_.size()) {
    const int l = layers_[next_layer_];
    const int* rec = receives_.data() + static_cast<size_t>(l) * t.num_ranks;
    int busiest = 0;
    bool fits = true;
    for (int r = 0; r < t.num_ranks; ++r) {
      busiest = std::max(busiest, used[r] + rec[r]);
      fits = fits && used[r] + rec[r] <= staging;
    }
    const double bytes = static_cast<double>(busiest) *
                         static_cast<double>(options_.real_expert_bytes);
    if (!batch.empty() && (!fits || bytes > budget)) break;
    for (int r = 0; r < t.num_ranks; ++r) used[r] += rec[r];
    batch.push_back(l);
    ++next_layer_;
  }
  return batch;
}

void Controller::MigrateStep(bool before) {
  auto commit = [&](int layer) {
    routing_->Publish(layer, migration_->placement().layer(layer));
    if (heat_during_migration_) {
      recorder_->RemapLayer(layer, from_.layer(layer),
                            migration_->placement().layer(layer));
    }
    if (!committed_this_cycle_)
      ++stats_.rebalances;  // Counted at its first commit.
    committed_this_cycle_ = true;
    record_pending_ = options_.config.mode() == EplbMode::kRecording;
    if (options_.on_commit)
      options_.on_commit(step_, layer, migration_->placement());
  };
  auto finish = [&](MigrationEngine::State s) {
    if (s == MigrationEngine::State::kIdle ||
        s == MigrationEngine::State::kInFlight) {
      return;
    }
    const std::vector<int>& done = migration_->committed_layers();
    stats_.max_layers_per_step =
        std::max(stats_.max_layers_per_step, static_cast<int64_t>(done.size()));
    for (int layer : done) commit(layer);
    for (int layer : migration_->aborted_layers()) {
      Log("layer " + std::to_string(layer) +
          " kept its old placement: " + migration_->last_error().ToString());
    }
  };
  if (options_.sync_migration) {
    if (!before) return;
    // Stop the world: every changed layer now, waiting for each.
    const int64_t start = options_.clock->NowNanos();
    for (int layer : layers_) {
      Status s = migration_->Start(layer, plan_.layer(layer));
      if (!s.ok()) {
        ++layers_not_started_;
        Log("layer " + std::to_string(layer) +
            " not migrated: " + s.ToString());
        continue;
      }
      finish(migration_->Wait());
    }
    const int64_t stall = options_.clock->NowNanos() - start;
    stats_.max_stall_nanos = std::max(stats_.max_stall_nanos, stall);
    stats_.total_stall_nanos += stall;
    EndCycle();
    return;
  }
  if (before) {
    // A plan made on a shift that ended while it migrates: it stops, and
    // the layers migrate back to the placement before the shift.
    if (migration_->in_flight_layer() < 0 && next_layer_ > 0 &&
        next_layer_ < layers_.size() && migrating_shift_plan_ &&
        ShiftPlanOutlived()) {
      MigrateBack(kShiftJudgeSteps);
    }
    // Start the next batch unless one is still in flight.
    if (migration_->in_flight_layer() < 0 && next_layer_ < layers_.size()) {
      const std::vector<int> batch = NextBatch();
      Status s = migration_->StartLayers(batch, plan_);
      if (!s.ok()) {
        layers_not_started_ += static_cast<int64_t>(batch.size());
        Log("layers " + std::to_string(batch.front()) +
            (batch.size() > 1
                 ? " and " + std::to_string(batch.size() - 1) + " more"
                 : "") +
            " not migrated: " + s.ToString());
      }
    }
    return;
  }
  if (migration_->in_flight_layer() >= 0) {
    finish(options_.lockstep ? migration_->Wait() : migration_->Poll());
  }
  if (migration_->in_flight_layer() < 0 && next_layer_ >= layers_.size())
    EndCycle();
}

void Controller::RecordMap() {
  record_pending_ = false;
  // With a heat file, rank 0 alone writes the map (the ranks would race).
  if (options_.config.eplb_record_heat_path.has_value() &&
      options_.collective->rank() != 0) {
    return;
  }
  Status s = WriteExpertMapJson(*options_.config.expert_map_record_path,
                                migration_->placement());
  if (s.ok()) {
    ++stats_.maps_written;
  } else {
    Log("recording the map failed: " + s.ToString());
  }
}

void Controller::RecordRobustMap() {
  if (options_.collective->rank() != 0) return;
  const std::string& path = *options_.config.eplb_record_heat_path;
  const std::string key =
      "eplb_config.eplb_record_heat_path = \"" + path + "\": ";
  double total = 0.0;
  for (double v : run_heat_.data()) total += v;
  if (run_heat_steps_ == 0 || total <= 0.0) {
    Log(key +
        "this run collected no heat; the heat file and the map are "
        "left as they are");
    return;
  }
  HeatFile heat;
  StatusOr<HeatFile> read = ReadHeatFile(path);
  if (read.ok()) {
    heat = *std::move(read);
  } else if (read.status().code() == StatusCode::kNotFound) {
    heat.num_layers = options_.num_layers;
    heat.num_experts = options_.num_experts;
  } else {
    Log(key + read.status().message() +
        "; the heat file and the map are left as they are");
    return;
  }
  if (heat.num_layers != options_.num_layers ||
      heat.num_experts != options_.num_experts) {
    Log(key + "holds loads of " + std::to_string(heat.num_layers) +
        " layers x " + std::to_string(heat.num_experts) +
        " experts, the model has " + std::to_string(options_.num_layers) +
        " x " + std::to_string(options_.num_experts) +
        "; the heat file and the map are left as they are");
    return;
  }
  heat.loads.push_back(run_heat_);
  heat.steps.push_back(run_heat_steps_);
  if (Status s = WriteHeatFile(path, heat); !s.ok()) {
    Log(key + s.message() + "; the map is left as it is");
    return;
  }
  stats_.heat_workloads = static_cast<int64_t>(heat.loads.size());
  RobustPlanOptions robust;
  robust.num_groups = options_.policy_options.num_groups;
  StatusOr<RobustPlan> plan = PlanRobust(heat.loads, options_.topology, robust);
  if (!plan.ok()) {
    Log(key + "the robust plan failed: " + plan.status().message());
    return;
  }
  const std::string& map_path = *options_.config.expert_map_record_path;
  if (Status s = WriteExpertMapJson(map_path, plan->placement); !s.ok()) {
    Log("recording the robust map failed: " + s.ToString());
    return;
  }
  ++stats_.maps_written;
}

void Controller::EndCycle() {
  if (phase_ == Phase::kMigrate && committed_this_cycle_) {
    if (stats_.warmup_steps < 0) stats_.warmup_steps = step_;
    if (record_pending_) RecordMap();
  }
  if (!heat_during_migration_) {
    recorder_->Clear();
    collected_ = 0;
  }
  phase_ = Phase::kCollect;
  cycle_step_ = 0;
  layers_.clear();
  migrating_shift_plan_ = false;
}

}  // namespace eplb
