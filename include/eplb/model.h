// Model specs and quantised expert formats.
//
// A ModelSpec names the MoE geometry of a model; a QuantType fixes the
// tensors one routed expert holds and their exact byte sizes, which is what a
// migration moves. Pure value types and pure functions: thread-safe.
#ifndef EPLB_MODEL_H_
#define EPLB_MODEL_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "eplb/status.h"

namespace eplb {

struct ModelSpec {
  std::string name;             // Preset name, or "custom".
  int num_moe_layers = 0;       // MoE layers only (dense layers are skipped).
  int num_dense_layers = 0;     // Leading dense layers (for SGLang dumps).
  int num_experts = 0;          // Routed (logical) experts per layer.
  int num_shared_experts = 0;   // Always-on experts; never balanced.
  int top_k = 0;                // Experts picked per token.
  int num_groups = 1;           // Expert groups of group-limited routing.
  int num_topk_groups = 1;      // Groups a token may pick from.
  int64_t hidden_size = 0;      // H.
  int64_t expert_ffn_size = 0;  // I (moe_intermediate_size).
};

// Returns the presets in a stable order: deepseek-v3, deepseek-v3.1,
// deepseek-r1, qwen3-235b-a22b, qwen3-30b-a3b, deepseek-v2-lite.
const std::vector<ModelSpec>& ModelPresets();

// Returns the preset named `name` (case-insensitive); NotFound lists the
// valid names.
StatusOr<ModelSpec> FindModelPreset(std::string_view name);

// The preset with `num_moe_layers` MoE layers of `num_experts` experts (the
// first in ModelPresets() order); when none has that shape, a spec named
// "custom" of that shape with DeepSeek-V2-Lite's expert size and top-k
// (capped at the experts), and `*note` (when not null) says so. For a trace
// of known shape and unknown model.
ModelSpec ModelForShape(int num_moe_layers, int num_experts,
                        std::string* note = nullptr);

// Checks a (custom) spec: every count positive, top_k <= num_experts, groups
// dividing the experts, num_topk_groups <= num_groups. InvalidArgument names
// the field and its value.
Status ValidateModelSpec(const ModelSpec& spec);

enum class QuantType { kBf16, kW8A8, kW8A8Dynamic, kW4A8, kMxfp8, kMxfp4 };

// All quant types in a stable order (bf16, w8a8, w8a8-dynamic, w4a8, mxfp8,
// mxfp4).
const std::vector<QuantType>& AllQuantTypes();
std::string_view QuantTypeName(QuantType quant);  // e.g. "w8a8-dynamic".
// Parses a quant type name (case-insensitive, '_' accepted for '-').
StatusOr<QuantType> ParseQuantType(std::string_view name);

enum class DType { kBf16, kInt8, kInt4x2, kFp8E4M3, kFp4E2M1x2, kE8M0, kFp32 };
std::string_view DTypeName(DType dtype);

// One tensor of an expert. Packed dtypes (int4x2, fp4x2) hold two values per
// byte; `shape` is the stored (packed) shape, so bytes = product(shape) *
// element size.
struct ExpertTensor {
  std::string name;  // e.g. "w13_weight", "w2_weight_scale".
  DType dtype = DType::kBf16;
  std::vector<int64_t> shape;  // Stored shape.
  int64_t num_bytes = 0;
};

// The tensors one routed expert of `spec` holds in `quant`:
// w13 ([2I][H], gate and up) and w2 ([H][I]) plus their scales.
//  - bf16: 2 bytes a weight, no scales.
//  - w8a8 / w8a8-dynamic: int8 weights, fp32 per-output-channel scales for
//    w13 ([2I]) and w2 ([H]); dynamic activation scales are not stored.
//  - w4a8: int4 weights packed two a byte along the input dim, fp32
//    per-output-channel scales and scale biases for w13 and w2.
//  - mxfp8 / mxfp4: E4M3 / packed E2M1 weights, one E8M0 scale byte per
//    block of 32 weights along the input dim.
// Odd or non-multiple-of-32 input dims round up (a partial block still has a
// scale; a half-filled byte is still a byte).
std::vector<ExpertTensor> ExpertTensors(const ModelSpec& spec, QuantType quant);

// Sum of the byte sizes of ExpertTensors(spec, quant).
int64_t ExpertBytes(const ModelSpec& spec, QuantType quant);

}  // namespace eplb

#endif  // EPLB_MODEL_H_
