// The eplb_config layer: parses the JSON object (bare, or inside a
// whole --additional-config object), checks every key's type and range, the
// environment guard of the dynamic and recording modes, and the config
// against the model and the EP group. Every error is one line naming the key,
// the value and the fix. Stateless pure functions: thread-safe, apart from
// ReadConfigEnv, which is as safe as getenv.
#include "eplb/config.h"

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "eplb/io.h"
#include "eplb/limits.h"
#include "eplb/placement.h"
#include "eplb/robust.h"
#include "eplb/topology.h"
#include "io/json_util.h"

namespace eplb {
namespace {

using internal::Json;

constexpr std::string_view kOuterKey = "eplb_config";
constexpr std::string_view kDynamicEplb = "dynamic_eplb";
constexpr std::string_view kExpertMapPath = "expert_map_path";
constexpr std::string_view kExpertMapRecordPath = "expert_map_record_path";
constexpr std::string_view kHeatInterval = "expert_heat_collection_interval";
constexpr std::string_view kAlgorithmInterval = "algorithm_execution_interval";
constexpr std::string_view kNumRedundant = "num_redundant_experts";
constexpr std::string_view kPolicyType = "eplb_policy_type";
constexpr std::string_view kHeatStage = "eplb_heat_collection_stage";
// vllm-ascend's newer name for the heat stage: the same three values, the
// same meaning (which batches' expert loads are collected).
constexpr std::string_view kLoadCollectionPhase = "load_collection_phase";
// eplb's own keys, beyond vllm-ascend's.
constexpr std::string_view kDispatch = "eplb_dispatch";
constexpr std::string_view kMigrationBudget = "eplb_migration_budget";
constexpr std::string_view kFastWarmup = "eplb_fast_warmup";
constexpr std::string_view kShiftReplan = "eplb_shift_replan";
constexpr std::string_view kHeatDuringMigration = "eplb_heat_during_migration";
constexpr std::string_view kLinkBandwidth = "eplb_link_gbytes_per_s";
constexpr std::string_view kPlannerThreads = "eplb_planner_threads";
constexpr std::string_view kRecordHeatPath = "eplb_record_heat_path";

// vllm-ascend's keys in the order of its table, then eplb's own; the
// unknown-key error lists them so.
constexpr std::array<std::string_view, 17> kValidKeys = {
    kDynamicEplb,    kExpertMapPath,       kExpertMapRecordPath,
    kHeatInterval,   kAlgorithmInterval,   kNumRedundant,
    kPolicyType,     kHeatStage,           kLoadCollectionPhase,
    kDispatch,       kMigrationBudget,     kFastWarmup,
    kShiftReplan,    kHeatDuringMigration, kLinkBandwidth,
    kPlannerThreads, kRecordHeatPath,
};

constexpr std::string_view kDynamicEnv = "DYNAMIC_EPLB";
constexpr std::string_view kRecordEnv = "EXPERT_MAP_RECORD";

// Below this many steps the policy may act on statistics that have not
// settled yet (vllm-ascend's user guide: "should be >= 30").
constexpr int kMinSettledAlgorithmInterval = 30;

constexpr int kIntMax = std::numeric_limits<int>::max();

// `text` as a JSON string literal: control characters escaped so it stays on
// one line, UTF-8 kept readable, never truncated (paths are shown whole).
std::string Quote(std::string_view text) {
  return Json(std::string(text))
      .dump(-1, ' ', /*ensure_ascii=*/false, Json::error_handler_t::replace);
}

// A one-line rendering of any JSON value, containers included, truncated.
std::string Describe(const Json& value) {
  std::string text = value.dump(-1, ' ', /*ensure_ascii=*/true,
                                Json::error_handler_t::replace);
  constexpr size_t kMaxChars = 40;
  if (text.size() > kMaxChars) text = text.substr(0, kMaxChars) + "...";
  return text;
}

// "eplb_config.<key> = <value>: <fix>".
Status KeyError(std::string_view key, const std::string& value,
                std::string_view fix) {
  std::string message = "eplb_config.";
  message += key;
  message += " = ";
  message += value;
  message += ": ";
  message += fix;
  return InvalidArgumentError(std::move(message));
}

Status ReadBool(const Json& value, std::string_view key, bool* out) {
  if (!value.is_boolean()) {
    return KeyError(key, Describe(value), "must be true or false");
  }
  *out = value.get<bool>();
  return Status::Ok();
}

// A path ending in ".json"; null means unset.
Status ReadJsonPath(const Json& value, std::string_view key,
                    std::optional<std::string>* out) {
  if (value.is_null()) {
    out->reset();
    return Status::Ok();
  }
  if (!value.is_string()) {
    return KeyError(key, Describe(value),
                    "must be a string ending in .json (or null for none)");
  }
  const std::string& path = value.get_ref<const std::string&>();
  if (!path.ends_with(".json")) {
    return KeyError(key, Quote(path), "must end in .json");
  }
  *out = path;
  return Status::Ok();
}

// An integer (not a float, not a bool) in [min, kIntMax].
Status ReadIntAtLeast(const Json& value, std::string_view key, int min,
                      int* out) {
  const std::string fix = "must be an integer >= " + std::to_string(min);
  int64_t number = 0;
  if (!internal::GetInt64(value, &number) || number < min) {
    return KeyError(key, Describe(value), fix);
  }
  if (number > kIntMax) {
    return KeyError(key, Describe(value),
                    fix + " and <= " + std::to_string(kIntMax));
  }
  *out = static_cast<int>(number);
  return Status::Ok();
}

Status ReadPolicyType(const Json& value, int* out) {
  int64_t number = 0;
  if (!internal::GetInt64(value, &number) || number < 0 || number > 3) {
    return KeyError(kPolicyType, Describe(value),
                    "must be 0 (Random), 1 (DefaultEplb), 2 (SwiftBalancer) "
                    "or 3 (FlashLB)");
  }
  *out = static_cast<int>(number);
  return Status::Ok();
}

Status ReadHeatStage(const Json& value, std::string_view key, HeatStage* out) {
  if (value.is_string()) {
    const std::string& name = value.get_ref<const std::string&>();
    for (const HeatStage stage :
         {HeatStage::kAll, HeatStage::kPrefill, HeatStage::kDecode}) {
      if (name == HeatStageName(stage)) {
        *out = stage;
        return Status::Ok();
      }
    }
  }
  return KeyError(key, Describe(value),
                  R"(must be "all", "prefill" or "decode")");
}

// "true" or "1", case-insensitive, surrounding whitespace ignored.
bool GuardIsSet(const std::optional<std::string>& value) {
  if (!value.has_value()) return false;
  constexpr std::string_view kSpace = " \t\r\n\f\v";
  std::string_view text = *value;
  const size_t first = text.find_first_not_of(kSpace);
  if (first == std::string_view::npos) return false;
  text = text.substr(first, text.find_last_not_of(kSpace) - first + 1);
  if (text == "1") return true;
  if (text.size() != 4) return false;
  constexpr std::string_view kTrue = "true";
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c != kTrue[i]) return false;
  }
  return true;
}

