#include "eplb/controller.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <semaphore>
#include <stdexcept>
#include <thread>
#include <utility>

#include "eplb/io.h"
#include "eplb/robust.h"
#include "eplb/sim/synthetic_weights.h"
#include "testing/scratch_dir.h"

namespace eplb {
namespace {

constexpr int kLayers = 3, kExperts = 16, kRanks = 4, kSlots = 5;

// A policy that misbehaves on purpose.
class BadPolicy final : public Policy {
 public:
  enum class Mode { kThrow, kInvalid };
  explicit BadPolicy(Mode mode) : mode_(mode) {}
  std::string_view name() const override { return "bad"; }
  StatusOr<Plan> Rebalance(const PolicyInput& in,
                           const PolicyOptions&) override {
    if (mode_ == Mode::kThrow) throw std::runtime_error("boom");
    Plan p{*in.current, std::vector<LayerPlan>(in.current->num_layers()), {}};
    p.placement.set(0, 0, 0,
                    p.placement.at(0, 0, 1));  // A duplicate on rank 0.
    return p;
  }

 private:
  Mode mode_;
};

// The default policy, slowed down on an injected clock: each plan takes
// `delay` longer as the controller measures it.
class SlowPolicy final : public Policy {
 public:
  SlowPolicy(ManualClock* clock, std::chrono::milliseconds delay)
      : clock_(clock), delay_(delay), inner_(*CreatePolicy("default")) {}
  std::string_view name() const override { return "slow"; }
  StatusOr<Plan> Rebalance(const PolicyInput& in,
                           const PolicyOptions& options) override {
    clock_->Advance(std::chrono::nanoseconds(delay_).count());
    return inner_->Rebalance(in, options);
  }

 private:
  ManualClock* clock_;
  std::chrono::milliseconds delay_;
  std::unique_ptr<Policy> inner_;
};

// A policy behind a gate the test opens: a plan exactly as late as the test
// says, with no sleep. Open() lets one plan through (the inner policy's;
// `default` unless given).
class GatedPolicy final : public Policy {
 public:
  explicit GatedPolicy(std::unique_ptr<Policy> inner = nullptr)
      : inner_(inner ? std::move(inner) : *CreatePolicy("default")) {}
  std::string_view name() const override { return "gated"; }
  StatusOr<Plan> Rebalance(const PolicyInput& in,
                           const PolicyOptions& options) override {
    entered_.fetch_add(1);
    gate_.acquire();
    return inner_->Rebalance(in, options);
  }
  // Plans that reached the gate so far.
  int entered() const { return entered_.load(); }
  void Open() { gate_.release(); }

 private:
  std::atomic<int> entered_{0};
  std::counting_semaphore<1 << 20> gate_{0};
  std::unique_ptr<Policy> inner_;
};

struct Rig {
  Topology topology = *MakeTopology(kExperts, kRanks, kSlots);
  std::unique_ptr<Transport> transport = *CreateInProcessTransport({});
  std::unique_ptr<SyntheticWeights> weights;
  std::unique_ptr<Controller> controller;
  std::vector<std::pair<int64_t, int>> commits;
  std::vector<std::string> logs;
  int64_t num_tokens = 512;  // Each step's batch, as the stage filter sees it.

  // `lockstep` (the default): the serving thread waits for a plan due at a
  // step, so that plans are never late however slow the machine (a
  // sanitizer build, say); the tests of late plans turn it off and gate the
  // policy instead.
  explicit Rig(EplbConfig config, std::unique_ptr<Policy> policy = nullptr,
               bool sync = false, const Placement& initial = Placement(),
               bool lockstep = true, int staging_per_rank = 0,
               Clock* clock = nullptr, Collective* collective = nullptr) {
    ControllerOptions o;
    o.config = std::move(config);
    o.topology = topology;
    o.num_layers = kLayers;
    o.num_experts = kExperts;
    o.initial = initial.num_layers()
                    ? initial
                    : Placement::Initial(kLayers, kExperts, topology);
    o.policy = std::move(policy);
    weights = *SyntheticWeights::Create(
        SyntheticWeightsOptions{.topology = topology,
                                .num_layers = kLayers,
                                .num_experts = kExperts,
                                .real_expert_bytes = 1 << 20,
                                .memory_budget_bytes = 4 << 20,
                                .staging_per_rank = staging_per_rank},
        o.initial);
    o.weights = weights.get();
    o.transport = transport.get();
    o.real_expert_bytes = 1 << 20;
    o.sync_migration = sync;
    o.lockstep = lockstep;
    o.clock = clock;
    o.collective = collective;
    o.on_commit = [this](int64_t step, int layer, const Placement&) {
      commits.emplace_back(step, layer);
    };
    o.log = [this](std::string_view line) { logs.emplace_back(line); };
    controller = *Controller::Create(std::move(o));
    controller->Start();
  }

  // One step with skewed per-slot load (expert 0 very hot), routed through
  // the current tables. `hot`: the expert of the 400 tokens (the next two
  // take 100 each); `scale`: every count times this.
  void Step(bool skewed = true, int hot = 0, int64_t scale = 1) {
    if (skewed) {
      StepOf(hot, 400 * scale, 100 * scale, 10 * scale);
    } else {
      StepOf(hot, 10 * scale, 10 * scale, 10 * scale);
    }
  }

  // A small step: `hot` takes 6 tokens, the next two 2 each, the rest 1.
  void StepSmall(int hot) { StepOf(hot, 6, 2, 1); }

  // One step: `hot` takes `first` tokens, the next two `next` each, the
  // rest `rest`, each split evenly over the replicas serving then (any
  // remainder dropped).
  void StepOf(int hot, int64_t first, int64_t next, int64_t rest) {
    controller->BeforeForward();
    std::vector<int64_t> slots(topology.num_slots(), 0);
    for (int l = 0; l < kLayers; ++l) {
      std::fill(slots.begin(), slots.end(), 0);
      std::shared_ptr<const LayerRouting> r = controller->routing().Get(l);
      for (int e = 0; e < kExperts; ++e) {
        const int rank_of_e = (e - hot + kExperts) % kExperts;
        const int64_t n =
            rank_of_e == 0 ? first : (rank_of_e < 3 ? next : rest);
        std::span<const int32_t> reps = r->ReplicasOf(e);
        for (size_t j = 0; j < reps.size(); ++j) {
          slots[reps[j]] += n / static_cast<int64_t>(reps.size());
        }
      }
      controller->recorder().RecordSlotCounts(l, slots);
    }
    // The forward took 2 ms (for the migration's per-step byte budget).
    controller->AfterForward(num_tokens, 0.002);
  }

  // One step whose every expert's tokens are exact and returned in
  // `logical` [L][E]: (hot ? 240 : 12) x (layer + 1) + expert + `extra`, split
  // over the replicas serving then, the first taking the remainder.
  void StepExact(int hot, int64_t extra, LoadMatrix* logical) {
    controller->BeforeForward();
    *logical = LoadMatrix(kLayers, kExperts);
    std::vector<int64_t> slots(topology.num_slots(), 0);
    for (int l = 0; l < kLayers; ++l) {
      std::fill(slots.begin(), slots.end(), 0);
      std::shared_ptr<const LayerRouting> r = controller->routing().Get(l);
      for (int e = 0; e < kExperts; ++e) {
        const int64_t n = (e == hot ? 240 : 12) * (l + 1) + e + extra;
        std::span<const int32_t> reps = r->ReplicasOf(e);
        const auto count = static_cast<int64_t>(reps.size());
        for (size_t j = 0; j < reps.size(); ++j) {
          slots[reps[j]] += n / count + (j == 0 ? n % count : 0);
        }
        logical->at(l, e) = static_cast<double>(n);
      }
      controller->recorder().RecordSlotCounts(l, slots);
    }
    controller->AfterForward(512, 0.002);
  }

