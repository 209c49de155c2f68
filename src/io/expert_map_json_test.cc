// Tests of the vllm-ascend expert-map JSON reader and writer: the fixture,
// every validation rule with a broken variant (each asserting the message
// names the place), collection of all problems, and round trips.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "eplb/io.h"
#include "testing/scratch_dir.h"

namespace eplb {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

constexpr char kFixture[] =
    EPLB_SOURCE_DIR "/tests/data/vllm_ascend_expert_map.json";

// Two layers: layer 0 is the fixture's, layer 1 the initial placement.
Json TwoLayerMap() {
  return Json::parse(R"({
    "moe_layer_count": 2,
    "layer_list": [
      {"layer_id": 0, "device_count": 2, "device_list": [
        {"device_id": 0, "device_expert": [7, 2, 0, 3, 5]},
        {"device_id": 1, "device_expert": [6, 1, 4, 7, 2]}]},
      {"layer_id": 1, "device_count": 2, "device_list": [
        {"device_id": 0, "device_expert": [0, 1, 2, 3, 4]},
        {"device_id": 1, "device_expert": [5, 6, 7, 0, 1]}]}]})");
}

Json& Layer(Json& map, int index) { return map["layer_list"][index]; }
Json& Device(Json& map, int layer, int device) {
  return Layer(map, layer)["device_list"][device];
}
Json& Experts(Json& map, int layer, int device) {
  return Device(map, layer, device)["device_expert"];
}

TEST(ExpertMapJsonTest, ParsesFixture) {
  std::vector<std::string> problems;
  const StatusOr<Placement> placement =
      ReadExpertMapJson(kFixture, MapExpectations{}, &problems);
  ASSERT_TRUE(placement.ok()) << placement.status().ToString();
  EXPECT_TRUE(problems.empty());
  EXPECT_EQ(placement->num_layers(), 1);
  EXPECT_EQ(placement->num_ranks(), 2);
  EXPECT_EQ(placement->slots_per_rank(), 5);
  EXPECT_EQ(placement->num_experts(), 8);
  EXPECT_EQ(placement->data(),
            (std::vector<int32_t>{7, 2, 0, 3, 5, 6, 1, 4, 7, 2}));
}

TEST(ExpertMapJsonTest, ParsesFixtureWithMatchingExpectations) {
  const MapExpectations expect{
      .num_layers = 1, .num_ranks = 2, .num_experts = 8, .slots_per_rank = 5};
  const StatusOr<Placement> placement = ReadExpertMapJson(kFixture, expect);
  ASSERT_TRUE(placement.ok()) << placement.status().ToString();
  EXPECT_EQ(placement->at(0, 1, 3), 7);
}

TEST(ExpertMapJsonTest, LayersAndDevicesMayComeInAnyOrder) {
  Json map = TwoLayerMap();
  std::swap(Layer(map, 0), Layer(map, 1));
  std::swap(Device(map, 0, 0), Device(map, 0, 1));
  const StatusOr<Placement> placement =
      ParseExpertMapJson(map.dump(), MapExpectations{});
  ASSERT_TRUE(placement.ok()) << placement.status().ToString();
  const StatusOr<Placement> in_order =
      ParseExpertMapJson(TwoLayerMap().dump(), MapExpectations{});
  ASSERT_TRUE(in_order.ok());
  EXPECT_EQ(*placement, *in_order);
  EXPECT_EQ(placement->at(1, 1, 0), 5);
}

TEST(ExpertMapJsonTest, AcceptsCrlfAndExtraKeys) {
  Json map = TwoLayerMap();
  map["comment"] = "written by hand";
  Device(map, 0, 0)["note"] = 1;
  std::string text = map.dump(2);
  std::string crlf;
  for (const char c : text) {
    if (c == '\n') crlf += '\r';
    crlf += c;
  }
  EXPECT_TRUE(ParseExpertMapJson(crlf, MapExpectations{}).ok());
}

