// Tests of the eplb_config layer, table-driven: every rejection
// rule with the exact message (key, value and fix, on one line), the
// environment guard's accepted and rejected values, valid configs with every
// parsed field and the mode, the start-up warning, file reading, and the
// checks against the model and the EP group (arithmetic, expert maps).
#include "eplb/config.h"

#include <gtest/gtest.h>

#include <climits>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "eplb/io.h"
#include "eplb/status.h"
#include "testing/scratch_dir.h"

namespace eplb {
namespace {

namespace fs = std::filesystem;

constexpr char kFixtureMap[] =
    EPLB_SOURCE_DIR "/tests/data/vllm_ascend_expert_map.json";

constexpr char kValidKeys[] =
    "dynamic_eplb, expert_map_path, expert_map_record_path, "
    "expert_heat_collection_interval, algorithm_execution_interval, "
    "num_redundant_experts, eplb_policy_type, eplb_heat_collection_stage, "
    "load_collection_phase, "
    "eplb_dispatch, eplb_migration_budget, eplb_fast_warmup, "
    "eplb_shift_replan, eplb_heat_during_migration, eplb_link_gbytes_per_s, "
    "eplb_planner_threads, "
    "eplb_record_heat_path";
constexpr char kPolicyFix[] =
    "must be 0 (Random), 1 (DefaultEplb), 2 (SwiftBalancer) or 3 (FlashLB)";
constexpr char kDynamicGuardError[] =
    "eplb_config.dynamic_eplb = true needs the environment guard: set "
    "DYNAMIC_EPLB=true (or EXPERT_MAP_RECORD=true)";
constexpr char kRecordGuardError[] =
    "eplb_config.expert_map_record_path = \"r.json\" needs the environment "
    "guard: set EXPERT_MAP_RECORD=true (or DYNAMIC_EPLB=true)";

// The guard variables: DYNAMIC_EPLB, EXPERT_MAP_RECORD (nullopt = unset).
ConfigEnv Env(std::optional<std::string> dynamic_eplb,
              std::optional<std::string> expert_map_record = std::nullopt) {
  return ConfigEnv{std::move(dynamic_eplb), std::move(expert_map_record)};
}
ConfigEnv RecordEnv(std::string expert_map_record) {
  return Env(std::nullopt, std::move(expert_map_record));
}

const ConfigEnv kNoEnv = Env(std::nullopt);
const ConfigEnv kDynamicEnv = Env("true");

// Checks that `status` is a one-line InvalidArgument containing `want`.
void ExpectOneLineError(const Status& status, std::string_view want) {
  ASSERT_FALSE(status.ok()) << "want an error containing: " << want;
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.ToString();
  EXPECT_NE(status.message().find(want), std::string::npos)
      << "want \"" << want << "\" in \"" << status.message() << "\"";
  EXPECT_EQ(status.message().find('\n'), std::string::npos) << status.message();
}

// One parse: an error containing `want_error`, or (nullptr) success in
// `want_mode`.
struct ParseCase {
  const char* name;
  const char* json;
  ConfigEnv env;
  const char* want_error;
  EplbMode want_mode = EplbMode::kDisabled;
};

class ParseEplbConfigTest : public testing::TestWithParam<ParseCase> {};

TEST_P(ParseEplbConfigTest, RejectsOrAccepts) {
  const ParseCase& c = GetParam();
  const StatusOr<ParsedConfig> parsed = ParseEplbConfig(c.json, c.env);
  if (c.want_error != nullptr) {
    ExpectOneLineError(parsed.status(), c.want_error);
    return;
  }
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(EplbModeName(parsed->config.mode()), EplbModeName(c.want_mode));
}

std::string CaseName(const testing::TestParamInfo<ParseCase>& param_info) {
  return param_info.param.name;
}

// Every rule of the config layer except the guard, each with its full message.
const ParseCase kRuleCases[] = {
    // Unknown keys list the valid ones.
    {"UnknownKey", R"({"dynamic_eplbb": true})", kNoEnv,
     "eplb_config: unknown key \"dynamic_eplbb\" (valid keys: dynamic_eplb, "
     "expert_map_path, expert_map_record_path, "
     "expert_heat_collection_interval, algorithm_execution_interval, "
     "num_redundant_experts, eplb_policy_type, eplb_heat_collection_stage, "
     "load_collection_phase, "
     "eplb_dispatch, eplb_migration_budget, eplb_fast_warmup, "
     "eplb_shift_replan, eplb_heat_during_migration, eplb_link_gbytes_per_s, "
     "eplb_planner_threads, "
     "eplb_record_heat_path)"},
    {"UnknownKeyInAdditionalConfig", R"({"eplb_config": {"num_redundant": 2}})",
     kNoEnv, "eplb_config: unknown key \"num_redundant\" (valid keys: "},
    {"UnknownKeyWithNewlineStaysOneLine", "{\"a\\nb\": 1}", kNoEnv,
     "eplb_config: unknown key \"a\\nb\" (valid keys: "},
    {"NestedEplbConfigIsUnknown", R"({"eplb_config": {"eplb_config": {}}})",
     kNoEnv, "eplb_config: unknown key \"eplb_config\""},
    // dynamic_eplb: a bool.
    {"DynamicEplbString", R"({"dynamic_eplb": "yes"})", kNoEnv,
     "eplb_config.dynamic_eplb = \"yes\": must be true or false"},
    {"DynamicEplbInteger", R"({"dynamic_eplb": 1})", kNoEnv,
     "eplb_config.dynamic_eplb = 1: must be true or false"},
    {"DynamicEplbNull", R"({"dynamic_eplb": null})", kNoEnv,
     "eplb_config.dynamic_eplb = null: must be true or false"},
    {"DynamicEplbArray", R"({"dynamic_eplb": [true]})", kNoEnv,
     "eplb_config.dynamic_eplb = [true]: must be true or false"},
    // Paths: strings ending in .json.
    {"MapPathNotString", R"({"expert_map_path": 5})", kNoEnv,
     "eplb_config.expert_map_path = 5: must be a string ending in .json (or "
     "null for none)"},
    {"MapPathNotJson", R"({"expert_map_path": "map.txt"})", kNoEnv,
     "eplb_config.expert_map_path = \"map.txt\": must end in .json"},
    {"MapPathUpperCaseSuffix", R"({"expert_map_path": "/m/MAP.JSON"})", kNoEnv,
     "eplb_config.expert_map_path = \"/m/MAP.JSON\": must end in .json"},
    {"MapPathEmpty", R"({"expert_map_path": ""})", kNoEnv,
     "eplb_config.expert_map_path = \"\": must end in .json"},
    {"MapPathJsonDirectory", R"({"expert_map_path": "/maps.json/"})", kNoEnv,
     "eplb_config.expert_map_path = \"/maps.json/\": must end in .json"},
    {"RecordPathNotString", R"({"expert_map_record_path": true})", kDynamicEnv,
     "eplb_config.expert_map_record_path = true: must be a string ending in "
     ".json"},
    {"RecordPathNotJson", R"({"expert_map_record_path": "r.txt"})", kDynamicEnv,
     "eplb_config.expert_map_record_path = \"r.txt\": must end in .json"},
    // Intervals: integers >= 1.
    {"HeatIntervalZero", R"({"expert_heat_collection_interval": 0})", kNoEnv,
     "eplb_config.expert_heat_collection_interval = 0: must be an integer >= "
     "1"},
    {"HeatIntervalNegative", R"({"expert_heat_collection_interval": -600})",
     kNoEnv,
     "eplb_config.expert_heat_collection_interval = -600: must be an integer "
     ">= 1"},
    {"HeatIntervalFloat", R"({"expert_heat_collection_interval": 600.0})",
     kNoEnv,
     "eplb_config.expert_heat_collection_interval = 600.0: must be an integer "
     ">= 1"},
    {"HeatIntervalString", R"({"expert_heat_collection_interval": "600"})",
     kNoEnv,
     "eplb_config.expert_heat_collection_interval = \"600\": must be an "
     "integer >= 1"},
    {"HeatIntervalBool", R"({"expert_heat_collection_interval": true})", kNoEnv,
     "eplb_config.expert_heat_collection_interval = true: must be an integer "
     ">= 1"},
    {"HeatIntervalTooLarge",
     R"({"expert_heat_collection_interval": 2147483648})", kNoEnv,
     "eplb_config.expert_heat_collection_interval = 2147483648: must be an "
     "integer >= 1 and <= 2147483647"},
    {"HeatIntervalHuge",
     R"({"expert_heat_collection_interval": 18446744073709551615})", kNoEnv,
     "eplb_config.expert_heat_collection_interval = 18446744073709551615: "
     "must be an integer >= 1"},
    {"AlgorithmIntervalZero", R"({"algorithm_execution_interval": 0})", kNoEnv,
     "eplb_config.algorithm_execution_interval = 0: must be an integer >= 1"},
    {"AlgorithmIntervalNegative", R"({"algorithm_execution_interval": -1})",
     kNoEnv,
     "eplb_config.algorithm_execution_interval = -1: must be an integer >= 1"},
    {"AlgorithmIntervalFloat", R"({"algorithm_execution_interval": 50.5})",
     kNoEnv,
     "eplb_config.algorithm_execution_interval = 50.5: must be an integer >= "
     "1"},
    {"AlgorithmIntervalNull", R"({"algorithm_execution_interval": null})",
     kNoEnv,
     "eplb_config.algorithm_execution_interval = null: must be an integer >= "
     "1"},
    // num_redundant_experts: an integer >= 0.
    {"RedundantNegative", R"({"num_redundant_experts": -1})", kNoEnv,
     "eplb_config.num_redundant_experts = -1: must be an integer >= 0"},
    {"RedundantFloat", R"({"num_redundant_experts": 2.5})", kNoEnv,
     "eplb_config.num_redundant_experts = 2.5: must be an integer >= 0"},
    {"RedundantString", R"({"num_redundant_experts": "32"})", kNoEnv,
     "eplb_config.num_redundant_experts = \"32\": must be an integer >= 0"},
    // eplb_policy_type: 0..3.
    {"PolicyMinusOne", R"({"eplb_policy_type": -1})", kNoEnv,
     "eplb_config.eplb_policy_type = -1: must be 0 (Random), 1 (DefaultEplb), "
     "2 (SwiftBalancer) or 3 (FlashLB)"},
    {"PolicyFour", R"({"eplb_policy_type": 4})", kNoEnv,
     "eplb_config.eplb_policy_type = 4: must be 0 (Random), 1 (DefaultEplb), "
     "2 (SwiftBalancer) or 3 (FlashLB)"},
    {"PolicyFive", R"({"eplb_policy_type": 5})", kNoEnv,
     "eplb_config.eplb_policy_type = 5: must be 0 (Random)"},
    {"PolicyFloat", R"({"eplb_policy_type": 2.0})", kNoEnv,
     "eplb_config.eplb_policy_type = 2.0: must be 0 (Random)"},
    {"PolicyName", R"({"eplb_policy_type": "swift"})", kNoEnv,
     "eplb_config.eplb_policy_type = \"swift\": must be 0 (Random)"},
    // eplb_heat_collection_stage: all / prefill / decode.
    {"StageUnknown", R"({"eplb_heat_collection_stage": "both"})", kNoEnv,
     "eplb_config.eplb_heat_collection_stage = \"both\": must be \"all\", "
     "\"prefill\" or \"decode\""},
    {"StageUpperCase", R"({"eplb_heat_collection_stage": "ALL"})", kNoEnv,
     "eplb_config.eplb_heat_collection_stage = \"ALL\": must be \"all\""},
    {"StageInteger", R"({"eplb_heat_collection_stage": 0})", kNoEnv,
     "eplb_config.eplb_heat_collection_stage = 0: must be \"all\""},
    // load_collection_phase: the stage's newer vllm-ascend name.
    {"PhaseUnknown", R"({"load_collection_phase": "prompt"})", kNoEnv,
     "eplb_config.load_collection_phase = \"prompt\": must be \"all\", "
     "\"prefill\" or \"decode\""},
    {"PhaseNull", R"({"load_collection_phase": null})", kNoEnv,
     "eplb_config.load_collection_phase = null: must be \"all\""},
    {"PhaseDisagreesWithStage",
     R"({"eplb_heat_collection_stage": "decode",
         "load_collection_phase": "prefill"})",
     kNoEnv,
     "eplb_config.load_collection_phase = \"prefill\": disagrees with "
     "eplb_heat_collection_stage = \"decode\" (both name the heat stage; "
     "give one)"},
    // eplb's own keys.
    {"DispatchUnknown", R"({"eplb_dispatch": "random"})", kNoEnv,
     "eplb_config.eplb_dispatch = \"random\": must be \"rr\" or "
     "\"balanced\""},
    {"DispatchInteger", R"({"eplb_dispatch": 1})", kNoEnv,
     "eplb_config.eplb_dispatch = 1: must be \"rr\" or \"balanced\""},
    {"BudgetZero", R"({"eplb_migration_budget": 0})", kNoEnv,
     "eplb_config.eplb_migration_budget = 0: must be a number in (0, 1]"},
    {"BudgetAboveOne", R"({"eplb_migration_budget": 1.5})", kNoEnv,
     "eplb_config.eplb_migration_budget = 1.5: must be a number in (0, 1]"},
    {"BudgetString", R"({"eplb_migration_budget": "0.3"})", kNoEnv,
     "eplb_config.eplb_migration_budget = \"0.3\": must be a number"},
    {"BudgetBool", R"({"eplb_migration_budget": true})", kNoEnv,
     "eplb_config.eplb_migration_budget = true: must be a number"},
    {"FastWarmupNotBool", R"({"eplb_fast_warmup": 1})", kNoEnv,
     "eplb_config.eplb_fast_warmup = 1: must be true or false"},
    {"ShiftReplanNotBool", R"({"eplb_shift_replan": "yes"})", kNoEnv,
     "eplb_config.eplb_shift_replan = \"yes\": must be true or false"},
    {"HeatDuringMigrationNotBool", R"({"eplb_heat_during_migration": 0})",
     kNoEnv,
     "eplb_config.eplb_heat_during_migration = 0: must be true or false"},
    {"LinkNegative", R"({"eplb_link_gbytes_per_s": -5})", kNoEnv,
     "eplb_config.eplb_link_gbytes_per_s = -5: must be a number in [0, "
     "1e+06]"},
    {"PlannerThreadsZero", R"({"eplb_planner_threads": 0})", kNoEnv,
     "eplb_config.eplb_planner_threads = 0: must be an integer >= 1"},
    {"RecordHeatPathNeedsRecording", R"({"eplb_record_heat_path": "h.json"})",
     kNoEnv,
     "eplb_config.eplb_record_heat_path = \"h.json\": needs "
     "expert_map_record_path"},
    {"RecordHeatPathNotJson",
     R"({"expert_map_record_path": "m.json", "eplb_record_heat_path": "h"})",
     kNoEnv, "eplb_config.eplb_record_heat_path = \"h\": must end in .json"},
    {"RecordHeatPathIsTheMap",
     R"({"expert_map_record_path": "m.json",
         "eplb_record_heat_path": "m.json"})",
     kNoEnv,
     "eplb_config.eplb_record_heat_path = \"m.json\": must differ from "
     "expert_map_record_path"},
    {"LinkNull", R"({"eplb_link_gbytes_per_s": null})", kNoEnv,
     "eplb_config.eplb_link_gbytes_per_s = null: must be a number"},
    // The document itself.
    {"MalformedJson", R"({"dynamic_eplb": tru})", kNoEnv,
     "eplb_config: malformed JSON: parse error at line 1, column 21: "},
    {"MalformedTrailingComma", R"({"dynamic_eplb": true,})", kNoEnv,
     "eplb_config: malformed JSON: "},
    {"MalformedMultiLine", "{\n\"dynamic_eplb\":\n", kNoEnv,
     "eplb_config: malformed JSON: parse error at line 3, column 1: "},
    {"Empty", "  \n", kNoEnv, "eplb_config: empty input"},
    {"TopLevelArray", R"([{"dynamic_eplb": true}])", kNoEnv,
     "eplb_config: top level = [{\"dynamic_eplb\":true}]: must be an object, "
     "{\"dynamic_eplb\": true, ...} or {\"eplb_config\": {...}}"},
    {"TopLevelString", R"("dynamic")", kNoEnv,
     "eplb_config: top level = \"dynamic\": must be an object"},
    {"TopLevelNull", "null", kNoEnv,
     "eplb_config: top level = null: must be an object"},
    {"EplbConfigArray", R"({"eplb_config": [1]})", kNoEnv,
     "eplb_config = [1]: must be an object, e.g. {\"eplb_config\": "
     "{\"dynamic_eplb\": true}}"},
    {"EplbConfigString",
     R"({"eplb_config": "{\"dynamic_eplb\": true}", "x": 1})", kNoEnv,
     "eplb_config = \"{\\\"dynamic_eplb\\\": true}\": must be an object"},
    {"EplbConfigNull", R"({"eplb_config": null})", kNoEnv,
     "eplb_config = null: must be an object"},
    // Valid key checks run before the guard: the config's own error first.
    {"TypeErrorBeforeGuard", R"({"dynamic_eplb": true, "eplb_policy_type": 7})",
     kNoEnv, "eplb_config.eplb_policy_type = 7: "},
};