  // Waits, without sleeping, until the planner has finished the plan it is
  // computing.
  void AwaitPlan() const {
    while (controller->planning()) std::this_thread::yield();
  }
};

EplbConfig Dynamic(int heat, int algo) {
  EplbConfig c;
  c.dynamic_eplb = true;
  c.expert_heat_collection_interval = heat;
  c.algorithm_execution_interval = algo;
  c.num_redundant_experts = kRanks * kSlots - kExperts;
  c.eplb_fast_warmup = false;  // The reference cycle, unless a test says.
  c.eplb_shift_replan = false;
  return c;
}

// stats() from another thread while the serving thread steps: each read is
// one consistent snapshot (counters never go back, the plan-time histogram
// always sums to plans_timed). TSan checks the absence of races.
TEST(ControllerTest, StatsReadFromAnotherThreadAreConsistent) {
  Rig rig(Dynamic(4, 1));
  const ControllerStats initial = rig.controller->stats();
  EXPECT_EQ(initial.warmup_steps, -1);
  EXPECT_EQ(initial.steps, 0);
  std::atomic<bool> done{false};
  std::atomic<int64_t> reads{0}, bad{0};
  std::thread reader([&] {
    ControllerStats last;
    while (!done.load()) {
      const ControllerStats s = rig.controller->stats();
      int64_t sum = 0;
      for (int64_t b : s.plan_time_buckets) sum += b;
      if (sum != s.plans_timed || s.steps < last.steps ||
          s.rebalances < last.rebalances ||
          s.layers_committed < last.layers_committed) {
        ++bad;
      }
      last = s;
      ++reads;
    }
  });
  for (int i = 0; i < 40; ++i) rig.Step();
  done.store(true);
  reader.join();
  EXPECT_GT(reads.load(), 0);
  EXPECT_EQ(bad.load(), 0);
  const ControllerStats s = rig.controller->stats();
  EXPECT_EQ(s.steps, 40);
  EXPECT_GE(s.rebalances, 1);
  EXPECT_GE(s.plans_timed, 1);
  EXPECT_EQ(s.plans_timed, s.cycles);
}

TEST(ControllerTest, CycleCommitsOneLayerPerStep) {
  Rig rig(Dynamic(4, 10));
  const Placement initial = rig.controller->placement();
  for (int i = 0; i < 4 + 10 + kLayers + 2; ++i) rig.Step();
  const ControllerStats s = rig.controller->stats();
  EXPECT_EQ(s.rebalances, 1);
  EXPECT_EQ(s.cycles_late, 0);
  ASSERT_EQ(static_cast<int>(rig.commits.size()), kLayers);
  // The first layer commits after the step following the plan (step H+A),
  // then one per step; each from the next step on.
  for (int i = 0; i < kLayers; ++i)
    EXPECT_EQ(rig.commits[i].first, 4 + 10 + 1 + i);
  EXPECT_NE(rig.controller->placement(), initial);
  EXPECT_TRUE(rig.weights->Verify(rig.controller->placement()).ok());
  // The routing serves the committed placement.
  for (int l = 0; l < kLayers; ++l) {
    LayerRouting expect = BuildLayerRouting(
        rig.controller->placement().layer(l), kExperts, rig.topology);
    EXPECT_EQ(rig.controller->routing().Get(l)->log2phy, expect.log2phy);
  }
}

TEST(ControllerTest, FastWarmupPlansAsSoonAsTheHeatIsClear) {
  // Expert 0 takes 55% of the tokens: after the minimum of 2 steps the
  // imbalance is far beyond noise, so the window is handed over then, not
  // after H = 8 steps; the plan is taken A = 2 steps later.
  EplbConfig c = Dynamic(8, 2);
  c.eplb_fast_warmup = true;
  Rig rig(c, nullptr, false, Placement(), /*lockstep=*/true);
  for (int i = 0; i < 2 + 2 + kLayers + 1; ++i) rig.Step();
  ASSERT_EQ(static_cast<int>(rig.commits.size()), kLayers);
  for (int i = 0; i < kLayers; ++i) {
    EXPECT_EQ(rig.commits[i].first, 2 + 2 + 1 + i);
  }
  EXPECT_EQ(rig.controller->stats().warmup_steps, 2 + 2 + kLayers);
}

TEST(ControllerTest, FastWarmupWaitsUntilTheImbalanceIsBeyondNoise) {
  // Every expert takes 10 tokens a step: the initial map's rank loads are
  // 30, 50, 50 and 30 (max / mean 1.25). Sampling noise on a mean of 40s
  // tokens per rank is sqrt(2 ln 4 / 40s); twice that falls below 0.25 only
  // after 5 steps, and the plan comes 2 steps later.
  EplbConfig c = Dynamic(8, 2);
  c.eplb_fast_warmup = true;
  Rig rig(c, nullptr, false, Placement(), /*lockstep=*/true);
  for (int i = 0; i < 5 + 2 + 1; ++i) rig.Step(/*skewed=*/false);
  ASSERT_FALSE(rig.commits.empty());
  EXPECT_EQ(rig.commits[0].first, 5 + 2 + 1);
}

// One process of a two-process job, as its controller calls it: every call
// is logged (kind and length) and leaves the values as they are.
class LoggingCollective final : public Collective {
 public:
  int rank() const override { return 0; }
  int size() const override { return 2; }
  Status AllReduceSum(std::span<int64_t> values) override {
    calls.push_back("sum " + std::to_string(values.size()));
    return Status::Ok();
  }
  Status AllReduceMax(std::span<int64_t> values) override {
    calls.push_back("max " + std::to_string(values.size()));
    return Status::Ok();
  }
  std::vector<std::string> calls;
};

TEST(ControllerTest, RanksWhoseStageFilterCountsDifferentStepsCallAlike) {
  // Decode-only heat: a step counts on a rank when its own batch holds at
  // most max_num_reqs (256) tokens, so ranks of one job can count different
  // steps. The collectives a rank calls must not depend on that, or one
  // rank waits forever in a call another never makes. Rank A's batches are
  // all decode; rank B's first two are prefill. Uniform heat keeps both
  // from planning in these steps, so both must make the same calls.
  EplbConfig c = Dynamic(8, 2);
  c.eplb_fast_warmup = true;
  c.eplb_heat_collection_stage = HeatStage::kDecode;
  LoggingCollective a_calls;
  LoggingCollective b_calls;
  Rig a(c, nullptr, false, Placement(), true, 0, nullptr, &a_calls);
  Rig b(c, nullptr, false, Placement(), true, 0, nullptr, &b_calls);
  a.num_tokens = 64;
  for (int i = 0; i < 4; ++i) {
    b.num_tokens = i < 2 ? 1024 : 64;
    a.Step(/*skewed=*/false);
    b.Step(/*skewed=*/false);
    EXPECT_EQ(a_calls.calls, b_calls.calls) << "step " << i + 1;
  }
  // The window is judged from the second step on.
  EXPECT_FALSE(a_calls.calls.empty());
  EXPECT_TRUE(a.commits.empty());
}

// The default policy, recording what the planner was told of each window.
class WindowSpy final : public Policy {
 public:
  struct Seen {
    int window_steps;
    bool shifted;
    LoadMatrix load;    // The window's.
    LoadTrace samples;  // The history and the window, oldest first.
  };
  explicit WindowSpy(std::vector<Seen>* seen)
      : seen_(seen), inner_(*CreatePolicy("default")) {}
  std::string_view name() const override { return "window-spy"; }
  StatusOr<Plan> Rebalance(const PolicyInput& in,
                           const PolicyOptions& options) override {
    seen_->push_back(
        {in.window_steps, in.window_shifted, *in.load, *in.samples});
    return inner_->Rebalance(in, options);
  }