TEST(ExpertMapJsonTest, MissingFileIsNotFoundWithPath) {
  const std::string path = "/nonexistent/dir/map.json";
  const StatusOr<Placement> placement =
      ReadExpertMapJson(path, MapExpectations{});
  ASSERT_FALSE(placement.ok());
  EXPECT_EQ(placement.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(placement.status().message(), path + ": no such file");
}

TEST(ExpertMapJsonTest, WritesFixtureLayout) {
  const StatusOr<Placement> placement =
      ReadExpertMapJson(kFixture, MapExpectations{});
  ASSERT_TRUE(placement.ok());
  EXPECT_EQ(ExpertMapToJson(*placement),
            "{\n"
            "  \"moe_layer_count\": 1,\n"
            "  \"layer_list\": [\n"
            "    {\n"
            "      \"layer_id\": 0,\n"
            "      \"device_count\": 2,\n"
            "      \"device_list\": [\n"
            "        {\"device_id\": 0, \"device_expert\": [7, 2, 0, 3, 5]},\n"
            "        {\"device_id\": 1, \"device_expert\": [6, 1, 4, 7, 2]}\n"
            "      ]\n"
            "    }\n"
            "  ]\n"
            "}\n");
}

TEST(ExpertMapJsonTest, RoundTripsFixture) {
  const StatusOr<Placement> parsed =
      ReadExpertMapJson(kFixture, MapExpectations{});
  ASSERT_TRUE(parsed.ok());
  const std::string written = ExpertMapToJson(*parsed);
  const StatusOr<Placement> reparsed =
      ParseExpertMapJson(written, MapExpectations{});
  ASSERT_TRUE(reparsed.ok()) << reparsed.status().ToString();
  EXPECT_EQ(*reparsed, *parsed);
  EXPECT_EQ(ExpertMapToJson(*reparsed), written);
}

// A DeepSeek-V3-sized placement (58 layers, 32 ranks x 9 slots, 256
// experts, rotated per layer) survives write -> parse -> write byte for byte.
TEST(ExpertMapJsonTest, RoundTripsLargePlacementByteIdentical) {
  constexpr int kLayers = 58, kRanks = 32, kSlots = 9, kExperts = 256;
  Placement placement(kLayers, kRanks, kSlots, kExperts);
  for (int l = 0; l < kLayers; ++l) {
    for (int p = 0; p < kRanks * kSlots; ++p) {
      const int logical = p < kExperts ? p : (p - kExperts) % kExperts;
      placement.set(l, p / kSlots, p % kSlots, (logical + l) % kExperts);
    }
  }
  const std::string written = ExpertMapToJson(placement);
  const MapExpectations expect{kLayers, kRanks, kExperts, kSlots};
  const StatusOr<Placement> parsed = ParseExpertMapJson(written, expect);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(*parsed, placement);
  EXPECT_EQ(ExpertMapToJson(*parsed), written);
}

TEST(ExpertMapJsonTest, WriteThenReadFile) {
  const testing_util::ScratchDir scratch("expert_map");
  const fs::path path = scratch.File("map.json");
  const StatusOr<Placement> parsed =
      ParseExpertMapJson(TwoLayerMap().dump(), MapExpectations{});
  ASSERT_TRUE(parsed.ok());
  ASSERT_TRUE(WriteExpertMapJson(path, *parsed).ok());
  const StatusOr<Placement> read = ReadExpertMapJson(path, MapExpectations{});
  ASSERT_TRUE(read.ok()) << read.status().ToString();
  EXPECT_EQ(*read, *parsed);
}

TEST(ExpertMapJsonTest, FileErrorsStartWithPath) {
  const testing_util::ScratchDir scratch("expert_map");
  const fs::path path = scratch.Write("bad.json", "[1, 2]");
  const StatusOr<Placement> read = ReadExpertMapJson(path, MapExpectations{});
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().message(),
            path.string() + ": top level is an array, not an object");
}

