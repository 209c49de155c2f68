// Tests of HeatRecorder: counting through log2phy, dropped ids,
// slot counts, the stage filter, the window and the ring, Clear(), logical
// loads over replicas, seqlock consistency under a concurrent reader, and a
// hot path that never allocates.
#include "eplb/recorder.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "eplb/placement.h"
#include "testing/counting_new.h"

namespace eplb {
namespace {

// The vllm-ascend fixture layer (its expert-map example): E = 8, R = 2, K = 5.
const std::vector<int32_t> kFixtureLayer = {7, 2, 0, 3, 5, 6, 1, 4, 7, 2};
// log2phy of rank 0 (own replicas first): 7 -> slot 0, 2 -> slot 1, 0 -> 2,
// 3 -> 3, 5 -> 4; 6, 1 and 4 only live on rank 1 (physical 5, 6, 7).
const std::vector<int32_t> kRank0Log2Phy = {2, 6, 1, 3, 7, 4, 5, 0};
// log2phy of rank 1: its own 7 (physical 8) and 2 (physical 9).
const std::vector<int32_t> kRank1Log2Phy = {2, 6, 9, 3, 7, 4, 5, 8};

HeatRecorderOptions FixtureOptions(int num_layers = 1) {
  HeatRecorderOptions options;
  options.num_layers = num_layers;
  options.num_experts = 8;
  options.num_slots = 10;
  options.ring_steps = 4;
  options.stage = HeatStage::kAll;
  options.max_num_reqs = 4;
  return options;
}

std::unique_ptr<HeatRecorder> MakeRecorder(const HeatRecorderOptions& o) {
  StatusOr<std::unique_ptr<HeatRecorder>> recorder = HeatRecorder::Create(o);
  EXPECT_TRUE(recorder.ok()) << recorder.status().ToString();
  return std::move(recorder).value();
}

Placement FixturePlacement(int num_layers = 1) {
  Placement placement(num_layers, 2, 5, 8);
  for (int l = 0; l < num_layers; ++l) {
    std::copy(kFixtureLayer.begin(), kFixtureLayer.end(),
              placement.mutable_layer(l).begin());
  }
  return placement;
}

// Layer `layer` of the window.
std::vector<int64_t> WindowRow(const HeatSnapshot& snap, int layer) {
  const auto begin = snap.window.begin() + layer * snap.num_slots;
  return {begin, begin + snap.num_slots};
}

// Layer `layer` of sample `sample`.
std::vector<int64_t> SampleRow(const HeatSnapshot& snap, int sample,
                               int layer) {
  const auto begin =
      snap.samples.begin() +
      (static_cast<ptrdiff_t>(sample) * snap.num_layers + layer) *
          snap.num_slots;
  return {begin, begin + snap.num_slots};
}

TEST(HeatRecorderTest, CreateRejectsBadOptions) {
  struct Case {
    const char* field;
    HeatRecorderOptions options;
    const char* value;
  };
  std::vector<Case> cases;
  HeatRecorderOptions o = FixtureOptions();
  o.num_layers = 0;
  cases.push_back({"num_layers", o, "got 0"});
  o = FixtureOptions();
  o.num_experts = -3;
  cases.push_back({"num_experts", o, "got -3"});
  o = FixtureOptions();
  o.num_experts = (1 << 20) + 1;
  cases.push_back({"num_experts", o, "got 1048577"});
  o = FixtureOptions();
  o.ring_steps = 1 << 30;  // (2^30 + 1) * 1 * 10 counters: too many.
  cases.push_back({"ring_steps", o, "1073741824"});
  o = FixtureOptions();
  o.num_slots = 0;
  cases.push_back({"num_slots", o, "got 0"});
  o = FixtureOptions();
  o.ring_steps = 0;
  cases.push_back({"ring_steps", o, "got 0"});
  o = FixtureOptions();
  o.max_num_reqs = -1;
  cases.push_back({"max_num_reqs", o, "got -1"});
  for (const Case& c : cases) {
    SCOPED_TRACE(c.field);
    StatusOr<std::unique_ptr<HeatRecorder>> r = HeatRecorder::Create(c.options);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find(c.field), std::string::npos)
        << r.status().message();
    EXPECT_NE(r.status().message().find(c.value), std::string::npos)
        << r.status().message();
  }
  o = FixtureOptions();
  o.max_num_reqs = 0;  // Every non-empty step is a prefill step: allowed.
  EXPECT_TRUE(HeatRecorder::Create(o).ok());
}

TEST(HeatRecorderTest, CountsInt32IdsThroughLog2Phy) {
  auto recorder = MakeRecorder(FixtureOptions());
  // 3 tokens x top-2.
  const std::vector<int32_t> ids = {7, 2, 0, 7, 2, 5};
  recorder->RecordTopk(0, ids, kRank0Log2Phy);
  recorder->EndStep(3);
  HeatSnapshot snap = recorder->Snapshot();
  EXPECT_EQ(snap.num_layers, 1);
  EXPECT_EQ(snap.num_slots, 10);
  EXPECT_EQ(snap.steps_counted, 1);
  EXPECT_EQ(snap.dropped_ids, 0);
  EXPECT_EQ(WindowRow(snap, 0),
            (std::vector<int64_t>{2, 2, 1, 0, 1, 0, 0, 0, 0, 0}));
  ASSERT_EQ(snap.num_samples, 1);
  EXPECT_EQ(SampleRow(snap, 0, 0), WindowRow(snap, 0));
}

TEST(HeatRecorderTest, CountsInt64IdsThroughLog2Phy) {
  auto recorder = MakeRecorder(FixtureOptions(2));
  const std::vector<int64_t> ids = {7, 2, 1, 6, 4, 7};
  recorder->RecordTopk(1, ids, kRank1Log2Phy);
  recorder->RecordTopk(0, ids, kRank0Log2Phy);
  recorder->EndStep(3);
  HeatSnapshot snap = recorder->Snapshot();
  EXPECT_EQ(snap.dropped_ids, 0);
  // Rank 0 sends 7 to slot 0, 2 to 1, and 1, 6, 4 to rank 1 (6, 5, 7).
  EXPECT_EQ(WindowRow(snap, 0),
            (std::vector<int64_t>{2, 1, 0, 0, 0, 1, 1, 1, 0, 0}));
  // Rank 1 keeps 7 and 2 on its own replicas (8 and 9).
  EXPECT_EQ(WindowRow(snap, 1),
            (std::vector<int64_t>{0, 0, 0, 0, 0, 1, 1, 1, 2, 1}));
}

TEST(HeatRecorderTest, OutOfRangeAndUnmappedIdsAreDropped) {
  auto recorder = MakeRecorder(FixtureOptions());
  std::vector<int32_t> log2phy = kRank0Log2Phy;
  log2phy[3] = -1;  // Expert 3 unmapped.
  log2phy[5] = 10;  // Not a slot (>= num_slots): dropped too.
  const std::vector<int32_t> ids32 = {-1,
                                      8,
                                      100,
                                      std::numeric_limits<int32_t>::min(),
                                      std::numeric_limits<int32_t>::max(),
                                      3,
                                      5,
                                      7};
  recorder->RecordTopk(0, ids32, log2phy);
  const std::vector<int64_t> ids64 = {-1, 8, int64_t{1} << 32,
                                      std::numeric_limits<int64_t>::min(), 0};
  recorder->RecordTopk(0, ids64, log2phy);
  recorder->EndStep(1);
  HeatSnapshot snap = recorder->Snapshot();
  EXPECT_EQ(snap.dropped_ids, 7 + 4);
  EXPECT_EQ(WindowRow(snap, 0),
            (std::vector<int64_t>{1, 0, 1, 0, 0, 0, 0, 0, 0, 0}));
}

TEST(HeatRecorderTest, DroppedIdsCountedElsewhereJoinTheStep) {
  auto recorder = MakeRecorder(FixtureOptions());
  recorder->RecordDroppedIds(5);
  recorder->RecordDroppedIds(-3);  // Ignored.
  recorder->EndStep(1);
  recorder->RecordDroppedIds(2);
  EXPECT_EQ(recorder->Snapshot().dropped_ids, 5);  // The step not ended.
  recorder->EndStep(1);
  EXPECT_EQ(recorder->Snapshot().dropped_ids, 7);
}

// Differential test against a one-line reference count: call sizes around
// the lane threshold (2 * (bit_ceil(E) + 1)) and the 4096-id block, clean ids
// (the fast path), mixed ids (blocks undone and clamped) and clean ids with
// one bad id in the last block; E a power of two and not (ids in
// [E, bit_ceil(E)) are dropped).
TEST(HeatRecorderTest, MatchesReferenceCountAtEverySize) {
  struct Shape {
    int num_experts;
    int num_slots;
  };
  enum class Ids { kClean, kMixed, kLastBad };
  for (const Shape shape :
       {Shape{8, 10}, Shape{5, 7}, Shape{256, 288}, Shape{160, 180}}) {
    const uint64_t seed = 20240611u + static_cast<uint64_t>(shape.num_experts);
    SCOPED_TRACE("E=" + std::to_string(shape.num_experts) +
                 " seed=" + std::to_string(seed));
    std::mt19937_64 rng(seed);
    HeatRecorderOptions options;
    options.num_layers = 2;
    options.num_experts = shape.num_experts;
    options.num_slots = shape.num_slots;
    options.ring_steps = 1;
    auto recorder = MakeRecorder(options);
    // log2phy: a random slot per expert, one unmapped, one past the slots.
    std::vector<int32_t> log2phy(shape.num_experts);
    std::uniform_int_distribution<int32_t> slot_dist(0, shape.num_slots - 1);
    for (int32_t& s : log2phy) s = slot_dist(rng);
    log2phy[1] = -1;
    log2phy[2] = shape.num_slots;

    std::uniform_int_distribution<int64_t> clean_dist(0, shape.num_experts - 1);
    std::uniform_int_distribution<int64_t> mixed_dist(
        -3, 2 * shape.num_experts + 2);
    int64_t total_steps = 0;
    for (const size_t n : {0, 1, 7, 13, 14, 15, 17, 18, 19, 513, 514, 515, 1000,
                           4096, 4099, 10000}) {
      for (const Ids kind : {Ids::kClean, Ids::kMixed, Ids::kLastBad}) {
        SCOPED_TRACE("n=" + std::to_string(n) +
                     " kind=" + std::to_string(static_cast<int>(kind)));
        std::vector<int64_t> ids64(n);
        for (int64_t& id : ids64) {
          id = kind == Ids::kMixed ? mixed_dist(rng) : clean_dist(rng);
        }
        if (kind == Ids::kLastBad && n > 1) {
          ids64[n - 1] = int64_t{1} << 20;
          ids64[n / 2] = -1;
        }
        std::vector<int32_t> ids32(ids64.begin(), ids64.end());
        std::vector<int64_t> expected(static_cast<size_t>(shape.num_slots), 0);
        int64_t expected_dropped = 0;
        for (const int64_t id : ids64) {
          const bool mapped = id >= 0 && id < shape.num_experts &&
                              log2phy[id] >= 0 && log2phy[id] < shape.num_slots;
          if (mapped) {
            expected[log2phy[id]] += 2;  // Counted as int32 and as int64.
          } else {
            expected_dropped += 2;
          }
        }
        const int64_t dropped_before = recorder->Snapshot().dropped_ids;
        recorder->RecordTopk(1, ids32, log2phy);
        recorder->RecordTopk(1, ids64, log2phy);
        recorder->EndStep(1);
        ++total_steps;
        HeatSnapshot snap = recorder->Snapshot();
        ASSERT_EQ(snap.num_samples, 1);
        EXPECT_EQ(SampleRow(snap, 0, 1), expected);
        EXPECT_EQ(SampleRow(snap, 0, 0),
                  std::vector<int64_t>(expected.size(), 0));
        EXPECT_EQ(snap.dropped_ids - dropped_before, expected_dropped);
        EXPECT_EQ(snap.steps_counted, total_steps);
      }
    }
  }
}

TEST(HeatRecorderTest, RecordSlotCountsAddsAndIgnoresNegatives) {
  auto recorder = MakeRecorder(FixtureOptions(2));
  const std::vector<int64_t> counts = {5, 0, -3, 1, 0, 0, 0, 0, 0, 9};
  recorder->RecordSlotCounts(1, counts);
  recorder->RecordSlotCounts(1, counts);
  recorder->RecordTopk(1, std::vector<int32_t>{7}, kRank0Log2Phy);
  recorder->EndStep(1);
  HeatSnapshot snap = recorder->Snapshot();
  EXPECT_EQ(WindowRow(snap, 1),
            (std::vector<int64_t>{11, 0, 0, 2, 0, 0, 0, 0, 0, 18}));
  EXPECT_EQ(WindowRow(snap, 0), std::vector<int64_t>(10, 0));
  EXPECT_EQ(snap.dropped_ids, 0);
}

// Records one id of expert 7 (slot 0) and ends a step of `num_tokens`.
void OneStep(HeatRecorder& recorder, int64_t num_tokens) {
  recorder.RecordTopk(0, std::vector<int32_t>{7}, kRank0Log2Phy);
  recorder.EndStep(num_tokens);
}

TEST(HeatRecorderTest, StageFilterUsesMaxNumReqs) {
  struct Case {
    HeatStage stage;
    int64_t expected_steps;  // Of the steps with 1, 4, 5, 100 tokens.
  };
  for (const Case c : {Case{HeatStage::kAll, 4}, Case{HeatStage::kPrefill, 2},
                       Case{HeatStage::kDecode, 2}}) {
    SCOPED_TRACE(std::string(HeatStageName(c.stage)));
    HeatRecorderOptions options = FixtureOptions();
    options.stage = c.stage;
    options.max_num_reqs = 4;
    auto recorder = MakeRecorder(options);
    for (const int64_t tokens : {1, 4, 5, 100}) OneStep(*recorder, tokens);
    HeatSnapshot snap = recorder->Snapshot();
    EXPECT_EQ(snap.steps_counted, c.expected_steps);
    EXPECT_EQ(snap.num_samples, c.expected_steps);
    EXPECT_EQ(snap.window[0], c.expected_steps);
  }
}

TEST(HeatRecorderTest, DiscardedStepLeavesNoCounts) {
  HeatRecorderOptions options = FixtureOptions();
  options.stage = HeatStage::kPrefill;
  options.max_num_reqs = 4;
  auto recorder = MakeRecorder(options);
  // A decode step: its counts (and dropped ids) are cleared, not carried.
  recorder->RecordTopk(0, std::vector<int32_t>{7, 7, -1}, kRank0Log2Phy);
  recorder->EndStep(3);
  recorder->RecordTopk(0, std::vector<int32_t>{2}, kRank0Log2Phy);
  recorder->EndStep(8);
  HeatSnapshot snap = recorder->Snapshot();
  EXPECT_EQ(snap.steps_counted, 1);
  EXPECT_EQ(snap.dropped_ids, 0);
  EXPECT_EQ(WindowRow(snap, 0),
            (std::vector<int64_t>{0, 1, 0, 0, 0, 0, 0, 0, 0, 0}));
}

TEST(HeatRecorderTest, RingKeepsLastStepsOldestFirst) {
  HeatRecorderOptions options = FixtureOptions();
  options.ring_steps = 3;
  auto recorder = MakeRecorder(options);
  // Step k routes k + 1 tokens to expert 3 (slot 3).
  for (int k = 0; k < 5; ++k) {
    std::vector<int32_t> ids(static_cast<size_t>(k) + 1, 3);
    recorder->RecordTopk(0, ids, kRank0Log2Phy);
    recorder->EndStep(static_cast<int64_t>(ids.size()));
    HeatSnapshot snap = recorder->Snapshot();
    EXPECT_EQ(snap.num_samples, std::min(k + 1, 3));
  }
  HeatSnapshot snap = recorder->Snapshot();
  EXPECT_EQ(snap.steps_counted, 5);
  EXPECT_EQ(snap.window[3], 1 + 2 + 3 + 4 + 5);  // Every step since Clear.
  ASSERT_EQ(snap.num_samples, 3);
  ASSERT_EQ(snap.samples.size(), 3u * 10u);
  EXPECT_EQ(SampleRow(snap, 0, 0)[3], 3);
  EXPECT_EQ(SampleRow(snap, 1, 0)[3], 4);
  EXPECT_EQ(SampleRow(snap, 2, 0)[3], 5);
}

TEST(HeatRecorderTest, CopyNewestSumsTheNewestSamples) {
  HeatRecorderOptions options = FixtureOptions();
  options.ring_steps = 3;
  auto recorder = MakeRecorder(options);
  std::vector<int64_t> sum(10, -1);
  std::vector<int64_t> totals(3, -1);
  // Nothing recorded yet: nothing summed.
  EXPECT_EQ(recorder->CopyNewest(2, sum, totals), 0);
  EXPECT_EQ(sum, std::vector<int64_t>(10, 0));
  // Step k routes k + 1 tokens to expert 3 (slot 3) and one to expert 7
  // (slot 0).
  for (int k = 0; k < 5; ++k) {
    std::vector<int32_t> ids(static_cast<size_t>(k) + 1, 3);
    ids.push_back(7);
    recorder->RecordTopk(0, ids, kRank0Log2Phy);
    recorder->EndStep(static_cast<int64_t>(ids.size()));
  }
  // The newest two: steps 3 and 4, oldest first.
  EXPECT_EQ(recorder->CopyNewest(2, sum, totals), 2);
  EXPECT_EQ(sum[3], 4 + 5);
  EXPECT_EQ(sum[0], 2);
  EXPECT_EQ(std::accumulate(sum.begin(), sum.end(), int64_t{0}), 11);
  EXPECT_EQ(totals[0], 5);
  EXPECT_EQ(totals[1], 6);
  EXPECT_EQ(totals[2], 0);  // Beyond the steps summed.
  // More than the ring holds: the ring's three.
  EXPECT_EQ(recorder->CopyNewest(8, sum), 3);
  EXPECT_EQ(sum[3], 3 + 4 + 5);
  // After Clear, only what was recorded since.
  recorder->Clear();
  OneStep(*recorder, 1);
  EXPECT_EQ(recorder->CopyNewest(2, sum, totals), 1);
  EXPECT_EQ(totals[0], std::accumulate(sum.begin(), sum.end(), int64_t{0}));
}

TEST(HeatRecorderTest, ClearTakesEffectAtNextEndStep) {
  auto recorder = MakeRecorder(FixtureOptions());
  OneStep(*recorder, 1);
  OneStep(*recorder, 1);
  recorder->RecordTopk(0, std::vector<int32_t>{-1}, kRank0Log2Phy);
  recorder->EndStep(1);
  recorder->Clear();
  // Not applied yet.
  HeatSnapshot before = recorder->Snapshot();
  EXPECT_EQ(before.steps_counted, 3);
  EXPECT_EQ(before.dropped_ids, 1);
  // The next step is the first of the new window.
  recorder->RecordTopk(0, std::vector<int32_t>{2, 2}, kRank0Log2Phy);
  recorder->EndStep(2);
  HeatSnapshot after = recorder->Snapshot();
  EXPECT_EQ(after.steps_counted, 1);
  EXPECT_EQ(after.dropped_ids, 0);
  EXPECT_EQ(WindowRow(after, 0),
            (std::vector<int64_t>{0, 2, 0, 0, 0, 0, 0, 0, 0, 0}));
  ASSERT_EQ(after.num_samples, 1);
  EXPECT_EQ(SampleRow(after, 0, 0), WindowRow(after, 0));
}

TEST(HeatRecorderTest, ClearAppliesEvenWhenTheStepDoesNotCount) {
  HeatRecorderOptions options = FixtureOptions();
  options.stage = HeatStage::kDecode;
  auto recorder = MakeRecorder(options);
  OneStep(*recorder, 1);
  recorder->Clear();
  OneStep(*recorder, 100);  // A prefill step: not counted, but clears.
  HeatSnapshot snap = recorder->Snapshot();
  EXPECT_EQ(snap.steps_counted, 0);
  EXPECT_EQ(snap.num_samples, 0);
  EXPECT_TRUE(snap.samples.empty());
  EXPECT_EQ(WindowRow(snap, 0), std::vector<int64_t>(10, 0));
}

TEST(HeatRecorderTest, LogicalLoadSumsReplicas) {
  auto recorder = MakeRecorder(FixtureOptions(2));
  // Rank 0 and rank 1 each route expert 7 and 2 to their own replica.
  const std::vector<int32_t> ids = {7, 7, 2, 0, 1};
  recorder->RecordTopk(0, ids, kRank0Log2Phy);
  recorder->RecordTopk(0, ids, kRank1Log2Phy);
  recorder->EndStep(5);
  recorder->RecordTopk(1, std::vector<int32_t>{7}, kRank1Log2Phy);
  recorder->EndStep(1);
  HeatSnapshot snap = recorder->Snapshot();
  const Placement placement = FixturePlacement(2);

  LoadMatrix load = snap.LogicalLoad(placement);
  ASSERT_EQ(load.num_layers(), 2);
  ASSERT_EQ(load.num_experts(), 8);
  // Expert 7: 2 on slot 0 (rank 0) + 2 on slot 8 (rank 1).
  EXPECT_EQ(load.row(0)[7], 4);
  EXPECT_EQ(load.row(0)[2], 2);
  EXPECT_EQ(load.row(0)[0], 2);
  EXPECT_EQ(load.row(0)[1], 2);
  EXPECT_EQ(std::accumulate(load.row(0).begin(), load.row(0).end(), 0.0), 10);
  EXPECT_EQ(load.row(1)[7], 1);

  LoadTrace trace = snap.LogicalSamples(placement);
  ASSERT_EQ(trace.num_steps(), 2);
  EXPECT_EQ(trace.at(0, 0, 7), 4);
  EXPECT_EQ(trace.at(0, 1, 7), 0);
  EXPECT_EQ(trace.at(1, 1, 7), 1);
  EXPECT_EQ(trace.Aggregate(), load);
}

// One writer publishing steps with a known total while a reader snapshots
// (and sometimes clears) in a loop: every snapshot must be one published
// state, never a torn step.
TEST(HeatRecorderTest, ConcurrentSnapshotsAreConsistent) {
  constexpr int kLayers = 2;
  constexpr int kExperts = 16;
  constexpr int kRing = 8;
  constexpr int kIdsPerLayer = 64;  // Above the lane threshold (2 * 17).
  constexpr int kSnapshots = 20000;
  HeatRecorderOptions options;
  options.num_layers = kLayers;
  options.num_experts = kExperts;
  options.num_slots = kExperts;
  options.ring_steps = kRing;
  auto recorder = MakeRecorder(options);
  std::vector<int32_t> identity(kExperts);
  std::iota(identity.begin(), identity.end(), 0);
  std::vector<std::vector<int32_t>> ids_of_step;  // Step k: all ids k % E.
  for (int e = 0; e < kExperts; ++e) ids_of_step.emplace_back(kIdsPerLayer, e);

  // The writer runs until the reader is done; the reader starts after the
  // writer's first step and goes on until both did enough, so they overlap.
  constexpr int64_t kMinSteps = 2000;
  std::atomic<bool> stop{false};
  std::atomic<int64_t> steps{0};
  std::thread writer([&] {
    for (int64_t k = 0; !stop.load(std::memory_order_relaxed); ++k) {
      for (int l = 0; l < kLayers; ++l) {
        recorder->RecordTopk(l, ids_of_step[k % kExperts], identity);
      }
      recorder->EndStep(kIdsPerLayer);
      steps.store(k + 1, std::memory_order_relaxed);
    }
  });

  int64_t snapshots = 0;
  int64_t failures = 0;
  auto check = [&](const HeatSnapshot& snap) {
    const int64_t total =
        std::accumulate(snap.window.begin(), snap.window.end(), int64_t{0});
    bool ok =
        total == snap.steps_counted * kLayers * kIdsPerLayer &&
        snap.num_samples == std::min<int64_t>(snap.steps_counted, kRing) &&
        snap.samples.size() ==
            static_cast<size_t>(snap.num_samples) * kLayers * kExperts &&
        snap.dropped_ids == 0;
    // Each sample: all of a step's ids on one slot, the same in every layer;
    // consecutive samples on consecutive slots.
    int previous_slot = -1;
    std::vector<int64_t> sample_sum(snap.window.size(), 0);
    for (int t = 0; ok && t < snap.num_samples; ++t) {
      int slot = -1;
      for (int l = 0; l < kLayers; ++l) {
        const std::vector<int64_t> row = SampleRow(snap, t, l);
        for (int s = 0; s < kExperts; ++s) {
          sample_sum[static_cast<size_t>(l) * kExperts + s] += row[s];
          if (row[s] == 0) continue;
          ok = ok && row[s] == kIdsPerLayer && (slot == -1 || slot == s);
          slot = s;
        }
      }
      ok = ok && slot >= 0 &&
           (previous_slot < 0 || slot == (previous_slot + 1) % kExperts);
      previous_slot = slot;
    }
    if (ok && snap.steps_counted <= kRing) ok = sample_sum == snap.window;
    if (!ok && ++failures <= 3) {
      ADD_FAILURE() << "inconsistent snapshot: steps_counted "
                    << snap.steps_counted << ", window total " << total
                    << ", num_samples " << snap.num_samples;
    }
  };
  while (steps.load(std::memory_order_relaxed) == 0) std::this_thread::yield();
  // Sanitizers slow snapshots down: stop early after a second.
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(1);
  for (; (snapshots < kSnapshots &&
          std::chrono::steady_clock::now() < deadline) ||
         steps.load(std::memory_order_relaxed) < kMinSteps;
       ++snapshots) {
    check(recorder->Snapshot());
    if (snapshots % 50 == 49) recorder->Clear();
  }
  stop.store(true, std::memory_order_relaxed);
  writer.join();
  const HeatSnapshot last = recorder->Snapshot();
  check(last);
  EXPECT_GE(steps.load(), kMinSteps);
  EXPECT_EQ(failures, 0);
}

TEST(HeatRecorderTest, HotPathDoesNotAllocate) {
  if (!testing_util::AllocationsCounted()) {
    GTEST_SKIP() << "allocations are not counted under ThreadSanitizer";
  }
  HeatRecorderOptions options;
  options.num_layers = 3;
  options.num_experts = 256;
  options.num_slots = 288;
  options.ring_steps = 2;
  options.stage = HeatStage::kDecode;
  options.max_num_reqs = 256;
  auto recorder = MakeRecorder(options);
  std::vector<int32_t> log2phy(256);
  std::iota(log2phy.begin(), log2phy.end(), 0);
  std::vector<int32_t> small_ids = {1, 2, 300, -1};
  std::vector<int32_t> clean_ids(8192);  // The fast path.
  for (size_t i = 0; i < clean_ids.size(); ++i) {
    clean_ids[i] = static_cast<int32_t>(i * 5 % 256);
  }
  std::vector<int32_t> ids32(8192);  // Some out of range: the clamped path.
  std::vector<int64_t> ids64(8192);
  for (size_t i = 0; i < ids32.size(); ++i) {
    ids32[i] = static_cast<int32_t>(i * 7 % 260);
    ids64[i] = static_cast<int64_t>(i * 13 % 270) - 5;
  }
  std::vector<int64_t> slot_counts(288, 2);
  std::vector<int32_t> identity(288);  // A migration of layer 1.
  std::vector<int32_t> shifted(288);
  for (int p = 0; p < 288; ++p) {
    identity[p] = p % 256;
    shifted[p] = (p + 1) % 256;
  }

  const int64_t before = testing_util::ThreadAllocations();
  for (int step = 0; step < 6; ++step) {
    for (int l = 0; l < 3; ++l) {
      recorder->RecordTopk(l, small_ids, log2phy);
      recorder->RecordTopk(l, clean_ids, log2phy);
      recorder->RecordTopk(l, ids32, log2phy);
      recorder->RecordTopk(l, ids64, log2phy);
      recorder->RecordSlotCounts(l, slot_counts);
    }
    if (step == 3) recorder->Clear();
    if (step == 2) recorder->RemapLayer(1, identity, shifted);
    recorder->EndStep(step == 4 ? 1000 : 64);  // Step 4 is discarded.
  }
  EXPECT_EQ(testing_util::ThreadAllocations() - before, 0);

  // The counter works: Snapshot() allocates.
  const HeatSnapshot snap = recorder->Snapshot();
  EXPECT_GT(testing_util::ThreadAllocations() - before, 0);
  EXPECT_EQ(snap.steps_counted, 2);  // Steps 3 (after the Clear) and 5.
  EXPECT_EQ(snap.num_samples, 2);
}

// The fixture layer with experts 7 and 0 traded: 0 on slots 0 and 8 (two
// replicas), 7 on slot 2 alone.
const std::vector<int32_t> kRemappedLayer = {0, 2, 7, 3, 5, 6, 1, 4, 0, 2};

TEST(HeatRecorderTest, RemapLayerMovesEachExpertsTokensToItsNewSlots) {
  auto recorder = MakeRecorder(FixtureOptions(/*num_layers=*/2));
  const std::vector<int64_t> counts = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  const std::vector<int64_t> other = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
  for (int step = 0; step < 3; ++step) {  // The third is in progress.
    recorder->RecordSlotCounts(0, counts);
    recorder->RecordSlotCounts(1, other);
    if (step < 2) recorder->EndStep(3);
  }
  const HeatSnapshot before = recorder->Snapshot();
  recorder->RemapLayer(0, kFixtureLayer, kRemappedLayer);
  recorder->EndStep(3);
  const HeatSnapshot after = recorder->Snapshot();

  // Per step: expert 7 had 1 + 9 on slots 0 and 8 -> 10 on slot 2; expert 0
  // had 3 on slot 2 -> 2 and 1 on slots 0 and 8 (the lower slot takes the
  // odd token); expert 2 had 2 + 10 on slots 1 and 9 -> 6 and 6; the others
  // stay.
  const std::vector<int64_t> remapped = {2, 6, 10, 4, 5, 6, 7, 8, 1, 6};
  ASSERT_EQ(after.num_samples, 3);
  for (int sample = 0; sample < 3; ++sample) {
    EXPECT_EQ(SampleRow(after, sample, 0), remapped) << "sample " << sample;
    EXPECT_EQ(SampleRow(after, sample, 1), other) << "sample " << sample;
  }
  // The window: the two ended steps' sum remapped as one (expert 0's 6
  // tokens split 3 and 3), then the remapped step in progress added.
  EXPECT_EQ(WindowRow(after, 0),
            (std::vector<int64_t>{5, 18, 30, 12, 15, 18, 21, 24, 4, 18}));
  EXPECT_EQ(WindowRow(after, 1),
            (std::vector<int64_t>{3, 3, 3, 3, 3, 3, 3, 3, 3, 3}));
  EXPECT_EQ(after.steps_counted, 3);

  // The logical load is the same, read through the new placement.
  Placement old_map = FixturePlacement(2);
  Placement new_map = FixturePlacement(2);
  std::copy(kRemappedLayer.begin(), kRemappedLayer.end(),
            new_map.mutable_layer(0).begin());
  const LoadMatrix was = before.LogicalLoad(old_map);
  const LoadMatrix now = after.LogicalLoad(new_map);
  for (int e = 0; e < 8; ++e) {
    EXPECT_EQ(now.at(0, e), was.at(0, e) * 3 / 2) << "expert " << e;
    EXPECT_EQ(now.at(1, e), was.at(1, e) * 3 / 2) << "expert " << e;
  }
}

TEST(HeatRecorderDeathTest, RemapLayerRejectsBadPlacements) {
  auto recorder = MakeRecorder(FixtureOptions());
  const std::vector<int32_t> short_layer = {7, 2, 0};
  std::vector<int32_t> bad_expert(kFixtureLayer);
  bad_expert[4] = 8;
  EXPECT_DEATH(recorder->RemapLayer(1, kFixtureLayer, kRemappedLayer),
               "layer out of range");
  EXPECT_DEATH(recorder->RemapLayer(0, short_layer, kRemappedLayer),
               "num_slots entries");
  EXPECT_DEATH(recorder->RemapLayer(0, kFixtureLayer, bad_expert),
               "expert out of range");
}

TEST(HeatRecorderDeathTest, LayerOutOfRangeAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  auto recorder = MakeRecorder(FixtureOptions(2));
  const std::vector<int32_t> ids = {1};
  EXPECT_DEATH(recorder->RecordTopk(2, ids, kRank0Log2Phy),
               "layer out of range");
  EXPECT_DEATH(recorder->RecordSlotCounts(-1, std::vector<int64_t>(10, 0)),
               "layer out of range");
  EXPECT_DEATH(recorder->RecordTopk(0, ids, std::vector<int32_t>(7, 0)),
               "log2phy");
}

}  // namespace
}  // namespace eplb
