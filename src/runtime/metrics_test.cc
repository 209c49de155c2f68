#include "eplb/metrics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <sstream>
#include <vector>

namespace eplb {
namespace {

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

bool Has(const std::string& text, const std::string& line) {
  for (const std::string& l : Lines(text)) {
    if (l == line) return true;
  }
  return false;
}

TEST(MetricsTest, CountersGaugesAndAHistogram) {
  ControllerStats s;
  s.steps = 12;
  s.rebalances = 3;
  s.bytes_moved = 4096;
  s.layers_reverted = 7;
  s.total_stall_nanos = 1'500'000'000;
  s.plan_time_buckets[0] = 1;                     // <= 1 ms
  s.plan_time_buckets[2] = 2;                     // <= 5 ms
  s.plan_time_buckets[kPlanTimeBuckets - 1] = 1;  // > 5 s
  s.plans_timed = 4;
  s.plan_nanos_sum = 6'000'000'000;
  MetricsInput in;
  in.stats = &s;
  const std::string text = RenderPrometheus(in);
  EXPECT_TRUE(Has(text, "# TYPE eplb_rebalances_total counter"));
  EXPECT_TRUE(Has(text, "eplb_rebalances_total 3"));
  EXPECT_TRUE(Has(text, "eplb_steps_total 12"));
  EXPECT_TRUE(Has(text, "eplb_moved_bytes_total 4096"));
  EXPECT_TRUE(Has(text, "eplb_layers_reverted_total 7"));
  EXPECT_TRUE(Has(text, "eplb_stall_seconds_total 1.5"));
  EXPECT_TRUE(Has(text, "# TYPE eplb_plan_duration_seconds histogram"));
  // Cumulative buckets, the last one +Inf, equal to the count.
  EXPECT_TRUE(Has(text, "eplb_plan_duration_seconds_bucket{le=\"0.001\"} 1"));
  EXPECT_TRUE(Has(text, "eplb_plan_duration_seconds_bucket{le=\"0.002\"} 1"));
  EXPECT_TRUE(Has(text, "eplb_plan_duration_seconds_bucket{le=\"0.005\"} 3"));
  EXPECT_TRUE(Has(text, "eplb_plan_duration_seconds_bucket{le=\"5\"} 3"));
  EXPECT_TRUE(Has(text, "eplb_plan_duration_seconds_bucket{le=\"+Inf\"} 4"));
  EXPECT_TRUE(Has(text, "eplb_plan_duration_seconds_count 4"));
  EXPECT_TRUE(Has(text, "eplb_plan_duration_seconds_sum 6"));
  // Without the optional parts, none of their families.
  EXPECT_EQ(text.find("eplb_expert_load_balance_ratio"), std::string::npos);
  EXPECT_EQ(text.find("eplb_expert_heat_tokens"), std::string::npos);
  EXPECT_EQ(text.find("eplb_ttft_p99_seconds"), std::string::npos);
  // Every sample's family is declared before it, with HELP and TYPE.
  std::string declared;
  for (const std::string& l : Lines(text)) {
    ASSERT_FALSE(l.empty());
    if (l.rfind("# TYPE ", 0) == 0) {
      declared = l.substr(7, l.find(' ', 7) - 7);
      continue;
    }
    if (l[0] == '#') continue;
    EXPECT_EQ(l.rfind(declared, 0), 0u) << l;
  }
  EXPECT_EQ(text.back(), '\n');
}

TEST(MetricsTest, BalanceHeatAndServing) {
  ControllerStats s;
  const std::vector<double> current = {1.5, 0.0, 1.25};
  const std::vector<double> planned = {1.01, 1.0, 1.02};
  LoadMatrix heat(1, 2);
  heat.at(0, 0) = 7;
  heat.at(0, 1) = std::numeric_limits<double>::quiet_NaN();
  const ServingMetrics serving{
      .ttft_p99_seconds = 0.25,
      .tpot_avg_seconds = 0.0125,
      .utilization = std::numeric_limits<double>::infinity()};
  MetricsInput in;
  in.stats = &s;
  in.layer_balance = current;
  in.planned_balance = planned;
  in.expert_heat = &heat;
  in.serving = &serving;
  const std::string text = RenderPrometheus(in);
  EXPECT_TRUE(
      Has(text,
          "eplb_expert_load_balance_ratio{layer=\"0\",state=\"current\"} 1.5"));
  EXPECT_TRUE(Has(
      text,
      "eplb_expert_load_balance_ratio{layer=\"2\",state=\"planned\"} 1.02"));
  // The mean skips layers without load.
  EXPECT_TRUE(Has(text, "eplb_load_balance_ratio{state=\"current\"} 1.375"));
  EXPECT_TRUE(Has(text, "eplb_expert_heat_tokens{layer=\"0\",expert=\"0\"} 7"));
  EXPECT_TRUE(
      Has(text, "eplb_expert_heat_tokens{layer=\"0\",expert=\"1\"} NaN"));
  EXPECT_TRUE(Has(text, "eplb_ttft_p99_seconds 0.25"));
  EXPECT_TRUE(Has(text, "eplb_tpot_avg_seconds 0.0125"));
  EXPECT_TRUE(Has(text, "eplb_device_utilization_ratio +Inf"));
}

TEST(MetricsTest, LabelValuesAreEscaped) {
  EXPECT_EQ(EscapeLabelValue("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
  EXPECT_EQ(EscapeLabelValue("plain"), "plain");
}

}  // namespace
}  // namespace eplb