INSTANTIATE_TEST_SUITE_P(ConfigTest, ParseEplbConfigTest,
                         testing::ValuesIn(kRuleCases), CaseName);

// The environment guard: dynamic and recording need DYNAMIC_EPLB or
// EXPERT_MAP_RECORD set to true or 1 (case-insensitive, trimmed); static and
// disabled need nothing.
const ParseCase kGuardCases[] = {
    {"DynamicWithoutGuard", R"({"dynamic_eplb": true})", kNoEnv,
     kDynamicGuardError},
    {"DynamicInAdditionalConfigWithoutGuard",
     R"({"eplb_config": {"dynamic_eplb": true}})", kNoEnv, kDynamicGuardError},
    {"RecordingWithoutGuard", R"({"expert_map_record_path": "r.json"})", kNoEnv,
     kRecordGuardError},
    {"RecordingWithDynamicFalseWithoutGuard",
     R"({"expert_map_record_path": "r.json", "dynamic_eplb": false})", kNoEnv,
     kRecordGuardError},
    {"DynamicGuardYes", R"({"dynamic_eplb": true})", Env("yes"),
     "eplb_config.dynamic_eplb = true needs the environment guard: set "
     "DYNAMIC_EPLB=true (or EXPERT_MAP_RECORD=true); DYNAMIC_EPLB=\"yes\" is "
     "neither true nor 1"},
    {"DynamicGuardZero", R"({"dynamic_eplb": true})", Env("0"),
     "; DYNAMIC_EPLB=\"0\" is neither true nor 1"},
    {"DynamicGuardFalse", R"({"dynamic_eplb": true})", Env("false"),
     kDynamicGuardError},
    {"DynamicGuardEmpty", R"({"dynamic_eplb": true})", Env(""),
     kDynamicGuardError},
    {"DynamicGuardTrueWithJunk", R"({"dynamic_eplb": true})", Env("truee"),
     kDynamicGuardError},
    {"RecordGuardYes", R"({"expert_map_record_path": "r.json"})",
     RecordEnv("yes"),
     "eplb_config.expert_map_record_path = \"r.json\" needs the environment "
     "guard: set EXPERT_MAP_RECORD=true (or DYNAMIC_EPLB=true); "
     "EXPERT_MAP_RECORD=\"yes\" is neither true nor 1"},
    {"BothGuardsRejected", R"({"dynamic_eplb": true})", Env("on", "2"),
     "DYNAMIC_EPLB=\"on\" is neither true nor 1; EXPERT_MAP_RECORD=\"2\" is "
     "neither true nor 1"},
    {"GuardValueWithNewlineStaysOneLine", R"({"dynamic_eplb": true})",
     Env("ye\ns"), "DYNAMIC_EPLB=\"ye\\ns\" is neither"},
    // Accepted values.
    {"DynamicGuardTrue", R"({"dynamic_eplb": true})", kDynamicEnv, nullptr,
     EplbMode::kDynamic},
    {"DynamicGuardUpperCase", R"({"dynamic_eplb": true})", Env("TRUE"), nullptr,
     EplbMode::kDynamic},
    {"DynamicGuardOne", R"({"dynamic_eplb": true})", Env("1"), nullptr,
     EplbMode::kDynamic},
    {"DynamicGuardPadded", R"({"dynamic_eplb": true})", Env(" True "), nullptr,
     EplbMode::kDynamic},
    {"DynamicGuardTrailingNewline", R"({"dynamic_eplb": true})", Env("true\n"),
     nullptr, EplbMode::kDynamic},
    {"DynamicByRecordGuard", R"({"dynamic_eplb": true})", RecordEnv("true"),
     nullptr, EplbMode::kDynamic},
    {"DynamicGuardOneOfTwo", R"({"dynamic_eplb": true})", Env("no", "1"),
     nullptr, EplbMode::kDynamic},
    {"RecordingByRecordGuard", R"({"expert_map_record_path": "r.json"})",
     RecordEnv("True"), nullptr, EplbMode::kRecording},
    {"RecordingByDynamicGuard", R"({"expert_map_record_path": "r.json"})",
     Env("1"), nullptr, EplbMode::kRecording},
    {"RecordPathForcesDynamic",
     R"({"expert_map_record_path": "r.json", "dynamic_eplb": false})",
     kDynamicEnv, nullptr, EplbMode::kRecording},
    // No guard needed.
    {"StaticNeedsNoGuard", R"({"expert_map_path": "/maps/eplb.json"})", kNoEnv,
     nullptr, EplbMode::kStatic},
    {"StaticIgnoresRejectedGuard", R"({"expert_map_path": "/maps/eplb.json"})",
     Env("yes"), nullptr, EplbMode::kStatic},
    {"DynamicFalseNeedsNoGuard", R"({"dynamic_eplb": false})", kNoEnv, nullptr,
     EplbMode::kDisabled},
    {"DisabledNeedsNoGuard", "{}", kNoEnv, nullptr, EplbMode::kDisabled},
};

