// Fuzzes the vllm-ascend expert-map reader (ParseExpertMapJson) under both
// engines' rules. Properties: no crash; an error is one line; a map that
// parses writes back (ExpertMapToJson) to text that parses to the same map.
#include <string>
#include <vector>

#include "eplb/io.h"
#include "fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text = eplb::fuzz::AsText(data, size);
  for (const eplb::MapTarget target :
       {eplb::MapTarget::kVllmAscend, eplb::MapTarget::kSglang}) {
    eplb::MapExpectations expect;
    expect.target = target;
    std::vector<std::string> problems, warnings;
    eplb::StatusOr<eplb::Placement> map =
        eplb::ParseExpertMapJson(text, expect, &problems, &warnings);
    if (!map.ok()) {
      eplb::fuzz::CheckOneLine(map.status().message());
      continue;
    }
    const std::string again = eplb::ExpertMapToJson(*map);
    eplb::StatusOr<eplb::Placement> back =
        eplb::ParseExpertMapJson(again, expect);
    eplb::fuzz::Check(back.ok() && *back == *map,
                      "a map read does not read back the same once written");
  }
  return 0;
}
