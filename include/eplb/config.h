// The eplb_config object: modes, intervals, policy and the
// environment guard. Parsed and validated at the edge (start-up); nothing in
// the library reads the environment itself (ReadConfigEnv is the one place).
//
// Value types and pure functions: thread-safe.
#ifndef EPLB_CONFIG_H_
#define EPLB_CONFIG_H_

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "eplb/dispatch.h"
#include "eplb/status.h"

namespace eplb {

enum class EplbMode {
  kDisabled,   // No map, no balancing: the initial placement serves.
  kStatic,     // expert_map_path: a recorded map serves, never changes.
  kDynamic,    // dynamic_eplb: rebalance while serving.
  kRecording,  // expert_map_record_path: dynamic, and write the applied map.
};
std::string_view EplbModeName(EplbMode mode);  // "disabled", "static", ...

// Which steps count as heat: prefill steps have more than
// max_num_reqs tokens, decode steps at most that. Set by
// eplb_heat_collection_stage or by its newer vllm-ascend name,
// load_collection_phase (same values).
enum class HeatStage { kAll, kPrefill, kDecode };
std::string_view HeatStageName(HeatStage stage);  // "all", "prefill", "decode"

struct EplbConfig {
  bool dynamic_eplb = false;
  std::optional<std::string> expert_map_path = std::nullopt;
  std::optional<std::string> expert_map_record_path = std::nullopt;
  int expert_heat_collection_interval = 600;  // H, steps.
  int algorithm_execution_interval = 50;      // A, steps.
  int num_redundant_experts = 0;              // N.
  int eplb_policy_type = 2;                   // 0 Random .. 3 FlashLB.
  HeatStage eplb_heat_collection_stage = HeatStage::kAll;
  // eplb's own keys (vllm-ascend has none of these):
  // How the engine splits an expert's tokens over its replicas; the
  // policies plan for it ("rr" or "balanced", see eplb/dispatch.h).
  DispatchMode eplb_dispatch = DispatchMode::kRoundRobin;
  // The most a rebalance may move, as a fraction of all expert slots of the
  // model (L * R * K): layers are re-planned in order of predicted gain per
  // moved expert until it is spent. In (0, 1].
  double eplb_migration_budget = 0.25;
  // The first cycle ends its collection as soon as the heat shows an
  // imbalance clearly beyond sampling noise (at least 2 steps), instead of
  // waiting a whole heat interval on the cold initial placement.
  bool eplb_fast_warmup = true;
  // Any later cycle ends its collection as soon as the heat shows the
  // serving placement clearly worse than its plan predicted (the traffic
  // moved: a new domain, a burst), at least 2 steps in: in the whole window,
  // or in its newest 3 steps alone, which are then the window planned on.
  // With eplb_heat_during_migration, a plan that comes due when the steps
  // since its window show such a shift is dropped and they are planned on.
  // A shift that ends (a burst) is undone: a plan made on it is dropped when
  // due if the serving placement fits the steps since better, and once one
  // serves, the placement before it returns when it fits the newest steps
  // better; shift re-plans then rest for 4 heat intervals (bursty traffic).
  bool eplb_shift_replan = true;
  // The next heat window starts as soon as the last one is handed to the
  // planner and runs on while its plan is computed and migrated (the heat of
  // a layer that commits moves to its new slots, so no token is counted
  // under the wrong expert): a cycle every H steps, with plans from fresher
  // heat. false: the next window starts once the migration has ended, a
  // cycle every H + A + migration steps.
  bool eplb_heat_during_migration = true;
  // Device-to-device bandwidth (GB/s, one direction) the migration may use:
  // several changed layers commit in one step while the busiest receiving
  // rank's bytes fit in bandwidth x step time. 0: one layer per step.
  double eplb_link_gbytes_per_s = 0.0;
  // Threads the background planner uses (layers are planned in parallel;
  // the plan is the same for any count). >= 1.
  int eplb_planner_threads = 2;
  // Recording mode only: a heat file (eplb/robust.h) that accumulates the
  // load of every recording run, one workload per run. At shutdown the run
  // reads it (if present), appends its load, writes it back atomically and
  // writes to expert_map_record_path one robust map planned over every
  // recorded workload (PlanRobust, the worst workload per layer). Unset
  // (the default): the map of the run's own heat is recorded, as before.
  std::optional<std::string> eplb_record_heat_path = std::nullopt;

  // kRecording when a record path is set (it forces dynamic), else kDynamic
  // when dynamic_eplb, else kStatic when a map path is set, else kDisabled.
  // A recording or dynamic run that also names expert_map_path starts from
  // that map.
  EplbMode mode() const;
};

// The guard variables, as read from the environment (unset = nullopt).
struct ConfigEnv {
  std::optional<std::string> dynamic_eplb = std::nullopt;  // DYNAMIC_EPLB
  std::optional<std::string> expert_map_record =
      std::nullopt;  // EXPERT_MAP_RECORD
};
// Reads DYNAMIC_EPLB and EXPERT_MAP_RECORD with getenv.
ConfigEnv ReadConfigEnv();

struct ParsedConfig {
  EplbConfig config;
  std::vector<std::string> warnings;  // e.g. algorithm_execution_interval < 30.
};

// Parses `json_text`: either an eplb_config object, or a whole
// --additional-config object holding one under "eplb_config" (other keys of
// the outer object are ignored). Checks, each failure an InvalidArgument
// naming the key, the value and the fix:
//  - JSON well-formed and an object; unknown key (lists the valid keys);
//    wrong type (bool / string / integer; 3.0 is not an integer);
//  - intervals >= 1; num_redundant_experts >= 0; eplb_policy_type in 0..3;
//    eplb_heat_collection_stage and load_collection_phase (its newer name)
//    in all / prefill / decode, and equal when both are given;
//  - expert_map_path, expert_map_record_path and eplb_record_heat_path end
//    in ".json"; eplb_record_heat_path needs expert_map_record_path and
//    must differ from both map paths;
//  - the environment guard: dynamic and recording modes need DYNAMIC_EPLB or
//    EXPERT_MAP_RECORD set to true or 1 (case-insensitive); the error names
//    the variable to set. Static mode needs none.
// Warns (does not fail) when algorithm_execution_interval < 30.
StatusOr<ParsedConfig> ParseEplbConfig(std::string_view json_text,
                                       const ConfigEnv& env);

// Reads and parses a config file (ReadFileToString + ParseEplbConfig).
StatusOr<ParsedConfig> ReadEplbConfig(const std::string& path,
                                      const ConfigEnv& env);

// Checks the config against the model and the EP group: (E + N) % R == 0
// (the error shows the arithmetic), N not so large that a rank would need
// two copies of one expert ((E + N) / R > E), and, when expert_map_path is
// set, that the map exists, is readable and passes validation for
// `num_layers` x `num_experts` on `num_ranks` ranks (the error names the path
// and the problem); when expert_map_record_path is set, that it can be
// written (CheckWritablePath), so recording fails at start-up, not every
// cycle; when eplb_record_heat_path is set, that it can be written and, if
// the file exists, that it is a valid heat file of `num_layers` x
// `num_experts` (a corrupt one is an error naming the key and the file, and
// is left untouched); and the limits of eplb/limits.h. Returns the slots per
// rank.
StatusOr<int> ValidateConfigForModel(const EplbConfig& config, int num_layers,
                                     int num_experts, int num_ranks);

}  // namespace eplb

#endif  // EPLB_CONFIG_H_