// Every problem is reported, one line each: structure first, then expert
// ids, each in file order. The status carries the count and the first.
TEST(ExpertMapJsonTest, CollectsAllProblems) {
  Json map = TwoLayerMap();
  Experts(map, 0, 1)[3] = 9;    // Out of range (E = 8).
  Experts(map, 1, 0)[1] = 3.5;  // Not an integer.
  Layer(map, 1)["device_count"] = 4;
  Experts(map, 1, 1)[4] = 2;  // Expert 1 now on no device of layer 1.
  std::vector<std::string> problems;
  const MapExpectations expect{.num_experts = 8};
  const StatusOr<Placement> placement =
      ParseExpertMapJson(map.dump(), expect, &problems);
  ASSERT_FALSE(placement.ok());
  ASSERT_EQ(problems.size(), 4u) << testing::PrintToString(problems);
  EXPECT_EQ(problems[0],
            "layer 1: device_count is 4 but device_list has 2 devices");
  EXPECT_EQ(problems[1],
            "layer 1, device 0, slot 1: expert id 3.5 is not an integer");
  EXPECT_EQ(problems[2],
            "layer 0, device 1, slot 3: expert 9 out of range [0, 8)");
  EXPECT_EQ(problems[3], "layer 1: expert 1 is on no device");
  EXPECT_EQ(placement.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(placement.status().message(),
            "4 problems in expert map; first: " + problems[0]);
}

TEST(ExpertMapJsonTest, ManyMissingExpertsMakeOneLinePerLayer) {
  std::vector<std::string> problems;
  const MapExpectations expect{.num_experts = 100};
  ASSERT_FALSE(ReadExpertMapJson(kFixture, expect, &problems).ok());
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0],
            "layer 0: experts 8, 9, 10, 11, 12, 13, 14, 15 and 84 more are on "
            "no device");
}

struct BrokenMapCase {
  const char* name;
  void (*mutate)(Json& map);  // Applied to TwoLayerMap(); or
  const char* text;           // this text when non-null.
  MapExpectations expect;
  const char* want;  // A substring of one of the problems.
};

void Unchanged(Json&) {}

