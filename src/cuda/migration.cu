#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/cuda_error.h"
#include "eplb/cuda/checksum.h"
#include "eplb/cuda/migration.h"
#include "eplb/cuda/recorder.h"
#include "eplb/weights.h"

namespace eplb::cuda {
namespace {

std::string CudaMessage(const char* what, cudaError_t error) {
  return internal::CudaMessage("DeviceMigration", what, error);
}

}  // namespace

struct DeviceMigration::Impl {
  int max_copies = 0;
  size_t max_copy_bytes = 0;
  size_t max_table_entries = 0;
  int checksum_blocks = 0;  // DeviceChecksum's max_blocks.
  cudaStream_t side = nullptr;
  cudaEvent_t finished = nullptr;   // The batch's last operation.
  cudaEvent_t committed = nullptr;  // The last commit's table upload.
  void* scratch = nullptr;          // DeviceChecksum's, reused in order.
  uint64_t* device_sums = nullptr;  // [2 * max_copies]: source, landed.
  uint64_t* host_sums = nullptr;    // Pinned copy of device_sums.
  int32_t* host_table = nullptr;    // Pinned [max_table_entries].
  std::vector<uint64_t> known;      // [max_copies] given sources (0: none).
  size_t num_copies = 0;
  bool started = false;
  bool done = false;
  bool commit_pending = false;

  ~Impl() {
    if (side != nullptr) cudaStreamSynchronize(side);
    if (committed != nullptr) cudaEventSynchronize(committed);
    if (finished != nullptr) cudaEventDestroy(finished);
    if (committed != nullptr) cudaEventDestroy(committed);
    if (side != nullptr) cudaStreamDestroy(side);
    if (scratch != nullptr) cudaFree(scratch);
    if (device_sums != nullptr) cudaFree(device_sums);
    if (host_sums != nullptr) cudaFreeHost(host_sums);
    if (host_table != nullptr) cudaFreeHost(host_table);
  }

