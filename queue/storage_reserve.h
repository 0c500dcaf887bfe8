#pragma once

// The free-space reserve of a queue voter ([queue] min_free_space): the leader refuses new
// messages while the filesystem of its data directory has less free space than the reserve, so
// that ingest answers 452 4.3.1 before RocksDB meets ENOSPC (which is fail-stop). Only the
// leader's own disk counts: a follower below its reserve still replicates, and one that does
// fill up stops as on any write error; voters should therefore have disks of the same size.

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock.h"

namespace backstop::queue {

// Bytes free for an unprivileged writer on some filesystem.
using FreeSpaceProbe = std::function<absl::StatusOr<uint64_t>()>;

// statvfs(2) of `path` (f_bavail * f_frsize).
FreeSpaceProbe StatvfsProbe(std::string path);
// StatvfsProbe, except that under the TEST-ONLY fault file (kFaultFileEnvironment, see
// fault_injection.h) saying "full" it reports 0 bytes.
FreeSpaceProbe FreeSpaceProbeFromEnvironment(std::string path);

struct StorageReserveOptions {
  uint64_t min_free_bytes = 0;  // 0 = off: never low, never probes
  // A measurement is reused for this long: statvfs is cheap, but not free on every Append.
  absl::Duration probe_interval = absl::Seconds(1);
  FreeSpaceProbe probe;
  const Clock* clock = &RealClock::Get();
};

// Owns the last measurement. Thread-safe: the gRPC threads ask Low() for each Append, and the
// first to ask after the interval measures (one statvfs, microseconds) while the others wait
// for it; the Raft thread never measures.
class StorageReserve {
 public:
  explicit StorageReserve(StorageReserveOptions options);

  // Whether the free space measured last is below the reserve. A failed probe keeps the
  // previous answer (a disk that cannot be measured is not taken to be full).
  bool Low();

 private:
  const StorageReserveOptions options_;
  std::mutex mutex_;
  // The clock's monotonic time of the next measurement; guarded by mutex_.
  absl::Duration next_probe_ = -absl::InfiniteDuration();
  bool low_ = false;  // guarded by mutex_
};

}  // namespace backstop::queue
