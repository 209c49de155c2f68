// ExpertWeights: the engine's expert weights as the controller and the
// migration engine see them. This is the seam an inference engine
// implements over its own tensors; the simulator implements it over a
// synthetic store (eplb/sim/synthetic_weights.h). The library never
// allocates expert weights of its own.
//
// Per rank this process hosts, per MoE layer and physical slot: the
// expert's tensors, num_tensors() buffers laid out as the model and its
// quantisation lay them out (for example w13, w2 and their scales), each of
// the same byte size in every slot of a layer. Plus staging buffers, per
// hosted rank, that incoming experts land in before their layer commits:
// staging_per_rank() of them, each with the same tensors.
//
// Threads: Slot() and Staging() are called from the transport's threads
// while layers migrate (a migrating layer's slot buffers are only read
// then); CommitStaging() from the serving thread, between forward steps.
#ifndef EPLB_WEIGHTS_H_
#define EPLB_WEIGHTS_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace eplb {

class ExpertWeights {
 public:
  virtual ~ExpertWeights() = default;

  // Whether this process holds the buffers of `rank` (a process hosts one
  // rank in an engine, every rank in a single-process simulation).
  virtual bool Hosts(int rank) const = 0;
  // Tensors per expert (>= 1).
  virtual int num_tensors() const = 0;
  // Tensor `tensor` of the expert in (rank, layer, slot); rank hosted.
  virtual std::span<const std::byte> Slot(int rank, int layer, int slot,
                                          int tensor) const = 0;
  // Staging buffers per hosted rank (>= 1).
  virtual int staging_per_rank() const = 0;
  // Tensor `tensor` of staging buffer `index` of `rank`; empty when index
  // is out of range.
  virtual std::span<std::byte> Staging(int rank, int index, int tensor) = 0;
  // Makes the contents of staging buffer `index` of `rank` the weights of
  // (layer, slot): a pointer swap or a copy, as the engine's layout allows.
  // The staging buffer's contents are undefined afterwards.
  virtual void CommitStaging(int rank, int index, int layer, int slot) = 0;
  // The allocations that hold every slot and staging buffer of `rank`, when
  // the engine has a few (a pool, a tensor per layer), so that a transport
  // can register them once (the MPI transport's window); empty (the
  // default) when it does not say, and a transport registers buffers one at
  // a time.
  virtual std::vector<std::span<std::byte>> Regions(int rank) {
    static_cast<void>(rank);
    return {};
  }
};

// The checksum of `bytes`, continuing from `seed`. Deterministic and the
// same on every platform (words are read little-endian); any change
// confined to one 8-byte word (a flipped byte, say) changes it, since every
// step is a bijection of both its state and its input word. Whole blocks of
// kChecksumBlockBytes go through 32 independent 64-bit lanes built on 32x32-bit
// multiplications, side by side in SIMD registers where the CPU has them
// (AVX2, chosen at run time; the same value without), so that it runs at
// memory speed; each block's lanes are folded into the running value; the
// tail after the last whole block word by word, then byte by byte. Chaining it
// over consecutive pieces gives the checksum of the whole as long as every
// piece but the last is a multiple of the block:
//   ChecksumBytes(b, s) ==
//       ChecksumBytes(b.subspan(k), ChecksumBytes(b.first(k), s))
// for every k that is a multiple of kChecksumBlockBytes.
inline constexpr size_t kChecksumBlockBytes = 4096;
inline constexpr uint64_t kChecksumSeed = 0xcbf29ce484222325ULL;
uint64_t ChecksumBytes(std::span<const std::byte> bytes,
                       uint64_t seed = kChecksumSeed);
// The checksum of an expert: ChecksumBytes chained over its tensors in
// order, from kChecksumSeed. Never 0.
uint64_t SlotChecksum(const ExpertWeights& weights, int rank, int layer,
                      int slot);
uint64_t StagingChecksum(ExpertWeights& weights, int rank, int index);

// SlotChecksum a piece at a time, for a sender that interleaves it with
// other work (the MPI transport computes it while the expert's data is in
// flight). The slot must stay unchanged until done().
class SlotChecksumCursor {
 public:
  SlotChecksumCursor(const ExpertWeights& weights, int rank, int layer,
                     int slot)
      : weights_(&weights), rank_(rank), layer_(layer), slot_(slot) {}
  // Reads about `max_bytes` more (whole blocks, at least one, and a
  // tensor's tail with its last block); true once the whole expert is read.
  bool Advance(size_t max_bytes);
  bool done() const { return tensor_ >= weights_->num_tensors(); }
  // SlotChecksum(weights, rank, layer, slot); valid once done().
  uint64_t value() const { return h_ | 1; }

 private:
  const ExpertWeights* weights_;
  int rank_, layer_, slot_;
  int tensor_ = 0;
  size_t offset_ = 0;  // Read of tensor_ so far.
  uint64_t h_ = kChecksumSeed;
};

}  // namespace eplb

#endif  // EPLB_WEIGHTS_H_