 private:
  std::vector<Seen>* seen_;
  std::unique_ptr<Policy> inner_;
};

TEST(ControllerTest, AShiftCutsTheCollectionShort) {
  // H = 8, A = 2, the next collection starting after the migration: the
  // first plan (a full window) balances expert 0's heat. Then expert 9 turns
  // hot: 2 steps into the next collection the heat is far beyond what the
  // plan predicted, so that window is handed over at once, marked as
  // shifted, and its plan commits 2 + A + 1 steps later.
  EplbConfig c = Dynamic(8, 2);
  c.eplb_shift_replan = true;
  c.eplb_heat_during_migration = false;
  std::vector<WindowSpy::Seen> seen;
  Rig rig(c, std::make_unique<WindowSpy>(&seen), false, Placement(),
          /*lockstep=*/true);
  for (int i = 0; i < 8 + 2 + kLayers; ++i) rig.Step();
  ASSERT_EQ(static_cast<int>(rig.commits.size()), kLayers);
  const int64_t cycle_start = rig.controller->step();
  for (int i = 0; i < 2 + 2 + kLayers; ++i) rig.Step(true, /*hot=*/9);
  rig.controller->Shutdown();  // `seen` is the planner's until it stops.
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].window_steps, 8);
  EXPECT_FALSE(seen[0].shifted);
  EXPECT_EQ(seen[1].window_steps, 2);
  EXPECT_TRUE(seen[1].shifted);
  ASSERT_GT(rig.commits.size(), static_cast<size_t>(kLayers));
  EXPECT_EQ(rig.commits[kLayers].first, cycle_start + 2 + 2 + 1);
}

// H = 8, A = 2, shift re-plans, heat during migration, the planner's
// windows in `seen`: after 16 steps the first plan (expert 0 hot) has
// committed, and the next window is being collected.
struct AfterTheFirstPlan {
  AfterTheFirstPlan()
      : rig(ShiftReplans(), std::make_unique<WindowSpy>(&seen), false,
            Placement(), /*lockstep=*/true) {
    for (int i = 0; i < 16; ++i) rig.Step();
    fits_expert_0 = rig.controller->placement();
  }
  static EplbConfig ShiftReplans() {
    EplbConfig c = Dynamic(8, 2);
    c.eplb_shift_replan = true;
    return c;
  }
  std::vector<WindowSpy::Seen> seen;
  Rig rig;
  Placement fits_expert_0;
};

TEST(ControllerTest, APlanWhoseTrafficShiftedWhileItWasMadeIsDropped) {
  // H = 8, A = 2, heat during migration: the first plan (expert 0 hot)
  // commits at steps 11-13 while the second window (steps 9-16) collects
  // the same traffic; it is handed over at step 16. Expert 9 turns hot at
  // step 17, so when the second plan comes due (step 18) the 2 steps since
  // show the shift: that plan is dropped and those 2 steps are handed over
  // at once, marked shifted; their plan is taken A steps later and commits.
  AfterTheFirstPlan t;
  Rig& rig = t.rig;
  const std::vector<WindowSpy::Seen>& seen = t.seen;
  ASSERT_EQ(static_cast<int>(rig.commits.size()), kLayers);
  for (int i = 0; i < 2; ++i) rig.Step(true, /*hot=*/9);
  EXPECT_EQ(rig.controller->stats().plans_superseded, 1);
  EXPECT_EQ(static_cast<int>(rig.commits.size()), kLayers);
  for (int i = 0; i < 2 + kLayers + 1; ++i) rig.Step(true, /*hot=*/9);
  rig.controller->Shutdown();  // `seen` is the planner's until it stops.
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[1].window_steps, 8);
  EXPECT_FALSE(seen[1].shifted);
  EXPECT_EQ(seen[2].window_steps, 2);
  EXPECT_TRUE(seen[2].shifted);
  for (int l = 0; l < kLayers; ++l) {
    EXPECT_GT(seen[2].load.at(l, 9), seen[2].load.at(l, 0)) << "layer " << l;
  }
  // A plan made on a shift is not dropped in turn: it commits from step
  // 18 + A + 1 on.
  const ControllerStats s = rig.controller->stats();
  EXPECT_EQ(s.plans_superseded, 1);
  ASSERT_GT(rig.commits.size(), static_cast<size_t>(kLayers));
  EXPECT_EQ(rig.commits[kLayers].first, 18 + 2 + 1);
}

TEST(ControllerTest, APlanMadeOnAShiftThatEndedBeforeItWasDueIsDropped) {
  // As above, but expert 9 is hot for steps 17-18 only (a burst): the plan
  // made on them comes due at step 20, and steps 19-20 are expert 0's
  // again, which the serving placement carries better than that plan
  // would. It is dropped and nothing migrates.
  AfterTheFirstPlan t;
  Rig& rig = t.rig;
  ASSERT_EQ(static_cast<int>(rig.commits.size()), kLayers);
  for (int i = 0; i < 2; ++i) rig.Step(true, /*hot=*/9);
  ASSERT_EQ(rig.controller->stats().plans_superseded, 1);
  for (int i = 0; i < 2; ++i) rig.Step();
  EXPECT_EQ(rig.controller->stats().shifts_reverted, 1);
  for (int i = 0; i < 4; ++i) rig.Step();
  EXPECT_EQ(static_cast<int>(rig.commits.size()), kLayers);
  EXPECT_EQ(rig.controller->placement().data(), t.fits_expert_0.data());
  rig.controller->Shutdown();  // `seen` is the planner's until it stops.
  ASSERT_EQ(t.seen.size(), 3u);
  EXPECT_TRUE(t.seen[2].shifted);
}

TEST(ControllerTest, AfterAShiftThatEndedTheNextShiftWaitsForTheCycle) {
  // The burst of steps 17-18 ends and its plan is dropped at step 20. When
  // expert 9 turns hot again at step 21 the traffic is bursty, and shift
  // re-plans rest for 4 heat intervals: the collection runs its whole 8
  // steps (19-26) and is handed over as a regular window.
  AfterTheFirstPlan t;
  Rig& rig = t.rig;
  for (int i = 0; i < 2; ++i) rig.Step(true, /*hot=*/9);
  for (int i = 0; i < 2; ++i) rig.Step();
  ASSERT_EQ(rig.controller->stats().shifts_reverted, 1);
  // Its plan is taken A = 2 steps later (lockstep: once it is made).
  for (int i = 0; i < 6 + 2; ++i) rig.Step(true, /*hot=*/9);
  rig.controller->Shutdown();  // `seen` is the planner's until it stops.
  ASSERT_EQ(t.seen.size(), 4u);
  EXPECT_FALSE(t.seen[3].shifted);
  EXPECT_EQ(t.seen[3].window_steps, 8);
}

