#include "eplb/model.h"

#include <algorithm>
#include <cctype>
#include <string>

namespace eplb {
namespace {

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (c == '_') c = '-';
  }
  return out;
}

ModelSpec DeepSeekV3(std::string name) {
  // 61 decoder layers, the first 3 dense (first_k_dense_replace = 3).
  return ModelSpec{.name = std::move(name),
                   .num_moe_layers = 58,
                   .num_dense_layers = 3,
                   .num_experts = 256,
                   .num_shared_experts = 1,
                   .top_k = 8,
                   .num_groups = 8,
                   .num_topk_groups = 4,
                   .hidden_size = 7168,
                   .expert_ffn_size = 2048};
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

const std::vector<ModelSpec>& ModelPresets() {
  static const std::vector<ModelSpec>* const presets =
      new std::vector<ModelSpec>{
          DeepSeekV3("deepseek-v3"),
          DeepSeekV3("deepseek-v3.1"),
          DeepSeekV3("deepseek-r1"),
          ModelSpec{.name = "qwen3-235b-a22b",
                    .num_moe_layers = 94,
                    .num_dense_layers = 0,
                    .num_experts = 128,
                    .num_shared_experts = 0,
                    .top_k = 8,
                    .num_groups = 1,
                    .num_topk_groups = 1,
                    .hidden_size = 4096,
                    .expert_ffn_size = 1536},
          ModelSpec{.name = "qwen3-30b-a3b",
                    .num_moe_layers = 48,
                    .num_dense_layers = 0,
                    .num_experts = 128,
                    .num_shared_experts = 0,
                    .top_k = 8,
                    .num_groups = 1,
                    .num_topk_groups = 1,
                    .hidden_size = 2048,
                    .expert_ffn_size = 768},
          ModelSpec{.name = "deepseek-v2-lite",
                    .num_moe_layers = 26,
                    .num_dense_layers = 1,
                    .num_experts = 64,
                    .num_shared_experts = 2,
                    .top_k = 6,
                    .num_groups = 1,
                    .num_topk_groups = 1,
                    .hidden_size = 2048,
                    .expert_ffn_size = 1408},
      };
  return *presets;
}

StatusOr<ModelSpec> FindModelPreset(std::string_view name) {
  const std::string wanted = Lower(name);
  std::string valid;
  for (const ModelSpec& spec : ModelPresets()) {
    if (spec.name == wanted) return spec;
    if (!valid.empty()) valid += ", ";
    valid += spec.name;
  }
  return NotFoundError("unknown model '" + std::string(name) +
                       "' (valid: " + valid + ")");
}

ModelSpec ModelForShape(int num_moe_layers, int num_experts,
                        std::string* note) {
  for (const ModelSpec& m : ModelPresets()) {
    if (m.num_moe_layers == num_moe_layers && m.num_experts == num_experts) {
      return m;
    }
  }
  ModelSpec m = *FindModelPreset("deepseek-v2-lite");
  m.name = "custom";
  m.num_moe_layers = num_moe_layers;
  m.num_experts = num_experts;
  m.top_k = std::min(m.top_k, num_experts);
  if (note != nullptr) {
    *note = "no model preset has " + std::to_string(num_moe_layers) +
            " layers x " + std::to_string(num_experts) +
            " experts; using DeepSeek-V2-Lite's expert size (give --model to "
            "choose)";
  }
  return m;
}

Status ValidateModelSpec(const ModelSpec& spec) {
  auto positive = [](std::string_view field, int64_t value) -> Status {
    if (value > 0) return Status::Ok();
    return InvalidArgumentError("model field " + std::string(field) + " = " +
                                std::to_string(value) + ": must be positive");
  };
  EPLB_RETURN_IF_ERROR(positive("num_moe_layers", spec.num_moe_layers));
  EPLB_RETURN_IF_ERROR(positive("num_experts", spec.num_experts));
  EPLB_RETURN_IF_ERROR(positive("top_k", spec.top_k));
  EPLB_RETURN_IF_ERROR(positive("num_groups", spec.num_groups));
  EPLB_RETURN_IF_ERROR(positive("num_topk_groups", spec.num_topk_groups));
  EPLB_RETURN_IF_ERROR(positive("hidden_size", spec.hidden_size));
  EPLB_RETURN_IF_ERROR(positive("expert_ffn_size", spec.expert_ffn_size));
  if (spec.num_dense_layers < 0 || spec.num_shared_experts < 0) {
    return InvalidArgumentError(
        "model fields num_dense_layers and num_shared_experts must be >= 0");
  }
  if (spec.top_k > spec.num_experts) {
    return InvalidArgumentError(
        "model field top_k = " + std::to_string(spec.top_k) +
        ": exceeds num_experts = " + std::to_string(spec.num_experts));
  }
  if (spec.num_experts % spec.num_groups != 0) {
    return InvalidArgumentError(
        "model field num_groups = " + std::to_string(spec.num_groups) +
        ": does not divide num_experts = " + std::to_string(spec.num_experts));
  }
  if (spec.num_topk_groups > spec.num_groups) {
    return InvalidArgumentError(
        "model field num_topk_groups = " +
        std::to_string(spec.num_topk_groups) +
        ": exceeds num_groups = " + std::to_string(spec.num_groups));
  }
  return Status::Ok();
}

const std::vector<QuantType>& AllQuantTypes() {
  static const std::vector<QuantType>* const all = new std::vector<QuantType>{
      QuantType::kBf16, QuantType::kW8A8,  QuantType::kW8A8Dynamic,
      QuantType::kW4A8, QuantType::kMxfp8, QuantType::kMxfp4};
  return *all;
}

std::string_view QuantTypeName(QuantType quant) {
  switch (quant) {
    case QuantType::kBf16:
      return "bf16";
    case QuantType::kW8A8:
      return "w8a8";
    case QuantType::kW8A8Dynamic:
      return "w8a8-dynamic";
    case QuantType::kW4A8:
      return "w4a8";
    case QuantType::kMxfp8:
      return "mxfp8";
    case QuantType::kMxfp4:
      return "mxfp4";
  }
  return "unknown";
}

StatusOr<QuantType> ParseQuantType(std::string_view name) {
  const std::string wanted = Lower(name);
  std::string valid;
  for (QuantType quant : AllQuantTypes()) {
    if (QuantTypeName(quant) == wanted) return quant;
    if (!valid.empty()) valid += ", ";
    valid += QuantTypeName(quant);
  }
  return InvalidArgumentError("unknown quant type '" + std::string(name) +
                              "' (valid: " + valid + ")");
}

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kBf16:
      return "bf16";
    case DType::kInt8:
      return "int8";
    case DType::kInt4x2:
      return "int4x2";
    case DType::kFp8E4M3:
      return "float8_e4m3";
    case DType::kFp4E2M1x2:
      return "float4_e2m1x2";
    case DType::kE8M0:
      return "float8_e8m0";
    case DType::kFp32:
      return "fp32";
  }
  return "unknown";
}

