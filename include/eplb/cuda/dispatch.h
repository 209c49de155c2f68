// Balanced dispatch's per-token mapping on the GPU: each token's logical
// expert to a physical slot, honouring one layer-step's quotas, with
// BalancedDispatcher::MapTokens' rule exactly (eplb/dispatch.h): the
// occurrences of expert e, in token order (after `offsets[e]` occurrences on
// lower ranks), fill e's replicas in ascending physical id, quota by quota;
// occurrences beyond e's quotas stay on the last replica with a quota (e's
// first replica when none has one); ids outside [0, E) map to -1.
//
// The quotas themselves come from BalancedDispatcher::ComputeQuotas on the
// host (the same summed counts on every rank give the same quotas):
// SetQuotas uploads them with the layer's replicas as one small table per
// layer-step, and Map runs three kernels on the caller's stream (per-tile
// counts, per-expert bases in token order, then one warp per tile ranking
// each id among its expert's earlier ones), never a host synchronisation.
// Deterministic: the same ids and quotas give the same slots on every run.
//
// Thread-compatible: one serving thread, one stream at a time.
#ifndef EPLB_CUDA_DISPATCH_H_
#define EPLB_CUDA_DISPATCH_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <span>

#include "eplb/placement.h"
#include "eplb/status.h"

namespace eplb::cuda {

class DeviceTokenMapper {
 public:
  // Experts E in [1, 8192] (a tile keeps a counter per expert in shared
  // memory), slots S >= E, and the most ids one Map call takes.
  // InvalidArgument names a bad argument; Unavailable without a device.
  static StatusOr<std::unique_ptr<DeviceTokenMapper>> Create(int num_experts,
                                                             int num_slots,
                                                             int64_t max_ids);
  ~DeviceTokenMapper();
  DeviceTokenMapper(const DeviceTokenMapper&) = delete;
  DeviceTokenMapper& operator=(const DeviceTokenMapper&) = delete;

  // The layer's replicas (`routing`, BuildLayerRouting) and the step's
  // quotas ([S], BalancedDispatcher::ComputeQuotas), copied to the device on
  // `stream` for the Map calls that follow on it. InvalidArgument when the
  // shapes disagree.
  Status SetQuotas(const LayerRouting& routing,
                   std::span<const int64_t> slot_quota, cudaStream_t stream);

  // Maps `num_ids` ids (device memory, token order) to physical slots
  // (device memory, same size, not overlapping). `offsets`: device [E] or
  // null (zero offsets). InvalidArgument when num_ids > max_ids or no quotas
  // were set; Internal for a failed launch.
  Status Map(const int32_t* topk_ids, int64_t num_ids, const int64_t* offsets,
             int32_t* physical_ids, cudaStream_t stream);
  Status Map(const int64_t* topk_ids, int64_t num_ids, const int64_t* offsets,
             int64_t* physical_ids, cudaStream_t stream);

 private:
  struct Impl;
  explicit DeviceTokenMapper(std::unique_ptr<Impl> impl);
  template <typename Id>
  Status MapIds(const Id* ids, int64_t n, const int64_t* offsets, Id* out,
                cudaStream_t stream);
  std::unique_ptr<Impl> impl_;
};

}  // namespace eplb::cuda

#endif  // EPLB_CUDA_DISPATCH_H_
