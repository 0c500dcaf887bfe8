#pragma once

// Durable Raft storage in RocksDB (DESIGN §3.1: nothing is acknowledged before it is fsynced).
//
// Layout, in a RocksDB database that the queue's state machine may share (see Database):
//   raft_log    big-endian index → term (8 bytes BE), time (8 bytes BE, Unix µs), type (1 byte),
//               data
//   raft_state  "hard_state"  → wire::HardState
//               "snapshot"    → wire::SnapshotMeta of the latest snapshot
//               "log_start"   → wire::Entry without data: index, term and time of the
//                               compaction point (FirstIndex() - 1)
// raft_log holds exactly the entries (log_start, last]; every write keeps that invariant inside
// one WriteBatch, so any prefix of the write-ahead log that RocksDB recovers is consistent.
//
// Fail-stop (DESIGN §3.1): the first failed write or sync, or a RocksDB background error,
// moves the storage into a permanent failed state. Every later write returns that first error
// without touching the disk; nothing is retried (after a failed fsync the kernel may have
// dropped the dirty pages, so a retry that "succeeds" would lie). The owner must stop serving
// (drop leadership, answer nothing) and restart the process, which reopens from what is durable.
// Reads keep answering from the state before the failed write, for diagnostics only.
//
// Snapshot data: this storage keeps snapshot METADATA only. The state machine image lives in
// the state machine's own column families and is shipped as a RocksDB checkpoint by the queue;
// the `data` passed to ApplySnapshot/CreateSnapshot is not stored, and GetSnapshot() fills
// `data` from StorageOptions::snapshot_data (empty when unset). The owner must make an
// installed image durable before it persists the snapshot's metadata here, since ApplySnapshot
// drops the entries the image replaces.

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/metrics.h"
#include "queue/raft/log_storage.h"
#include "queue/raft/node.h"
#include "queue/raft/types.h"
#include "rocksdb/db.h"
#include "rocksdb/file_system.h"

namespace backstop::queue {

inline constexpr char kRaftLogFamily[] = "raft_log";
inline constexpr char kRaftStateFamily[] = "raft_state";

struct DatabaseOptions {
  // Families besides the Raft ones and "default" (the state machine's, with its own options
  // such as blob files). RocksDB must be opened with every family a database holds, so a
  // family once created must be listed on every later open.
  std::vector<rocksdb::ColumnFamilyDescriptor> extra_families;
  // File system under the database; tests and chaos runs pass a FaultInjectionFileSystem.
  std::shared_ptr<rocksdb::FileSystem> file_system;
  // Write-ahead log kept before RocksDB flushes the families that still need its oldest file.
  // The Raft log's entries die soon after they are applied, but a family written rarely (the
  // hard state) would pin every log file until RocksDB's own limit (four times all write
  // buffers, 1.5 GB): disk space for nothing, and seconds of replay on every restart.
  uint64_t max_wal_bytes = 64 << 20;
};

// An open RocksDB database with the Raft column families and the caller's extra ones. Owns the
// DB, its family handles and the Env built over `file_system`; RocksDbLogStorage and the state
// machine borrow them. Thread-safe as rocksdb::DB is; must outlive its borrowers.
// What an operator watches of a RocksDB instance (DESIGN §3.5 / issue "RocksDB health").
struct RocksDbHealth {
  uint64_t pending_compaction_bytes = 0;
  bool write_stopped = false;
  uint64_t delayed_write_rate = 0;  // bytes/s while writes are slowed down, else 0
  uint64_t background_errors = 0;
};
// Thread-safe (RocksDB's properties are).
RocksDbHealth ReadRocksDbHealth(rocksdb::DB& db);

class Database {
 public:
  // Opens `path`, creating it and any missing family.
  static absl::StatusOr<std::unique_ptr<Database>> Open(const std::string& path,
                                                        const DatabaseOptions& options);
  ~Database();
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;
  Database(Database&&) = delete;
  Database& operator=(Database&&) = delete;

  rocksdb::DB* db() const { return db_.get(); }
  // nullptr for a family that was not opened.
  rocksdb::ColumnFamilyHandle* family(const std::string& name) const;

 private:
  Database() = default;

