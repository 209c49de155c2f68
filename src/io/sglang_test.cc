// Tests of the SGLang readers and writers: logical_count (real DeepSeek-V3
// dumps, [L][E] and [S][L][E], dense-layer dropping, every error) and
// physical_to_logical_map (round trip, map validation under SGLang's rules,
// co-located replicas, the dense layers' rows).
#include <gtest/gtest.h>

#include <numeric>
#include <string>
#include <vector>

#include "eplb/io.h"

namespace eplb {
namespace {

constexpr char kDsv3Dir[] = EPLB_SOURCE_DIR "/data/dsv3-sglang/";
constexpr char kFixture[] =
    EPLB_SOURCE_DIR "/tests/data/vllm_ascend_expert_map.json";
// DeepSeek's algorithm on DeepSeek-V2-Lite's shipped load at EP8 with 8
// redundant experts, in SGLang's layout: 27 rows, row 0 the dense layer.
constexpr char kDsv2LiteMap[] =
    EPLB_SOURCE_DIR "/tests/data/sglang_dsv2lite_ep8.json";
constexpr char kColocationNote[] =
    ": an expert twice on one rank (DeepSeek's and SGLang's planners allow "
    "it; eplb's policies and vllm-ascend do not)";

TEST(SglangTest, ReadsRealDsv3DumpAs58MoeLayers) {
  const StatusOr<LoadTrace> trace =
      ReadSglangLogicalCount(std::string(kDsv3Dir) + "prefill_in1024.json");
  ASSERT_TRUE(trace.ok()) << trace.status().ToString();
  EXPECT_EQ(trace->num_steps(), 1);
  EXPECT_EQ(trace->num_layers(), 58);  // Rows 0-2 are the dense layers.
  EXPECT_EQ(trace->num_experts(), 256);
  EXPECT_EQ(trace->at(0, 0, 0), 391534.0);  // Row 3 of the file.
  for (int l = 0; l < trace->num_layers(); ++l) {
    const auto row = trace->row(0, l);
    EXPECT_EQ(std::accumulate(row.begin(), row.end(), 0.0), 67108864.0)
        << "layer " << l;
  }
}

TEST(SglangTest, ReadsEveryShippedDump) {
  for (const char* name :
       {"decode_in1000out1000.json", "decode_in1800out100.json",
        "prefill_in1000out1000.json", "prefill_in1024.json",
        "prefill_in2000out100.json", "prefill_in2048.json",
        "prefill_in500out1500.json", "prefill_in512.json"}) {
    SCOPED_TRACE(name);
    const StatusOr<LoadTrace> trace =
        ReadSglangLogicalCount(std::string(kDsv3Dir) + name);
    ASSERT_TRUE(trace.ok()) << trace.status().ToString();
    EXPECT_EQ(trace->num_layers(), 58);
    EXPECT_EQ(trace->num_experts(), 256);
  }
}

TEST(SglangTest, DropsOnlyTheLeadingZeroLayers) {
  const StatusOr<LoadTrace> trace = ParseSglangLogicalCount(
      R"({"logical_count": [[0, 0], [0.0, 0], [1, 2.5], [0, 0], [3, 4]]})");
  ASSERT_TRUE(trace.ok()) << trace.status().ToString();
  EXPECT_EQ(trace->num_steps(), 1);
  EXPECT_EQ(trace->num_layers(), 3);
  EXPECT_EQ(trace->data(), (std::vector<double>{1, 2.5, 0, 0, 3, 4}));
}

TEST(SglangTest, ReadsPerStepDump) {
  const StatusOr<LoadTrace> trace = ParseSglangLogicalCount(
      R"({"logical_count": [[[0, 0], [1, 0], [0, 0]],
                            [[0, 0], [0, 2], [5, 6]]]})");
  ASSERT_TRUE(trace.ok()) << trace.status().ToString();
  EXPECT_EQ(trace->num_steps(), 2);
  EXPECT_EQ(trace->num_layers(), 2);
  EXPECT_EQ(trace->num_experts(), 2);
  EXPECT_EQ(trace->data(), (std::vector<double>{1, 0, 0, 0, 0, 2, 5, 6}));
}

TEST(SglangTest, KeepsLayerThatIsZeroInOnlySomeSteps) {
  const StatusOr<LoadTrace> trace = ParseSglangLogicalCount(
      R"({"logical_count": [[[0, 0], [1, 0]], [[5, 0], [0, 2]]]})");
  ASSERT_TRUE(trace.ok()) << trace.status().ToString();
  EXPECT_EQ(trace->num_layers(), 2);
  EXPECT_EQ(trace->at(1, 0, 0), 5.0);
}