// "; DYNAMIC_EPLB="yes" is neither true nor 1" for each guard variable that
// is set to something else, so the fix is plain when one is already there.
std::string DescribeRejectedGuards(const ConfigEnv& env) {
  std::string out;
  const std::pair<std::string_view, const std::optional<std::string>*>
      guards[] = {{kDynamicEnv, &env.dynamic_eplb},
                  {kRecordEnv, &env.expert_map_record}};
  for (const auto& [name, value] : guards) {
    if (!value->has_value()) continue;
    out += "; ";
    out += name;
    out += "=";
    out += Quote(**value);
    out += " is neither true nor 1";
  }
  return out;
}

// Dynamic and recording modes need a guard variable; the error names the
// key that asked for the mode and the variable to set.
Status CheckGuard(const EplbConfig& config, const ConfigEnv& env) {
  const EplbMode mode = config.mode();
  if (mode != EplbMode::kDynamic && mode != EplbMode::kRecording) {
    return Status::Ok();
  }
  if (GuardIsSet(env.dynamic_eplb) || GuardIsSet(env.expert_map_record)) {
    return Status::Ok();
  }
  std::string message = "eplb_config.";
  if (mode == EplbMode::kRecording) {
    message += kExpertMapRecordPath;
    message += " = " + Quote(*config.expert_map_record_path);
    message += " needs the environment guard: set ";
    message += kRecordEnv;
    message += "=true (or ";
    message += kDynamicEnv;
    message += "=true)";
  } else {
    message += kDynamicEplb;
    message += " = true needs the environment guard: set ";
    message += kDynamicEnv;
    message += "=true (or ";
    message += kRecordEnv;
    message += "=true)";
  }
  message += DescribeRejectedGuards(env);
  return InvalidArgumentError(std::move(message));
}

std::string ValidKeysList() {
  std::string out;
  for (size_t i = 0; i < kValidKeys.size(); ++i) {
    if (i > 0) out += ", ";
    out += kValidKeys[i];
  }
  return out;
}

