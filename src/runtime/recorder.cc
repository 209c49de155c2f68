// HeatRecorder: per-step counting on the serving thread, published
// to readers through a seqlock.
//
// Writer (the serving thread) state is private and plain: the step's per-slot
// counts [L][S] and, for large calls, kLanes interleaved per-expert counter
// arrays. Interleaving matters because routed ids are skewed: with one array,
// consecutive tokens of a hot expert increment the same counter and every add
// waits for the previous store (store-to-load forwarding); with kLanes arrays
// consecutive ids hit different addresses. Counting per logical expert (not
// per slot) also saves the log2phy lookup per id: a call has one log2phy row,
// so the expert counts are mapped to slots once, when the call ends. Ids are
// not compared one by one either: they index the lanes through a mask (P - 1,
// P = bit_ceil(E); columns [E, P] count as dropped), and the OR of all ids
// shows afterwards whether any id had bits outside the mask; such a block
// (rare: a bad id is a caller bug) is undone and counted again with a clamp.
//
// Published state (window, ring, counters) is std::atomic<int64_t> written by
// EndStep() under a sequence counter: odd while a step is being published.
// Snapshot() copies it and retries while the sequence is odd or changed, so
// it never returns a torn step and the writer never waits. The ordering is
// the seqlock pattern of H.-J. Boehm, "Can seqlocks get along with programming
// language memory models?" (MSPC 2012): relaxed data accesses between a
// release fence after the odd store (writer) and an acquire fence before the
// second sequence load (reader). ThreadSanitizer does not model stand-alone
// fences (GCC rejects them under -Wtsan), so sanitized builds put the ordering
// on the data accesses themselves (release stores, acquire loads), which is
// equally correct and costs nothing on x86.
#include "eplb/recorder.h"

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstring>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>

namespace eplb {
namespace {

#if defined(__SANITIZE_THREAD__)
#define EPLB_RECORDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define EPLB_RECORDER_TSAN 1
#endif
#endif

#if defined(EPLB_RECORDER_TSAN)
constexpr std::memory_order kDataStore = std::memory_order_release;
constexpr std::memory_order kDataLoad = std::memory_order_acquire;
inline void WriterFence() {}
inline void ReaderFence() {}
#else
constexpr std::memory_order kDataStore = std::memory_order_relaxed;
constexpr std::memory_order kDataLoad = std::memory_order_relaxed;
inline void WriterFence() {
  std::atomic_thread_fence(std::memory_order_release);
}
inline void ReaderFence() {
  std::atomic_thread_fence(std::memory_order_acquire);
}
#endif

static_assert(std::atomic<int64_t>::is_always_lock_free);
static_assert(std::atomic<uint64_t>::is_always_lock_free);

// Interleaved counter arrays of the large-call path.
constexpr int kLanes = 4;
// Ids counted into uint32 lanes before they are folded: each lane then holds
// at most kMaxIdsPerFold / kLanes counts, far below 2^32.
constexpr size_t kMaxIdsPerFold = size_t{1} << 30;
// Bound on the published counters (ring and window), 32 GiB of int64.
constexpr int64_t kMaxCounters = int64_t{1} << 32;
// Bound on E, far above any MoE model: the lanes take 16 * bit_ceil(E) bytes.
constexpr int kMaxExperts = 1 << 20;

// Ids per block of the large-call path: a block with a bad id is counted
// again (undone, then clamped) while it is still in L1.
constexpr size_t kBlockIds = 4096;

template <bool kUndo>
inline void Bump(uint32_t& counter) {
  if constexpr (kUndo) {
    --counter;
  } else {
    ++counter;
  }
}

// The large-call fast path: adds one (kUndo: subtracts one) per id at
// lanes[i % kLanes][id & mask], with no compare per id. Returns true when
// every id lies within `mask` (in [0, P), P = mask + 1 >= E), i.e. each was
// counted at its own column; ids in [E, P) land in columns the fold drops.
// Otherwise some id was counted at a wrong column, and the caller undoes the
// block (same call with kUndo) and counts it with CountClamped.
//
// int32 ids are read in pairs with one 64-bit load: the loop is bound by the
// one store per id (about one per cycle on current x86 cores), and the pair
// loads leave more load slots to the counter read-modify-writes.
template <bool kUndo>
bool CountMasked(const int32_t* ids, size_t n, uint32_t mask,
                 uint32_t* const* lanes) {
  uint32_t* lane[kLanes];
  for (int k = 0; k < kLanes; ++k) lane[k] = lanes[k];
  // OR of all ids, one per lane (no chain of dependent ORs): bits outside
  // the mask flag a bad id.
  uint64_t seen_by_lane[kLanes] = {};
  const uint64_t pair_mask = uint64_t{mask} << 32 | mask;
  size_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      uint64_t pair;
      std::memcpy(&pair, ids + i + 2 * k, sizeof(pair));
      seen_by_lane[k] |= pair;
      pair &= pair_mask;  // One AND masks both ids.
      Bump<kUndo>(lane[k][static_cast<uint32_t>(pair)]);
      Bump<kUndo>(lane[(k + kLanes / 2) % kLanes][pair >> 32]);
    }
  }
  uint64_t seen = 0;
  for (uint64_t s : seen_by_lane) seen |= s;
  for (; i < n; ++i) {
    const auto u = static_cast<uint32_t>(ids[i]);
    seen |= u;
    Bump<kUndo>(lane[0][u & mask]);
  }
  return (seen & ~pair_mask) == 0;
}

