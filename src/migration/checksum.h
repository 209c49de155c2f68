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

// The kernels ChecksumBytes chooses from: AVX2 where the CPU has it.
enum class ChecksumPath { kPortable, kAvx2 };
// Whether this CPU and build can run `path` (kPortable: always).
bool ChecksumPathAvailable(ChecksumPath path);
// ChecksumBytes through `path` (the portable one where it is unavailable).
uint64_t ChecksumBytesVia(ChecksumPath path, std::span<const std::byte> bytes,
                          uint64_t seed);

}  // namespace eplb

#endif  // EPLB_MIGRATION_CHECKSUM_H_
