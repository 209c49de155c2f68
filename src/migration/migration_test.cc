#include "eplb/migration.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "eplb/sim/synthetic_weights.h"

namespace eplb {
namespace {

Placement Layers(std::vector<std::vector<int32_t>> layers, int ranks, int k,
                 int e) {
  Placement p(static_cast<int>(layers.size()), ranks, k, e);
  for (size_t l = 0; l < layers.size(); ++l) {
    std::copy(layers[l].begin(), layers[l].end(),
              p.mutable_layer(static_cast<int>(l)).begin());
  }
  return p;
}

TEST(PlanTransfersTest, LocalNodeAndSpreadRules) {
  // 4 ranks x 2 slots, 2 ranks per node, experts 0..5.
  const Topology t = *MakeTopology(6, 4, 2, 2);
  const std::vector<int32_t> cur = {0, 1, 2, 3, 4, 5, 0, 2};
  // Rank 1 slot 1 takes 0 (holders: rank 0 same node, rank 3 other node);
  // rank 2 slot 0 takes 1 (only on rank 0, other node);
  // rank 3 slot 0 takes 2: rank 3 holds 2 already (slot 1)? No: it keeps 2 in
  // slot 1 and gains 2 nowhere; use 3 instead, held by rank 1 only.
  const std::vector<int32_t> next = {0, 1, 2, 0, 1, 5, 3, 2};
  std::vector<Transfer> plan = PlanLayerTransfers(7, cur, next, t, 1000);
  ASSERT_EQ(plan.size(), 3u);
  // Sorted by (src, dst, dst_slot).
  EXPECT_EQ(plan[0], (Transfer{7, 0, 0, 0, 1, 1, 0, false, 1000}));
  EXPECT_EQ(plan[1], (Transfer{7, 1, 0, 1, 2, 0, 0, false, 1000}));
  EXPECT_EQ(plan[2], (Transfer{7, 3, 1, 1, 3, 0, 0, false, 1000}));
}

TEST(PlanTransfersTest, SendsSpreadOverHoldersAndLocalCopies) {
  // Expert 0 on ranks 0 and 1; ranks 2 and 3 each receive it.
  const Topology t = *MakeTopology(8, 4, 2);
  const std::vector<int32_t> cur = {0, 1, 0, 2, 3, 4, 5, 6};
  const std::vector<int32_t> next = {0, 1, 0, 2, 0, 4, 0, 6};
  std::vector<Transfer> plan = PlanLayerTransfers(0, cur, next, t, 1);
  ASSERT_EQ(plan.size(), 2u);
  EXPECT_NE(plan[0].src_rank, plan[1].src_rank) << "both sends from one holder";
  // A local copy: rank 0 moves expert 1 from slot 1 to slot 0 (not a plan
  // the policies make, but the engine handles it).
  const std::vector<int32_t> swap = {1, 0, 0, 2, 3, 4, 5, 6};
  plan = PlanLayerTransfers(0, cur, swap, t, 1);
  ASSERT_EQ(plan.size(), 2u);
  EXPECT_TRUE(plan[0].local && plan[1].local);
}

// Remembers the transfers of every batch it starts.
class RecordingTransport final : public Transport {
 public:
  explicit RecordingTransport(std::unique_ptr<Transport> inner)
      : inner_(std::move(inner)) {}
  StatusOr<std::unique_ptr<TransferBatch>> Start(
      std::span<const Transfer> transfers, ExpertWeights* weights) override {
    last.assign(transfers.begin(), transfers.end());
    return inner_->Start(transfers, weights);
  }
  std::vector<Transfer> last;

 private:
  std::unique_ptr<Transport> inner_;
};

struct Rig {
  Topology topology = *MakeTopology(8, 2, 5);
  Placement initial =
      Layers({{7, 2, 0, 3, 5, 6, 1, 4, 7, 2}, {0, 1, 2, 3, 4, 5, 6, 7, 0, 1}},
             2, 5, 8);
  std::unique_ptr<Transport> transport;
  RecordingTransport* recorder = nullptr;
  std::unique_ptr<SyntheticWeights> store;
  std::unique_ptr<MigrationEngine> engine;

