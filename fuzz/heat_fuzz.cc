// Fuzzes the heat file reader of robust recording (ParseHeatFile).
// Properties: no crash; an error is one line; a file that parses writes back
// to one that parses to the same loads and steps, byte for byte the same
// text once written again.
#include <string>

#include "eplb/robust.h"
#include "fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text = eplb::fuzz::AsText(data, size);
  eplb::StatusOr<eplb::HeatFile> heat = eplb::ParseHeatFile(text);
  if (!heat.ok()) {
    eplb::fuzz::CheckOneLine(heat.status().message());
    return 0;
  }
  const std::string written = eplb::HeatFileToJson(*heat);
  eplb::StatusOr<eplb::HeatFile> back = eplb::ParseHeatFile(written);
  eplb::fuzz::Check(back.ok() && back->loads == heat->loads &&
                        back->steps == heat->steps &&
                        back->num_layers == heat->num_layers &&
                        back->num_experts == heat->num_experts,
                    "a heat file read does not read back the same once "
                    "written");
  eplb::fuzz::Check(eplb::HeatFileToJson(*back) == written,
                    "a heat file is not written deterministically");
  return 0;
}
