#include "common/metrics.h"

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/time/clock.h"

namespace backstop::metrics {
namespace {

using ::testing::HasSubstr;

TEST(MetricsTest, RendersRegisteredFamiliesAfterRunningScrapeHooks) {
  Metrics metrics;
  auto& gauge = prometheus::BuildGauge()
                    .Name("backstop_test_depth")
                    .Help("test gauge")
                    .Register(metrics.registry())
                    .Add({});
  int scrapes = 0;
  metrics.OnScrape([&] { gauge.Set(++scrapes * 10); });
  EXPECT_THAT(metrics.Render(), HasSubstr("backstop_test_depth 10\n"));
  EXPECT_THAT(metrics.Render(), HasSubstr("backstop_test_depth 20\n"));
  EXPECT_THAT(metrics.Render(), HasSubstr("# TYPE backstop_test_depth gauge\n"));
}

TEST(MetricsTest, AdvanceToNeverMovesACounterBack) {
  Metrics metrics;
  auto& counter = prometheus::BuildCounter()
                      .Name("backstop_test_total")
                      .Help("test counter")
                      .Register(metrics.registry())
                      .Add({});
  AdvanceTo(counter, 5);
  EXPECT_EQ(counter.Value(), 5);
  AdvanceTo(counter, 3);
  EXPECT_EQ(counter.Value(), 5);
  AdvanceTo(counter, 8);
  EXPECT_EQ(counter.Value(), 8);
}

double ValueOf(const std::string& page, const std::string& name) {
  const size_t at = page.find(fmt::format("\n{} ", name));
  EXPECT_NE(at, std::string::npos) << name;
  return at == std::string::npos ? -1 : std::strtod(page.c_str() + at + name.size() + 2, nullptr);
}

TEST(MetricsTest, ProcessMetricsDescribeThisProcess) {
  const std::string page = fmt::format("\n{}", ProcessMetricsText());
  EXPECT_GT(ValueOf(page, "process_resident_memory_bytes"), 1 << 20);
  EXPECT_GE(ValueOf(page, "process_open_fds"), 3);  // at least stdin, stdout, stderr
  const double start = ValueOf(page, "process_start_time_seconds");
  const double now = absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
  EXPECT_LE(start, now + 1);
  EXPECT_GT(start, now - 24 * 3600);  // a test process started recently
  EXPECT_GE(ValueOf(page, "process_cpu_seconds_total"), 0);
  EXPECT_THAT(page, HasSubstr("# TYPE process_cpu_seconds_total counter\n"));
}

}  // namespace
}  // namespace backstop::metrics
