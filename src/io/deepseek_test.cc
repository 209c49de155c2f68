// Tests of the DeepSeek EPLB triple (phy2log / log2phy / logcnt): the
// written layout, round trips, and consistency checks on reading.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "eplb/io.h"

namespace eplb {
namespace {

using Json = nlohmann::json;

// The vllm-ascend fixture: 1 layer, 2 ranks x 5 slots, 8 experts.
Placement FixturePlacement() {
  Placement placement(1, 2, 5, 8);
  const int32_t slots[] = {7, 2, 0, 3, 5, 6, 1, 4, 7, 2};
  for (int p = 0; p < 10; ++p) placement.set(0, p / 5, p % 5, slots[p]);
  return placement;
}

TEST(DeepSeekTest, WritesTriple) {
  EXPECT_EQ(DeepSeekMapsToJson(FixturePlacement()),
            "{\n"
            "  \"phy2log\": [\n"
            "    [7, 2, 0, 3, 5, 6, 1, 4, 7, 2]\n"
            "  ],\n"
            "  \"log2phy\": [\n"
            "    [[2, -1], [6, -1], [1, 9], [3, -1], [7, -1], [4, -1], "
            "[5, -1], [0, 8]]\n"
            "  ],\n"
            "  \"logcnt\": [\n"
            "    [1, 1, 2, 1, 1, 1, 1, 2]\n"
            "  ]\n"
            "}\n");
}

TEST(DeepSeekTest, RoundTripsManyLayers) {
  constexpr int kLayers = 26, kRanks = 8, kSlots = 9, kExperts = 64;
  Placement placement(kLayers, kRanks, kSlots, kExperts);
  for (int l = 0; l < kLayers; ++l) {
    for (int p = 0; p < kRanks * kSlots; ++p) {
      // Redundant slots (all on the last rank, beside expert 63) hold 8
      // distinct experts below 63.
      const int logical =
          p < kExperts ? p : (p - kExperts + l) % (kExperts - 1);
      placement.set(l, p / kSlots, p % kSlots, logical);
    }
  }
  const std::string json = DeepSeekMapsToJson(placement);
  const StatusOr<Placement> parsed = ParseDeepSeekMaps(json, kRanks, kExperts);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(*parsed, placement);
  EXPECT_EQ(DeepSeekMapsToJson(*parsed), json);
}

TEST(DeepSeekTest, Phy2LogAloneIsEnough) {
  const StatusOr<Placement> parsed =
      ParseDeepSeekMaps(R"({"phy2log": [[7, 2, 0, 3, 5, 6, 1, 4, 7, 2]]})", 2);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(*parsed, FixturePlacement());
}

// DeepSeek's own eplb.py orders log2phy by replica rank, not physical id.
TEST(DeepSeekTest, AcceptsLog2PhyInAnyOrderAndPadding) {
  Json triple = Json::parse(DeepSeekMapsToJson(FixturePlacement()));
  triple["log2phy"][0][2] = Json::array({9, 1});
  triple["log2phy"][0][0] = Json::array({-1, 2, -1});
  const StatusOr<Placement> parsed = ParseDeepSeekMaps(triple.dump(), 2);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(*parsed, FixturePlacement());
}

struct BadTriple {
  const char* name;
  void (*mutate)(Json& triple);
  const char* want;  // The whole message.
};

const BadTriple kBadTriples[] = {
    {"MissingPhy2Log", [](Json& t) { t.erase("phy2log"); },
     "missing key \"phy2log\""},
    {"Phy2LogInvalid", [](Json& t) { t["phy2log"][0][1] = -1; },
     "layer 0, device 0, slot 1: expert -1 out of range [0, 8)"},
    {"Phy2LogNotInteger", [](Json& t) { t["phy2log"][0][3] = 1.5; },
     "phy2log[0][3]: 1.5 is not an expert id"},
    {"Log2PhyWrongReplicas",
     [](Json& t) {
       t["log2phy"][0][2] = Json::array({1, -1});
     },
     "log2phy[0][2] lists physical [1] but phy2log places expert 2 at "
     "physical [1, 9]"},
    {"Log2PhyWrongLayers",
     [](Json& t) { t["log2phy"].push_back(t["log2phy"][0]); },
     "log2phy has 2 layers but phy2log has 1"},
    {"Log2PhyWrongExperts", [](Json& t) { t["log2phy"][0].erase(7); },
     "log2phy[0] has 7 experts but phy2log has 8"},
    {"Log2PhyEntryNotArray", [](Json& t) { t["log2phy"][0][3] = 3; },
     "log2phy[0][3] is 3, not an array"},
    {"Log2PhyIdNotInteger",
     [](Json& t) { t["log2phy"][0][3] = Json::array({"3"}); },
     "log2phy[0][3]: \"3\" is not an integer"},
    {"LogcntWrongCount", [](Json& t) { t["logcnt"][0][7] = 1; },
     "logcnt[0][7] is 1 but phy2log has 2 replicas of expert 7"},
    {"LogcntWrongExperts", [](Json& t) { t["logcnt"][0].push_back(0); },
     "logcnt[0] has 9 experts but phy2log has 8"},
    {"LogcntNotArray", [](Json& t) { t["logcnt"] = 8; },
     "logcnt is 8, not an array"},
    {"LogcntNotInteger", [](Json& t) { t["logcnt"][0][0] = 1.5; },
     "logcnt[0][0]: 1.5 is not an integer"},
};

class BadDeepSeekTest : public testing::TestWithParam<BadTriple> {};

TEST_P(BadDeepSeekTest, NamesTheMismatch) {
  Json triple = Json::parse(DeepSeekMapsToJson(FixturePlacement()));
  GetParam().mutate(triple);
  const StatusOr<Placement> parsed = ParseDeepSeekMaps(triple.dump(), 2);
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(parsed.status().message(), GetParam().want);
}

INSTANTIATE_TEST_SUITE_P(
    DeepSeekTest, BadDeepSeekTest, testing::ValuesIn(kBadTriples),
    [](const testing::TestParamInfo<BadTriple>& param_info) {
      return std::string(param_info.param.name);
    });

TEST(DeepSeekTest, RejectsNonObjectAndMalformed) {
  const StatusOr<Placement> array = ParseDeepSeekMaps("[1]", 2);
  ASSERT_FALSE(array.ok());
  EXPECT_EQ(array.status().message(), "top level is an array, not an object");
  const StatusOr<Placement> malformed = ParseDeepSeekMaps("{\"phy2log\":", 2);
  ASSERT_FALSE(malformed.ok());
  EXPECT_TRUE(malformed.status().message().starts_with("malformed JSON: "))
      << malformed.status().message();
}

// tests/data/deepseek_colocated.json: DeepSeek's algorithm (one node, one
// group) on 3 layers of 8 experts, 12 replicas on 4 GPUs; in layer 1 both
// replicas of expert 2 landed on GPU 3. log2phy lists replicas in DeepSeek's
// order (by replica rank, not physical id).
TEST(DeepSeekTest, ReadsColocatedReplicasWithAWarning) {
  std::vector<std::string> warnings;
  const StatusOr<Placement> map = ReadDeepSeekMaps(
      EPLB_SOURCE_DIR "/tests/data/deepseek_colocated.json", 4, 0, &warnings);
  ASSERT_TRUE(map.ok()) << map.status().ToString();
  EXPECT_EQ(map->num_layers(), 3);
  EXPECT_EQ(map->num_experts(), 8);
  EXPECT_EQ(map->at(1, 3, 0), 2);
  EXPECT_EQ(map->at(1, 3, 1), 2);
  EXPECT_EQ(warnings,
            std::vector<std::string>{
                "layer 1: an expert twice on one rank (DeepSeek's and "
                "SGLang's planners allow it; eplb's policies and vllm-ascend "
                "do not)"});
  // The triple written back lists the same replicas, ascending.
  const StatusOr<Placement> again =
      ParseDeepSeekMaps(DeepSeekMapsToJson(*map), 4);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(*again, *map);
}

TEST(DeepSeekTest, ReadingAMissingFileNamesIt) {
  const StatusOr<Placement> map = ReadDeepSeekMaps("/nonexistent/ds.json", 4);
  ASSERT_FALSE(map.ok());
  EXPECT_EQ(map.status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(map.status().message().starts_with("/nonexistent/ds.json"))
      << map.status().message();
}

}  // namespace
}  // namespace eplb