TEST(ControllerTest, APlanMadeOnAShiftWaitsWhileTheNewestStepsAreUnclear) {
  // Expert 9 is hot through step 19: when the plan made on it comes due
  // (step 20), its newest 2 steps are one of each traffic and the newest
  // alone favours the serving placement. The plan waits a step; at step 21
  // both newest steps are expert 0's, and it is dropped.
  AfterTheFirstPlan t;
  Rig& rig = t.rig;
  for (int i = 0; i < 3; ++i) rig.Step(true, /*hot=*/9);
  ASSERT_EQ(rig.controller->stats().plans_superseded, 1);
  rig.Step();
  EXPECT_EQ(rig.controller->stats().shifts_reverted, 0);
  EXPECT_EQ(rig.controller->stats().cycles, 2);  // The first, the dropped.
  rig.Step();
  EXPECT_EQ(rig.controller->stats().shifts_reverted, 1);
  for (int i = 0; i < 4; ++i) rig.Step();
  EXPECT_EQ(static_cast<int>(rig.commits.size()), kLayers);
  EXPECT_EQ(rig.controller->placement().data(), t.fits_expert_0.data());
}

TEST(ControllerTest, APlanMadeOnAShiftThatEndsWhileItMigratesStops) {
  // Expert 9 is hot for steps 17-20: the plan made on it is taken at step
  // 20 and commits one layer a step from step 21, but from step 21 the
  // traffic is expert 0's again. Before step 23's layer, the newest 2 steps
  // (21-22) are carried better by the placement before the shift: the plan
  // stops there, and the 2 layers it committed migrate back (steps 23-24).
  AfterTheFirstPlan t;
  Rig& rig = t.rig;
  for (int i = 0; i < 4; ++i) rig.Step(true, /*hot=*/9);
  ASSERT_EQ(rig.controller->stats().plans_superseded, 1);
  rig.AwaitPlan();  // `seen` is the planner's while it plans.
  const size_t plans = t.seen.size();
  for (int i = 0; i < 2; ++i) rig.Step();
  ASSERT_EQ(static_cast<int>(rig.commits.size()), kLayers + 2);
  EXPECT_EQ(rig.controller->stats().shifts_reverted, 0);
  const ControllerStats before = rig.controller->stats();
  for (int i = 0; i < 2; ++i) rig.Step();
  EXPECT_EQ(rig.controller->stats().shifts_reverted, 1);
  // The 2 layers going back are counted as such, not as a policy's choice.
  EXPECT_EQ(rig.controller->stats().layers_reverted, 2);
  EXPECT_EQ(rig.controller->stats().layers_incremental,
            before.layers_incremental);
  EXPECT_EQ(rig.controller->stats().layers_full, before.layers_full);
  EXPECT_EQ(rig.controller->stats().predicted_gain, before.predicted_gain);
  ASSERT_EQ(static_cast<int>(rig.commits.size()), kLayers + 4);
  const std::vector<std::pair<int64_t, int>> commits(
      rig.commits.begin() + kLayers, rig.commits.end());
  EXPECT_EQ(commits[0].first, 21);
  EXPECT_EQ(commits[1].first, 22);
  EXPECT_EQ(commits[2].first, 23);
  EXPECT_EQ(commits[3].first, 24);
  EXPECT_EQ(rig.controller->placement().data(), t.fits_expert_0.data());
  rig.AwaitPlan();
  EXPECT_EQ(t.seen.size(), plans);  // Nothing planned for going back.
}

TEST(ControllerTest, WhileShiftReplansRestTheTrafficGoingBackIsStillMet) {
  // Expert 9 is hot, three times the usual tokens, through step 23: the
  // plan made on it commits at steps 21-23. At step 24 expert 0's traffic
  // is back, and its one step already shows the window's imbalance: a
  // second plan is made on the shift, and dropped when due (step 26), since
  // the serving placement carries the steps since better. Shift re-plans
  // then rest, but the first plan's placement still serves. At step 28 the
  // placement before the shift carries the newest 3 steps better, and the
  // layers migrate back to it, with no plan made.
  AfterTheFirstPlan t;
  Rig& rig = t.rig;
  for (int i = 0; i < 7; ++i) rig.Step(true, /*hot=*/9, /*scale=*/3);
  ASSERT_EQ(static_cast<int>(rig.commits.size()), 2 * kLayers);
  for (int i = 0; i < 3; ++i) rig.Step();
  ASSERT_EQ(rig.controller->stats().shifts_reverted, 1);
  ASSERT_EQ(static_cast<int>(rig.commits.size()), 2 * kLayers);
  rig.AwaitPlan();  // `seen` is the planner's while it plans.
  const size_t plans = t.seen.size();
  while (rig.controller->stats().shifts_reverted < 2 &&
         rig.controller->step() < 31) {
    rig.Step();
  }
  ASSERT_EQ(rig.controller->stats().shifts_reverted, 2);
  EXPECT_EQ(rig.controller->step(), 28);
  for (int i = 0; i < kLayers; ++i) rig.Step();
  ASSERT_EQ(static_cast<int>(rig.commits.size()), 3 * kLayers);
  EXPECT_EQ(rig.controller->placement().data(), t.fits_expert_0.data());
  rig.AwaitPlan();
  EXPECT_EQ(t.seen.size(), plans);
}

TEST(ControllerTest, TrafficGoingBackAfterAShiftMigratesBackAtOnce) {
  // Expert 9 stays hot through step 21, so the plan made on the shift
  // commits at steps 21-23 (the placement before it is kept). From step 22
  // the traffic is expert 0's again, in small steps (23 tokens a layer):
  // too few for the imbalance test to tell the shift from noise, but with
  // the same tokens under both placements the one before the shift is
  // clearly better. At step 24, the first after the migration with its
  // newest 3 steps all such, the layers migrate back to it (steps 25-27)
  // with no plan made.
  AfterTheFirstPlan t;
  Rig& rig = t.rig;
  for (int i = 0; i < 5; ++i) rig.Step(true, /*hot=*/9);
  ASSERT_EQ(rig.controller->stats().plans_superseded, 1);
  EXPECT_EQ(rig.controller->stats().layers_reverted, 0);
  for (int i = 0; i < 3; ++i) rig.StepSmall(/*hot=*/0);
  ASSERT_EQ(static_cast<int>(rig.commits.size()), 2 * kLayers);
  EXPECT_NE(rig.controller->placement().data(), t.fits_expert_0.data());
  EXPECT_EQ(rig.controller->stats().shifts_reverted, 1);
  rig.AwaitPlan();  // `seen` is the planner's while it plans.
  const size_t plans = t.seen.size();
  for (int i = 0; i < kLayers; ++i) rig.StepSmall(/*hot=*/0);
  ASSERT_EQ(static_cast<int>(rig.commits.size()), 3 * kLayers);
  EXPECT_EQ(rig.controller->stats().layers_reverted, kLayers);
  EXPECT_EQ(rig.commits[2 * kLayers].first, 25);
  EXPECT_EQ(rig.controller->placement().data(), t.fits_expert_0.data());
  rig.AwaitPlan();
  EXPECT_EQ(t.seen.size(), plans);
}

