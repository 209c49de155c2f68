// Private helpers shared by the JSON readers and writers of src/io: parsing
// without exceptions, integer and number extraction with type checks, short
// descriptions of values for error messages, and deterministic number
// formatting. Stateless functions: thread-safe.
#ifndef EPLB_IO_JSON_UTIL_H_
#define EPLB_IO_JSON_UTIL_H_

#include <charconv>
#include <cmath>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "eplb/io.h"
#include "eplb/limits.h"
#include "eplb/placement.h"
#include "eplb/status.h"

namespace eplb::internal {

using Json = nlohmann::json;

// Parses `text` into `out`. InvalidArgument "malformed JSON: ..." (with
// nlohmann's line and column), "empty input" for blank text, or nesting
// deeper than kMaxJsonDepth (checked before the recursive parse). A leading
// UTF-8 byte order mark is skipped.
inline Status ParseJson(std::string_view text, Json* out) {
  text = StripUtf8Bom(text);
  if (text.find_first_not_of(" \t\r\n") == std::string_view::npos) {
    return InvalidArgumentError("empty input (no JSON value)");
  }
  EPLB_RETURN_IF_ERROR(CheckJsonDepth(text));
  try {
    *out = Json::parse(text.begin(), text.end());
  } catch (const Json::exception& e) {
    std::string what = e.what();
    // Drop nlohmann's "[json.exception.parse_error.101] " tag.
    if (size_t tag_end = what.find("] ");
        !what.empty() && what[0] == '[' && tag_end != std::string::npos) {
      what.erase(0, tag_end + 2);
    }
    for (char& c : what) {
      if (c == '\n' || c == '\r') c = ' ';
    }
    return InvalidArgumentError("malformed JSON: " + what);
  }
  return Status::Ok();
}

// A short, one-line rendering of `value` for error messages: scalars as
// JSON (truncated), containers by kind.
inline std::string DescribeJson(const Json& value) {
  if (value.is_object()) return "an object";
  if (value.is_array()) return "an array";
  std::string text = value.dump(-1, ' ', /*ensure_ascii=*/true,
                                Json::error_handler_t::replace);
  constexpr size_t kMaxChars = 40;
  if (text.size() > kMaxChars) text = text.substr(0, kMaxChars) + "...";
  return text;
}

// Stores a JSON integer (not a float, not a bool) that fits int64 in `out`.
inline bool GetInt64(const Json& value, int64_t* out) {
  if (value.is_number_unsigned()) {
    const uint64_t u = value.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return false;
    }
    *out = static_cast<int64_t>(u);
    return true;
  }
  if (value.is_number_integer()) {
    *out = value.get<int64_t>();
    return true;
  }
  return false;
}

// Stores a JSON number (int or float, not a bool) in `out`.
inline bool GetDouble(const Json& value, double* out) {
  if (!value.is_number()) return false;
  *out = value.get<double>();
  return true;
}

// "<message>" for one problem, "<N> problems in <what>; first: <message>"
// for more. Precondition: `problems` is not empty.
inline Status ProblemsToStatus(const std::vector<std::string>& problems,
                               std::string_view what) {
  if (problems.size() == 1) return InvalidArgumentError(problems.front());
  return InvalidArgumentError(std::to_string(problems.size()) +
                              " problems in " + std::string(what) +
                              "; first: " + problems.front());
}

// Appends `value` in its shortest round-trip form ("3", "0.25", "1e+20").
// Non-finite values become null (not representable in JSON).
inline void AppendNumber(std::string* out, double value) {
  if (!std::isfinite(value)) {
    *out += "null";
    return;
  }
  char buf[32];
  const auto result = std::to_chars(buf, buf + sizeof(buf), value);
  out->append(buf, result.ptr);
}

inline void AppendInt(std::string* out, int64_t value) {
  char buf[24];
  const auto result = std::to_chars(buf, buf + sizeof(buf), value);
  out->append(buf, result.ptr);
}

// Appends "[a, b, c]".
template <typename T>
void AppendArray(std::string* out, std::span<const T> values) {
  *out += '[';
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) *out += ", ";
    if constexpr (std::is_integral_v<T>) {
      AppendInt(out, values[i]);
    } else {
      AppendNumber(out, values[i]);
    }
  }
  *out += ']';
}

// Reads `rows`, a [L][R*K] array of physical -> logical ids named `key`, into
// a Placement with `num_ranks` ranks and `num_experts` experts (0: max id +
// 1), and checks it with CheckPlacement under SGLang's rules: an expert
// twice on a rank is accepted and appended to `warnings` (when given) as
// ColocationWarning. Every problem names the row and column, or the layer,
// device and slot. The first `drop_rows` rows are skipped (precondition:
// fewer than there are); -1 skips the leading run of rows in the initial
// placement (physical i -> i mod E), at most all but one. `*dropped` (when
// given) is how many were skipped. Defined in sglang.cc.
StatusOr<Placement> PlacementFromPhysicalRows(
    const Json& rows, std::string_view key, int num_ranks, int num_experts,
    std::vector<std::string>* warnings, int drop_rows = 0,
    int* dropped = nullptr);

// Writes `placement` as "[\n  [..],\n  [..]\n]" (one layer per line) with
// every line after the first indented by `indent`. Defined in sglang.cc.
void AppendPhysicalRows(std::string* out, const Placement& placement,
                        std::string_view indent);

}  // namespace eplb::internal

#endif  // EPLB_IO_JSON_UTIL_H_
