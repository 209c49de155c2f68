// End-to-end tests of the eplb command line: every command runs as a real
// process; exit codes, stdout and stderr are checked.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "testing/cli_run.h"
#include "testing/scratch_dir.h"

namespace {

namespace fs = std::filesystem;

using Result = eplb::testing_util::CliResult;
using eplb::testing_util::Slurp;

class CliTest : public ::testing::Test {
 protected:
  // Runs `eplb <args>` (args are shell words; quote as needed).
  // `env`: assignments before the command, e.g. "DYNAMIC_EPLB=true ".
  Result Run(const std::string& args, const std::string& env = "") {
    return eplb::testing_util::RunCli(EPLB_CLI_PATH, args, dir_, env);
  }

  fs::path Write(const std::string& name, const std::string& text) {
    return scratch_.Write(name, text);
  }

  static std::string Data(const std::string& rel) {
    return std::string(EPLB_SOURCE_DIR) + "/" + rel;
  }

  // Parses stdout as exactly one JSON object on one line.
  static nlohmann::json OneJsonObject(const Result& r) {
    EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
    nlohmann::json j = nlohmann::json::parse(r.out, nullptr, false);
    EXPECT_TRUE(j.is_object()) << r.out;
    return j;
  }

  eplb::testing_util::ScratchDir scratch_{"cli"};
  const fs::path dir_ = scratch_.path();
};

const char kFixture[] = "tests/data/vllm_ascend_expert_map.json";
const char kDsv3Prefill1024[] = "data/dsv3-sglang/prefill_in1024.json";

// Repeated --load plans one robust map for every workload and reports
// each one's imbalance on it.
TEST_F(CliTest, PlanRobustOverRepeatedLoads) {
  const std::string out = (dir_ / "robust.json").string();
  const std::string a = Data("data/dsv3-sglang/prefill_in512.json");
  const std::string b = Data("data/dsv3-sglang/prefill_in2048.json");
  Result r = Run("plan --load " + a + " --load " + b +
                 " --ranks 32 --slots-per-rank 9 --json --out " + out);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json j = OneJsonObject(r);
  EXPECT_EQ(j["policy"], "robust");
  EXPECT_EQ(j["robust_quantile"], 1.0);
  ASSERT_EQ(j["workloads"].size(), 2u);
  EXPECT_EQ(j["workloads"][0]["load"], a);
  EXPECT_EQ(j["workloads"][1]["load"], b);
  double worst = 0.0;
  for (const auto& w : j["workloads"]) {
    EXPECT_GE(w["imbalance_mean"].get<double>(), 1.0);
    EXPECT_LE(w["imbalance_mean"].get<double>(), 1.01);
    EXPECT_GE(w["imbalance_max"].get<double>(),
              w["imbalance_mean"].get<double>());
    worst = std::max(worst, w["imbalance_max"].get<double>());
  }
  EXPECT_EQ(j["worst_workload_imbalance_max"].get<double>(), worst);
  // The map is valid, and the same on a second run.
  Result v = Run("validate-map " + out + " --ranks 32 --experts 256");
  EXPECT_EQ(v.exit_code, 0) << v.err;
  const std::string first = Slurp(out);
  ASSERT_EQ(Run("plan --load " + a + " --load " + b +
                " --ranks 32 --slots-per-rank 9 --out " + out)
                .exit_code,
            0);
  EXPECT_EQ(Slurp(out), first);
  // One --load keeps the single-load plan, now with its one workload.
  Result one =
      Run("plan --load " + a + " --ranks 32 --slots-per-rank 9 --json");
  ASSERT_EQ(one.exit_code, 0) << one.err;
  nlohmann::json o = OneJsonObject(one);
  EXPECT_EQ(o["policy"], "swift");
  ASSERT_EQ(o["workloads"].size(), 1u);
  EXPECT_EQ(o["workloads"][0]["imbalance_mean"], o["imbalance_mean"]);
  EXPECT_EQ(o["workloads"][0]["imbalance_max"], o["imbalance_max"]);
}

// A heat file is read as its workloads; --workloads-from-steps makes each
// step of a trace one workload.
TEST_F(CliTest, PlanRobustFromAHeatFileAndFromSteps) {
  const fs::path heat = Write("heat.json",
                              R"({"eplb_heat": 1, "num_layers": 1,
      "num_experts": 4, "workloads": [
      {"steps": 3, "load": [[90, 10, 10, 10]]},
      {"steps": 2, "load": [[10, 90, 10, 10]]}]})");
  Result r = Run("plan --load " + heat.string() +
                 " --ranks 2 --slots-per-rank 3 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json j = OneJsonObject(r);
  EXPECT_EQ(j["policy"], "robust");
  ASSERT_EQ(j["workloads"].size(), 2u);
  EXPECT_EQ(j["workloads"][1]["load"], heat.string() + " workload 1");
  EXPECT_EQ(j["workloads"][1]["steps"], 2);
  const fs::path trace = Write("t.csv",
                               "step,layer,expert,count\n0,0,0,90\n0,0,1,10\n"
                               "0,0,2,10\n0,0,3,10\n1,0,0,10\n1,0,1,90\n"
                               "1,0,2,10\n1,0,3,10\n");
  Result steps = Run("plan --load " + trace.string() +
                     " --workloads-from-steps --ranks 2 --slots-per-rank 3 "
                     "--json");
  ASSERT_EQ(steps.exit_code, 0) << steps.err;
  nlohmann::json s = OneJsonObject(steps);
  ASSERT_EQ(s["workloads"].size(), 2u);
  EXPECT_EQ(s["workloads"][0]["load"], trace.string() + " step 0");
  // The same two workloads, the same figures.
  EXPECT_EQ(s["workloads"][0]["imbalance_max"],
            j["workloads"][0]["imbalance_max"]);
  EXPECT_EQ(s["workloads"][1]["imbalance_max"],
            j["workloads"][1]["imbalance_max"]);
}

TEST_F(CliTest, PlanRobustRejectsBadInput) {
  const std::string a = Data("data/dsv3-sglang/prefill_in512.json");
  const std::string b = Data("data/dsv2lite-puffin/prefill_by_prompt.csv");
  const std::string topo = " --ranks 32 --slots-per-rank 9";
  struct Case {
    std::string args;
    int exit_code;
    std::string expected;
  };
  const Case cases[] = {
      {"--load " + a + " --robust-quantile 1.5" + topo, 2,
       "--robust-quantile: 1.5 is not a number in (0, 1]"},
      {"--load " + a + " --robust-quantile 0" + topo, 2,
       "--robust-quantile: 0 is not a number in (0, 1]"},
      {"--load " + a + " --robust-quantile x" + topo, 2,
       "--robust-quantile: x is not a number in (0, 1]"},
      {"--load " + a + " --load " + b + topo, 1,
       "--load " + b + " has 26 layers x 64 experts, but --load " + a +
           " has 58 x 256"},
      {"--load " + a + " --load " + a + " --policy best" + topo, 1,
       "--policy = best: a plan for several workloads uses the robust "
       "planner"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.args);
    Result r = Run("plan " + c.args);
    EXPECT_EQ(r.exit_code, c.exit_code) << r.err;
    EXPECT_NE(r.err.find(c.expected), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
  // A corrupt heat file: named, one line.
  const fs::path bad = Write("bad_heat.json", R"({"eplb_heat": 1, "num)");
  Result r =
      Run("plan --load " + bad.string() + " --ranks 2 --slots-per-rank 3");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find(bad.string() + ": malformed JSON"), std::string::npos)
      << r.err;
}

TEST_F(CliTest, ValidateMapAcceptsTheVllmAscendFixture) {
  Result r = Run("validate-map " + Data(kFixture));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find(
                "valid: 1 layers, 2 devices x 5 slots, 8 experts, 2 redundant, "
                "most replicated expert has 2 replicas"),
            std::string::npos)
      << r.out;
  Result j =
      Run("validate-map " + Data(kFixture) + " --json --ranks 2 --experts 8");
  ASSERT_EQ(j.exit_code, 0) << j.err;
  nlohmann::json o = OneJsonObject(j);
  EXPECT_EQ(o["layers"], 1);
  EXPECT_EQ(o["devices"], 2);
  EXPECT_EQ(o["slots_per_device"], 5);
  EXPECT_EQ(o["redundant"], 2);
  EXPECT_EQ(o["max_replicas"], 2);
}

// Every broken variant of a map is rejected with a message naming the place.
TEST_F(CliTest, ValidateMapRejectsEveryBrokenVariant) {
  auto layer = [](const std::string& devices, int id = 0, int count = 2) {
    return "{\"layer_id\": " + std::to_string(id) +
           ", \"device_count\": " + std::to_string(count) +
           ", \"device_list\": [" + devices + "]}";
  };
  auto dev = [](int id, const std::string& experts) {
    return "{\"device_id\": " + std::to_string(id) + ", \"device_expert\": [" +
           experts + "]}";
  };
  auto map = [](const std::string& layers, int count = 1) {
    return "{\"moe_layer_count\": " + std::to_string(count) +
           ", \"layer_list\": [" + layers + "]}";
  };
  const std::string d0 = dev(0, "7, 2, 0, 3, 5"), d1 = dev(1, "6, 1, 4, 7, 2");
  struct Case {
    const char* name;
    std::string text;
    std::string flags;
    std::string expected;  // Substring of stderr.
  };
  const Case cases[] = {
      {"malformed", "{\"moe_layer_count\": 1,", "", "JSON"},
      {"top_level_array", "[1, 2]", "", "object"},
      {"layer_list_not_array", "{\"moe_layer_count\": 1, \"layer_list\": 3}",
       "", "layer_list"},
      {"missing_layer_list", "{\"moe_layer_count\": 1}", "", "layer_list"},
      {"missing_device_expert", map(layer(d0 + ", {\"device_id\": 1}")), "",
       "device_expert"},
      {"layer_count_mismatch", map(layer(d0 + ", " + d1), 3), "",
       "moe_layer_count"},
      {"duplicate_layer_id",
       map(layer(d0 + ", " + d1) + ", " + layer(d0 + ", " + d1), 2), "",
       "layer id 0"},
      {"missing_layer_id", map(layer(d0 + ", " + d1, 1)), "", "layer"},
      {"duplicate_device_id", map(layer(d0 + ", " + dev(0, "6, 1, 4, 7, 2"))),
       "", "device id 0"},
      {"device_count_mismatch", map(layer(d0 + ", " + d1, 0, 3)), "",
       "device_count"},
      {"different_slot_counts", map(layer(d0 + ", " + dev(1, "6, 1, 4, 7"))),
       "", "device 1"},
      {"expert_out_of_range", map(layer(d0 + ", " + dev(1, "6, 1, 4, 7, 9"))),
       "--experts 8", "device 1, slot 4"},
      {"negative_expert", map(layer(d0 + ", " + dev(1, "6, 1, 4, 7, -2"))), "",
       "device 1, slot 4"},
      {"negative_device_id", map(layer(d0 + ", " + dev(-1, "6, 1, 4, 7, 2"))),
       "", "-1"},
      {"expert_twice_on_device",
       map(layer(d0 + ", " + dev(1, "6, 1, 4, 6, 2"))), "", "device 1"},
      {"expert_on_no_device", map(layer(d0 + ", " + dev(1, "6, 1, 4, 7, 2"))),
       "--experts 9", "expert 8"},
      {"other_ep_size", map(layer(d0 + ", " + d1)), "--ranks 4",
       "EP size (num_ranks) is 4"},
      {"other_model", map(layer(d0 + ", " + d1)), "--experts 6", "expert 7"},
      {"other_layer_count", map(layer(d0 + ", " + d1)), "--layers 58", "58"},
      {"empty_file", "", "", "empty"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const fs::path p = Write(std::string(c.name) + ".json", c.text);
    Result r = Run("validate-map " + p.string() + " " + c.flags);
    EXPECT_EQ(r.exit_code, 1) << r.out;
    EXPECT_NE(r.err.find(c.expected), std::string::npos) << r.err;
    EXPECT_TRUE(r.out.empty()) << r.out;
  }
}

TEST_F(CliTest, ValidateMapPrintsOneLinePerProblem) {
  const std::string text =
      "{\"moe_layer_count\": 1, \"layer_list\": [{\"layer_id\": 0, "
      "\"device_count\": 2, "
      "\"device_list\": [{\"device_id\": 0, \"device_expert\": [7, 7, 0, 3, "
      "5]}, "
      "{\"device_id\": 1, \"device_expert\": [6, 1, 4, 7, 9]}]}]}";
  Result r = Run("validate-map " + Write("multi.json", text).string() +
                 " --experts 8");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_GE(std::count(r.err.begin(), r.err.end(), '\n'), 3) << r.err;
  EXPECT_NE(r.err.find("device 0, slot 1"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("device 1, slot 4"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("expert 2"), std::string::npos) << r.err;
}

TEST_F(CliTest, MissingPathsAndDirectories) {
  Result missing = Run("validate-map " + (dir_ / "nope.json").string());
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.err.find("nope.json"), std::string::npos) << missing.err;
  Result directory = Run("validate-map " + dir_.string());
  EXPECT_EQ(directory.exit_code, 1);
  EXPECT_NE(directory.err.find("directory"), std::string::npos)
      << directory.err;
  Result load = Run("inspect --load " + (dir_ / "none.csv").string() +
                    " --ranks 2 --slots-per-rank 4");
  EXPECT_EQ(load.exit_code, 1);
  EXPECT_NE(load.err.find("none.csv"), std::string::npos) << load.err;
}

// The initial placement of DeepSeek-V3 at EP32 / 288 slots has a mean per-layer
// imbalance of ~2.02 on prefill_in1024.
TEST_F(CliTest, InspectDeepSeekV3InitialPlacement) {
  Result r = Run("inspect --load " + Data(kDsv3Prefill1024) +
                 " --ranks 32 --slots-per-rank 9 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json j = OneJsonObject(r);
  EXPECT_EQ(j["layers"], 58);
  EXPECT_EQ(j["ranks"], 32);
  EXPECT_EQ(j["slots_per_rank"], 9);
  EXPECT_NEAR(j["imbalance_mean"].get<double>(), 2.0184, 0.0005);
  EXPECT_NEAR(j["imbalance_max"].get<double>(), 3.2114, 0.0005);
  EXPECT_EQ(j["per_layer"].size(), 58u);
  // --redundant 32 is the same layout.
  Result n = Run("inspect --load " + Data(kDsv3Prefill1024) +
                 " --ranks 32 --redundant 32 --json");
  ASSERT_EQ(n.exit_code, 0) << n.err;
  EXPECT_EQ(OneJsonObject(n)["per_layer"], j["per_layer"]);
  // Human-readable table.
  Result text = Run("inspect --load " + Data(kDsv3Prefill1024) +
                    " --ranks 32 --slots-per-rank 9");
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_NE(text.out.find("mean 2.018"), std::string::npos) << text.out;
}

TEST_F(CliTest, InspectWithAMapAndATrace) {
  // The fixture map under a 1-step trace over its 8 experts.
  const fs::path csv =
      Write("t.csv",
            "step,layer,expert,count\n0,0,0,10\n0,0,2,4\n0,0,7,6\n"
            "1,0,7,2\n");
  Result r =
      Run("inspect --load " + csv.string() +
          " --ranks 2 --slots-per-rank 5 --map " + Data(kFixture) + " --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json j = OneJsonObject(r);
  // Rank 0: 7/2*8 + 2/2*4 + 10 = 4 + 2 + 10 = 16; rank 1: 4 + 2 = 6.
  EXPECT_NEAR(j["imbalance_mean"].get<double>(), 16.0 / 11.0, 1e-9);
  EXPECT_EQ(j["steps"], 2);
  // A map for another EP size than the flags say.
  Result bad = Run("inspect --load " + csv.string() +
                   " --ranks 4 --redundant 0 --map " + Data(kFixture));
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("EP size (num_ranks) is 4"), std::string::npos)
      << bad.err;
}

TEST_F(CliTest, InspectRejectsBadTopologyAndBadCsv) {
  struct Case {
    std::string args;
    int exit_code;
    std::string expected;
  };
  const std::string load = "--load " + Data(kDsv3Prefill1024);
  const Case cases[] = {
      {load + " --ranks 32", 1, "one of --slots-per-rank and --redundant"},
      {load + " --ranks 32 --slots-per-rank 9 --redundant 32", 2, "excludes"},
      {load + " --ranks 32 --redundant 30", 1, "(256 + 30) % 32 = 30"},
      {load + " --ranks 32 --slots-per-rank 7", 1,
       "32 * 7 = 224 < experts = 256"},
      {load + " --ranks abc --slots-per-rank 9", 2, "ranks"},
      {load + " --ranks -3 --slots-per-rank 9", 2, "ranks"},
      {load + " --ranks 32 --slots-per-rank 9 --ranks-per-node 5", 1,
       "ranks_per_node = 5"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.args);
    Result r = Run("inspect " + c.args);
    EXPECT_EQ(r.exit_code, c.exit_code) << r.err;
    EXPECT_NE(r.err.find(c.expected), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
  const struct {
    const char* name;
    const char* text;
    const char* expected;
  } csvs[] = {
      {"bad_header", "step,layer,count\n0,0,1\n", "header"},
      {"non_numeric", "step,layer,expert,count\n0,0,1,abc\n", "line 2"},
      {"negative", "step,layer,expert,count\n0,0,1,-4\n", "line 2"},
      {"out_of_order", "step,layer,expert,count\n1,0,1,4\n0,0,1,4\n", "line 3"},
  };
  for (const auto& c : csvs) {
    SCOPED_TRACE(c.name);
    Result r = Run("inspect --load " +
                   Write(std::string(c.name) + ".csv", c.text).string() +
                   " --ranks 2 --redundant 0");
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find(c.expected), std::string::npos) << r.err;
  }
}

// The model table gives DeepSeek-V3's bytes per expert.
TEST_F(CliTest, ModelsJsonGivesDeepSeekV3Bytes) {
  Result r = Run("models --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json j = OneJsonObject(r);
  ASSERT_EQ(j["models"].size(), 6u);
  const nlohmann::json& v3 = j["models"][0];
  EXPECT_EQ(v3["name"], "deepseek-v3");
  EXPECT_EQ(v3["bytes_per_expert"]["bf16"], 88080384);
  EXPECT_EQ(v3["bytes_per_expert"]["w8a8"], 44085248);
  EXPECT_EQ(v3["bytes_per_expert"]["mxfp8"], 45416448);
  EXPECT_EQ(v3["bytes_per_expert"]["mxfp4"], 23396352);
  EXPECT_EQ(v3["tensors"]["w8a8"][1]["name"], "w13_weight_scale");
  Result text = Run("models");
  ASSERT_EQ(text.exit_code, 0);
  EXPECT_NE(text.out.find("qwen3-235b-a22b"), std::string::npos);
  EXPECT_NE(text.out.find("88080384"), std::string::npos);
}

TEST_F(CliTest, ConvertRoundTripsMapsAndLoads) {
  const std::string ds = (dir_ / "ds.json").string();
  const std::string sg = (dir_ / "sg.json").string();
  const std::string back = (dir_ / "back.json").string();
  ASSERT_EQ(Run("convert --in " + Data(kFixture) + " --to deepseek --out " + ds)
                .exit_code,
            0);
  nlohmann::json triple = nlohmann::json::parse(Slurp(ds));
  EXPECT_EQ(triple["phy2log"][0],
            (nlohmann::json{7, 2, 0, 3, 5, 6, 1, 4, 7, 2}));
  EXPECT_EQ(triple["logcnt"][0], (nlohmann::json{1, 1, 2, 1, 1, 1, 1, 2}));
  Result need_ranks =
      Run("convert --in " + ds + " --to sglang-map --out " + sg);
  EXPECT_EQ(need_ranks.exit_code, 1);
  EXPECT_NE(need_ranks.err.find("--ranks"), std::string::npos);
  ASSERT_EQ(Run("convert --in " + ds + " --ranks 2 --to sglang-map --out " + sg)
                .exit_code,
            0);
  ASSERT_EQ(Run("convert --in " + sg + " --ranks 2 --to vllm-map --out " + back)
                .exit_code,
            0);
  Result v = Run("validate-map " + back);
  EXPECT_EQ(v.exit_code, 0) << v.err;
  EXPECT_EQ(nlohmann::json::parse(Slurp(back)),
            nlohmann::json::parse(Slurp(Data(kFixture))));
  // Loads: SGLang dump -> trace CSV -> SGLang dump.
  const std::string csv = (dir_ / "load.csv").string();
  const std::string dump = (dir_ / "dump.json").string();
  ASSERT_EQ(Run("convert --in " + Data(kDsv3Prefill1024) +
                " --to trace-csv --out " + csv)
                .exit_code,
            0);
  ASSERT_EQ(
      Run("convert --in " + csv + " --to sglang-count --out " + dump).exit_code,
      0);
  Result a =
      Run("inspect --load " + dump + " --ranks 32 --redundant 32 --json");
  Result b = Run("inspect --load " + Data(kDsv3Prefill1024) +
                 " --ranks 32 --redundant 32 --json");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(OneJsonObject(a)["per_layer"], OneJsonObject(b)["per_layer"]);
  // A map cannot become a load.
  Result cross =
      Run("convert --in " + Data(kFixture) + " --to trace-csv --out " + csv);
  EXPECT_EQ(cross.exit_code, 1);
  EXPECT_NE(cross.err.find("cannot convert a map"), std::string::npos)
      << cross.err;
  Result bad_format =
      Run("convert --in " + Data(kFixture) + " --to yaml --out " + csv);
  EXPECT_EQ(bad_format.exit_code, 1);
  EXPECT_NE(bad_format.err.find("--to = 'yaml'"), std::string::npos);
}

TEST_F(CliTest, PlanWritesAValidMapAndReportsTheFigures) {
  const std::string out = (dir_ / "plan.json").string();
  Result r =
      Run("plan --load " + Data(kDsv3Prefill1024) +
          " --ranks 32 --slots-per-rank 9 --policy best --json --out " + out);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json j = OneJsonObject(r);
  for (const char* key :
       {"policy", "layers", "ranks", "slots_per_rank", "plan_ms",
        "imbalance_mean", "imbalance_max", "moved_experts", "changed_layers",
        "imbalance_lower_bound"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  EXPECT_EQ(j["policy"], "best");
  EXPECT_EQ(j["layers"], 58);
  EXPECT_LE(j["imbalance_mean"].get<double>(), 1.001);
  EXPECT_EQ(j["imbalance_lower_bound"].size(), 58u);
  EXPECT_EQ(Run("validate-map " + out + " --ranks 32 --experts 256 --layers 58")
                .exit_code,
            0);
  // The written map, inspected, has the predicted imbalance.
  Result inspect = Run("inspect --load " + Data(kDsv3Prefill1024) +
                       " --ranks 32 --slots-per-rank 9 --json --map " + out);
  ASSERT_EQ(inspect.exit_code, 0) << inspect.err;
  EXPECT_NEAR(OneJsonObject(inspect)["imbalance_mean"].get<double>(),
              j["imbalance_mean"].get<double>(), 1e-9);
  // Re-planning from it with swift moves nothing: it is already balanced.
  Result again =
      Run("plan --load " + Data(kDsv3Prefill1024) +
          " --ranks 32 --slots-per-rank 9 --policy 2 --json --current " + out);
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(OneJsonObject(again)["moved_experts"], 0);
}

TEST_F(CliTest, PlanOnThreadsWritesTheSameMap) {
  // --threads plans layers in parallel: the map is the same, byte for byte,
  // for a policy and for a robust plan.
  for (const std::string& how :
       {std::string("--policy flashlb --load ") + Data(kDsv3Prefill1024),
        std::string("--load ") + Data(kDsv3Prefill1024) + " --load " +
            Data(kDsv3Prefill1024)}) {
    const std::string one = (dir_ / "one.json").string();
    const std::string two = (dir_ / "two.json").string();
    Result a =
        Run("plan " + how + " --ranks 32 --slots-per-rank 9 --out " + one);
    Result b = Run("plan " + how +
                   " --ranks 32 --slots-per-rank 9 --threads 2 --out " + two);
    ASSERT_EQ(a.exit_code, 0) << a.err;
    ASSERT_EQ(b.exit_code, 0) << b.err;
    EXPECT_EQ(Slurp(one), Slurp(two)) << how;
  }
}

TEST_F(CliTest, PlanOnATraceWindowAndNodes) {
  Result r =
      Run("plan --load " + Data("data/dsv2lite-puffin/prefill_by_prompt.csv") +
          " --ranks 8 --redundant 8 --ranks-per-node 4 --window 16 --policy "
          "flashlb --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json j = OneJsonObject(r);
  EXPECT_EQ(j["steps"], 16);
  EXPECT_EQ(j["layers"], 26);
  EXPECT_EQ(
      j["moved_experts"].get<int>(),
      j["intra_node_moves"].get<int>() + j["inter_node_moves"].get<int>());
  EXPECT_LT(j["imbalance_mean"].get<double>(),
            j["current_imbalance_mean"].get<double>());
  // Several steps: the step-by-step balance is reported too, and it is what
  // the sample-aware policies improve.
  for (const char* policy : {"flashlb", "swift"}) {
    Result w = Run(
        "plan --load " + Data("data/dsv2lite-puffin/prefill_by_prompt.csv") +
        " --ranks 8 --redundant 8 --window 64 --json --policy " + policy);
    ASSERT_EQ(w.exit_code, 0) << w.err;
    nlohmann::json k = OneJsonObject(w);
    ASSERT_TRUE(k.contains("step_imbalance_mean")) << policy;
    EXPECT_LT(k["step_imbalance_mean"].get<double>(),
              k["current_step_imbalance_mean"].get<double>())
        << policy;
  }
  // One aggregate: no steps to score one by one.
  Result agg = Run("plan --load " + Data(kDsv3Prefill1024) +
                   " --ranks 32 --slots-per-rank 9 --json");
  ASSERT_EQ(agg.exit_code, 0) << agg.err;
  EXPECT_FALSE(OneJsonObject(agg).contains("step_imbalance_mean"));
}

TEST_F(CliTest, PlanRejectsBadInput) {
  const std::string load = "--load " + Data(kDsv3Prefill1024);
  struct Case {
    std::string args;
    int exit_code;
    std::string expected;
  };
  const Case cases[] = {
      {load + " --ranks 32 --slots-per-rank 9 --policy greedy", 1,
       "unknown policy 'greedy'"},
      {load + " --ranks 32 --slots-per-rank 9 --window -1", 2, "window"},
      {load + " --ranks 32 --slots-per-rank 9 --current " + Data(kFixture), 1,
       "moe_layer_count is 1 but the model has 58 MoE layers"},
      {load + " --ranks 32 --redundant 31", 1, "(256 + 31) % 32 = 31"},
      {"--load " + Data(kFixture) + " --ranks 2 --slots-per-rank 5", 1,
       "logical_count"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.args);
    Result r = Run("plan " + c.args);
    EXPECT_EQ(r.exit_code, c.exit_code) << r.err;
    EXPECT_NE(r.err.find(c.expected), std::string::npos) << r.err;
  }
  // Groups that do not divide the experts: falls back to global and says so.
  Result fallback =
      Run("plan " + load +
          " --ranks 32 --slots-per-rank 9 --ranks-per-node 8 --groups 7 "
          "--policy default");
  EXPECT_EQ(fallback.exit_code, 0) << fallback.err;
  EXPECT_NE(fallback.err.find("falling back to the global policy"),
            std::string::npos)
      << fallback.err;
}

TEST_F(CliTest, ReplayTheShippedTrace) {
  // A = 4 steps (~30 ms) gives the planner room even on a loaded or
  // sanitized build; the default A = 1 is ~8 ms.
  Result r = Run("replay --algo-interval 4 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json j = OneJsonObject(r);
  for (const char* key :
       {"steps", "layers", "ranks", "slots_per_rank", "policy", "imbalance",
        "baseline_imbalance", "rebalances", "experts_moved", "bytes_moved",
        "max_stall_ms", "ttft_p99_ms", "tpot_avg_ms"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  for (const char* key : {"median", "p90", "mean"}) {
    EXPECT_TRUE(j["imbalance"].contains(key)) << key;
    EXPECT_TRUE(j["baseline_imbalance"].contains(key)) << key;
  }
  EXPECT_EQ(j["steps"], 63);
  EXPECT_EQ(j["layers"], 26);
  EXPECT_EQ(j["policy"], "swift");
  EXPECT_EQ(j["max_stall_ms"], 0.0);
  EXPECT_LT(j["imbalance"]["median"].get<double>(),
            j["baseline_imbalance"]["median"].get<double>());
  // The table and the HTML report.
  const std::string report = (dir_ / "r.html").string();
  Result text = Run("replay --report " + report);
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_NE(text.out.find("imbalance median"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("TTFT p99"), std::string::npos);
  const std::string html = Slurp(report);
  // The figures travel as JSON for the page's script (drawn and checked in
  // a browser by report_browser).
  EXPECT_NE(html.find("id=\"eplb-data\""), std::string::npos);
  EXPECT_NE(html.find("\"imbalance\":["), std::string::npos);
  EXPECT_NE(html.find("dataset.rendered"), std::string::npos);
}

TEST_F(CliTest, ReplayWithoutPacingIsTheSameOnEveryRun) {
  // The lockstep simulation: plans taken at their due step, layers
  // committed within their step, whatever the machine's speed. A = 1 step
  // would often be too short for a paced run under a sanitizer.
  const std::string args =
      "replay --policy flashlb --heat-interval 8 --algo-interval 1 --no-pace "
      "--json";
  Result a = Run(args);
  Result b = Run(args);
  ASSERT_EQ(a.exit_code, 0) << a.err;
  ASSERT_EQ(b.exit_code, 0) << b.err;
  nlohmann::json ja = OneJsonObject(a);
  nlohmann::json jb = OneJsonObject(b);
  EXPECT_EQ(ja["cycles_late"], 0);
  EXPECT_GE(ja["rebalances"].get<int>(), 2);
  for (const char* key : {"imbalance", "rebalances", "experts_moved",
                          "bytes_moved", "layers_committed"}) {
    EXPECT_EQ(ja[key], jb[key]) << key;
  }
}

TEST_F(CliTest, ReplayStopTheWorldShowsTheStall) {
  Result r = Run("replay --algo-interval 4 --sync-migration --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json j = OneJsonObject(r);
  EXPECT_GT(j["max_stall_ms"].get<double>(), 0.0);
  EXPECT_GE(j["rebalances"].get<int>(), 1);
}

TEST_F(CliTest, ReplayRejectsBadInput) {
  const std::string csv = Data("data/dsv2lite-puffin/prefill_by_prompt.csv");
  struct Case {
    std::string args;
    std::string env;
    int exit_code;
    std::string expected;
  };
  const std::string cfg_dynamic =
      Write("dyn.json", "{\"dynamic_eplb\": true}").string();
  const std::string cfg_bad =
      Write("bad.json", "{\"dynamic_eplb\": true, \"x\": 1}").string();
  const std::string cfg_zero =
      Write("zero.json",
            "{\"dynamic_eplb\": true, \"expert_heat_collection_interval\": 0}")
          .string();
  const std::string cfg_static =
      Write("static.json",
            "{\"expert_map_path\": \"" + (dir_ / "none.json").string() + "\"}")
          .string();
  const Case cases[] = {
      {"--trace " + csv + " --model deepseek-v3", "", 1, "has 256"},
      {"--trace " + csv + " --quant int3", "", 1, "--quant"},
      {"--trace " + csv + " --hardware tpu", "", 1, "--hardware"},
      {"--trace " + csv + " --ranks 8 --redundant 3", "", 1,
       "(64 + 3) % 8 = 3"},
      {"--trace " + csv + " --placement-log " +
           (dir_ / "no/such/dir/log.jsonl").string(),
       "", 1, "does not exist"},
      {"--trace " + csv + " --config " + cfg_dynamic, "", 1,
       "DYNAMIC_EPLB=true"},
      {"--trace " + csv + " --config " + cfg_bad, "DYNAMIC_EPLB=true ", 1,
       "unknown key \"x\""},
      {"--trace " + csv + " --config " + cfg_zero, "DYNAMIC_EPLB=true ", 1,
       "expert_heat_collection_interval = 0"},
      {"--trace " + csv + " --config " + cfg_static, "", 1, "none.json"},
      {"--trace " + csv + " --policy 7", "", 1, "unknown policy '7'"},
      {"--trace " + csv + " --transport tcp", "", 1, "--transport tcp"},
      {"--trace " + csv + " --rank-timeout-ms 0", "", 1, "--rank-timeout-ms 0"},
      {"--trace " + csv + " --corrupt-every -1", "", 1, "--corrupt-every -1"},
      {"--trace " + csv + " --forge-checksums", "", 1,
       "--forge-checksums: needs --corrupt-every"},
      {"--trace " + csv + " --fail-rank 0 --fail-at-step 3", "", 1,
       "fail rank 0"},
      {"--trace " + csv +
           " --ranks 4 --redundant 4 --fail-rank 9 "
           "--fail-at-step 3",
       "", 1, "fail rank 9"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.args);
    const fs::path out = dir_ / "stdout", err = dir_ / "stderr";
    const std::string cmd = "env -u DYNAMIC_EPLB -u EXPERT_MAP_RECORD " +
                            c.env + std::string(EPLB_CLI_PATH) + " replay " +
                            c.args + " >" + out.string() + " 2>" + err.string();
    const int raw = std::system(cmd.c_str());
    EXPECT_EQ(WEXITSTATUS(raw), c.exit_code);
    const std::string e = Slurp(err);
    EXPECT_NE(e.find(c.expected), std::string::npos) << e;
  }
  // Intervals longer than the trace: said; only the fast warm-up's early
  // first plan can complete, and without it nothing rebalances.
  Result r =
      Run("replay --trace " + csv + " --heat-interval 5000 --no-pace --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("only a first plan whose collection the fast warm-up "
                       "cuts short can complete"),
            std::string::npos)
      << r.err;
  EXPECT_LE(OneJsonObject(r)["rebalances"], 1);
  const fs::path config = dir_ / "no_warmup.json";
  std::ofstream(config) << R"({"dynamic_eplb": true, "eplb_fast_warmup": false,
                               "num_redundant_experts": 8})";
  r = Run("replay --trace " + csv + " --config " + config.string() +
              " --heat-interval 5000 --no-pace --json",
          "DYNAMIC_EPLB=true ");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("no rebalance can complete"), std::string::npos)
      << r.err;
  EXPECT_EQ(OneJsonObject(r)["rebalances"], 0);
}

TEST_F(CliTest, ReplayRecordThenStatic) {
  const std::string map = (dir_ / "recorded.json").string();
  const std::string rec =
      Write("rec.json", "{\"expert_map_record_path\": \"" + map +
                            "\", \"num_redundant_experts\": 16, "
                            "\"expert_heat_collection_interval\": 8, "
                            "\"algorithm_execution_interval\": 4}")
          .string();
  const std::string stat =
      Write("stat.json", "{\"expert_map_path\": \"" + map +
                             "\", \"num_redundant_experts\": 16}")
          .string();
  const fs::path out = dir_ / "stdout";
  const std::string record_cmd =
      "EXPERT_MAP_RECORD=1 " + std::string(EPLB_CLI_PATH) +
      " replay --ranks 16 --config " + rec + " --json >" + out.string();
  ASSERT_EQ(std::system(record_cmd.c_str()), 0);
  nlohmann::json j = nlohmann::json::parse(Slurp(out));
  EXPECT_EQ(j["mode"], "recording");
  EXPECT_GE(j["maps_written"].get<int>(), 1);
  EXPECT_EQ(Run("validate-map " + map + " --ranks 16 --experts 64 --layers 26")
                .exit_code,
            0);
  // Static: no guard needed; the recorded map serves throughout.
  const std::string log = (dir_ / "static_log.jsonl").string();
  Result s = Run("replay --ranks 16 --config " + stat + " --placement-log " +
                 log + " --json");
  ASSERT_EQ(s.exit_code, 0) << s.err;
  nlohmann::json sj = OneJsonObject(s);
  EXPECT_EQ(sj["mode"], "static");
  EXPECT_EQ(sj["rebalances"], 0);
  EXPECT_EQ(sj["experts_moved"], 0);
  // It serves with the recorded map, not the initial placement: every
  // layer's placement at step 0 is the map's, and nothing changes after.
  const nlohmann::json recorded = nlohmann::json::parse(Slurp(map));
  std::istringstream lines(Slurp(log));
  std::string line;
  int layers = 0;
  while (std::getline(lines, line)) {
    const nlohmann::json entry = nlohmann::json::parse(line);
    ASSERT_EQ(entry["step"], 0) << line;
    const int layer = entry["layer"].get<int>();
    const nlohmann::json& devices =
        recorded["layer_list"][layer]["device_list"];
    ASSERT_EQ(entry["placement"].size(), devices.size());
    for (size_t r = 0; r < devices.size(); ++r) {
      EXPECT_EQ(entry["placement"][r], devices[r]["device_expert"])
          << "layer " << layer << " rank " << r;
    }
    ++layers;
  }
  EXPECT_EQ(layers, 26);
  // "no balancing" stays the default placement, which the map beats.
  EXPECT_LT(sj["imbalance"]["median"].get<double>(),
            sj["baseline_imbalance"]["median"].get<double>());
  Result table = Run("replay --ranks 16 --config " + stat + " --no-pace");
  ASSERT_EQ(table.exit_code, 0) << table.err;
  EXPECT_NE(table.out.find("static map " + map), std::string::npos)
      << table.out;
  EXPECT_NE(table.out.find("no balancing     static map"), std::string::npos)
      << table.out;
}

TEST_F(CliTest, HelpOnEveryCommandAndUsageErrors) {
  for (const char* cmd : {"", "inspect ", "validate-map ", "convert ",
                          "models ", "plan ", "replay "}) {
    SCOPED_TRACE(cmd);
    Result r = Run(std::string(cmd) + "--help");
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_NE(r.out.find("Usage"), std::string::npos) << r.out;
  }
  Result none = Run("");
  EXPECT_EQ(none.exit_code, 2);
  EXPECT_NE(none.err.find("subcommand"), std::string::npos) << none.err;
  Result unknown = Run("frobnicate");
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_EQ(std::count(unknown.err.begin(), unknown.err.end(), '\n'), 1)
      << unknown.err;
}

}  // namespace