TEST(ControllerTest, TheStepsOfAShiftThatEndedLeaveTheSamples) {
  // The burst of the test above (expert 9, steps 17-21) migrates back at
  // step 24. The next plan scores on samples without those steps: neither
  // the history nor its window holds a step where expert 9 is the hot one,
  // so its replicas do not outlast the burst.
  AfterTheFirstPlan t;
  Rig& rig = t.rig;
  for (int i = 0; i < 5; ++i) rig.Step(true, /*hot=*/9);
  rig.AwaitPlan();  // `seen` is the planner's while it plans.
  ASSERT_GE(t.seen.size(), 2u);
  // The plan made on the burst saw it.
  const LoadTrace& during = t.seen.back().samples;
  EXPECT_GT(during.at(during.num_steps() - 1, 0, 9),
            during.at(during.num_steps() - 1, 0, 0));
  for (int i = 0; i < 3; ++i) rig.StepSmall(/*hot=*/0);
  ASSERT_EQ(rig.controller->stats().shifts_reverted, 1);
  rig.AwaitPlan();
  const size_t plans = t.seen.size();
  while (rig.controller->step() < 60) {
    rig.StepSmall(/*hot=*/0);
    rig.AwaitPlan();
    if (t.seen.size() > plans) break;
  }
  ASSERT_GT(t.seen.size(), plans) << "no plan after the migration back";
  const WindowSpy::Seen& next = t.seen[plans];
  EXPECT_FALSE(next.shifted);
  const LoadTrace& s = next.samples;
  ASSERT_GT(s.num_steps(), 0);
  for (int j = 0; j < s.num_steps(); ++j) {
    for (int l = 0; l < kLayers; ++l) {
      EXPECT_LE(s.at(j, l, 9), s.at(j, l, 0))
          << "sample " << j << " of " << s.num_steps() << ", layer " << l;
    }
  }
  for (int l = 0; l < kLayers; ++l) {
    EXPECT_LE(next.load.at(l, 9), next.load.at(l, 0)) << "layer " << l;
  }
}

// Every layer the same [R][K] table.
Placement EveryLayer(const std::vector<int32_t>& table) {
  Placement p(kLayers, kRanks, kSlots, kExperts);
  for (int l = 0; l < kLayers; ++l) {
    std::copy(table.begin(), table.end(), p.mutable_layer(l).begin());
  }
  return p;
}

// Returns the given placements in turn, then what serves, each layer
// reported as expected to meet `imbalance[i]`; records whether each window
// was marked shifted.
class ScriptedPolicy final : public Policy {
 public:
  ScriptedPolicy(std::vector<Placement> plans, std::vector<double> imbalance,
                 std::vector<bool>* shifted)
      : plans_(std::move(plans)),
        imbalance_(std::move(imbalance)),
        shifted_(shifted) {}
  std::string_view name() const override { return "scripted"; }
  StatusOr<Plan> Rebalance(const PolicyInput& in,
                           const PolicyOptions&) override {
    const size_t i = shifted_->size();
    shifted_->push_back(in.window_shifted);
    const Placement& cur = *in.current;
    Plan p{i < plans_.size() ? plans_[i] : cur,
           std::vector<LayerPlan>(cur.num_layers()),
           {}};
    for (int l = 0; l < cur.num_layers(); ++l) {
      LayerPlan& info = p.layers[l];
      info.changed = !std::equal(cur.layer(l).begin(), cur.layer(l).end(),
                                 p.placement.layer(l).begin());
      info.choice =
          info.changed ? LayerChoice::kIncremental : LayerChoice::kKept;
      info.predicted_imbalance = i < imbalance_.size() ? imbalance_[i] : 4.0;
      info.current_imbalance = 4.0;
    }
    return p;
  }

 private:
  std::vector<Placement> plans_;
  std::vector<double> imbalance_;
  std::vector<bool>* shifted_;
};

TEST(ControllerTest, AMigrationBackKeepsEachExpertInTheSlotItServesFrom) {
  // Expert 0 hot (Rig::Step: 400 tokens, experts 1 and 2 100, the rest 10):
  // the first plan serves `before` (max / mean 230 / 182.5). Expert 9 turns
  // hot and two plans are made on the shift: the first takes expert 1 off
  // rank 0 (swapped with expert 6 of rank 1), the second puts it back on
  // rank 0 in slot 0, where expert 0 served. When expert 0's traffic
  // returns, `before` carries it far better (263 / 182.5 for the second
  // plan) and the layers migrate back at once. Expert 1 stays in slot 0 of
  // rank 0 (a migration never moves an expert within a rank), expert 0
  // comes back in slot 1, and every rank again holds what it held.
  const Placement initial = EveryLayer(
      {0, 1, 3, 4, 5, 0, 6, 7, 8, 12, 0, 2, 10, 11, 9, 0, 13, 14, 15, 1});
  const Placement before = EveryLayer(
      {0, 1, 3, 4, 5, 0, 6, 7, 8, 9, 0, 2, 10, 11, 12, 0, 13, 14, 15, 1});
  const Placement first = EveryLayer(
      {0, 6, 3, 4, 5, 0, 1, 7, 8, 9, 0, 2, 10, 11, 12, 0, 13, 14, 15, 1});
  const Placement second = EveryLayer(
      {1, 6, 3, 4, 5, 0, 1, 7, 8, 9, 0, 2, 10, 11, 12, 0, 13, 14, 15, 1});
  const Placement back = EveryLayer(
      {1, 0, 3, 4, 5, 0, 6, 7, 8, 9, 0, 2, 10, 11, 12, 0, 13, 14, 15, 1});
  EplbConfig c = Dynamic(8, 2);
  c.eplb_shift_replan = true;
  c.eplb_heat_during_migration = false;  // Plans made on a shift are taken.
  std::vector<bool> shifted;
  // The first plan made on the shift is expected to balance it, so that the
  // heat shows the shift again; the second to meet what it does.
  Rig rig(c,
          std::make_unique<ScriptedPolicy>(
              std::vector<Placement>{before, first, second},
              std::vector<double>{1.3, 1.0, 4.0}, &shifted),
          false, initial, /*lockstep=*/true);
  for (int i = 0; i < 8 + 2 + kLayers; ++i) rig.Step();
  ASSERT_EQ(rig.controller->placement().data(), before.data());
  int steps = 0;
  while (rig.controller->placement().data() != second.data() && steps < 32) {
    rig.Step(true, /*hot=*/9);
    ++steps;
  }
  ASSERT_EQ(rig.controller->placement().data(), second.data());
  ASSERT_EQ(shifted, (std::vector<bool>{false, true, true}));
  steps = 0;
  while (rig.controller->stats().shifts_reverted == 0 && steps < 8) {
    rig.Step();
    ++steps;
  }
  ASSERT_EQ(rig.controller->stats().shifts_reverted, 1);
  for (int i = 0; i < kLayers; ++i) rig.Step();
  for (const std::string& line : rig.logs) ADD_FAILURE() << line;
  EXPECT_EQ(rig.controller->stats().layers_aborted, 0);
  EXPECT_EQ(rig.controller->placement().data(), back.data());
  EXPECT_EQ(shifted.size(), 3u);  // No plan for the migration back.
}

TEST(ControllerTest, WithHeatDuringMigrationAShiftIsSeenOnceTheMigrationEnds) {
  // The same traffic with the next collection running during the first
  // plan's A steps and migration (one layer a step): when the migration
  // ends, the new heat already shows the shift, and the window handed over
  // holds every step since the first plan was handed over.
  EplbConfig c = Dynamic(8, 2);
  c.eplb_shift_replan = true;
  std::vector<WindowSpy::Seen> seen;
  Rig rig(c, std::make_unique<WindowSpy>(&seen), false, Placement(),
          /*lockstep=*/true);
  for (int i = 0; i < 8; ++i) rig.Step();
  // Expert 9 turns hot as the first plan is handed over.
  for (int i = 0; i < 2 + kLayers; ++i) rig.Step(true, /*hot=*/9);
  ASSERT_EQ(static_cast<int>(rig.commits.size()), kLayers);
  EXPECT_EQ(rig.controller->step(), 8 + 2 + kLayers);
  // One step later the window is handed over; its plan commits A + 1 steps
  // after that.
  for (int i = 0; i < 1 + 2 + 1; ++i) rig.Step(true, /*hot=*/9);
  rig.controller->Shutdown();  // `seen` is the planner's until it stops.
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].window_steps, 8);
  EXPECT_EQ(seen[1].window_steps, 2 + kLayers + 1);
  EXPECT_TRUE(seen[1].shifted);
  ASSERT_GT(rig.commits.size(), static_cast<size_t>(kLayers));
  EXPECT_EQ(rig.commits[kLayers].first, 8 + 2 + kLayers + 1 + 2 + 1);
}