INSTANTIATE_TEST_SUITE_P(ConfigEnvGuardTest, ParseEplbConfigTest,
                         testing::ValuesIn(kGuardCases), CaseName);

// Valid configs: every parsed field and the mode. `edit` turns the default
// EplbConfig into the expected one (nullptr: the defaults).
using ConfigEdit = void (*)(EplbConfig&);

struct ValidCase {
  const char* name;
  const char* json;
  ConfigEnv env;
  ConfigEdit edit;
  EplbMode want_mode;
};

class ValidEplbConfigTest : public testing::TestWithParam<ValidCase> {};

TEST_P(ValidEplbConfigTest, ParsesEveryField) {
  const ValidCase& c = GetParam();
  EplbConfig want;
  if (c.edit != nullptr) c.edit(want);
  const StatusOr<ParsedConfig> parsed = ParseEplbConfig(c.json, c.env);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  const EplbConfig& got = parsed->config;
  EXPECT_EQ(got.dynamic_eplb, want.dynamic_eplb);
  EXPECT_EQ(got.expert_map_path, want.expert_map_path);
  EXPECT_EQ(got.expert_map_record_path, want.expert_map_record_path);
  EXPECT_EQ(got.expert_heat_collection_interval,
            want.expert_heat_collection_interval);
  EXPECT_EQ(got.algorithm_execution_interval,
            want.algorithm_execution_interval);
  EXPECT_EQ(got.num_redundant_experts, want.num_redundant_experts);
  EXPECT_EQ(got.eplb_policy_type, want.eplb_policy_type);
  EXPECT_EQ(HeatStageName(got.eplb_heat_collection_stage),
            HeatStageName(want.eplb_heat_collection_stage));
  EXPECT_EQ(DispatchModeName(got.eplb_dispatch),
            DispatchModeName(want.eplb_dispatch));
  EXPECT_EQ(got.eplb_migration_budget, want.eplb_migration_budget);
  EXPECT_EQ(got.eplb_fast_warmup, want.eplb_fast_warmup);
  EXPECT_EQ(got.eplb_shift_replan, want.eplb_shift_replan);
  EXPECT_EQ(got.eplb_heat_during_migration, want.eplb_heat_during_migration);
  EXPECT_EQ(got.eplb_planner_threads, want.eplb_planner_threads);
  EXPECT_EQ(got.eplb_link_gbytes_per_s, want.eplb_link_gbytes_per_s);
  EXPECT_EQ(EplbModeName(got.mode()), EplbModeName(c.want_mode));
  EXPECT_TRUE(parsed->warnings.empty())
      << testing::PrintToString(parsed->warnings);
}

