// Reads an expert map through the installed eplb package and prints the
// routing an engine's MoE kernel would use on rank 1.
#include <cstdio>

#include "eplb/io.h"
#include "eplb/placement.h"
#include "eplb/topology.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: consumer MAP.json\n");
    return 2;
  }
  eplb::StatusOr<eplb::Placement> map = eplb::ReadExpertMapJson(argv[1], {});
  if (!map.ok()) {
    std::fprintf(stderr, "consumer: %s\n", map.status().message().c_str());
    return 1;
  }
  eplb::StatusOr<eplb::Topology> topology = eplb::MakeTopology(
      map->num_experts(), map->num_ranks(), map->slots_per_rank());
  if (!topology.ok()) return 1;
  eplb::LayerRouting routing =
      eplb::BuildLayerRouting(map->layer(0), map->num_experts(), *topology);
  std::printf("rank 1 expert_map:");
  for (int e = 0; e < map->num_experts(); ++e)
    std::printf(" %d", routing.ExpertMap(1, e));
  std::printf("\n");
  return 0;
}
