// DeviceQuotaSolver (eplb/cuda/dispatch.h): BalancedDispatcher's quotas on
// the GPU. One thread block runs the phases of quota_solve.h: the parts
// that are independent per rank, per replicated expert and per slot on all
// its threads, the flow search (small: the replicated experts and their
// replicas) on one; the graph, the counts and the working arrays sit in
// shared memory when they fit (a DeepSeek-V3 layer needs about 18 KiB).
// The algorithm and the graph are the host's, so the quotas are equal, slot
// for slot.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "cuda/cuda_error.h"
#include "cuda/pinned_upload.h"
#include "cuda/quota_solve.h"
#include "eplb/cuda/dispatch.h"
#include "eplb/cuda/recorder.h"

namespace eplb::cuda {
namespace {

using internal::QuotaGraph;
using internal::QuotaScratch;

constexpr int kThreads = 256;
// Dynamic shared memory a block may take without opting in (48 KiB), less
// room for the kernel's own shared variables.
constexpr size_t kSharedLimit = 47 * 1024;

std::string CudaMessage(const char* what, cudaError_t error) {
  return internal::CudaMessage("DeviceQuotaSolver", what, error);
}

// Shared bytes of one solve: working arrays, counts [E] and the graph.
size_t SharedBytes(const QuotaGraph& s) {
  return internal::QuotaScratchWideBytes(s) + sizeof(int64_t) * s.num_experts +
         internal::QuotaScratchNarrowBytes(s) + sizeof(int32_t) * s.size;
}

__global__ void __launch_bounds__(kThreads)
    SolveQuotas(const int32_t* __restrict__ graph, QuotaGraph s,
                QuotaScratch global_scratch,
                const int64_t* __restrict__ counts_in,
                int64_t* __restrict__ slot_quota,
                int64_t* __restrict__ max_load_out, bool in_shared) {
  extern __shared__ int64_t shared[];
  __shared__ unsigned long long total, unplaced;
  __shared__ long long cap, max_load;
  __shared__ int negative;
  const int t = static_cast<int>(threadIdx.x);
  const int nt = static_cast<int>(blockDim.x);
  const int32_t* g = graph;
  const int64_t* counts = counts_in;
  QuotaScratch w = global_scratch;
  if (in_shared) {
    int64_t* wide = shared;
    int64_t* c = wide + s.num_ranks + s.num_experts + s.num_slots;
    auto* narrow = reinterpret_cast<int32_t*>(c + s.num_experts);
    int32_t* gs = narrow + 2 * (s.num_experts + s.num_ranks);
    for (int i = t; i < s.size; i += nt) gs[i] = graph[i];
    for (int e = t; e < s.num_experts; e += nt) c[e] = counts_in[e];
    w = internal::QuotaScratchAt(s, wide, narrow);
    g = gs;
    counts = c;
  }
  if (t == 0) {
    total = 0;
    unplaced = 0;
    cap = 0;
    max_load = 0;
    negative = 0;
  }
  __syncthreads();
  // Phase 0: the total and the sign check.
  long long mine = 0;
  int my_negative = 0;
  for (int e = t; e < s.num_experts; e += nt) {
    mine += counts[e];
    my_negative |= counts[e] < 0 ? 1 : 0;
  }
  atomicAdd(&total, static_cast<unsigned long long>(mine));
  if (my_negative != 0) atomicOr(&negative, 1);
  __syncthreads();
  if (negative != 0) {
    for (int p = t; p < s.num_slots; p += nt) slot_quota[p] = 0;
    if (t == 0 && max_load_out != nullptr) *max_load_out = -1;
    return;
  }
  // Phase 1: the ranks' fixed loads.
  mine = 0;
  for (int r = t; r < s.num_ranks; r += nt) {
    mine =
        internal::QuotaMax(mine, internal::QuotaRankBase(g, s, counts, r, w));
  }
  atomicMax(&cap, mine);
  __syncthreads();
  // Phase 2: the replicated experts' tokens and bounds.
  const int num_nodes = g[s.num_nodes];
  mine = 0;
  long long my_tokens = 0;
  for (int n = t; n < num_nodes; n += nt) {
    mine =
        internal::QuotaMax(mine, internal::QuotaNodeBound(g, s, counts, n, w));
    my_tokens += w.need[n];
  }
  atomicMax(&cap, mine);
  atomicAdd(&unplaced, static_cast<unsigned long long>(my_tokens));
  __syncthreads();
  // Phase 3: the flow, on one thread.
  if (t == 0) {
    const auto sum = static_cast<long long>(total);
    const long long even = (sum + s.num_ranks - 1) / s.num_ranks;
    cap = internal::QuotaFlow(g, s, w, internal::QuotaMax(cap, even),
                              static_cast<long long>(unplaced));
  }
  __syncthreads();
  if (cap < 0) {  // Cannot happen (the host checks it); never a bad quota.
    for (int p = t; p < s.num_slots; p += nt) slot_quota[p] = 0;
    if (t == 0 && max_load_out != nullptr) *max_load_out = -1;
    return;
  }
  // Phase 4: the quotas and the largest load.
  for (int i = t; i < g[s.fixed_begin + s.num_ranks]; i += nt) {
    internal::QuotaFixedSlot(g, s, counts, i, slot_quota);
  }
  for (int j = t; j < g[s.node_edge_begin + num_nodes]; j += nt) {
    internal::QuotaEdgeSlot(g, s, j, w, slot_quota);
  }
  mine = 0;
  for (int r = t; r < s.num_ranks; r += nt) {
    mine = internal::QuotaMax(mine, w.load[r]);
  }
  atomicMax(&max_load, mine);
  __syncthreads();
  if (t == 0 && max_load_out != nullptr) *max_load_out = max_load;
}

}  // namespace

struct DeviceQuotaSolver::Impl {
  Impl(int e, int r, int k) : shape(e, r, r * k), slots_per_rank(k) {}
  QuotaGraph shape;
  int slots_per_rank;
  int32_t* device_graph = nullptr;
  void* device_scratch = nullptr;
  QuotaScratch scratch{};
  size_t shared_bytes = 0;  // 0: the working arrays stay in global memory.
  internal::PinnedUpload upload;  // Graphs, built on the host.
  bool has_placement = false;

