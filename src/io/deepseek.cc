// DeepSeek EPLB's output triple as JSON: phy2log [L][R*K] (the placement),
// log2phy [L][E][X] (each expert's physical ids, ascending, -1 padded) and
// logcnt [L][E] (replica counts). The reader takes the placement from
// phy2log and checks the other two against it. Stateless: thread-safe.
#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "eplb/io.h"
#include "io/json_util.h"

namespace eplb {
namespace {

using internal::Json;

// [E][replicas]: physical ids of each expert of one layer, ascending.
std::vector<std::vector<int64_t>> ReplicasByExpert(const Placement& placement,
                                                   int layer) {
  std::vector<std::vector<int64_t>> replicas(placement.num_experts());
  const std::span<const int32_t> slots = placement.layer(layer);
  for (size_t p = 0; p < slots.size(); ++p) {
    if (slots[p] >= 0 && slots[p] < placement.num_experts()) {
      replicas[slots[p]].push_back(static_cast<int64_t>(p));
    }
  }
  return replicas;
}

size_t MaxReplicas(const Placement& placement) {
  size_t max_count = 1;
  for (int l = 0; l < placement.num_layers(); ++l) {
    for (const auto& ids : ReplicasByExpert(placement, l)) {
      max_count = std::max(max_count, ids.size());
    }
  }
  return max_count;
}

std::string Index(std::string_view name, size_t i) {
  return std::string(name) + "[" + std::to_string(i) + "]";
}

std::string IdList(const std::vector<int64_t>& ids) {
  std::string out;
  internal::AppendArray(&out, std::span<const int64_t>(ids));
  return out;
}

// Checks that `value` is an array of `size` elements named `name`, whose
// counterpart in phy2log has that many.
Status CheckShape(const Json& value, const std::string& name, size_t size,
                  std::string_view what) {
  if (!value.is_array()) {
    return InvalidArgumentError(name + " is " + internal::DescribeJson(value) +
                                ", not an array");
  }
  if (value.size() != size) {
    return InvalidArgumentError(name + " has " + std::to_string(value.size()) +
                                " " + std::string(what) + " but phy2log has " +
                                std::to_string(size));
  }
  return Status::Ok();
}

// log2phy[l][e] must list exactly e's physical ids (any order, -1 padding).
Status CheckLog2Phy(const Json& log2phy, const Placement& placement) {
  const size_t num_experts = static_cast<size_t>(placement.num_experts());
  EPLB_RETURN_IF_ERROR(CheckShape(log2phy, "log2phy",
                                  static_cast<size_t>(placement.num_layers()),
                                  "layers"));
  for (size_t l = 0; l < log2phy.size(); ++l) {
    const std::string layer_name = Index("log2phy", l);
    EPLB_RETURN_IF_ERROR(
        CheckShape(log2phy[l], layer_name, num_experts, "experts"));
    const auto replicas = ReplicasByExpert(placement, static_cast<int>(l));
    for (size_t e = 0; e < num_experts; ++e) {
      const Json& entry = log2phy[l][e];
      const std::string name = Index(layer_name, e);
      if (!entry.is_array()) {
        return InvalidArgumentError(
            name + " is " + internal::DescribeJson(entry) + ", not an array");
      }
      std::vector<int64_t> listed;
      for (const Json& value : entry) {
        int64_t id = 0;
        if (!internal::GetInt64(value, &id)) {
          return InvalidArgumentError(name + ": " +
                                      internal::DescribeJson(value) +
                                      " is not an integer");
        }
        if (id != -1) listed.push_back(id);
      }
      std::sort(listed.begin(), listed.end());
      if (listed != replicas[e]) {
        return InvalidArgumentError(name + " lists physical " + IdList(listed) +
                                    " but phy2log places expert " +
                                    std::to_string(e) + " at physical " +
                                    IdList(replicas[e]));
      }
    }
  }
  return Status::Ok();
}

// logcnt[l][e] must be e's replica count in phy2log.
Status CheckLogcnt(const Json& logcnt, const Placement& placement) {
  const size_t num_experts = static_cast<size_t>(placement.num_experts());
  EPLB_RETURN_IF_ERROR(CheckShape(
      logcnt, "logcnt", static_cast<size_t>(placement.num_layers()), "layers"));
  for (size_t l = 0; l < logcnt.size(); ++l) {
    const std::string layer_name = Index("logcnt", l);
    EPLB_RETURN_IF_ERROR(
        CheckShape(logcnt[l], layer_name, num_experts, "experts"));
    const auto replicas = ReplicasByExpert(placement, static_cast<int>(l));
    for (size_t e = 0; e < num_experts; ++e) {
      int64_t count = 0;
      const std::string name = Index(layer_name, e);
      if (!internal::GetInt64(logcnt[l][e], &count)) {
        return InvalidArgumentError(name + ": " +
                                    internal::DescribeJson(logcnt[l][e]) +
                                    " is not an integer");
      }
      if (count != static_cast<int64_t>(replicas[e].size())) {
        return InvalidArgumentError(name + " is " + std::to_string(count) +
                                    " but phy2log has " +
                                    std::to_string(replicas[e].size()) +
                                    " replicas of expert " + std::to_string(e));
      }
    }
  }
  return Status::Ok();
}

void AppendLog2Phy(std::string* out, const Placement& placement) {
  const size_t width = MaxReplicas(placement);
  *out += "[\n";
  for (int l = 0; l < placement.num_layers(); ++l) {
    *out += "    [";
    const auto replicas = ReplicasByExpert(placement, l);
    for (size_t e = 0; e < replicas.size(); ++e) {
      std::vector<int64_t> padded = replicas[e];
      padded.resize(width, -1);
      if (e > 0) *out += ", ";
      internal::AppendArray(out, std::span<const int64_t>(padded));
    }
    *out += l + 1 < placement.num_layers() ? "],\n" : "]\n";
  }
  *out += "  ]";
}

void AppendLogcnt(std::string* out, const Placement& placement) {
  *out += "[\n";
  for (int l = 0; l < placement.num_layers(); ++l) {
    std::vector<int64_t> counts;
    for (const auto& ids : ReplicasByExpert(placement, l)) {
      counts.push_back(static_cast<int64_t>(ids.size()));
    }
    *out += "    ";
    internal::AppendArray(out, std::span<const int64_t>(counts));
    *out += l + 1 < placement.num_layers() ? ",\n" : "\n";
  }
  *out += "  ]";
}

}  // namespace

std::string DeepSeekMapsToJson(const Placement& placement) {
  std::string out = "{\n  \"phy2log\": ";
  internal::AppendPhysicalRows(&out, placement, "  ");
  out += ",\n  \"log2phy\": ";
  AppendLog2Phy(&out, placement);
  out += ",\n  \"logcnt\": ";
  AppendLogcnt(&out, placement);
  out += "\n}\n";
  return out;
}

StatusOr<Placement> ParseDeepSeekMaps(std::string_view text, int num_ranks,
                                      int num_experts,
                                      std::vector<std::string>* warnings) {
  Json root;
  EPLB_RETURN_IF_ERROR(internal::ParseJson(text, &root));
  if (!root.is_object()) {
    return InvalidArgumentError("top level is " + internal::DescribeJson(root) +
                                ", not an object");
  }
  const auto phy2log = root.find("phy2log");
  if (phy2log == root.end()) {
    return InvalidArgumentError("missing key \"phy2log\"");
  }
  // Warnings wait until log2phy and logcnt agree.
  std::vector<std::string> noticed;
  EPLB_ASSIGN_OR_RETURN(
      Placement placement,
      internal::PlacementFromPhysicalRows(*phy2log, "phy2log", num_ranks,
                                          num_experts, &noticed));
  if (const auto it = root.find("log2phy"); it != root.end()) {
    EPLB_RETURN_IF_ERROR(CheckLog2Phy(*it, placement));
  }
  if (const auto it = root.find("logcnt"); it != root.end()) {
    EPLB_RETURN_IF_ERROR(CheckLogcnt(*it, placement));
  }
  if (warnings != nullptr) {
    warnings->insert(warnings->end(), noticed.begin(), noticed.end());
  }
  return placement;
}

StatusOr<Placement> ReadDeepSeekMaps(const std::string& path, int num_ranks,
                                     int num_experts,
                                     std::vector<std::string>* warnings) {
  EPLB_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path));
  EPLB_RETURN_IF_ERROR(RejectTorchFile(path, text, "phy2log"));
  StatusOr<Placement> placement =
      ParseDeepSeekMaps(text, num_ranks, num_experts, warnings);
  if (!placement.ok()) return placement.status().WithPrefix(path);
  return placement;
}

}  // namespace eplb
