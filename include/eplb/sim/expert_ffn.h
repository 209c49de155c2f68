// The simulator's expert computation: a small feed-forward network per
// expert, run on the weights a slot holds, so that a replay proves every
// migration by its outputs.
//
// An expert's stored bytes start with W1 [kFfnHidden][kFfnModel] and W2
// [kFfnModel][kFfnHidden], little-endian floats (SyntheticWeights' content),
// and y = W2 · relu(W1 · x). A token's activation x is a deterministic
// function of (step, layer, expert, occurrence): the occurrence-th token of
// that expert in that step, counting every rank's tokens in physical-slot
// order. The same weights and the same x give the same y, bit for bit, on
// every machine (plain loops in a fixed order, no threads).
#ifndef EPLB_SIM_EXPERT_FFN_H_
#define EPLB_SIM_EXPERT_FFN_H_

#include <cstddef>
#include <cstdint>
#include <span>

namespace eplb {

inline constexpr int kFfnModel = 8;
inline constexpr int kFfnHidden = 16;
// The bytes of an expert the FFN reads.
inline constexpr int64_t kFfnWeightBytes =
    int64_t{2} * kFfnModel * kFfnHidden * static_cast<int64_t>(sizeof(float));

// x [kFfnModel] of the given token, floats in [-1, 1).
void TokenActivation(int64_t step, int layer, int expert, int64_t occurrence,
                     float* x);
// y [kFfnModel] = W2 · relu(W1 · x); `weights` holds at least
// kFfnWeightBytes.
void ExpertFfn(std::span<const std::byte> weights, const float* x, float* y);

}  // namespace eplb

#endif  // EPLB_SIM_EXPERT_FFN_H_
