// eplb validate-map and eplb convert: check expert maps under an engine's
// rules, and convert maps and loads between the formats of docs/formats.md,
// moving co-located replicas apart on request.
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cli_util.h"
#include "eplb/io.h"
#include "eplb/limits.h"
#include "eplb/load.h"
#include "eplb/model.h"
#include "eplb/placement.h"

namespace eplb::cli {
namespace {

// Formats convert handles. Maps and loads do not convert into each other.
enum class Format { kVllmMap, kSglangMap, kDeepSeek, kSglangCount, kCsv };

const std::vector<std::pair<std::string, Format>>& FormatNames() {
  static const auto* const names =
      new std::vector<std::pair<std::string, Format>>{
          {"vllm-map", Format::kVllmMap},
          {"sglang-map", Format::kSglangMap},
          {"deepseek", Format::kDeepSeek},
          {"sglang-count", Format::kSglangCount},
          {"trace-csv", Format::kCsv}};
  return *names;
}

std::string FormatName(Format format) {
  for (const auto& [n, f] : FormatNames()) {
    if (f == format) return n;
  }
  return "unknown";
}

bool IsLoad(Format f) { return f == Format::kSglangCount || f == Format::kCsv; }

StatusOr<Format> ParseFormat(const std::string& flag, const std::string& name) {
  std::string valid;
  for (const auto& [n, f] : FormatNames()) {
    if (n == name) return f;
    valid += (valid.empty() ? "" : ", ") + n;
  }
  return InvalidArgumentError(flag + " = '" + name +
                              "': unknown format (valid: " + valid + ")");
}

// Guesses the format of `path` from its content; nullopt when it cannot.
StatusOr<std::optional<Format>> SniffFormat(const std::string& path) {
  StatusOr<std::string> text = ReadFileToString(path);
  if (!text.ok()) return text.status();
  // The key to wrap a tensor under is unknown here: a map is likelier.
  EPLB_RETURN_IF_ERROR(RejectTorchFile(path, *text, "physical_to_logical_map"));
  const std::string_view content = StripUtf8Bom(*text);
  if (content.starts_with("step,")) return std::optional(Format::kCsv);
  // Nesting too deep to parse recursively is an error here already.
  EPLB_RETURN_IF_ERROR(CheckJsonDepth(content).WithPrefix(path));
  nlohmann::json j = nlohmann::json::parse(content, nullptr,
                                           /*allow_exceptions=*/false);
  if (j.is_object()) {
    if (j.contains("layer_list")) return std::optional(Format::kVllmMap);
    if (j.contains("physical_to_logical_map"))
      return std::optional(Format::kSglangMap);
    if (j.contains("phy2log")) return std::optional(Format::kDeepSeek);
    if (j.contains("logical_count")) return std::optional(Format::kSglangCount);
  }
  return std::optional<Format>();
}

StatusOr<Format> DetectFormat(const std::string& path) {
  EPLB_ASSIGN_OR_RETURN(const std::optional<Format> format, SniffFormat(path));
  if (format.has_value()) return *format;
  return InvalidArgumentError(
      path +
      ": cannot tell its format (give --from; valid formats: "
      "vllm-map, sglang-map, deepseek, sglang-count, trace-csv)");
}

// Prints each warning as "eplb: warning: <path>: <warning>".
void PrintWarnings(const std::string& path,
                   const std::vector<std::string>& warnings) {
  for (const std::string& w : warnings) {
    std::fprintf(stderr, "eplb: warning: %s: %s\n", path.c_str(), w.c_str());
  }
}

// How the rows of an SGLang map relate to the model's layers: from
// --num-hidden-layers and --model.
struct LayerFlags {
  int num_hidden_layers = 0;
  std::string model;

  bool given() const { return num_hidden_layers > 0 || !model.empty(); }