const ValidCase kValidCases[] = {
    {"EmptyObjectGivesDefaults", "{}", kNoEnv, nullptr, EplbMode::kDisabled},
    {"EmptyAdditionalConfigGivesDefaults", R"({"eplb_config": {}})", kNoEnv,
     nullptr, EplbMode::kDisabled},
    {"NullPathsAreUnset",
     R"({"expert_map_path": null, "expert_map_record_path": null})", kNoEnv,
     nullptr, EplbMode::kDisabled},
    {"DefaultValuesSpelledOut",
     R"({"dynamic_eplb": false, "expert_heat_collection_interval": 600,
         "algorithm_execution_interval": 50, "num_redundant_experts": 0,
         "eplb_policy_type": 2, "eplb_heat_collection_stage": "all"})",
     kNoEnv, nullptr, EplbMode::kDisabled},
    {"EplbOwnKeys",
     R"({"eplb_dispatch": "balanced", "eplb_migration_budget": 0.1,
         "eplb_fast_warmup": false, "eplb_shift_replan": false,
         "eplb_heat_during_migration": false,
         "eplb_link_gbytes_per_s": 56, "eplb_planner_threads": 1})",
     kNoEnv,
     [](EplbConfig& c) {
       c.eplb_dispatch = DispatchMode::kBalanced;
       c.eplb_migration_budget = 0.1;
       c.eplb_fast_warmup = false;
       c.eplb_shift_replan = false;
       c.eplb_heat_during_migration = false;
       c.eplb_planner_threads = 1;
       c.eplb_link_gbytes_per_s = 56;
     },
     EplbMode::kDisabled},
    {"EplbOwnKeysIntegerBudgetAndRoundRobin",
     R"({"eplb_dispatch": "rr", "eplb_migration_budget": 1,
         "eplb_link_gbytes_per_s": 0})",
     kNoEnv, [](EplbConfig& c) { c.eplb_migration_budget = 1.0; },
     EplbMode::kDisabled},
    {"StaticInAdditionalConfigOtherKeysIgnored",
     R"({"torchair_graph_config": {"enabled": true}, "dynamic_eplbb": 1,
         "eplb_config": {"expert_map_path": "/path/to/eplb.json"}})",
     kNoEnv, [](EplbConfig& c) { c.expert_map_path = "/path/to/eplb.json"; },
     EplbMode::kStatic},
    {"UserGuideDynamic",
     R"({"eplb_config": {"dynamic_eplb": true,
         "expert_heat_collection_interval": 600,
         "algorithm_execution_interval": 50, "eplb_policy_type": 2}})",
     kDynamicEnv, [](EplbConfig& c) { c.dynamic_eplb = true; },
     EplbMode::kDynamic},
    {"UserGuideRecording",
     R"({"eplb_config": {"expert_map_record_path": "/path/to/eplb.json",
         "num_redundant_experts": 16, "expert_heat_collection_interval": 400,
         "algorithm_execution_interval": 30}})",
     RecordEnv("true"),
     [](EplbConfig& c) {
       c.dynamic_eplb = true;  // Forced by the record path.
       c.expert_map_record_path = "/path/to/eplb.json";
       c.expert_heat_collection_interval = 400;
       c.algorithm_execution_interval = 30;
       c.num_redundant_experts = 16;
     },
     EplbMode::kRecording},
    {"RecordPathForcesDynamicEplb",
     R"({"expert_map_record_path": "r.json", "dynamic_eplb": false})",
     kDynamicEnv,
     [](EplbConfig& c) {
       c.dynamic_eplb = true;
       c.expert_map_record_path = "r.json";
     },
     EplbMode::kRecording},
    {"DynamicStartsFromMap",
     R"({"dynamic_eplb": true, "expert_map_path": "m.json",
         "eplb_heat_collection_stage": "decode", "eplb_policy_type": 3})",
     kDynamicEnv,
     [](EplbConfig& c) {
       c.dynamic_eplb = true;
       c.expert_map_path = "m.json";
       c.eplb_policy_type = 3;
       c.eplb_heat_collection_stage = HeatStage::kDecode;
     },
     EplbMode::kDynamic},
    {"EveryKeySet",
     R"({"dynamic_eplb": true, "expert_map_path": "in.json",
         "expert_map_record_path": "out.json",
         "expert_heat_collection_interval": 1,
         "algorithm_execution_interval": 2147483647,
         "num_redundant_experts": 32, "eplb_policy_type": 0,
         "eplb_heat_collection_stage": "prefill"})",
     kDynamicEnv,
     [](EplbConfig& c) {
       c.dynamic_eplb = true;
       c.expert_map_path = "in.json";
       c.expert_map_record_path = "out.json";
       c.expert_heat_collection_interval = 1;
       c.algorithm_execution_interval = INT_MAX;
       c.num_redundant_experts = 32;
       c.eplb_policy_type = 0;
       c.eplb_heat_collection_stage = HeatStage::kPrefill;
     },
     EplbMode::kRecording},
    {"LoadCollectionPhasePrefill",
     R"({"eplb_config": {"load_collection_phase": "prefill"}})", kNoEnv,
     [](EplbConfig& c) { c.eplb_heat_collection_stage = HeatStage::kPrefill; },
     EplbMode::kDisabled},
    {"LoadCollectionPhaseAgreesWithStage",
     R"({"load_collection_phase": "decode",
         "eplb_heat_collection_stage": "decode"})",
     kNoEnv,
     [](EplbConfig& c) { c.eplb_heat_collection_stage = HeatStage::kDecode; },
     EplbMode::kDisabled},
    {"PolicyOneStageAll",
     R"({"eplb_policy_type": 1, "eplb_heat_collection_stage": "all"})", kNoEnv,
     [](EplbConfig& c) { c.eplb_policy_type = 1; }, EplbMode::kDisabled},
    {"StaticWithDynamicFalse",
     R"({"expert_map_path": "/m/eplb.json", "num_redundant_experts": 0,
         "dynamic_eplb": false})",
     kNoEnv, [](EplbConfig& c) { c.expert_map_path = "/m/eplb.json"; },
     EplbMode::kStatic},
};

