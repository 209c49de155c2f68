// The checksum's portable definition, for tests that hold the vectorised
// path to it.
#ifndef EPLB_MIGRATION_CHECKSUM_H_
#define EPLB_MIGRATION_CHECKSUM_H_

#include <cstddef>
#include <cstdint>
#include <span>

namespace eplb {

// ChecksumBytes computed without SIMD; equal to it everywhere.
uint64_t ChecksumBytesPortable(std::span<const std::byte> bytes, uint64_t seed);

}  // namespace eplb

#endif  // EPLB_MIGRATION_CHECKSUM_H_
