#include "eplb/load.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace eplb {
namespace {

TEST(LoadTest, RankLoadsSplitReplicasEvenly) {
  // Fixture layer: experts 7 and 2 have two replicas.
  std::vector<int32_t> layer = {7, 2, 0, 3, 5, 6, 1, 4, 7, 2};
  std::vector<double> load = {1, 2, 10, 3, 4, 5, 6, 20};
  std::vector<double> ranks = RankLoads(layer, load, 2, 5);
  EXPECT_DOUBLE_EQ(ranks[0], 10 + 5 + 1 + 3 + 5);
  EXPECT_DOUBLE_EQ(ranks[1], 6 + 2 + 4 + 10 + 5);
  EXPECT_DOUBLE_EQ(LayerImbalance(layer, load, 2, 5), 27.0 / 25.5);
}

TEST(LoadTest, AllZeroLayerIsBalanced) {
  std::vector<int32_t> layer = {0, 1, 2, 3};
  std::vector<double> load(4, 0.0);
  EXPECT_EQ(LayerImbalance(layer, load, 2, 2), 1.0);
}

TEST(LoadTest, StepImbalanceIsTheMeanOverSteps) {
  // 1 layer, 2 ranks x 2 slots, experts {0, 1} on rank 0 and {2, 3} on 1.
  Placement p(1, 2, 2, 4);
  const std::vector<int32_t> layer = {0, 1, 2, 3};
  std::copy(layer.begin(), layer.end(), p.mutable_layer(0).begin());
  LoadTrace samples(3, 1, 4);
  samples.at(0, 0, 0) = 3.0;  // Rank loads 3 and 1: 3 / 2.
  samples.at(0, 0, 2) = 1.0;
  samples.at(1, 0, 1) = 2.0;  // 2 and 2: 1.
  samples.at(1, 0, 3) = 2.0;
  // Step 2 has no load: it counts 1.
  EXPECT_DOUBLE_EQ(StepImbalance(p, 0, samples), (1.5 + 1.0 + 1.0) / 3);
  EXPECT_DOUBLE_EQ(StepImbalance(p, 0, LoadTrace(0, 1, 4)), 1.0);
}

TEST(LoadTest, StepImbalanceSplitsWholeTokensAsTheDefaultDispatch) {
  // 2 ranks x 2 slots: expert 0 on both ranks (slot 0 first), 1 on rank 0,
  // 2 on rank 1.
  Placement p(1, 2, 2, 3);
  const std::vector<int32_t> layer = {0, 1, 0, 2};
  std::copy(layer.begin(), layer.end(), p.mutable_layer(0).begin());
  LoadTrace samples(2, 1, 3);
  // 3 tokens of expert 0: 2 to its first replica (rank 0), 1 to rank 1.
  samples.at(0, 0, 0) = 3.0;
  // 1 token of 0 (to rank 0) and 1 of 2 (rank 1): balanced.
  samples.at(1, 0, 0) = 1.0;
  samples.at(1, 0, 2) = 1.0;
  EXPECT_DOUBLE_EQ(StepImbalance(p, 0, samples), (2.0 / 1.5 + 1.0) / 2);
  // Loads that are not whole numbers are split evenly: 1.5 and 1.5, then
  // 0.75 and 0.75 + 1.
  samples.at(0, 0, 1) = 0.0;
  samples.at(1, 0, 0) = 1.5;
  EXPECT_DOUBLE_EQ(StepImbalance(p, 0, samples), (1.0 + 1.75 / 1.25) / 2);
}

TEST(LoadTest, ComputeImbalanceReportsAllMeasures) {
  Placement p = Placement::Initial(2, 4, Topology{2, 2, 2});
  LoadMatrix load(2, 4);
  load.at(0, 0) = 3;  // Rank loads 3 / 1: max/mean 1.5.
  load.at(0, 2) = 1;
  load.at(1, 1) = 1;  // Rank loads 1 / 1.
  load.at(1, 3) = 1;
  StatusOr<ImbalanceReport> r = ComputeImbalance(p, load);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->per_layer, (std::vector<double>{1.5, 1.0}));
  EXPECT_DOUBLE_EQ(r->mean, 1.25);
  EXPECT_DOUBLE_EQ(r->max, 1.5);
  EXPECT_DOUBLE_EQ(r->balancedness_mean, (1 / 1.5 + 1) / 2);
  EXPECT_DOUBLE_EQ(r->excess_mean, 0.25);
  LoadMatrix wrong(3, 4);
  StatusOr<ImbalanceReport> bad = ComputeImbalance(p, wrong);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(
      bad.status().message().find("load has 3 layers x 4 experts but the map "
                                  "has 2 layers x 4 experts"),
      std::string::npos);
}

TEST(LoadTest, TraceAggregatesWindows) {
  LoadTrace t(3, 1, 2);
  for (int s = 0; s < 3; ++s) {
    t.at(s, 0, 0) = s + 1;
    t.at(s, 0, 1) = 10 * (s + 1);
  }
  LoadMatrix all = t.Aggregate();
  EXPECT_EQ(all.at(0, 0), 6);
  EXPECT_EQ(all.at(0, 1), 60);
  LoadMatrix last2 = t.Aggregate(1, 3);
  EXPECT_EQ(last2.at(0, 0), 5);
  LoadMatrix clamped = t.Aggregate(-5, 99);
  EXPECT_EQ(clamped, all);
  EXPECT_EQ(TraceFromAggregate(all).Aggregate(), all);
}

TEST(LoadTest, ValidateLoadNamesTheCell) {
  LoadMatrix m(2, 3);
  EXPECT_TRUE(ValidateLoad(m).ok());
  m.at(1, 2) = std::numeric_limits<double>::quiet_NaN();
  EXPECT_NE(ValidateLoad(m).message().find("layer 1, expert 2 is NaN"),
            std::string::npos);
  m.at(1, 2) = -1;
  EXPECT_NE(ValidateLoad(m).message().find("layer 1, expert 2 is -1"),
            std::string::npos);
  LoadTrace t(2, 1, 1);
  t.at(1, 0, 0) = std::numeric_limits<double>::infinity();
  EXPECT_NE(ValidateLoad(t).message().find("step 1, layer 0, expert 0 is inf"),
            std::string::npos);
}

}  // namespace
}  // namespace eplb
