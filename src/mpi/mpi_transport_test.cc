// The MPI transport between processes, run under mpirun (CTest starts it
// with 4): every process runs every test, in the same order, since
// creating and destroying a transport are collective calls. Each test moves
// a batch in which every process sends to every other one, then checks on
// every process that each staging buffer it received into holds the
// sender's bytes and that every checksum agrees; then all processes agree
// that every one of them passed.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <span>
#include <vector>

#include "eplb/mpi.h"
#include "eplb/transport.h"
#include "eplb/weights.h"

namespace eplb {
namespace {

MpiJob* job = nullptr;

// The byte at `i` of tensor `tensor` of the expert that process `rank`
// holds in slot `slot`.
std::byte Pattern(int rank, int slot, int tensor, size_t i) {
  uint64_t x = (static_cast<uint64_t>(rank) << 40) ^
               (static_cast<uint64_t>(slot) << 24) ^
               (static_cast<uint64_t>(tensor) << 16) ^ i;
  x *= 0x9e3779b97f4a7c15ULL;
  return static_cast<std::byte>(x >> 56);
}

// One process's rank: `slots` slots (layer 0) and `staging` staging
// buffers, each expert `sizes.size()` tensors of those sizes. Pooled: every
// buffer in one allocation that Regions() names; otherwise each tensor of
// each buffer an allocation of its own and no regions (the transport then
// attaches buffers one at a time, a few dozen at most).
class TestWeights final : public ExpertWeights {
 public:
  TestWeights(int rank, std::vector<size_t> sizes, int slots, int staging,
              bool pooled)
      : rank_(rank), sizes_(std::move(sizes)), pooled_(pooled) {
    size_t expert = 0;
    for (size_t s : sizes_) expert += s;
    const size_t buffers =
        static_cast<size_t>(slots) + static_cast<size_t>(staging);
    if (pooled_) {
      pool_bytes_ = buffers * expert;
      pool_ = std::make_unique<std::byte[]>(pool_bytes_);
    }
    size_t at = 0;
    for (size_t b = 0; b < buffers; ++b) {
      std::vector<std::byte*> tensors;
      for (size_t s : sizes_) {
        if (pooled_) {
          tensors.push_back(pool_.get() + at);
          at += s;
        } else {
          own_.push_back(std::make_unique<std::byte[]>(s));
          tensors.push_back(own_.back().get());
        }
      }
      (b < static_cast<size_t>(slots) ? slots_ : staging_).push_back(tensors);
    }
    for (int s = 0; s < slots; ++s) {
      for (size_t x = 0; x < sizes_.size(); ++x) {
        for (size_t i = 0; i < sizes_[x]; ++i) {
          slots_[s][x][i] = Pattern(rank_, s, static_cast<int>(x), i);
        }
      }
    }
  }

  bool Hosts(int rank) const override { return rank == rank_; }
  int num_tensors() const override { return static_cast<int>(sizes_.size()); }
  std::span<const std::byte> Slot(int rank, int layer, int slot,
                                  int tensor) const override {
    if (rank != rank_ || layer != 0) return {};
    return {slots_[slot][tensor], sizes_[tensor]};
  }
  int staging_per_rank() const override {
    return static_cast<int>(staging_.size());
  }
  std::span<std::byte> Staging(int rank, int index, int tensor) override {
    if (rank != rank_ || index < 0 ||
        index >= static_cast<int>(staging_.size())) {
      return {};
    }
    return {staging_[index][tensor], sizes_[tensor]};
  }
  void CommitStaging(int rank, int index, int layer, int slot) override {
    if (rank == rank_ && layer == 0) std::swap(staging_[index], slots_[slot]);
  }
  std::vector<std::span<std::byte>> Regions(int rank) override {
    if (rank != rank_ || !pooled_) return {};
    return {{pool_.get(), pool_bytes_}};
  }