std::vector<ExpertTensor> ExpertTensors(const ModelSpec& spec,
                                        QuantType quant) {
  const int64_t h = spec.hidden_size;
  const int64_t i = spec.expert_ffn_size;
  // Each projection: {name prefix, output dim, input dim}.
  struct Proj {
    const char* name;
    int64_t out;
    int64_t in;
  };
  const Proj projs[2] = {{"w13", 2 * i, h}, {"w2", h, i}};
  std::vector<ExpertTensor> tensors;
  auto add = [&](std::string name, DType dtype, std::vector<int64_t> shape,
                 int64_t elem_bytes) {
    int64_t n = elem_bytes;
    for (int64_t d : shape) n *= d;
    tensors.push_back(
        ExpertTensor{std::move(name), dtype, std::move(shape), n});
  };
  for (const Proj& p : projs) {
    const std::string w = std::string(p.name) + "_weight";
    switch (quant) {
      case QuantType::kBf16:
        add(w, DType::kBf16, {p.out, p.in}, 2);
        break;
      case QuantType::kW8A8:
      case QuantType::kW8A8Dynamic:
        add(w, DType::kInt8, {p.out, p.in}, 1);
        add(w + "_scale", DType::kFp32, {p.out}, 4);
        break;
      case QuantType::kW4A8:
        add(w, DType::kInt4x2, {p.out, CeilDiv(p.in, 2)}, 1);
        add(w + "_scale", DType::kFp32, {p.out}, 4);
        add(w + "_scale_bias", DType::kFp32, {p.out}, 4);
        break;
      case QuantType::kMxfp8:
        add(w, DType::kFp8E4M3, {p.out, p.in}, 1);
        add(w + "_scale", DType::kE8M0, {p.out, CeilDiv(p.in, 32)}, 1);
        break;
      case QuantType::kMxfp4:
        add(w, DType::kFp4E2M1x2, {p.out, CeilDiv(p.in, 2)}, 1);
        add(w + "_scale", DType::kE8M0, {p.out, CeilDiv(p.in, 32)}, 1);
        break;
    }
  }
  return tensors;
}

int64_t ExpertBytes(const ModelSpec& spec, QuantType quant) {
  int64_t total = 0;
  for (const ExpertTensor& t : ExpertTensors(spec, quant)) total += t.num_bytes;
  return total;
}

}  // namespace eplb
