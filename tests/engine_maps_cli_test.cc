// End-to-end tests of reading what other engines write, through the eplb
// command line: DeepSeek's and SGLang's maps with two replicas of an expert
// on one rank, convert --repair, validate-map --target, vllm-ascend maps
// without ids, SGLang maps sized by every hidden layer, PyTorch files, and
// load_collection_phase. The fixtures in tests/data/ have the shape and
// content those tools write (tests/data/README.md says where each comes
// from).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "testing/cli_run.h"
#include "testing/scratch_dir.h"

namespace {

namespace fs = std::filesystem;

using Result = eplb::testing_util::CliResult;
using eplb::testing_util::Slurp;

size_t Lines(const std::string& text) {
  return static_cast<size_t>(std::count(text.begin(), text.end(), '\n'));
}

class EngineMapsCliTest : public ::testing::Test {
 protected:
  // Runs `eplb <args>` (args are shell words; quote as needed).
  // `env`: assignments before the command, e.g. "DYNAMIC_EPLB=true ".
  Result Run(const std::string& args, const std::string& env = "") {
    return eplb::testing_util::RunCli(EPLB_CLI_PATH, args, dir_, env);
  }

  std::string Write(const std::string& name, const std::string& text) {
    return scratch_.Write(name, text);
  }
  std::string File(const std::string& name) const {
    return scratch_.File(name);
  }

  static std::string Data(const std::string& rel) {
    return std::string(EPLB_SOURCE_DIR) + "/" + rel;
  }

  // Parses stdout as exactly one JSON object on one line.
  static nlohmann::json OneJsonObject(const Result& r) {
    EXPECT_EQ(Lines(r.out), 1u) << r.out;
    nlohmann::json j = nlohmann::json::parse(r.out, nullptr, false);
    EXPECT_TRUE(j.is_object()) << r.out;
    return j;
  }

  eplb::testing_util::ScratchDir scratch_{"engine_maps"};
  const fs::path dir_ = scratch_.path();
};

const char kColocation[] =
    "an expert twice on one rank (DeepSeek's and SGLang's planners allow it; "
    "eplb's policies and vllm-ascend do not)";
const char kDeepSeek[] = "tests/data/deepseek_colocated.json";
const char kDeepSeekLoad[] = "tests/data/deepseek_colocated_load.json";
const char kSglangDsv2Lite[] = "tests/data/sglang_dsv2lite_ep8.json";
const char kDsv2LiteTrace[] = "data/dsv2lite-puffin/prefill_by_prompt.csv";
const char kNoIds[] = "tests/data/vllm_ascend_map_no_ids.json";
const char kVllmFixture[] = "tests/data/vllm_ascend_expert_map.json";
const char kTorchZip[] = "tests/data/fake_torch_logical_count.pt";
const char kTorchLegacy[] = "tests/data/fake_torch_legacy.pt";
const char kDsv2LiteColocated[] = "layers 0, 2, 4, 5, 9, 10, 13, 19, 20, 25";

// DeepSeek's triple with both replicas of an expert on one GPU is read; the
// warning names the layer on one line.
TEST_F(EngineMapsCliTest, DeepSeekTripleWithColocatedReplicaLoadsWithWarning) {
  const std::string out = File("sg.json");
  Result r = Run("convert --in " + Data(kDeepSeek) +
                 " --ranks 4 --to sglang-map --out " + out);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "eplb: warning: " + Data(kDeepSeek) +
                       ": layer 1: " + kColocation + "\n");
  EXPECT_NE(r.out.find("3 layers, 4 ranks x 3 slots, 8 experts"),
            std::string::npos)
      << r.out;
  // The co-located replicas are kept: SGLang serves them.
  const nlohmann::json sg = nlohmann::json::parse(Slurp(out));
  EXPECT_EQ(sg["physical_to_logical_map"][1],
            (nlohmann::json{3, 1, 7, 3, 1, 7, 4, 6, 5, 2, 2, 0}));
}