struct BadLogicalCount {
  const char* text;
  const char* want;  // The whole message.
};

TEST(SglangTest, RejectsBadLogicalCount) {
  const BadLogicalCount cases[] = {
      {"", "empty input (no JSON value)"},
      {"{\"logical_count\": [[1, 2]", "malformed JSON: parse error at line 1"},
      {"[[1, 2]]", "top level is an array, not an object"},
      {R"({"counts": [[1]]})", "missing key \"logical_count\""},
      {R"({"logical_count": 5})", "logical_count is 5, not an array"},
      {R"({"logical_count": []})", "logical_count is empty"},
      {R"({"logical_count": [[1, 2], 3]})",
       "logical_count[1] is 3, not an array"},
      {R"({"logical_count": [[1, 2], []]})", "logical_count[1] is empty"},
      {R"({"logical_count": [[1, 2], [1, 2, 3]]})",
       "logical_count[1] has 3 values but the first row has 2"},
      {R"({"logical_count": [[1, 2], [-1, 2]]})",
       "logical_count[1][0]: -1 is negative"},
      {R"({"logical_count": [[1, -0.5]]})",
       "logical_count[0][1]: -0.5 is negative"},
      {R"({"logical_count": [[1, "x"]]})",
       "logical_count[0][1]: \"x\" is not a number"},
      {R"({"logical_count": [[1, true]]})",
       "logical_count[0][1]: true is not a number"},
      {R"({"logical_count": [[null, 1]]})",
       "logical_count[0][0]: null is not a number"},
      {R"({"logical_count": [[1e400, 1]]})",
       "malformed JSON: number overflow parsing '1e400'"},
      {R"({"logical_count": [[[1, 2], [3, 4]], [[1, 2]]]})",
       "logical_count[1] has 1 layers but the first step has 2"},
      {R"({"logical_count": [[[1, 2], [3, 4]], [[1, 2], [3]]]})",
       "logical_count[1][1] has 1 values but the first row has 2"},
      {R"({"logical_count": [[[1, 2]], [[1, -2]]]})",
       "logical_count[1][0][1]: -2 is negative"},
      {R"({"logical_count": [[0, 0], [0, 0]]})",
       "logical_count: all 2 layers are zero (no MoE load)"},
  };
  for (const BadLogicalCount& c : cases) {
    SCOPED_TRACE(c.text);
    const StatusOr<LoadTrace> trace = ParseSglangLogicalCount(c.text);
    ASSERT_FALSE(trace.ok());
    EXPECT_EQ(trace.status().code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(trace.status().message().starts_with(c.want))
        << trace.status().message();
  }
}

TEST(SglangTest, ReadErrorsStartWithPath) {
  const std::string missing = std::string(kDsv3Dir) + "nope.json";
  const StatusOr<LoadTrace> trace = ReadSglangLogicalCount(missing);
  ASSERT_FALSE(trace.ok());
  EXPECT_EQ(trace.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(trace.status().message(), missing + ": no such file");
  const StatusOr<LoadTrace> wrong = ReadSglangLogicalCount(kFixture);
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.status().message(),
            std::string(kFixture) + ": missing key \"logical_count\"");
}

TEST(SglangTest, WritesOneStepAsMatrix) {
  LoadTrace trace(1, 2, 2);
  trace.at(0, 0, 0) = 1;
  trace.at(0, 0, 1) = 2.5;
  trace.at(0, 1, 0) = 3;
  EXPECT_EQ(SglangLogicalCountToJson(trace),
            "{\"logical_count\": [\n  [1, 2.5],\n  [3, 0]\n]}\n");
}

TEST(SglangTest, RoundTripsPerStepTrace) {
  LoadTrace trace(3, 2, 4);
  for (int s = 0; s < 3; ++s) {
    for (int l = 0; l < 2; ++l) {
      for (int e = 0; e < 4; ++e) trace.at(s, l, e) = (s + 1) * 0.1 + l * e;
    }
  }
  const std::string json = SglangLogicalCountToJson(trace);
  const StatusOr<LoadTrace> parsed = ParseSglangLogicalCount(json);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(*parsed, trace);
  EXPECT_EQ(SglangLogicalCountToJson(*parsed), json);
}

TEST(SglangTest, RoundTripsRealDump) {
  const StatusOr<LoadTrace> trace = ReadSglangLogicalCount(
      std::string(kDsv3Dir) + "decode_in1800out100.json");
  ASSERT_TRUE(trace.ok());
  const std::string json = SglangLogicalCountToJson(*trace);
  const StatusOr<LoadTrace> parsed = ParseSglangLogicalCount(json);
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(*parsed, *trace);
}

TEST(SglangTest, PhysicalToLogicalMatchesExpertMap) {
  const StatusOr<Placement> expected =
      ReadExpertMapJson(kFixture, MapExpectations{});
  ASSERT_TRUE(expected.ok());
  const StatusOr<Placement> placement = ParseSglangPhysicalToLogical(
      R"({"physical_to_logical_map": [[7, 2, 0, 3, 5, 6, 1, 4, 7, 2]]})", 2);
  ASSERT_TRUE(placement.ok()) << placement.status().ToString();
  EXPECT_EQ(*placement, *expected);
  EXPECT_EQ(SglangPhysicalToLogicalToJson(*placement),
            "{\"physical_to_logical_map\": [\n"
            "  [7, 2, 0, 3, 5, 6, 1, 4, 7, 2]\n"
            "]}\n");
}

TEST(SglangTest, PhysicalToLogicalRoundTrips) {
  Placement placement(3, 4, 3, 10);
  for (int l = 0; l < 3; ++l) {
    for (int p = 0; p < 12; ++p) {
      placement.set(l, p / 3, p % 3, (p + l) % 10);
    }
  }
  const std::string json = SglangPhysicalToLogicalToJson(placement);
  const StatusOr<Placement> parsed = ParseSglangPhysicalToLogical(json, 4, 10);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(*parsed, placement);
  EXPECT_EQ(SglangPhysicalToLogicalToJson(*parsed), json);
}

struct BadPhysicalMap {
  const char* rows;  // The value of "physical_to_logical_map".
  int num_ranks;
  int num_experts;
  const char* want;  // A substring of the message.
};

TEST(SglangTest, RejectsBadPhysicalToLogical) {
  const BadPhysicalMap cases[] = {
      {"[[7, 2, 0, 3, 5, 6, 1, 4, 7, 2]]", 3, 0,
       "physical_to_logical_map[0] has 10 slots, not a positive multiple of 3 "
       "ranks"},
      {"[[7, 2, 0, 3, 5, 6, 1, 4, 7, 2]]", 0, 0, "num_ranks must be positive"},
      {"[]", 2, 0, "physical_to_logical_map is empty"},
      {"{}", 2, 0, "physical_to_logical_map is an object, not an array"},
      {"[[0, 1, 2, 3], [0, 1, 2]]", 2, 0,
       "physical_to_logical_map[1] is an array of 3, expected an array of 4 "
       "ids"},
      {"[[0, 1, 2, 3], 7]", 2, 0,
       "physical_to_logical_map[1] is 7, expected an array of 4 ids"},
      {"[[0, 0.5, 2, 3]]", 2, 0,
       "physical_to_logical_map[0][1]: 0.5 is not an expert id"},
      {"[[0, 1, true, 3]]", 2, 0,
       "physical_to_logical_map[0][2]: true is not an expert id"},
      {"[[7, 2, 0, 3, 5, 6, 1, 4, 9, 2]]", 2, 8,
       "layer 0, device 1, slot 3: expert 9 out of range [0, 8)"},
      {"[[7, 2, 0, 3, 5, 6, 1, 4, -1, 2]]", 2, 0,
       "layer 0, device 1, slot 3: expert -1 out of range [0, 8)"},
      {"[[7, 2, 0, 3, 4, 6, 1, 4, 7, 2]]", 2, 0,
       "layer 0: expert 5 is on no device"},
      {"[[0, 1, 2, 3]]", 2, 20, "20 experts do not fit in 4 slots per layer"},
      {"[[0, 1, 2, 4000000000]]", 2, 0,
       "physical_to_logical_map[0][3]: 4000000000 is not an expert id"},
  };
  for (const BadPhysicalMap& c : cases) {
    SCOPED_TRACE(c.rows);
    const std::string text =
        std::string("{\"physical_to_logical_map\": ") + c.rows + "}";
    const StatusOr<Placement> placement =
        ParseSglangPhysicalToLogical(text, c.num_ranks, c.num_experts);
    ASSERT_FALSE(placement.ok());
    EXPECT_EQ(placement.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(placement.status().message().find(c.want), std::string::npos)
        << placement.status().message();
  }
}

TEST(SglangTest, PhysicalToLogicalNeedsItsKey) {
  const StatusOr<Placement> placement =
      ParseSglangPhysicalToLogical(R"({"logical_count": [[1]]})", 1);
  ASSERT_FALSE(placement.ok());
  EXPECT_EQ(placement.status().message(),
            "missing key \"physical_to_logical_map\"");
}

TEST(SglangTest, PhysicalToLogicalCountsProblems) {
  const StatusOr<Placement> placement = ParseSglangPhysicalToLogical(
      R"({"physical_to_logical_map": [[0, 0.5, 2, "x"]]})", 2);
  ASSERT_FALSE(placement.ok());
  EXPECT_EQ(placement.status().message(),
            "2 problems in physical_to_logical_map; first: "
            "physical_to_logical_map[0][1]: 0.5 is not an expert id");
}

// SGLang's planner may put two replicas of an expert on one rank: read, and
// the warning names the layers.
TEST(SglangTest, PhysicalToLogicalAcceptsColocatedReplicas) {
  std::vector<std::string> warnings;
  const StatusOr<Placement> placement = ParseSglangPhysicalToLogical(
      R"({"physical_to_logical_map": [[0, 1, 2, 3, 4, 5, 6, 7, 0, 1],
                                      [7, 2, 0, 3, 7, 6, 1, 4, 5, 2]]})",
      2, 0, &warnings);
  ASSERT_TRUE(placement.ok()) << placement.status().ToString();
  EXPECT_EQ(placement->at(1, 0, 4), 7);
  EXPECT_EQ(warnings,
            std::vector<std::string>{"layer 1" + std::string(kColocationNote)});
  // Without a warnings vector the placement is the same.
  const StatusOr<Placement> quiet = ParseSglangPhysicalToLogical(
      R"({"physical_to_logical_map": [[0, 1, 2, 3, 4, 5, 6, 7, 0, 1],
                                      [7, 2, 0, 3, 7, 6, 1, 4, 5, 2]]})",
      2);
  ASSERT_TRUE(quiet.ok());
  EXPECT_EQ(*quiet, *placement);
}