template <bool kUndo>
bool CountMasked(const int64_t* ids, size_t n, uint32_t mask,
                 uint32_t* const* lanes) {
  uint32_t* lane[kLanes];
  for (int k = 0; k < kLanes; ++k) lane[k] = lanes[k];
  uint64_t seen = 0;
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      const auto u = static_cast<uint64_t>(ids[i + k]);
      seen |= u;
      Bump<kUndo>(lane[k][u & mask]);
    }
  }
  for (; i < n; ++i) {
    const auto u = static_cast<uint64_t>(ids[i]);
    seen |= u;
    Bump<kUndo>(lane[0][u & mask]);
  }
  return (seen & ~uint64_t{mask}) == 0;
}

// The slow path of a block with a bad id: an id outside [0, E) is counted at
// column E (dropped by the fold). A negative id wraps to a large unsigned
// value, so one unsigned compare checks both ends.
template <typename Id>
void CountClamped(const Id* ids, size_t n, std::make_unsigned_t<Id> e,
                  uint32_t* const* lanes) {
  using U = std::make_unsigned_t<Id>;
  for (size_t i = 0; i < n; ++i) {
    const auto u = static_cast<U>(ids[i]);
    ++lanes[i % kLanes][u < e ? u : e];
  }
}

Status CheckAtLeast(const char* field, int value, int min) {
  if (value >= min) return Status::Ok();
  return InvalidArgumentError("HeatRecorderOptions." + std::string(field) +
                              " must be >= " + std::to_string(min) + ", got " +
                              std::to_string(value));
}

}  // namespace

struct HeatRecorder::Impl {
  explicit Impl(const HeatRecorderOptions& options)
      : num_layers(options.num_layers),
        num_experts(options.num_experts),
        num_slots(options.num_slots),
        ring_steps(options.ring_steps),
        stage(options.stage),
        max_num_reqs(options.max_num_reqs),
        cells(static_cast<size_t>(num_layers) * num_slots),
        id_mask(std::bit_ceil(static_cast<uint32_t>(num_experts)) - 1),
        lane_stride(size_t{id_mask} + 2),
        // Below this many ids a call counts straight into the step row: the
        // lane fold costs about kLanes * (E + 1) operations.
        min_ids_for_lanes(2 * lane_stride),
        step(cells, 0),
        lanes(kLanes * lane_stride, 0),
        totals(lane_stride, 0),
        window(cells),
        ring(static_cast<size_t>(ring_steps) * cells),
        remap_tokens(num_experts),
        remap_slots(num_experts),
        remap_given(num_experts) {}

  // RemapLayer on one row [S] (load and store through `get` and `set`).
  template <typename Get, typename Set>
  void RemapRow(std::span<const int32_t> from, std::span<const int32_t> to,
                Get get, Set set);

  template <typename Id>
  void CountTopk(int layer, std::span<const Id> ids,
                 std::span<const int32_t> log2phy);
  bool StepCounts(int64_t num_tokens) const;
  void Publish(bool clear, bool add_step);

  const int num_layers;
  const int num_experts;
  const int num_slots;
  const int ring_steps;
  const HeatStage stage;
  const int64_t max_num_reqs;
  const size_t cells;      // L * S.
  const uint32_t id_mask;  // P - 1, P = bit_ceil(E).
  // Columns of a lane: [0, E) experts, [E, P] dropped ids.
  const size_t lane_stride;
  const size_t min_ids_for_lanes;