// SGLang's physical_to_logical_map of DeepSeek-V2-Lite at EP8 (27 rows: one
// dense layer, then 26 MoE layers of which 10 have an expert twice on a
// rank): read with a warning; the model drops the dense row.
TEST_F(EngineMapsCliTest,
       SglangMapWithDuplicatesAndDenseLayerLoadsWithWarning) {
  const std::string out = File("ds.json");
  Result r =
      Run("convert --in " + Data(kSglangDsv2Lite) +
          " --ranks 8 --model deepseek-v2-lite --to deepseek --out " + out);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("26 layers, 8 ranks x 9 slots, 64 experts"),
            std::string::npos)
      << r.out;
  EXPECT_EQ(r.err,
            "eplb: warning: " + Data(kSglangDsv2Lite) +
                ": dropped the first 1 rows of the 27 in "
                "physical_to_logical_map: dense layers (SGLang sizes its map "
                "by every hidden layer)\n"
                "eplb: warning: " +
                Data(kSglangDsv2Lite) + ": " + kDsv2LiteColocated + ": " +
                kColocation + "\n");
  // The hidden-layer count alone finds the dense row by its content.
  Result counted = Run("convert --in " + Data(kSglangDsv2Lite) +
                       " --ranks 8 --num-hidden-layers 27 --to deepseek "
                       "--out " +
                       File("ds2.json"));
  ASSERT_EQ(counted.exit_code, 0) << counted.err;
  EXPECT_EQ(Slurp(File("ds2.json")), Slurp(out));
  // Without either, every row is a layer.
  Result all = Run("convert --in " + Data(kSglangDsv2Lite) +
                   " --ranks 8 --to deepseek --out " + File("ds3.json"));
  ASSERT_EQ(all.exit_code, 0) << all.err;
  EXPECT_NE(all.out.find("27 layers"), std::string::npos) << all.out;
}

// vllm-ascend rejects a map with an expert twice on a device: convert does
// not write one without --repair.
TEST_F(EngineMapsCliTest, ConvertToVllmMapAsksForRepair) {
  const std::string out = File("m.json");
  Result r = Run("convert --in " + Data(kDeepSeek) +
                 " --ranks 4 --to vllm-map --out " + out);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(
      r.err.find("eplb: " + out + " not written: layer 1: " + kColocation +
                 "; vllm-ascend rejects such a map: add --repair"),
      std::string::npos)
      << r.err;
  EXPECT_FALSE(fs::exists(out));
}

// The must-hold: convert --repair output passes validate-map --target
// vllm-ascend, with every replica count kept.
TEST_F(EngineMapsCliTest, RepairedMapPassesValidateMapForVllmAscend) {
  const std::string out = File("repaired.json");
  Result r = Run("convert --in " + Data(kDeepSeek) +
                 " --ranks 4 --repair --to vllm-map --out " + out);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("repaired 1 co-located replicas in 1 layers with 1 "
                       "swaps (2 slots changed)"),
            std::string::npos)
      << r.out;
  Result v = Run("validate-map " + out + " --target vllm-ascend --json");
  ASSERT_EQ(v.exit_code, 0) << v.err;
  nlohmann::json j = OneJsonObject(v);
  EXPECT_EQ(j["valid"], true);
  EXPECT_EQ(j["target"], "vllm-ascend");
  EXPECT_EQ(j["colocated_layers"], nlohmann::json::array());
  const nlohmann::json map = nlohmann::json::parse(Slurp(out));
  const nlohmann::json& layer1 = map["layer_list"][1]["device_list"];
  EXPECT_EQ(layer1[0]["device_expert"], (nlohmann::json{2, 1, 7}));
  EXPECT_EQ(layer1[3]["device_expert"], (nlohmann::json{2, 3, 0}));
  // Under the load DeepSeek planned for, the swap keeps the ranks lightest.
  const std::string balanced = File("balanced.json");
  Result b =
      Run("convert --in " + Data(kDeepSeek) + " --ranks 4 --repair " +
          "--load " + Data(kDeepSeekLoad) + " --to vllm-map --out " + balanced);
  ASSERT_EQ(b.exit_code, 0) << b.err;
  EXPECT_NE(b.out.find("keeping the busiest rank's load lowest"),
            std::string::npos)
      << b.out;
  EXPECT_EQ(Run("validate-map " + balanced).exit_code, 0);
  const nlohmann::json bmap = nlohmann::json::parse(Slurp(balanced));
  const nlohmann::json& b1 = bmap["layer_list"][1]["device_list"];
  EXPECT_EQ(b1[2]["device_expert"], (nlohmann::json{2, 6, 5}));
  EXPECT_EQ(b1[3]["device_expert"], (nlohmann::json{2, 4, 0}));
  // --load needs --repair.
  EXPECT_EQ(Run("convert --in " + Data(kDeepSeek) + " --ranks 4 --load " +
                Data(kDeepSeekLoad) + " --to deepseek --out " + File("x.json"))
                .exit_code,
            2);
}

