// Robust static maps: one placement planned for several recorded loads
// (workloads), so that it holds across them rather than fitting one.
//
// A map planned from one workload's load fits that workload and overfits it:
// another workload of the same phase meets clearly more imbalance on it.
// PlanRobust plans one placement for W loads at once. Every load is
// normalised per layer to the same total (a long recording does not outweigh
// a short one), and the plan minimises, layer by layer, a quantile over the
// workloads of their max/mean rank load (quantile 1: the worst workload),
// not the imbalance of their sum. docs/robust_maps.md describes the method
// and its measured figures.
//
// Also here: the heat file that recording mode accumulates, one workload
// per recorded run, and its reader and writer.
//
// Pure functions of their inputs: the same inputs give a bit-identical
// placement (ties go to the lower id; no hashing, no pointer order; the same
// for any thread count). Thread-safe (no shared state).
#ifndef EPLB_ROBUST_H_
#define EPLB_ROBUST_H_

#include <string>
#include <string_view>
#include <vector>

#include "eplb/load.h"
#include "eplb/placement.h"
#include "eplb/status.h"
#include "eplb/topology.h"

namespace eplb {

struct RobustPlanOptions {
  // Which workload a layer is planned for: the quantile q over the
  // workloads' max/mean rank loads, by nearest rank (the ceil(q * W)-th
  // smallest). 1 = the worst workload (min-max); 0.5 = the median one.
  // In (0, 1].
  double quantile = 1.0;
  // Expert groups, for the hierarchical DefaultEplb candidate (nodes > 1).
  int num_groups = 1;
  // Local-search moves per layer and start, at most (each lowers the
  // objective); 0 = no local search (the best start is kept).
  int max_moves_per_layer = 4096;
  // Threads that plan layers in parallel (the calling thread is one); any
  // count gives the same placement, bit for bit.
  int num_threads = 1;
};

// One layer's outcome.
struct RobustLayer {
  // The objective (the chosen quantile over the workloads of their max/mean)
  // of the best start before the local search, and of the plan.
  double start_objective = 1.0;
  double objective = 1.0;
  int moves = 0;  // Local-search moves applied.
  int start = 0;  // Which start won (index into RobustPlan::starts).
};

struct RobustPlan {
  Placement placement;  // [L][R][K]; passes CheckPlacement.
  // [W][L]: the max/mean rank load of each workload on each layer under
  // `placement` (1 where a workload has no load on a layer).
  std::vector<std::vector<double>> imbalance;
  std::vector<RobustLayer> layers;  // [L]
  std::vector<std::string> starts;  // Names of the starting plans.
};

// Plans one placement for all of `loads` (each [L][E], the same shape) on
// `topology`. InvalidArgument when `loads` is empty, the shapes disagree
// (naming both loads by index), a load holds a negative or non-finite value,
// the topology cannot hold the experts, or an option is out of range
// (naming it and its value). A layer without load in any workload keeps the
// initial placement.
StatusOr<RobustPlan> PlanRobust(const std::vector<LoadMatrix>& loads,
                                const Topology& topology,
                                const RobustPlanOptions& options = {});

// The quantile of `values` by nearest rank: the ceil(q * n)-th smallest
// (q in (0, 1], n >= 1). The objective PlanRobust minimises, per layer.
double NearestRankQuantile(std::vector<double> values, double q);

// Per-workload figures of a placement: for each load, the mean over layers
// and the worst layer of max/mean rank load. Precondition: shapes agree.
struct WorkloadImbalance {
  double mean = 1.0;
  double worst = 1.0;
};
std::vector<WorkloadImbalance> SummariseWorkloads(
    const Placement& placement, const std::vector<LoadMatrix>& loads);

// The heat file: recorded loads, one per workload (a recording run adds
// one), as JSON:
//   {"eplb_heat": 1, "num_layers": L, "num_experts": E,
//    "workloads": [{"steps": S, "load": [[...E numbers...] x L]}, ...]}
// `steps`: how many collected steps the workload's load sums (informative).
struct HeatFile {
  int num_layers = 0;
  int num_experts = 0;
  std::vector<LoadMatrix> loads;  // [W], each [L][E].
  std::vector<int64_t> steps;     // [W]
};
// Parses and checks the whole file: the version, the shape (every workload
// L x E; L and E >= 1), finite non-negative numbers; InvalidArgument names
// the first problem (workload, layer, expert).
StatusOr<HeatFile> ParseHeatFile(std::string_view text);
// ReadFileToString + ParseHeatFile; messages start with the path.
StatusOr<HeatFile> ReadHeatFile(const std::string& path);
// Deterministic JSON (numbers printed exactly: they read back equal).
std::string HeatFileToJson(const HeatFile& heat);
// HeatFileToJson written atomically (WriteFileAtomic): a file already there
// is replaced whole or left as it was.
Status WriteHeatFile(const std::string& path, const HeatFile& heat);

}  // namespace eplb

#endif  // EPLB_ROBUST_H_
