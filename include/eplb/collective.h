// Collective: what the ranks of one serving job agree on, through the
// engine's communicator. The controller sums heat across ranks before it
// plans, checks that every rank computed the same plan, and decides
// together when a migrating layer commits; the migration engine decides
// together whether every rank's transfers of a layer verified.
//
// Every call is blocking and collective: every process of the job makes the
// same calls in the same order (the controller's calls follow its step
// count, which is the same on every rank). One process that hosts every
// rank uses LocalCollective(), whose calls return at once.
#ifndef EPLB_COLLECTIVE_H_
#define EPLB_COLLECTIVE_H_

#include <cstdint>
#include <span>

#include "eplb/status.h"

namespace eplb {

class Collective {
 public:
  virtual ~Collective() = default;
  // This process's index among size() processes.
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Element-wise, in place, over every process.
  virtual Status AllReduceSum(std::span<int64_t> values) = 0;
  virtual Status AllReduceMax(std::span<int64_t> values) = 0;
};

// One process: rank 0 of 1; the reductions leave the values as they are.
// Process-wide, never destroyed, thread-safe.
Collective* LocalCollective();

// Whether every process passed the same `value`. A failed collective counts
// as a disagreement.
bool AllAgree(Collective& collective, uint64_t value);

}  // namespace eplb

#endif  // EPLB_COLLECTIVE_H_
