// Reading and writing the files EPLB exchanges with engines
// (docs/formats.md): vllm-ascend expert-map JSON, SGLang's logical_count and
// physical_to_logical_map, DeepSeek EPLB's phy2log/log2phy/logcnt triple, and
// the project's trace CSV.
//
// Every reader validates fully and names the place of each problem; every
// writer is atomic (temp file in the same directory, then rename), so a file
// already there is never half-overwritten. Functions are thread-safe (no
// shared state).
//
// Map readers take an optional `warnings`: what they accept but an engine
// might read otherwise (two replicas of an expert on one rank, ids taken
// from positions, dropped dense rows) is appended there, one line each.
// Callers that pass none get the same placement and no notice.
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
// Temp files of `path` left by a writer that was killed (named
// "<path>.tmp.<pid>.<n>", their process gone) are removed first.
// The checks WriteFileAtomic makes before writing: a file path whose
// directory exists and that is not a directory. For callers that must fail
// before a long run rather than after it.
Status CheckWritablePath(const std::string& path);
Status WriteFileAtomic(const std::string& path, std::string_view contents);

// `text` without a leading UTF-8 byte order mark (EF BB BF). Every text
// reader (JSON and CSV) strips it before looking at the content.
std::string_view StripUtf8Bom(std::string_view text);

// OK when no array or object in the JSON `text` nests deeper than
// kMaxJsonDepth (eplb/limits.h); else InvalidArgument "JSON nested deeper
// than the limit of 64 levels (at byte N)". A linear scan without recursion
// (strings and their escapes skipped), run before any recursive parse.
Status CheckJsonDepth(std::string_view text);

// When `contents` (a file's first bytes suffice) start as a PyTorch file
// does (a torch.save zip archive, "PK\x03\x04", or a legacy pickle,
// "\x80\x02"), InvalidArgument "<path>: a PyTorch file, not JSON or CSV:
// convert it with: python3 -c \"...\"", the command adapted to what the file
// holds (SGLang's logical_count or physical_to_logical_map, DeepSeek's
// phy2log triple, else a bare tensor wrapped under the key `expected_key`).
// OK otherwise. The readers of maps and loads call it first.
Status RejectTorchFile(const std::string& path, std::string_view contents,
                       std::string_view expected_key);

// What a map must match. 0 = not checked (layers, ranks, slots) or inferred
// (experts: max id + 1).
struct MapExpectations {
  int num_layers = 0;
  int num_ranks = 0;
  int num_experts = 0;
  int slots_per_rank = 0;
  // Whose rules apply: under kSglang an expert may sit twice on a device
  // (reported in `warnings`, not as a problem).
  MapTarget target = MapTarget::kVllmAscend;
};

// Parses the vllm-ascend expert-map JSON:
//   {"moe_layer_count": L, "layer_list": [{"layer_id": l, "device_count": R,
//     "device_list": [{"device_id": r, "device_expert": [e, ...]}, ...]}, ...]}
// and checks it: well-formed JSON; object types; moe_layer_count
// equal to the list length (and to expect.num_layers); layer ids 0..L-1 once
// each; device_count equal to its list (and to expect.num_ranks); device ids
// 0..R-1 once each; the same slot count on every device (and equal to
// expect.slots_per_rank); expert ids integers in [0, E); no expert twice on a
// device (under MapTarget::kVllmAscend); every expert on some device of every
// layer. Layers and devices may appear in any order in the file; the
// Placement is indexed by id.
// An entry without "layer_id" (or "device_id") takes its position in the
// list as its id, as vllm-ascend's own reader does (it ignores both keys);
// that is a warning, as is a list not in id order (vllm-ascend would read
// its entries by position) and, under kSglang, an expert twice on a device.
// Every problem found is appended to `problems` (when given) as one line
// naming layer / device / slot; the returned error is the first of them,
// prefixed with how many there were.
StatusOr<Placement> ParseExpertMapJson(
    std::string_view text, const MapExpectations& expect,
    std::vector<std::string>* problems = nullptr,
    std::vector<std::string>* warnings = nullptr);