  std::unique_ptr<rocksdb::Env> env_;  // declared first: destroyed after the DB
  std::unique_ptr<rocksdb::DB> db_;
  std::map<std::string, rocksdb::ColumnFamilyHandle*> families_;  // owned; closed in ~Database
};

struct StorageOptions {
  // Supplies GetSnapshot()'s data for the held snapshot's metadata (see the top of this file).
  std::function<absl::StatusOr<std::string>(const raft::SnapshotMeta&)> snapshot_data;
};

// raft::LogStorage on RocksDB. Caches the hard state, the snapshot metadata and the term and
// time of every held entry in memory, so only Entries() reads the disk. Not thread-safe, like
// every LogStorage: the queue's Raft thread owns it. Borrows `database`.
class RocksDbLogStorage final : public raft::LogStorage {
 public:
  // Loads the state held in `database`'s Raft families (empty on a new database).
  static absl::StatusOr<std::unique_ptr<RocksDbLogStorage>> Open(Database* database,
                                                                 StorageOptions options = {});

  raft::HardState GetHardState() const override { return hard_state_; }
  raft::LogIndex FirstIndex() const override { return offset_ + 1; }
  raft::LogIndex LastIndex() const override { return offset_ + stamps_.size(); }
  absl::StatusOr<raft::Term> TermAt(raft::LogIndex index) const override;
  absl::StatusOr<absl::Time> TimeAt(raft::LogIndex index) const override;
  absl::StatusOr<std::vector<raft::Entry>> Entries(raft::LogIndex lo, raft::LogIndex hi,
                                                   uint64_t max_bytes) const override;
  absl::StatusOr<raft::Snapshot> GetSnapshot() const override;

  // The group commit: the snapshot's metadata, then the entries, then the hard state of one
  // Ready (each optional), as ONE WriteBatch, synced unless all it changes is the commit index
  // (which then becomes durable with the next synced write).
  absl::Status Persist(const std::optional<raft::Snapshot>& snapshot,
                       std::span<const raft::Entry> entries,
                       const std::optional<raft::HardState>& hard_state);
  absl::Status Persist(const raft::Ready& ready) {
    return Persist(ready.snapshot, ready.entries, ready.hard_state);
  }

  // LogStorage's write side, each one WriteBatch, synced as Persist decides.
  absl::Status Append(std::span<const raft::Entry> entries) override;
  absl::Status SetHardState(const raft::HardState& hard_state) override;
  absl::Status ApplySnapshot(const raft::Snapshot& snapshot) override;
  absl::Status CreateSnapshot(raft::LogIndex index, const raft::ConfState& conf_state,
                              std::string data) override;
  absl::Status Compact(raft::LogIndex index) override;

  // The first write error, or OK while the storage is healthy.
  const absl::Status& failure() const { return failure_; }
  bool failed() const { return !failure_.ok(); }
  // Number of synced WriteBatches written (one fsync of the write-ahead log each); buffered
  // commit-index updates do not count.
  uint64_t synced_writes() const { return synced_writes_; }
  RocksDbHealth health() const { return ReadRocksDbHealth(*database_->db()); }
  // Durations of the synced log writes; thread-safe.
  const metrics::Histogram& fsync_seconds() const { return fsync_seconds_; }

 private:
  struct Stamp {
    raft::Term term;
    absl::Time time;
  };
  // The effect of one write on the cached state, applied only once the write is durable.
  struct Change;

  RocksDbLogStorage(Database* database, StorageOptions options);
  absl::Status Load();
  absl::StatusOr<Stamp> StampAt(raft::LogIndex index) const;
  absl::Status StageSnapshot(const raft::SnapshotMeta& meta, Change& change) const;
  absl::Status StageEntries(std::span<const raft::Entry> entries, Change& change) const;
  enum class Durability : uint8_t {
    kSynced,    // fdatasync'd before Commit returns
    kBuffered,  // in the write-ahead log; durable with the next synced write
  };
  // Writes the batch and, if that succeeded, applies `change`; fail-stop otherwise.
  absl::Status Commit(Change& change, Durability durability);
  void Apply(Change& change);

  Database* database_;
  rocksdb::ColumnFamilyHandle* log_family_;
  rocksdb::ColumnFamilyHandle* state_family_;
  StorageOptions options_;

  raft::HardState hard_state_;
  raft::SnapshotMeta snapshot_;
  // stamps_[k] belongs to index offset_ + 1 + k; offset_ is the compaction point.
  raft::LogIndex offset_;
  Stamp offset_stamp_{raft::Term(0), absl::UnixEpoch()};
  std::deque<Stamp> stamps_;

  absl::Status failure_;
  uint64_t synced_writes_ = 0;
  metrics::Histogram fsync_seconds_{metrics::LatencyBounds()};
};

}  // namespace backstop::queue