const BrokenMapCase kBrokenMaps[] = {
    {"MalformedJson",
     Unchanged,
     R"({"moe_layer_count": 1,)",
     {},
     "malformed JSON: parse error at line 1, column 23"},
    {"EmptyText", Unchanged, "", {}, "empty input"},
    {"BlankText", Unchanged, " \n\t", {}, "empty input"},
    {"TopLevelArray",
     Unchanged,
     "[1, 2]",
     {},
     "top level is an array, not an object"},
    {"TopLevelNumber", Unchanged, "3", {}, "top level is 3, not an object"},
    {"LayerListNotArray",
     [](Json& m) { m["layer_list"] = 5; },
     nullptr,
     {},
     "layer_list is 5, not an array"},
    {"LayerListEmpty",
     [](Json& m) { m["layer_list"] = Json::array(); },
     nullptr,
     {},
     "layer_list is empty"},
    {"MissingMoeLayerCount",
     [](Json& m) { m.erase("moe_layer_count"); },
     nullptr,
     {},
     "expert map: missing key \"moe_layer_count\""},
    {"MissingLayerList",
     [](Json& m) { m.erase("layer_list"); },
     nullptr,
     {},
     "expert map: missing key \"layer_list\""},
    {"MissingLayerIdClashesWithAnother",
     [](Json& m) {
       Layer(m, 0).erase("layer_id");
       Layer(m, 1)["layer_id"] = 0;
     },
     nullptr,
     {},
     "layer_list[1]: layer id 0 appears twice (also layer_list[0])"},
    {"MissingDeviceCount",
     [](Json& m) { Layer(m, 0).erase("device_count"); },
     nullptr,
     {},
     "layer_list[0]: missing key \"device_count\""},
    {"MissingDeviceList",
     [](Json& m) { Layer(m, 1).erase("device_list"); },
     nullptr,
     {},
     "layer_list[1]: missing key \"device_list\""},
    {"MissingDeviceIdClashesWithAnother",
     [](Json& m) {
       Device(m, 0, 1).erase("device_id");
       Device(m, 0, 0)["device_id"] = 1;
     },
     nullptr,
     {},
     "layer 0: device id 1 appears twice (device_list[0] and "
     "device_list[1])"},
    {"MissingDeviceExpert",
     [](Json& m) { Device(m, 1, 0).erase("device_expert"); },
     nullptr,
     {},
     "layer 1, device 0: missing key \"device_expert\""},
    {"MoeLayerCountDisagreesWithList",
     [](Json& m) { m["moe_layer_count"] = 3; },
     nullptr,
     {},
     "moe_layer_count is 3 but layer_list has 2 layers"},
    {"MoeLayerCountNotInteger",
     [](Json& m) { m["moe_layer_count"] = "2"; },
     nullptr,
     {},
     "expert map: moe_layer_count is \"2\", not an integer"},
    {"MoeLayerCountDisagreesWithModel",
     Unchanged,
     nullptr,
     {.num_layers = 3},
     "moe_layer_count is 2 but the model has 3 MoE layers"},
    {"LayerNotObject",
     [](Json& m) { Layer(m, 0) = "x"; },
     nullptr,
     {},
     "layer_list[0] is \"x\", not an object"},
    {"DuplicateLayerId",
     [](Json& m) { Layer(m, 1)["layer_id"] = 0; },
     nullptr,
     {},
     "layer_list[1]: layer id 0 appears twice (also layer_list[0])"},
    {"MissingLayer",
     [](Json& m) { Layer(m, 1)["layer_id"] = 0; },
     nullptr,
     {},
     "layer 1 is missing from layer_list"},
    {"LayerIdOutOfRange",
     [](Json& m) { Layer(m, 1)["layer_id"] = 5; },
     nullptr,
     {},
     "layer_list[1]: layer id 5 out of range [0, 2)"},
    {"LayerIdNegative",
     [](Json& m) { Layer(m, 0)["layer_id"] = -1; },
     nullptr,
     {},
     "layer_list[0]: layer id -1 out of range [0, 2)"},
    {"LayerIdFloat",
     [](Json& m) { Layer(m, 0)["layer_id"] = 0.5; },
     nullptr,
     {},
     "layer_list[0]: layer_id is 0.5, not an integer"},
    {"LayerIdBool",
     [](Json& m) { Layer(m, 1)["layer_id"] = true; },
     nullptr,
     {},
     "layer_list[1]: layer_id is true, not an integer"},
    {"DeviceCountDisagreesWithList",
     [](Json& m) { Layer(m, 0)["device_count"] = 3; },
     nullptr,
     {},
     "layer 0: device_count is 3 but device_list has 2 devices"},
    {"DeviceListNotArray",
     [](Json& m) { Layer(m, 0)["device_list"] = "x"; },
     nullptr,
     {},
     "layer 0: device_list is \"x\", not an array"},
    {"DeviceListEmpty",
     [](Json& m) { Layer(m, 1)["device_list"] = Json::array(); },
     nullptr,
     {},
     "layer 1: device_list is empty"},
    {"OtherEpSize",
     Unchanged,
     nullptr,
     {.num_ranks = 4},
     "layer 0: 2 devices but the EP size (num_ranks) is 4"},
    {"LayersWithDifferentDeviceCounts",
     [](Json& m) {
       Layer(m, 1)["device_count"] = 3;
       Layer(m, 1)["device_list"].push_back(Json::parse(
           R"({"device_id": 2, "device_expert": [1, 2, 3, 4, 5]})"));
     },
     nullptr,
     {},
     "layer 1: 3 devices but layer 0 has 2"},
    {"DeviceNotObject",
     [](Json& m) { Device(m, 0, 0) = 5; },
     nullptr,
     {},
     "layer 0, device_list[0] is 5, not an object"},
    {"DuplicateDeviceId",
     [](Json& m) { Device(m, 1, 1)["device_id"] = 0; },
     nullptr,
     {},
     "layer 1: device id 0 appears twice (device_list[0] and device_list[1])"},
    {"MissingDevice",
     [](Json& m) { Device(m, 1, 1)["device_id"] = 0; },
     nullptr,
     {},
     "layer 1: device 1 is missing from device_list"},
    {"DeviceIdOutOfRange",
     [](Json& m) { Device(m, 0, 1)["device_id"] = 2; },
     nullptr,
     {},
     "layer 0, device_list[1]: device id 2 out of range [0, 2)"},
    {"DeviceIdNegative",
     [](Json& m) { Device(m, 0, 0)["device_id"] = -3; },
     nullptr,
     {},
     "layer 0, device_list[0]: device id -3 out of range [0, 2)"},
    {"DeviceIdString",
     [](Json& m) { Device(m, 0, 0)["device_id"] = "0"; },
     nullptr,
     {},
     "layer 0, device_list[0]: device_id is \"0\", not an integer"},
    {"DeviceExpertNotArray",
     [](Json& m) { Device(m, 0, 1)["device_expert"] = 7; },
     nullptr,
     {},
     "layer 0, device 1: device_expert is 7, not an array"},
    {"ExpertIdFloat",
     [](Json& m) { Experts(m, 0, 1)[2] = 3.5; },
     nullptr,
     {},
     "layer 0, device 1, slot 2: expert id 3.5 is not an integer"},
    {"ExpertIdWholeFloat",
     [](Json& m) { Experts(m, 0, 1)[2] = 4.0; },
     nullptr,
     {},
     "layer 0, device 1, slot 2: expert id 4.0 is not an integer"},
    {"ExpertIdBool",
     [](Json& m) { Experts(m, 1, 0)[0] = false; },
     nullptr,
     {},
     "layer 1, device 0, slot 0: expert id false is not an integer"},
    {"ExpertIdString",
     [](Json& m) { Experts(m, 1, 0)[4] = "4"; },
     nullptr,
     {},
     "layer 1, device 0, slot 4: expert id \"4\" is not an integer"},
    {"ExpertIdNull",
     [](Json& m) { Experts(m, 1, 0)[4] = nullptr; },
     nullptr,
     {},
     "layer 1, device 0, slot 4: expert id null is not an integer"},
    {"SlotCountsDiffer",
     [](Json& m) { Experts(m, 1, 1).erase(4); },
     nullptr,
     {},
     "layer 1, device 1: 4 slots but layer 0, device 0 has 5"},
    {"SlotCountDisagreesWithExpectation",
     Unchanged,
     nullptr,
     {.slots_per_rank = 6},
     "layer 0, device 0: 5 slots but slots_per_rank is 6"},
    {"DeviceWithZeroSlots",
     [](Json& m) { Device(m, 0, 1)["device_expert"] = Json::array(); },
     nullptr,
     {},
     "layer 0, device 1: device_expert is empty (a device needs slots)"},
    {"ExpertOutOfRange",
     [](Json& m) { Experts(m, 0, 1)[3] = 9; },
     nullptr,
     {.num_experts = 8},
     "layer 0, device 1, slot 3: expert 9 out of range [0, 8)"},
    {"ExpertNegative",
     [](Json& m) { Experts(m, 1, 1)[0] = -1; },
     nullptr,
     {},
     "layer 1, device 1, slot 0: expert -1 out of range [0, 8)"},
    {"ExpertHuge",
     [](Json& m) { Experts(m, 1, 1)[0] = int64_t{1} << 40; },
     nullptr,
     {},
     "layer 1, device 1, slot 0: expert 1099511627776 out of range [0, 8)"},
    {"ExpertTwiceOnDevice",
     [](Json& m) { Experts(m, 0, 0)[4] = 7; },
     nullptr,
     {},
     "layer 0, device 0, slot 4: expert 7 appears twice on the device (slots 0 "
     "and 4)"},
    {"ExpertOnNoDevice",
     [](Json& m) { Experts(m, 1, 1)[2] = 4; },
     nullptr,
     {},
     "layer 1: expert 7 is on no device"},
    {"MapForSmallerModel",
     Unchanged,
     nullptr,
     {.num_experts = 10},
     "layer 0: experts 8, 9 are on no device"},
    {"MapForLargerModel",
     Unchanged,
     nullptr,
     {.num_experts = 6},
     "layer 0, device 0, slot 0: expert 7 out of range [0, 6)"},
};

