#include "eplb/rebalance.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>

namespace eplb {
namespace {

// DeepSeek's README example: 2 layers x 12 experts, 16 replicas, 4 groups,
// 2 nodes of 4 GPUs.
LoadMatrix Example() {
  const double w[2][12] = {
      {90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86},
      {20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27}};
  LoadMatrix load(2, 12);
  for (int l = 0; l < 2; ++l) {
    for (int e = 0; e < 12; ++e) load.at(l, e) = w[l][e];
  }
  return load;
}

RebalanceRequest Request(const LoadMatrix& load) {
  RebalanceRequest r;
  r.weight = &load;
  r.num_replicas = 16;
  r.num_groups = 4;
  r.num_nodes = 2;
  r.num_gpus = 8;
  return r;
}

TEST(RebalanceExpertsTest, DeepSeekShapesAndMeaning) {
  const LoadMatrix load = Example();
  StatusOr<RebalanceResult> r = RebalanceExperts(Request(load));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->phy2log.size(), 2u * 16);
  EXPECT_EQ(r->max_replicas, 5);
  EXPECT_EQ(r->log2phy.size(), 2u * 12 * 5);
  EXPECT_EQ(r->logcnt.size(), 2u * 12);
  for (int l = 0; l < 2; ++l) {
    int64_t total = 0;
    for (int e = 0; e < 12; ++e) {
      const int64_t cnt = r->logcnt[static_cast<size_t>(l * 12 + e)];
      EXPECT_GE(cnt, 1);
      total += cnt;
      for (int k = 0; k < 5; ++k) {
        const int64_t phy =
            r->log2phy[static_cast<size_t>((l * 12 + e) * 5 + k)];
        if (k < cnt) {
          EXPECT_EQ(r->phy2log[static_cast<size_t>(l * 16 + phy)], e);
        } else {
          EXPECT_EQ(phy, -1);
        }
      }
    }
    EXPECT_EQ(total, 16);
    for (int rank = 0; rank < 8; ++rank) {
      std::set<int64_t> on_rank;
      for (int s = 0; s < 2; ++s) {
        EXPECT_TRUE(
            on_rank
                .insert(r->phy2log[static_cast<size_t>(l * 16 + rank * 2 + s)])
                .second);
      }
    }
  }
}

TEST(RebalanceExpertsTest, IncrementalFromCurrent) {
  const LoadMatrix load = Example();
  StatusOr<RebalanceResult> first = RebalanceExperts(Request(load));
  ASSERT_TRUE(first.ok());
  RebalanceRequest again = Request(load);
  again.policy = "swift";
  again.current = first->phy2log;
  StatusOr<RebalanceResult> second = RebalanceExperts(again);
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  // From a balanced plan, swift changes little and never for the worse.
  int changed = 0;
  for (size_t i = 0; i < first->phy2log.size(); ++i) {
    changed += first->phy2log[i] != second->phy2log[i] ? 1 : 0;
  }
  EXPECT_LE(changed, 4);
  for (const LayerPlan& layer : second->plan.layers) {
    EXPECT_LE(layer.predicted_imbalance, layer.current_imbalance + 1e-12);
  }
}

TEST(RebalanceExpertsTest, BadArgumentsNameThemselves) {
  const LoadMatrix load = Example();
  struct Case {
    int replicas, groups, nodes, gpus;
    const char* want;
  } cases[] = {{15, 4, 2, 8, "num_replicas = 15"},
               {8, 4, 2, 8, "num_replicas = 8"},
               {16, 4, 3, 8, "num_nodes = 3"},
               {16, 0, 2, 8, "num_groups = 0"},
               {16, 4, 2, 0, "num_gpus = 0"}};
  for (const Case& c : cases) {
    RebalanceRequest r = Request(load);
    r.num_replicas = c.replicas;
    r.num_groups = c.groups;
    r.num_nodes = c.nodes;
    r.num_gpus = c.gpus;
    StatusOr<RebalanceResult> got = RebalanceExperts(r);
    ASSERT_FALSE(got.ok()) << c.want;
    EXPECT_NE(got.status().message().find(c.want), std::string::npos)
        << got.status().message();
  }
  std::vector<int64_t> bad(2 * 16, 0);
  RebalanceRequest r = Request(load);
  r.current = bad;
  EXPECT_FALSE(RebalanceExperts(r).ok());
  bad.resize(5);
  r.current = bad;
  EXPECT_NE(RebalanceExperts(r).status().message().find("current"),
            std::string::npos);
}

}  // namespace
}  // namespace eplb
