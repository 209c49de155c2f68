// HeatRecorder: counts expert load (heat) on one rank's serving path.
//
// Hot path (one serving thread, the writer): Record*() for every MoE layer of
// a step, then EndStep(). Counting is a fixed-cost add per routed token; the
// hot path never allocates, locks, blocks or makes a syscall (all buffers are
// sized at Create()).
//
// Readers (any thread, e.g. the controller): Snapshot() copies the window
// sum and the ring of per-step samples. Publication is a seqlock over relaxed
// atomics: the writer never waits for a reader; a reader retries while a step
// is being published. Clear() may be called from any thread; it takes effect
// at the next EndStep().
#ifndef EPLB_RECORDER_H_
#define EPLB_RECORDER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "eplb/config.h"
#include "eplb/load.h"
#include "eplb/status.h"

namespace eplb {

struct HeatRecorderOptions {
  int num_layers = 0;   // MoE layers.
  int num_experts = 0;  // Logical experts E (the range of topk ids).
  int num_slots = 0;    // Physical slots counted: R*K (all ranks' slots).
  int ring_steps = 64;  // Per-step samples kept (FlashLB); >= 1.
  HeatStage stage = HeatStage::kAll;
  int max_num_reqs = 256;  // Prefill: > this many tokens in the step.
};

// What a reader sees: [num_layers][num_slots] sums and samples.
struct HeatSnapshot {
  int num_layers = 0;
  int num_slots = 0;
  int64_t steps_counted = 0;     // Steps in the window (stage-filtered).
  std::vector<int64_t> window;   // [L][num_slots] sum over the window.
  int num_samples = 0;           // <= ring_steps, oldest first.
  std::vector<int64_t> samples;  // [num_samples][L][num_slots].
  int64_t dropped_ids = 0;       // Ids outside [0, E) or unmapped (-1).

  // Logical load: per-slot counts summed over each expert's slots in
  // `placement` ([L][R][K], R*K == num_slots).
  LoadMatrix LogicalLoad(const Placement& placement) const;
  // Same for every sample: [num_samples][L][E].
  LoadTrace LogicalSamples(const Placement& placement) const;
};

class HeatRecorder {
 public:
  // InvalidArgument names a bad option.
  static StatusOr<std::unique_ptr<HeatRecorder>> Create(
      const HeatRecorderOptions& options);
  ~HeatRecorder();
  HeatRecorder(const HeatRecorder&) = delete;
  HeatRecorder& operator=(const HeatRecorder&) = delete;

  // --- Hot path: the serving thread only. ---
  // Counts one layer's router output `topk_ids` ([tokens][top_k] flattened)
  // through this rank's `log2phy` row ([E]: physical slot of each logical
  // expert, -1 if unmapped). Ids outside [0, E) and unmapped experts are
  // counted in dropped_ids. Precondition: 0 <= layer < num_layers (checked,
  // EPLB_CHECK). O(ids).
  void RecordTopk(int layer, std::span<const int32_t> topk_ids,
                  std::span<const int32_t> log2phy);
  void RecordTopk(int layer, std::span<const int64_t> topk_ids,
                  std::span<const int32_t> log2phy);
  // Adds per-slot token counts ([num_slots], e.g. from the grouped matmul, or
  // only this rank's slots non-zero). Negative counts are dropped.
  void RecordSlotCounts(int layer, std::span<const int64_t> slot_counts);
  // Adds ids counted elsewhere that mapped to no slot (outside [0, E) or
  // unmapped), as RecordTopk counts them (e.g. by the GPU recorder). Negative
  // counts are ignored.
  void RecordDroppedIds(int64_t count);
  // Ends the step: when `num_tokens` matches the stage filter, the step's
  // counts join the window and the ring; otherwise they are discarded.
  // Applies a pending Clear() first. O(L * num_slots).
  void EndStep(int64_t num_tokens);
  // Layer `layer` changed its placement from `from` to `to` ([num_slots]
  // each: the logical expert of every physical slot). The heat collected so
  // far for it (the window, every sample of the ring and the step in
  // progress) moves to the new slots: each expert's tokens, summed over its
  // old slots, split over its new slots as evenly as whole tokens allow (the
  // lower slots take the remainder). Logical loads are unchanged, so a
  // collection may run on across a migration. EPLB_CHECK on the sizes and
  // on experts outside [0, E). O(ring_steps * num_slots); never allocates.
  void RemapLayer(int layer, std::span<const int32_t> from,
                  std::span<const int32_t> to);

  // --- Any thread. ---
  HeatSnapshot Snapshot() const;
  // The window sum alone into `window` [L][num_slots] (EPLB_CHECK on its
  // size), without allocating: a cheap look at the heat so far. Returns the
  // steps counted in it.
  int64_t CopyWindow(std::span<int64_t> window) const;
  // The sum of the newest `steps` samples of the ring into `sum`
  // [L][num_slots] (EPLB_CHECK on its size), without allocating. Returns
  // how many were summed: fewer when the ring holds fewer.
  int64_t CopyNewest(int steps, std::span<int64_t> sum,
                     std::span<int64_t> step_totals = {}) const;
  void Clear();  // Empties the window and the ring at the next EndStep().
  int num_layers() const;
  int num_slots() const;

 private:
  explicit HeatRecorder(const HeatRecorderOptions& options);
  // Defined in recorder.cc.
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace eplb

#endif  // EPLB_RECORDER_H_
