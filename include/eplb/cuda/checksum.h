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
// work (its 32 lanes are the checksum's 32 lanes), then one warp chains the
// blocks and the tail in order (loading 32 values at a time). `scratch`:
// DeviceChecksumScratchBytes(num_bytes) bytes of device memory, not used by
// another checksum in flight. `max_blocks` caps the thread blocks of the
// per-block kernel (each warp then takes several blocks in turn; the value is
// the same): 0 launches as many as the bytes need, which spreads the work over
// every free multiprocessor, while a few keep it on a few and leave the rest to
// other streams' kernels. InvalidArgument for a null pointer or a negative
// `max_blocks`; Internal when the launch fails.
Status DeviceChecksum(const void* bytes, size_t num_bytes, uint64_t seed,
                      uint64_t* out, void* scratch, cudaStream_t stream,
                      int max_blocks = 0);

}  // namespace eplb::cuda

#endif  // EPLB_CUDA_CHECKSUM_H_
