// The CUDA backend's speed per layer-step (16384 tokens x top-8 by default,
// 256 experts on 32 ranks x 9 slots), timed with CUDA events over many
// launches on one stream:
//  - the heat recorder (DeviceHeatRecorder::RecordTopk) against a plain
//    device histogram of the same ids (cub::DeviceHistogram::HistogramEven),
//    in the same run, RecordTopk at five grids (max_blocks: 1/2, 1, 2, 4
//    and 8 times the multiprocessors), and a 58-layer step with its end and
//    drain;
//  - balanced dispatch's per-token mapping (DeviceTokenMapper::Map) for
//    quotas the host computed (BalancedDispatcher::ComputeQuotas, timed on
//    the host beside it), and their upload (SetQuotas); the quotas on the
//    device (DeviceQuotaSolver::Compute) and the whole layer-step there
//    (Compute + SetQuotasOnDevice + Map);
//  - migration beside compute: a loop of FP32 GEMMs shaped like an expert
//    FFN's first projection (256 tokens x 4096 hidden x 1024) on the compute
//    stream, timed alone and while DeviceMigration copies and verifies one
//    layer's moved experts (8 experts x 3 tensors of 7168 x 2048 bytes, FP8
//    sized) on its side stream, interleaved, median of 7 runs each; the
//    loop is about twice the migration's own time, so the copy overlaps
//    half of it. One row per configuration: the checksum kernels with no
//    thread-block cap, capped at a quarter of the multiprocessors, and at 4
//    (DeviceMigration::Create's checksum_blocks), each with the compute
//    stream at the default priority (the lowest, the side stream's too) and
//    at the greatest.
//
// Usage: eplb_bench_cuda [TOKENS] [TOP_K] [EXPERTS] [SLOTS]
// Needs a GPU; prints "no CUDA device" and exits 0 without one.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cub/device/device_histogram.cuh>
#include <memory>
#include <utility>
#include <vector>

#include "eplb/cuda/dispatch.h"
#include "eplb/cuda/migration.h"
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

// C[M][N] = A[M][K] * B[K][N], 32 x 32 tiles in shared memory (a plain
// compute-bound stand-in for an expert's projection).
constexpr int kTile = 32;
__global__ void Gemm(const float* __restrict__ a, const float* __restrict__ b,
                     float* __restrict__ c, int m, int n, int k) {
  __shared__ float ta[kTile][kTile];
  __shared__ float tb[kTile][kTile + 1];
  const int row = blockIdx.y * kTile + threadIdx.y;
  const int col = blockIdx.x * kTile + threadIdx.x;
  float acc = 0;
  for (int t = 0; t < k; t += kTile) {
    ta[threadIdx.y][threadIdx.x] = a[row * k + t + threadIdx.x];
    tb[threadIdx.y][threadIdx.x] = b[(t + threadIdx.y) * n + col];
    __syncthreads();
    for (int j = 0; j < kTile; ++j)
      acc += ta[threadIdx.y][j] * tb[j][threadIdx.x];
    __syncthreads();
  }
  c[row * n + col] = acc;
}

// The GEMM loop's shape (tokens x hidden x out) and one layer's moves.
constexpr int kM = 256, kK = 4096, kN = 1024;
constexpr int kExperts = 8, kTensors = 3;
constexpr size_t kTensorBytes = size_t{7168} * 2048;
constexpr int kCopies = kExperts * kTensors;

// One configuration of the GEMM loop beside a migration: the checksum
// kernels' thread-block cap and the compute stream's priority.
struct BesideGemm {
  int checksum_blocks = 0;     // DeviceMigration::Create's (0: no cap).
  bool high_priority = false;  // Compute stream at the greatest priority.
};

