#include "eplb/controller.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <exception>
#include <semaphore>
#include <thread>

#include "eplb/io.h"

namespace eplb {

// The planner thread and its lock-free handshake with the serving thread:
// the serving thread writes `job` only while state is kIdle and reads
// `result` only while it is kDone; the planner does the opposite. The
// sample history belongs to the planner thread: the serving thread only
// hands over the windows collected since the last job, so the history's
// copies stay off the serving thread.
struct Controller::Planner {
  enum State : int { kIdle, kRunning, kDone };
  struct Job {
    int64_t id = 0;
    Placement current;
    LoadMatrix load;
    std::vector<LoadTrace> windows;  // Logical per-step loads, oldest first.
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
  // Planner thread only: the newest `keep` collected steps, [steps][L][E].
  int keep = 0;
  std::vector<double> history;
  int history_steps = 0;
  LoadTrace samples;

  // Appends the job's windows to the history (keeping the newest `keep`
  // steps) and copies it into `samples`.
  void TakeWindows() {
    const size_t cells =
        static_cast<size_t>(job.load.num_layers()) * job.load.num_experts();
    for (const LoadTrace& w : job.windows) {
      history.insert(history.end(), w.data().begin(), w.data().end());
      history_steps += w.num_steps();
    }
    job.windows.clear();
    if (history_steps > keep) {
      history.erase(history.begin(),
                    history.begin() +
                        static_cast<ptrdiff_t>((history_steps - keep) * cells));
      history_steps = keep;
    }
    samples =
        LoadTrace(history_steps, job.load.num_layers(), job.load.num_experts());
    std::copy(history.begin(), history.end(), samples.mutable_data().begin());
  }