  // --- Writer-private (serving thread). ---
  std::vector<int64_t> step;      // [L][S]: this step's counts.
  int64_t step_dropped = 0;       // This step's dropped ids.
  std::vector<uint32_t> lanes;    // [kLanes][P + 1]: zero between calls.
  std::vector<uint32_t> totals;   // [P + 1]: lanes summed, at a fold.
  int64_t samples_written_w = 0;  // Writer's copy of samples_written.

  // --- Published (seqlock). ---
  alignas(64) std::atomic<uint64_t> sequence{0};  // Odd while publishing.
  std::atomic<int64_t> steps_counted{0};
  std::atomic<int64_t> samples_written{0};  // Since the last Clear.
  std::atomic<int64_t> dropped_ids{0};
  std::vector<std::atomic<int64_t>> window;  // [L][S].
  std::vector<std::atomic<int64_t>> ring;    // [ring_steps][L][S].

  // RemapLayer's scratch (writer-private): [E] tokens per expert, [E] its
  // new slots, [E] new slots given so far.
  std::vector<int64_t> remap_tokens;
  std::vector<int32_t> remap_slots;
  std::vector<int32_t> remap_given;

  // Set by Clear() (any thread), taken by EndStep(). Own cache line: readers
  // poll `sequence`, the controller writes this.
  alignas(64) std::atomic<bool> clear_requested{false};
};

template <typename Id>
void HeatRecorder::Impl::CountTopk(int layer, std::span<const Id> ids,
                                   std::span<const int32_t> log2phy) {
  EPLB_CHECK_MSG(layer >= 0 && layer < num_layers,
                 "HeatRecorder: layer out of range");
  EPLB_CHECK_MSG(log2phy.size() == static_cast<size_t>(num_experts),
                 "HeatRecorder: log2phy must have num_experts entries");
  using U = std::make_unsigned_t<Id>;
  const auto e = static_cast<U>(num_experts);
  const auto s = static_cast<uint32_t>(num_slots);
  int64_t* row = step.data() + static_cast<size_t>(layer) * num_slots;
  const int32_t* map = log2phy.data();
  const Id* p = ids.data();
  size_t n = ids.size();

  if (n < min_ids_for_lanes) {
    for (size_t i = 0; i < n; ++i) {
      const auto u = static_cast<U>(p[i]);
      const uint32_t slot = u < e ? static_cast<uint32_t>(map[u]) : s;
      if (slot < s) {
        ++row[slot];
      } else {
        ++step_dropped;
      }
    }
    return;
  }

  uint32_t* lane[kLanes];
  for (int k = 0; k < kLanes; ++k) lane[k] = lanes.data() + k * lane_stride;
  while (n > 0) {
    const size_t chunk = std::min(n, kMaxIdsPerFold);
    for (size_t i = 0; i < chunk; i += kBlockIds) {
      const size_t block = std::min(chunk - i, kBlockIds);
      if (!CountMasked</*kUndo=*/false>(p + i, block, id_mask, lane)) {
        CountMasked</*kUndo=*/true>(p + i, block, id_mask, lane);
        CountClamped(p + i, block, e, lane);
      }
    }
    p += chunk;
    n -= chunk;

    // Fold: lanes -> per-expert totals (a vectorized sum) -> slots through
    // log2phy. Columns [E, P] are dropped ids.
    uint32_t* total = totals.data();
    for (size_t x = 0; x < lane_stride; ++x) {
      uint32_t sum = 0;
      for (int k = 0; k < kLanes; ++k) sum += lane[k][x];
      total[x] = sum;
    }
    std::fill(lanes.begin(), lanes.end(), 0u);
    const auto experts = static_cast<size_t>(num_experts);
    for (size_t x = 0; x < experts; ++x) {
      const auto slot = static_cast<uint32_t>(map[x]);
      if (slot < s) {
        row[slot] += total[x];
      } else {
        step_dropped += total[x];
      }
    }
    for (size_t x = experts; x < lane_stride; ++x) step_dropped += total[x];
  }
}

bool HeatRecorder::Impl::StepCounts(int64_t num_tokens) const {
  switch (stage) {
    case HeatStage::kAll:
      return true;
    case HeatStage::kPrefill:
      return num_tokens > max_num_reqs;
    case HeatStage::kDecode:
      return num_tokens <= max_num_reqs;
  }
  return true;
}

