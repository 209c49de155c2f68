// Allocation counting for tests that check a hot path never allocates.
//
// counting_new.cc (linked into the unit test binary) replaces the global
// operator new and delete: they forward to malloc and free, so other tests
// see no difference, and count each allocation for the calling thread.
// Test-only; not part of the library.
#ifndef EPLB_SRC_TESTING_COUNTING_NEW_H_
#define EPLB_SRC_TESTING_COUNTING_NEW_H_

#include <cstdint>

namespace eplb::testing_util {

// Whether allocations are counted: not under ThreadSanitizer, whose runtime
// supplies operator new and delete itself.
bool AllocationsCounted();

// Allocations through operator new by the calling thread so far (0 when
// not counted).
int64_t ThreadAllocations();

}  // namespace eplb::testing_util

#endif  // EPLB_SRC_TESTING_COUNTING_NEW_H_