  void Run() {
    for (;;) {
      wake.acquire();
      if (stop.load(std::memory_order_acquire)) return;
      const int64_t start = clock->NowNanos();
      TakeWindows();
      try {
        result = policy->Rebalance(
            {&job.current, &job.load, &samples, topology}, options);
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
                           .tensors = o.expert_tensors,
                           .memory_budget_bytes = o.memory_budget_bytes,
                           .transport = o.transport,
                           .clock = o.clock,
                           .timeout_nanos = o.transfer_timeout_nanos},
          o.initial));
  c->planner_ = std::make_unique<Planner>();
  c->planner_->policy = o.policy.get();
  c->planner_->options = o.policy_options;
  c->planner_->topology = t;
  c->planner_->clock = o.clock;
  c->planner_->keep =
      std::max(o.sample_history, o.config.expert_heat_collection_interval);
  c->options_ = std::move(o);
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
  if (planner_ == nullptr || !planner_->thread.joinable()) return;
  planner_->stop.store(true, std::memory_order_release);
  planner_->wake.release();
  planner_->thread.join();
}

void Controller::Log(const std::string& line) {
  if (options_.log) {
    options_.log(line);
  } else {
    std::fprintf(stderr, "eplb: %s\n", line.c_str());
  }
}

ControllerStats Controller::stats() const {
  ControllerStats s = stats_;
  const MigrationStats& m = migration_->stats();
  s.layers_committed = m.layers_committed;
  s.layers_aborted = m.layers_aborted;
  s.experts_moved = m.experts_moved;
  s.bytes_moved = m.bytes_moved;
  return s;
}

void Controller::BeforeForward() {
  if (phase_ == Phase::kMigrate) MigrateStep(/*before=*/true);
}

void Controller::AfterForward(int64_t num_tokens) {
  recorder_->EndStep(num_tokens);
  ++step_;
  stats_.steps = step_;
  if (!planner_->thread.joinable()) return;  // Static or disabled: serve only.
  const int64_t h = options_.config.expert_heat_collection_interval;
  const int64_t a = options_.config.algorithm_execution_interval;
  ++cycle_step_;
  switch (phase_) {
    case Phase::kCollect:
      if (cycle_step_ == h) EndCollect();
      break;
    case Phase::kPlan:
      if (cycle_step_ == h + a) TakePlan();
      break;
    case Phase::kMigrate:
      MigrateStep(/*before=*/false);
      break;
  }
}

void Controller::EndCollect() {
  // Every collected window joins the history, whether or not it is planned
  // on now: it waits here until the planner takes a job.
  const HeatSnapshot snap = recorder_->Snapshot();
  const Placement& serving = migration_->placement();
  AddPendingWindow(snap.LogicalSamples(serving));
  const int state = planner_->state.load(std::memory_order_acquire);
  if (state == Planner::kDone) {
    // A plan that missed its cycle came back since: it was planned on the
    // placement that still serves (nothing migrates without a plan), so it
    // is taken now rather than thrown away; the next cycle plans afresh.
    Log("taking the late plan of the previous cycle");
    phase_ = Phase::kPlan;
    TakePlan();
    return;
  }
  if (state != Planner::kIdle) {
    // The previous (late) plan is still running: this cycle cannot plan.
    ++stats_.cycles_late;
    Log("cycle skipped: the planner is still busy with a late plan");
    EndCycle();
    return;
  }
  Planner::Job& job = planner_->job;
  job.id = step_;
  job.current = serving;
  job.load = snap.LogicalLoad(serving);
  job.windows = std::move(pending_windows_);
  pending_windows_.clear();
  pending_steps_ = 0;
  planner_->state.store(Planner::kRunning, std::memory_order_release);
  planner_->wake.release();
  phase_ = Phase::kPlan;
}

void Controller::AddPendingWindow(LoadTrace window) {
  pending_steps_ += window.num_steps();
  pending_windows_.push_back(std::move(window));
  // While the planner stays busy, only the newest windows can still matter.
  while (pending_windows_.size() > 1 &&
         pending_steps_ - pending_windows_.front().num_steps() >=
             planner_->keep) {
    pending_steps_ -= pending_windows_.front().num_steps();
    pending_windows_.erase(pending_windows_.begin());
  }
}

void Controller::TakePlan() {
  if (options_.lockstep) {
    while (planner_->state.load(std::memory_order_acquire) != Planner::kDone) {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
  if (planner_->state.load(std::memory_order_acquire) != Planner::kDone) {
    ++stats_.cycles_late;
    Log("cycle skipped: the plan was not ready after "
        "algorithm_execution_interval = " +
        std::to_string(options_.config.algorithm_execution_interval) +
        " steps");
    EndCycle();
    return;
  }
  StatusOr<Plan> plan = std::move(planner_->result);
  planner_->result = InternalError("no plan");
  stats_.max_plan_nanos = std::max(stats_.max_plan_nanos, planner_->plan_nanos);
  planner_->state.store(Planner::kIdle, std::memory_order_release);
  ++stats_.cycles;
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
  layers_.clear();
  for (int l = 0; l < current.num_layers(); ++l) {
    if (!std::equal(current.layer(l).begin(), current.layer(l).end(),
                    plan->placement.layer(l).begin())) {
      layers_.push_back(l);
    }
  }
  // Most-improved layers first: they pay back soonest.
  std::stable_sort(layers_.begin(), layers_.end(), [&](int a, int b) {
    const LayerPlan& x = plan->layers[a];
    const LayerPlan& y = plan->layers[b];
    return x.current_imbalance - x.predicted_imbalance >
           y.current_imbalance - y.predicted_imbalance;
  });
  if (layers_.empty()) {
    EndCycle();
    return;
  }
  plan_ = std::move(plan->placement);
  next_layer_ = 0;
  committed_this_cycle_ = false;
  phase_ = Phase::kMigrate;
}

void Controller::MigrateStep(bool before) {
  auto commit = [&](int layer) {
    routing_->Publish(layer, migration_->placement().layer(layer));
    if (!committed_this_cycle_)
      ++stats_.rebalances;  // Counted at its first commit.
    committed_this_cycle_ = true;
    if (options_.on_commit)
      options_.on_commit(step_, layer, migration_->placement());
  };
  auto finish = [&](MigrationEngine::State s, int layer) {
    if (s == MigrationEngine::State::kCommitted) {
      commit(layer);
    } else if (s == MigrationEngine::State::kAborted) {
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
        Log("layer " + std::to_string(layer) +
            " not migrated: " + s.ToString());
        continue;
      }
      finish(migration_->Wait(), layer);
    }
    const int64_t stall = options_.clock->NowNanos() - start;
    stats_.max_stall_nanos = std::max(stats_.max_stall_nanos, stall);
    stats_.total_stall_nanos += stall;
    EndCycle();
    return;
  }
  if (before) {
    // Start the next layer unless one is still in flight.
    if (migration_->in_flight_layer() < 0 && next_layer_ < layers_.size()) {
      const int layer = layers_[next_layer_++];
      Status s = migration_->Start(layer, plan_.layer(layer));
      if (!s.ok()) {
        Log("layer " + std::to_string(layer) +
            " not migrated: " + s.ToString());
      }
    }
    return;
  }
  const int layer = migration_->in_flight_layer();
  if (layer >= 0) {
    finish(options_.lockstep ? migration_->Wait() : migration_->Poll(), layer);
  }
  if (migration_->in_flight_layer() < 0 && next_layer_ >= layers_.size())
    EndCycle();
}

void Controller::EndCycle() {
  if (phase_ == Phase::kMigrate && committed_this_cycle_) {
    if (options_.config.mode() == EplbMode::kRecording) {
      Status s = WriteExpertMapJson(*options_.config.expert_map_record_path,
                                    migration_->placement());
      if (s.ok()) {
        ++stats_.maps_written;
      } else {
        Log("recording the map failed: " + s.ToString());
      }
    }
  }
  recorder_->Clear();
  phase_ = Phase::kCollect;
  cycle_step_ = 0;
  layers_.clear();
}

}  // namespace eplb
