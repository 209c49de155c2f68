// The replay's HTML report (eplb replay --report FILE): one self-contained
// page an operator reads. Imbalance over steps (with and without balancing,
// a rolling median, markers where layers committed), the rank x layer load
// before and after, experts and bytes moved per rebalance, each plan's time
// against its budget and the late cycles. The figures travel as JSON inside
// the page and a small script draws them; every text from outside (trace
// names, policy names) reaches the page only through the JSON and
// textContent, so none is ever parsed as HTML. When the script has drawn
// everything, it sets data-rendered="ok" on <body> (what the tests check in
// a headless browser).
#ifndef EPLB_SIM_REPORT_H_
#define EPLB_SIM_REPORT_H_

#include <string>
#include <string_view>

#include "eplb/sim/replay.h"

namespace eplb {

// `title`: what was replayed (free text); `column`: what the balanced side
// is called (the policy, or "static map").
std::string ReplayReportHtml(const ReplayResult& result,
                             const ReplayOptions& options,
                             std::string_view title, std::string_view column);

}  // namespace eplb

#endif  // EPLB_SIM_REPORT_H_