// The SGLang map of DeepSeek-V2-Lite repaired under the shipped trace: the
// result serves eplb (validate-map, inspect with the same trace) and goes
// back to SGLang sized as SGLang sizes it.
TEST_F(EngineMapsCliTest, RepairSglangMapUnderTheTraceAndWriteItBack) {
  const std::string vllm = File("dsv2lite_vllm.json");
  Result r = Run("convert --in " + Data(kSglangDsv2Lite) +
                 " --ranks 8 --model deepseek-v2-lite --repair --load " +
                 Data(kDsv2LiteTrace) + " --to vllm-map --out " + vllm);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("in 10 layers"), std::string::npos) << r.out;
  Result v = Run("validate-map " + vllm +
                 " --target vllm-ascend --layers 26 --ranks 8 --experts 64");
  ASSERT_EQ(v.exit_code, 0) << v.err;
  EXPECT_NE(v.out.find("(vllm-ascend rules)"), std::string::npos) << v.out;
  Result inspect = Run("inspect --load " + Data(kDsv2LiteTrace) + " --map " +
                       vllm + " --ranks 8 --slots-per-rank 9 --json");
  ASSERT_EQ(inspect.exit_code, 0) << inspect.err;
  EXPECT_EQ(OneJsonObject(inspect)["layers"], 26);
  // Back to SGLang: 27 rows, the dense one in the initial placement.
  const std::string sg = File("dsv2lite_sg.json");
  Result back = Run("convert --in " + vllm +
                    " --model deepseek-v2-lite --to sglang-map --out " + sg);
  ASSERT_EQ(back.exit_code, 0) << back.err;
  const nlohmann::json rows =
      nlohmann::json::parse(Slurp(sg))["physical_to_logical_map"];
  ASSERT_EQ(rows.size(), 27u);
  for (int i = 0; i < 72; ++i) EXPECT_EQ(rows[0][i], i % 64);
  Result same =
      Run("convert --in " + vllm +
          " --num-hidden-layers 27 --to sglang-map --out " + File("sg2.json"));
  ASSERT_EQ(same.exit_code, 0) << same.err;
  EXPECT_EQ(Slurp(File("sg2.json")), Slurp(sg));
  // And read again, the dense row dropped.
  Result again =
      Run("convert --in " + sg +
          " --ranks 8 --model deepseek-v2-lite --to vllm-map --out " +
          File("again.json"));
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(Slurp(File("again.json")), Slurp(vllm));
}

TEST_F(EngineMapsCliTest, LayerFlagsThatDisagreeAreErrors) {
  const std::string vllm = Data(kVllmFixture);
  struct Case {
    std::string args;
    std::string expected;
  };
  const Case cases[] = {
      {"--model deepseek-v3 --to sglang-map",
       "the map has 1 layers x 8 experts but deepseek-v3 has 58 MoE layers x "
       "256 experts"},
      {"--num-hidden-layers 61 --model deepseek-v2-lite --to sglang-map",
       "--num-hidden-layers 61 disagrees with --model deepseek-v2-lite (27 "
       "hidden layers, the first 1 dense)"},
      {"--num-hidden-layers 3 --to deepseek",
       "--num-hidden-layers and --model apply to sglang-map (in or out)"},
      {"--model llama --to sglang-map", "llama"},
      {"--repair --to trace-csv", "cannot convert a map"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.args);
    Result r =
        Run("convert --in " + vllm + " " + c.args + " --out " + File("o.json"));
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find(c.expected), std::string::npos) << r.err;
    EXPECT_EQ(Lines(r.err), 1u) << r.err;
  }
  Result rows = Run("convert --in " + Data(kSglangDsv2Lite) +
                    " --ranks 8 --model deepseek-v3 --to vllm-map --out " +
                    File("o.json"));
  EXPECT_EQ(rows.exit_code, 1);
  EXPECT_NE(rows.err.find("physical_to_logical_map has 27 rows but the model "
                          "has 61 hidden layers (3 dense, 58 MoE)"),
            std::string::npos)
      << rows.err;
  Result load = Run("convert --in " + Data(kDeepSeekLoad) +
                    " --repair --to trace-csv --out " + File("o.csv"));
  EXPECT_EQ(load.exit_code, 1);
  EXPECT_NE(load.err.find("--repair applies to maps"), std::string::npos)
      << load.err;
}

