#include "eplb/metrics.h"

#include <charconv>
#include <cmath>
#include <string_view>

namespace eplb {

std::string EscapeLabelValue(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

namespace {

class Writer {
 public:
  void Family(std::string_view name, std::string_view type,
              std::string_view help) {
    out_ += "# HELP ";
    out_ += name;
    out_ += ' ';
    out_ += help;
    out_ += "\n# TYPE ";
    out_ += name;
    out_ += ' ';
    out_ += type;
    out_ += '\n';
  }
  // `labels` already formatted: k="v",k2="v2" (empty: none).
  void Sample(std::string_view name, std::string_view labels, double value) {
    out_ += name;
    if (!labels.empty()) {
      out_ += '{';
      out_ += labels;
      out_ += '}';
    }
    out_ += ' ';
    Number(value);
    out_ += '\n';
  }
  void Sample(std::string_view name, std::string_view labels, int64_t value) {
    Sample(name, labels, static_cast<double>(value));
  }
  void Metric(std::string_view name, std::string_view type,
              std::string_view help, double value) {
    Family(name, type, help);
    Sample(name, "", value);
  }
  void Metric(std::string_view name, std::string_view type,
              std::string_view help, int64_t value) {
    Metric(name, type, help, static_cast<double>(value));
  }
  std::string Take() { return std::move(out_); }

 private:
  void Number(double v) {
    if (std::isnan(v)) {
      out_ += "NaN";
    } else if (std::isinf(v)) {
      out_ += v > 0 ? "+Inf" : "-Inf";
    } else {
      char buf[32];
      auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
      out_.append(buf, end);
    }
  }
  std::string out_;
};

std::string Bound(double b) {
  char buf[32];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, b);
  return std::string(buf, end);
}

}  // namespace

std::string RenderPrometheus(const MetricsInput& in) {
  Writer w;
  const ControllerStats& s = *in.stats;
  w.Metric("eplb_steps_total", "counter", "Forward steps served.", s.steps);
  w.Metric("eplb_cycles_total", "counter",
           "Balancing cycles whose plan was taken.", s.cycles);
  w.Metric("eplb_rebalances_total", "counter",
           "Cycles that committed at least one layer.", s.rebalances);
  w.Metric("eplb_cycles_late_total", "counter",
           "Plans not ready when due (algorithm_execution_interval steps "
           "after their collection).",
           s.cycles_late);
  w.Metric("eplb_plan_late_steps_total", "counter",
           "Steps served while waiting for late plans.", s.plan_late_steps);
  w.Metric("eplb_plans_failed_total", "counter",
           "Plans whose policy failed; the current map kept serving.",
           s.plans_failed);
  w.Metric("eplb_plans_rejected_total", "counter",
           "Plans that broke a placement invariant and were rejected.",
           s.plans_rejected);
  w.Metric("eplb_plans_superseded_total", "counter",
           "Plans dropped because the traffic shifted while they were made; "
           "the steps since were planned at once.",
           s.plans_superseded);
  w.Metric("eplb_shifts_reverted_total", "counter",
           "Shifts that ended (a burst): the plan made on one dropped when "
           "due, or the placement before it migrated back to at once.",
           s.shifts_reverted);
  w.Metric("eplb_layers_reverted_total", "counter",
           "Layers migrated back to the placement before a shift that ended.",
           s.layers_reverted);
  w.Metric("eplb_plan_hash_mismatches_total", "counter",
           "Cycles skipped because the ranks' plans differed.",
           s.plan_hash_mismatches);
  w.Metric("eplb_layers_committed_total", "counter",
           "Layers whose new placement committed.", s.layers_committed);
  w.Metric("eplb_layers_aborted_total", "counter",
           "Layers whose migration failed, did not verify or was refused "
           "at its start; the old placement kept serving.",
           s.layers_aborted);
  w.Metric("eplb_experts_moved_total", "counter",
           "Experts copied onto ranks that did not hold them.",
           s.experts_moved);
  w.Metric("eplb_moved_bytes_total", "counter",
           "Bytes of expert weights migrated (the model's real sizes).",
           s.bytes_moved);
  w.Metric("eplb_stall_seconds_total", "counter",
           "Time the serving thread waited on migration.",
           static_cast<double>(s.total_stall_nanos) * 1e-9);
  w.Metric("eplb_stall_max_seconds", "gauge",
           "Longest single wait of the serving thread on migration.",
           static_cast<double>(s.max_stall_nanos) * 1e-9);
  w.Metric("eplb_maps_written_total", "counter",
           "Expert maps written in recording mode.", s.maps_written);
  w.Family("eplb_plan_duration_seconds", "histogram",
           "Time of each plan on the planner thread.");
  int64_t cumulative = 0;
  for (int b = 0; b < kPlanTimeBuckets; ++b) {
    cumulative += s.plan_time_buckets[b];
    const std::string le =
        b + 1 < kPlanTimeBuckets ? Bound(kPlanTimeBoundsSeconds[b]) : "+Inf";
    w.Sample("eplb_plan_duration_seconds_bucket", "le=\"" + le + "\"",
             cumulative);
  }
  w.Sample("eplb_plan_duration_seconds_sum", "",
           static_cast<double>(s.plan_nanos_sum) * 1e-9);
  w.Sample("eplb_plan_duration_seconds_count", "", s.plans_timed);
  w.Metric("eplb_plan_duration_max_seconds", "gauge", "Slowest plan so far.",
           static_cast<double>(s.max_plan_nanos) * 1e-9);

  auto balance = [&w](std::span<const double> per_layer, const char* state) {
    double sum = 0;
    int n = 0;
    for (size_t l = 0; l < per_layer.size(); ++l) {
      w.Sample("eplb_expert_load_balance_ratio",
               "layer=\"" + std::to_string(l) + "\",state=\"" + state + "\"",
               per_layer[l]);
      if (per_layer[l] > 0) {
        sum += per_layer[l];
        ++n;
      }
    }
    return n > 0 ? sum / n : 1.0;
  };
  if (!in.layer_balance.empty() || !in.planned_balance.empty()) {
    w.Family("eplb_expert_load_balance_ratio", "gauge",
             "Max over mean rank load per layer: as served (state=current) "
             "and as the last plan predicted (state=planned).");
    const double current = balance(in.layer_balance, "current");
    const double planned = balance(in.planned_balance, "planned");
    w.Family("eplb_load_balance_ratio", "gauge",
             "Max over mean rank load, mean over the layers with load.");
    if (!in.layer_balance.empty()) {
      w.Sample("eplb_load_balance_ratio", "state=\"current\"", current);
    }
    if (!in.planned_balance.empty()) {
      w.Sample("eplb_load_balance_ratio", "state=\"planned\"", planned);
    }
  }
  if (in.expert_heat != nullptr) {
    const LoadMatrix& h = *in.expert_heat;
    w.Family("eplb_expert_heat_tokens", "gauge",
             "Tokens routed to each logical expert in the last heat window.");
    for (int l = 0; l < h.num_layers(); ++l) {
      for (int e = 0; e < h.num_experts(); ++e) {
        w.Sample("eplb_expert_heat_tokens",
                 "layer=\"" + std::to_string(l) + "\",expert=\"" +
                     std::to_string(e) + "\"",
                 h.at(l, e));
      }
    }
  }
  if (in.serving != nullptr) {
    w.Metric("eplb_ttft_p99_seconds", "gauge",
             "Time to first token, 99th percentile (modelled).",
             in.serving->ttft_p99_seconds);
    w.Metric("eplb_tpot_avg_seconds", "gauge",
             "Time per output token, average (modelled).",
             in.serving->tpot_avg_seconds);
    w.Metric("eplb_device_utilization_ratio", "gauge",
             "Mean over ranks of busy time over the busiest rank's "
             "(modelled).",
             in.serving->utilization);
  }
  return w.Take();
}

}  // namespace eplb