  uint64_t Source(size_t i) const {
    return known[i] != 0 ? known[i] : host_sums[2 * i];
  }
  uint64_t Landed(size_t i) const { return host_sums[2 * i + 1]; }
};

DeviceMigration::DeviceMigration(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}

DeviceMigration::~DeviceMigration() = default;

StatusOr<std::unique_ptr<DeviceMigration>> DeviceMigration::Create(
    int max_copies, size_t max_copy_bytes, size_t max_table_entries,
    int checksum_blocks) {
  if (max_copies < 1 || max_copies > (1 << 20)) {
    return InvalidArgumentError(
        "DeviceMigration: max_copies = " + std::to_string(max_copies) +
        ": must be in [1, 2^20]");
  }
  if (max_copy_bytes < 1 || max_copy_bytes > (size_t{1} << 40)) {
    return InvalidArgumentError(
        "DeviceMigration: max_copy_bytes = " + std::to_string(max_copy_bytes) +
        ": must be in [1, 2^40]");
  }
  if (max_table_entries < 1 || max_table_entries > (size_t{1} << 30)) {
    return InvalidArgumentError("DeviceMigration: max_table_entries = " +
                                std::to_string(max_table_entries) +
                                ": must be in [1, 2^30]");
  }
  if (checksum_blocks < 0 || checksum_blocks > 65535) {
    return InvalidArgumentError(
        "DeviceMigration: checksum_blocks = " +
        std::to_string(checksum_blocks) +
        ": must be in [0, 65535] (0: as many as the bytes need)");
  }
  if (!DeviceAvailable()) {
    return UnavailableError("DeviceMigration: no CUDA device");
  }
  auto impl = std::make_unique<Impl>();
  impl->max_copies = max_copies;
  impl->max_copy_bytes = max_copy_bytes;
  impl->max_table_entries = max_table_entries;
  impl->checksum_blocks = checksum_blocks;
  impl->known.assign(static_cast<size_t>(max_copies), 0);
  const size_t sums = 2 * static_cast<size_t>(max_copies) * sizeof(uint64_t);
  int lowest = 0;
  int greatest = 0;
  cudaError_t e = cudaDeviceGetStreamPriorityRange(&lowest, &greatest);
  if (e == cudaSuccess) {
    e = cudaStreamCreateWithPriority(&impl->side, cudaStreamNonBlocking,
                                     lowest);
  }
  if (e == cudaSuccess) {
    e = cudaEventCreateWithFlags(&impl->finished, cudaEventDisableTiming);
  }
  if (e == cudaSuccess) {
    e = cudaEventCreateWithFlags(&impl->committed, cudaEventDisableTiming);
  }
  if (e == cudaSuccess) {
    e = cudaMalloc(&impl->scratch, DeviceChecksumScratchBytes(max_copy_bytes));
  }
  if (e == cudaSuccess) {
    e = cudaMalloc(reinterpret_cast<void**>(&impl->device_sums), sums);
  }
  if (e == cudaSuccess) {
    e = cudaHostAlloc(reinterpret_cast<void**>(&impl->host_sums), sums,
                      cudaHostAllocDefault);
  }
  if (e == cudaSuccess) {
    e = cudaHostAlloc(reinterpret_cast<void**>(&impl->host_table),
                      max_table_entries * sizeof(int32_t),
                      cudaHostAllocDefault);
  }
  if (e != cudaSuccess) return InternalError(CudaMessage("allocation", e));
  return std::unique_ptr<DeviceMigration>(new DeviceMigration(std::move(impl)));
}

Status DeviceMigration::Start(std::span<const DeviceCopy> copies,
                              cudaEvent_t after) {
  Impl& s = *impl_;
  if (s.started && !s.done) {
    return FailedPreconditionError(
        "DeviceMigration: the previous batch has not been found Done");
  }
  if (copies.size() > static_cast<size_t>(s.max_copies)) {
    return InvalidArgumentError(
        "DeviceMigration: " + std::to_string(copies.size()) +
        " copies: at most " + std::to_string(s.max_copies));
  }
  for (size_t i = 0; i < copies.size(); ++i) {
    const DeviceCopy& c = copies[i];
    if (c.src == nullptr || c.dst == nullptr) {
      return InvalidArgumentError("DeviceMigration: copy " + std::to_string(i) +
                                  " has a null pointer");
    }
    if (c.bytes > s.max_copy_bytes) {
      return InvalidArgumentError("DeviceMigration: copy " + std::to_string(i) +
                                  " of " + std::to_string(c.bytes) +
                                  " bytes: at most " +
                                  std::to_string(s.max_copy_bytes));
    }
  }
  // A failure part way leaves no batch: what was enqueued runs out first.
  s.started = false;
  auto fail = [&s](Status st) {
    cudaStreamSynchronize(s.side);
    return st;
  };
  cudaError_t e = cudaSuccess;
  if (after != nullptr) e = cudaStreamWaitEvent(s.side, after, 0);
  // Sources first, then the copies, then what landed: each checksum reads
  // its buffer after every earlier operation on the side stream.
  for (size_t i = 0; i < copies.size() && e == cudaSuccess; ++i) {
    s.known[i] = copies[i].source_checksum;
    if (s.known[i] != 0) continue;
    const Status st = DeviceChecksum(copies[i].src, copies[i].bytes,
                                     kChecksumSeed, s.device_sums + 2 * i,
                                     s.scratch, s.side, s.checksum_blocks);
    if (!st.ok()) return fail(st);
  }
  for (size_t i = 0; i < copies.size() && e == cudaSuccess; ++i) {
    e = cudaMemcpyAsync(copies[i].dst, copies[i].src, copies[i].bytes,
                        cudaMemcpyDefault, s.side);
  }
  for (size_t i = 0; i < copies.size() && e == cudaSuccess; ++i) {
    const Status st = DeviceChecksum(copies[i].dst, copies[i].bytes,
                                     kChecksumSeed, s.device_sums + 2 * i + 1,
                                     s.scratch, s.side, s.checksum_blocks);
    if (!st.ok()) return fail(st);
  }
  if (e == cudaSuccess && !copies.empty()) {
    e = cudaMemcpyAsync(s.host_sums, s.device_sums,
                        2 * copies.size() * sizeof(uint64_t),
                        cudaMemcpyDeviceToHost, s.side);
  }
  if (e == cudaSuccess) e = cudaEventRecord(s.finished, s.side);
  if (e != cudaSuccess) return fail(InternalError(CudaMessage("start", e)));
  s.num_copies = copies.size();
  s.started = true;
  s.done = false;
  return Status::Ok();
}

bool DeviceMigration::Done() {
  Impl& s = *impl_;
  if (!s.started) return false;
  if (!s.done) s.done = cudaEventQuery(s.finished) == cudaSuccess;
  return s.done;
}

bool DeviceMigration::Mismatched(size_t i) const {
  const Impl& s = *impl_;
  return !s.done || i >= s.num_copies || s.Source(i) != s.Landed(i);
}

bool DeviceMigration::Verified() const {
  const Impl& s = *impl_;
  if (!s.done) return false;
  for (size_t i = 0; i < s.num_copies; ++i) {
    if (Mismatched(i)) return false;
  }
  return true;
}

uint64_t DeviceMigration::source_checksum(size_t i) const {
  const Impl& s = *impl_;
  return s.done && i < s.num_copies ? s.Source(i) : 0;
}

uint64_t DeviceMigration::landed_checksum(size_t i) const {
  const Impl& s = *impl_;
  return s.done && i < s.num_copies ? s.Landed(i) : 0;
}

Status DeviceMigration::Commit(std::span<const SlotWrite> writes,
                               std::span<const int32_t> log2phy,
                               int32_t* device_log2phy, cudaStream_t compute) {
  Impl& s = *impl_;
  if (!s.done || !Verified()) {
    return FailedPreconditionError(
        "DeviceMigration: commit before the batch is done and verified");
  }
  if (log2phy.size() > s.max_table_entries) {
    return InvalidArgumentError(
        "DeviceMigration: routing table of " + std::to_string(log2phy.size()) +
        " entries: at most " + std::to_string(s.max_table_entries));
  }
  if (!log2phy.empty() && device_log2phy == nullptr) {
    return InvalidArgumentError("DeviceMigration: null device routing table");
  }
  for (size_t i = 0; i < writes.size(); ++i) {
    if (writes[i].staging == nullptr || writes[i].slot == nullptr) {
      return InvalidArgumentError("DeviceMigration: slot write " +
                                  std::to_string(i) + " has a null pointer");
    }
  }
  cudaError_t e = cudaSuccess;
  if (s.commit_pending) e = cudaEventSynchronize(s.committed);
  for (size_t i = 0; i < writes.size() && e == cudaSuccess; ++i) {
    e = cudaMemcpyAsync(writes[i].slot, writes[i].staging, writes[i].bytes,
                        cudaMemcpyDeviceToDevice, compute);
  }
  if (e == cudaSuccess && !log2phy.empty()) {
    std::memcpy(s.host_table, log2phy.data(), log2phy.size_bytes());
    e = cudaMemcpyAsync(device_log2phy, s.host_table, log2phy.size_bytes(),
                        cudaMemcpyHostToDevice, compute);
  }
  if (e == cudaSuccess) e = cudaEventRecord(s.committed, compute);
  if (e != cudaSuccess) return InternalError(CudaMessage("commit", e));
  s.commit_pending = true;
  return Status::Ok();
}

cudaStream_t DeviceMigration::side_stream() const { return impl_->side; }

}  // namespace eplb::cuda
