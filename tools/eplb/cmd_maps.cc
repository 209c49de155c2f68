// eplb validate-map and eplb convert: check expert maps, and convert maps
// and loads between the formats of docs/formats.md.
#include <cstdio>
#include <memory>
#include <vector>

#include "cli_util.h"
#include "eplb/io.h"
#include "eplb/placement.h"

namespace eplb::cli {
namespace {

struct ValidateFlags {
  std::string path;
  int experts = 0;
  int ranks = 0;
  int layers = 0;
  bool json = false;
};

int RunValidate(const ValidateFlags& f) {
  std::vector<std::string> problems;
  StatusOr<Placement> map =
      ReadExpertMapJson(f.path,
                        MapExpectations{.num_layers = f.layers,
                                        .num_ranks = f.ranks,
                                        .num_experts = f.experts},
                        &problems);
  if (!map.ok()) {
    if (problems.empty()) return Fail(map.status());
    for (const std::string& p : problems) {
      std::fprintf(stderr, "eplb: %s: %s\n", f.path.c_str(), p.c_str());
    }
    return kExitFailure;
  }
  const int redundant = map->num_slots() - map->num_experts();
  const int max_replicas = MaxReplicaCount(*map);
  if (f.json) {
    PrintJson({{"valid", true},
               {"path", f.path},
               {"layers", map->num_layers()},
               {"devices", map->num_ranks()},
               {"slots_per_device", map->num_slots() / map->num_ranks()},
               {"experts", map->num_experts()},
               {"redundant", redundant},
               {"max_replicas", max_replicas}});
    return 0;
  }
  std::printf(
      "%s: valid: %d layers, %d devices x %d slots, %d experts, %d redundant, "
      "most replicated expert has %d replicas\n",
      f.path.c_str(), map->num_layers(), map->num_ranks(),
      map->slots_per_rank(), map->num_experts(), redundant, max_replicas);
  return 0;
}

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

// Guesses the format of `path` from its content.
StatusOr<Format> DetectFormat(const std::string& path) {
  StatusOr<std::string> text = ReadFileToString(path);
  if (!text.ok()) return text.status();
  if (text->rfind("step,", 0) == 0) return Format::kCsv;
  nlohmann::json j =
      nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (j.is_object()) {
    if (j.contains("layer_list")) return Format::kVllmMap;
    if (j.contains("physical_to_logical_map")) return Format::kSglangMap;
    if (j.contains("phy2log")) return Format::kDeepSeek;
    if (j.contains("logical_count")) return Format::kSglangCount;
  }
  return InvalidArgumentError(
      path +
      ": cannot tell its format (give --from; valid formats: "
      "vllm-map, sglang-map, deepseek, sglang-count, trace-csv)");
}

struct ConvertFlags {
  std::string in;
  std::string out;
  std::string from;
  std::string to;
  int ranks = 0;
  int experts = 0;
};

StatusOr<Placement> ReadMap(const ConvertFlags& f, Format from) {
  if (from == Format::kVllmMap) {
    return ReadExpertMapJson(
        f.in, MapExpectations{.num_ranks = f.ranks, .num_experts = f.experts});
  }
  if (f.ranks <= 0) {
    return InvalidArgumentError(
        "--ranks is required to read " + f.in +
        " (its physical ids do not say how many ranks)");
  }
  StatusOr<std::string> text = ReadFileToString(f.in);
  if (!text.ok()) return text.status();
  StatusOr<Placement> p =
      from == Format::kSglangMap
          ? ParseSglangPhysicalToLogical(*text, f.ranks, f.experts)
          : ParseDeepSeekMaps(*text, f.ranks, f.experts);
  if (!p.ok()) return p.status().WithPrefix(f.in);
  return p;
}

int RunConvert(const ConvertFlags& f) {
  StatusOr<Format> to = ParseFormat("--to", f.to);
  if (!to.ok()) return Fail(to.status());
  StatusOr<Format> from =
      f.from.empty() ? DetectFormat(f.in) : ParseFormat("--from", f.from);
  if (!from.ok()) return Fail(from.status());
  if (IsLoad(*from) != IsLoad(*to)) {
    return Fail("cannot convert " +
                std::string(IsLoad(*from) ? "a load" : "a map") + " into " +
                (IsLoad(*to) ? "a load" : "a map") + " format (--to " + f.to +
                ")");
  }
  if (IsLoad(*from)) {
    StatusOr<LoadTrace> trace = *from == Format::kCsv
                                    ? ReadTraceCsv(f.in)
                                    : ReadSglangLogicalCount(f.in);
    if (!trace.ok()) return Fail(trace.status());
    Status s = *to == Format::kCsv
                   ? WriteTraceCsv(f.out, *trace)
                   : WriteFileAtomic(f.out, SglangLogicalCountToJson(*trace));
    if (!s.ok()) return Fail(s);
    std::printf("%s: %d steps, %d layers x %d experts -> %s (%s)\n",
                f.in.c_str(), trace->num_steps(), trace->num_layers(),
                trace->num_experts(), f.out.c_str(), f.to.c_str());
    return 0;
  }
  StatusOr<Placement> map = ReadMap(f, *from);
  if (!map.ok()) return Fail(map.status());
  std::string text;
  switch (*to) {
    case Format::kVllmMap:
      text = ExpertMapToJson(*map);
      break;
    case Format::kSglangMap:
      text = SglangPhysicalToLogicalToJson(*map);
      break;
    default:
      text = DeepSeekMapsToJson(*map);
      break;
  }
  Status s = WriteFileAtomic(f.out, text);
  if (!s.ok()) return Fail(s);
  std::printf("%s: %d layers, %d ranks x %d slots, %d experts -> %s (%s)\n",
              f.in.c_str(), map->num_layers(), map->num_ranks(),
              map->slots_per_rank(), map->num_experts(), f.out.c_str(),
              f.to.c_str());
  return 0;
}

}  // namespace

void AddValidateMapCommand(CLI::App* app, int* exit_code) {
  auto f = std::make_shared<ValidateFlags>();
  CLI::App* cmd = app->add_subcommand(
      "validate-map",
      "Check an expert-map JSON (vllm-ascend layout); one line per problem");
  cmd->add_option("map", f->path, "Expert-map JSON file")->required();
  cmd->add_option("--experts", f->experts,
                  "Logical experts the map must cover "
                  "(default: highest id + 1)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--ranks", f->ranks, "EP size the map must have")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--layers", f->layers, "MoE layers the map must have")
      ->check(CLI::PositiveNumber);
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
      ->check(CLI::PositiveNumber);
  cmd->add_option("--experts", f->experts,
                  "Logical experts (default: highest id + 1)")
      ->check(CLI::PositiveNumber);
  cmd->callback([f, exit_code] { *exit_code = RunConvert(*f); });
}

}  // namespace eplb::cli