  // The model's hidden and dense layer counts (dense -1: unknown), and its
  // experts (0: unknown). The two flags must agree when both are given.
  struct Layers {
    int hidden = 0;
    int dense = -1;
    int moe = 0;  // 0: unknown.
    int experts = 0;
    std::string model;
  };
  StatusOr<Layers> Resolve() const {
    Layers out;
    out.hidden = num_hidden_layers;
    if (model.empty()) return out;
    EPLB_ASSIGN_OR_RETURN(const ModelSpec spec, FindModelPreset(model));
    const int hidden = spec.num_dense_layers + spec.num_moe_layers;
    if (num_hidden_layers > 0 && num_hidden_layers != hidden) {
      return InvalidArgumentError(
          "--num-hidden-layers " + std::to_string(num_hidden_layers) +
          " disagrees with --model " + spec.name + " (" +
          std::to_string(hidden) + " hidden layers, the first " +
          std::to_string(spec.num_dense_layers) + " dense)");
    }
    out.hidden = hidden;
    out.dense = spec.num_dense_layers;
    out.moe = spec.num_moe_layers;
    out.experts = spec.num_experts;
    out.model = spec.name;
    return out;
  }
};

void AddLayerFlags(CLI::App* cmd, LayerFlags* f) {
  cmd->add_option("--num-hidden-layers", f->num_hidden_layers,
                  "Hidden layers of the model, dense ones included, as "
                  "SGLang sizes physical_to_logical_map")
      ->check(IntRange(1, kMaxLayers));
  cmd->add_option("--model", f->model,
                  "Model preset (eplb models): its hidden layers, the "
                  "leading dense ones and its experts");
}

struct ValidateFlags {
  std::string path;
  std::string from;
  std::string target = "vllm-ascend";
  int experts = 0;
  int ranks = 0;
  int layers = 0;
  bool json = false;
};

// Reads the map at f.path in `format` under `target`'s rules. Problems of a
// vllm-ascend map go to `problems` one by one.
StatusOr<Placement> ReadForValidate(const ValidateFlags& f, Format format,
                                    MapTarget target,
                                    std::vector<std::string>* problems,
                                    std::vector<std::string>* warnings) {
  if (format == Format::kVllmMap) {
    return ReadExpertMapJson(f.path,
                             MapExpectations{.num_layers = f.layers,
                                             .num_ranks = f.ranks,
                                             .num_experts = f.experts,
                                             .target = target},
                             problems, warnings);
  }
  if (f.ranks <= 0) {
    return InvalidArgumentError(
        "--ranks is required to check " + f.path + " (" + FormatName(format) +
        ": its physical ids do not say how many ranks)");
  }
  // These readers follow SGLang's rules; vllm-ascend's are checked here.
  std::vector<std::string> noticed;
  StatusOr<Placement> map =
      format == Format::kSglangMap
          ? ReadSglangPhysicalToLogical(
                f.path,
                SglangMapOptions{.num_ranks = f.ranks,
                                 .num_experts = f.experts},
                &noticed)
          : ReadDeepSeekMaps(f.path, f.ranks, f.experts, &noticed);
  if (!map.ok()) return map;
  if (f.layers > 0 && map->num_layers() != f.layers) {
    problems->push_back("the map has " + std::to_string(map->num_layers()) +
                        " layers but --layers is " + std::to_string(f.layers));
  }
  if (target == MapTarget::kVllmAscend) {
    for (const Violation& v : CheckPlacement(*map, target)) {
      problems->push_back(v.ToString());
    }
  }
  if (!problems->empty()) {
    return InvalidArgumentError(std::to_string(problems->size()) +
                                " problems; first: " + problems->front());
  }
  warnings->insert(warnings->end(), noticed.begin(), noticed.end());
  return map;
}

// The map format of `path`: sglang-map or deepseek by their keys, a load
// named as such, anything else a vllm-ascend map (whose reader names what is
// wrong with it).
StatusOr<Format> DetectMapFormat(const std::string& path) {
  EPLB_ASSIGN_OR_RETURN(const std::optional<Format> format, SniffFormat(path));
  return format.value_or(Format::kVllmMap);
}

int RunValidate(const ValidateFlags& f) {
  StatusOr<MapTarget> target = ParseMapTarget(f.target);
  if (!target.ok()) return Fail("--target: " + target.status().message());
  StatusOr<Format> format =
      f.from.empty() ? DetectMapFormat(f.path) : ParseFormat("--from", f.from);
  if (!format.ok()) return Fail(format.status());
  if (IsLoad(*format)) {
    return Fail(f.path + ": a load (" + FormatName(*format) + "), not a map");
  }
  std::vector<std::string> problems;
  std::vector<std::string> warnings;
  StatusOr<Placement> map =
      ReadForValidate(f, *format, *target, &problems, &warnings);
  if (!map.ok()) {
    if (problems.empty()) return Fail(map.status());
    // The first problems one per line, the rest as a count.
    constexpr size_t kMaxLines = 21;
    const size_t shown =
        problems.size() > kMaxLines ? kMaxLines - 1 : problems.size();
    for (size_t i = 0; i < shown; ++i) {
      std::fprintf(stderr, "eplb: %s: %s\n", f.path.c_str(),
                   problems[i].c_str());
    }
    if (shown < problems.size()) {
      std::fprintf(stderr, "eplb: %s: ... and %zu more problems\n",
                   f.path.c_str(), problems.size() - shown);
    }
    // Say so when the one rule SGLang relaxes is all that failed.
    if (*target == MapTarget::kVllmAscend) {
      std::vector<std::string> ignored;
      if (ReadForValidate(f, *format, MapTarget::kSglang, &ignored, &ignored)
              .ok()) {
        std::fprintf(stderr,
                     "eplb: %s: valid for --target sglang, which allows an "
                     "expert twice on a device; eplb convert --repair moves "
                     "the duplicates to other devices\n",
                     f.path.c_str());
      }
    }
    return kExitFailure;
  }
  PrintWarnings(f.path, warnings);
  const int redundant = map->num_slots() - map->num_experts();
  const int max_replicas = MaxReplicaCount(*map);
  const std::vector<int> colocated = ColocatedLayers(*map);
  const std::string target_name(MapTargetName(*target));
  if (f.json) {
    PrintJson({{"valid", true},
               {"path", f.path},
               {"target", target_name},
               {"format", FormatName(*format)},
               {"layers", map->num_layers()},
               {"devices", map->num_ranks()},
               {"slots_per_device", map->num_slots() / map->num_ranks()},
               {"experts", map->num_experts()},
               {"redundant", redundant},
               {"max_replicas", max_replicas},
               {"colocated_layers", colocated},
               {"warnings", warnings}});
    return 0;
  }
  const std::string colocated_note =
      colocated.empty() ? ""
                        : "; " + std::to_string(colocated.size()) +
                              " layers with an expert twice on a device";
  std::printf(
      "%s: valid: %d layers, %d devices x %d slots, %d experts, %d redundant, "
      "most replicated expert has %d replicas (%s rules%s)\n",
      f.path.c_str(), map->num_layers(), map->num_ranks(),
      map->slots_per_rank(), map->num_experts(), redundant, max_replicas,
      target_name.c_str(), colocated_note.c_str());
  return 0;
}

struct ConvertFlags {
  std::string in;
  std::string out;
  std::string from;
  std::string to;
  int ranks = 0;
  int experts = 0;
  bool repair = false;
  std::string load;
  LayerFlags layers;
};

StatusOr<Placement> ReadMap(const ConvertFlags& f, Format from,
                            const LayerFlags::Layers& model,
                            std::vector<std::string>* warnings) {
  const int experts = f.experts;
  if (from == Format::kVllmMap) {
    // Whatever engine it is for: co-located replicas are a warning here.
    return ReadExpertMapJson(f.in,
                             MapExpectations{.num_ranks = f.ranks,
                                             .num_experts = experts,
                                             .target = MapTarget::kSglang},
                             nullptr, warnings);
  }
  if (f.ranks <= 0) {
    return InvalidArgumentError(
        "--ranks is required to read " + f.in +
        " (its physical ids do not say how many ranks)");
  }
  if (from == Format::kSglangMap) {
    return ReadSglangPhysicalToLogical(
        f.in,
        SglangMapOptions{.num_ranks = f.ranks,
                         .num_experts = experts,
                         .num_hidden_layers = model.hidden,
                         .num_dense_layers = model.dense},
        warnings);
  }
  return ReadDeepSeekMaps(f.in, f.ranks, experts, warnings);
}

// Moves co-located replicas apart (under f.load's balance when given) and
// says what moved.
Status Repair(const ConvertFlags& f, Placement* map) {
  std::optional<LoadMatrix> load;
  if (!f.load.empty()) {
    EPLB_ASSIGN_OR_RETURN(const LoadTrace trace, ReadLoadFile(f.load));
    load = trace.Aggregate();
  }
  StatusOr<ColocationRepair> repair =
      RepairColocated(map, load ? &*load : nullptr);
  if (!repair.ok()) {
    return repair.status().WithPrefix(
        f.load.empty() ? f.in : f.in + " with " + f.load);
  }
  if (repair->duplicates == 0) {
    std::printf("%s: no expert twice on a rank: nothing to repair\n",
                f.in.c_str());
    return Status::Ok();
  }
  std::printf(
      "%s: repaired %d co-located replicas in %zu layers with %d "
      "swaps (%d slots changed)%s\n",
      f.in.c_str(), repair->duplicates, repair->layers.size(), repair->swaps,
      2 * repair->swaps,
      load ? ", keeping the busiest rank's load lowest" : "");
  return Status::Ok();
}

// The text of `map` in format `to`; an SGLang map gets the model's dense
// rows first when its layers are known.
StatusOr<std::string> MapText(const Placement& map, Format to,
                              const LayerFlags::Layers& model) {
  switch (to) {
    case Format::kVllmMap:
      return ExpertMapToJson(map);
    case Format::kSglangMap: {
      if (model.hidden > 0 && map.num_layers() > model.hidden) {
        return InvalidArgumentError("the map has " +
                                    std::to_string(map.num_layers()) +
                                    " layers, more than --num-hidden-layers " +
                                    std::to_string(model.hidden));
      }
      const int dense = model.hidden > 0 ? model.hidden - map.num_layers() : 0;
      return SglangPhysicalToLogicalToJson(map, dense);
    }
    default:
      return DeepSeekMapsToJson(map);
  }
}

int RunConvertMap(const ConvertFlags& f, Format from, Format to) {
  StatusOr<LayerFlags::Layers> model = f.layers.Resolve();
  if (!model.ok()) return Fail(model.status());
  std::vector<std::string> warnings;
  StatusOr<Placement> map = ReadMap(f, from, *model, &warnings);
  if (!map.ok()) return Fail(map.status());
  PrintWarnings(f.in, warnings);
  if (model->moe > 0 && (map->num_layers() != model->moe ||
                         map->num_experts() != model->experts)) {
    return Fail(f.in + ": the map has " + std::to_string(map->num_layers()) +
                " layers x " + std::to_string(map->num_experts()) +
                " experts but " + model->model + " has " +
                std::to_string(model->moe) + " MoE layers x " +
                std::to_string(model->experts) + " experts");
  }
  if (f.repair) {
    if (Status s = Repair(f, &*map); !s.ok()) return Fail(s);
  } else if (to == Format::kVllmMap) {
    const std::vector<int> colocated = ColocatedLayers(*map);
    if (!colocated.empty()) {
      return Fail(f.out + " not written: " + ColocationWarning(colocated) +
                  "; vllm-ascend rejects such a map: add --repair to move "
                  "the duplicates to other ranks");
    }
  }
  StatusOr<std::string> text = MapText(*map, to, *model);
  if (!text.ok()) return Fail(text.status());
  Status s = WriteFileAtomic(f.out, *text);
  if (!s.ok()) return Fail(s);
  std::printf("%s: %d layers, %d ranks x %d slots, %d experts -> %s (%s)\n",
              f.in.c_str(), map->num_layers(), map->num_ranks(),
              map->slots_per_rank(), map->num_experts(), f.out.c_str(),
              f.to.c_str());
  return 0;
}

int RunConvert(const ConvertFlags& f) {
  StatusOr<Format> to = ParseFormat("--to", f.to);
  if (!to.ok()) return Fail(to.status());
  if (Status out = CheckWritablePath(f.out); !out.ok()) {
    return Fail(out.WithPrefix("--out"));
  }
  StatusOr<Format> from =
      f.from.empty() ? DetectFormat(f.in) : ParseFormat("--from", f.from);
  if (!from.ok()) return Fail(from.status());
  if (IsLoad(*from) != IsLoad(*to)) {
    return Fail("cannot convert " +
                std::string(IsLoad(*from) ? "a load" : "a map") + " into " +
                (IsLoad(*to) ? "a load" : "a map") + " format (--to " + f.to +
                ")");
  }
  if (f.layers.given() && *from != Format::kSglangMap &&
      *to != Format::kSglangMap) {
    return Fail(
        "--num-hidden-layers and --model apply to sglang-map (in or out)");
  }
  if (!IsLoad(*from)) return RunConvertMap(f, *from, *to);
  if (f.repair) return Fail("--repair applies to maps, not loads");
  StatusOr<LoadTrace> trace =
      *from == Format::kCsv ? ReadTraceCsv(f.in) : ReadSglangLogicalCount(f.in);
  if (!trace.ok()) return Fail(trace.status());
  Status s = *to == Format::kCsv
                 ? WriteTraceCsv(f.out, *trace)
                 : WriteFileAtomic(f.out, SglangLogicalCountToJson(*trace));
  if (!s.ok()) return Fail(s);
  std::printf("%s: %d steps, %d layers x %d experts -> %s (%s)\n", f.in.c_str(),
              trace->num_steps(), trace->num_layers(), trace->num_experts(),
              f.out.c_str(), f.to.c_str());
  return 0;
}

}  // namespace

void AddValidateMapCommand(CLI::App* app, int* exit_code) {
  auto f = std::make_shared<ValidateFlags>();
  CLI::App* cmd = app->add_subcommand(
      "validate-map",
      "Check an expert map (vllm-map, sglang-map or deepseek) under an "
      "engine's rules; one line per problem");
  cmd->add_option("map", f->path, "Expert-map file")->required();
  cmd->add_option("--target", f->target,
                  "Whose rules: vllm-ascend (no expert twice on a device) or "
                  "sglang (allows it)")
      ->capture_default_str();
  cmd->add_option("--from", f->from,
                  "Map format: vllm-map, sglang-map or deepseek (default: "
                  "detected from content)");
  cmd->add_option("--experts", f->experts,
                  "Logical experts the map must cover "
                  "(default: highest id + 1)")
      ->check(IntRange(1, kMaxExperts));
  cmd->add_option("--ranks", f->ranks,
                  "EP size the map must have (needed for sglang-map and "
                  "deepseek)")
      ->check(IntRange(1, kMaxRanks));
  cmd->add_option("--layers", f->layers, "MoE layers the map must have")
      ->check(IntRange(1, kMaxLayers));
  cmd->add_flag("--json", f->json, "Print one JSON object");
  cmd->callback([f, exit_code] { *exit_code = RunValidate(*f); });
}

void AddConvertCommand(CLI::App* app, int* exit_code) {
  auto f = std::make_shared<ConvertFlags>();
  CLI::App* cmd =
      app->add_subcommand("convert",
                          "Convert maps (vllm-map, sglang-map, deepseek) or "
                          "loads (sglang-count, trace-csv)");
  cmd->add_option("--in", f->in, "Input file")->required();
  cmd->add_option("--out", f->out, "Output file (written atomically)")
      ->required();
  cmd->add_option("--to", f->to, "Output format")->required();
  cmd->add_option("--from", f->from,
                  "Input format (default: detected from content)");
  cmd->add_option("--ranks", f->ranks,
                  "Ranks (needed to read sglang-map and deepseek)")
      ->check(IntRange(1, kMaxRanks));
  cmd->add_option("--experts", f->experts,
                  "Logical experts (default: highest id + 1)")
      ->check(IntRange(1, kMaxExperts));
  CLI::Option* repair = cmd->add_flag(
      "--repair", f->repair,
      "Move every replica that shares a rank with another replica of its "
      "expert to another rank (swapping slots), so vllm-ascend accepts the "
      "map");
  cmd->add_option("--load", f->load,
                  "Load (trace CSV or SGLang logical_count) under which "
                  "--repair keeps the busiest rank's load lowest")
      ->needs(repair);
  AddLayerFlags(cmd, &f->layers);
  cmd->callback([f, exit_code] { *exit_code = RunConvert(*f); });
}

}  // namespace eplb::cli
