// Device buffers for the CUDA tests: allocated on construction (a failure
// fails the test), freed on destruction.
#ifndef EPLB_SRC_CUDA_DEVICE_ARRAY_TEST_UTIL_H_
#define EPLB_SRC_CUDA_DEVICE_ARRAY_TEST_UTIL_H_

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <vector>

namespace eplb::cuda {

template <typename T>
struct DeviceArray {
  // `size` elements, uninitialised.
  explicit DeviceArray(size_t n) : size(n) {
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&data),
                         std::max<size_t>(1, size) * sizeof(T)),
              cudaSuccess);
  }
  // A copy of `host`.
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size()) {
    Upload(host);
  }
  ~DeviceArray() { cudaFree(data); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  // host[0 .. host.size()) to the front of the buffer (synchronous).
  void Upload(const std::vector<T>& host) {
    ASSERT_LE(host.size(), size);
    EXPECT_EQ(cudaMemcpy(data, host.data(), host.size() * sizeof(T),
                         cudaMemcpyHostToDevice),
              cudaSuccess);
  }
  // The first n elements (synchronous).
  std::vector<T> Download(size_t n) const {
    std::vector<T> host(n);
    EXPECT_EQ(
        cudaMemcpy(host.data(), data, n * sizeof(T), cudaMemcpyDeviceToHost),
        cudaSuccess);
    return host;
  }

  T* data = nullptr;
  size_t size = 0;
};

}  // namespace eplb::cuda

#endif  // EPLB_SRC_CUDA_DEVICE_ARRAY_TEST_UTIL_H_
