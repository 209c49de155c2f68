// Replaces the global operator new and delete for the whole test binary
// (counting_new.h).
#include "testing/counting_new.h"

#include <cstddef>
#include <cstdlib>
#include <new>

#if defined(__SANITIZE_THREAD__)
#define EPLB_COUNT_ALLOCATIONS 0
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define EPLB_COUNT_ALLOCATIONS 0
#endif
#endif
#ifndef EPLB_COUNT_ALLOCATIONS
#define EPLB_COUNT_ALLOCATIONS 1
#endif

namespace {
thread_local int64_t t_allocations = 0;
}  // namespace

namespace eplb::testing_util {
bool AllocationsCounted() { return EPLB_COUNT_ALLOCATIONS != 0; }
int64_t ThreadAllocations() { return t_allocations; }
}  // namespace eplb::testing_util

#if EPLB_COUNT_ALLOCATIONS
namespace {
void* CountedAlloc(std::size_t size) noexcept {
  ++t_allocations;
  return std::malloc(size == 0 ? 1 : size);
}

// Out of line, so that GCC does not see free() of an operator new pointer
// once operator delete is inlined (-Wmismatched-new-delete).
[[gnu::noinline]] void CountedFree(void* p) noexcept { std::free(p); }
}  // namespace

void* operator new(std::size_t size) {
  if (void* p = CountedAlloc(size)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size) {
  if (void* p = CountedAlloc(size)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
  return CountedAlloc(size);
}
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept {
  return CountedAlloc(size);
}
void operator delete(void* p) noexcept { CountedFree(p); }
void operator delete[](void* p) noexcept { CountedFree(p); }
void operator delete(void* p, std::size_t) noexcept { CountedFree(p); }
void operator delete[](void* p, std::size_t) noexcept { CountedFree(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept {
  CountedFree(p);
}
void operator delete[](void* p, const std::nothrow_t&) noexcept {
  CountedFree(p);
}
#endif  // EPLB_COUNT_ALLOCATIONS