  explicit Rig(FaultOptions faults = {}, int64_t timeout_nanos = 10'000'000'000,
               int staging_per_rank = 0, Clock* clock = nullptr) {
    auto recording = std::make_unique<RecordingTransport>(
        WrapWithFaults(*CreateInProcessTransport({.num_threads = 2}), faults));
    recorder = recording.get();
    transport = std::move(recording);
    store = *SyntheticWeights::Create(
        SyntheticWeightsOptions{
            .topology = topology,
            .num_layers = 2,
            .num_experts = 8,
            .real_expert_bytes = 88080384,
            .memory_budget_bytes = 1 << 20,
            .staging_per_rank = staging_per_rank > 0 ? staging_per_rank : 5},
        initial);
    engine = *MigrationEngine::Create(
        MigrationOptions{.topology = topology,
                         .num_layers = 2,
                         .num_experts = 8,
                         .real_expert_bytes = 88080384,
                         .weights = store.get(),
                         .transport = transport.get(),
                         .clock = clock,
                         .timeout_nanos = timeout_nanos},
        initial);
  }
};

TEST(MigrationTest, CommitsAVerifiedLayer) {
  Rig rig;
  EXPECT_TRUE((*rig.store).Verify(rig.initial).ok());
  EXPECT_GT((*rig.store).scale(), 1);  // 88 MB experts scaled down.
  // Layer 1: rank 0 gets 7 in place of 4, rank 1 gets 4 in place of 1.
  const std::vector<int32_t> target = {0, 1, 2, 3, 7, 5, 6, 7, 0, 4};
  ASSERT_TRUE(rig.engine->Start(1, target).ok());
  EXPECT_EQ(rig.engine->Wait(), MigrationEngine::State::kCommitted);
  EXPECT_EQ(rig.engine->Poll(), MigrationEngine::State::kIdle);
  Placement expected = rig.initial;
  std::copy(target.begin(), target.end(), expected.mutable_layer(1).begin());
  EXPECT_EQ(rig.engine->placement(), expected);
  EXPECT_TRUE((*rig.store).Verify(expected).ok());
  EXPECT_EQ(rig.engine->stats().experts_moved, 2);
  EXPECT_EQ(rig.engine->stats().bytes_moved, 2 * 88080384LL);
}

TEST(MigrationTest, PollDoesNotBlockAndAnotherLayerWaits) {
  // The copies take 50 ms on the injected clock, which stands still until
  // the test moves it: a Poll that waited for them would never return.
  ManualClock clock;
  Rig rig(FaultOptions{.delay_nanos = 50'000'000, .clock = &clock},
          10'000'000'000, 0, &clock);
  const std::vector<int32_t> target = {0, 1, 2, 3, 7, 5, 6, 7, 0, 4};
  ASSERT_TRUE(rig.engine->Start(1, target).ok());
  EXPECT_EQ(rig.engine->Poll(), MigrationEngine::State::kInFlight);
  EXPECT_EQ(rig.engine->Start(0, rig.initial.layer(0)).code(),
            StatusCode::kFailedPrecondition);
  clock.Advance(50'000'000);
  EXPECT_EQ(rig.engine->Wait(), MigrationEngine::State::kCommitted);
}

TEST(MigrationTest, FailedTransferKeepsTheOldLayer) {
  Rig rig(FaultOptions{.fail_every = 2});
  const std::vector<int32_t> target = {0, 1, 2, 3, 7, 5, 6, 7, 0, 4};
  ASSERT_TRUE(rig.engine->Start(1, target).ok());
  EXPECT_EQ(rig.engine->Wait(), MigrationEngine::State::kAborted);
  EXPECT_EQ(rig.engine->last_error().code(), StatusCode::kUnavailable);
  EXPECT_EQ(rig.engine->placement(), rig.initial);
  EXPECT_TRUE((*rig.store).Verify(rig.initial).ok()) << "live weights touched";
  EXPECT_EQ(rig.engine->stats().layers_aborted, 1);
}

TEST(MigrationTest, CorruptedTransferIsCaughtByChecksum) {
  Rig rig(FaultOptions{.corrupt_every = 1});
  const std::vector<int32_t> target = {0, 1, 2, 3, 7, 5, 6, 7, 0, 4};
  ASSERT_TRUE(rig.engine->Start(1, target).ok());
  EXPECT_EQ(rig.engine->Wait(), MigrationEngine::State::kAborted);
  EXPECT_EQ(rig.engine->last_error().code(), StatusCode::kDataLoss);
  EXPECT_NE(rig.engine->last_error().message().find("checksum mismatch"),
            std::string::npos);
  EXPECT_TRUE((*rig.store).Verify(rig.initial).ok());
}

TEST(MigrationTest, TimeoutAbortsWithoutBlockingAndDrains) {
  // Copies of 200 ms against a timeout of 1 ms, on the injected clock.
  ManualClock clock;
  Rig rig(FaultOptions{.delay_nanos = 200'000'000, .clock = &clock},
          /*timeout_nanos=*/1'000'000, 0, &clock);
  const std::vector<int32_t> target = {0, 1, 2, 3, 7, 5, 6, 7, 0, 4};
  ASSERT_TRUE(rig.engine->Start(1, target).ok());
  EXPECT_EQ(rig.engine->Poll(), MigrationEngine::State::kInFlight);
  clock.Advance(2'000'000);  // Past the timeout, the copies still running.
  EXPECT_EQ(rig.engine->Poll(), MigrationEngine::State::kAborted);
  EXPECT_EQ(rig.engine->last_error().code(), StatusCode::kDeadlineExceeded);
  // The staging buffers drain before they are used again.
  EXPECT_EQ(rig.engine->Start(1, target).code(), StatusCode::kUnavailable);
  EXPECT_EQ(rig.engine->placement(), rig.initial);
  clock.Advance(200'000'000);  // The copies end (the engine waits for them).
}

TEST(MigrationTest, RejectsInvalidTargets) {
  Rig rig;
  // Expert 3 nowhere, 7 twice on rank 0.
  const std::vector<int32_t> bad = {7, 1, 2, 7, 4, 5, 6, 7, 0, 1};
  Status s = rig.engine->Start(1, bad);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("layer 1"), std::string::npos) << s.message();
}

// Both layers of the rig moved: in layer 0 rank 0 takes 6 and 1 in place of
// 7 and 2 (2 receives); layer 1 as in CommitsAVerifiedLayer (1 receive on
// each rank).
Placement TwoLayerTarget(const Placement& initial) {
  Placement target = initial;
  const std::vector<int32_t> zero = {6, 1, 0, 3, 5, 6, 1, 4, 7, 2};
  const std::vector<int32_t> one = {0, 1, 2, 3, 7, 5, 6, 7, 0, 4};
  std::copy(zero.begin(), zero.end(), target.mutable_layer(0).begin());
  std::copy(one.begin(), one.end(), target.mutable_layer(1).begin());
  return target;
}

TEST(MigrationTest, ABatchOfLayersCommitsTogether) {
  Rig rig;
  const Placement target = TwoLayerTarget(rig.initial);
  const int layers[] = {1, 0};
  ASSERT_TRUE(rig.engine->StartLayers(layers, target).ok());
  EXPECT_EQ(rig.engine->in_flight_layers(), std::vector<int>({1, 0}));
  EXPECT_EQ(rig.engine->Wait(), MigrationEngine::State::kCommitted);
  EXPECT_EQ(rig.engine->committed_layers(), std::vector<int>({1, 0}));
  EXPECT_TRUE(rig.engine->aborted_layers().empty());
  EXPECT_EQ(rig.engine->placement(), target);
  EXPECT_TRUE((*rig.store).Verify(target).ok());
  EXPECT_EQ(rig.engine->stats().layers_committed, 2);
}

TEST(MigrationTest, ABatchMustFitTheStagingBuffers) {
  // Two staging buffers per rank: layer 0's two receives on rank 0 fill
  // them, so layer 1's cannot join the batch.
  Rig rig({}, 10'000'000'000, /*staging_per_rank=*/2);
  const Placement target = TwoLayerTarget(rig.initial);
  const int layers[] = {0, 1};
  const Status s = rig.engine->StartLayers(layers, target);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("staging buffers"), std::string::npos)
      << s.message();
  EXPECT_EQ(rig.engine->in_flight_layer(), -1);  // Nothing started.
  const int first[] = {0};
  ASSERT_TRUE(rig.engine->StartLayers(first, target).ok());
  EXPECT_EQ(rig.engine->Wait(), MigrationEngine::State::kCommitted);
}

TEST(MigrationTest, AFaultInABatchAbortsOnlyItsLayer) {
  // The batch's 4 transfers, by (source, destination): 0->1 layer 1's
  // expert 4, then 1->0 layer 0's experts 6 and 1 and layer 1's expert 7.
  // The 4th is corrupted: layer 1 aborts, layer 0 commits.
  Rig rig(FaultOptions{.corrupt_every = 4});
  const Placement target = TwoLayerTarget(rig.initial);
  const int layers[] = {0, 1};
  ASSERT_TRUE(rig.engine->StartLayers(layers, target).ok());
  EXPECT_EQ(rig.engine->Wait(), MigrationEngine::State::kAborted);
  EXPECT_EQ(rig.engine->aborted_layers(), std::vector<int>({1}));
  EXPECT_EQ(rig.engine->committed_layers(), std::vector<int>({0}));
  const int bad = 1;
  const int good = 0;
  EXPECT_EQ(rig.engine->last_error().code(), StatusCode::kDataLoss);
  Placement expected = rig.initial;
  std::copy(target.layer(good).begin(), target.layer(good).end(),
            expected.mutable_layer(good).begin());
  EXPECT_EQ(rig.engine->placement(), expected);
  EXPECT_TRUE((*rig.store).Verify(expected).ok())
      << "layer " << bad << " lost weights";
}

TEST(MigrationTest, AVerifiedTransferTeachesTheExpertsChecksum) {
  Rig rig;
  EXPECT_EQ(rig.engine->known_checksum(1, 7), 0u);
  // Layer 1: rank 0 gets 7 (from rank 1), rank 1 gets 4 (from rank 0).
  const std::vector<int32_t> first = {0, 1, 2, 3, 7, 5, 6, 7, 0, 4};
  ASSERT_TRUE(rig.engine->Start(1, first).ok());
  for (const Transfer& t : rig.recorder->last) {
    EXPECT_EQ(t.source_checksum, 0u) << "nothing is known yet";
  }
  ASSERT_EQ(rig.engine->Wait(), MigrationEngine::State::kCommitted);
  EXPECT_EQ(rig.engine->known_checksum(1, 7),
            rig.store->ExpectedChecksum(1, 7));
  EXPECT_EQ(rig.engine->known_checksum(1, 4),
            rig.store->ExpectedChecksum(1, 4));
  EXPECT_EQ(rig.engine->known_checksum(1, 0), 0u) << "never moved";
  EXPECT_EQ(rig.engine->known_checksum(0, 7), 0u) << "another layer";
  // Rank 0's slot 0 (expert 0, also on rank 1) takes 4, from rank 1: the
  // transfer carries the learnt checksum and commits.
  const std::vector<int32_t> second = {4, 1, 2, 3, 7, 5, 6, 7, 0, 4};
  ASSERT_TRUE(rig.engine->Start(1, second).ok());
  ASSERT_EQ(rig.recorder->last.size(), 1u);
  EXPECT_EQ(rig.recorder->last[0].source_checksum,
            rig.store->ExpectedChecksum(1, 4));
  EXPECT_EQ(rig.engine->Wait(), MigrationEngine::State::kCommitted);
  Placement expected = rig.initial;
  std::copy(second.begin(), second.end(), expected.mutable_layer(1).begin());
  EXPECT_TRUE(rig.store->Verify(expected).ok());
}

TEST(MigrationTest, ASourceThatChangedSinceItsChecksumWasLearntIsCaught) {
  Rig rig;
  const std::vector<int32_t> first = {0, 1, 2, 3, 7, 5, 6, 7, 0, 4};
  ASSERT_TRUE(rig.engine->Start(1, first).ok());
  ASSERT_EQ(rig.engine->Wait(), MigrationEngine::State::kCommitted);
  // Expert 4's only copy (rank 1, slot 4) goes bad in memory. A sender that
  // checksummed its source again would vouch for the bad bytes; the learnt
  // checksum does not.
  std::span<const std::byte> live = rig.store->Slot(1, 1, 4, 0);
  const_cast<std::byte&>(live[live.size() / 3]) ^= std::byte{0x10};
  const std::vector<int32_t> second = {4, 1, 2, 3, 7, 5, 6, 7, 0, 4};
  ASSERT_TRUE(rig.engine->Start(1, second).ok());
  EXPECT_EQ(rig.engine->Wait(), MigrationEngine::State::kAborted);
  EXPECT_EQ(rig.engine->last_error().code(), StatusCode::kDataLoss);
  EXPECT_EQ(rig.engine->known_checksum(1, 4), 0u) << "learnt afresh";
  Placement expected = rig.initial;
  std::copy(first.begin(), first.end(), expected.mutable_layer(1).begin());
  EXPECT_EQ(rig.engine->placement(), expected);
}

TEST(SyntheticWeightsTest, EveryTensorScaledAlike) {
  const ModelSpec v3 = *FindModelPreset("deepseek-v3");
  const Topology t = *MakeTopology(8, 2, 5);
  const std::vector<ExpertTensor> tensors =
      ExpertTensors(v3, QuantType::kMxfp4);
  std::unique_ptr<SyntheticWeights> store = *SyntheticWeights::Create(
      SyntheticWeightsOptions{
          .topology = t,
          .num_layers = 2,
          .num_experts = 8,
          .real_expert_bytes = ExpertBytes(v3, QuantType::kMxfp4),
          .tensors = tensors,
          .memory_budget_bytes = 4 << 20,
          .staging_per_rank = 5},
      Placement::Initial(2, 8, t));
  ASSERT_EQ(store->tensors().size(), tensors.size());
  int64_t offset = 0, real = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const SyntheticWeights::StoredTensor& x = store->tensors()[i];
    EXPECT_EQ(x.name, tensors[i].name);
    EXPECT_EQ(x.offset, offset);
    EXPECT_EQ(x.real_bytes, tensors[i].num_bytes);
    EXPECT_EQ(x.offset % 8, 0);
    // Scaled by the store's factor, rounded up to 8 bytes.
    EXPECT_GE(x.stored_bytes * store->scale(), x.real_bytes);
    EXPECT_LT((x.stored_bytes - 8) * store->scale(), x.real_bytes);
    offset += x.stored_bytes;
    real += x.real_bytes;
  }
  EXPECT_EQ(offset, store->stored_expert_bytes());
  EXPECT_EQ(real, 23396352);
  // 2 ranks x (2 layers x 5 slots + 5 staging) buffers within 4 MiB.
  EXPECT_LE(store->stored_expert_bytes() * 30, 4 << 20);
  // Tensors that do not add up to the expert are refused.
  EXPECT_EQ(SyntheticWeights::Create(
                SyntheticWeightsOptions{.topology = t,
                                        .num_layers = 2,
                                        .num_experts = 8,
                                        .real_expert_bytes = 1000,
                                        .tensors = tensors},
                Placement::Initial(2, 8, t))
                .status()
                .code(),
            StatusCode::kInvalidArgument);
}

TEST(SyntheticWeightsTest, AProcessHostsSomeRanksAtTheSameScale) {
  const Topology t = *MakeTopology(8, 2, 5);
  const Placement initial = Placement::Initial(2, 8, t);
  SyntheticWeightsOptions o{.topology = t,
                            .num_layers = 2,
                            .num_experts = 8,
                            .real_expert_bytes = 1 << 20,
                            .memory_budget_bytes = 1 << 20};
  std::unique_ptr<SyntheticWeights> all = *SyntheticWeights::Create(o, initial);
  o.hosted_ranks = {1};
  std::unique_ptr<SyntheticWeights> one = *SyntheticWeights::Create(o, initial);
  EXPECT_TRUE(all->Hosts(0) && all->Hosts(1));
  EXPECT_FALSE(one->Hosts(0));
  EXPECT_TRUE(one->Hosts(1));
  // Every process stores an expert in the same bytes, whatever it hosts.
  EXPECT_EQ(one->stored_expert_bytes(), all->stored_expert_bytes());
  EXPECT_TRUE(one->Slot(0, 0, 0, 0).empty());
  EXPECT_TRUE(one->Staging(0, 0, 0).empty());
  EXPECT_EQ(SlotChecksum(*one, 1, 1, 3), SlotChecksum(*all, 1, 1, 3));
  EXPECT_EQ(SlotChecksum(*one, 1, 1, 3),
            one->ExpectedChecksum(1, initial.at(1, 1, 3)));
  EXPECT_TRUE(one->Verify(initial).ok());
  o.hosted_ranks = {2};
  EXPECT_EQ(SyntheticWeights::Create(o, initial).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(RoutingTableTest, ReadersSeeWholeTables) {
  const Topology t = *MakeTopology(8, 2, 5);
  const Placement a = Placement::Initial(1, 8, t);
  std::vector<int32_t> b(a.layer(0).begin(), a.layer(0).end());
  std::reverse(b.begin(), b.end());
  RoutingTable table(a, t);
  std::atomic<bool> stop{false};
  std::atomic<int64_t> reads{0};
  std::thread reader([&] {
    while (!stop.load()) {
      std::shared_ptr<const LayerRouting> r = table.Get(0);
      int total = 0;
      for (int32_t c : r->replica_count) total += c;
      ASSERT_EQ(total, 10);
      // log2phy of every rank points at a replica of the right expert.
      for (int rank = 0; rank < 2; ++rank) {
        for (int e = 0; e < 8; ++e) {
          const int32_t phy = r->Log2Phy(rank, e);
          ASSERT_GE(phy, 0);
        }
      }
      ++reads;
    }
  });
  // Until the reader has read often, however late it got the core (an even
  // number of publishes leaves table `a`).
  for (int i = 0; i < 2000 || reads.load() < 100 || i % 2 == 1; ++i) {
    table.Publish(0, i % 2 ? std::span<const int32_t>(a.layer(0))
                           : std::span<const int32_t>(b));
    std::this_thread::yield();
  }
  stop = true;
  reader.join();
  EXPECT_GT(reads.load(), 0);
  EXPECT_EQ(table.Get(0)->Log2Phy(0, 0), 0);
}

}  // namespace
}  // namespace eplb