  ~Impl() {
    upload.Wait();
    if (device_graph != nullptr) cudaFree(device_graph);
    if (device_scratch != nullptr) cudaFree(device_scratch);
  }
};

DeviceQuotaSolver::DeviceQuotaSolver(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}

DeviceQuotaSolver::~DeviceQuotaSolver() = default;

StatusOr<std::unique_ptr<DeviceQuotaSolver>> DeviceQuotaSolver::Create(
    int num_experts, int num_ranks, int slots_per_rank) {
  if (num_experts < 1 || num_ranks < 1 || slots_per_rank < 1 ||
      static_cast<int64_t>(num_ranks) * slots_per_rank < num_experts ||
      slots_per_rank > num_experts ||
      static_cast<int64_t>(num_ranks) * slots_per_rank > (1 << 24)) {
    return InvalidArgumentError(
        "DeviceQuotaSolver: " + std::to_string(num_experts) + " experts on " +
        std::to_string(num_ranks) + " x " + std::to_string(slots_per_rank) +
        " slots: needs all >= 1, R*K >= E, K <= E and R*K <= 2^24");
  }
  if (!DeviceAvailable()) {
    return UnavailableError("DeviceQuotaSolver: no CUDA device");
  }
  auto impl = std::make_unique<Impl>(num_experts, num_ranks, slots_per_rank);
  const QuotaGraph& g = impl->shape;
  const size_t graph_bytes = sizeof(int32_t) * g.size;
  const size_t wide = internal::QuotaScratchWideBytes(g);
  cudaError_t err = cudaMalloc(&impl->device_graph, graph_bytes);
  if (err == cudaSuccess) {
    err = cudaMalloc(&impl->device_scratch,
                     wide + internal::QuotaScratchNarrowBytes(g));
  }
  if (err == cudaSuccess) err = impl->upload.Allocate(graph_bytes);
  if (err != cudaSuccess) return InternalError(CudaMessage("allocation", err));
  auto* wide_at = static_cast<int64_t*>(impl->device_scratch);
  impl->scratch = internal::QuotaScratchAt(
      g, wide_at, reinterpret_cast<int32_t*>(wide_at + wide / sizeof(int64_t)));
  if (SharedBytes(g) <= kSharedLimit) impl->shared_bytes = SharedBytes(g);
  return std::unique_ptr<DeviceQuotaSolver>(
      new DeviceQuotaSolver(std::move(impl)));
}

Status DeviceQuotaSolver::SetPlacement(std::span<const int32_t> layer,
                                       cudaStream_t stream) {
  Impl& s = *impl_;
  cudaError_t err = cudaSuccess;
  auto* g = reinterpret_cast<int32_t*>(s.upload.Next(&err));
  if (g == nullptr) return InternalError(CudaMessage("upload", err));
  // A bad placement leaves the last good one in effect: this buffer is not
  // the device's.
  if (Status st =
          internal::BuildQuotaGraph(layer, s.shape, s.slots_per_rank, g);
      !st.ok()) {
    return st;
  }
  err =
      s.upload.Send(s.device_graph, 0, sizeof(int32_t) * s.shape.size, stream);
  if (err != cudaSuccess) return InternalError(CudaMessage("upload", err));
  s.has_placement = true;
  return Status::Ok();
}

Status DeviceQuotaSolver::Compute(const int64_t* counts, int64_t* slot_quota,
                                  int64_t* max_load, cudaStream_t stream) {
  Impl& s = *impl_;
  if (!s.has_placement) {
    return InvalidArgumentError(
        "DeviceQuotaSolver: Compute before SetPlacement");
  }
  if (counts == nullptr || slot_quota == nullptr) {
    return InvalidArgumentError("DeviceQuotaSolver: null device pointer");
  }
  SolveQuotas<<<1, kThreads, s.shared_bytes, stream>>>(
      s.device_graph, s.shape, s.scratch, counts, slot_quota, max_load,
      s.shared_bytes > 0);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return InternalError(CudaMessage("launch", e));
  return Status::Ok();
}

}  // namespace eplb::cuda
