#include "eplb/model.h"

#include <gtest/gtest.h>

namespace eplb {
namespace {

TEST(ModelTest, PresetsExistAndAreValid) {
  for (const char* name :
       {"deepseek-v3", "deepseek-v3.1", "deepseek-r1", "qwen3-235b-a22b",
        "qwen3-30b-a3b", "deepseek-v2-lite"}) {
    SCOPED_TRACE(name);
    StatusOr<ModelSpec> spec = FindModelPreset(name);
    ASSERT_TRUE(spec.ok()) << spec.status().ToString();
    EXPECT_EQ(spec->name, name);
    EXPECT_TRUE(ValidateModelSpec(*spec).ok());
  }
  EXPECT_EQ(ModelPresets().size(), 6u);
}

TEST(ModelTest, PresetLookupIsCaseInsensitiveAndListsValidNames) {
  EXPECT_TRUE(FindModelPreset("DeepSeek_V3").ok());
  StatusOr<ModelSpec> bad = FindModelPreset("llama");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("'llama'"), std::string::npos);
  EXPECT_NE(bad.status().message().find("qwen3-30b-a3b"), std::string::npos);
}

TEST(ModelTest, DeepSeekV3Geometry) {
  ModelSpec spec = *FindModelPreset("deepseek-v3");
  EXPECT_EQ(spec.num_moe_layers, 58);
  EXPECT_EQ(spec.num_dense_layers, 3);
  EXPECT_EQ(spec.num_experts, 256);
  EXPECT_EQ(spec.top_k, 8);
  EXPECT_EQ(spec.num_groups, 8);
  EXPECT_EQ(spec.num_topk_groups, 4);
}

// Exact bytes per DeepSeek-V3 expert.
TEST(ModelTest, DeepSeekV3BytesPerExpert) {
  ModelSpec spec = *FindModelPreset("deepseek-v3");
  EXPECT_EQ(ExpertBytes(spec, QuantType::kBf16), 88080384);
  EXPECT_EQ(ExpertBytes(spec, QuantType::kW8A8), 44085248);
  EXPECT_EQ(ExpertBytes(spec, QuantType::kW8A8Dynamic), 44085248);
  EXPECT_EQ(ExpertBytes(spec, QuantType::kMxfp8), 45416448);
  EXPECT_EQ(ExpertBytes(spec, QuantType::kMxfp4), 23396352);
  // int4 weights + fp32 scale and scale bias per output channel.
  EXPECT_EQ(ExpertBytes(spec, QuantType::kW4A8),
            44040192 / 2 + (2 * 2048 + 7168) * 4 * 2);
}

TEST(ModelTest, TensorListsHaveShapesAndDtypes) {
  ModelSpec spec = *FindModelPreset("deepseek-v3");
  std::vector<ExpertTensor> t = ExpertTensors(spec, QuantType::kMxfp4);
  ASSERT_EQ(t.size(), 4u);
  EXPECT_EQ(t[0].name, "w13_weight");
  EXPECT_EQ(t[0].dtype, DType::kFp4E2M1x2);
  EXPECT_EQ(t[0].shape, (std::vector<int64_t>{4096, 3584}));
  EXPECT_EQ(t[1].name, "w13_weight_scale");
  EXPECT_EQ(t[1].dtype, DType::kE8M0);
  EXPECT_EQ(t[1].shape, (std::vector<int64_t>{4096, 224}));
  EXPECT_EQ(t[2].name, "w2_weight");
  EXPECT_EQ(t[2].shape, (std::vector<int64_t>{7168, 1024}));
  EXPECT_EQ(t[3].shape, (std::vector<int64_t>{7168, 64}));
  std::vector<ExpertTensor> bf16 = ExpertTensors(spec, QuantType::kBf16);
  ASSERT_EQ(bf16.size(), 2u);
  EXPECT_EQ(bf16[0].num_bytes, 4096LL * 7168 * 2);
  std::vector<ExpertTensor> w8 = ExpertTensors(spec, QuantType::kW8A8);
  ASSERT_EQ(w8.size(), 4u);
  EXPECT_EQ(w8[1].name, "w13_weight_scale");
  EXPECT_EQ(w8[1].num_bytes, 4096 * 4);
}

TEST(ModelTest, PartialBlocksRoundUp) {
  ModelSpec spec{.name = "custom",
                 .num_moe_layers = 1,
                 .num_experts = 4,
                 .top_k = 1,
                 .hidden_size = 33,
                 .expert_ffn_size = 3};
  // w13 [6][33]: 17 packed bytes a row, 2 scale blocks; w2 [33][3]: 2 bytes, 1
  // block.
  EXPECT_EQ(ExpertBytes(spec, QuantType::kMxfp4),
            6 * 17 + 6 * 2 + 33 * 2 + 33 * 1);
}

TEST(ModelTest, QuantNamesRoundTrip) {
  for (QuantType q : AllQuantTypes()) {
    StatusOr<QuantType> parsed = ParseQuantType(QuantTypeName(q));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, q);
  }
  EXPECT_EQ(*ParseQuantType("W8A8_Dynamic"), QuantType::kW8A8Dynamic);
  StatusOr<QuantType> bad = ParseQuantType("int3");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("'int3'"), std::string::npos);
}

TEST(ModelTest, ValidateCustomSpecNamesTheField) {
  ModelSpec spec = *FindModelPreset("deepseek-v3");
  spec.num_groups = 7;
  Status s = ValidateModelSpec(spec);
  EXPECT_NE(s.message().find("num_groups = 7"), std::string::npos)
      << s.message();
  spec = *FindModelPreset("deepseek-v3");
  spec.top_k = 300;
  EXPECT_NE(ValidateModelSpec(spec).message().find("top_k = 300"),
            std::string::npos);
  spec = *FindModelPreset("deepseek-v3");
  spec.hidden_size = 0;
  EXPECT_NE(ValidateModelSpec(spec).message().find("hidden_size = 0"),
            std::string::npos);
}

TEST(ModelTest, ModelForShapeFindsThePresetOrSaysItMadeOne) {
  std::string note;
  const ModelSpec v3 = ModelForShape(58, 256, &note);
  EXPECT_EQ(v3.name, "deepseek-v3");
  EXPECT_TRUE(note.empty());
  const ModelSpec custom = ModelForShape(3, 4, &note);
  EXPECT_EQ(custom.name, "custom");
  EXPECT_EQ(custom.num_moe_layers, 3);
  EXPECT_EQ(custom.num_experts, 4);
  EXPECT_LE(custom.top_k, 4);
  EXPECT_EQ(custom.hidden_size,
            FindModelPreset("deepseek-v2-lite")->hidden_size);
  EXPECT_NE(note.find("3 layers x 4 experts"), std::string::npos) << note;
  EXPECT_TRUE(ValidateModelSpec(custom).ok());
}

}  // namespace
}  // namespace eplb
