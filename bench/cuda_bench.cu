// The CUDA backend's speed per layer-step (16384 tokens x top-8 by default,
// 256 experts on 32 ranks x 9 slots), timed with CUDA events over many
// launches on one stream:
//  - the heat recorder (DeviceHeatRecorder::RecordTopk) against a plain
//    device histogram of the same ids (cub::DeviceHistogram::HistogramEven),
//    in the same run, and a 58-layer step with its end and drain;
//  - balanced dispatch's per-token mapping (DeviceTokenMapper::Map) for
//    quotas the host computed (BalancedDispatcher::ComputeQuotas, timed on
//    the host beside it), and their upload (SetQuotas).
//
// Usage: eplb_bench_cuda [TOKENS] [TOP_K] [EXPERTS] [SLOTS]
// Needs a GPU; prints "no CUDA device" and exits 0 without one.
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cub/device/device_histogram.cuh>
#include <memory>
#include <vector>

#include "eplb/cuda/dispatch.h"
#include "eplb/cuda/recorder.h"
#include "eplb/dispatch.h"
#include "eplb/placement.h"
#include "eplb/topology.h"

namespace {

#define CHECK_CUDA(call)                                               \
  do {                                                                 \
    const cudaError_t e_ = (call);                                     \
    if (e_ != cudaSuccess) {                                           \
      std::fprintf(stderr, "%s: %s\n", #call, cudaGetErrorString(e_)); \
      std::exit(1);                                                    \
    }                                                                  \
  } while (0)

// Mean microseconds of one call of fn over `reps` calls on `stream`.
template <typename Fn>
float TimeUs(cudaStream_t stream, int reps, Fn fn) {
  for (int i = 0; i < 20; ++i) fn();  // Warm-up.
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  CHECK_CUDA(cudaEventRecord(start, stream));
  for (int i = 0; i < reps; ++i) fn();
  CHECK_CUDA(cudaEventRecord(stop, stream));
  CHECK_CUDA(cudaEventSynchronize(stop));
  float ms = 0;
  CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ms * 1000.0f / static_cast<float>(reps);
}

}  // namespace

int main(int argc, char** argv) {
  const int tokens = argc > 1 ? std::atoi(argv[1]) : 16384;
  const int top_k = argc > 2 ? std::atoi(argv[2]) : 8;
  const int experts = argc > 3 ? std::atoi(argv[3]) : 256;
  const int slots = argc > 4 ? std::atoi(argv[4]) : 288;
  if (tokens < 1 || top_k < 1 || experts < 1 || slots < experts ||
      slots % 32 != 0 || top_k > experts) {
    std::fprintf(stderr,
                 "usage: eplb_bench_cuda [TOKENS] [TOP_K] [EXPERTS] "
                 "[SLOTS >= EXPERTS, a multiple of 32]\n");
    return 2;
  }
  if (!eplb::cuda::DeviceAvailable()) {
    std::printf("no CUDA device\n");
    return 0;
  }
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  const int64_t n = static_cast<int64_t>(tokens) * top_k;
  // Skewed ids (a few hot experts), fixed seed.
  std::vector<int32_t> ids(n);
  uint64_t x = 88172645463325252ull;
  for (int64_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    const auto r = static_cast<int>(x % 1000);
    ids[i] = r < 300 ? r % 8 : static_cast<int>((x >> 20) % experts);
  }
  std::vector<int32_t> log2phy(experts);
  for (int e = 0; e < experts; ++e) log2phy[e] = e;
  int32_t *d_ids = nullptr, *d_log2phy = nullptr;
  CHECK_CUDA(cudaMalloc(&d_ids, n * sizeof(int32_t)));
  CHECK_CUDA(cudaMalloc(&d_log2phy, experts * sizeof(int32_t)));
  CHECK_CUDA(cudaMemcpy(d_ids, ids.data(), n * sizeof(int32_t),
                        cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_log2phy, log2phy.data(), experts * sizeof(int32_t),
                        cudaMemcpyHostToDevice));
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  constexpr int kLayers = 58;
  eplb::HeatRecorderOptions ho;
  ho.num_layers = kLayers;
  ho.num_experts = experts;
  ho.num_slots = slots;
  auto host = eplb::HeatRecorder::Create(ho);
  if (!host.ok()) {
    std::fprintf(stderr, "%s\n", host.status().ToString().c_str());
    return 1;
  }
  eplb::cuda::DeviceHeatRecorderOptions o;
  o.num_layers = kLayers;
  o.num_experts = experts;
  o.num_slots = slots;
  auto rec = eplb::cuda::DeviceHeatRecorder::Create(o, host->get());
  if (!rec.ok()) {
    std::fprintf(stderr, "%s\n", rec.status().ToString().c_str());
    return 1;
  }
  const int reps = 2000;
  const float record_us = TimeUs(stream, reps, [&] {
    (*rec)->RecordTopk(0, d_ids, n, d_log2phy, stream);
  });
  // The reference: a plain device histogram of the same ids over experts.
  int* d_hist = nullptr;
  CHECK_CUDA(cudaMalloc(&d_hist, experts * sizeof(int)));
  size_t temp_bytes = 0;
  CHECK_CUDA(cub::DeviceHistogram::HistogramEven(
      nullptr, temp_bytes, d_ids, d_hist, experts + 1, 0, experts,
      static_cast<int>(n), stream));
  void* d_temp = nullptr;
  CHECK_CUDA(cudaMalloc(&d_temp, temp_bytes));
  const float cub_us = TimeUs(stream, reps, [&] {
    cub::DeviceHistogram::HistogramEven(d_temp, temp_bytes, d_ids, d_hist,
                                        experts + 1, 0, experts,
                                        static_cast<int>(n), stream);
  });
  // A whole step: every layer, then the step's end, the host draining.
  const float step_us = TimeUs(stream, 200, [&] {
    for (int l = 0; l < kLayers; ++l) {
      (*rec)->RecordTopk(l, d_ids, n, d_log2phy, stream);
    }
    (*rec)->EndStep(tokens, stream);
    (*rec)->Drain();
  });
  CHECK_CUDA(cudaDeviceSynchronize());
  (*rec)->Drain();

  // Balanced dispatch: the initial placement of `experts` on 32 ranks, the
  // step's counts, the host's quotas, then the device's mapping.
  const int ranks = 32;
  const eplb::Topology topology =
      *eplb::MakeTopology(experts, ranks, slots / ranks);
  const eplb::Placement placement =
      eplb::Placement::Initial(1, experts, topology);
  const eplb::LayerRouting routing =
      eplb::BuildLayerRouting(placement.layer(0), experts, topology);
  eplb::BalancedDispatcher dispatcher(experts, ranks, slots / ranks);
  dispatcher.SetPlacement(placement.layer(0));
  std::vector<int64_t> counts(experts, 0);
  for (int32_t id : ids) ++counts[id];
  std::vector<int64_t> quota(slots);
  const int quota_reps = 2000;
  const auto q0 = std::chrono::steady_clock::now();
  for (int i = 0; i < quota_reps; ++i) dispatcher.ComputeQuotas(counts, quota);
  const double quota_us = std::chrono::duration<double, std::micro>(
                              std::chrono::steady_clock::now() - q0)
                              .count() /
                          quota_reps;
  auto mapper = eplb::cuda::DeviceTokenMapper::Create(experts, slots, n);
  if (!mapper.ok()) {
    std::fprintf(stderr, "%s\n", mapper.status().ToString().c_str());
    return 1;
  }
  int32_t* d_out = nullptr;
  CHECK_CUDA(cudaMalloc(&d_out, n * sizeof(int32_t)));
  const float upload_us = TimeUs(
      stream, 500, [&] { (void)(*mapper)->SetQuotas(routing, quota, stream); });
  const float map_us = TimeUs(stream, reps, [&] {
    (void)(*mapper)->Map(d_ids, n, nullptr, d_out, stream);
  });
  CHECK_CUDA(cudaStreamSynchronize(stream));
  // The device's slots against the host's, once.
  std::vector<int32_t> want(n), got(n);
  dispatcher.MapTokens(ids, want);
  CHECK_CUDA(cudaMemcpy(got.data(), d_out, n * sizeof(int32_t),
                        cudaMemcpyDeviceToHost));
  const bool same = got == want;
  cudaFree(d_out);
  std::printf("device: %s (%d SMs)\n", prop.name, prop.multiProcessorCount);
  std::printf(
      "ids per layer-step: %d tokens x top-%d = %lld, %d experts, %d "
      "slots\n",
      tokens, top_k, static_cast<long long>(n), experts, slots);
  std::printf("| what | us per call |\n|---|---|\n");
  std::printf("| DeviceHeatRecorder::RecordTopk (one layer-step) | %.2f |\n",
              record_us);
  std::printf(
      "| cub::DeviceHistogram::HistogramEven (same ids, reference) "
      "| %.2f |\n",
      cub_us);
  std::printf(
      "| a %d-layer step: RecordTopk x %d + EndStep + Drain | %.1f "
      "|\n",
      kLayers, kLayers, step_us);
  std::printf("| DeviceTokenMapper::Map (one layer-step, balanced) | %.2f |\n",
              map_us);
  std::printf(
      "| DeviceTokenMapper::SetQuotas (upload of the quota table) "
      "| %.2f |\n",
      upload_us);
  std::printf(
      "| BalancedDispatcher::ComputeQuotas (host, one core) | %.2f "
      "|\n",
      quota_us);
  std::printf("device mapping equals the host's: %s\n", same ? "yes" : "NO");
  std::printf("status: %s, merged steps: %lld\n",
              (*rec)->status().ToString().c_str(),
              static_cast<long long>((*rec)->merged_steps()));
  cudaFree(d_temp);
  cudaFree(d_hist);
  cudaFree(d_ids);
  cudaFree(d_log2phy);
  cudaStreamDestroy(stream);
  return 0;
}
