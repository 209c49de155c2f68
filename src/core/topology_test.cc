#include "eplb/topology.h"

#include <gtest/gtest.h>

namespace eplb {
namespace {

TEST(TopologyTest, FromSlotsAndFromRedundant) {
  StatusOr<Topology> t = MakeTopology(256, 32, 9, 8);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->num_slots(), 288);
  EXPECT_EQ(t->num_nodes(), 4);
  EXPECT_EQ(t->NodeOf(17), 2);
  EXPECT_EQ(t->NumRedundant(256), 32);
  StatusOr<Topology> u = MakeTopologyFromRedundant(256, 32, 32, 8);
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(*t, *u);
  // ranks_per_node = 0: one node.
  EXPECT_EQ(MakeTopology(8, 2, 5)->num_nodes(), 1);
}

TEST(TopologyTest, ErrorsShowTheArithmetic) {
  struct Case {
    StatusOr<Topology> got;
    const char* expected;
  };
  Case cases[] = {
      {MakeTopologyFromRedundant(256, 32, 30), "(256 + 30) % 32 = 30"},
      {MakeTopologyFromRedundant(256, 32, -1), "redundant = -1"},
      {MakeTopology(256, 32, 7), "32 * 7 = 224 < experts = 256"},
      {MakeTopology(8, 2, 9), "slots_per_rank = 9 > experts = 8"},
      {MakeTopology(256, 32, 9, 5),
       "ranks_per_node = 5: must divide ranks = 32"},
      {MakeTopology(256, 0, 9), "ranks = 0"},
      {MakeTopology(256, 32, 0), "slots_per_rank = 0"},
      {MakeTopology(0, 32, 9), "experts = 0"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.expected);
    ASSERT_FALSE(c.got.ok());
    EXPECT_EQ(c.got.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(c.got.status().message().find(c.expected), std::string::npos)
        << c.got.status().message();
  }
}

TEST(TopologyTest, LimitsAreErrorsNotAllocations) {
  EXPECT_EQ(MakeTopology(64, 100000, 1, 0).status().message(),
            "ranks = 100000: exceeds the limit of 4096 ranks");
  // experts + redundant overflowing int once made a negative slot count.
  EXPECT_EQ(MakeTopologyFromRedundant(64, 1, 2147483647, 0).status().message(),
            "redundant = 2147483647: experts + redundant = 2147483711 slots "
            "exceeds the limit of 1048576 slots per layer");
  EXPECT_EQ(MakeTopology(1024, 4096, 512, 0).status().message(),
            "ranks * slots_per_rank = 2097152: exceeds the limit of 1048576 "
            "slots per layer");
}

}  // namespace
}  // namespace eplb