// H = 64, A = 2, heat during migration: the first plan (expert 0 hot)
// commits at steps 67-69 while the next collection runs; 56 more steps of
// the same traffic follow, so the window holds 56 steps the plan fits, and
// then the steps of `last` (hot expert, scale). Returns what the planner
// was told of each window.
std::vector<WindowSpy::Seen> ShiftAfterALongSteadyWindow(
    const std::vector<std::pair<int, int64_t>>& last) {
  EplbConfig c = Dynamic(64, 2);
  c.eplb_shift_replan = true;
  std::vector<WindowSpy::Seen> seen;
  Rig rig(c, std::make_unique<WindowSpy>(&seen), false, Placement(),
          /*lockstep=*/true);
  for (int i = 0; i < 64 + 56; ++i) rig.Step();
  EXPECT_EQ(static_cast<int>(rig.commits.size()), kLayers);
  for (const auto& [hot, scale] : last) rig.Step(true, hot, scale);
  rig.AwaitPlan();
  rig.controller->Shutdown();  // `seen` is the planner's until it stops.
  return seen;
}

TEST(ControllerTest, AShiftInTheNewestStepsIsPlannedOnThemAlone) {
  // Expert 9 turns hot after 56 steady steps. In the whole window that is
  // still a small share (no cut), but the newest 3 steps show it in every
  // layer (this traffic has no noise: one step of it is enough), so the
  // collection ends there and the planner's window is those 3 steps (the
  // older ones join its history only).
  const std::vector<WindowSpy::Seen> seen =
      ShiftAfterALongSteadyWindow({{9, 1}});
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].window_steps, 64);
  EXPECT_EQ(seen[1].window_steps, 3);
  EXPECT_TRUE(seen[1].shifted);
  for (int l = 0; l < kLayers; ++l) {
    // Two steady steps and the new one: expert 9 takes 10, 10 and 400
    // tokens, expert 0 400, 400 and 10, 730 tokens a step in all (a
    // replica's remainder lost at most).
    double total = 0.0;
    for (int e = 0; e < kExperts; ++e) total += seen[1].load.at(l, e);
    EXPECT_LE(total, 3 * 730.0) << "layer " << l;
    EXPECT_GE(total, 3 * 730.0 - 3 * kRanks * kSlots) << "layer " << l;
    EXPECT_GE(seen[1].load.at(l, 9), 418.0) << "layer " << l;
    EXPECT_LE(seen[1].load.at(l, 9), 420.0) << "layer " << l;
    EXPECT_GE(seen[1].load.at(l, 0), 800.0) << "layer " << l;
    EXPECT_LE(seen[1].load.at(l, 0), 810.0) << "layer " << l;
  }
}

TEST(ControllerTest, OneLargeStepAmongTheNewestIsNoShift) {
  // The same, but expert 9's step is 5 times the usual size, and two usual
  // steps follow. The newest 3 steps alone look shifted, but one of them
  // carries most of their heat (one large prompt, not a new workload), and
  // in the whole window it is a small share: the collection runs on.
  const std::vector<WindowSpy::Seen> seen =
      ShiftAfterALongSteadyWindow({{9, 5}, {0, 1}, {0, 1}, {0, 1}});
  EXPECT_EQ(seen.size(), 1u);
}

TEST(ControllerTest, HeatCollectedDuringAMigrationKeepsEachExpertsTokens) {
  // H = 8, A = 2, one layer a step: the second window (steps 8-15) runs
  // while the first plan's layers commit (from step 11 on). Every step routes
  // expert e's tokens over the replicas serving it then; the planner must
  // see each expert's true tokens, whichever placement counted them.
  EplbConfig c = Dynamic(8, 2);
  std::vector<WindowSpy::Seen> seen;
  Rig rig(c, std::make_unique<WindowSpy>(&seen), false, Placement(),
          /*lockstep=*/true);
  LoadMatrix expected(kLayers, kExperts);
  LoadMatrix logical;
  for (int step = 0; step < 16; ++step) {
    // Expert 0 hot at first, expert 9 from step 8 on: the second plan moves
    // replicas again.
    rig.StepExact(step < 8 ? 0 : 9, 0, &logical);
    if (step < 8) continue;
    for (int l = 0; l < kLayers; ++l) {
      for (int e = 0; e < kExperts; ++e) expected.at(l, e) += logical.at(l, e);
    }
  }
  // The second window ends at step 16; its plan is handed over then.
  rig.AwaitPlan();
  rig.controller->Shutdown();
  ASSERT_EQ(static_cast<int>(rig.commits.size()), kLayers);
  EXPECT_EQ(rig.commits.front().first, 8 + 2 + 1);
  ASSERT_EQ(seen.size(), 2u);
  for (int l = 0; l < kLayers; ++l) {
    for (int e = 0; e < kExperts; ++e) {
      EXPECT_EQ(seen[1].load.at(l, e), expected.at(l, e))
          << "layer " << l << " expert " << e;
    }
  }
}

TEST(ControllerTest, AWindowThatOutgrewTheRingIsPlannedOnItsNewestSteps) {
  // H = 4, A = 2, one layer a step: the second window starts after step 4
  // while the first plan commits at steps 7-9, and is handed over at step
  // 10 with 6 steps. The ring keeps 4 samples: the plan sees steps 7-10
  // (indices 6-9), not traffic older than H.
  EplbConfig c = Dynamic(4, 2);
  std::vector<WindowSpy::Seen> seen;
  Rig rig(c, std::make_unique<WindowSpy>(&seen), false, Placement(),
          /*lockstep=*/true);
  std::vector<LoadMatrix> steps(10);
  for (int step = 0; step < 10; ++step) {
    rig.StepExact(step < 4 ? 0 : 9, 7 * step, &steps[step]);
  }
  rig.AwaitPlan();
  rig.controller->Shutdown();
  ASSERT_EQ(static_cast<int>(rig.commits.size()), kLayers);
  EXPECT_EQ(rig.commits.back().first, 4 + 2 + kLayers);
  ASSERT_EQ(seen.size(), 2u);
  for (int l = 0; l < kLayers; ++l) {
    for (int e = 0; e < kExperts; ++e) {
      double want = 0.0;
      for (int step = 6; step < 10; ++step) want += steps[step].at(l, e);
      EXPECT_EQ(seen[1].load.at(l, e), want)
          << "layer " << l << " expert " << e;
    }
  }
}

TEST(ControllerTest, SteadyHeatRunsWholeCollections) {
  // The same heat throughout: the plan's prediction holds, nothing is cut
  // short.
  EplbConfig c = Dynamic(8, 2);
  c.eplb_shift_replan = true;
  std::vector<WindowSpy::Seen> seen;
  Rig rig(c, std::make_unique<WindowSpy>(&seen), false, Placement(),
          /*lockstep=*/true);
  for (int i = 0; i < 60; ++i) rig.Step();
  rig.controller->Shutdown();
  ASSERT_GE(seen.size(), 3u);
  for (const WindowSpy::Seen& w : seen) {
    EXPECT_EQ(w.window_steps, 8);
    EXPECT_FALSE(w.shifted);
  }
}