Status ReadDispatch(const Json& value, DispatchMode* out) {
  if (value.is_string()) {
    StatusOr<DispatchMode> mode =
        ParseDispatchMode(value.get_ref<const std::string&>());
    if (mode.ok()) {
      *out = *mode;
      return Status::Ok();
    }
  }
  return KeyError(kDispatch, Describe(value), R"(must be "rr" or "balanced")");
}

// A finite number (integers too, not a bool) in (low, high] (or [0, high]
// when zero_ok).
Status ReadNumber(const Json& value, std::string_view key, double low,
                  double high, bool zero_ok, double* out) {
  const bool number = value.is_number() && !value.is_boolean();
  const double v = number ? value.get<double>() : 0.0;
  if (!number || !std::isfinite(v) || v > high ||
      !(v > low || (zero_ok && v == 0.0))) {
    auto text = [](double x) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%g", x);
      return std::string(buf);
    };
    const std::string range =
        (zero_ok ? "a number in [0, " : "a number in (" + text(low) + ", ") +
        text(high) + "]";
    return KeyError(key, Describe(value), "must be " + range);
  }
  *out = v;
  return Status::Ok();
}

// Reads the keys of the eplb_config object `object` into `config`.
Status ReadKeys(const Json& object, EplbConfig* config) {
  for (const auto& item : object.items()) {
    bool known = false;
    for (const std::string_view key : kValidKeys) known |= item.key() == key;
    if (!known) {
      return InvalidArgumentError("eplb_config: unknown key " +
                                  Quote(item.key()) +
                                  " (valid keys: " + ValidKeysList() + ")");
    }
  }
  // Looks up `key`; nullptr when absent (the default stays).
  const auto find = [&object](std::string_view key) -> const Json* {
    const auto it = object.find(std::string(key));
    return it == object.end() ? nullptr : &*it;
  };
  if (const Json* v = find(kDynamicEplb)) {
    EPLB_RETURN_IF_ERROR(ReadBool(*v, kDynamicEplb, &config->dynamic_eplb));
  }
  if (const Json* v = find(kExpertMapPath)) {
    EPLB_RETURN_IF_ERROR(
        ReadJsonPath(*v, kExpertMapPath, &config->expert_map_path));
  }
  if (const Json* v = find(kExpertMapRecordPath)) {
    EPLB_RETURN_IF_ERROR(ReadJsonPath(*v, kExpertMapRecordPath,
                                      &config->expert_map_record_path));
  }
  if (const Json* v = find(kHeatInterval)) {
    EPLB_RETURN_IF_ERROR(ReadIntAtLeast(
        *v, kHeatInterval, 1, &config->expert_heat_collection_interval));
  }
  if (const Json* v = find(kAlgorithmInterval)) {
    EPLB_RETURN_IF_ERROR(ReadIntAtLeast(*v, kAlgorithmInterval, 1,
                                        &config->algorithm_execution_interval));
  }
  if (const Json* v = find(kNumRedundant)) {
    EPLB_RETURN_IF_ERROR(
        ReadIntAtLeast(*v, kNumRedundant, 0, &config->num_redundant_experts));
  }
  if (const Json* v = find(kPolicyType)) {
    EPLB_RETURN_IF_ERROR(ReadPolicyType(*v, &config->eplb_policy_type));
  }
  if (const Json* v = find(kHeatStage)) {
    EPLB_RETURN_IF_ERROR(
        ReadHeatStage(*v, kHeatStage, &config->eplb_heat_collection_stage));
  }
  if (const Json* v = find(kLoadCollectionPhase)) {
    HeatStage phase = HeatStage::kAll;
    EPLB_RETURN_IF_ERROR(ReadHeatStage(*v, kLoadCollectionPhase, &phase));
    if (find(kHeatStage) != nullptr &&
        phase != config->eplb_heat_collection_stage) {
      return KeyError(
          kLoadCollectionPhase, Describe(*v),
          "disagrees with " + std::string(kHeatStage) + " = \"" +
              std::string(HeatStageName(config->eplb_heat_collection_stage)) +
              "\" (both name the heat stage; give one)");
    }
    config->eplb_heat_collection_stage = phase;
  }
  if (const Json* v = find(kDispatch)) {
    EPLB_RETURN_IF_ERROR(ReadDispatch(*v, &config->eplb_dispatch));
  }
  if (const Json* v = find(kMigrationBudget)) {
    EPLB_RETURN_IF_ERROR(ReadNumber(*v, kMigrationBudget, 0.0, 1.0,
                                    /*zero_ok=*/false,
                                    &config->eplb_migration_budget));
  }
  if (const Json* v = find(kFastWarmup)) {
    EPLB_RETURN_IF_ERROR(ReadBool(*v, kFastWarmup, &config->eplb_fast_warmup));
  }
  if (const Json* v = find(kShiftReplan)) {
    EPLB_RETURN_IF_ERROR(
        ReadBool(*v, kShiftReplan, &config->eplb_shift_replan));
  }
  if (const Json* v = find(kHeatDuringMigration)) {
    EPLB_RETURN_IF_ERROR(ReadBool(*v, kHeatDuringMigration,
                                  &config->eplb_heat_during_migration));
  }
  if (const Json* v = find(kLinkBandwidth)) {
    EPLB_RETURN_IF_ERROR(ReadNumber(*v, kLinkBandwidth, 0.0, 1e6,
                                    /*zero_ok=*/true,
                                    &config->eplb_link_gbytes_per_s));
  }
  if (const Json* v = find(kPlannerThreads)) {
    EPLB_RETURN_IF_ERROR(
        ReadIntAtLeast(*v, kPlannerThreads, 1, &config->eplb_planner_threads));
  }
  if (const Json* v = find(kRecordHeatPath)) {
    EPLB_RETURN_IF_ERROR(
        ReadJsonPath(*v, kRecordHeatPath, &config->eplb_record_heat_path));
  }
  if (config->eplb_record_heat_path.has_value()) {
    const std::string& heat = *config->eplb_record_heat_path;
    if (!config->expert_map_record_path.has_value()) {
      return KeyError(kRecordHeatPath, Quote(heat),
                      "needs expert_map_record_path (recording mode), "
                      "where the robust map is written");
    }
    if (heat == *config->expert_map_record_path ||
        (config->expert_map_path.has_value() &&
         heat == *config->expert_map_path)) {
      return KeyError(kRecordHeatPath, Quote(heat),
                      "must differ from expert_map_record_path and "
                      "expert_map_path (it holds loads, not a map)");
    }
  }
  // Recording is a dynamic run that also writes its map.
  if (config->expert_map_record_path.has_value()) config->dynamic_eplb = true;
  return Status::Ok();
}

}  // namespace