// ReadFileToString + ParseExpertMapJson; messages start with the path.
StatusOr<Placement> ReadExpertMapJson(
    const std::string& path, const MapExpectations& expect,
    std::vector<std::string>* problems = nullptr,
    std::vector<std::string>* warnings = nullptr);
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
// num_ranks. num_experts = 0 infers max id + 1. Validated as a map under
// SGLang's rules: an expert may sit twice on a rank (SGLang's planner puts
// it there), which is a warning naming the layers (ColocationWarning).
StatusOr<Placement> ParseSglangPhysicalToLogical(
    std::string_view text, int num_ranks, int num_experts = 0,
    std::vector<std::string>* warnings = nullptr);

// SGLang sizes physical_to_logical_map by the model's hidden layers, dense
// ones included (a dense row holds the initial placement, physical i ->
// i mod E). What the rows of a map are:
struct SglangMapOptions {
  int num_ranks = 0;
  int num_experts = 0;  // 0: max id + 1.
  // Hidden layers of the model; 0: every row is a MoE layer.
  int num_hidden_layers = 0;
  // Leading dense layers among them (DeepSeek-V3: 3 of 61); -1: unknown.
  int num_dense_layers = -1;
};
// With num_hidden_layers N, a map of N rows loses its first
// num_dense_layers rows, or, when that is -1, its leading run of rows in the
// initial placement (at most N - 1); a warning says how many were dropped.
// A map of N - num_dense_layers rows (or, when the dense count is unknown,
// of fewer than N) holds MoE layers only. More than N rows, or a row count
// that is neither, is an error naming both counts.
StatusOr<Placement> ParseSglangPhysicalToLogical(
    std::string_view text, const SglangMapOptions& options,
    std::vector<std::string>* warnings = nullptr);
// ReadFileToString + ParseSglangPhysicalToLogical; messages start with the
// path; a PyTorch file is an error that says how to convert it.
StatusOr<Placement> ReadSglangPhysicalToLogical(
    const std::string& path, const SglangMapOptions& options,
    std::vector<std::string>* warnings = nullptr);
// Writes {"physical_to_logical_map": [D + L][R*K]}: `num_dense_layers` rows
// in the initial placement (physical i -> i mod E, as SGLang fills the rows
// of layers without experts), then the placement's layers.
std::string SglangPhysicalToLogicalToJson(const Placement& placement,
                                          int num_dense_layers = 0);

// DeepSeek EPLB's output triple, as JSON:
//   {"phy2log": [L][R*K], "log2phy": [L][E][X] (-1 padded, X = max replicas),
//    "logcnt": [L][E]}
// log2phy lists each expert's physical ids in ascending order.
std::string DeepSeekMapsToJson(const Placement& placement);
// Reads the triple's phy2log (log2phy and logcnt, when present, must agree
// with it). DeepSeek's reference planner may put two replicas of an expert
// on one GPU: accepted, with a warning naming the layers (ColocationWarning).
StatusOr<Placement> ParseDeepSeekMaps(
    std::string_view text, int num_ranks, int num_experts = 0,
    std::vector<std::string>* warnings = nullptr);
// ReadFileToString + ParseDeepSeekMaps; messages start with the path; a
// PyTorch file is an error that says how to convert it.
StatusOr<Placement> ReadDeepSeekMaps(
    const std::string& path, int num_ranks, int num_experts = 0,
    std::vector<std::string>* warnings = nullptr);

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
// Writes a trace (counts rounded to integers) atomically: the non-zero
// cells, and the last cell even when zero, so the shape reads back.
Status WriteTraceCsv(const std::string& path, const LoadTrace& trace);

// Reads a load file by its content: a trace CSV (first line is the header) or
// an SGLang logical_count JSON; a PyTorch file is an error that says how to
// convert it (RejectTorchFile).
StatusOr<LoadTrace> ReadLoadFile(const std::string& path);

}  // namespace eplb

#endif  // EPLB_IO_H_