// validate-map says whose rules it checked; SGLang's allow an expert twice
// on a device, vllm-ascend's do not.
TEST_F(EngineMapsCliTest, ValidateMapTarget) {
  Result plain = Run("validate-map " + Data(kVllmFixture));
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  EXPECT_NE(plain.out.find("(vllm-ascend rules)"), std::string::npos)
      << plain.out;
  Result sg_json =
      Run("validate-map " + Data(kVllmFixture) + " --target sglang --json");
  ASSERT_EQ(sg_json.exit_code, 0) << sg_json.err;
  EXPECT_EQ(OneJsonObject(sg_json)["target"], "sglang");
  // A map with an expert twice on device 0.
  const std::string twice =
      Write("twice.json",
            R"({"moe_layer_count": 1, "layer_list": [{"layer_id": 0,
          "device_count": 2, "device_list": [
          {"device_id": 0, "device_expert": [7, 7, 0, 3, 5]},
          {"device_id": 1, "device_expert": [6, 1, 4, 2, 2]}]}]})");
  Result vllm = Run("validate-map " + twice);
  EXPECT_EQ(vllm.exit_code, 1);
  EXPECT_NE(vllm.err.find("layer 0, device 0, slot 1: expert 7 appears twice "
                          "on the device"),
            std::string::npos)
      << vllm.err;
  EXPECT_NE(vllm.err.find("valid for --target sglang"), std::string::npos)
      << vllm.err;
  EXPECT_TRUE(vllm.out.empty());
  Result sglang = Run("validate-map " + twice + " --target sglang");
  ASSERT_EQ(sglang.exit_code, 0) << sglang.err;
  EXPECT_NE(sglang.out.find(
                "(sglang rules; 1 layers with an expert twice on a device)"),
            std::string::npos)
      << sglang.out;
  EXPECT_EQ(sglang.err,
            "eplb: warning: " + twice + ": layer 0: " + kColocation + "\n");
  Result sglang_json = Run("validate-map " + twice + " --target sglang --json");
  ASSERT_EQ(sglang_json.exit_code, 0) << sglang_json.err;
  nlohmann::json j = OneJsonObject(sglang_json);
  EXPECT_EQ(j["target"], "sglang");
  EXPECT_EQ(j["colocated_layers"], (nlohmann::json{0}));
  EXPECT_EQ(j["warnings"].size(), 1u);
  // SGLang's rules still need every expert placed and ids in range.
  const std::string missing =
      Write("missing.json",
            R"({"moe_layer_count": 1, "layer_list": [{"layer_id": 0,
          "device_count": 2, "device_list": [
          {"device_id": 0, "device_expert": [7, 7, 0, 3, 5]},
          {"device_id": 1, "device_expert": [6, 1, 4, 2, 9]}]}]})");
  Result bad = Run("validate-map " + missing + " --target sglang --experts 8");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("device 1, slot 4: expert 9 out of range [0, 8)"),
            std::string::npos)
      << bad.err;
  Result unknown = Run("validate-map " + twice + " --target vllm");
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_NE(unknown.err.find("--target: map target 'vllm': unknown (valid: "
                             "vllm-ascend, sglang)"),
            std::string::npos)
      << unknown.err;
}

// validate-map reads DeepSeek's and SGLang's maps too (with --ranks).
TEST_F(EngineMapsCliTest, ValidateMapReadsDeepSeekAndSglangMaps) {
  Result need_ranks = Run("validate-map " + Data(kDeepSeek));
  EXPECT_EQ(need_ranks.exit_code, 1);
  EXPECT_NE(need_ranks.err.find("--ranks is required"), std::string::npos)
      << need_ranks.err;
  Result sglang =
      Run("validate-map " + Data(kDeepSeek) + " --ranks 4 --target sglang");
  ASSERT_EQ(sglang.exit_code, 0) << sglang.err;
  EXPECT_EQ(Lines(sglang.err), 1u) << sglang.err;
  Result vllm = Run("validate-map " + Data(kDeepSeek) + " --ranks 4 --json");
  EXPECT_EQ(vllm.exit_code, 1);
  EXPECT_TRUE(vllm.out.empty()) << vllm.out;
  EXPECT_NE(vllm.err.find("layer 1, device 3, slot 1: expert 2 appears twice"),
            std::string::npos)
      << vllm.err;
  Result dsv2 = Run("validate-map " + Data(kSglangDsv2Lite) +
                    " --ranks 8 --target sglang --json");
  ASSERT_EQ(dsv2.exit_code, 0) << dsv2.err;
  nlohmann::json j = OneJsonObject(dsv2);
  EXPECT_EQ(j["format"], "sglang-map");
  EXPECT_EQ(j["layers"], 27);
  EXPECT_EQ(j["colocated_layers"].size(), 10u);
}

