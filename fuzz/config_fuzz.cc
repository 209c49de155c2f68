// Fuzzes the eplb_config reader (ParseEplbConfig), with the environment
// guard set and unset. Properties: no crash; an error is one line.
#include "eplb/config.h"
#include "fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text = eplb::fuzz::AsText(data, size);
  eplb::ConfigEnv guarded;
  guarded.dynamic_eplb = "1";
  guarded.expert_map_record = "true";
  for (const eplb::ConfigEnv& env : {eplb::ConfigEnv{}, guarded}) {
    eplb::StatusOr<eplb::ParsedConfig> parsed =
        eplb::ParseEplbConfig(text, env);
    if (!parsed.ok()) eplb::fuzz::CheckOneLine(parsed.status().message());
  }
  return 0;
}
