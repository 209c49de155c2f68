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
  explicit InProcessBatch(int remaining) : remaining_(remaining) {}
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
  // Called by a copy thread when one transfer ends.
  void Finish(const Status& s) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!s.ok() && status_.ok()) status_ = s;
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
};

struct Job {
  Transfer transfer;
  BufferResolver* buffers;
  std::shared_ptr<InProcessBatch> batch;
};

// Handle given to the caller; keeps the batch alive while copies run.
class BatchHandle final : public TransferBatch {
 public:
  explicit BatchHandle(std::shared_ptr<InProcessBatch> b) : b_(std::move(b)) {}
  bool Done() const override { return b_->Done(); }
  void Wait() override { b_->Wait(); }
  Status result() const override { return b_->result(); }

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
      std::span<const Transfer> transfers, BufferResolver* buffers) override {
    auto batch =
        std::make_shared<InProcessBatch>(static_cast<int>(transfers.size()));
    if (!transfers.empty()) {
      std::lock_guard<std::mutex> lock(mu_);
      for (const Transfer& t : transfers)
        queue_.push_back(Job{t, buffers, batch});
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
      std::span<const std::byte> src =
          job.buffers->Slot(t.src_rank, t.layer, t.src_slot);
      std::span<std::byte> dst = job.buffers->Staging(t.dst_rank, t.staging);
      if (src.size() != dst.size() || src.empty()) {
        job.batch->Finish(InternalError(
            "transfer of expert " + std::to_string(t.expert) + " to rank " +
            std::to_string(t.dst_rank) + ": buffer sizes differ"));
        continue;
      }
      std::memcpy(dst.data(), src.data(), src.size());
      job.batch->Finish(Status::Ok());
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
              std::vector<Transfer> corrupt, BufferResolver* buffers,
              Status injected, int64_t ready_at)
      : inner_(std::move(inner)),
        corrupt_(std::move(corrupt)),
        buffers_(buffers),
        injected_(std::move(injected)),
        ready_at_(ready_at) {}
  bool Done() const override {
    if (!inner_->Done() || SystemClock()->NowNanos() < ready_at_) return false;
    std::call_once(corrupted_, [this] {
      for (const Transfer& t : corrupt_) {
        std::span<std::byte> dst = buffers_->Staging(t.dst_rank, t.staging);
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

 private:
  std::unique_ptr<TransferBatch> inner_;
  std::vector<Transfer> corrupt_;
  BufferResolver* buffers_;
  Status injected_;
  int64_t ready_at_;
  mutable std::once_flag corrupted_;
};

class FaultyTransport final : public Transport {
 public:
  FaultyTransport(std::unique_ptr<Transport> inner, const FaultOptions& f)
      : inner_(std::move(inner)), faults_(f) {}

  StatusOr<std::unique_ptr<TransferBatch>> Start(
      std::span<const Transfer> transfers, BufferResolver* buffers) override {
    std::vector<Transfer> pass, corrupt;
    Status injected;
    for (const Transfer& t : transfers) {
      ++count_;
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
        corrupt.push_back(t);
      }
      pass.push_back(t);
    }
    EPLB_ASSIGN_OR_RETURN(std::unique_ptr<TransferBatch> inner,
                          inner_->Start(pass, buffers));
    return std::unique_ptr<TransferBatch>(std::make_unique<FaultyBatch>(
        std::move(inner), std::move(corrupt), buffers, injected,
        SystemClock()->NowNanos() + faults_.delay_nanos));
  }

 private:
  std::unique_ptr<Transport> inner_;
  FaultOptions faults_;
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
