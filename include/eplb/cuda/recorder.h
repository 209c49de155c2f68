// DeviceHeatRecorder: heat counting on the GPU, for engines whose router
// output (topk_ids) lives on the device.
//
// The engine's serving thread calls RecordTopk for every MoE layer of a step
// with device pointers and its compute stream, then EndStep. The counting is
// a kernel on that stream (stream-ordered, never a host synchronisation;
// RecordTopk may be captured in a CUDA graph), with the semantics of
// HeatRecorder::RecordTopk exactly: an id maps through the rank's log2phy row
// to a physical slot, and ids outside [0, E), unmapped experts (-1) and
// entries that are no slot are dropped ids.
//
// Each step's counts ([L][S] and the dropped ids) reach the host without a
// wait: at EndStep a side stream copies them, behind the step's work, into
// one of `staging_steps` pinned buffers, and Drain() (the serving thread, at
// any step boundary) hands every copy that has landed, in step order, to a
// host HeatRecorder (RecordSlotCounts, RecordDroppedIds, EndStep with the
// step's token count). So the window, the ring of samples, the stage filter,
// Clear() and Snapshot() are the host recorder's, and the controller reads
// them as it does without a GPU. Device buffers are double-buffered: the
// compute stream only ever waits (on the device) for the copy of the step
// before last.
//
// When every staging buffer is still in flight or not yet drained (the host
// has not called Drain for `staging_steps` steps), EndStep keeps counting into
// the same device buffer: that step merges into the next (merged_steps()).
//
// EndStep chooses buffers on the host, so it is called outside a captured
// graph. A CUDA error makes the recorder stop counting and sets status().
// Thread-compatible: one serving thread.
#ifndef EPLB_CUDA_RECORDER_H_
#define EPLB_CUDA_RECORDER_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>

#include "eplb/recorder.h"
#include "eplb/status.h"

namespace eplb::cuda {

struct DeviceHeatRecorderOptions {
  int num_layers = 0;   // MoE layers.
  int num_experts = 0;  // Logical experts E (the range of topk ids).
  int num_slots = 0;    // Physical slots counted: R*K.
  // Pinned step buffers that may be in flight or waiting for Drain; >= 2.
  int staging_steps = 8;
  // The device the buffers live on (the caller's current device by
  // default).
  int device = -1;
  // Thread blocks of a counting kernel (each counts its share of the ids in
  // shared memory, then adds its counters to the layer's): 0 launches twice
  // the device's multiprocessors. Fewer blocks add fewer partial counters
  // per layer-step; more keep more ids in flight. >= 0.
  int max_blocks = 0;
};

// Whether a CUDA device can be used here (a driver and at least one device).
bool DeviceAvailable();

class DeviceHeatRecorder {
 public:
  // InvalidArgument names a bad option (or a null/mismatched `host`);
  // Unavailable when no device can be used; Internal for a CUDA error.
  // `host` must outlive the recorder and have the same num_layers and
  // num_slots.
  static StatusOr<std::unique_ptr<DeviceHeatRecorder>> Create(
      const DeviceHeatRecorderOptions& options, HeatRecorder* host);
  ~DeviceHeatRecorder();
  DeviceHeatRecorder(const DeviceHeatRecorder&) = delete;
  DeviceHeatRecorder& operator=(const DeviceHeatRecorder&) = delete;

  // Counts `num_ids` router ids (device memory, [tokens][top_k] flattened)
  // of `layer` through `log2phy` (device memory, [E]) on `stream`.
  // Precondition: 0 <= layer < num_layers (EPLB_CHECK).
  void RecordTopk(int layer, const int32_t* topk_ids, int64_t num_ids,
                  const int32_t* log2phy, cudaStream_t stream);
  void RecordTopk(int layer, const int64_t* topk_ids, int64_t num_ids,
                  const int32_t* log2phy, cudaStream_t stream);
  // Ends the step whose work was enqueued on `stream`: its counts go to a
  // staging buffer, with `num_tokens` for the host recorder's stage filter.
  void EndStep(int64_t num_tokens, cudaStream_t stream);
  // Hands every landed step to the host recorder, oldest first; never
  // waits. Returns the steps handed over.
  int Drain();

  int64_t merged_steps() const { return merged_steps_; }
  // Ok, or the first CUDA error met (counting stopped then).
  const Status& status() const { return status_; }

 private:
  struct Impl;
  explicit DeviceHeatRecorder(std::unique_ptr<Impl> impl);
  void Fail(const char* what, cudaError_t error);
  template <typename Id>
  void Record(int layer, const Id* ids, int64_t n, const int32_t* log2phy,
              cudaStream_t stream);

  std::unique_ptr<Impl> impl_;
  int64_t merged_steps_ = 0;
  Status status_;
};

}  // namespace eplb::cuda

#endif  // EPLB_CUDA_RECORDER_H_