TEST(ControllerTest, SeveralLayersCommitInAStepWhenTheLinkAllows) {
  // 1 MB experts, ~2 ms steps: 1000 GB/s moves 2 GB a step, so every
  // changed layer fits in one batch when the staging buffers hold them all.
  EplbConfig c = Dynamic(4, 2);
  c.eplb_link_gbytes_per_s = 1000;
  Rig fast(c, nullptr, false, Placement(), /*lockstep=*/true,
           /*staging_per_rank=*/kLayers * kSlots);
  for (int i = 0; i < 4 + 2 + 2; ++i) fast.Step();
  ASSERT_EQ(static_cast<int>(fast.commits.size()), kLayers);
  for (const auto& [step, layer] : fast.commits) EXPECT_EQ(step, 4 + 2 + 1);
  EXPECT_EQ(fast.controller->stats().max_layers_per_step, kLayers);
  EXPECT_TRUE(fast.weights->Verify(fast.controller->placement()).ok());
  // 1 KB/s moves nothing worth a layer: one layer per step, as without a
  // link.
  c.eplb_link_gbytes_per_s = 1e-6;
  Rig slow(c, nullptr, false, Placement(), /*lockstep=*/true,
           /*staging_per_rank=*/kLayers * kSlots);
  for (int i = 0; i < 4 + 2 + kLayers + 1; ++i) slow.Step();
  ASSERT_EQ(static_cast<int>(slow.commits.size()), kLayers);
  for (int i = 0; i < kLayers; ++i) {
    EXPECT_EQ(slow.commits[i].first, 4 + 2 + 1 + i);
  }
  EXPECT_EQ(slow.controller->stats().max_layers_per_step, 1);
}

TEST(ControllerTest, ThrowingPlannerLeavesServingUnaffected) {
  Rig rig(Dynamic(3, 2), std::make_unique<BadPolicy>(BadPolicy::Mode::kThrow));
  const Placement initial = rig.controller->placement();
  for (int i = 0; i < 30; ++i) rig.Step();
  const ControllerStats s = rig.controller->stats();
  EXPECT_EQ(s.steps, 30);
  EXPECT_GE(s.plans_failed, 5);
  EXPECT_EQ(s.layers_committed, 0);
  EXPECT_EQ(rig.controller->placement(), initial);
  ASSERT_FALSE(rig.logs.empty());
  EXPECT_NE(rig.logs[0].find("policy threw: boom"), std::string::npos)
      << rig.logs[0];
}

TEST(ControllerTest, SlowPlannerNeverBlocksTheServingThread) {
  auto gated = std::make_unique<GatedPolicy>();
  GatedPolicy* gate = gated.get();
  Rig rig(Dynamic(3, 1), std::move(gated), false, Placement(),
          /*lockstep=*/false);
  // The plan never finishes while these steps run: had any controller call
  // waited for it, the test would hang here.
  for (int i = 0; i < 40; ++i) rig.Step();
  const ControllerStats s = rig.controller->stats();
  // The plan was due after step 4 and is still running: the current map
  // served every step since.
  EXPECT_EQ(s.cycles_late, 1);
  EXPECT_EQ(s.plan_late_steps, 40 - 4 + 1);
  EXPECT_EQ(s.layers_committed, 0);
  EXPECT_TRUE(rig.controller->planning());
  EXPECT_NE(rig.logs[0].find("not ready"), std::string::npos) << rig.logs[0];
  gate->Open();
  rig.AwaitPlan();
}

TEST(ControllerTest, LockstepTakesASlowPlanAndCommitsOnSchedule) {
  // The plan takes 50 ms (on the injected clock), far beyond A = 1 step: in
  // a paced loop the cycle would be late; the lockstep simulation waits.
  ManualClock clock;
  Rig rig(Dynamic(4, 1),
          std::make_unique<SlowPolicy>(&clock, std::chrono::milliseconds(50)),
          /*sync=*/false, Placement(), /*lockstep=*/true, 0, &clock);
  for (int i = 0; i < 4 + 1 + kLayers + 2; ++i) rig.Step();
  const ControllerStats s = rig.controller->stats();
  EXPECT_EQ(s.cycles_late, 0);
  EXPECT_GE(s.max_plan_nanos, 50'000'000);
  ASSERT_EQ(static_cast<int>(rig.commits.size()), kLayers);
  for (int i = 0; i < kLayers; ++i)
    EXPECT_EQ(rig.commits[i].first, 4 + 1 + 1 + i);
}

TEST(ControllerTest, ALatePlanIsTakenAsSoonAsItIsReady) {
  // The plan, due after step H + A = 9, finishes only after step 12: it is
  // taken at the end of the first step it is ready (nothing migrated
  // meanwhile, so it still fits the serving placement), not after another
  // collection of H = 8 steps. Migration stops the world here, so that the
  // step it commits at says when the plan was taken.
  auto gated = std::make_unique<GatedPolicy>();
  GatedPolicy* gate = gated.get();
  Rig rig(Dynamic(8, 1), std::move(gated), /*sync=*/true, Placement(),
          /*lockstep=*/false);
  for (int i = 0; i < 12; ++i) rig.Step();
  EXPECT_EQ(rig.controller->stats().plan_late_steps, 12 - 9 + 1);
  EXPECT_TRUE(rig.commits.empty());
  gate->Open();
  rig.AwaitPlan();
  rig.Step();  // Step 13: the plan is taken at its end.
  rig.Step();  // Step 14: every changed layer commits before its forward.
  const ControllerStats s = rig.controller->stats();
  EXPECT_EQ(s.cycles_late, 1);
  EXPECT_EQ(s.plan_late_steps, 12 - 9 + 1);
  EXPECT_EQ(s.rebalances, 1);
  ASSERT_FALSE(rig.commits.empty());
  for (const auto& [step, layer] : rig.commits) EXPECT_EQ(step, 13) << layer;
  EXPECT_TRUE(rig.weights->Verify(rig.controller->placement()).ok());
}

TEST(ControllerTest, InvalidPlanIsRejected) {
  Rig rig(Dynamic(3, 2),
          std::make_unique<BadPolicy>(BadPolicy::Mode::kInvalid));
  const Placement initial = rig.controller->placement();
  for (int i = 0; i < 12; ++i) rig.Step();
  EXPECT_GE(rig.controller->stats().plans_rejected, 1);
  EXPECT_EQ(rig.controller->placement(), initial);
  EXPECT_NE(rig.logs[0].find("plan rejected"), std::string::npos)
      << rig.logs[0];
}

TEST(ControllerTest, SyncMigrationStallsAsyncDoesNot) {
  Rig async(Dynamic(4, 10));
  Rig sync(Dynamic(4, 10), nullptr, /*sync=*/true);
  for (int i = 0; i < 4 + 10 + kLayers + 2; ++i) {
    async.Step();
    sync.Step();
  }
  EXPECT_EQ(async.controller->stats().rebalances, 1);
  EXPECT_EQ(sync.controller->stats().rebalances, 1);
  EXPECT_EQ(async.controller->stats().max_stall_nanos, 0);
  EXPECT_GT(sync.controller->stats().max_stall_nanos, 0);
  EXPECT_EQ(async.controller->placement(), sync.controller->placement());
}

