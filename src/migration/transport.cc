// The in-process transport (a small pool of copy threads) and the
// fault-injecting wrapper.
#include "eplb/transport.h"

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "eplb/clock.h"

namespace eplb {
namespace {

// Shared between the serving thread (Done / result) and the copy threads.
class InProcessBatch final : public TransferBatch {
 public:
  explicit InProcessBatch(int remaining)
      : remaining_(remaining),
        checksums_(static_cast<size_t>(remaining), 0),
        landed_(static_cast<size_t>(remaining), 0) {}
  bool Done() const override {
    return remaining_.load(std::memory_order_acquire) == 0;
  }
  void Wait() override {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return Done(); });
  }
  Status result() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return status_;
  }
  uint64_t source_checksum(size_t i) const override {
    std::lock_guard<std::mutex> lock(mu_);
    return checksums_[i];
  }
  uint64_t landed_checksum(size_t i) const override {
    std::lock_guard<std::mutex> lock(mu_);
    return landed_[i];
  }
  // Called by a copy thread when transfer `i` ends.
  void Finish(size_t i, const Status& s, uint64_t checksum, uint64_t landed) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!s.ok() && status_.ok()) status_ = s;
      checksums_[i] = checksum;
      landed_[i] = landed;
    }
    if (remaining_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lock(mu_);
      cv_.notify_all();
    }
  }

 private:
  std::atomic<int> remaining_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  Status status_;
  std::vector<uint64_t> checksums_;
  std::vector<uint64_t> landed_;
};

struct Job {
  Transfer transfer;
  size_t index = 0;  // In the batch.
  ExpertWeights* weights = nullptr;
  std::shared_ptr<InProcessBatch> batch;
};

// Handle given to the caller; keeps the batch alive while copies run.
class BatchHandle final : public TransferBatch {
 public:
  explicit BatchHandle(std::shared_ptr<InProcessBatch> b) : b_(std::move(b)) {}
  bool Done() const override { return b_->Done(); }
  void Wait() override { b_->Wait(); }
  Status result() const override { return b_->result(); }
  uint64_t source_checksum(size_t i) const override {
    return b_->source_checksum(i);
  }
  uint64_t landed_checksum(size_t i) const override {
    return b_->landed_checksum(i);
  }

 private:
  std::shared_ptr<InProcessBatch> b_;
};

class InProcessTransport final : public Transport {
 public:
  explicit InProcessTransport(int num_threads) {
    for (int i = 0; i < num_threads; ++i)
      threads_.emplace_back([this] { Run(); });
  }
  ~InProcessTransport() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

