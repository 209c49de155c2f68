// DeviceTokenMapper (eplb/cuda/dispatch.h): BalancedDispatcher::MapTokens
// on the GPU.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda/cuda_error.h"
#include "cuda/pinned_upload.h"
#include "eplb/cuda/dispatch.h"
#include "eplb/cuda/recorder.h"

namespace eplb::cuda {
namespace {

constexpr int kTile = 2048;  // Ids per tile.
constexpr int kCountThreads = 256;
constexpr int kMaxExperts = 8192;

// The id's expert, or -1 outside [0, E) (negative ids too).
template <typename Id>
__device__ __forceinline__ int ExpertOf(Id id, int num_experts) {
  using U = typename std::make_unsigned<Id>::type;
  const auto u = static_cast<uint64_t>(static_cast<U>(id));
  return u < static_cast<uint64_t>(num_experts) ? static_cast<int>(u) : -1;
}

// counts[t][e]: the ids of expert e in tile t.
template <typename Id>
__global__ void TileCounts(const Id* __restrict__ ids, int64_t n,
                           int num_experts, int* __restrict__ counts) {
  extern __shared__ int hist[];  // [E]
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) hist[e] = 0;
  __syncthreads();
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t end = min(n, begin + kTile);
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const int e = ExpertOf(ids[i], num_experts);
    if (e >= 0) atomicAdd(&hist[e], 1);
  }
  __syncthreads();
  int* row = counts + static_cast<int64_t>(blockIdx.x) * num_experts;
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) row[e] = hist[e];
}

// bases[t][e]: e's occurrences before tile t, from offsets[e].
__global__ void TileBases(const int* __restrict__ counts, int tiles,
                          int num_experts, const int64_t* __restrict__ offsets,
                          int64_t* __restrict__ bases) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= num_experts) return;
  int64_t run = offsets != nullptr ? offsets[e] : 0;
  for (int t = 0; t < tiles; ++t) {
    const int64_t cell = static_cast<int64_t>(t) * num_experts + e;
    bases[cell] = run;
    run += counts[cell];
  }
}

// One warp per tile, 32 ids a round in order: an id's occurrence index is
// its tile's base, the tile's earlier rounds (seen[e]) and the lanes below
// it with the same expert; the quota table gives its replica.
template <typename Id>
__global__ void MapTiles(const Id* __restrict__ ids, int64_t n, int num_experts,
                         const int64_t* __restrict__ bases,
                         const int32_t* __restrict__ first,
                         const int32_t* __restrict__ slot,
                         const int64_t* __restrict__ cum,
                         const int32_t* __restrict__ last,
                         Id* __restrict__ out) {
  extern __shared__ int seen[];  // [E]
  const int lane = static_cast<int>(threadIdx.x);
  for (int e = lane; e < num_experts; e += 32) seen[e] = 0;
  __syncwarp();
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t* base = bases + static_cast<int64_t>(blockIdx.x) * num_experts;
  for (int round = 0; round < kTile / 32; ++round) {
    const int64_t i = begin + round * 32 + lane;
    if (begin + round * 32 >= n) break;  // The same for every lane.
    const int e = i < n ? ExpertOf(ids[i], num_experts) : -1;
    // Lanes with a bad id (or past the end) group with nobody.
    const int key = e >= 0 ? e : -1 - lane;
    const unsigned peers = __match_any_sync(0xffffffffu, key);
    const int rank = __popc(peers & ((1u << lane) - 1u));
    const int earlier = e >= 0 ? seen[e] : 0;
    __syncwarp();
    if (e >= 0 && rank == 0) seen[e] = earlier + __popc(peers);
    __syncwarp();
    if (i >= n) continue;
    if (e < 0) {
      out[i] = static_cast<Id>(-1);
      continue;
    }
    const int64_t k = base[e] + earlier + rank;
    // The first replica whose cumulative quota passes k; none: the last
    // replica with a quota (or the first replica).
    int lo = first[e], hi = first[e + 1];
    if (k >= cum[hi - 1]) {
      out[i] = static_cast<Id>(slot[last[e]]);
      continue;
    }
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      if (cum[mid] > k) {
        hi = mid;
      } else {
        lo = mid + 1;
      }
    }
    out[i] = static_cast<Id>(slot[lo]);
  }
}

// The quota part of the mapper's table from device quotas: one thread per
// expert, as SetQuotas fills it on the host.
__global__ void CumulativeQuotas(int num_experts,
                                 const int32_t* __restrict__ first,
                                 const int32_t* __restrict__ slot,
                                 const int64_t* __restrict__ slot_quota,
                                 int64_t* __restrict__ cum,
                                 int32_t* __restrict__ last) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= num_experts) return;
  int64_t run = 0;
  int32_t at = first[e];
  for (int i = first[e]; i < first[e + 1]; ++i) {
    const int64_t q = max(slot_quota[slot[i]], int64_t{0});
    run += q;
    cum[i] = run;
    if (q > 0) at = i;
  }
  last[e] = at;
}

