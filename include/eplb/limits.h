// Limits on the sizes eplb reads and plans for (docs/formats.md#limits).
// Every reader and the command line check them before allocating, so a
// hostile or mistaken file (one row naming step 268435455, a JSON array
// nested a million levels deep) is a one-line error, not gigabytes of
// memory or a stack overflow. Each limit is far above any real model or
// deployment (DeepSeek-V3: 58 MoE layers x 256 experts, EP320).
#ifndef EPLB_LIMITS_H_
#define EPLB_LIMITS_H_

#include <cstdint>

namespace eplb {

// Nesting of JSON arrays and objects in any JSON input (maps, configs,
// SGLang dumps, DeepSeek triples); the deepest real one nests 6 levels.
inline constexpr int kMaxJsonDepth = 64;
// Steps of a load trace (trace CSV rows, SGLang [steps][L][E] dumps).
inline constexpr int64_t kMaxSteps = int64_t{1} << 20;
// MoE layers of a trace or map.
inline constexpr int64_t kMaxLayers = 4096;
// Logical experts per layer.
inline constexpr int64_t kMaxExperts = 65536;
// Ranks (devices) of an EP group.
inline constexpr int64_t kMaxRanks = 4096;
// Physical slots per layer (ranks x slots per rank).
inline constexpr int64_t kMaxSlots = int64_t{1} << 20;
// Cells of a dense load trace (steps x layers x experts, 8 bytes each:
// 256 MiB).
inline constexpr int64_t kMaxTraceCells = int64_t{1} << 25;
// Cells of a placement (layers x slots, 4 bytes each: 64 MiB).
inline constexpr int64_t kMaxMapCells = int64_t{1} << 24;
// Largest token count of one (step, layer, expert) cell: 2^53, the largest
// integer a double (the trace's cell type) holds exactly.
inline constexpr uint64_t kMaxCount = uint64_t{1} << 53;
// Bytes of a file read whole (JSON maps, configs, dumps): a device or pipe
// that never ends (/dev/zero) is an error, not all the memory there is.
inline constexpr int64_t kMaxFileBytes = int64_t{1} << 28;

}  // namespace eplb

#endif  // EPLB_LIMITS_H_
