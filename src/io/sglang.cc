// SGLang's expert-distribution dump ({"logical_count": [L][E] or
// [steps][L][E]}) and its {"physical_to_logical_map": [L][R*K]}, both read
// with full validation and written deterministically; the map's dense-layer
// rows are dropped on reading when the model's layers are known, and
// written on request. Also the [L][R*K] row reader shared with the DeepSeek
// triple. Stateless: thread-safe.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "eplb/io.h"
#include "eplb/limits.h"
#include "io/json_util.h"
#include "io/torch_file.h"

namespace eplb {
namespace {

using internal::Json;

constexpr char kLogicalCount[] = "logical_count";
constexpr char kPhysicalToLogical[] = "physical_to_logical_map";

std::string Index(std::string_view name, size_t i) {
  return std::string(name) + "[" + std::to_string(i) + "]";
}

// Finds `key` in the top-level object of `root`.
StatusOr<const Json*> TopMember(const Json& root, const char* key) {
  if (!root.is_object()) {
    return InvalidArgumentError("top level is " + internal::DescribeJson(root) +
                                ", not an object");
  }
  const auto it = root.find(key);
  if (it == root.end()) {
    return InvalidArgumentError(std::string("missing key \"") + key + "\"");
  }
  return &*it;
}

// Checks that `value` is a non-empty array, naming it `name`.
Status CheckArray(const Json& value, const std::string& name) {
  if (!value.is_array()) {
    return InvalidArgumentError(name + " is " + internal::DescribeJson(value) +
                                ", not an array");
  }
  if (value.empty()) return InvalidArgumentError(name + " is empty");
  return Status::Ok();
}

// Reads one finite, non-negative load value.
Status ReadLoad(const Json& value, const std::string& name, double* out) {
  if (!internal::GetDouble(value, out)) {
    return InvalidArgumentError(name + ": " + internal::DescribeJson(value) +
                                " is not a number");
  }
  if (!std::isfinite(*out)) return InvalidArgumentError(name + ": not finite");
  if (*out < 0) {
    return InvalidArgumentError(name + ": " + internal::DescribeJson(value) +
                                " is negative");
  }
  if (*out > static_cast<double>(kMaxCount)) {
    return InvalidArgumentError(
        name + ": " + internal::DescribeJson(value) + " exceeds the limit of " +
        std::to_string(kMaxCount) + " tokens (2^53, the largest exact count)");
  }
  return Status::Ok();
}

// Reads one [L][E] matrix named `name` into `out`. `*num_layers` and
// `*num_experts` are the shape every matrix must have (0 = take this one's).
Status ReadMatrix(const Json& matrix, const std::string& name, int* num_layers,
                  int* num_experts, std::vector<double>* out) {
  EPLB_RETURN_IF_ERROR(CheckArray(matrix, name));
  if (matrix.size() > static_cast<size_t>(kMaxLayers)) {
    return InvalidArgumentError(name + " has " + std::to_string(matrix.size()) +
                                " layers, more than the limit of " +
                                std::to_string(kMaxLayers));
  }
  if (*num_layers == 0) *num_layers = static_cast<int>(matrix.size());
  if (matrix.size() != static_cast<size_t>(*num_layers)) {
    return InvalidArgumentError(name + " has " + std::to_string(matrix.size()) +
                                " layers but the first step has " +
                                std::to_string(*num_layers));
  }
  for (size_t l = 0; l < matrix.size(); ++l) {
    const Json& row = matrix[l];
    const std::string row_name = Index(name, l);
    EPLB_RETURN_IF_ERROR(CheckArray(row, row_name));
    if (row.size() > static_cast<size_t>(kMaxExperts)) {
      return InvalidArgumentError(
          row_name + " has " + std::to_string(row.size()) +
          " experts, more than the limit of " + std::to_string(kMaxExperts));
    }
    if (*num_experts == 0) *num_experts = static_cast<int>(row.size());
    if (row.size() != static_cast<size_t>(*num_experts)) {
      return InvalidArgumentError(
          row_name + " has " + std::to_string(row.size()) +
          " values but the first row has " + std::to_string(*num_experts));
    }
    for (size_t e = 0; e < row.size(); ++e) {
      double value = 0;
      EPLB_RETURN_IF_ERROR(ReadLoad(row[e], Index(row_name, e), &value));
      out->push_back(value);
    }
  }
  return Status::Ok();
}

// The number of leading layers that are zero in every step.
int LeadingZeroLayers(const std::vector<double>& data, int num_steps,
                      int num_layers, int num_experts) {
  const size_t e_count = static_cast<size_t>(num_experts);
  for (int l = 0; l < num_layers; ++l) {
    for (int s = 0; s < num_steps; ++s) {
      const size_t begin = (static_cast<size_t>(s) * num_layers + l) * e_count;
      for (size_t e = 0; e < e_count; ++e) {
        if (data[begin + e] != 0) return l;
      }
    }
  }
  return num_layers;
}

// Appends [L][E] rows of `trace`'s step `s`, one layer per line.
void AppendStep(std::string* out, const LoadTrace& trace, int s,
                std::string_view indent) {
  *out += "[\n";
  for (int l = 0; l < trace.num_layers(); ++l) {
    *out += indent;
    *out += "  ";
    internal::AppendArray(out, trace.row(s, l));
    *out += l + 1 < trace.num_layers() ? ",\n" : "\n";
  }
  *out += indent;
  *out += ']';
}

// Reads the integer ids of `rows` ([L][R*K]); every problem is appended.
std::vector<int64_t> ReadIdRows(const Json& rows, std::string_view key,
                                int num_ranks, size_t* row_size,
                                std::vector<std::string>* problems) {
  std::vector<int64_t> ids;
  *row_size = rows[0].is_array() ? rows[0].size() : 0;
  if (*row_size == 0 || *row_size % static_cast<size_t>(num_ranks) != 0) {
    problems->push_back(Index(key, 0) + " has " + std::to_string(*row_size) +
                        " slots, not a positive multiple of " +
                        std::to_string(num_ranks) + " ranks");
    return ids;
  }
  for (size_t l = 0; l < rows.size(); ++l) {
    const Json& row = rows[l];
    if (!row.is_array() || row.size() != *row_size) {
      problems->push_back(
          Index(key, l) + " is " +
          (row.is_array() ? "an array of " + std::to_string(row.size())
                          : internal::DescribeJson(row)) +
          ", expected an array of " + std::to_string(*row_size) + " ids");
      continue;
    }
    for (size_t i = 0; i < row.size(); ++i) {
      int64_t id = 0;
      if (!internal::GetInt64(row[i], &id) ||
          id < std::numeric_limits<int32_t>::min() ||
          id >= std::numeric_limits<int32_t>::max()) {
        problems->push_back(Index(Index(key, l), i) + ": " +
                            internal::DescribeJson(row[i]) +
                            " is not an expert id");
      }
      ids.push_back(id);
    }
  }
  return ids;
}

// Whether row `row` of `ids` ([rows][row_size]) is the initial placement of
// `num_experts` experts: physical i holds i mod E.
bool IsInitialRow(const std::vector<int64_t>& ids, size_t row, size_t row_size,
                  int64_t num_experts) {
  for (size_t i = 0; i < row_size; ++i) {
    if (ids[row * row_size + i] != static_cast<int64_t>(i) % num_experts) {
      return false;
    }
  }
  return true;
}

// Appends the initial placement's row (physical i -> i mod E), [R*K].
void AppendInitialRow(std::string* out, const Placement& placement) {
  std::vector<int32_t> row(placement.num_slots());
  for (size_t i = 0; i < row.size(); ++i) {
    row[i] = static_cast<int32_t>(i % placement.num_experts());
  }
  internal::AppendArray(out, std::span<const int32_t>(row));
}

}  // namespace

namespace internal {

StatusOr<Placement> PlacementFromPhysicalRows(
    const Json& rows, std::string_view key, int num_ranks, int num_experts,
    std::vector<std::string>* warnings, int drop_rows, int* dropped) {
  if (num_ranks <= 0 || num_experts < 0) {
    return InvalidArgumentError(
        "num_ranks must be positive and num_experts "
        "non-negative, got " +
        std::to_string(num_ranks) + " and " + std::to_string(num_experts));
  }
  EPLB_RETURN_IF_ERROR(CheckArray(rows, std::string(key)));
  if (rows.size() > static_cast<size_t>(kMaxLayers)) {
    return InvalidArgumentError(
        std::string(key) + " has " + std::to_string(rows.size()) +
        " rows (layers), more than the limit of " + std::to_string(kMaxLayers));
  }
  if (rows[0].is_array() && rows[0].size() > static_cast<size_t>(kMaxSlots)) {
    return InvalidArgumentError(
        std::string(key) + "[0] has " + std::to_string(rows[0].size()) +
        " slots, more than the limit of " + std::to_string(kMaxSlots));
  }
  std::vector<std::string> problems;
  size_t row_size = 0;
  const std::vector<int64_t> ids =
      ReadIdRows(rows, key, num_ranks, &row_size, &problems);
  if (!problems.empty()) return ProblemsToStatus(problems, key);
  const size_t num_rows = rows.size();
  size_t first = drop_rows > 0 ? static_cast<size_t>(drop_rows) : 0;
  if (drop_rows < 0) {
    int64_t max_all = -1;
    for (const int64_t id : ids) max_all = std::max(max_all, id);
    const int64_t e_all = num_experts > 0 ? num_experts : max_all + 1;
    while (e_all > 0 && first + 1 < num_rows &&
           IsInitialRow(ids, first, row_size, e_all)) {
      ++first;
    }
  }
  EPLB_CHECK(first < num_rows);
  if (dropped != nullptr) *dropped = static_cast<int>(first);
  int64_t max_id = -1;
  for (size_t i = first * row_size; i < ids.size(); ++i) {
    max_id = std::max(max_id, ids[i]);
  }
  const int num_experts_used =
      num_experts > 0 ? num_experts : static_cast<int>(max_id + 1);
  if (num_experts_used <= 0) {
    return InvalidArgumentError(std::string(key) + ": no expert ids >= 0");
  }
  // Also keeps CheckPlacement's [E] tables small when a huge id sets E.
  if (static_cast<size_t>(num_experts_used) > row_size) {
    return InvalidArgumentError(
        std::string(key) + ": " + std::to_string(num_experts_used) +
        " experts" +
        (num_experts > 0 ? ""
                         : " (expert id " + std::to_string(max_id) + " + 1)") +
        " do not fit in " + std::to_string(row_size) + " slots per layer");
  }
  const int num_layers = static_cast<int>(num_rows - first);
  const int slots_per_rank = static_cast<int>(row_size) / num_ranks;
  Placement placement(num_layers, num_ranks, slots_per_rank, num_experts_used);
  for (int l = 0; l < num_layers; ++l) {
    std::span<int32_t> layer = placement.mutable_layer(l);
    for (size_t i = 0; i < row_size; ++i) {
      layer[i] = static_cast<int32_t>(ids[(first + l) * row_size + i]);
    }
  }
  for (const Violation& violation :
       CheckPlacement(placement, MapTarget::kSglang)) {
    problems.push_back(violation.ToString());
  }
  if (!problems.empty()) return ProblemsToStatus(problems, key);
  const std::vector<int> colocated = ColocatedLayers(placement);
  if (warnings != nullptr && !colocated.empty()) {
    warnings->push_back(ColocationWarning(colocated));
  }
  return placement;
}

void AppendPhysicalRows(std::string* out, const Placement& placement,
                        std::string_view indent) {
  *out += "[\n";
  for (int l = 0; l < placement.num_layers(); ++l) {
    *out += indent;
    *out += "  ";
    AppendArray(out, placement.layer(l));
    *out += l + 1 < placement.num_layers() ? ",\n" : "\n";
  }
  *out += indent;
  *out += ']';
}

}  // namespace internal

StatusOr<LoadTrace> ParseSglangLogicalCount(std::string_view text) {
  Json root;
  EPLB_RETURN_IF_ERROR(internal::ParseJson(text, &root));
  EPLB_ASSIGN_OR_RETURN(const Json* counts, TopMember(root, kLogicalCount));
  EPLB_RETURN_IF_ERROR(CheckArray(*counts, kLogicalCount));
  // [S][L][E] when the first row's first value is itself an array.
  const Json& first = (*counts)[0];
  const bool by_step =
      first.is_array() && !first.empty() && first[0].is_array();
  int num_layers = 0;
  int num_experts = 0;
  std::vector<double> data;
  const size_t num_steps = by_step ? counts->size() : 1;
  if (num_steps > static_cast<size_t>(kMaxSteps)) {
    return InvalidArgumentError(
        std::string(kLogicalCount) + " has " + std::to_string(num_steps) +
        " steps, more than the limit of " + std::to_string(kMaxSteps));
  }
  for (size_t s = 0; s < num_steps; ++s) {
    if (data.size() > static_cast<size_t>(kMaxTraceCells)) {
      return InvalidArgumentError(
          std::string(kLogicalCount) + ": more than the limit of " +
          std::to_string(kMaxTraceCells) + " cells (steps x layers x experts)");
    }
    const Json& matrix = by_step ? (*counts)[s] : *counts;
    const std::string name = by_step ? Index(kLogicalCount, s) : kLogicalCount;
    EPLB_RETURN_IF_ERROR(
        ReadMatrix(matrix, name, &num_layers, &num_experts, &data));
  }
  const int steps = static_cast<int>(num_steps);
  const int dense = LeadingZeroLayers(data, steps, num_layers, num_experts);
  if (dense == num_layers) {
    return InvalidArgumentError("logical_count: all " +
                                std::to_string(num_layers) +
                                " layers are zero (no MoE load)");
  }
  LoadTrace trace(steps, num_layers - dense, num_experts);
  for (int s = 0; s < steps; ++s) {
    for (int l = dense; l < num_layers; ++l) {
      const size_t begin =
          (static_cast<size_t>(s) * num_layers + l) * num_experts;
      for (int e = 0; e < num_experts; ++e) {
        trace.at(s, l - dense, e) = data[begin + e];
      }
    }
  }
  return trace;
}

StatusOr<LoadTrace> ReadSglangLogicalCount(const std::string& path) {
  EPLB_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path));
  EPLB_RETURN_IF_ERROR(RejectTorchFile(path, text, kLogicalCount));
  StatusOr<LoadTrace> trace = ParseSglangLogicalCount(text);
  if (!trace.ok()) return trace.status().WithPrefix(path);
  return trace;
}

