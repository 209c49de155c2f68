// The replay through the engine seam, in one process: outputs verified
// through migrations, corrupted transfers never committed, a forged checksum
// caught by the outputs, a failed rank survived, and the JSON schema.
#include "eplb/sim/replay.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <vector>

#include "eplb/io.h"
#include "eplb/sim/expert_ffn.h"

namespace eplb {
namespace {

// The first 640 trace steps of the shipped trace (40 replay steps of 16).
const LoadTrace& ShortTrace() {
  static const LoadTrace* const trace = [] {
    StatusOr<LoadTrace> full =
        ReadLoadFile(std::string(EPLB_SOURCE_DIR) +
                     "/data/dsv2lite-puffin/prefill_by_prompt.csv");
    EXPECT_TRUE(full.ok()) << full.status().ToString();
    const int steps = std::min(640, full->num_steps());
    auto* t = new LoadTrace(steps, full->num_layers(), full->num_experts());
    for (int s = 0; s < steps; ++s) {
      for (int l = 0; l < full->num_layers(); ++l) {
        for (int e = 0; e < full->num_experts(); ++e) {
          t->at(s, l, e) = full->at(s, l, e);
        }
      }
    }
    return t;
  }();
  return *trace;
}

ReplayOptions Options() {
  const LoadTrace& trace = ShortTrace();
  ReplayOptions o;
  const ReplayDefaults d = DefaultReplay(/*shipped_trace=*/true);
  o.model = ModelForShape(trace.num_layers(), trace.num_experts());
  o.hardware = *FindHardwareProfile("a2");
  o.config = d.config;
  o.config.num_redundant_experts = 4;
  o.topology = *MakeTopologyFromRedundant(trace.num_experts(), 4, 4);
  o.batch_steps = d.batch_steps;
  o.pace = false;
  o.verify_outputs = true;
  return o;
}

TEST(ExpertFfnTest, AByteWrongAnywhereChangesTheWeights) {
  std::vector<std::byte> bytes(4099);
  for (size_t i = 0; i < bytes.size(); ++i) {
    bytes[i] = static_cast<std::byte>((i * 131 + 7) & 0xff);
  }
  FfnWeights want;
  FoldExpertWeights(bytes, &want);
  for (size_t i = 0; i < bytes.size(); i += 97) {
    for (std::byte flip : {std::byte{0x01}, std::byte{0x80}}) {
      std::vector<std::byte> bad = bytes;
      bad[i] ^= flip;
      FfnWeights got;
      FoldExpertWeights(bad, &got);
      EXPECT_FALSE(SameBits(got.w, want.w, kFfnWeightCount)) << i;
    }
  }
  // The last, partial word too.
  bytes.back() ^= std::byte{0x10};
  FfnWeights tail;
  FoldExpertWeights(bytes, &tail);
  EXPECT_FALSE(SameBits(tail.w, want.w, kFfnWeightCount));
  // Same weights, same activation: the same output bit for bit.
  float x[kFfnModel], y1[kFfnModel], y2[kFfnModel];
  TokenActivation(3, 1, 5, 0, x);
  ExpertFfn(want, x, y1);
  ExpertFfn(want, x, y2);
  EXPECT_TRUE(SameBits(y1, y2, kFfnModel));
  for (float v : x) {
    EXPECT_GE(v, -1.0f);
    EXPECT_LT(v, 1.0f);
  }
}

TEST(ReplayTest, DefaultsAreOneSet) {
  const ReplayDefaults shipped = DefaultReplay(true);
  EXPECT_EQ(shipped.ranks, 16);
  EXPECT_EQ(shipped.batch_steps, 16);
  EXPECT_EQ(shipped.config.num_redundant_experts, 16);
  EXPECT_TRUE(shipped.config.dynamic_eplb);
  EXPECT_EQ(shipped.config.expert_heat_collection_interval, 8);
  EXPECT_EQ(shipped.config.algorithm_execution_interval, 1);
  const ReplayDefaults other = DefaultReplay(false);
  EXPECT_EQ(other.ranks, 8);
  EXPECT_EQ(other.batch_steps, 1);
  EXPECT_EQ(other.config.num_redundant_experts, 8);
}

TEST(ReplayTest, OutputsStayExactThroughMigrations) {
  StatusOr<ReplayResult> r = RunReplay(ShortTrace(), Options());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->steps, 40);
  EXPECT_GT(r->rebalances, 0);
  EXPECT_GT(r->layers_committed, 0);
  EXPECT_GT(r->bytes_moved, 0);
  EXPECT_GT(r->outputs_verified, 0);
  EXPECT_EQ(r->outputs_mismatched, 0);
  EXPECT_EQ(r->plan_hash_mismatches, 0);
}

TEST(ReplayTest, CorruptedTransfersNeverCommit) {
  ReplayOptions o = Options();
  o.faults.corrupt_every = 7;
  StatusOr<ReplayResult> r = RunReplay(ShortTrace(), o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_GT(r->layers_aborted, 0);
  EXPECT_GT(r->outputs_verified, 0);
  EXPECT_EQ(r->outputs_mismatched, 0);
}

// The check that proves the others: weights corrupted past the migration's
// own check (the transport forges the checksum) must show in the outputs.
// Forged transfers pass the check, so far fewer layers abort than with the
// same corruption unforged. One still may: once a forged copy committed, the
// engine remembers its checksum for that expert, and a later transfer of
// the expert from an intact replica no longer matches it.
TEST(ReplayTest, ForgedChecksumsAreCaughtByTheOutputs) {
  ReplayOptions o = Options();
  o.faults.corrupt_every = 7;
  StatusOr<ReplayResult> checked = RunReplay(ShortTrace(), o);
  ASSERT_TRUE(checked.ok()) << checked.status().ToString();
  o.faults.forge_checksums = true;
  StatusOr<ReplayResult> r = RunReplay(ShortTrace(), o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_LT(r->layers_aborted, checked->layers_aborted / 2);
  EXPECT_GT(r->layers_committed, 0);
  EXPECT_GT(r->outputs_mismatched, 0);
}

TEST(ReplayTest, SurvivesAFailedRankWithoutDroppingAToken) {
  ReplayOptions o = Options();
  o.fail_rank = 2;
  o.fail_at_step = 20;
  StatusOr<ReplayResult> r = RunReplay(ShortTrace(), o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->steps, 40);
  EXPECT_EQ(r->ranks_failed, 1);
  EXPECT_EQ(r->final_ranks, 3);
  EXPECT_EQ(r->tokens_dropped, 0);
  EXPECT_GT(r->experts_lost, 0);
  // The lost experts, and replicas that fill the rest of the lost slots.
  EXPECT_GE(r->experts_reloaded, r->experts_lost);
  EXPECT_GT(r->bytes_reloaded, 0);
  EXPECT_GT(r->tokens_delayed, 0);
  EXPECT_GE(r->recovery_steps, 1);
  EXPECT_EQ(r->outputs_mismatched, 0);
  EXPECT_FALSE(r->failed_here);
}

TEST(ReplayTest, RefusesToFailRankZeroOrARankOutOfRange) {
  for (int rank : {0, 4, -2}) {
    ReplayOptions o = Options();
    o.fail_rank = rank;
    o.fail_at_step = 5;
    EXPECT_FALSE(RunReplay(ShortTrace(), o).ok()) << rank;
  }
}

TEST(ReplayTest, JsonCarriesEveryFigure) {
  ReplayOptions o = Options();
  o.verify_outputs = false;
  StatusOr<ReplayResult> r = RunReplay(ShortTrace(), o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const nlohmann::json j =
      nlohmann::json::parse(ReplayResultJson(*r, o, "t.csv", "inprocess"));
  EXPECT_EQ(j["trace"], "t.csv");
  EXPECT_EQ(j["transport"], "inprocess");
  EXPECT_EQ(j["model"], "deepseek-v2-lite");
  EXPECT_EQ(j["quant"], "bf16");
  EXPECT_EQ(j["ranks"], 4);
  EXPECT_EQ(j["experts"], 64);
  EXPECT_EQ(j["layers"], 26);
  EXPECT_EQ(j["redundant"], 4);
  EXPECT_EQ(j["steps"], r->steps);
  EXPECT_EQ(j["layers_committed"], r->layers_committed);
  EXPECT_EQ(j["bytes_moved"], r->bytes_moved);
  EXPECT_DOUBLE_EQ(j["imbalance"]["median"].get<double>(), r->imbalance.median);
  EXPECT_TRUE(j["outputs_mismatched"].is_null());
  for (const char* key :
       {"plan_hash_mismatches", "ranks_failed", "tokens_dropped",
        "tokens_delayed", "recovery_steps", "processes", "final_ranks",
        "baseline_imbalance", "imbalance_steady", "ttft_p99_ms", "wall_ms"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  o.verify_outputs = true;
  EXPECT_EQ(nlohmann::json::parse(
                ReplayResultJson(*r, o, "t", "mpi"))["outputs_mismatched"],
            0);
}

}  // namespace
}  // namespace eplb
