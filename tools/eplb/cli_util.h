// Plumbing shared by the eplb subcommands (not part of the library): error
// reporting, topology flags, JSON output. Each command translates library
// Status into its one-line stderr message here, in one place.
#ifndef EPLB_TOOLS_EPLB_CLI_UTIL_H_
#define EPLB_TOOLS_EPLB_CLI_UTIL_H_

#include <CLI/CLI.hpp>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "eplb/placement.h"
#include "eplb/status.h"
#include "eplb/topology.h"

namespace eplb::cli {

// Exit codes: 0 success, 1 bad input or failed check, 2 bad command line.
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

// Checks an integer flag: a whole number in [min, max]. Its message names
// the value and the bounds as written ("-3 is not an integer in [0,
// 2147483647]"), not as CLI11's floating-point ranges print them.
CLI::Validator IntRange(int64_t min, int64_t max);
// IntRange(min, the largest int).
CLI::Validator IntAtLeast(int64_t min);
// Checks a fraction flag: a number in (0, 1] ("1.5 is not a number in (0,
// 1]").
CLI::Validator FractionInUnitInterval();

// Prints "eplb: <message>" on stderr and returns kExitFailure.
int Fail(const Status& status);
int Fail(const std::string& message);

// Prints `j` as exactly one JSON object on one line of stdout.
void PrintJson(const nlohmann::json& j);

// The --ranks / --slots-per-rank / --redundant / --ranks-per-node flags.
struct TopologyFlags {
  int ranks = 0;
  int slots_per_rank = 0;
  int redundant = -1;  // -1: not given.
  int ranks_per_node = 0;

  // Registers the flags on `cmd`; `--ranks` is required when `require`.
  void Register(CLI::App* cmd, bool require);
  // Exactly one of --slots-per-rank and --redundant; builds and checks.
  StatusOr<Topology> Make(int num_experts) const;
};

// The map at `path` checked against the load's layers and experts and the
// topology, or the default initial placement when `path` is empty.
StatusOr<Placement> MapOrInitial(const std::string& path, int num_layers,
                                 int num_experts, const Topology& topology);

// The subcommands; each registers itself and returns the callback result
// through `*exit_code`.
void AddInspectCommand(CLI::App* app, int* exit_code);
void AddValidateMapCommand(CLI::App* app, int* exit_code);
void AddConvertCommand(CLI::App* app, int* exit_code);
void AddModelsCommand(CLI::App* app, int* exit_code);
void AddPlanCommand(CLI::App* app, int* exit_code);
void AddReplayCommand(CLI::App* app, int* exit_code);

}  // namespace eplb::cli

#endif  // EPLB_TOOLS_EPLB_CLI_UTIL_H_