TEST(SglangTest, ReadsDsv2LiteMapWithItsDenseRow) {
  const std::string colocated =
      "layers 0, 2, 4, 5, 9, 10, 13, 19, 20, 25" + std::string(kColocationNote);
  // The model known (27 hidden layers, the first dense): row 0 is dropped.
  std::vector<std::string> warnings;
  StatusOr<Placement> map =
      ReadSglangPhysicalToLogical(kDsv2LiteMap,
                                  SglangMapOptions{.num_ranks = 8,
                                                   .num_experts = 64,
                                                   .num_hidden_layers = 27,
                                                   .num_dense_layers = 1},
                                  &warnings);
  ASSERT_TRUE(map.ok()) << map.status().ToString();
  EXPECT_EQ(map->num_layers(), 26);
  EXPECT_EQ(map->num_ranks(), 8);
  EXPECT_EQ(map->slots_per_rank(), 9);
  EXPECT_EQ(map->num_experts(), 64);
  EXPECT_EQ(
      warnings,
      (std::vector<std::string>{
          "dropped the first 1 rows of the 27 in physical_to_logical_map: "
          "dense layers (SGLang sizes its map by every hidden layer)",
          colocated}));
  // Only the hidden layers known: the leading row in the initial placement
  // is taken as dense.
  warnings.clear();
  StatusOr<Placement> detected = ReadSglangPhysicalToLogical(
      kDsv2LiteMap, SglangMapOptions{.num_ranks = 8, .num_hidden_layers = 27},
      &warnings);
  ASSERT_TRUE(detected.ok()) << detected.status().ToString();
  EXPECT_EQ(*detected, *map);
  ASSERT_EQ(warnings.size(), 2u);
  EXPECT_NE(warnings[0].find("taken as dense because they hold the initial "
                             "placement"),
            std::string::npos)
      << warnings[0];
  // Nothing known: every row is a layer, the dense one included.
  warnings.clear();
  StatusOr<Placement> all = ReadSglangPhysicalToLogical(
      kDsv2LiteMap, SglangMapOptions{.num_ranks = 8}, &warnings);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  EXPECT_EQ(all->num_layers(), 27);
  EXPECT_EQ(warnings, std::vector<std::string>{
                          "layers 1, 3, 5, 6, 10, 11, 14, 20, 21, 26" +
                          std::string(kColocationNote)});
}

