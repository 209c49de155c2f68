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

// The blocks in order, then the tail word by word and byte by byte.
__global__ void Chain(const unsigned char* __restrict__ bytes, size_t n,
                      size_t blocks, bool aligned, uint64_t seed,
                      const uint64_t* __restrict__ values,
                      uint64_t* __restrict__ out) {
  uint64_t h = seed;
  for (size_t b = 0; b < blocks; ++b) h = Step(h, values[b]);
  size_t i = blocks * kChecksumBlockBytes;
  for (; i + 8 <= n; i += 8) h = Step(h, Load64(bytes + i, aligned));
  for (; i < n; ++i) h = (h ^ static_cast<uint64_t>(bytes[i])) * kFnvPrime;
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
  Chain<<<1, 1, 0, stream>>>(p, num_bytes, blocks, aligned, seed, values, out);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) {
    return InternalError(std::string("DeviceChecksum: ") +
                         cudaGetErrorString(e));
  }
  return Status::Ok();
}

}  // namespace eplb::cuda