// vllm-ascend's reader ignores layer_id and device_id: a map without them
// loads, with a warning for each.
TEST_F(EngineMapsCliTest, VllmAscendMapWithoutIdsLoadsWithWarning) {
  Result r = Run("validate-map " + Data(kNoIds));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("valid: 2 layers, 2 devices x 5 slots, 8 experts"),
            std::string::npos)
      << r.out;
  EXPECT_EQ(Lines(r.err), 2u) << r.err;
  EXPECT_NE(r.err.find("2 of 2 layer_list entries have no layer_id"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("4 of 4 device_list entries have no device_id"),
            std::string::npos)
      << r.err;
  Result j = Run("validate-map " + Data(kNoIds) + " --json");
  ASSERT_EQ(j.exit_code, 0) << j.err;
  EXPECT_EQ(OneJsonObject(j)["warnings"].size(), 2u);
  // convert writes the ids.
  const std::string out = File("with_ids.json");
  ASSERT_EQ(Run("convert --in " + Data(kNoIds) + " --to vllm-map --out " + out)
                .exit_code,
            0);
  Result clean = Run("validate-map " + out);
  ASSERT_EQ(clean.exit_code, 0) << clean.err;
  EXPECT_TRUE(clean.err.empty()) << clean.err;
}

// A PyTorch file where a map or a load is expected: one line saying how to
// turn it into JSON.
TEST_F(EngineMapsCliTest, PyTorchFilesSayHowToConvert) {
  const std::string zip = Data(kTorchZip);
  const std::string legacy = Data(kTorchLegacy);
  struct Case {
    std::string args;
    std::string expected;
  };
  const Case cases[] = {
      {"inspect --load " + zip + " --ranks 2 --slots-per-rank 4",
       "json.dump({'logical_count': d['logical_count'].tolist()}"},
      {"plan --load " + zip + " --ranks 2 --slots-per-rank 4 --out " +
           File("p.json"),
       "holding SGLang's logical_count"},
      {"convert --in " + zip + " --to trace-csv --out " + File("t.csv"),
       "torch.save zip archive"},
      {"convert --in " + zip + " --from sglang-count --to trace-csv --out " +
           File("t.csv"),
       "python3 -c \"import torch, json; "},
      {"validate-map " + legacy, "legacy pickle"},
      {"convert --in " + legacy + " --from vllm-map --to deepseek --out " +
           File("d.json"),
       "then eplb convert --in"},
      {"convert --in " + legacy +
           " --from deepseek --ranks 2 --to vllm-map "
           "--out " +
           File("d.json"),
       "json.dump({'phy2log': torch.load("},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.args);
    Result r = Run(c.args);
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(Lines(r.err), 1u) << r.err;
    EXPECT_TRUE(r.err.starts_with("eplb: ")) << r.err;
    EXPECT_NE(r.err.find(": a PyTorch file ("), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(c.expected), std::string::npos) << r.err;
  }
}

// load_collection_phase, vllm-ascend's newer name of the heat stage, is
// validated like the other keys.
TEST_F(EngineMapsCliTest, LoadCollectionPhaseIsValidated) {
  const std::string bad = Write("phase.json",
                                R"({"eplb_config": {"dynamic_eplb": true,
                          "load_collection_phase": "prompt"}})");
  Result r = Run("replay --config " + bad, "DYNAMIC_EPLB=true ");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "eplb: " + bad +
                       ": eplb_config.load_collection_phase = \"prompt\": "
                       "must be \"all\", \"prefill\" or \"decode\"\n");
  const std::string clash =
      Write("clash.json",
            R"({"dynamic_eplb": true, "load_collection_phase": "decode",
          "eplb_heat_collection_stage": "prefill"})");
  Result c = Run("replay --config " + clash, "DYNAMIC_EPLB=true ");
  EXPECT_EQ(c.exit_code, 1);
  EXPECT_NE(c.err.find("disagrees with eplb_heat_collection_stage"),
            std::string::npos)
      << c.err;
}

}  // namespace
