// Fuzzes the reader of DeepSeek EPLB's triple (ParseDeepSeekMaps); the
// first byte picks the GPUs (1..16). Properties: no crash; an error is one
// line; a triple that parses writes back (DeepSeekMapsToJson) to one that
// parses to the same map.
#include <string>
#include <vector>

#include "eplb/io.h"
#include "fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const int ranks = 1 + (data[0] & 15);
  const std::string_view text = eplb::fuzz::AsText(data + 1, size - 1);
  std::vector<std::string> warnings;
  eplb::StatusOr<eplb::Placement> map =
      eplb::ParseDeepSeekMaps(text, ranks, 0, &warnings);
  if (!map.ok()) {
    eplb::fuzz::CheckOneLine(map.status().message());
    return 0;
  }
  eplb::StatusOr<eplb::Placement> back = eplb::ParseDeepSeekMaps(
      eplb::DeepSeekMapsToJson(*map), ranks, map->num_experts());
  eplb::fuzz::Check(back.ok() && *back == *map,
                    "a triple read does not read back the same once written");
  return 0;
}