INSTANTIATE_TEST_SUITE_P(
    ConfigTest, ValidEplbConfigTest, testing::ValuesIn(kValidCases),
    [](const testing::TestParamInfo<ValidCase>& param_info) {
      return std::string(param_info.param.name);
    });

TEST(ConfigTest, DefaultsWhenKeysAbsent) {
  const StatusOr<ParsedConfig> parsed = ParseEplbConfig("{}", kNoEnv);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  const EplbConfig& c = parsed->config;
  EXPECT_FALSE(c.dynamic_eplb);
  EXPECT_EQ(c.expert_map_path, std::nullopt);
  EXPECT_EQ(c.expert_map_record_path, std::nullopt);
  EXPECT_EQ(c.expert_heat_collection_interval, 600);
  EXPECT_EQ(c.algorithm_execution_interval, 50);
  EXPECT_EQ(c.num_redundant_experts, 0);
  EXPECT_EQ(c.eplb_policy_type, 2);
  EXPECT_EQ(HeatStageName(c.eplb_heat_collection_stage), "all");
  EXPECT_EQ(EplbModeName(c.mode()), "disabled");
  EXPECT_TRUE(parsed->warnings.empty());
}

TEST(ConfigTest, WarnsWhenAlgorithmIntervalBelow30) {
  const StatusOr<ParsedConfig> parsed = ParseEplbConfig(
      R"({"dynamic_eplb": true, "algorithm_execution_interval": 10})",
      kDynamicEnv);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->config.algorithm_execution_interval, 10);
  ASSERT_EQ(parsed->warnings.size(), 1u);
  EXPECT_EQ(parsed->warnings[0],
            "eplb_config.algorithm_execution_interval = 10 < 30: balancing "
            "may act before the load statistics settle (recommended: 400+ "
            "heat steps for stable traffic, 100-200 for bursty)");
}

