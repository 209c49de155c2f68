// DeviceHeatRecorder (eplb/cuda/recorder.h): the counting kernel and the
// staging of each step's counts to the host recorder.
#include <cuda_runtime.h>

#include <algorithm>
#include <span>
#include <string>
#include <vector>

#include "cuda/cuda_error.h"
#include "eplb/cuda/recorder.h"

namespace eplb::cuda {
namespace {

constexpr int kThreads = 256;
// A block keeps its own histogram in shared memory when the slots (and the
// dropped column) fit in this many bytes; else it adds to global memory.
constexpr size_t kSharedBytes = 32 * 1024;

// Slot of one id, or num_slots (the dropped column): HeatRecorder's rule.
// A negative id is a large unsigned value, so one compare checks both ends,
// and an unmapped expert (-1) is 0xffffffff, above any slot.
template <typename Id>
__device__ __forceinline__ uint32_t SlotOf(Id id, const int32_t* log2phy,
                                           uint64_t num_experts,
                                           uint32_t num_slots) {
  using U = typename std::make_unsigned<Id>::type;
  const auto u = static_cast<uint64_t>(static_cast<U>(id));
  if (u >= num_experts) return num_slots;
  const auto slot = static_cast<uint32_t>(log2phy[u]);
  return slot < num_slots ? slot : num_slots;
}

// counts: [num_slots + 1] of this layer (the last: this step's dropped ids,
// shared by every layer).
template <typename Id>
__global__ void CountShared(const Id* __restrict__ ids, int64_t n,
                            const int32_t* __restrict__ log2phy,
                            uint64_t num_experts, uint32_t num_slots,
                            unsigned long long* __restrict__ counts,
                            unsigned long long* __restrict__ dropped) {
  extern __shared__ unsigned int hist[];  // [num_slots + 1]
  for (uint32_t i = threadIdx.x; i <= num_slots; i += blockDim.x) hist[i] = 0;
  __syncthreads();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < n; i += stride) {
    atomicAdd(&hist[SlotOf(ids[i], log2phy, num_experts, num_slots)], 1u);
  }
  __syncthreads();
  for (uint32_t i = threadIdx.x; i < num_slots; i += blockDim.x) {
    if (hist[i] != 0) atomicAdd(&counts[i], hist[i]);
  }
  if (threadIdx.x == 0 && hist[num_slots] != 0) {
    atomicAdd(dropped, hist[num_slots]);
  }
}

template <typename Id>
__global__ void CountGlobal(const Id* __restrict__ ids, int64_t n,
                            const int32_t* __restrict__ log2phy,
                            uint64_t num_experts, uint32_t num_slots,
                            unsigned long long* __restrict__ counts,
                            unsigned long long* __restrict__ dropped) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < n; i += stride) {
    const uint32_t slot = SlotOf(ids[i], log2phy, num_experts, num_slots);
    atomicAdd(slot < num_slots ? &counts[slot] : dropped, 1ull);
  }
}

std::string CudaMessage(const char* what, cudaError_t error) {
  return internal::CudaMessage("DeviceHeatRecorder", what, error);
}

}  // namespace

bool DeviceAvailable() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

struct DeviceHeatRecorder::Impl {
  DeviceHeatRecorderOptions options;
  HeatRecorder* host = nullptr;
  size_t cells = 0;  // L * S + 1 (the last: dropped ids).
  int blocks = 1;    // Grid of the counting kernels.
  bool shared = true;
  // Two device step buffers; `current` counts the step in progress.
  unsigned long long* device_counts[2] = {nullptr, nullptr};
  int current = 0;
  cudaEvent_t counted[2] = {nullptr, nullptr};  // Step's work done (compute).
  cudaEvent_t cleared[2] = {nullptr, nullptr};  // Buffer copied and zeroed.
  bool cleared_pending[2] = {false, false};
  cudaStream_t copy_stream = nullptr;
  // Staging ring: pinned copies of finished steps, handed over in order.
  struct Staged {
    int64_t* counts = nullptr;  // Pinned, [cells].
    cudaEvent_t landed = nullptr;
    int64_t num_tokens = 0;
    bool busy = false;  // Copy enqueued, not yet drained.
  };
  std::vector<Staged> staged;
  int next_staged = 0;  // Where the next step goes.
  int oldest = 0;       // The next to drain.

  ~Impl() {
    if (copy_stream != nullptr) cudaStreamSynchronize(copy_stream);
    for (Staged& s : staged) {
      if (s.landed != nullptr) cudaEventDestroy(s.landed);
      if (s.counts != nullptr) cudaFreeHost(s.counts);
    }
    for (int b = 0; b < 2; ++b) {
      if (counted[b] != nullptr) cudaEventDestroy(counted[b]);
      if (cleared[b] != nullptr) cudaEventDestroy(cleared[b]);
      if (device_counts[b] != nullptr) cudaFree(device_counts[b]);
    }
    if (copy_stream != nullptr) cudaStreamDestroy(copy_stream);
  }
};

