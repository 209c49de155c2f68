// eplb's figures in the Prometheus text exposition format (version 0.0.4),
// for an engine's /metrics endpoint or a file.
//
// Names follow Prometheus conventions: prefix eplb_, units in the name
// (_seconds, _bytes, _ratio), counters end in _total. Every family has
// # HELP and # TYPE lines; label values are escaped (\\, \", \n). The
// names, and the vllm-ascend names they correspond to, are listed in
// docs/metrics.md.
#ifndef EPLB_METRICS_H_
#define EPLB_METRICS_H_

#include <span>
#include <string>

#include "eplb/controller.h"
#include "eplb/load.h"

namespace eplb {

// Serving figures from a model of the serving (the replay's cost model);
// absent for an engine, which exports its own.
struct ServingMetrics {
  double ttft_p99_seconds = 0;
  double tpot_avg_seconds = 0;
  double utilization = 0;  // Mean over ranks of busy time / the busiest's.
};

struct MetricsInput {
  const ControllerStats* stats = nullptr;  // Required.
  // [L] max/mean rank load per layer: as served (the latest step or
  // window the caller measured), and as the last plan predicted. Empty:
  // not exported.
  std::span<const double> layer_balance;
  std::span<const double> planned_balance;
  // Opt-in (it is L x E series): the heat of each logical expert.
  const LoadMatrix* expert_heat = nullptr;
  const ServingMetrics* serving = nullptr;  // Optional.
};

// The exposition text, ending with a newline. Non-finite values are written
// as NaN / +Inf / -Inf, as the format allows.
std::string RenderPrometheus(const MetricsInput& input);

// A label value escaped for the exposition format.
std::string EscapeLabelValue(std::string_view value);

}  // namespace eplb

#endif  // EPLB_METRICS_H_