class BrokenExpertMapTest : public testing::TestWithParam<BrokenMapCase> {};

TEST_P(BrokenExpertMapTest, ReportsProblemNamingThePlace) {
  const BrokenMapCase& c = GetParam();
  std::string text = c.text != nullptr ? c.text : "";
  if (c.text == nullptr) {
    Json map = TwoLayerMap();
    c.mutate(map);
    text = map.dump();
  }
  std::vector<std::string> problems;
  const StatusOr<Placement> placement =
      ParseExpertMapJson(text, c.expect, &problems);
  ASSERT_FALSE(placement.ok());
  EXPECT_EQ(placement.status().code(), StatusCode::kInvalidArgument);
  ASSERT_FALSE(problems.empty());
  bool found = false;
  for (const std::string& problem : problems) {
    EXPECT_EQ(problem.find('\n'), std::string::npos) << problem;
    found = found || problem.find(c.want) != std::string::npos;
  }
  EXPECT_TRUE(found) << "want \"" << c.want << "\" in "
                     << testing::PrintToString(problems);
  const std::string& message = placement.status().message();
  if (problems.size() == 1) {
    EXPECT_EQ(message, problems[0]);
  } else {
    EXPECT_EQ(message, std::to_string(problems.size()) +
                           " problems in expert map; first: " + problems[0]);
  }
}

