// The simulator's expert computation: a small feed-forward network per
// expert, run on the weights a slot holds, so that a replay proves every
// migration by its outputs.
//
// The FFN's weights W1 [kFfnHidden][kFfnModel] and W2 [kFfnModel]
// [kFfnHidden] are folded from every byte of the expert's stored tensors,
// so that a byte wrong anywhere in a migrated expert changes them: the
// bytes, read as little-endian 32-bit words (the last one zero-padded), are
// summed modulo 2^32 into kFfnLanes lanes (word i into lane i mod
// kFfnLanes); each lane's sum gives two weights, its low and its high 16
// bits, each v -> v * 2^-15 - 1 in [-1, 1). Any change of one word changes
// its lane's sum, so at least one weight. Then y = W2 · relu(W1 · x).
//
// A token's activation x is a deterministic function of (step, layer,
// expert, occurrence): the occurrence-th token of that expert in that step,
// counting every rank's tokens in physical-slot order. The same weights and
// the same x give the same y, bit for bit, on every machine (plain loops in
// a fixed order, no threads).
#ifndef EPLB_SIM_EXPERT_FFN_H_
#define EPLB_SIM_EXPERT_FFN_H_

#include <cstddef>
#include <cstdint>
#include <span>

namespace eplb {

inline constexpr int kFfnModel = 8;
inline constexpr int kFfnHidden = 16;
inline constexpr int kFfnWeightCount = 2 * kFfnModel * kFfnHidden;
inline constexpr int kFfnLanes = kFfnWeightCount / 2;

// W1 then W2, row-major.
struct FfnWeights {
  float w[kFfnWeightCount];
};

// Folds the expert's stored bytes (every tensor, in order) into its FFN
// weights.
void FoldExpertWeights(std::span<const std::byte> expert, FfnWeights* out);

// x [kFfnModel] of the given token, floats in [-1, 1).
void TokenActivation(int64_t step, int layer, int expert, int64_t occurrence,
                     float* x);
// y [kFfnModel] = W2 · relu(W1 · x).
void ExpertFfn(const FfnWeights& weights, const float* x, float* y);
// The first `n` floats of `a` and `b` are the same bit for bit.
bool SameBits(const float* a, const float* b, int n);

}  // namespace eplb

#endif  // EPLB_SIM_EXPERT_FFN_H_
