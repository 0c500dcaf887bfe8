#pragma once

// The process's Prometheus metrics (DESIGN §3.5): one prometheus-cpp registry, rendered in the
// text exposition format 0.0.4 on the HTTP admin port's /metrics, together with the standard
// process metrics read from /proc. Roles register their families here; values that live in a
// role's own counters are copied in by scrape hooks just before each rendering.

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <string>
#include <vector>

namespace backstop::metrics {

inline constexpr char kContentType[] = "text/plain; version=0.0.4; charset=utf-8";

// Owns the registry and the scrape hooks. Thread-safe: prometheus-cpp metrics are atomic, and
// Render() serialises the hooks.
class Metrics {
 public:
  Metrics();

  prometheus::Registry& registry() { return *registry_; }
  // Runs before every Render(), on the HTTP thread serving /metrics: copy live values in.
  void OnScrape(std::function<void()> hook);
  // The page: every family of the registry, then process_* metrics.
  std::string Render();

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::mutex mutex_;
  std::vector<std::function<void()>> hooks_;  // guarded by mutex_
};

// A histogram a component keeps itself, without a registry, like its atomic counters: Observe()
// from any thread, lock-free. The scrape hook mirrors it into a registry histogram with the
// same bounds (HistogramMirror).
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);

  void Observe(double value);

  struct Counts {
    std::vector<uint64_t> buckets;  // per bound, then +Inf; not cumulative
    double sum = 0;
  };
  Counts Read() const;
  const std::vector<double>& bounds() const { return bounds_; }

 private:
  const std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;
  std::atomic<double> sum_{0};
};

// Seconds: 1 ms .. 60 s.
std::vector<double> LatencyBounds();
// Bytes: 1 KiB .. 64 MiB, by 4.
std::vector<double> SizeBounds();

// Carries what a Histogram observed since the last Sync() into a registry histogram (built with
// the same bounds). Sync() on the scrape thread only.
class HistogramMirror {
 public:
  HistogramMirror(const Histogram& source, prometheus::Histogram& target)
      : source_(source), target_(target) {}
  void Sync();

 private:
  const Histogram& source_;
  prometheus::Histogram& target_;
  Histogram::Counts synced_;
};

// Advances a counter to `total` (a monotonic count kept elsewhere); never moves it back.
void AdvanceTo(prometheus::Counter& counter, double total);

// process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds,
// process_start_time_seconds, in text format, from /proc/self.
std::string ProcessMetricsText();

}  // namespace backstop::metrics
