// Reading and writing the files EPLB exchanges with engines
// (docs/formats.md): vllm-ascend expert-map JSON, SGLang's logical_count and
// physical_to_logical_map, DeepSeek EPLB's phy2log/log2phy/logcnt triple, and
// the project's trace CSV.
//
// Every reader validates fully and names the place of each problem; every
// writer is atomic (temp file in the same directory, then rename), so a file
// already there is never half-overwritten. Functions are thread-safe (no
// shared state).
#ifndef EPLB_IO_H_
#define EPLB_IO_H_

#include <string>
#include <string_view>
#include <vector>

#include "eplb/load.h"
#include "eplb/placement.h"
#include "eplb/status.h"

namespace eplb {

// Reads a whole regular file. NotFound when it does not exist;
// InvalidArgument when it is a directory, unreadable or empty. The message
// starts with the path.
StatusOr<std::string> ReadFileToString(const std::string& path);

// Writes `contents` to `path` atomically: a temp file next to it, flushed and
// fsync'ed, then renamed over `path`. On any failure `path` is untouched and
// the temp file removed. NotFound when the directory does not exist.
// The checks WriteFileAtomic makes before writing: a file path whose
// directory exists and that is not a directory. For callers that must fail
// before a long run rather than after it.
Status CheckWritablePath(const std::string& path);
Status WriteFileAtomic(const std::string& path, std::string_view contents);

// What a map must match. 0 = not checked (layers, ranks, slots) or inferred
// (experts: max id + 1).
struct MapExpectations {
  int num_layers = 0;
  int num_ranks = 0;
  int num_experts = 0;
  int slots_per_rank = 0;
};

// Parses the vllm-ascend expert-map JSON:
//   {"moe_layer_count": L, "layer_list": [{"layer_id": l, "device_count": R,
//     "device_list": [{"device_id": r, "device_expert": [e, ...]}, ...]}, ...]}
// and checks it: well-formed JSON; object types; moe_layer_count
// equal to the list length (and to expect.num_layers); layer ids 0..L-1 once
// each; device_count equal to its list (and to expect.num_ranks); device ids
// 0..R-1 once each; the same slot count on every device (and equal to
// expect.slots_per_rank); expert ids integers in [0, E); no expert twice on a
// device; every expert on some device of every layer. Layers and devices may
// appear in any order in the file; the Placement is indexed by id.
// Every problem found is appended to `problems` (when given) as one line
// naming layer / device / slot; the returned error is the first of them,
// prefixed with how many there were.
StatusOr<Placement> ParseExpertMapJson(
    std::string_view text, const MapExpectations& expect,
    std::vector<std::string>* problems = nullptr);
// ReadFileToString + ParseExpertMapJson; messages start with the path.
StatusOr<Placement> ReadExpertMapJson(
    const std::string& path, const MapExpectations& expect,
    std::vector<std::string>* problems = nullptr);
// Serialises in the layout above, layers and devices in id order, one device
// per line. Deterministic: the same placement gives the same bytes.
std::string ExpertMapToJson(const Placement& placement);
Status WriteExpertMapJson(const std::string& path, const Placement& placement);

// SGLang expert-distribution dump: {"logical_count": [L][E]} (an aggregate:
// a one-step trace) or [steps][L][E]. Numbers may be ints or floats, must be
// finite and >= 0. The leading run of layers that are zero in every step
// (the dense layers) is dropped.
StatusOr<LoadTrace> ParseSglangLogicalCount(std::string_view text);
StatusOr<LoadTrace> ReadSglangLogicalCount(const std::string& path);
// Writes {"logical_count": [L][E]} for a one-step trace, else [steps][L][E].
std::string SglangLogicalCountToJson(const LoadTrace& trace);

// SGLang's {"physical_to_logical_map": [L][R*K]}. R*K must be divisible by
// num_ranks. num_experts = 0 infers max id + 1. Validated as a map.
StatusOr<Placement> ParseSglangPhysicalToLogical(std::string_view text,
                                                 int num_ranks,
                                                 int num_experts = 0);
std::string SglangPhysicalToLogicalToJson(const Placement& placement);

// DeepSeek EPLB's output triple, as JSON:
//   {"phy2log": [L][R*K], "log2phy": [L][E][X] (-1 padded, X = max replicas),
//    "logcnt": [L][E]}
// log2phy lists each expert's physical ids in ascending order.
std::string DeepSeekMapsToJson(const Placement& placement);
// Reads the triple's phy2log (log2phy and logcnt, when present, must agree
// with it).
StatusOr<Placement> ParseDeepSeekMaps(std::string_view text, int num_ranks,
                                      int num_experts = 0);

// Trace CSV (docs/formats.md): header "step,layer,expert,count", one row per
// non-zero cell, steps ascending, non-negative integer cells. Missing cells
// are zero; num_steps = last step + 1. Streamed in fixed-size chunks. Errors
// name the line number and the column. num_layers / num_experts = 0 infer
// max + 1; otherwise ids must be below them and the trace has that shape.
struct TraceCsvOptions {
  int num_layers = 0;
  int num_experts = 0;
};
StatusOr<LoadTrace> ReadTraceCsv(const std::string& path,
                                 const TraceCsvOptions& options = {});
// Writes a trace (counts rounded to integers) atomically.
Status WriteTraceCsv(const std::string& path, const LoadTrace& trace);

// Reads a load file by its content: a trace CSV (first line is the header) or
// an SGLang logical_count JSON.
StatusOr<LoadTrace> ReadLoadFile(const std::string& path);

}  // namespace eplb

#endif  // EPLB_IO_H_