std::string_view EplbModeName(EplbMode mode) {
  switch (mode) {
    case EplbMode::kDisabled:
      return "disabled";
    case EplbMode::kStatic:
      return "static";
    case EplbMode::kDynamic:
      return "dynamic";
    case EplbMode::kRecording:
      return "recording";
  }
  return "unknown";
}

std::string_view HeatStageName(HeatStage stage) {
  switch (stage) {
    case HeatStage::kAll:
      return "all";
    case HeatStage::kPrefill:
      return "prefill";
    case HeatStage::kDecode:
      return "decode";
  }
  return "unknown";
}

EplbMode EplbConfig::mode() const {
  if (expert_map_record_path.has_value()) return EplbMode::kRecording;
  if (dynamic_eplb) return EplbMode::kDynamic;
  if (expert_map_path.has_value()) return EplbMode::kStatic;
  return EplbMode::kDisabled;
}

ConfigEnv ReadConfigEnv() {
  const auto get = [](std::string_view name) -> std::optional<std::string> {
    const char* value = std::getenv(std::string(name).c_str());
    if (value == nullptr) return std::nullopt;
    return std::string(value);
  };
  return ConfigEnv{.dynamic_eplb = get(kDynamicEnv),
                   .expert_map_record = get(kRecordEnv)};
}

StatusOr<ParsedConfig> ParseEplbConfig(std::string_view json_text,
                                       const ConfigEnv& env) {
  Json root;
  if (Status status = internal::ParseJson(json_text, &root); !status.ok()) {
    return status.WithPrefix(kOuterKey);
  }
  if (!root.is_object()) {
    return InvalidArgumentError(
        "eplb_config: top level = " + Describe(root) +
        R"(: must be an object, {"dynamic_eplb": true, ...} or )"
        R"({"eplb_config": {...}})");
  }
  const Json* object = &root;
  if (const auto it = root.find(std::string(kOuterKey)); it != root.end()) {
    if (!it->is_object()) {
      return InvalidArgumentError(
          "eplb_config = " + Describe(*it) +
          R"(: must be an object, e.g. {"eplb_config": {"dynamic_eplb": )"
          R"(true}})");
    }
    object = &*it;
  }

  ParsedConfig parsed;
  EPLB_RETURN_IF_ERROR(ReadKeys(*object, &parsed.config));
  EPLB_RETURN_IF_ERROR(CheckGuard(parsed.config, env));

  const int interval = parsed.config.algorithm_execution_interval;
  if (interval < kMinSettledAlgorithmInterval) {
    parsed.warnings.push_back(
        "eplb_config.algorithm_execution_interval = " +
        std::to_string(interval) + " < " +
        std::to_string(kMinSettledAlgorithmInterval) +
        ": balancing may act before the load statistics settle "
        "(recommended: 400+ heat steps for stable traffic, 100-200 for "
        "bursty)");
  }
  return parsed;
}

