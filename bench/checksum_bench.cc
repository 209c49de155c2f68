// The migration checksum's speed, per kernel this CPU runs (portable,
// AVX2), against memcpy of the same bytes in the same run. The receiver
// of every migrated expert reads it once through this checksum before the
// layer commits, so on a core that also copies, its speed is part of the
// migration's. Sizes: 256 KiB (in L2), 4 MiB (an MPI transport chunk, in
// L3) and 256 MiB (memory).
#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "eplb/weights.h"
#include "migration/checksum.h"

namespace {

using eplb::ChecksumPath;

std::vector<std::byte> Bytes(size_t n) {
  std::vector<std::byte> v(n);
  uint64_t x = 0x9e3779b97f4a7c15ULL;
  for (std::byte& b : v) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b = static_cast<std::byte>(x);
  }
  return v;
}

void BM_Checksum(benchmark::State& state) {
  const auto path = static_cast<ChecksumPath>(state.range(1));
  if (!eplb::ChecksumPathAvailable(path)) {
    state.SkipWithError("this CPU has no such kernel");
    return;
  }
  const std::vector<std::byte> bytes =
      Bytes(static_cast<size_t>(state.range(0)) << 10);
  for (auto _ : state) {
    benchmark::DoNotOptimize(eplb::ChecksumBytesVia(path, bytes, 1));
  }
  state.SetBytesProcessed(state.iterations() *
                          static_cast<int64_t>(bytes.size()));
}
BENCHMARK(BM_Checksum)
    ->ArgNames({"KiB", "path"})
    ->ArgsProduct({{256, 4096, 262144},
                   {static_cast<int64_t>(ChecksumPath::kPortable),
                    static_cast<int64_t>(ChecksumPath::kAvx2)}});

// What ChecksumBytes itself chose.
void BM_ChecksumBytes(benchmark::State& state) {
  const std::vector<std::byte> bytes =
      Bytes(static_cast<size_t>(state.range(0)) << 10);
  for (auto _ : state) {
    benchmark::DoNotOptimize(eplb::ChecksumBytes(bytes, 1));
  }
  state.SetBytesProcessed(state.iterations() *
                          static_cast<int64_t>(bytes.size()));
}
BENCHMARK(BM_ChecksumBytes)->ArgName("KiB")->Arg(256)->Arg(4096)->Arg(262144);

void BM_Memcpy(benchmark::State& state) {
  const std::vector<std::byte> src =
      Bytes(static_cast<size_t>(state.range(0)) << 10);
  std::vector<std::byte> dst(src.size());
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), src.size());
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() *
                          static_cast<int64_t>(src.size()));
}
BENCHMARK(BM_Memcpy)->ArgName("KiB")->Arg(256)->Arg(4096)->Arg(262144);

}  // namespace

BENCHMARK_MAIN();