TEST(ConfigTest, WarningBoundaryIs30) {
  const StatusOr<ParsedConfig> at29 =
      ParseEplbConfig(R"({"algorithm_execution_interval": 29})", kNoEnv);
  ASSERT_TRUE(at29.ok()) << at29.status().ToString();
  EXPECT_EQ(at29->warnings.size(), 1u);
  const StatusOr<ParsedConfig> at30 =
      ParseEplbConfig(R"({"algorithm_execution_interval": 30})", kNoEnv);
  ASSERT_TRUE(at30.ok()) << at30.status().ToString();
  EXPECT_TRUE(at30->warnings.empty());
}

TEST(ConfigTest, ModeFollowsThePrecedence) {
  struct ModeCase {
    ConfigEdit edit;
    EplbMode want;
  };
  const ModeCase cases[] = {
      {[](EplbConfig&) {}, EplbMode::kDisabled},
      {[](EplbConfig& c) { c.expert_map_path = "m.json"; }, EplbMode::kStatic},
      {[](EplbConfig& c) { c.dynamic_eplb = true; }, EplbMode::kDynamic},
      {[](EplbConfig& c) {
         c.dynamic_eplb = true;
         c.expert_map_path = "m.json";
       },
       EplbMode::kDynamic},
      {[](EplbConfig& c) { c.expert_map_record_path = "r.json"; },
       EplbMode::kRecording},
      {[](EplbConfig& c) {
         c.expert_map_path = "m.json";
         c.expert_map_record_path = "r.json";
       },
       EplbMode::kRecording},
  };
  for (const ModeCase& c : cases) {
    EplbConfig config;
    c.edit(config);
    EXPECT_EQ(EplbModeName(config.mode()), EplbModeName(c.want));
  }
}

TEST(ConfigTest, Names) {
  EXPECT_EQ(EplbModeName(EplbMode::kDisabled), "disabled");
  EXPECT_EQ(EplbModeName(EplbMode::kStatic), "static");
  EXPECT_EQ(EplbModeName(EplbMode::kDynamic), "dynamic");
  EXPECT_EQ(EplbModeName(EplbMode::kRecording), "recording");
  EXPECT_EQ(HeatStageName(HeatStage::kAll), "all");
  EXPECT_EQ(HeatStageName(HeatStage::kPrefill), "prefill");
  EXPECT_EQ(HeatStageName(HeatStage::kDecode), "decode");
}

TEST(ConfigTest, UnknownKeyListsEveryValidKey) {
  const StatusOr<ParsedConfig> parsed =
      ParseEplbConfig(R"({"policy": 2})", kNoEnv);
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().message(),
            std::string("eplb_config: unknown key \"policy\" (valid keys: ") +
                kValidKeys + ")");
}

TEST(ConfigTest, PolicyErrorNamesEveryPolicy) {
  const StatusOr<ParsedConfig> parsed =
      ParseEplbConfig(R"({"eplb_policy_type": 4})", kNoEnv);
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().message(),
            std::string("eplb_config.eplb_policy_type = 4: ") + kPolicyFix);
}