DeviceHeatRecorder::DeviceHeatRecorder(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}

DeviceHeatRecorder::~DeviceHeatRecorder() = default;

StatusOr<std::unique_ptr<DeviceHeatRecorder>> DeviceHeatRecorder::Create(
    const DeviceHeatRecorderOptions& options, HeatRecorder* host) {
  auto check = [](const char* field, int value, int min) -> Status {
    if (value >= min) return Status::Ok();
    return InvalidArgumentError(std::string("DeviceHeatRecorder: ") + field +
                                " = " + std::to_string(value) +
                                ": must be >= " + std::to_string(min));
  };
  EPLB_RETURN_IF_ERROR(check("num_layers", options.num_layers, 1));
  EPLB_RETURN_IF_ERROR(check("num_experts", options.num_experts, 1));
  EPLB_RETURN_IF_ERROR(check("num_slots", options.num_slots, 1));
  EPLB_RETURN_IF_ERROR(check("staging_steps", options.staging_steps, 2));
  EPLB_RETURN_IF_ERROR(check("max_blocks", options.max_blocks, 0));
  if (host == nullptr) {
    return InvalidArgumentError("DeviceHeatRecorder: no host recorder");
  }
  if (host->num_layers() != options.num_layers ||
      host->num_slots() != options.num_slots) {
    return InvalidArgumentError(
        "DeviceHeatRecorder: the host recorder has " +
        std::to_string(host->num_layers()) + " layers x " +
        std::to_string(host->num_slots()) + " slots, the options " +
        std::to_string(options.num_layers) + " x " +
        std::to_string(options.num_slots));
  }
  if (!DeviceAvailable()) {
    return UnavailableError("DeviceHeatRecorder: no CUDA device");
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->host = host;
  impl->cells = static_cast<size_t>(options.num_layers) * options.num_slots + 1;
  impl->shared =
      (static_cast<size_t>(options.num_slots) + 1) * sizeof(unsigned int) <=
      kSharedBytes;
  int device = options.device;
  cudaError_t e = cudaSuccess;
  if (device < 0) {
    e = cudaGetDevice(&device);
  } else {
    e = cudaSetDevice(device);
  }
  if (e != cudaSuccess) return InternalError(CudaMessage("device", e));
  int sms = 0;
  e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (e != cudaSuccess) return InternalError(CudaMessage("attribute", e));
  impl->blocks =
      options.max_blocks > 0 ? options.max_blocks : std::max(1, 2 * sms);
  const size_t bytes = impl->cells * sizeof(unsigned long long);
  for (int b = 0; b < 2; ++b) {
    e = cudaMalloc(&impl->device_counts[b], bytes);
    if (e == cudaSuccess) e = cudaMemset(impl->device_counts[b], 0, bytes);
    if (e == cudaSuccess) {
      e = cudaEventCreateWithFlags(&impl->counted[b], cudaEventDisableTiming);
    }
    if (e == cudaSuccess) {
      e = cudaEventCreateWithFlags(&impl->cleared[b], cudaEventDisableTiming);
    }
    if (e != cudaSuccess) return InternalError(CudaMessage("allocation", e));
  }
  e = cudaStreamCreateWithFlags(&impl->copy_stream, cudaStreamNonBlocking);
  if (e != cudaSuccess) return InternalError(CudaMessage("stream", e));
  impl->staged.resize(options.staging_steps);
  for (Impl::Staged& s : impl->staged) {
    e = cudaHostAlloc(reinterpret_cast<void**>(&s.counts),
                      impl->cells * sizeof(int64_t), cudaHostAllocDefault);
    if (e == cudaSuccess) {
      e = cudaEventCreateWithFlags(&s.landed, cudaEventDisableTiming);
    }
    if (e != cudaSuccess) return InternalError(CudaMessage("staging", e));
  }
  // The buffers are zero before any stream uses them.
  e = cudaDeviceSynchronize();
  if (e != cudaSuccess) return InternalError(CudaMessage("setup", e));
  return std::unique_ptr<DeviceHeatRecorder>(
      new DeviceHeatRecorder(std::move(impl)));
}

void DeviceHeatRecorder::Fail(const char* what, cudaError_t error) {
  if (status_.ok()) status_ = InternalError(CudaMessage(what, error));
}

template <typename Id>
void DeviceHeatRecorder::Record(int layer, const Id* ids, int64_t n,
                                const int32_t* log2phy, cudaStream_t stream) {
  Impl& s = *impl_;
  EPLB_CHECK_MSG(layer >= 0 && layer < s.options.num_layers,
                 "DeviceHeatRecorder: layer out of range");
  if (!status_.ok() || n <= 0) return;
  const auto slots = static_cast<uint32_t>(s.options.num_slots);
  unsigned long long* base = s.device_counts[s.current];
  unsigned long long* counts = base + static_cast<size_t>(layer) * slots;
  unsigned long long* dropped = base + s.cells - 1;
  const int64_t wanted = (n + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(std::min<int64_t>(s.blocks, wanted));
  const auto experts = static_cast<uint64_t>(s.options.num_experts);
  if (s.shared) {
    const size_t shared_bytes = (slots + 1) * sizeof(unsigned int);
    CountShared<Id><<<blocks, kThreads, shared_bytes, stream>>>(
        ids, n, log2phy, experts, slots, counts, dropped);
  } else {
    CountGlobal<Id><<<blocks, kThreads, 0, stream>>>(ids, n, log2phy, experts,
                                                     slots, counts, dropped);
  }
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) Fail("counting kernel", e);
}

void DeviceHeatRecorder::RecordTopk(int layer, const int32_t* topk_ids,
                                    int64_t num_ids, const int32_t* log2phy,
                                    cudaStream_t stream) {
  Record(layer, topk_ids, num_ids, log2phy, stream);
}

void DeviceHeatRecorder::RecordTopk(int layer, const int64_t* topk_ids,
                                    int64_t num_ids, const int32_t* log2phy,
                                    cudaStream_t stream) {
  Record(layer, topk_ids, num_ids, log2phy, stream);
}

void DeviceHeatRecorder::EndStep(int64_t num_tokens, cudaStream_t stream) {
  Impl& s = *impl_;
  if (!status_.ok()) return;
  Impl::Staged& slot = s.staged[s.next_staged];
  if (slot.busy) {
    // Every staging buffer waits for Drain: this step merges into the next.
    ++merged_steps_;
    return;
  }
  const int b = s.current;
  const size_t bytes = s.cells * sizeof(unsigned long long);
  // The copy stream takes the step's buffer once the step's work is done,
  // copies it to pinned memory and zeroes it; the compute stream goes on
  // with the other buffer.
  cudaError_t e = cudaEventRecord(s.counted[b], stream);
  if (e == cudaSuccess) e = cudaStreamWaitEvent(s.copy_stream, s.counted[b], 0);
  if (e == cudaSuccess) {
    e = cudaMemcpyAsync(slot.counts, s.device_counts[b], bytes,
                        cudaMemcpyDeviceToHost, s.copy_stream);
  }
  if (e == cudaSuccess) e = cudaEventRecord(slot.landed, s.copy_stream);
  if (e == cudaSuccess) {
    e = cudaMemsetAsync(s.device_counts[b], 0, bytes, s.copy_stream);
  }
  if (e == cudaSuccess) e = cudaEventRecord(s.cleared[b], s.copy_stream);
  if (e != cudaSuccess) {
    Fail("end of step", e);
    return;
  }
  s.cleared_pending[b] = true;
  slot.busy = true;
  slot.num_tokens = num_tokens;
  s.next_staged = (s.next_staged + 1) % static_cast<int>(s.staged.size());
  // The next step counts into the other buffer, once its last copy is out.
  s.current = 1 - b;
  if (s.cleared_pending[s.current]) {
    e = cudaStreamWaitEvent(stream, s.cleared[s.current], 0);
    if (e != cudaSuccess) Fail("end of step", e);
    s.cleared_pending[s.current] = false;
  }
}

int DeviceHeatRecorder::Drain() {
  Impl& s = *impl_;
  int handed = 0;
  const int L = s.options.num_layers;
  const size_t S = static_cast<size_t>(s.options.num_slots);
  while (status_.ok()) {
    Impl::Staged& slot = s.staged[s.oldest];
    if (!slot.busy) break;
    const cudaError_t e = cudaEventQuery(slot.landed);
    if (e == cudaErrorNotReady) break;
    if (e != cudaSuccess) {
      Fail("staging copy", e);
      break;
    }
    for (int l = 0; l < L; ++l) {
      s.host->RecordSlotCounts(
          l, std::span<const int64_t>(slot.counts + l * S, S));
    }
    s.host->RecordDroppedIds(slot.counts[s.cells - 1]);
    s.host->EndStep(slot.num_tokens);
    slot.busy = false;
    s.oldest = (s.oldest + 1) % static_cast<int>(s.staged.size());
    ++handed;
  }
  return handed;
}

}  // namespace eplb::cuda
