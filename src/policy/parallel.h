// Planning on the caller's threads: layers are independent, so workers take
// them in order from a shared counter. Private to the library.
#ifndef EPLB_SRC_POLICY_PARALLEL_H_
#define EPLB_SRC_POLICY_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

namespace eplb::policy {

// Runs fn(i, state) for every i in [0, n) on `threads` workers (the calling
// thread is one of them), each with a default-constructed State of its own
// (scratch it reuses across indices). fn must write only index i's outputs,
// so the result is the same for any thread count.
template <typename State, typename Fn>
void ForEachIndex(int n, int threads, Fn fn) {
  const int workers = std::clamp(threads, 1, std::max(1, n));
  std::atomic<int> next{0};
  auto work = [&] {
    State state;
    for (int i = next++; i < n; i = next++) fn(i, state);
  };
  std::vector<std::thread> pool;
  for (int w = 1; w < workers; ++w) pool.emplace_back(work);
  work();
  for (std::thread& th : pool) th.join();
}

// The same without per-worker state: fn(i).
template <typename Fn>
void ForEachIndex(int n, int threads, Fn fn) {
  struct None {};
  ForEachIndex<None>(n, threads, [&](int i, None&) { fn(i); });
}

}  // namespace eplb::policy

#endif  // EPLB_SRC_POLICY_PARALLEL_H_
