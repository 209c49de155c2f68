// Two pinned host buffers for a small table the host fills and the device
// reads (a quota table, a placement's graph): while one is being copied on
// a stream, the host fills the other, so filling never waits for the copy
// just enqueued, only (rarely: the tables are tiny) for the one two calls
// back.
#ifndef EPLB_SRC_CUDA_PINNED_UPLOAD_H_
#define EPLB_SRC_CUDA_PINNED_UPLOAD_H_

#include <cuda_runtime.h>

#include <cstddef>

namespace eplb::cuda::internal {

class PinnedUpload {
 public:
  PinnedUpload() = default;
  ~PinnedUpload() {
    Wait();
    for (int b = 0; b < 2; ++b) {
      if (uploaded_[b] != nullptr) cudaEventDestroy(uploaded_[b]);
      if (buffer_[b] != nullptr) cudaFreeHost(buffer_[b]);
    }
  }
  PinnedUpload(const PinnedUpload&) = delete;
  PinnedUpload& operator=(const PinnedUpload&) = delete;

  // Two buffers of `bytes` and their events.
  cudaError_t Allocate(size_t bytes) {
    for (int b = 0; b < 2; ++b) {
      cudaError_t e = cudaHostAlloc(reinterpret_cast<void**>(&buffer_[b]),
                                    bytes, cudaHostAllocDefault);
      if (e == cudaSuccess) {
        e = cudaEventCreateWithFlags(&uploaded_[b], cudaEventDisableTiming);
      }
      if (e != cudaSuccess) return e;
    }
    return cudaSuccess;
  }

  // Waits for every copy sent (before freeing what they write to).
  void Wait() {
    for (int b = 0; b < 2; ++b) {
      if (in_flight_[b]) cudaEventSynchronize(uploaded_[b]);
      in_flight_[b] = false;
    }
  }

  // The buffer to fill next, once its last copy has landed (null, with
  // *error set, if waiting for it failed).
  unsigned char* Next(cudaError_t* error) {
    if (in_flight_[next_]) {
      *error = cudaEventSynchronize(uploaded_[next_]);
      if (*error != cudaSuccess) return nullptr;
      in_flight_[next_] = false;
    }
    return buffer_[next_];
  }

  // The buffer sent last (what the device holds, where the whole of it was
  // sent; the host may read it).
  unsigned char* Last() const { return buffer_[1 - next_]; }

  // Copies bytes [offset, offset + bytes) of the buffer Next() returned to
  // the same range of `device` on `stream`; the next Next() is the other
  // buffer.
  cudaError_t Send(void* device, size_t offset, size_t bytes,
                   cudaStream_t stream) {
    cudaError_t e = cudaMemcpyAsync(
        static_cast<unsigned char*>(device) + offset, buffer_[next_] + offset,
        bytes, cudaMemcpyHostToDevice, stream);
    if (e == cudaSuccess) e = cudaEventRecord(uploaded_[next_], stream);
    if (e != cudaSuccess) return e;
    in_flight_[next_] = true;
    next_ = 1 - next_;
    return cudaSuccess;
  }

 private:
  unsigned char* buffer_[2] = {nullptr, nullptr};
  cudaEvent_t uploaded_[2] = {nullptr, nullptr};
  bool in_flight_[2] = {false, false};
  int next_ = 0;
};

}  // namespace eplb::cuda::internal

#endif  // EPLB_SRC_CUDA_PINNED_UPLOAD_H_