void HeatRecorder::Impl::Publish(bool clear, bool add_step) {
  const uint64_t seq = sequence.load(std::memory_order_relaxed);
  sequence.store(seq + 1, std::memory_order_relaxed);
  WriterFence();
  if (clear) {
    for (std::atomic<int64_t>& w : window) w.store(0, kDataStore);
    steps_counted.store(0, kDataStore);
    samples_written.store(0, kDataStore);
    dropped_ids.store(0, kDataStore);
    samples_written_w = 0;  // Old ring rows become unreachable.
  }
  if (add_step) {
    std::atomic<int64_t>* sample =
        ring.data() +
        static_cast<size_t>(samples_written_w % ring_steps) * cells;
    for (size_t i = 0; i < cells; ++i) {
      const int64_t v = step[i];
      sample[i].store(v, kDataStore);
      window[i].store(window[i].load(std::memory_order_relaxed) + v,
                      kDataStore);
    }
    ++samples_written_w;
    steps_counted.store(steps_counted.load(std::memory_order_relaxed) + 1,
                        kDataStore);
    samples_written.store(samples_written_w, kDataStore);
    dropped_ids.store(
        dropped_ids.load(std::memory_order_relaxed) + step_dropped, kDataStore);
  }
  sequence.store(seq + 2, std::memory_order_release);
}

template <typename Get, typename Set>
void HeatRecorder::Impl::RemapRow(std::span<const int32_t> from,
                                  std::span<const int32_t> to, Get get,
                                  Set set) {
  std::fill(remap_tokens.begin(), remap_tokens.end(), 0);
  for (int p = 0; p < num_slots; ++p) remap_tokens[from[p]] += get(p);
  std::fill(remap_given.begin(), remap_given.end(), 0);
  for (int p = 0; p < num_slots; ++p) {
    const int32_t e = to[p];
    const int64_t n = remap_slots[e];
    const int64_t i = remap_given[e]++;
    const int64_t c = remap_tokens[e];
    set(p, c / n + (i < c % n ? 1 : 0));
  }
}

void HeatRecorder::RemapLayer(int layer, std::span<const int32_t> from,
                              std::span<const int32_t> to) {
  Impl& s = *impl_;
  EPLB_CHECK_MSG(layer >= 0 && layer < s.num_layers,
                 "HeatRecorder::RemapLayer: layer out of range");
  EPLB_CHECK_MSG(from.size() == static_cast<size_t>(s.num_slots) &&
                     to.size() == static_cast<size_t>(s.num_slots),
                 "HeatRecorder::RemapLayer: placements must have num_slots "
                 "entries");
  std::fill(s.remap_slots.begin(), s.remap_slots.end(), 0);
  for (int p = 0; p < s.num_slots; ++p) {
    EPLB_CHECK_MSG(from[p] >= 0 && from[p] < s.num_experts && to[p] >= 0 &&
                       to[p] < s.num_experts,
                   "HeatRecorder::RemapLayer: expert out of range");
    ++s.remap_slots[to[p]];
  }
  const size_t offset = static_cast<size_t>(layer) * s.num_slots;
  // The step in progress is the writer's own.
  int64_t* step_row = s.step.data() + offset;
  s.RemapRow(
      from, to, [&](int p) { return step_row[p]; },
      [&](int p, int64_t v) { step_row[p] = v; });
  const uint64_t seq = s.sequence.load(std::memory_order_relaxed);
  s.sequence.store(seq + 1, std::memory_order_relaxed);
  WriterFence();
  for (int j = 0; j <= s.ring_steps; ++j) {
    std::atomic<int64_t>* row =
        (j == s.ring_steps ? s.window.data()
                           : s.ring.data() + static_cast<size_t>(j) * s.cells) +
        offset;
    s.RemapRow(
        from, to, [&](int p) { return row[p].load(std::memory_order_relaxed); },
        [&](int p, int64_t v) { row[p].store(v, kDataStore); });
  }
  s.sequence.store(seq + 2, std::memory_order_release);
}