// Saves an environment variable and restores it on scope exit.
class ScopedEnv {
 public:
  explicit ScopedEnv(const char* name) : name_(name) {
    if (const char* value = std::getenv(name)) saved_ = value;
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;
  ~ScopedEnv() {
    if (saved_.has_value()) {
      ::setenv(name_, saved_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> saved_;
};

TEST(ConfigEnvGuardTest, ReadConfigEnvReadsBothVariables) {
  const ScopedEnv dynamic("DYNAMIC_EPLB");
  const ScopedEnv record("EXPERT_MAP_RECORD");
  ::setenv("DYNAMIC_EPLB", " True ", 1);
  ::unsetenv("EXPERT_MAP_RECORD");
  ConfigEnv env = ReadConfigEnv();
  EXPECT_EQ(env.dynamic_eplb, std::optional<std::string>(" True "));
  EXPECT_EQ(env.expert_map_record, std::nullopt);
  EXPECT_TRUE(ParseEplbConfig(R"({"dynamic_eplb": true})", env).ok());

  ::unsetenv("DYNAMIC_EPLB");
  ::setenv("EXPERT_MAP_RECORD", "", 1);
  env = ReadConfigEnv();
  EXPECT_EQ(env.dynamic_eplb, std::nullopt);
  EXPECT_EQ(env.expert_map_record, std::optional<std::string>(""));
  ExpectOneLineError(
      ParseEplbConfig(R"({"expert_map_record_path": "r.json"})", env).status(),
      kRecordGuardError);
}

// Temp files in a scratch directory, removed at the end.
class TempFiles {
 public:
  // A unique path ending in `suffix`, not created.
  std::string Path(std::string_view suffix) {
    return dir_.File("file_" + std::to_string(counter_++) +
                     std::string(suffix));
  }
  std::string Write(std::string_view suffix, std::string_view contents) {
    return dir_.Write(
        "file_" + std::to_string(counter_++) + std::string(suffix), contents);
  }

 private:
  testing_util::ScratchDir dir_{"config"};
  int counter_ = 0;
};

TEST(ConfigTest, ReadEplbConfigParsesAFile) {
  TempFiles files;
  const std::string path = files.Write(
      ".json", R"({"eplb_config": {"expert_map_path": "/m/eplb.json"}})");
  const StatusOr<ParsedConfig> parsed = ReadEplbConfig(path, kNoEnv);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->config.expert_map_path,
            std::optional<std::string>("/m/eplb.json"));
  EXPECT_EQ(EplbModeName(parsed->config.mode()), "static");
}

TEST(ConfigTest, ReadEplbConfigErrorsStartWithThePath) {
  TempFiles files;
  const std::string missing = files.Path(".json");
  const StatusOr<ParsedConfig> absent = ReadEplbConfig(missing, kNoEnv);
  ASSERT_FALSE(absent.ok());
  EXPECT_EQ(absent.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(absent.status().message(), missing + ": no such file");

  const std::string bad = files.Write(".json", R"({"dynamic_eplb": "yes"})");
  const StatusOr<ParsedConfig> parsed = ReadEplbConfig(bad, kNoEnv);
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(
      parsed.status().message(),
      bad + ": eplb_config.dynamic_eplb = \"yes\": must be true or false");
}

// ValidateConfigForModel: which map file the case uses.
enum class MapFile {
  kNone,         // expert_map_path unset.
  kFixture,      // tests/data: 1 layer, 2 devices x 5 slots, 8 experts.
  kMissing,      // A path that does not exist.
  kFourDevices,  // A valid map for 4 devices x 2 slots, 8 experts.
  kMalformed,    // Not JSON.
  kDirectory,    // A directory named *.json.
};

struct ModelCase {
  const char* name;
  int num_redundant;
  MapFile map;
  int num_layers;
  int num_experts;
  int num_ranks;
  int want_slots;  // When want_error is nullptr.
  // "$MAP" stands for the map's path.
  const char* want_error;
};

constexpr char kFourDeviceMap[] = R"({"moe_layer_count": 1, "layer_list": [
  {"layer_id": 0, "device_count": 4, "device_list": [
    {"device_id": 0, "device_expert": [0, 1]},
    {"device_id": 1, "device_expert": [2, 3]},
    {"device_id": 2, "device_expert": [4, 5]},
    {"device_id": 3, "device_expert": [6, 7]}]}]})";

class ValidateConfigForModelTest : public testing::TestWithParam<ModelCase> {
 protected:
  static std::string MapPath(MapFile map) {
    switch (map) {
      case MapFile::kNone:
        return "";
      case MapFile::kFixture:
        return kFixtureMap;
      case MapFile::kMissing:
        return files_->Path("_missing.json");
      case MapFile::kFourDevices:
        return files_->Write("_four.json", kFourDeviceMap);
      case MapFile::kMalformed:
        return files_->Write("_bad.json", "{\"moe_layer_count\": ");
      case MapFile::kDirectory: {
        const std::string path = files_->Path("_dir.json");
        fs::create_directory(path);
        return path;
      }
    }
    return "";
  }

  static void SetUpTestSuite() { files_ = new TempFiles(); }
  static void TearDownTestSuite() {
    delete files_;
    files_ = nullptr;
  }