INSTANTIATE_TEST_SUITE_P(
    ExpertMapJsonTest, BrokenExpertMapTest, testing::ValuesIn(kBrokenMaps),
    [](const testing::TestParamInfo<BrokenMapCase>& param_info) {
      return std::string(param_info.param.name);
    });

// vllm-ascend's own reader ignores layer_id and device_id and goes by
// position; a map without them reads the same way, with a warning.
TEST(ExpertMapJsonTest, MapWithoutIdsReadsByPosition) {
  std::vector<std::string> problems, warnings;
  const StatusOr<Placement> placement = ReadExpertMapJson(
      EPLB_SOURCE_DIR "/tests/data/vllm_ascend_map_no_ids.json",
      MapExpectations{}, &problems, &warnings);
  ASSERT_TRUE(placement.ok()) << placement.status().ToString();
  EXPECT_TRUE(problems.empty());
  const StatusOr<Placement> with_ids =
      ParseExpertMapJson(TwoLayerMap().dump(), MapExpectations{});
  ASSERT_TRUE(with_ids.ok());
  EXPECT_EQ(*placement, *with_ids);
  EXPECT_EQ(warnings,
            (std::vector<std::string>{
                "2 of 2 layer_list entries have no layer_id: each one's "
                "position in layer_list is its layer id (vllm-ascend's "
                "reader goes by position and ignores layer_id)",
                "4 of 4 device_list entries have no device_id: each one's "
                "position in its device_list is its device id (vllm-ascend's "
                "reader goes by position and ignores device_id)"}));
}

