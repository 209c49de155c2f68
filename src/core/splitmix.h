// splitmix64: a tiny, well-mixed, platform-independent random stream (std::
// distributions are implementation-defined, so seeded results would differ
// between standard libraries). Private to the library.
#ifndef EPLB_SRC_CORE_SPLITMIX_H_
#define EPLB_SRC_CORE_SPLITMIX_H_

#include <cstdint>

namespace eplb::internal {

// Advances `*state` and returns the next 64 random bits.
inline uint64_t SplitMix64(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

}  // namespace eplb::internal

#endif  // EPLB_SRC_CORE_SPLITMIX_H_