StatusOr<ParsedConfig> ReadEplbConfig(const std::string& path,
                                      const ConfigEnv& env) {
  // File errors already start with the path.
  EPLB_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path));
  StatusOr<ParsedConfig> parsed = ParseEplbConfig(text, env);
  if (!parsed.ok()) return parsed.status().WithPrefix(path);
  return parsed;
}

StatusOr<int> ValidateConfigForModel(const EplbConfig& config, int num_layers,
                                     int num_experts, int num_ranks) {
  const std::pair<std::string_view, int> model_sizes[] = {
      {"num_layers", num_layers},
      {"num_experts", num_experts},
      {"num_ranks", num_ranks}};
  for (const auto& [name, value] : model_sizes) {
    if (value < 1) {
      return InvalidArgumentError("eplb_config check: model " +
                                  std::string(name) + " = " +
                                  std::to_string(value) + ": must be >= 1");
    }
  }

  const int num_redundant = config.num_redundant_experts;
  StatusOr<Topology> topology =
      MakeTopologyFromRedundant(num_experts, num_ranks, num_redundant);
  if (!topology.ok()) {
    return InvalidArgumentError("eplb_config." + std::string(kNumRedundant) +
                                " = " + std::to_string(num_redundant) + ": " +
                                topology.status().message());
  }
  const int slots_per_rank = topology->slots_per_rank;
  const int64_t cells = int64_t{num_layers} * topology->num_slots();
  if (cells > kMaxMapCells) {
    return InvalidArgumentError(
        "eplb_config check: " + std::to_string(num_layers) + " layers x " +
        std::to_string(topology->num_slots()) +
        " slots = " + std::to_string(cells) +
        " map cells exceeds the limit of " + std::to_string(kMaxMapCells));
  }

  // Recording mode writes its map at every rebalance: a path it cannot
  // write is a start-up error, not a failure logged every cycle.
  if (config.expert_map_record_path.has_value()) {
    const std::string& path = *config.expert_map_record_path;
    if (Status s = CheckWritablePath(path); !s.ok()) {
      return InvalidArgumentError("eplb_config.expert_map_record_path = " +
                                  Quote(path) + ": " + s.message());
    }
  }

  // The heat file of robust recording: writable, and when present a heat
  // file of this model (a corrupt one stops the start, never overwritten).
  if (config.eplb_record_heat_path.has_value()) {
    const std::string& path = *config.eplb_record_heat_path;
    if (Status s = CheckWritablePath(path); !s.ok()) {
      return KeyError(kRecordHeatPath, Quote(path), s.message());
    }
    StatusOr<HeatFile> heat = ReadHeatFile(path);
    if (!heat.ok() && heat.status().code() != StatusCode::kNotFound) {
      return KeyError(kRecordHeatPath, Quote(path), heat.status().message());
    }
    if (heat.ok() &&
        (heat->num_layers != num_layers || heat->num_experts != num_experts)) {
      return KeyError(
          kRecordHeatPath, Quote(path),
          "holds loads of " + std::to_string(heat->num_layers) + " layers x " +
              std::to_string(heat->num_experts) + " experts, the model has " +
              std::to_string(num_layers) + " x " + std::to_string(num_experts) +
              " (use another heat file for this model)");
    }
  }

  if (config.expert_map_path.has_value()) {
    const std::string& path = *config.expert_map_path;
    const MapExpectations expect{.num_layers = num_layers,
                                 .num_ranks = num_ranks,
                                 .num_experts = num_experts,
                                 .slots_per_rank = slots_per_rank};
    // A missing or broken map is a start-up error of the config key, so
    // every failure here is InvalidArgument (the message names the path).
    const StatusOr<Placement> map = ReadExpertMapJson(path, expect);
    if (!map.ok()) {
      return InvalidArgumentError("eplb_config." + std::string(kExpertMapPath) +
                                  " = " + Quote(path) + ": " +
                                  map.status().message());
    }
  }
  return slots_per_rank;
}

}  // namespace eplb