TEST(SglangTest, WritesAndDropsDenseRows) {
  Placement placement(2, 2, 3, 4);
  const int32_t rows[2][6] = {{3, 1, 2, 0, 1, 3}, {2, 0, 1, 3, 2, 1}};
  for (int l = 0; l < 2; ++l) {
    for (int p = 0; p < 6; ++p) placement.set(l, p / 3, p % 3, rows[l][p]);
  }
  const std::string json = SglangPhysicalToLogicalToJson(placement, 3);
  EXPECT_EQ(json,
            "{\"physical_to_logical_map\": [\n"
            "  [0, 1, 2, 3, 0, 1],\n"
            "  [0, 1, 2, 3, 0, 1],\n"
            "  [0, 1, 2, 3, 0, 1],\n"
            "  [3, 1, 2, 0, 1, 3],\n"
            "  [2, 0, 1, 3, 2, 1]\n"
            "]}\n");
  EXPECT_EQ(SglangPhysicalToLogicalToJson(placement, 0),
            SglangPhysicalToLogicalToJson(placement));
  for (const int dense : {3, -1}) {
    SCOPED_TRACE(dense);
    std::vector<std::string> warnings;
    const StatusOr<Placement> back = ParseSglangPhysicalToLogical(
        json,
        SglangMapOptions{
            .num_ranks = 2, .num_hidden_layers = 5, .num_dense_layers = dense},
        &warnings);
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(*back, placement);
    ASSERT_EQ(warnings.size(), 1u);
    EXPECT_TRUE(warnings[0].starts_with("dropped the first 3 rows of the 5"))
        << warnings[0];
  }
  // A map of the MoE layers only, the model known: nothing to drop.
  std::vector<std::string> warnings;
  const StatusOr<Placement> moe_only = ParseSglangPhysicalToLogical(
      SglangPhysicalToLogicalToJson(placement),
      SglangMapOptions{
          .num_ranks = 2, .num_hidden_layers = 5, .num_dense_layers = 3},
      &warnings);
  ASSERT_TRUE(moe_only.ok()) << moe_only.status().ToString();
  EXPECT_EQ(*moe_only, placement);
  EXPECT_TRUE(warnings.empty());
}

