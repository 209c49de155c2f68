// Expert migration on the GPU: copies of expert tensors into staging on a
// side stream, verified by checksums computed on the device, and a commit
// that the compute stream carries out between two steps. Nothing here waits
// for the device: the compute stream never blocks on a copy, and the host
// only asks, with an event query, whether a batch has finished.
//
//   auto m = *eplb::cuda::DeviceMigration::Create(max_copies, max_bytes,
//                                                 table_entries);
//   m->Start(copies);                 // side stream: checksums, copies
//   ... steps run on the compute stream ...
//   if (m->Done() && m->Verified()) {
//     m->Commit(slot_writes, new_log2phy, device_log2phy, compute_stream);
//   }
//
// The side stream is created with the lowest stream priority. That is also
// the priority of a stream created without one, so the compute stream's
// kernels are scheduled first only when the engine gives its compute stream
// a higher priority (cudaStreamCreateWithPriority; see docs/cuda.md). The
// copies are cudaMemcpyAsync calls (the driver chooses how a device-to-device
// copy is carried out); the checksum kernels take multiprocessors, as many
// as `checksum_blocks` allows (Create).
#ifndef EPLB_CUDA_MIGRATION_H_
#define EPLB_CUDA_MIGRATION_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "eplb/status.h"

namespace eplb::cuda {

// One tensor of a moved expert.
struct DeviceCopy {
  // Device memory: this device's, or a peer's with peer access enabled.
  const void* src = nullptr;
  // Staging on this device: not read by the compute stream until Commit.
  void* dst = nullptr;
  size_t bytes = 0;
  // ChecksumBytes(src, kChecksumSeed) (eplb/weights.h) when the caller
  // knows it (for example from an earlier verified move of the expert); 0:
  // computed on the device from `src` before the copy.
  uint64_t source_checksum = 0;
};

// A staging buffer that becomes a slot at Commit: `bytes` from `staging` to
// `slot` (device memory), on the compute stream.
struct SlotWrite {
  const void* staging = nullptr;
  void* slot = nullptr;
  size_t bytes = 0;
};

class DeviceMigration {
 public:
  // Room for `max_copies` tensors per batch of at most `max_copy_bytes`
  // bytes each (the checksums' scratch is sized for it), and a routing
  // table of up to `max_table_entries` entries per Commit.
  // `checksum_blocks` caps the thread blocks of each checksum kernel
  // (DeviceChecksum's max_blocks): 0 lets a checksum spread over every free
  // multiprocessor (fastest verification, most contention with the compute
  // stream); a few keep verification on a few multiprocessors, slower but
  // out of the compute stream's way. InvalidArgument for a bad size or a
  // checksum_blocks outside [0, 65535]; Unavailable without a device;
  // Internal when an allocation fails.
  static StatusOr<std::unique_ptr<DeviceMigration>> Create(
      int max_copies, size_t max_copy_bytes, size_t max_table_entries,
      int checksum_blocks = 0);
  ~DeviceMigration();
  DeviceMigration(const DeviceMigration&) = delete;
  DeviceMigration& operator=(const DeviceMigration&) = delete;

  // Enqueues a batch on the side stream, after `after` (an event the caller
  // recorded, e.g. on the compute stream once the sources were last
  // written; null: no wait): the source checksums not given, the copies
  // (cudaMemcpyAsync, device to device or peer), the staging checksums, and
  // one copy of all checksums to pinned host memory. Returns at once.
  // InvalidArgument for a null pointer, a copy over max_copy_bytes or too
  // many copies; FailedPrecondition while the previous batch has not been
  // found Done; Internal for a CUDA error.
  Status Start(std::span<const DeviceCopy> copies, cudaEvent_t after = nullptr);

  // Whether the last batch has finished on the device: an event query,
  // never a wait. False when no batch was started.
  bool Done();
  // After Done: whether every staging buffer's checksum equals its
  // source's. Mismatched(i) for copy i.
  bool Verified() const;
  bool Mismatched(size_t i) const;
  // The checksums the device computed for copy i (after Done).
  uint64_t source_checksum(size_t i) const;
  uint64_t landed_checksum(size_t i) const;

  // Enqueues the commit on `compute` (so it falls between the step before
  // and the step after): every SlotWrite, then `log2phy` (host, n entries)
  // into `device_log2phy` (device, n entries) through pinned memory.
  // FailedPrecondition unless the batch is Done and Verified (nothing is
  // enqueued then); InvalidArgument for null pointers or more than
  // max_table_entries entries; Internal for a CUDA error. The pinned table
  // is reused: if the previous commit's upload has not yet run on the
  // device, this call waits for it (only back-to-back commits can).
  Status Commit(std::span<const SlotWrite> writes,
                std::span<const int32_t> log2phy, int32_t* device_log2phy,
                cudaStream_t compute);

  cudaStream_t side_stream() const;

 private:
  struct Impl;
  explicit DeviceMigration(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace eplb::cuda

#endif  // EPLB_CUDA_MIGRATION_H_
