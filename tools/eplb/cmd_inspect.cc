// eplb inspect: per-layer imbalance of a map (default: the initial
// placement) under a load.
#include <cstdio>
#include <memory>

#include "cli_util.h"
#include "eplb/io.h"
#include "eplb/load.h"
#include "eplb/placement.h"

namespace eplb::cli {
namespace {

struct InspectFlags {
  std::string load_path;
  std::string map_path;
  TopologyFlags topology;
  bool json = false;
};

int RunInspect(const InspectFlags& f) {
  StatusOr<LoadTrace> trace = ReadLoadFile(f.load_path);
  if (!trace.ok()) return Fail(trace.status());
  const LoadMatrix load = trace->Aggregate();
  StatusOr<Topology> topology = f.topology.Make(load.num_experts());
  if (!topology.ok()) return Fail(topology.status());
  StatusOr<Placement> placement = MapOrInitial(f.map_path, load.num_layers(),
                                               load.num_experts(), *topology);
  if (!placement.ok()) return Fail(placement.status());
  StatusOr<ImbalanceReport> report = ComputeImbalance(*placement, load);
  if (!report.ok()) return Fail(report.status());
  const int redundant = topology->NumRedundant(load.num_experts());
  if (f.json) {
    PrintJson({{"load", f.load_path},
               {"map", f.map_path.empty() ? "initial" : f.map_path},
               {"steps", trace->num_steps()},
               {"layers", load.num_layers()},
               {"experts", load.num_experts()},
               {"ranks", topology->num_ranks},
               {"ranks_per_node", topology->ranks_per_node},
               {"slots_per_rank", topology->slots_per_rank},
               {"redundant", redundant},
               {"imbalance_mean", report->mean},
               {"imbalance_max", report->max},
               {"balancedness_mean", report->balancedness_mean},
               {"excess_mean", report->excess_mean},
               {"per_layer", report->per_layer}});
    return 0;
  }
  std::printf("load:   %s (%d steps, %d layers x %d experts)\n",
              f.load_path.c_str(), trace->num_steps(), load.num_layers(),
              load.num_experts());
  std::printf("layout: %d ranks x %d slots = %d (%d redundant), %d node(s)\n",
              topology->num_ranks, topology->slots_per_rank,
              topology->num_slots(), redundant, topology->num_nodes());
  std::printf("map:    %s\n\n", f.map_path.empty()
                                    ? "initial placement (spec 3.2)"
                                    : f.map_path.c_str());
  std::printf("layer  max/mean\n");
  for (size_t l = 0; l < report->per_layer.size(); ++l) {
    std::printf("%5zu  %8.4f\n", l, report->per_layer[l]);
  }
  std::printf(
      "\nimbalance (max/mean rank load): mean %.4f, worst layer %.4f\n"
      "balancedness (mean/max): %.4f; excess ((max-mean)/mean): %.4f\n",
      report->mean, report->max, report->balancedness_mean,
      report->excess_mean);
  return 0;
}

}  // namespace

void AddInspectCommand(CLI::App* app, int* exit_code) {
  auto f = std::make_shared<InspectFlags>();
  CLI::App* cmd = app->add_subcommand(
      "inspect",
      "Per-layer imbalance of a map (default: initial placement) under a load");
  cmd->add_option("--load", f->load_path,
                  "Load file: trace CSV or SGLang logical_count JSON")
      ->required();
  f->topology.Register(cmd, /*require=*/true);
  cmd->add_option("--map", f->map_path, "Expert-map JSON (vllm-ascend layout)");
  cmd->add_flag("--json", f->json, "Print one JSON object");
  cmd->callback([f, exit_code] { *exit_code = RunInspect(*f); });
}

}  // namespace eplb::cli
