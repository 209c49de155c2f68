// eplb models: the model presets with bytes per expert for every quant type.
#include <cstdio>

#include "cli_util.h"
#include "eplb/model.h"

namespace eplb::cli {
namespace {

nlohmann::json ModelJson(const ModelSpec& spec) {
  nlohmann::json bytes = nlohmann::json::object();
  nlohmann::json tensors = nlohmann::json::object();
  for (QuantType q : AllQuantTypes()) {
    const std::string name(QuantTypeName(q));
    bytes[name] = ExpertBytes(spec, q);
    nlohmann::json list = nlohmann::json::array();
    for (const ExpertTensor& t : ExpertTensors(spec, q)) {
      list.push_back({{"name", t.name},
                      {"dtype", std::string(DTypeName(t.dtype))},
                      {"shape", t.shape},
                      {"bytes", t.num_bytes}});
    }
    tensors[name] = std::move(list);
  }
  return {{"name", spec.name},
          {"moe_layers", spec.num_moe_layers},
          {"dense_layers", spec.num_dense_layers},
          {"experts", spec.num_experts},
          {"shared_experts", spec.num_shared_experts},
          {"top_k", spec.top_k},
          {"groups", spec.num_groups},
          {"topk_groups", spec.num_topk_groups},
          {"hidden_size", spec.hidden_size},
          {"expert_ffn_size", spec.expert_ffn_size},
          {"bytes_per_expert", std::move(bytes)},
          {"tensors", std::move(tensors)}};
}

int RunModels(bool json) {
  if (json) {
    nlohmann::json models = nlohmann::json::array();
    for (const ModelSpec& spec : ModelPresets())
      models.push_back(ModelJson(spec));
    PrintJson({{"models", std::move(models)}});
    return 0;
  }
  std::printf("%-17s %6s %7s %5s %6s %6s %5s", "model", "layers", "experts",
              "top-k", "groups", "hidden", "ffn");
  for (QuantType q : AllQuantTypes()) {
    std::printf(" %12s", std::string(QuantTypeName(q)).c_str());
  }
  std::printf("\n");
  for (const ModelSpec& s : ModelPresets()) {
    std::printf("%-17s %6d %7d %5d %6d %6lld %5lld", s.name.c_str(),
                s.num_moe_layers, s.num_experts, s.top_k, s.num_groups,
                static_cast<long long>(s.hidden_size),
                static_cast<long long>(s.expert_ffn_size));
    for (QuantType q : AllQuantTypes()) {
      std::printf(" %12lld", static_cast<long long>(ExpertBytes(s, q)));
    }
    std::printf("\n");
  }
  std::printf(
      "(bytes per routed expert: w13 [2I][H] + w2 [H][I] and their scales)\n");
  return 0;
}

}  // namespace

void AddModelsCommand(CLI::App* app, int* exit_code) {
  CLI::App* cmd = app->add_subcommand(
      "models",
      "List model presets with bytes per expert for every quant type");
  auto json = std::make_shared<bool>(false);
  cmd->add_flag("--json", *json, "Print one JSON object");
  cmd->callback([json, exit_code] { *exit_code = RunModels(*json); });
}

}  // namespace eplb::cli