StatusOr<std::unique_ptr<HeatRecorder>> HeatRecorder::Create(
    const HeatRecorderOptions& options) {
  EPLB_RETURN_IF_ERROR(CheckAtLeast("num_layers", options.num_layers, 1));
  EPLB_RETURN_IF_ERROR(CheckAtLeast("num_experts", options.num_experts, 1));
  if (options.num_experts > kMaxExperts) {
    return InvalidArgumentError("HeatRecorderOptions.num_experts must be <= " +
                                std::to_string(kMaxExperts) + ", got " +
                                std::to_string(options.num_experts));
  }
  EPLB_RETURN_IF_ERROR(CheckAtLeast("num_slots", options.num_slots, 1));
  EPLB_RETURN_IF_ERROR(CheckAtLeast("ring_steps", options.ring_steps, 1));
  EPLB_RETURN_IF_ERROR(CheckAtLeast("max_num_reqs", options.max_num_reqs, 0));
  const int64_t counters = (int64_t{options.ring_steps} + 1) *
                           options.num_layers * options.num_slots;
  if (counters > kMaxCounters) {
    return InvalidArgumentError(
        "HeatRecorderOptions: (ring_steps + 1) * num_layers * num_slots = (" +
        std::to_string(options.ring_steps) + " + 1) * " +
        std::to_string(options.num_layers) + " * " +
        std::to_string(options.num_slots) + " = " + std::to_string(counters) +
        " counters, more than the limit of " + std::to_string(kMaxCounters));
  }
  return std::unique_ptr<HeatRecorder>(new HeatRecorder(options));
}

HeatRecorder::HeatRecorder(const HeatRecorderOptions& options)
    : impl_(std::make_unique<Impl>(options)) {}

HeatRecorder::~HeatRecorder() = default;

void HeatRecorder::RecordTopk(int layer, std::span<const int32_t> topk_ids,
                              std::span<const int32_t> log2phy) {
  impl_->CountTopk(layer, topk_ids, log2phy);
}

void HeatRecorder::RecordTopk(int layer, std::span<const int64_t> topk_ids,
                              std::span<const int32_t> log2phy) {
  impl_->CountTopk(layer, topk_ids, log2phy);
}

void HeatRecorder::RecordSlotCounts(int layer,
                                    std::span<const int64_t> slot_counts) {
  Impl& s = *impl_;
  EPLB_CHECK_MSG(layer >= 0 && layer < s.num_layers,
                 "HeatRecorder: layer out of range");
  EPLB_CHECK_MSG(slot_counts.size() == static_cast<size_t>(s.num_slots),
                 "HeatRecorder: slot_counts must have num_slots entries");
  int64_t* row = s.step.data() + static_cast<size_t>(layer) * s.num_slots;
  for (size_t i = 0; i < slot_counts.size(); ++i) {
    row[i] += std::max<int64_t>(slot_counts[i], 0);
  }
}

int HeatRecorder::num_layers() const { return impl_->num_layers; }
int HeatRecorder::num_slots() const { return impl_->num_slots; }

void HeatRecorder::RecordDroppedIds(int64_t count) {
  impl_->step_dropped += std::max<int64_t>(count, 0);
}

void HeatRecorder::EndStep(int64_t num_tokens) {
  Impl& s = *impl_;
  const bool add_step = s.StepCounts(num_tokens);
  // A plain load first: the exchange (a locked RMW) only when a Clear is due.
  const bool clear =
      s.clear_requested.load(std::memory_order_relaxed) &&
      s.clear_requested.exchange(false, std::memory_order_relaxed);
  if (add_step || clear) s.Publish(clear, add_step);
  std::fill(s.step.begin(), s.step.end(), 0);
  s.step_dropped = 0;
}

namespace {

// Runs `read` (relaxed loads of the published state) until it saw one whole
// step: the sequence was even before and unchanged after. The writer never
// waits for it.
template <typename Read>
void ReadConsistent(const std::atomic<uint64_t>& sequence, Read read) {
  for (int attempt = 1;; ++attempt) {
    const uint64_t seq = sequence.load(std::memory_order_acquire);
    if ((seq & 1) == 0) {
      read();
      ReaderFence();
      if (sequence.load(std::memory_order_relaxed) == seq) return;
    }
    // The writer publishes a step in microseconds; spin a little, then let
    // it run (it may share this core).
    if (attempt % 64 == 0) std::this_thread::yield();
  }
}

}  // namespace

