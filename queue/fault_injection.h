#pragma once

// A RocksDB FileSystem wrapper that fails writes or syncs on demand, for the fail-stop tests of
// the Raft storage and, through a fault file a running voter follows (FollowFile,
// BACKSTOP_FAULT_FILE), for the system and chaos tests. It also counts syncs, so a benchmark
// can report real fsyncs rather than assumed ones.
//
// Thread-safety: every method may be called from any thread; RocksDB calls the file methods
// from its foreground and background threads while a test flips the fault.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "rocksdb/file_system.h"

namespace backstop::queue {

enum class Fault : uint8_t {
  kNone,
  kWriteError,  // every append to a file returns EIO
  kSyncError,   // every fsync/fdatasync (files and directories) returns EIO
  kNoSpace,     // every append and sync returns ENOSPC
  kFull,        // writes succeed, but the free-space probe (free_space.h) reports 0 bytes
};

// Which files a fault hits.
enum class FaultTarget : uint8_t {
  kAllFiles,
  kWalOnly,     // write-ahead log files (*.log) only
  kTablesOnly,  // table files (*.sst) only: flushes and compactions fail, the WAL works
};

class FaultInjectionFileSystem final : public rocksdb::FileSystemWrapper {
 public:
  explicit FaultInjectionFileSystem(const std::shared_ptr<rocksdb::FileSystem>& target);

  // From now on, until Clear(), operations of the fault's kind fail on the targeted files,
  // including files opened before the call.
  void Inject(Fault fault, FaultTarget target = FaultTarget::kAllFiles);
  void Clear() { Inject(Fault::kNone); }

  // TEST-ONLY: from now on the fault follows the content of the file at `path`, re-read at
  // most every kFaultFilePoll when a file operation checks for a fault: "none" (or no file),
  // "write_error", "sync_error" or "nospace", optionally followed by "wal" or "tables" (the
  // target; default every file). An unreadable word counts as "none".
  void FollowFile(std::string path);
  static constexpr std::chrono::milliseconds kFaultFilePoll{20};

  // Whether the fault is kFull (re-reading the followed file if it is time to): the disk is to
  // look full to the free-space probe while writes still succeed.
  bool ReportsFull();

  // Number of successful Sync/Fsync calls on writable files since construction.
  uint64_t sync_count() const { return sync_count_.load(std::memory_order_relaxed); }
  // Number of operations that failed because of an injected fault.
  uint64_t injected_failures() const { return failures_.load(std::memory_order_relaxed); }

  const char* Name() const override { return "BackstopFaultInjectionFileSystem"; }

  rocksdb::IOStatus NewWritableFile(const std::string& name, const rocksdb::FileOptions& options,
                                    std::unique_ptr<rocksdb::FSWritableFile>* result,
                                    rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus ReopenWritableFile(const std::string& name, const rocksdb::FileOptions& options,
                                       std::unique_ptr<rocksdb::FSWritableFile>* result,
                                       rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus ReuseWritableFile(const std::string& name, const std::string& old_name,
                                      const rocksdb::FileOptions& options,
                                      std::unique_ptr<rocksdb::FSWritableFile>* result,
                                      rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus NewDirectory(const std::string& name, const rocksdb::IOOptions& options,
                                 std::unique_ptr<rocksdb::FSDirectory>* result,
                                 rocksdb::IODebugContext* dbg) override;

  // Used by the file wrappers: the error to return for an append to or a sync of a file of
  // `kind`, or OK; counts the failure.
  enum class FileKind : uint8_t { kWal, kTable, kOther };
  static FileKind KindOf(const std::string& name);
  rocksdb::IOStatus CheckAppend(FileKind kind);
  rocksdb::IOStatus CheckSync(FileKind kind);
  void CountSync() { sync_count_.fetch_add(1, std::memory_order_relaxed); }

 private:
  rocksdb::IOStatus Wrap(const std::string& name, rocksdb::IOStatus status,
                         std::unique_ptr<rocksdb::FSWritableFile>* result);
  bool Hits(FileKind kind) const;
  // Re-reads the followed file if it is time to; cheap otherwise.
  void PollFile();

  // Packed (fault, target) so that both change together.
  std::atomic<uint16_t> state_{0};
  std::atomic<uint64_t> sync_count_{0};
  std::atomic<uint64_t> failures_{0};

  std::mutex file_mutex_;              // one reader of the followed file at a time
  std::string file_;                   // guarded by file_mutex_; empty = not following
  std::atomic<int64_t> next_poll_{0};  // steady-clock ns of the next read; 0 = never again
};

// TEST-ONLY (system and chaos tests): the environment variable naming a fault file. When it is
// set, a queue voter opens its Raft log database on a FaultInjectionFileSystem that follows
// that file (see FollowFile), so a test can make one running voter's disk fail, and its
// free-space probe follows the file too ("full": the probe reports 0 bytes free).
inline constexpr char kFaultFileEnvironment[] = "BACKSTOP_FAULT_FILE";

// The file system for the queue's Raft log: a FaultInjectionFileSystem following the file named
// by kFaultFileEnvironment when that is set, else nullptr (RocksDB's default).
std::shared_ptr<rocksdb::FileSystem> FileSystemFromEnvironment();
// The same as a FaultInjectionFileSystem (for the free-space probe), or nullptr.
std::shared_ptr<FaultInjectionFileSystem> FaultFileSystemFromEnvironment();

}  // namespace backstop::queue
