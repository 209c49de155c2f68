// Fuzzes the SGLang readers: the expert-distribution dump
// (ParseSglangLogicalCount) and physical_to_logical_map
// (ParseSglangPhysicalToLogical). The first byte picks the ranks (1..16) and
// the hidden layers (0..3 beyond the rows: 0 means every row is a MoE
// layer). Properties: no crash; an error is one line; a dump that parses
// writes back to one that parses to the same loads; a map that parses
// writes back to one that parses to the same map.
#include <string>
#include <vector>

#include "eplb/io.h"
#include "fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const int ranks = 1 + (data[0] & 15);
  const int hidden_extra = (data[0] >> 4) & 3;
  const std::string_view text = eplb::fuzz::AsText(data + 1, size - 1);

  eplb::StatusOr<eplb::LoadTrace> count = eplb::ParseSglangLogicalCount(text);
  if (!count.ok()) {
    eplb::fuzz::CheckOneLine(count.status().message());
  } else {
    eplb::StatusOr<eplb::LoadTrace> back =
        eplb::ParseSglangLogicalCount(eplb::SglangLogicalCountToJson(*count));
    eplb::fuzz::Check(back.ok() && *back == *count,
                      "a dump read does not read back the same once written");
  }

  std::vector<std::string> warnings;
  eplb::StatusOr<eplb::Placement> map =
      eplb::ParseSglangPhysicalToLogical(text, ranks, 0, &warnings);
  if (!map.ok()) {
    eplb::fuzz::CheckOneLine(map.status().message());
  } else {
    eplb::StatusOr<eplb::Placement> back = eplb::ParseSglangPhysicalToLogical(
        eplb::SglangPhysicalToLogicalToJson(*map), ranks, map->num_experts());
    eplb::fuzz::Check(back.ok() && *back == *map,
                      "a map read does not read back the same once written");
    if (hidden_extra > 0) {
      eplb::SglangMapOptions o;
      o.num_ranks = ranks;
      o.num_hidden_layers = map->num_layers() + hidden_extra;
      eplb::StatusOr<eplb::Placement> sized =
          eplb::ParseSglangPhysicalToLogical(text, o);
      if (!sized.ok()) eplb::fuzz::CheckOneLine(sized.status().message());
    }
  }
  return 0;
}