HeatSnapshot HeatRecorder::Snapshot() const {
  const Impl& s = *impl_;
  HeatSnapshot out;
  out.num_layers = s.num_layers;
  out.num_slots = s.num_slots;
  out.window.resize(s.cells);
  out.samples.resize(static_cast<size_t>(s.ring_steps) * s.cells);
  ReadConsistent(s.sequence, [&] {
    out.steps_counted = s.steps_counted.load(kDataLoad);
    out.dropped_ids = s.dropped_ids.load(kDataLoad);
    const int64_t written = s.samples_written.load(kDataLoad);
    for (size_t i = 0; i < s.cells; ++i) {
      out.window[i] = s.window[i].load(kDataLoad);
    }
    // Clamped, so a torn read (retried) still indexes in range.
    const int64_t num_samples = std::clamp<int64_t>(written, 0, s.ring_steps);
    const int64_t first = written - num_samples;
    int64_t* dst = out.samples.data();
    for (int64_t j = 0; j < num_samples; ++j) {
      const std::atomic<int64_t>* src =
          s.ring.data() +
          static_cast<size_t>((first + j) % s.ring_steps) * s.cells;
      for (size_t i = 0; i < s.cells; ++i) *dst++ = src[i].load(kDataLoad);
    }
    out.num_samples = static_cast<int>(num_samples);
  });
  out.samples.resize(static_cast<size_t>(out.num_samples) * s.cells);
  return out;
}

int64_t HeatRecorder::CopyWindow(std::span<int64_t> window) const {
  const Impl& s = *impl_;
  EPLB_CHECK(window.size() == s.cells);
  int64_t steps = 0;
  ReadConsistent(s.sequence, [&] {
    steps = s.steps_counted.load(kDataLoad);
    for (size_t i = 0; i < s.cells; ++i) {
      window[i] = s.window[i].load(kDataLoad);
    }
  });
  return steps;
}

int64_t HeatRecorder::CopyNewest(int steps, std::span<int64_t> sum,
                                 std::span<int64_t> step_totals) const {
  const Impl& s = *impl_;
  EPLB_CHECK(sum.size() == s.cells);
  int64_t n = 0;
  ReadConsistent(s.sequence, [&] {
    const int64_t written = s.samples_written.load(kDataLoad);
    // Clamped, so a torn read (retried) still indexes in range.
    n = std::clamp<int64_t>(std::min<int64_t>(steps, written), 0, s.ring_steps);
    std::fill(sum.begin(), sum.end(), 0);
    std::fill(step_totals.begin(), step_totals.end(), 0);
    for (int64_t j = written - n; j < written; ++j) {
      const std::atomic<int64_t>* src =
          s.ring.data() + static_cast<size_t>(j % s.ring_steps) * s.cells;
      int64_t total = 0;
      for (size_t i = 0; i < s.cells; ++i) {
        const int64_t v = src[i].load(kDataLoad);
        sum[i] += v;
        total += v;
      }
      const size_t k = static_cast<size_t>(j - (written - n));
      if (k < step_totals.size()) step_totals[k] = total;
    }
  });
  return n;
}

void HeatRecorder::Clear() {
  impl_->clear_requested.store(true, std::memory_order_relaxed);
}

LoadMatrix HeatSnapshot::LogicalLoad(const Placement& placement) const {
  EPLB_CHECK_MSG(placement.num_layers() == num_layers &&
                     placement.num_slots() == num_slots,
                 "HeatSnapshot::LogicalLoad: placement shape differs");
  const int num_experts = placement.num_experts();
  LoadMatrix load(num_layers, num_experts);
  for (int l = 0; l < num_layers; ++l) {
    const std::span<const int32_t> experts = placement.layer(l);
    const int64_t* counts = window.data() + static_cast<size_t>(l) * num_slots;
    for (int p = 0; p < num_slots; ++p) {
      const int32_t e = experts[p];
      if (e >= 0 && e < num_experts) {
        load.at(l, e) += static_cast<double>(counts[p]);
      }
    }
  }
  return load;
}

LoadTrace HeatSnapshot::LogicalSamples(const Placement& placement) const {
  EPLB_CHECK_MSG(placement.num_layers() == num_layers &&
                     placement.num_slots() == num_slots,
                 "HeatSnapshot::LogicalSamples: placement shape differs");
  const int num_experts = placement.num_experts();
  LoadTrace trace(num_samples, num_layers, num_experts);
  const size_t cells = static_cast<size_t>(num_layers) * num_slots;
  for (int t = 0; t < num_samples; ++t) {
    for (int l = 0; l < num_layers; ++l) {
      const std::span<const int32_t> experts = placement.layer(l);
      const int64_t* counts = samples.data() + static_cast<size_t>(t) * cells +
                              static_cast<size_t>(l) * num_slots;
      for (int p = 0; p < num_slots; ++p) {
        const int32_t e = experts[p];
        if (e >= 0 && e < num_experts) {
          trace.at(t, l, e) += static_cast<double>(counts[p]);
        }
      }
    }
  }
  return trace;
}

}  // namespace eplb
