// The heat file of robust recording (eplb/robust.h): recorded loads, one per
// workload, read with full validation and written deterministically.
// Stateless: thread-safe.
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "eplb/io.h"
#include "eplb/limits.h"
#include "eplb/robust.h"
#include "io/json_util.h"

namespace eplb {
namespace {

using internal::Json;

constexpr int64_t kHeatVersion = 1;

// Reads a required integer member in [min, max].
Status ReadIntMember(const Json& root, const char* key, int64_t min,
                     int64_t max, int64_t* out) {
  const auto it = root.find(key);
  if (it == root.end()) {
    return InvalidArgumentError(std::string("missing key \"") + key + "\"");
  }
  if (!internal::GetInt64(*it, out) || *out < min || *out > max) {
    return InvalidArgumentError(
        std::string(key) + " = " + internal::DescribeJson(*it) +
        ": must be an integer in [" + std::to_string(min) + ", " +
        std::to_string(max) + "]");
  }
  return Status::Ok();
}

}  // namespace

StatusOr<HeatFile> ParseHeatFile(std::string_view text) {
  Json root;
  EPLB_RETURN_IF_ERROR(internal::ParseJson(text, &root));
  if (!root.is_object()) {
    return InvalidArgumentError("top level is " + internal::DescribeJson(root) +
                                ", not an object");
  }
  int64_t version = 0, layers = 0, experts = 0;
  EPLB_RETURN_IF_ERROR(
      ReadIntMember(root, "eplb_heat", kHeatVersion, kHeatVersion, &version));
  EPLB_RETURN_IF_ERROR(
      ReadIntMember(root, "num_layers", 1, kMaxLayers, &layers));
  EPLB_RETURN_IF_ERROR(
      ReadIntMember(root, "num_experts", 1, kMaxExperts, &experts));
  const auto list = root.find("workloads");
  if (list == root.end()) {
    return InvalidArgumentError("missing key \"workloads\"");
  }
  if (!list->is_array()) {
    return InvalidArgumentError(
        "workloads is " + internal::DescribeJson(*list) + ", not an array");
  }
  if (static_cast<int64_t>(list->size()) * layers * experts > kMaxTraceCells) {
    return InvalidArgumentError(
        std::to_string(list->size()) + " workloads of " +
        std::to_string(layers) + " x " + std::to_string(experts) +
        " exceed the limit of " + std::to_string(kMaxTraceCells) + " cells");
  }
  HeatFile heat;
  heat.num_layers = static_cast<int>(layers);
  heat.num_experts = static_cast<int>(experts);
  for (size_t w = 0; w < list->size(); ++w) {
    const std::string name = "workloads[" + std::to_string(w) + "]";
    const Json& item = (*list)[w];
    if (!item.is_object()) {
      return InvalidArgumentError(name + " is " + internal::DescribeJson(item) +
                                  ", not an object");
    }
    int64_t steps = 0;
    Status s = ReadIntMember(item, "steps", 0, kMaxSteps * 1024, &steps);
    if (!s.ok()) return s.WithPrefix(name);
    const auto rows = item.find("load");
    if (rows == item.end()) {
      return InvalidArgumentError(name + ": missing key \"load\"");
    }
    if (!rows->is_array() || static_cast<int64_t>(rows->size()) != layers) {
      return InvalidArgumentError(
          name + ".load: must be an array of num_layers = " +
          std::to_string(layers) + " rows, is " +
          (rows->is_array() ? std::to_string(rows->size()) + " rows"
                            : internal::DescribeJson(*rows)));
    }
    LoadMatrix load(heat.num_layers, heat.num_experts);
    for (int l = 0; l < heat.num_layers; ++l) {
      const Json& row = (*rows)[l];
      const std::string row_name = name + ".load[" + std::to_string(l) + "]";
      if (!row.is_array() || static_cast<int64_t>(row.size()) != experts) {
        return InvalidArgumentError(
            row_name + ": must be an array of num_experts = " +
            std::to_string(experts) + " numbers, is " +
            (row.is_array() ? std::to_string(row.size()) + " long"
                            : internal::DescribeJson(row)));
      }
      for (int e = 0; e < heat.num_experts; ++e) {
        double v = 0.0;
        if (!internal::GetDouble(row[e], &v) || !std::isfinite(v) || v < 0.0) {
          return InvalidArgumentError(row_name + "[" + std::to_string(e) +
                                      "] = " + internal::DescribeJson(row[e]) +
                                      ": must be a finite number >= 0");
        }
        load.at(l, e) = v;
      }
    }
    heat.loads.push_back(std::move(load));
    heat.steps.push_back(steps);
  }
  return heat;
}

StatusOr<HeatFile> ReadHeatFile(const std::string& path) {
  EPLB_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path));
  StatusOr<HeatFile> heat = ParseHeatFile(text);
  if (!heat.ok()) return heat.status().WithPrefix(path);
  return heat;
}

std::string HeatFileToJson(const HeatFile& heat) {
  std::string out = "{\"eplb_heat\": 1, \"num_layers\": ";
  internal::AppendInt(&out, heat.num_layers);
  out += ", \"num_experts\": ";
  internal::AppendInt(&out, heat.num_experts);
  out += ", \"workloads\": [";
  for (size_t w = 0; w < heat.loads.size(); ++w) {
    out += w > 0 ? ",\n  {\"steps\": " : "\n  {\"steps\": ";
    internal::AppendInt(&out, w < heat.steps.size() ? heat.steps[w] : 0);
    out += ", \"load\": [";
    const LoadMatrix& load = heat.loads[w];
    for (int l = 0; l < load.num_layers(); ++l) {
      out += l > 0 ? ",\n    " : "\n    ";
      internal::AppendArray(&out, load.row(l));
    }
    out += "]}";
  }
  out += heat.loads.empty() ? "]}\n" : "\n]}\n";
  return out;
}

Status WriteHeatFile(const std::string& path, const HeatFile& heat) {
  return WriteFileAtomic(path, HeatFileToJson(heat));
}

}  // namespace eplb