std::string SglangLogicalCountToJson(const LoadTrace& trace) {
  std::string out = "{\"logical_count\": ";
  if (trace.num_steps() == 1) {
    AppendStep(&out, trace, 0, "");
  } else {
    out += "[\n";
    for (int s = 0; s < trace.num_steps(); ++s) {
      out += "  ";
      AppendStep(&out, trace, s, "  ");
      out += s + 1 < trace.num_steps() ? ",\n" : "\n";
    }
    out += ']';
  }
  out += "}\n";
  return out;
}

StatusOr<Placement> ParseSglangPhysicalToLogical(
    std::string_view text, int num_ranks, int num_experts,
    std::vector<std::string>* warnings) {
  return ParseSglangPhysicalToLogical(
      text,
      SglangMapOptions{.num_ranks = num_ranks, .num_experts = num_experts},
      warnings);
}

StatusOr<Placement> ParseSglangPhysicalToLogical(
    std::string_view text, const SglangMapOptions& options,
    std::vector<std::string>* warnings) {
  const int hidden = options.num_hidden_layers;
  const int dense = options.num_dense_layers;
  if (hidden < 0 || dense < -1 || (hidden > 0 && dense >= hidden)) {
    return InvalidArgumentError(
        "num_hidden_layers must be >= 0 and num_dense_layers in [-1, "
        "num_hidden_layers), got " +
        std::to_string(hidden) + " and " + std::to_string(dense));
  }
  Json root;
  EPLB_RETURN_IF_ERROR(internal::ParseJson(text, &root));
  EPLB_ASSIGN_OR_RETURN(const Json* rows, TopMember(root, kPhysicalToLogical));
  EPLB_RETURN_IF_ERROR(CheckArray(*rows, kPhysicalToLogical));
  const int num_rows = static_cast<int>(rows->size());
  // How many leading rows are dense: -1 = the leading initial rows.
  int drop = 0;
  if (hidden > 0) {
    const std::string model =
        "the model has " + std::to_string(hidden) + " hidden layers" +
        (dense >= 0 ? " (" + std::to_string(dense) + " dense, " +
                          std::to_string(hidden - dense) + " MoE)"
                    : "");
    if (num_rows > hidden ||
        (dense >= 0 && num_rows != hidden && num_rows != hidden - dense)) {
      return InvalidArgumentError(std::string(kPhysicalToLogical) + " has " +
                                  std::to_string(num_rows) + " rows but " +
                                  model);
    }
    if (num_rows == hidden) drop = dense;
  }
  int dropped = 0;
  const size_t first_warning = warnings != nullptr ? warnings->size() : 0;
  EPLB_ASSIGN_OR_RETURN(Placement placement,
                        internal::PlacementFromPhysicalRows(
                            *rows, kPhysicalToLogical, options.num_ranks,
                            options.num_experts, warnings, drop, &dropped));
  if (warnings != nullptr && hidden > 0 && num_rows == hidden) {
    const std::string rows_of =
        " of the " + std::to_string(hidden) + " in " + kPhysicalToLogical;
    if (dropped > 0) {
      warnings->insert(
          warnings->begin() + static_cast<std::ptrdiff_t>(first_warning),
          "dropped the first " + std::to_string(dropped) + " rows" + rows_of +
              ": dense layers (SGLang sizes its map by every hidden layer)" +
              (drop < 0 ? "; taken as dense because they hold the initial "
                          "placement (naming the model makes this exact)"
                        : ""));
    } else if (drop < 0) {
      warnings->insert(
          warnings->begin() + static_cast<std::ptrdiff_t>(first_warning),
          "no leading row" + rows_of +
              " holds the initial placement, so none was taken "
              "as a dense layer (naming the model makes this "
              "exact)");
    }
  }
  return placement;
}

StatusOr<Placement> ReadSglangPhysicalToLogical(
    const std::string& path, const SglangMapOptions& options,
    std::vector<std::string>* warnings) {
  EPLB_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path));
  EPLB_RETURN_IF_ERROR(RejectTorchFile(path, text, kPhysicalToLogical));
  StatusOr<Placement> placement =
      ParseSglangPhysicalToLogical(text, options, warnings);
  if (!placement.ok()) return placement.status().WithPrefix(path);
  return placement;
}

std::string SglangPhysicalToLogicalToJson(const Placement& placement,
                                          int num_dense_layers) {
  std::string out = "{\"physical_to_logical_map\": ";
  if (num_dense_layers <= 0) {
    internal::AppendPhysicalRows(&out, placement, "");
  } else {
    const int num_rows = num_dense_layers + placement.num_layers();
    out += "[\n";
    for (int row = 0; row < num_rows; ++row) {
      out += "  ";
      if (row < num_dense_layers) {
        AppendInitialRow(&out, placement);
      } else {
        internal::AppendArray(&out, placement.layer(row - num_dense_layers));
      }
      out += row + 1 < num_rows ? ",\n" : "\n";
    }
    out += ']';
  }
  out += "}\n";
  return out;
}

}  // namespace eplb