TEST(ControllerTest, RecordThenStatic) {
  const testing_util::ScratchDir scratch("controller");
  const std::string path = scratch.File("recorded.json");
  EplbConfig rec = Dynamic(4, 10);
  rec.expert_map_record_path = path;
  Placement recorded;
  {
    Rig rig(rec);
    for (int i = 0; i < 4 + 10 + kLayers + 2; ++i) rig.Step();
    EXPECT_EQ(rig.controller->stats().maps_written, 1);
    recorded = rig.controller->placement();
  }
  StatusOr<Placement> map = ReadExpertMapJson(
      path, MapExpectations{kLayers, kRanks, kExperts, kSlots});
  ASSERT_TRUE(map.ok()) << map.status().ToString();
  EXPECT_EQ(*map, recorded);
  // Static: the recorded map serves from step 0 and never changes.
  EplbConfig stat;
  stat.expert_map_path = path;
  Rig rig(stat, nullptr, false, *map);
  for (int i = 0; i < 20; ++i) rig.Step();
  EXPECT_EQ(rig.controller->placement(), recorded);
  EXPECT_EQ(rig.controller->stats().cycles, 0);
  EXPECT_TRUE(rig.commits.empty());
}

// Robust recording: each run appends its heat to the heat file as one
// workload, and the recorded map is the robust plan over all of them.
TEST(ControllerTest, RecordingAccumulatesHeatOverRuns) {
  const testing_util::ScratchDir scratch("controller_heat");
  EplbConfig rec = Dynamic(4, 10);
  rec.expert_map_record_path = scratch.File("recorded.json");
  rec.eplb_record_heat_path = scratch.File("heat.json");
  const MapExpectations expect{kLayers, kRanks, kExperts, kSlots};
  for (int run = 0; run < 2; ++run) {
    Rig rig(rec);
    // Two different workloads: the hot expert differs between the runs.
    for (int i = 0; i < 4 + 10 + kLayers + 2; ++i) {
      rig.Step(/*skewed=*/true, /*hot=*/run == 0 ? 0 : 5);
    }
    rig.controller->Shutdown();
    EXPECT_EQ(rig.controller->stats().heat_workloads, run + 1);
    StatusOr<HeatFile> heat = ReadHeatFile(*rec.eplb_record_heat_path);
    ASSERT_TRUE(heat.ok()) << heat.status().ToString();
    ASSERT_EQ(heat->loads.size(), static_cast<size_t>(run + 1));
    EXPECT_EQ(heat->num_layers, kLayers);
    EXPECT_EQ(heat->num_experts, kExperts);
    EXPECT_GT(heat->steps[run], 0);
    // The recorded map is the robust plan over every recorded workload.
    StatusOr<RobustPlan> want = PlanRobust(heat->loads, rig.topology);
    ASSERT_TRUE(want.ok()) << want.status().ToString();
    StatusOr<Placement> map =
        ReadExpertMapJson(*rec.expert_map_record_path, expect);
    ASSERT_TRUE(map.ok()) << map.status().ToString();
    EXPECT_EQ(*map, want->placement);
    EXPECT_TRUE(CheckPlacement(*map).empty());
  }
  // The two workloads differ (their hot experts do).
  StatusOr<HeatFile> heat = ReadHeatFile(*rec.eplb_record_heat_path);
  ASSERT_TRUE(heat.ok());
  EXPECT_NE(heat->loads[0], heat->loads[1]);
  EXPECT_GT(heat->loads[0].at(0, 0), heat->loads[0].at(0, 5));
  EXPECT_GT(heat->loads[1].at(0, 5), heat->loads[1].at(0, 0));
}

// A corrupt heat file found at shutdown: one line naming the key and the
// file, the heat file left byte for byte, no robust map written.
TEST(ControllerTest, RecordingLeavesACorruptHeatFileUntouched) {
  const testing_util::ScratchDir scratch("controller_heat_bad");
  EplbConfig rec = Dynamic(4, 10);
  rec.expert_map_record_path = scratch.File("recorded.json");
  rec.eplb_record_heat_path = scratch.File("heat.json");
  const std::string corrupt = R"({"eplb_heat": 1, "num_layers": )";
  scratch.Write("heat.json", corrupt);
  Rig rig(rec);
  for (int i = 0; i < 4 + 10 + kLayers + 2; ++i) rig.Step();
  const int64_t maps_before = rig.controller->stats().maps_written;
  rig.controller->Shutdown();
  EXPECT_EQ(*ReadFileToString(*rec.eplb_record_heat_path), corrupt);
  EXPECT_EQ(rig.controller->stats().heat_workloads, 0);
  EXPECT_EQ(rig.controller->stats().maps_written, maps_before);
  bool logged = false;
  for (const std::string& line : rig.logs) {
    if (line.find("eplb_config.eplb_record_heat_path = \"" +
                  *rec.eplb_record_heat_path + "\"") != std::string::npos) {
      logged = true;
      EXPECT_EQ(line.find('\n'), std::string::npos) << line;
    }
  }
  EXPECT_TRUE(logged) << testing::PrintToString(rig.logs);
}

// Records how many per-step samples each plan saw.
class SpyPolicy final : public Policy {
 public:
  explicit SpyPolicy(std::vector<int>* seen) : seen_(seen) {}
  std::string_view name() const override { return "spy"; }
  StatusOr<Plan> Rebalance(const PolicyInput& in,
                           const PolicyOptions&) override {
    seen_->push_back(in.samples->num_steps());
    // The samples are logical loads: every step of the rig routes 400 + 2 *
    // 100 + 13 * 10 tokens in every layer.
    for (int st = 0; st < in.samples->num_steps(); ++st) {
      double total = 0;
      for (double v : in.samples->row(st, 0)) total += v;
      EXPECT_NEAR(total, 400 + 200 + 130, 4) << "step " << st;
    }
    return Plan{
        *in.current, std::vector<LayerPlan>(in.current->num_layers()), {}};
  }

 private:
  std::vector<int>* seen_;
};

TEST(ControllerTest, PlannerSeesASlidingHistoryOfSamples) {
  std::vector<int> seen;
  Rig rig(Dynamic(4, 10), std::make_unique<SpyPolicy>(&seen));
  for (int i = 0; i < 40 * 14; ++i) rig.Step();
  rig.controller->Shutdown();  // `seen` is the planner's until it stops.
  ASSERT_GE(seen.size(), 33u);
  // H = 4 new samples a cycle (no layer changes, so a cycle is H + A steps),
  // kept up to the default history of 128 steps.
  for (size_t i = 0; i < seen.size(); ++i) {
    EXPECT_EQ(seen[i], std::min<int>(4 * static_cast<int>(i + 1), 128))
        << "plan " << i;
  }
}

TEST(ControllerTest, LatePlansDelayTheNextWindowOnly) {
  // Every plan finishes 3 steps after it was due (A = 1): each is late, and
  // the next collection starts once it was taken; the history still grows
  // by one window of H = 4 steps a plan.
  std::vector<int> seen;
  auto gated =
      std::make_unique<GatedPolicy>(std::make_unique<SpyPolicy>(&seen));
  GatedPolicy* gate = gated.get();
  Rig rig(Dynamic(4, 1), std::move(gated), false, Placement(),
          /*lockstep=*/false);
  int waited = 0;
  for (int i = 0; i < 80; ++i) {
    rig.Step();
    if (rig.controller->planning() && ++waited == 3 + 1) {
      gate->Open();
      rig.AwaitPlan();
      waited = 0;
    }
  }
  gate->Open();                // The last plan, if one is waiting.
  rig.controller->Shutdown();  // `seen` is the planner's until it stops.
  ASSERT_GE(seen.size(), 5u);
  for (size_t i = 0; i < seen.size(); ++i) {
    EXPECT_EQ(seen[i], 4 * static_cast<int>(i + 1)) << "plan " << i;
  }
  // Every plan was late (the last one may not have been due yet).
  EXPECT_GE(rig.controller->stats().cycles_late,
            static_cast<int64_t>(seen.size()) - 1);
}

}  // namespace
}  // namespace eplb
