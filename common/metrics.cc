#include "common/metrics.h"

#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <prometheus/text_serializer.h>
#include <sstream>

#include <fmt/format.h>

namespace backstop::metrics {
namespace {

// Fields of /proc/self/stat after the command name: utime (14), stime (15), starttime (22),
// rss pages (24), counting from 1 as proc(5) does.
struct ProcStat {
  double cpu_seconds = 0;
  double start_time_seconds = 0;
  double resident_bytes = 0;
};

ProcStat ReadProcStat() {
  ProcStat stat;
  std::ifstream file("/proc/self/stat");
  std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  // The command name may hold spaces and parentheses: fields resume after the last ')'.
  const size_t close = text.rfind(')');
  if (close == std::string::npos) {
    return stat;
  }
  std::istringstream fields(text.substr(close + 2));
  std::vector<std::string> values;
  for (std::string value; fields >> value;) {
    values.push_back(value);
  }
  // values[0] is field 3 (state).
  auto field = [&](size_t number) -> double {
    const size_t index = number - 3;
    return index < values.size() ? std::strtod(values[index].c_str(), nullptr) : 0;
  };
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  stat.cpu_seconds = (field(14) + field(15)) / ticks;
  stat.resident_bytes = field(24) * static_cast<double>(sysconf(_SC_PAGESIZE));
  // starttime counts ticks since boot; the boot time is "btime" in /proc/stat.
  std::ifstream proc_stat("/proc/stat");
  double boot_time = 0;
  for (std::string line; std::getline(proc_stat, line);) {
    if (line.rfind("btime ", 0) == 0) {
      boot_time = std::strtod(line.c_str() + 6, nullptr);
    }
  }
  stat.start_time_seconds = boot_time + field(22) / ticks;
  return stat;
}

double OpenFds() {
  double count = 0;
  if (DIR* dir = opendir("/proc/self/fd")) {
    while (const dirent* entry = readdir(dir)) {
      if (entry->d_name[0] != '.') {
        ++count;
      }
    }
    closedir(dir);
  }
  return count - 1;  // the directory being read
}

}  // namespace

Metrics::Metrics() : registry_(std::make_shared<prometheus::Registry>()) {}

void Metrics::OnScrape(std::function<void()> hook) {
  std::lock_guard lock(mutex_);
  hooks_.push_back(std::move(hook));
}

std::string Metrics::Render() {
  std::lock_guard lock(mutex_);
  for (const auto& hook : hooks_) {
    hook();
  }
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, registry_->Collect());
  return out.str() + ProcessMetricsText();
}

void AdvanceTo(prometheus::Counter& counter, double total) {
  const double current = counter.Value();
  if (total > current) {
    counter.Increment(total - current);
  }
}

std::string ProcessMetricsText() {
  const ProcStat stat = ReadProcStat();
  return fmt::format(
      "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
      "# TYPE process_cpu_seconds_total counter\n"
      "process_cpu_seconds_total {}\n"
      "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
      "# TYPE process_resident_memory_bytes gauge\n"
      "process_resident_memory_bytes {}\n"
      "# HELP process_open_fds Number of open file descriptors.\n"
      "# TYPE process_open_fds gauge\n"
      "process_open_fds {}\n"
      "# HELP process_start_time_seconds Start time of the process since unix epoch in "
      "seconds.\n"
      "# TYPE process_start_time_seconds gauge\n"
      "process_start_time_seconds {:.2f}\n",
      stat.cpu_seconds, stat.resident_bytes, OpenFds(), stat.start_time_seconds);
}

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)),
      buckets_(std::make_unique<std::atomic<uint64_t>[]>(bounds_.size() + 1)) {}

void Histogram::Observe(double value) {
  const size_t bucket = static_cast<size_t>(
      std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin());
  buckets_[bucket].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
}

Histogram::Counts Histogram::Read() const {
  Counts counts;
  counts.buckets.reserve(bounds_.size() + 1);
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    counts.buckets.push_back(buckets_[i].load(std::memory_order_relaxed));
  }
  counts.sum = sum_.load(std::memory_order_relaxed);
  return counts;
}

std::vector<double> LatencyBounds() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}

std::vector<double> SizeBounds() {
  std::vector<double> bounds;
  for (double bytes = 1024; bytes <= 64.0 * 1024 * 1024; bytes *= 4) {
    bounds.push_back(bytes);
  }
  return bounds;
}

void HistogramMirror::Sync() {
  Histogram::Counts now = source_.Read();
  if (synced_.buckets.empty()) {
    synced_.buckets.assign(now.buckets.size(), 0);
  }
  std::vector<double> increments(now.buckets.size());
  bool any = false;
  for (size_t i = 0; i < now.buckets.size(); ++i) {
    increments[i] = static_cast<double>(now.buckets[i] - synced_.buckets[i]);
    any = any || now.buckets[i] != synced_.buckets[i];
  }
  if (any) {
    target_.ObserveMultiple(increments, now.sum - synced_.sum);
  }
  synced_ = std::move(now);
}

}  // namespace backstop::metrics