// The GEMM loop beside a migration (see the file comment), for `v`.
void MigrationBesideGemm(const BesideGemm& v) {
  float *a, *b, *c;
  CHECK_CUDA(cudaMalloc(&a, sizeof(float) * kM * kK));
  CHECK_CUDA(cudaMalloc(&b, sizeof(float) * kK * kN));
  CHECK_CUDA(cudaMalloc(&c, sizeof(float) * kM * kN));
  CHECK_CUDA(cudaMemset(a, 0, sizeof(float) * kM * kK));
  CHECK_CUDA(cudaMemset(b, 0, sizeof(float) * kK * kN));
  std::byte *src, *staging;
  CHECK_CUDA(cudaMalloc(&src, kTensorBytes * kCopies));
  CHECK_CUDA(cudaMalloc(&staging, kTensorBytes * kCopies));
  CHECK_CUDA(cudaMemset(src, 0x5a, kTensorBytes * kCopies));
  std::vector<eplb::cuda::DeviceCopy> copies(kCopies);
  for (int i = 0; i < kCopies; ++i) {
    copies[i] = {src + i * kTensorBytes, staging + i * kTensorBytes,
                 kTensorBytes, 0};
  }
  auto mig = eplb::cuda::DeviceMigration::Create(kCopies, kTensorBytes, 1,
                                                 v.checksum_blocks);
  if (!mig.ok()) {
    std::printf("DeviceMigration: %s\n", mig.status().ToString().c_str());
    std::exit(1);
  }
  eplb::cuda::DeviceMigration& m = **mig;
  cudaStream_t compute;
  int lowest = 0, greatest = 0;
  CHECK_CUDA(cudaDeviceGetStreamPriorityRange(&lowest, &greatest));
  CHECK_CUDA(cudaStreamCreateWithPriority(&compute, cudaStreamNonBlocking,
                                          v.high_priority ? greatest : lowest));
  const dim3 grid(kN / kTile, kM / kTile), block(kTile, kTile);
  auto gemm = [&] { Gemm<<<grid, block, 0, compute>>>(a, b, c, kM, kN, kK); };
  const float gemm_us = TimeUs(compute, 50, gemm);
  // The migration alone (source checksums computed; then known).
  auto migrate = [&](bool known) {
    for (auto& cp : copies) cp.source_checksum = 0;
    if (known) {
      for (int i = 0; i < kCopies; ++i) {
        copies[i].source_checksum = m.source_checksum(0);  // Same bytes.
      }
    }
    if (!m.Start(copies).ok()) std::exit(1);
  };
  auto time_migration = [&](bool known) {
    const auto t0 = std::chrono::steady_clock::now();
    migrate(known);
    CHECK_CUDA(cudaStreamSynchronize(m.side_stream()));
    if (!m.Done() || !m.Verified()) {
      std::printf("migration not verified\n");
      std::exit(1);
    }
    return std::chrono::duration<float, std::micro>(
               std::chrono::steady_clock::now() - t0)
        .count();
  };
  time_migration(false);  // Warm-up; also learns the source checksum.
  const float mig_us = time_migration(false);
  const float mig_known_us = time_migration(true);
  const int loop = std::max(10, static_cast<int>(2 * mig_us / gemm_us));
  auto run_loop = [&](int with) {  // 0: alone, 1: computed, 2: known.
    cudaEvent_t start, stop;
    CHECK_CUDA(cudaEventCreate(&start));
    CHECK_CUDA(cudaEventCreate(&stop));
    CHECK_CUDA(cudaEventRecord(start, compute));
    if (with != 0) {
      CHECK_CUDA(cudaStreamWaitEvent(m.side_stream(), start, 0));
      migrate(with == 2);
    }
    for (int i = 0; i < loop; ++i) gemm();
    CHECK_CUDA(cudaEventRecord(stop, compute));
    CHECK_CUDA(cudaEventSynchronize(stop));
    CHECK_CUDA(cudaStreamSynchronize(m.side_stream()));
    if (with != 0 && (!m.Done() || !m.Verified())) std::exit(1);
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    return ms * 1000.0f;
  };
  std::vector<float> alone, computed, known;
  for (int r = 0; r < 7; ++r) {
    alone.push_back(run_loop(0));
    computed.push_back(run_loop(1));
    known.push_back(run_loop(2));
  }
  auto median = [](std::vector<float> x) {
    std::sort(x.begin(), x.end());
    return x[x.size() / 2];
  };
  const float t0 = median(alone), t1 = median(computed), t2 = median(known);
  char blocks[32];
  if (v.checksum_blocks == 0) {
    std::snprintf(blocks, sizeof(blocks), "no cap");
  } else {
    std::snprintf(blocks, sizeof(blocks), "%d", v.checksum_blocks);
  }
  std::printf(
      "| %s | %s | %d x %.1f | %.0f / %.0f | %.0f | %.2f%% | %.2f%% |\n",
      blocks, v.high_priority ? "greatest" : "default (lowest)", loop, gemm_us,
      mig_us, mig_known_us, t0, 100.0 * (t1 - t0) / t0, 100.0 * (t2 - t0) / t0);
  cudaStreamDestroy(compute);
  cudaFree(a);
  cudaFree(b);
  cudaFree(c);
  cudaFree(src);
  cudaFree(staging);
}

