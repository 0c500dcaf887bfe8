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

TEST(MetricsTest, HistogramCountsValuesIntoTheBucketOfTheirUpperBound) {
  Histogram histogram({1, 10});
  histogram.Observe(0.5);
  histogram.Observe(1);  // bounds are inclusive (Prometheus "le")
  histogram.Observe(7);
  histogram.Observe(11);
  const Histogram::Counts counts = histogram.Read();
  EXPECT_THAT(counts.buckets, ::testing::ElementsAre(2u, 1u, 1u));
  EXPECT_DOUBLE_EQ(counts.sum, 19.5);
}

TEST(MetricsTest, MirrorCarriesOnlyNewObservationsIntoTheRegistry) {
  Metrics metrics;
  auto& target = prometheus::BuildHistogram()
                     .Name("backstop_test_seconds")
                     .Help("test histogram")
                     .Register(metrics.registry())
                     .Add({}, prometheus::Histogram::BucketBoundaries{1, 10});
  Histogram source({1, 10});
  HistogramMirror mirror(source, target);
  metrics.OnScrape([&] { mirror.Sync(); });

  source.Observe(0.5);
  source.Observe(5);
  std::string page = metrics.Render();
  EXPECT_THAT(page, HasSubstr("backstop_test_seconds_bucket{le=\"1\"} 1\n"));
  EXPECT_THAT(page, HasSubstr("backstop_test_seconds_bucket{le=\"10\"} 2\n"));
  EXPECT_THAT(page, HasSubstr("backstop_test_seconds_count 2\n"));

  source.Observe(20);
  page = metrics.Render();
  EXPECT_THAT(page, HasSubstr("backstop_test_seconds_bucket{le=\"+Inf\"} 3\n"));
  EXPECT_THAT(page, HasSubstr("backstop_test_seconds_count 3\n"));
  EXPECT_THAT(page, HasSubstr("backstop_test_seconds_sum 25.5\n"));
  // A scrape with nothing new changes nothing.
  EXPECT_THAT(metrics.Render(), HasSubstr("backstop_test_seconds_count 3\n"));
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