std::string CudaMessage(const char* what, cudaError_t error) {
  return internal::CudaMessage("DeviceTokenMapper", what, error);
}

}  // namespace

struct DeviceTokenMapper::Impl {
  int num_experts = 0;
  int num_slots = 0;
  int64_t max_ids = 0;
  int max_tiles = 0;
  // The quota table, one allocation: cum [S] int64, then first [E+1],
  // slot [S], last [E] int32.
  size_t table_bytes = 0;
  unsigned char* device_table = nullptr;
  internal::PinnedUpload upload;  // Host tables, filled on the host.
  bool has_quotas = false;
  int* counts = nullptr;     // [tiles][E]
  int64_t* bases = nullptr;  // [tiles][E]

  int64_t* cum(unsigned char* t) const { return reinterpret_cast<int64_t*>(t); }
  int32_t* first(unsigned char* t) const {
    return reinterpret_cast<int32_t*>(t + sizeof(int64_t) * num_slots);
  }
  int32_t* slot(unsigned char* t) const { return first(t) + num_experts + 1; }
  int32_t* last(unsigned char* t) const { return slot(t) + num_slots; }

  ~Impl() {
    upload.Wait();
    if (device_table != nullptr) cudaFree(device_table);
    if (counts != nullptr) cudaFree(counts);
    if (bases != nullptr) cudaFree(bases);
  }
};

DeviceTokenMapper::DeviceTokenMapper(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}

DeviceTokenMapper::~DeviceTokenMapper() = default;

StatusOr<std::unique_ptr<DeviceTokenMapper>> DeviceTokenMapper::Create(
    int num_experts, int num_slots, int64_t max_ids) {
  if (num_experts < 1 || num_experts > kMaxExperts) {
    return InvalidArgumentError(
        "DeviceTokenMapper: num_experts = " + std::to_string(num_experts) +
        ": must be in [1, " + std::to_string(kMaxExperts) + "]");
  }
  if (num_slots < num_experts) {
    return InvalidArgumentError(
        "DeviceTokenMapper: num_slots = " + std::to_string(num_slots) +
        ": must be >= num_experts = " + std::to_string(num_experts));
  }
  if (max_ids < 1 || max_ids > (int64_t{1} << 40)) {
    return InvalidArgumentError(
        "DeviceTokenMapper: max_ids = " + std::to_string(max_ids) +
        ": must be in [1, 2^40]");
  }
  if (!DeviceAvailable()) {
    return UnavailableError("DeviceTokenMapper: no CUDA device");
  }
  auto impl = std::make_unique<Impl>();
  impl->num_experts = num_experts;
  impl->num_slots = num_slots;
  impl->max_ids = max_ids;
  impl->max_tiles = static_cast<int>((max_ids + kTile - 1) / kTile);
  impl->table_bytes = sizeof(int64_t) * num_slots +
                      sizeof(int32_t) * (2 * num_experts + 1 + num_slots);
  const size_t cells = static_cast<size_t>(impl->max_tiles) * num_experts;
  cudaError_t e = cudaMalloc(&impl->device_table, impl->table_bytes);
  if (e == cudaSuccess) e = cudaMalloc(&impl->counts, cells * sizeof(int));
  if (e == cudaSuccess) e = cudaMalloc(&impl->bases, cells * sizeof(int64_t));
  if (e == cudaSuccess) e = impl->upload.Allocate(impl->table_bytes);
  if (e != cudaSuccess) return InternalError(CudaMessage("allocation", e));
  return std::unique_ptr<DeviceTokenMapper>(
      new DeviceTokenMapper(std::move(impl)));
}

Status DeviceTokenMapper::CheckRouting(const LayerRouting& routing) const {
  const Impl& s = *impl_;
  if (routing.num_experts != s.num_experts ||
      routing.num_ranks * routing.slots_per_rank != s.num_slots ||
      routing.replica_offsets.size() !=
          static_cast<size_t>(s.num_experts) + 1 ||
      routing.replicas.size() != static_cast<size_t>(s.num_slots)) {
    return InvalidArgumentError(
        "DeviceTokenMapper: routing or quotas do not match " +
        std::to_string(s.num_experts) + " experts x " +
        std::to_string(s.num_slots) + " slots");
  }
  return Status::Ok();
}

