#include "queue/storage_reserve.h"

#include <sys/statvfs.h>

#include <cerrno>
#include <memory>
#include <utility>

#include <fmt/format.h>

#include "common/status.h"
#include "queue/fault_injection.h"

namespace backstop::queue {

FreeSpaceProbe StatvfsProbe(std::string path) {
  return [path = std::move(path)]() -> absl::StatusOr<uint64_t> {
    struct statvfs stats {};
    if (statvfs(path.c_str(), &stats) != 0) {
      return ErrnoToStatus(errno, fmt::format("statvfs {}", path));
    }
    return static_cast<uint64_t>(stats.f_bavail) * stats.f_frsize;
  };
}

FreeSpaceProbe FreeSpaceProbeFromEnvironment(std::string path) {
  FreeSpaceProbe measure = StatvfsProbe(std::move(path));
  std::shared_ptr<FaultInjectionFileSystem> faults = FaultFileSystemFromEnvironment();
  if (faults == nullptr) {
    return measure;
  }
  return [measure = std::move(measure), faults]() -> absl::StatusOr<uint64_t> {
    if (faults->ReportsFull()) {
      return 0;
    }
    return measure();
  };
}

StorageReserve::StorageReserve(StorageReserveOptions options) : options_(std::move(options)) {}

bool StorageReserve::Low() {
  if (options_.min_free_bytes == 0) {
    return false;
  }
  std::unique_lock lock(mutex_);
  const absl::Duration now = options_.clock->Monotonic();
  if (now < next_probe_) {
    return low_;
  }
  next_probe_ = now + options_.probe_interval;
  const absl::StatusOr<uint64_t> free_bytes = options_.probe();
  if (free_bytes.ok()) {
    low_ = *free_bytes < options_.min_free_bytes;
  }
  return low_;
}

}  // namespace backstop::queue
