#include "eplb/sim/expert_ffn.h"

#include <cstring>

#include "core/splitmix.h"

namespace eplb {

void TokenActivation(int64_t step, int layer, int expert, int64_t occurrence,
                     float* x) {
  uint64_t state = static_cast<uint64_t>(step) * 0x9e3779b97f4a7c15ULL ^
                   (static_cast<uint64_t>(layer) << 48) ^
                   (static_cast<uint64_t>(expert) << 32) ^
                   static_cast<uint64_t>(occurrence);
  for (int i = 0; i < kFfnModel; i += 2) {
    const uint64_t bits = internal::SplitMix64(&state);
    x[i] = static_cast<float>(bits >> 40) * 0x1p-23f - 1.0f;
    if (i + 1 < kFfnModel) {
      x[i + 1] = static_cast<float>((bits >> 8) & 0xffffff) * 0x1p-23f - 1.0f;
    }
  }
}

void ExpertFfn(std::span<const std::byte> weights, const float* x, float* y) {
  float w[2 * kFfnModel * kFfnHidden];
  std::memcpy(w, weights.data(), sizeof(w));
  const float* w1 = w;                           // [kFfnHidden][kFfnModel]
  const float* w2 = w + kFfnModel * kFfnHidden;  // [kFfnModel][kFfnHidden]
  float h[kFfnHidden];
  for (int j = 0; j < kFfnHidden; ++j) {
    float acc = 0.0f;
    for (int i = 0; i < kFfnModel; ++i) acc += w1[j * kFfnModel + i] * x[i];
    h[j] = acc > 0.0f ? acc : 0.0f;
  }
  for (int i = 0; i < kFfnModel; ++i) {
    float acc = 0.0f;
    for (int j = 0; j < kFfnHidden; ++j) acc += w2[i * kFfnHidden + j] * h[j];
    y[i] = acc;
  }
}

}  // namespace eplb
