// Load-file parsing speed on the shipped real data: the 15 MB DeepSeek-V2-Lite
// trace CSV (1000 steps x 26 layers x 64 experts) and one DeepSeek-V3 SGLang
// logical_count dump (61 x 256). Bytes processed are the file sizes.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <filesystem>
#include <string>

#include "eplb/io.h"

namespace {

constexpr char kPuffinCsv[] =
    EPLB_SOURCE_DIR "/data/dsv2lite-puffin/prefill_by_prompt.csv";
constexpr char kDsv3Json[] =
    EPLB_SOURCE_DIR "/data/dsv3-sglang/prefill_in1024.json";

void BM_ReadTraceCsv_Dsv2LitePuffin(benchmark::State& state) {
  const auto bytes =
      static_cast<int64_t>(std::filesystem::file_size(kPuffinCsv));
  for (auto _ : state) {
    eplb::StatusOr<eplb::LoadTrace> trace = eplb::ReadTraceCsv(kPuffinCsv);
    if (!trace.ok()) {
      state.SkipWithError(trace.status().ToString().c_str());
      return;
    }
    benchmark::DoNotOptimize(trace->data().data());
  }
  state.SetBytesProcessed(state.iterations() * bytes);
}
BENCHMARK(BM_ReadTraceCsv_Dsv2LitePuffin)->Unit(benchmark::kMillisecond);

void BM_ParseSglangLogicalCount_Dsv3(benchmark::State& state) {
  const eplb::StatusOr<std::string> text = eplb::ReadFileToString(kDsv3Json);
  if (!text.ok()) {
    state.SkipWithError(text.status().ToString().c_str());
    return;
  }
  for (auto _ : state) {
    eplb::StatusOr<eplb::LoadTrace> trace =
        eplb::ParseSglangLogicalCount(*text);
    if (!trace.ok()) {
      state.SkipWithError(trace.status().ToString().c_str());
      return;
    }
    benchmark::DoNotOptimize(trace->data().data());
  }
  state.SetBytesProcessed(state.iterations() *
                          static_cast<int64_t>(text->size()));
}
BENCHMARK(BM_ParseSglangLogicalCount_Dsv3)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
