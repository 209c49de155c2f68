// DeviceChecksum (eplb/cuda/checksum.h): ChecksumBytes' definition
// (src/migration/weights.cc) on the GPU.
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "eplb/cuda/checksum.h"

namespace eplb::cuda {
namespace {

constexpr uint64_t kMultiplier = 0x9e3779b185ebca87ULL;
constexpr uint64_t kFnvPrime = 0x100000001b3ULL;
constexpr uint64_t kLaneMul1 = 0x9e3779b8;
constexpr uint64_t kLaneMul2 = 0x85ebca76;
constexpr uint64_t kLow32 = 0xffffffff;
constexpr int kLanes = 32;  // One warp.
constexpr size_t kStride = kLanes * 8;
constexpr int kWarpsPerBlock = 8;

__device__ __forceinline__ uint64_t Rotl(uint64_t x, int r) {
  return (x << r) | (x >> (64 - r));
}

__device__ __forceinline__ uint64_t Step(uint64_t state, uint64_t word) {
  return Rotl((state ^ word) * kMultiplier, 31);
}

__device__ __forceinline__ uint64_t LaneStep(uint64_t lane, uint64_t word) {
  uint64_t x = lane ^ word;
  x += (x & kLow32) * kLaneMul1;
  x = Rotl(x, 32);
  x += (x & kLow32) * kLaneMul2;
  return x;
}

// Lane k's starting value: splitmix64's k-th output from 0.
__device__ __forceinline__ uint64_t LaneSeed(int k) {
  uint64_t z = static_cast<uint64_t>(k + 1) * 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// A little-endian 64-bit word at any alignment.
__device__ __forceinline__ uint64_t Load64(const unsigned char* p,
                                           bool aligned) {
  if (aligned) return *reinterpret_cast<const uint64_t*>(p);
  uint64_t w = 0;
  for (int i = 7; i >= 0; --i) w = (w << 8) | p[i];
  return w;
}

// Each warp: one whole block's lanes and their pairwise fold, into
// values[block].
__global__ void BlockValues(const unsigned char* __restrict__ bytes,
                            size_t blocks, bool aligned,
                            uint64_t* __restrict__ values) {
  const int lane = static_cast<int>(threadIdx.x) % kLanes;
  const size_t warp =
      (static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kLanes;
  const size_t warps = static_cast<size_t>(gridDim.x) * blockDim.x / kLanes;
  for (size_t b = warp; b < blocks; b += warps) {
    const unsigned char* block = bytes + b * kChecksumBlockBytes;
    uint64_t v = LaneSeed(lane);
    for (size_t j = 0; j < kChecksumBlockBytes; j += kStride) {
      v = LaneStep(v, Load64(block + j + 8 * lane, aligned));
    }
    // lanes[k] = Step(lanes[2k], lanes[2k + 1]) for widths 32, 16, ..., 2.
    for (int width = kLanes; width > 1; width /= 2) {
      const uint64_t even = __shfl_sync(0xffffffffu, v, (2 * lane) % kLanes);
      const uint64_t odd = __shfl_sync(0xffffffffu, v, (2 * lane + 1) % kLanes);
      v = Step(even, odd);
    }
    if (lane == 0) values[b] = v;
  }
}

// `count` 64-bit values, value(i) for i in [0, count), chained into h in
// order by one warp: each lane loads one value of every 32 (so the loads of
// a group are issued together instead of one after the other), then every
// lane steps the same h through the group, broadcast by shuffles. `count`
// is the same on every lane, so the warp stays converged.
template <typename Value>
__device__ __forceinline__ uint64_t ChainValues(uint64_t h, size_t count,
                                                int lane, Value value) {
  for (size_t base = 0; base < count; base += kLanes) {
    const int group = static_cast<int>(
        count - base < static_cast<size_t>(kLanes) ? count - base : kLanes);
    const uint64_t mine = lane < group ? value(base + lane) : 0;
    for (int j = 0; j < group; ++j) {
      h = Step(h, __shfl_sync(0xffffffffu, mine, j));
    }
  }
  return h;
}

// One warp: the blocks' values in order, then the tail's whole words, then
// its last bytes one by one (lane 0).
__global__ void Chain(const unsigned char* __restrict__ bytes, size_t n,
                      size_t blocks, bool aligned, uint64_t seed,
                      const uint64_t* __restrict__ values,
                      uint64_t* __restrict__ out) {
  const int lane = static_cast<int>(threadIdx.x);
  uint64_t h =
      ChainValues(seed, blocks, lane, [values](size_t i) { return values[i]; });
  const size_t tail = blocks * kChecksumBlockBytes;
  const size_t words = (n - tail) / 8;
  h = ChainValues(h, words, lane, [bytes, tail, aligned](size_t i) {
    return Load64(bytes + tail + 8 * i, aligned);
  });
  if (lane != 0) return;
  for (size_t i = tail + 8 * words; i < n; ++i) {
    h = (h ^ static_cast<uint64_t>(bytes[i])) * kFnvPrime;
  }
  *out = h;
}

}  // namespace

size_t DeviceChecksumScratchBytes(size_t num_bytes) {
  const size_t blocks = num_bytes / kChecksumBlockBytes;
  return 8 * (blocks > 0 ? blocks : 1);
}

Status DeviceChecksum(const void* bytes, size_t num_bytes, uint64_t seed,
                      uint64_t* out, void* scratch, cudaStream_t stream,
                      int max_blocks) {
  if ((bytes == nullptr && num_bytes > 0) || out == nullptr ||
      scratch == nullptr) {
    return InvalidArgumentError("DeviceChecksum: null device pointer");
  }
  if (max_blocks < 0) {
    return InvalidArgumentError(
        "DeviceChecksum: max_blocks = " + std::to_string(max_blocks) +
        ": must be >= 0 (0: as many as the bytes need)");
  }
  const auto* p = static_cast<const unsigned char*>(bytes);
  const bool aligned = reinterpret_cast<uintptr_t>(p) % 8 == 0;
  const size_t blocks = num_bytes / kChecksumBlockBytes;
  auto* values = static_cast<uint64_t*>(scratch);
  if (blocks > 0) {
    const size_t wanted = (blocks + kWarpsPerBlock - 1) / kWarpsPerBlock;
    size_t cap = 65535;
    if (max_blocks > 0) cap = std::min(cap, static_cast<size_t>(max_blocks));
    const int grid = static_cast<int>(std::min(wanted, cap));
    BlockValues<<<grid, kWarpsPerBlock * kLanes, 0, stream>>>(p, blocks,
                                                              aligned, values);
  }
  Chain<<<1, kLanes, 0, stream>>>(p, num_bytes, blocks, aligned, seed, values,
                                  out);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) {
    return InternalError(std::string("DeviceChecksum: ") +
                         cudaGetErrorString(e));
  }
  return Status::Ok();
}

}  // namespace eplb::cuda
