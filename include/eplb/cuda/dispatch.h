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

  // SetQuotas for quotas already in device memory (`slot_quota` [S], e.g.
  // DeviceQuotaSolver::Compute's on the same stream): a kernel derives the
  // table from the device quotas, with no host synchronisation. The replica
  // lists are copied from `routing` only when they differ from the last
  // call's (they change with the placement), so a step on an unchanged
  // placement costs one small kernel launch and may be captured in a CUDA
  // graph (with Compute and Map).
  Status SetQuotasOnDevice(const LayerRouting& routing,
                           const int64_t* slot_quota, cudaStream_t stream);

 private:
  struct Impl;
  explicit DeviceTokenMapper(std::unique_ptr<Impl> impl);
  template <typename Id>
  Status MapIds(const Id* ids, int64_t n, const int64_t* offsets, Id* out,
                cudaStream_t stream);
  Status CheckRouting(const LayerRouting& routing) const;
  std::unique_ptr<Impl> impl_;
};

// BalancedDispatcher::ComputeQuotas on the GPU: the same integer algorithm
// (a direct fill, shortest augmenting paths in ascending id order, the
// cut bound raised until every token is placed) on the same graph, so the
// quotas equal the host's, slot for slot, and every rank that runs it on
// the same summed counts gets the same quotas. One thread block per call:
// the work per rank, per replicated expert and per slot runs on all its
// threads; the flow search, sequential by nature and small (24 replicated
// experts and 56 replica edges on a DeepSeek-V3 layer), on one. Nothing
// leaves the device between the counts and the mapping. SetPlacement and
// Compute are ordered on one stream (or the caller orders them).
//
//   auto q = *DeviceQuotaSolver::Create(E, R, K);
//   q->SetPlacement(layer, stream);                      // per placement
//   q->Compute(d_counts, d_quota, d_max_load, stream);   // per layer-step
//   mapper->SetQuotasOnDevice(routing, d_quota, stream);
//   mapper->Map(...);
class DeviceQuotaSolver {
 public:
  // E experts on R ranks x K slots: all >= 1, R*K >= E, K <= E (as the
  // host's). InvalidArgument names a bad one; Unavailable without a device.
  static StatusOr<std::unique_ptr<DeviceQuotaSolver>> Create(
      int num_experts, int num_ranks, int slots_per_rank);
  ~DeviceQuotaSolver();
  DeviceQuotaSolver(const DeviceQuotaSolver&) = delete;
  DeviceQuotaSolver& operator=(const DeviceQuotaSolver&) = delete;

  // The layer's placement [R*K] (physical id -> expert), validated as the
  // host's SetPlacement checks it (InvalidArgument instead of a crash):
  // every id in [0, E), every expert present, none twice on a rank; a bad
  // one leaves the last good placement in effect. Its graph is built on
  // the host (allocates) and copied on `stream`; if the copy two calls back
  // has not landed, waits for it.
  Status SetPlacement(std::span<const int32_t> layer, cudaStream_t stream);

  // One layer-step on `stream`: `counts` [E] (device, the step's tokens per
  // expert summed over ranks) -> `slot_quota` [R*K] (device) and the
  // largest rank load at `max_load` (device, one int64; null: not
  // written). A negative count leaves every quota 0 and max_load -1.
  // InvalidArgument before SetPlacement or for a null pointer; Internal for
  // a failed launch.
  Status Compute(const int64_t* counts, int64_t* slot_quota, int64_t* max_load,
                 cudaStream_t stream);

 private:
  struct Impl;
  explicit DeviceQuotaSolver(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace eplb::cuda

#endif  // EPLB_CUDA_DISPATCH_H_