 private:
  int rank_;
  std::vector<size_t> sizes_;
  bool pooled_;
  std::unique_ptr<std::byte[]> pool_;
  size_t pool_bytes_ = 0;
  std::vector<std::unique_ptr<std::byte[]>> own_;
  std::vector<std::vector<std::byte*>> slots_, staging_;
};

// Every process sends `per_peer` experts to every other one; process p's
// k-th incoming expert lands in its staging buffer k.
std::vector<Transfer> AllToAll(int processes, int per_peer, int slots) {
  std::vector<Transfer> out;
  std::vector<int> next_staging(static_cast<size_t>(processes), 0);
  for (int j = 0; j < per_peer; ++j) {
    for (int src = 0; src < processes; ++src) {
      for (int dst = 0; dst < processes; ++dst) {
        if (src == dst) continue;
        Transfer t;
        t.expert = src * 1000 + j;
        t.src_rank = src;
        t.src_slot = (dst + j) % slots;
        t.dst_rank = dst;
        t.staging = next_staging[static_cast<size_t>(dst)]++;
        out.push_back(t);
      }
    }
  }
  return out;
}

// Whether every process passed (a collective call: every process makes it).
bool EveryProcess(bool mine) {
  std::vector<int64_t> v = {mine ? 0 : 1};
  EXPECT_TRUE(job->collective().AllReduceMax(v).ok());
  return v[0] == 0;
}

// Moves one batch and checks what landed on this process: the bytes, and
// every checksum. Whether all of it held.
bool MoveBatch(Transport& transport, const std::vector<Transfer>& transfers,
               size_t tensors, TestWeights* weights) {
  TestWeights& w = *weights;
  const int me = job->rank();
  StatusOr<std::unique_ptr<TransferBatch>> batch =
      transport.Start(transfers, &w);
  EXPECT_TRUE(batch.ok()) << batch.status().ToString();
  if (!batch.ok()) return false;
  (*batch)->Wait();
  bool ok = (*batch)->result().ok();
  EXPECT_TRUE(ok) << (*batch)->result().ToString();
  for (size_t i = 0; i < transfers.size(); ++i) {
    const Transfer& t = transfers[i];
    if (t.dst_rank != me) continue;
    for (size_t x = 0; x < tensors; ++x) {
      std::span<std::byte> got = w.Staging(me, t.staging, static_cast<int>(x));
      size_t wrong = 0;
      for (size_t b = 0; b < got.size(); ++b) {
        if (got[b] != Pattern(t.src_rank, t.src_slot, static_cast<int>(x), b)) {
          ++wrong;
        }
      }
      EXPECT_EQ(wrong, 0u) << "transfer " << i << " tensor " << x;
      ok = ok && wrong == 0;
    }
    EXPECT_NE((*batch)->landed_checksum(i), 0u);
    EXPECT_EQ((*batch)->landed_checksum(i), (*batch)->source_checksum(i))
        << "transfer " << i;
    EXPECT_EQ((*batch)->landed_checksum(i), StagingChecksum(w, me, t.staging));
    ok = ok && (*batch)->landed_checksum(i) == (*batch)->source_checksum(i);
  }
  return ok;
}

struct Case {
  MpiTransportOptions options;
  std::vector<size_t> sizes;
  int per_peer = 2;
  bool pooled = true;
  // Batches through the same transport; odd ones land in the staging
  // buffers in reverse order (other buffers to attach first).
  int batches = 1;
};

// Moves all-to-all batches with `c` and checks them on this process.
void MoveAndCheck(const Case& c) {
  const int me = job->rank();
  const int n = job->size();
  const int slots = 4;
  const int staging = c.per_peer * (n - 1);
  TestWeights w(me, c.sizes, slots, staging, c.pooled);
  StatusOr<std::unique_ptr<Transport>> transport =
      job->CreateTransport(c.options);
  ASSERT_TRUE(transport.ok()) << transport.status().ToString();
  bool ok = true;
  for (int round = 0; round < c.batches; ++round) {
    std::vector<Transfer> transfers = AllToAll(n, c.per_peer, slots);
    for (Transfer& t : transfers) {
      if (round % 2 == 1) t.staging = staging - 1 - t.staging;
      for (size_t x = 0; x < c.sizes.size(); ++x) {
        std::span<std::byte> s = w.Staging(me, t.staging, static_cast<int>(x));
        std::memset(s.data(), 0, s.size());
      }
    }
    ok = MoveBatch(**transport, transfers, c.sizes.size(), &w) && ok;
  }
  transport->reset();  // Collective: frees the window.
  EXPECT_TRUE(EveryProcess(ok));
}

// Three tensors of awkward sizes (not multiples of the chunk), several
// chunks each: half of them written one-sided.
TEST(MpiTransportTest, OneSidedChunksLandIntact) {
  const int64_t before = job->one_sided_bytes();
  MoveAndCheck({.options = {.max_in_flight = 4, .chunk_bytes = 8192},
                .sizes = {40000, 8, 20488}});
  EXPECT_TRUE(job->one_sided());
  EXPECT_GT(job->one_sided_bytes(), before);
}

// Experts of one chunk each: the chunks alternate per pair of processes,
// so every other expert between two processes is written one-sided.
TEST(MpiTransportTest, OneChunkExpertsAlternate) {
  const int64_t before = job->one_sided_bytes();
  MoveAndCheck({.options = {.max_in_flight = 16, .chunk_bytes = 65536},
                .sizes = {65536},
                .per_peer = 4});
  EXPECT_GT(job->one_sided_bytes(), before);
}

// No regions and more staging buffers than the window keeps attached:
// buffers are attached one at a time and evicted; what cannot be attached
// is sent. Everything lands.
TEST(MpiTransportTest, UnpooledBuffersAttachOneAtATime) {
  const int64_t before = job->one_sided_bytes();
  MoveAndCheck({.options = {.max_in_flight = 8, .chunk_bytes = 4096},
                .sizes = {12288, 4096},
                .per_peer = 16,
                .pooled = false,
                .batches = 2});
  EXPECT_GT(job->one_sided_bytes(), before);
}

// With one_sided off every chunk is sent.
TEST(MpiTransportTest, TwoSidedSendsEveryChunk) {
  const int64_t before = job->one_sided_bytes();
  MoveAndCheck(
      {.options = {.max_in_flight = 4, .chunk_bytes = 8192, .one_sided = false},
       .sizes = {40000, 20488}});
  EXPECT_FALSE(job->one_sided());
  EXPECT_EQ(job->one_sided_bytes(), before);
}

// A window of one message: the sender's one-sided chunks wait for the
// receiver's addresses without deadlock.
TEST(MpiTransportTest, WindowOfOne) {
  MoveAndCheck({.options = {.max_in_flight = 1, .chunk_bytes = 4096},
                .sizes = {16384},
                .per_peer = 3});
}

}  // namespace
}  // namespace eplb

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  eplb::StatusOr<std::unique_ptr<eplb::MpiJob>> job =
      eplb::MpiJob::Init(&argc, &argv);
  if (!job.ok()) {
    std::fprintf(stderr, "%s\n", job.status().ToString().c_str());
    return 1;
  }
  eplb::job = job->get();
  // Only the first process prints; every one runs and checks.
  if (eplb::job->rank() != 0) {
    testing::TestEventListeners& l =
        testing::UnitTest::GetInstance()->listeners();
    delete l.Release(l.default_result_printer());
  }
  const int failed = RUN_ALL_TESTS();
  std::vector<int64_t> any = {failed != 0 ? 1 : 0};
  const bool agreed = eplb::job->collective().AllReduceMax(any).ok();
  job->reset();
  return agreed && any[0] == 0 ? 0 : 1;
}