TEST(SglangTest, DenseRowsThatDoNotFitAreErrors) {
  Placement placement(2, 2, 3, 4);
  for (int l = 0; l < 2; ++l) {
    for (int p = 0; p < 6; ++p) placement.set(l, p / 3, p % 3, (p + 1) % 4);
  }
  const std::string five_rows = SglangPhysicalToLogicalToJson(placement, 3);
  struct Case {
    SglangMapOptions options;
    const char* want;
  };
  const Case cases[] = {
      {{.num_ranks = 2, .num_hidden_layers = 4},
       "physical_to_logical_map has 5 rows but the model has 4 hidden layers"},
      {{.num_ranks = 2, .num_hidden_layers = 6, .num_dense_layers = 3},
       "physical_to_logical_map has 5 rows but the model has 6 hidden layers "
       "(3 dense, 3 MoE)"},
      {{.num_ranks = 2, .num_hidden_layers = 5, .num_dense_layers = 5},
       "num_hidden_layers must be >= 0 and num_dense_layers in [-1, "
       "num_hidden_layers), got 5 and 5"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.want);
    const StatusOr<Placement> parsed =
        ParseSglangPhysicalToLogical(five_rows, c.options);
    ASSERT_FALSE(parsed.ok());
    EXPECT_EQ(parsed.status().message(), c.want);
  }
  // All hidden layers but no leading row in the initial placement: nothing
  // is dropped, and the warning says so.
  std::vector<std::string> warnings;
  const StatusOr<Placement> kept = ParseSglangPhysicalToLogical(
      SglangPhysicalToLogicalToJson(placement),
      SglangMapOptions{.num_ranks = 2, .num_hidden_layers = 2}, &warnings);
  ASSERT_TRUE(kept.ok()) << kept.status().ToString();
  EXPECT_EQ(kept->num_layers(), 2);
  EXPECT_EQ(warnings,
            std::vector<std::string>{
                "no leading row of the 2 in physical_to_logical_map holds "
                "the initial placement, so none was taken as a dense layer "
                "(naming the model makes this exact)"});
}

}  // namespace
}  // namespace eplb