  StatusOr<std::unique_ptr<TransferBatch>> Start(
      std::span<const Transfer> transfers, ExpertWeights* weights) override {
    for (const Transfer& t : transfers) {
      if (!weights->Hosts(t.src_rank) || !weights->Hosts(t.dst_rank)) {
        return InvalidArgumentError(
            "in-process transport: the transfer of expert " +
            std::to_string(t.expert) + " from rank " +
            std::to_string(t.src_rank) + " to rank " +
            std::to_string(t.dst_rank) +
            " leaves this process (an MPI transport moves it)");
      }
    }
    auto batch =
        std::make_shared<InProcessBatch>(static_cast<int>(transfers.size()));
    if (!transfers.empty()) {
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t i = 0; i < transfers.size(); ++i)
        queue_.push_back(Job{transfers[i], i, weights, batch});
    }
    cv_.notify_all();
    return std::unique_ptr<TransferBatch>(std::make_unique<BatchHandle>(batch));
  }

 private:
  void Run() {
    for (;;) {
      Job job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;  // Stopping.
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      const Transfer& t = job.transfer;
      ExpertWeights& w = *job.weights;
      // The sender's checksum: known, or read from the source.
      const uint64_t checksum =
          t.source_checksum != 0
              ? t.source_checksum
              : SlotChecksum(w, t.src_rank, t.layer, t.src_slot);
      Status status;
      for (int x = 0; x < w.num_tensors() && status.ok(); ++x) {
        std::span<const std::byte> src =
            w.Slot(t.src_rank, t.layer, t.src_slot, x);
        std::span<std::byte> dst = w.Staging(t.dst_rank, t.staging, x);
        if (src.size() != dst.size() || src.empty()) {
          status = InternalError(
              "transfer of expert " + std::to_string(t.expert) + " to rank " +
              std::to_string(t.dst_rank) + ": buffer sizes differ");
          break;
        }
        std::memcpy(dst.data(), src.data(), src.size());
      }
      // What landed, read back while it is still in cache.
      const uint64_t landed =
          status.ok() ? StagingChecksum(w, t.dst_rank, t.staging) : 0;
      job.batch->Finish(job.index, status, status.ok() ? checksum : 0, landed);
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

class FaultyBatch final : public TransferBatch {
 public:
  FaultyBatch(std::unique_ptr<TransferBatch> inner,
              std::vector<Transfer> corrupt, std::vector<int64_t> inner_index,
              std::vector<int64_t> corrupted_index, bool forge,
              ExpertWeights* weights, Status injected, Clock* clock,
              int64_t ready_at)
      : inner_(std::move(inner)),
        corrupt_(std::move(corrupt)),
        inner_index_(std::move(inner_index)),
        corrupted_index_(std::move(corrupted_index)),
        forge_(forge),
        weights_(weights),
        injected_(std::move(injected)),
        clock_(clock),
        ready_at_(ready_at) {}
  bool Done() const override {
    if (!inner_->Done() || clock_->NowNanos() < ready_at_) return false;
    std::call_once(corrupted_, [this] {
      for (const Transfer& t : corrupt_) {
        std::span<std::byte> dst = weights_->Staging(t.dst_rank, t.staging, 0);
        if (!dst.empty()) dst[dst.size() / 2] ^= std::byte{0x5a};
      }
    });
    return true;
  }
  void Wait() override {
    inner_->Wait();
    while (!Done()) std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  Status result() const override {
    Status s = inner_->result();
    return s.ok() ? injected_ : s;
  }
  // A corrupted transfer's bytes changed after they landed, as if in
  // transit: the receiver reads back what is there now; with forge, the
  // sender's checksum is made to match it.
  uint64_t source_checksum(size_t i) const override {
    if (inner_index_[i] < 0) return 0;
    if (forge_ && corrupted_index_[i] >= 0) return Reread(i);
    return inner_->source_checksum(static_cast<size_t>(inner_index_[i]));
  }
  uint64_t landed_checksum(size_t i) const override {
    if (inner_index_[i] < 0) return 0;
    if (corrupted_index_[i] >= 0) return Reread(i);
    return inner_->landed_checksum(static_cast<size_t>(inner_index_[i]));
  }

 private:
  uint64_t Reread(size_t i) const {
    const Transfer& t = corrupt_[static_cast<size_t>(corrupted_index_[i])];
    return StagingChecksum(*weights_, t.dst_rank, t.staging);
  }

  std::unique_ptr<TransferBatch> inner_;
  std::vector<Transfer> corrupt_;
  std::vector<int64_t> inner_index_;      // Outer index -> inner; -1: failed.
  std::vector<int64_t> corrupted_index_;  // Outer -> corrupt_; -1: intact.
  bool forge_;
  ExpertWeights* weights_;
  Status injected_;
  Clock* clock_;
  int64_t ready_at_;
  mutable std::once_flag corrupted_;
};

class FaultyTransport final : public Transport {
 public:
  FaultyTransport(std::unique_ptr<Transport> inner, const FaultOptions& f)
      : inner_(std::move(inner)),
        faults_(f),
        clock_(f.clock != nullptr ? f.clock : SystemClock()) {}

  StatusOr<std::unique_ptr<TransferBatch>> Start(
      std::span<const Transfer> transfers, ExpertWeights* weights) override {
    std::vector<Transfer> pass, corrupt;
    std::vector<int64_t> inner_index, corrupted_index;
    Status injected;
    for (const Transfer& t : transfers) {
      ++count_;
      inner_index.push_back(-1);
      corrupted_index.push_back(-1);
      if (faults_.fail_every > 0 && count_ % faults_.fail_every == 0) {
        if (injected.ok()) {
          injected =
              UnavailableError("injected failure of the transfer of expert " +
                               std::to_string(t.expert) + " to rank " +
                               std::to_string(t.dst_rank));
        }
        continue;
      }
      if (faults_.corrupt_every > 0 && count_ % faults_.corrupt_every == 0) {
        corrupted_index.back() = static_cast<int64_t>(corrupt.size());
        corrupt.push_back(t);
      }
      inner_index.back() = static_cast<int64_t>(pass.size());
      pass.push_back(t);
    }
    EPLB_ASSIGN_OR_RETURN(std::unique_ptr<TransferBatch> inner,
                          inner_->Start(pass, weights));
    return std::unique_ptr<TransferBatch>(std::make_unique<FaultyBatch>(
        std::move(inner), std::move(corrupt), std::move(inner_index),
        std::move(corrupted_index), faults_.forge_checksums, weights, injected,
        clock_, clock_->NowNanos() + faults_.delay_nanos));
  }

 private:
  std::unique_ptr<Transport> inner_;
  FaultOptions faults_;
  Clock* clock_;
  int64_t count_ = 0;
};

class SteadyClock final : public Clock {
 public:
  int64_t NowNanos() const override {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  void SleepForNanos(int64_t nanos) override {
    std::this_thread::sleep_for(std::chrono::nanoseconds(nanos));
  }
};

}  // namespace

Clock* SystemClock() {
  static SteadyClock* const clock = new SteadyClock();
  return clock;
}

StatusOr<std::unique_ptr<Transport>> CreateInProcessTransport(
    const InProcessTransportOptions& options) {
  if (options.num_threads < 1 || options.num_threads > 64) {
    return InvalidArgumentError("in-process transport num_threads = " +
                                std::to_string(options.num_threads) +
                                ": must be in [1, 64]");
  }
  return std::unique_ptr<Transport>(
      std::make_unique<InProcessTransport>(options.num_threads));
}

std::unique_ptr<Transport> WrapWithFaults(std::unique_ptr<Transport> inner,
                                          const FaultOptions& faults) {
  return std::make_unique<FaultyTransport>(std::move(inner), faults);
}

}  // namespace eplb