// Every configuration, one row each.
void MigrationBesideGemmTable(int sms) {
  std::printf(
      "\nmigration beside a GEMM loop: GEMMs of %dx%dx%d (FP32), one "
      "layer's moves = %d tensors x %.1f MiB, %d multiprocessors; slowdown: "
      "the loop's median time with the migration on the side stream over "
      "its median time alone, 7 interleaved runs each\n",
      kM, kK, kN, kCopies, static_cast<double>(kTensorBytes) / (1 << 20), sms);
  std::printf(
      "| checksum blocks | compute stream priority | loop: GEMMs x us | "
      "migration alone us (checksums computed / known) | loop alone us | "
      "slowdown, checksums computed | slowdown, known |\n"
      "|---|---|---|---|---|---|---|\n");
  for (bool high : {false, true}) {
    for (int blocks : {0, std::max(1, sms / 4), 4}) {
      MigrationBesideGemm({blocks, high});
    }
  }
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
  // The counting kernel's grid (DeviceHeatRecorderOptions::max_blocks).
  const int sms = prop.multiProcessorCount;
  std::vector<std::pair<int, float>> by_blocks;
  for (int blocks : {sms / 2, sms, 2 * sms, 4 * sms, 8 * sms}) {
    if (blocks < 1) continue;
    eplb::cuda::DeviceHeatRecorderOptions ob = o;
    ob.max_blocks = blocks;
    auto host_b = eplb::HeatRecorder::Create(ho);
    auto rec_b = eplb::cuda::DeviceHeatRecorder::Create(ob, host_b->get());
    if (!rec_b.ok()) {
      std::fprintf(stderr, "%s\n", rec_b.status().ToString().c_str());
      return 1;
    }
    by_blocks.emplace_back(blocks, TimeUs(stream, reps, [&] {
                             (*rec_b)->RecordTopk(0, d_ids, n, d_log2phy,
                                                  stream);
                           }));
  }
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
  // The whole layer-step on the device: the summed counts -> quotas
  // (DeviceQuotaSolver) -> the mapper's table (SetQuotasOnDevice) -> each
  // id's slot (Map), nothing through the host.
  auto solver =
      eplb::cuda::DeviceQuotaSolver::Create(experts, ranks, slots / ranks);
  if (!solver.ok()) {
    std::fprintf(stderr, "%s\n", solver.status().ToString().c_str());
    return 1;
  }
  int64_t *d_counts = nullptr, *d_quota = nullptr, *d_max = nullptr;
  CHECK_CUDA(cudaMalloc(&d_counts, experts * sizeof(int64_t)));
  CHECK_CUDA(cudaMalloc(&d_quota, slots * sizeof(int64_t)));
  CHECK_CUDA(cudaMalloc(&d_max, sizeof(int64_t)));
  CHECK_CUDA(cudaMemcpy(d_counts, counts.data(), experts * sizeof(int64_t),
                        cudaMemcpyHostToDevice));
  if (!(*solver)->SetPlacement(placement.layer(0), stream).ok()) return 1;
  const float solve_us = TimeUs(stream, reps, [&] {
    (void)(*solver)->Compute(d_counts, d_quota, d_max, stream);
  });
  const float pipeline_us = TimeUs(stream, reps, [&] {
    (void)(*solver)->Compute(d_counts, d_quota, nullptr, stream);
    (void)(*mapper)->SetQuotasOnDevice(routing, d_quota, stream);
    (void)(*mapper)->Map(d_ids, n, nullptr, d_out, stream);
  });
  CHECK_CUDA(cudaStreamSynchronize(stream));
  std::vector<int64_t> got_quota(slots);
  CHECK_CUDA(cudaMemcpy(got_quota.data(), d_quota, slots * sizeof(int64_t),
                        cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(got.data(), d_out, n * sizeof(int32_t),
                        cudaMemcpyDeviceToHost));
  const bool same_quotas = got_quota == quota;
  const bool same_pipeline = got == want;
  cudaFree(d_counts);
  cudaFree(d_quota);
  cudaFree(d_max);
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
  for (const auto& [blocks, us] : by_blocks) {
    std::printf("| RecordTopk with max_blocks = %d%s | %.2f |\n", blocks,
                blocks == 2 * sms ? " (the default: 2 x SMs)" : "", us);
  }
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
  std::printf("| DeviceQuotaSolver::Compute (one layer-step) | %.2f |\n",
              solve_us);
  std::printf(
      "| Compute + SetQuotasOnDevice + Map (the layer-step on the device) "
      "| %.2f |\n",
      pipeline_us);
  std::printf("device mapping equals the host's: %s\n", same ? "yes" : "NO");
  std::printf("device quotas equal the host's: %s\n",
              same_quotas ? "yes" : "NO");
  std::printf("device pipeline's mapping equals the host's: %s\n",
              same_pipeline ? "yes" : "NO");
  std::printf("status: %s, merged steps: %lld\n",
              (*rec)->status().ToString().c_str(),
              static_cast<long long>((*rec)->merged_steps()));
  cudaFree(d_temp);
  cudaFree(d_hist);
  cudaFree(d_ids);
  cudaFree(d_log2phy);
  cudaStreamDestroy(stream);
  MigrationBesideGemmTable(prop.multiProcessorCount);
  return 0;
}
