// Clock: the source of time, passed in so tests and the replay can inject it
// (leveldb's Env habit). SystemClock is thread-safe; ManualClock is
// thread-safe (atomic).
#ifndef EPLB_CLOCK_H_
#define EPLB_CLOCK_H_

#include <atomic>
#include <cstdint>

namespace eplb {

class Clock {
 public:
  virtual ~Clock() = default;
  // Monotonic nanoseconds since an arbitrary origin.
  virtual int64_t NowNanos() const = 0;
  virtual void SleepForNanos(int64_t nanos) = 0;
};

// steady_clock; a process-wide instance that is never destroyed.
Clock* SystemClock();

// Time moves only when told to: SleepForNanos and Advance add to it.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(int64_t start_nanos = 0) : now_(start_nanos) {}
  int64_t NowNanos() const override {
    return now_.load(std::memory_order_acquire);
  }
  void SleepForNanos(int64_t nanos) override { Advance(nanos); }
  void Advance(int64_t nanos) {
    now_.fetch_add(nanos, std::memory_order_acq_rel);
  }

 private:
  std::atomic<int64_t> now_;
};

}  // namespace eplb

#endif  // EPLB_CLOCK_H_
