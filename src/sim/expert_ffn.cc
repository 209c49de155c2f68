#include "eplb/sim/expert_ffn.h"

#include <bit>

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

void FoldExpertWeights(std::span<const std::byte> expert, FfnWeights* out) {
  uint32_t lane[kFfnLanes] = {};
  const size_t words = expert.size() / 4;
  const size_t full = words / kFfnLanes * kFfnLanes;
  const auto* p = reinterpret_cast<const unsigned char*>(expert.data());
  auto word = [p](size_t i) {
    // Little-endian on every machine.
    return static_cast<uint32_t>(p[4 * i]) |
           static_cast<uint32_t>(p[4 * i + 1]) << 8 |
           static_cast<uint32_t>(p[4 * i + 2]) << 16 |
           static_cast<uint32_t>(p[4 * i + 3]) << 24;
  };
  for (size_t base = 0; base < full; base += kFfnLanes) {
    for (int j = 0; j < kFfnLanes; ++j) lane[j] += word(base + j);
  }
  for (size_t i = full; i < words; ++i) lane[i - full] += word(i);
  if (expert.size() % 4 != 0) {
    uint32_t last = 0;
    for (size_t b = words * 4; b < expert.size(); ++b) {
      last |= static_cast<uint32_t>(p[b]) << (8 * (b - words * 4));
    }
    lane[words % kFfnLanes] += last;
  }
  for (int j = 0; j < kFfnLanes; ++j) {
    out->w[2 * j] = static_cast<float>(lane[j] & 0xffff) * 0x1p-15f - 1.0f;
    out->w[2 * j + 1] = static_cast<float>(lane[j] >> 16) * 0x1p-15f - 1.0f;
  }
}

void ExpertFfn(const FfnWeights& weights, const float* x, float* y) {
  const float* w1 = weights.w;  // [kFfnHidden][kFfnModel]
  const float* w2 =
      weights.w + kFfnModel * kFfnHidden;  // [kFfnModel][kFfnHidden]
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

bool SameBits(const float* a, const float* b, int n) {
  for (int i = 0; i < n; ++i) {
    if (std::bit_cast<uint32_t>(a[i]) != std::bit_cast<uint32_t>(b[i])) {
      return false;
    }
  }
  return true;
}

}  // namespace eplb