Status DeviceTokenMapper::SetQuotas(const LayerRouting& routing,
                                    std::span<const int64_t> slot_quota,
                                    cudaStream_t stream) {
  Impl& s = *impl_;
  if (Status st = CheckRouting(routing); !st.ok()) return st;
  if (slot_quota.size() != static_cast<size_t>(s.num_slots)) {
    return InvalidArgumentError(
        "DeviceTokenMapper: " + std::to_string(slot_quota.size()) +
        " quotas for " + std::to_string(s.num_slots) + " slots");
  }
  cudaError_t err = cudaSuccess;
  unsigned char* t = s.upload.Next(&err);
  if (t == nullptr) return InternalError(CudaMessage("upload", err));
  int64_t* cum = s.cum(t);
  int32_t* first = s.first(t);
  int32_t* slot = s.slot(t);
  int32_t* last = s.last(t);
  for (int e = 0; e <= s.num_experts; ++e)
    first[e] = routing.replica_offsets[e];
  for (int e = 0; e < s.num_experts; ++e) {
    int64_t run = 0;
    last[e] = first[e];
    for (int i = first[e]; i < first[e + 1]; ++i) {
      const int32_t p = routing.replicas[i];
      slot[i] = p;
      const int64_t q = std::max<int64_t>(slot_quota[p], 0);
      run += q;
      cum[i] = run;
      if (q > 0) last[e] = i;
    }
  }
  err = s.upload.Send(s.device_table, 0, s.table_bytes, stream);
  if (err != cudaSuccess) return InternalError(CudaMessage("upload", err));
  s.has_quotas = true;
  return Status::Ok();
}

Status DeviceTokenMapper::SetQuotasOnDevice(const LayerRouting& routing,
                                            const int64_t* slot_quota,
                                            cudaStream_t stream) {
  Impl& s = *impl_;
  if (Status st = CheckRouting(routing); !st.ok()) return st;
  if (slot_quota == nullptr) {
    return InvalidArgumentError("DeviceTokenMapper: null device quotas");
  }
  // The replica lists change with the placement, not per step: upload them
  // only when they differ from the device table's (the last table filled).
  unsigned char* last = s.upload.Last();
  const bool same_lists =
      s.has_quotas &&
      std::equal(routing.replica_offsets.begin(), routing.replica_offsets.end(),
                 s.first(last)) &&
      std::equal(routing.replicas.begin(), routing.replicas.end(),
                 s.slot(last));
  unsigned char* device = s.device_table;
  if (!same_lists) {
    cudaError_t e = cudaSuccess;
    unsigned char* t = s.upload.Next(&e);
    if (t == nullptr) return InternalError(CudaMessage("upload", e));
    std::copy(routing.replica_offsets.begin(), routing.replica_offsets.end(),
              s.first(t));
    std::copy(routing.replicas.begin(), routing.replicas.end(), s.slot(t));
    // The table's int32 lists only (first, slot); cum and last come from
    // the kernel, in stream order after the upload.
    const size_t cum_bytes = sizeof(int64_t) * s.num_slots;
    e = s.upload.Send(device, cum_bytes,
                      sizeof(int32_t) * (s.num_experts + 1 + s.num_slots),
                      stream);
    if (e != cudaSuccess) return InternalError(CudaMessage("upload", e));
  }
  CumulativeQuotas<<<(s.num_experts + 255) / 256, 256, 0, stream>>>(
      s.num_experts, s.first(device), s.slot(device), slot_quota, s.cum(device),
      s.last(device));
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return InternalError(CudaMessage("launch", e));
  s.has_quotas = true;
  return Status::Ok();
}

template <typename Id>
Status DeviceTokenMapper::MapIds(const Id* ids, int64_t n,
                                 const int64_t* offsets, Id* out,
                                 cudaStream_t stream) {
  Impl& s = *impl_;
  if (!s.has_quotas) {
    return InvalidArgumentError("DeviceTokenMapper: Map before SetQuotas");
  }
  if (n < 0 || n > s.max_ids) {
    return InvalidArgumentError(
        "DeviceTokenMapper: num_ids = " + std::to_string(n) +
        ": must be in [0, " + std::to_string(s.max_ids) + "]");
  }
  if (n == 0) return Status::Ok();
  if (ids == nullptr || out == nullptr) {
    return InvalidArgumentError("DeviceTokenMapper: null device pointer");
  }
  const int tiles = static_cast<int>((n + kTile - 1) / kTile);
  const size_t shared = sizeof(int) * s.num_experts;
  TileCounts<Id><<<tiles, kCountThreads, shared, stream>>>(
      ids, n, s.num_experts, s.counts);
  TileBases<<<(s.num_experts + 255) / 256, 256, 0, stream>>>(
      s.counts, tiles, s.num_experts, offsets, s.bases);
  unsigned char* t = s.device_table;
  MapTiles<Id><<<tiles, 32, shared, stream>>>(ids, n, s.num_experts, s.bases,
                                              s.first(t), s.slot(t), s.cum(t),
                                              s.last(t), out);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return InternalError(CudaMessage("launch", e));
  return Status::Ok();
}

Status DeviceTokenMapper::Map(const int32_t* topk_ids, int64_t num_ids,
                              const int64_t* offsets, int32_t* physical_ids,
                              cudaStream_t stream) {
  return MapIds(topk_ids, num_ids, offsets, physical_ids, stream);
}

Status DeviceTokenMapper::Map(const int64_t* topk_ids, int64_t num_ids,
                              const int64_t* offsets, int64_t* physical_ids,
                              cudaStream_t stream) {
  return MapIds(topk_ids, num_ids, offsets, physical_ids, stream);
}

}  // namespace eplb::cuda