TEST(ExpertMapJsonTest, SomeIdsMissing) {
  Json map = TwoLayerMap();
  Layer(map, 1).erase("layer_id");
  Device(map, 0, 1).erase("device_id");
  std::vector<std::string> warnings;
  const StatusOr<Placement> placement =
      ParseExpertMapJson(map.dump(), MapExpectations{}, nullptr, &warnings);
  ASSERT_TRUE(placement.ok()) << placement.status().ToString();
  EXPECT_EQ(*placement, *ParseExpertMapJson(TwoLayerMap().dump(), {}));
  ASSERT_EQ(warnings.size(), 2u);
  EXPECT_TRUE(warnings[0].starts_with("1 of 2 layer_list entries"))
      << warnings[0];
  EXPECT_TRUE(warnings[1].starts_with("1 of 4 device_list entries"))
      << warnings[1];
}

// eplb reads by id, vllm-ascend by position: a list out of id order is read
// differently by the two, which the warning says.
TEST(ExpertMapJsonTest, ListsOutOfIdOrderWarn) {
  Json map = TwoLayerMap();
  std::swap(Layer(map, 0), Layer(map, 1));
  std::vector<std::string> warnings;
  ASSERT_TRUE(
      ParseExpertMapJson(map.dump(), MapExpectations{}, nullptr, &warnings)
          .ok());
  EXPECT_EQ(warnings, std::vector<std::string>{
                          "layer_list is not in id order: eplb reads entries "
                          "by id, but vllm-ascend's reader goes by position "
                          "and would place these experts elsewhere"});
  map = TwoLayerMap();
  std::swap(Device(map, 1, 0), Device(map, 1, 1));
  warnings.clear();
  ASSERT_TRUE(
      ParseExpertMapJson(map.dump(), MapExpectations{}, nullptr, &warnings)
          .ok());
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_TRUE(warnings[0].starts_with("a device_list is not in id order"))
      << warnings[0];
  // In order: no warning.
  warnings.clear();
  ASSERT_TRUE(ParseExpertMapJson(TwoLayerMap().dump(), MapExpectations{},
                                 nullptr, &warnings)
                  .ok());
  EXPECT_TRUE(warnings.empty());
}

// Under SGLang's rules an expert twice on a device is a warning, not a
// problem; the other rules still hold.
TEST(ExpertMapJsonTest, SglangTargetAllowsAnExpertTwiceOnADevice) {
  Json map = TwoLayerMap();
  Experts(map, 1, 0)[4] = 0;  // Layer 1, device 0: 0, 1, 2, 3, 0.
  Experts(map, 1, 1)[3] = 4;  // Expert 4 stays placed.
  std::vector<std::string> problems, warnings;
  const StatusOr<Placement> sglang = ParseExpertMapJson(
      map.dump(), MapExpectations{.target = MapTarget::kSglang}, &problems,
      &warnings);
  ASSERT_TRUE(sglang.ok()) << sglang.status().ToString();
  EXPECT_EQ(warnings,
            std::vector<std::string>{
                "layer 1: an expert twice on one rank (DeepSeek's and "
                "SGLang's planners allow it; eplb's policies and vllm-ascend "
                "do not)"});
  const StatusOr<Placement> vllm =
      ParseExpertMapJson(map.dump(), MapExpectations{}, &problems);
  ASSERT_FALSE(vllm.ok());
  EXPECT_EQ(vllm.status().message(),
            "layer 1, device 0, slot 4: expert 0 appears twice on the device "
            "(slots 0 and 4)");
  Experts(map, 1, 1)[0] = 9;
  const StatusOr<Placement> out_of_range = ParseExpertMapJson(
      map.dump(),
      MapExpectations{.num_experts = 8, .target = MapTarget::kSglang});
  ASSERT_FALSE(out_of_range.ok());
  EXPECT_NE(out_of_range.status().message().find(
                "layer 1, device 1, slot 0: expert 9 out of range [0, 8)"),
            std::string::npos)
      << out_of_range.status().message();
}

}  // namespace
}  // namespace eplb
