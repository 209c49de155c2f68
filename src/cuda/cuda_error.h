// The message of a failed CUDA call, for the backend's Internal errors:
// "<who>: CUDA <what>: <CUDA's description>".
#ifndef EPLB_SRC_CUDA_CUDA_ERROR_H_
#define EPLB_SRC_CUDA_CUDA_ERROR_H_

#include <cuda_runtime_api.h>

#include <string>

namespace eplb::cuda::internal {

inline std::string CudaMessage(const char* who, const char* what,
                               cudaError_t error) {
  return std::string(who) + ": CUDA " + what + ": " + cudaGetErrorString(error);
}

}  // namespace eplb::cuda::internal

#endif  // EPLB_SRC_CUDA_CUDA_ERROR_H_