  static TempFiles* files_;
};

TempFiles* ValidateConfigForModelTest::files_ = nullptr;

TEST_P(ValidateConfigForModelTest, ChecksArithmeticAndMap) {
  const ModelCase& c = GetParam();
  EplbConfig config;
  config.num_redundant_experts = c.num_redundant;
  const std::string path = MapPath(c.map);
  if (c.map != MapFile::kNone) config.expert_map_path = path;
  const StatusOr<int> slots =
      ValidateConfigForModel(config, c.num_layers, c.num_experts, c.num_ranks);
  if (c.want_error == nullptr) {
    ASSERT_TRUE(slots.ok()) << slots.status().ToString();
    EXPECT_EQ(*slots, c.want_slots);
    return;
  }
  std::string want = c.want_error;
  for (size_t at = want.find("$MAP"); at != std::string::npos;
       at = want.find("$MAP", at + path.size())) {
    want.replace(at, 4, path);
  }
  ExpectOneLineError(slots.status(), want);
}

const ModelCase kModelCases[] = {
    {"DeepSeekV3With32Redundant", 32, MapFile::kNone, 58, 256, 32, 9, nullptr},
    {"DeepSeekV3NoRedundant", 0, MapFile::kNone, 58, 256, 32, 8, nullptr},
    {"OneRankHoldsEveryExpert", 0, MapFile::kNone, 1, 8, 1, 8, nullptr},
    {"RedundantNotDivisible", 30, MapFile::kNone, 58, 256, 32, 0,
     "eplb_config.num_redundant_experts = 30: (experts + redundant) % ranks = "
     "(256 + 30) % 32 = 30: must be 0 (every rank has the same number of "
     "slots)"},
    {"NoRedundantNotDivisible", 0, MapFile::kNone, 1, 8, 3, 0,
     "eplb_config.num_redundant_experts = 0: (experts + redundant) % ranks = "
     "(8 + 0) % 3 = 2: must be 0"},
    {"RedundantSoLargeARankHoldsAnExpertTwice", 10, MapFile::kNone, 1, 8, 2, 0,
     "eplb_config.num_redundant_experts = 10: slots_per_rank = 9 > experts = "
     "8: a rank would have to hold an expert twice"},
    {"RedundantNegative", -1, MapFile::kNone, 1, 8, 2, 0,
     "eplb_config.num_redundant_experts = -1: redundant = -1: must be >= 0"},
    {"ZeroRanks", 0, MapFile::kNone, 1, 8, 0, 0,
     "model num_ranks = 0: must be >= 1"},
    {"ZeroExperts", 0, MapFile::kNone, 1, 0, 2, 0,
     "model num_experts = 0: must be >= 1"},
    {"ZeroLayers", 0, MapFile::kNone, 0, 8, 2, 0,
     "model num_layers = 0: must be >= 1"},
    {"FixtureMap", 2, MapFile::kFixture, 1, 8, 2, 5, nullptr},
    {"FixtureMapWrongRedundant", 0, MapFile::kFixture, 1, 8, 2, 0,
     "eplb_config.expert_map_path = \"$MAP\": $MAP: 2 problems in expert map; "
     "first: layer 0, device 0: 5 slots but slots_per_rank is 4"},
    {"FixtureMapWrongLayers", 2, MapFile::kFixture, 2, 8, 2, 0,
     "eplb_config.expert_map_path = \"$MAP\": $MAP: moe_layer_count is 1 but "
     "the model has 2 MoE layers"},
    {"FixtureMapWrongExperts", 0, MapFile::kFixture, 1, 10, 2, 0,
     "eplb_config.expert_map_path = \"$MAP\": $MAP: layer 0: experts 8, 9 are "
     "on no device"},
    {"MissingMap", 2, MapFile::kMissing, 1, 8, 2, 0,
     "eplb_config.expert_map_path = \"$MAP\": $MAP: no such file"},
    {"MapForWrongEpSize", 2, MapFile::kFourDevices, 1, 8, 2, 0,
     "eplb_config.expert_map_path = \"$MAP\": $MAP: 5 problems in expert map; "
     "first: layer 0: 4 devices but the EP size (num_ranks) is 2"},
    {"MapForThisEpSize", 0, MapFile::kFourDevices, 1, 8, 4, 2, nullptr},
    {"MalformedMap", 2, MapFile::kMalformed, 1, 8, 2, 0,
     "eplb_config.expert_map_path = \"$MAP\": $MAP: malformed JSON: "},
    {"MapIsADirectory", 2, MapFile::kDirectory, 1, 8, 2, 0,
     "eplb_config.expert_map_path = \"$MAP\": $MAP: is a directory"},
};

INSTANTIATE_TEST_SUITE_P(
    ConfigModelTest, ValidateConfigForModelTest, testing::ValuesIn(kModelCases),
    [](const testing::TestParamInfo<ModelCase>& param_info) {
      return std::string(param_info.param.name);
    });

TEST(ConfigModelTest, ParsedConfigChecksAgainstTheModel) {
  const StatusOr<ParsedConfig> parsed =
      ParseEplbConfig(std::string(R"({"eplb_config": {"expert_map_path": ")") +
                          kFixtureMap + R"(", "num_redundant_experts": 2}})",
                      kNoEnv);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(EplbModeName(parsed->config.mode()), "static");
  const StatusOr<int> slots = ValidateConfigForModel(parsed->config, 1, 8, 2);
  ASSERT_TRUE(slots.ok()) << slots.status().ToString();
  EXPECT_EQ(*slots, 5);
}

// A corrupt or foreign heat file stops the start with one line naming the
// key and the file, and is left as it was.
TEST(ConfigModelTest, RecordHeatFileIsCheckedAndLeftUntouched) {
  const testing_util::ScratchDir scratch("config_heat");
  EplbConfig config;
  config.expert_map_record_path = scratch.File("map.json");
  config.eplb_record_heat_path = scratch.File("heat.json");
  config.num_redundant_experts = 2;
  // Absent: fine (the first recording run creates it).
  EXPECT_TRUE(ValidateConfigForModel(config, 1, 8, 2).ok());
  const std::string corrupt = R"({"eplb_heat": 1, "num_layers": 1, )";
  scratch.Write("heat.json", corrupt);
  StatusOr<int> bad = ValidateConfigForModel(config, 1, 8, 2);
  ASSERT_FALSE(bad.ok());
  const std::string message = bad.status().message();
  EXPECT_NE(message.find("eplb_config.eplb_record_heat_path = \"" +
                         *config.eplb_record_heat_path + "\""),
            std::string::npos)
      << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  EXPECT_EQ(*ReadFileToString(*config.eplb_record_heat_path), corrupt);
  // A heat file of another model.
  scratch.Write("heat.json",
                R"({"eplb_heat": 1, "num_layers": 1, "num_experts": 4,
                    "workloads": [{"steps": 1, "load": [[1, 2, 3, 4]]}]})");
  bad = ValidateConfigForModel(config, 1, 8, 2);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find(
                "holds loads of 1 layers x 4 experts, the model has 1 x 8"),
            std::string::npos)
      << bad.status().message();
}

}  // namespace
}  // namespace eplb
