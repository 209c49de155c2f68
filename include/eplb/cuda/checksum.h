// The expert checksum on the GPU: ChecksumBytes (eplb/weights.h) of device
// memory, the same value bit for bit, so a migrated expert can be verified
// where its tensors live, on a stream and without a host synchronisation.
#ifndef EPLB_CUDA_CHECKSUM_H_
#define EPLB_CUDA_CHECKSUM_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "eplb/status.h"
#include "eplb/weights.h"

namespace eplb::cuda {

// Device scratch that DeviceChecksum needs for `num_bytes` bytes (8 bytes a
// whole kChecksumBlockBytes block; at least 8).
size_t DeviceChecksumScratchBytes(size_t num_bytes);

// Enqueues on `stream` the computation of ChecksumBytes(bytes, seed) over
// `num_bytes` bytes of device memory at `bytes` (any alignment); the value
// lands in device memory at `out` (8 bytes). Every whole block is one warp's
// work (its 32 lanes are the checksum's 32 lanes), then one thread chains the
// blocks and the tail in order. `scratch`: DeviceChecksumScratchBytes(
// num_bytes) bytes of device memory, not used by another checksum in flight.
// InvalidArgument for a null pointer; Internal when the launch fails.
Status DeviceChecksum(const void* bytes, size_t num_bytes, uint64_t seed,
                      uint64_t* out, void* scratch, cudaStream_t stream);

}  // namespace eplb::cuda

#endif  // EPLB_CUDA_CHECKSUM_H_
