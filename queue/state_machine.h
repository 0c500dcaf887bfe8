#pragma once

// The replicated queue's state machine (DESIGN §3.2): the entries, their per-domain schedule,
// leases, domain limits and counters, the domain table and the greylist, in one RocksDB
// database. The Raft layer hands it committed log entries in order; it knows nothing of Raft.
//
// Semantics (the proto documents each command):
//  - Lease first reclaims leases expired by the entry's cluster time, then leases, up to the
//    request's maximum: entries an operator asked to bounce (DISPOSITION_BOUNCE), then per
//    domain, oldest first, entries older than max_queue_lifetime (DISPOSITION_EXPIRED, whatever
//    the schedule), then due entries — all of them for an up domain, and for a down domain one
//    probe once its next attempt is due and no other probe is out; then, with delay_warning set,
//    a down domain's entries queued longer than it and not yet warned (DISPOSITION_DELAY_WARNING:
//    the worker sends the warning DSN without a delivery attempt), so that each entry of a
//    backlog gets its warning, not only the probes. Domains are served in name order starting
//    after the last one that filled a lease, so none starves. Held entries are never leased
//    (and, held, never expire); the lease token is the Lease command's log index.
//  - ExtendLeases moves the expiry of unexpired leases a worker still holds, so a lease can be
//    short (a crashed worker's entries come back soon) and a slow delivery still keep it.
//  - Complete: delivered marks the domain up, making its whole backlog due; retry of a probe
//    doubles the domain's wait (retry_initial … retry_max), the first failure of an up domain
//    starts it, and failures of entries leased before the outage change nothing.
//  - Limits hold exactly at their values for configured relay domains: an Append that would take
//    a domain past one refuses all of that domain's new entries in the command. Unconfigured
//    destinations (DSNs to senders' domains) and DSNs appended by Complete have no limits.
//
// Determinism: Apply depends only on the database contents, the command and the entry's
// cluster time (the leader's clock stamped into the log entry). It never reads a clock, draws
// no random numbers, and every iteration runs in key order, so replicas that applied the same
// log hold byte-identical state (ContentDigest).
//
// Durability: each Apply is one RocksDB WriteBatch holding the state change together with the
// new applied index, written with the WAL but without fsync. That is enough because the Raft
// log is the durable record: after a crash RocksDB recovers a prefix of the applied batches
// (each one whole or not at all), the stored applied index says exactly which, and the Raft
// layer replays its log from applied_index + 1. Syncing here would add an fsync per commit for
// nothing. The Raft log must therefore not be compacted past an index until the state covering
// it is durable (QueueNode takes a checkpoint, which flushes, before it compacts).
//
// Threads: Apply, ReplaceWith and the other mutators, from one thread at a time (the apply
// loop). The const queries may run on any thread concurrently with Apply; each sees the state
// after some whole command.

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/config.h"
#include "proto/queue.pb.h"
#include "queue/message_id.h"
#include "queue/raft_storage.h"

namespace rocksdb {
class ColumnFamilyHandle;
class DB;
}  // namespace rocksdb

namespace backstop::queue {

struct StateMachineOptions {
  absl::Duration retry_initial = absl::Minutes(1);
  absl::Duration retry_max = absl::Minutes(15);
  // Entries queued longer than this are leased with DISPOSITION_EXPIRED (whatever their
  // domain's schedule) so that delivery bounces them with 5.4.7.
  absl::Duration max_queue_lifetime = absl::Hours(5 * 24);
  // Entries of a down domain queued longer than this get a delayed-delivery DSN lease (see
  // above); zero = none.
  absl::Duration delay_warning = absl::ZeroDuration();

  static StateMachineOptions FromConfig(const DeliveryConfig& delivery);
};

class QueueStateMachine {
 public:
  // Opens the database in `dir`, creating it (and the directory) when absent.
  static absl::StatusOr<std::unique_ptr<QueueStateMachine>> Open(
      const std::string& dir, const StateMachineOptions& options);
  ~QueueStateMachine();
  QueueStateMachine(const QueueStateMachine&) = delete;
  QueueStateMachine& operator=(const QueueStateMachine&) = delete;

  // Applies the command of log entry `index`. A logical refusal (malformed command, unknown
  // domain, stale lease, over limit) is a value in the result and still consumes the index; an
  // error Status means RocksDB failed, nothing of this command was written, and the caller must
  // stop (fail-stop) and recover from what is durable. An index ≤ applied_index() changes
  // nothing and returns code DUPLICATE_INDEX. Indexes may skip (log entries that carry no
  // command); empty `command_bytes` is such a no-op that only advances the applied index.
  absl::StatusOr<CommandResult> Apply(uint64_t index, absl::Time cluster_time,
                                      const Command& command);
  absl::StatusOr<CommandResult> Apply(uint64_t index, absl::Time cluster_time,
                                      std::string_view command_bytes);

  uint64_t applied_index() const { return applied_index_.load(std::memory_order_acquire); }
  // Leases this replica has seen run out (their entries due again), since it started.
  uint64_t leases_expired() const { return leases_expired_.load(std::memory_order_relaxed); }

  // Read-only views for the admin API and tests. Message bytes of listed entries are not read.
  absl::StatusOr<std::vector<DomainSummary>> Summaries() const;
  // Of the state machine's RocksDB; Unavailable while the database is being replaced.
  absl::StatusOr<RocksDbHealth> Health() const;
  absl::StatusOr<ListEntriesResponse> ListEntries(const ListEntriesRequest& request) const;
  absl::StatusOr<StoredEntry> GetEntry(const MessageId& id) const;      // NotFound when absent
  absl::StatusOr<std::string> ReadMessage(const MessageId& id) const;   // NotFound when absent
  absl::StatusOr<DomainRecord> GetDomain(std::string_view name) const;  // NotFound when absent
  // The members' addresses recorded by SetMember commands, by node id.
  absl::StatusOr<std::map<uint64_t, std::string>> Members() const;
  absl::StatusOr<GreylistRecord> GetGreylist(std::string_view client_network,
                                             std::string_view sender,
                                             std::string_view recipient) const;

  // Checks that the indexes, message bytes and per-domain counters agree with the entries;
  // Internal error naming the first disagreement. O(size of the queue): for tests and the
  // simulator.
  absl::Status CheckInvariants() const;

  // A 64-bit FNV-1a digest over every key and value of every column family, in order: equal
  // digests mean (with overwhelming probability) equal states. For tests and the simulator.
  absl::StatusOr<uint64_t> ContentDigest() const;

  // Writes a consistent, openable copy of the database (hard links where possible) into `dir`,
  // which must not exist. The copy includes the applied index it corresponds to. Flushing the
  // memtables for it also makes everything applied so far durable in this database.
  absl::Status CreateCheckpoint(const std::string& dir) const;
  // Starts flushing every memtable in RocksDB's background threads and returns at once, so that
  // a checkpoint taken once FlushPending() is false flushes only what was applied since.
  absl::Status StartFlush();
  // True while memtables that StartFlush (or RocksDB itself) set aside are not yet written.
  absl::StatusOr<bool> FlushPending() const;

  // Replaces the database directory `db_dir` (closed by the caller) with the checkpoint in
  // `checkpoint_dir` by renames on the same filesystem (SwapInDirectory: a crash leaves the
  // old or the new database, never neither); open the result with Open(db_dir).
  static absl::Status InstallCheckpoint(const std::string& checkpoint_dir,
                                        const std::string& db_dir);
  // The applied index of the checkpoint in `dir`, opened read-only (to vet a received one).
  static absl::StatusOr<uint64_t> AppliedIndexOf(const std::string& dir);
  // The same for this open machine: closes the database, swaps `checkpoint_dir` in and reopens
  // it. Queries on other threads wait meanwhile. Call from the applying thread; an error leaves
  // the machine closed (every query answers Unavailable) and the caller must fail-stop.
  absl::Status ReplaceWith(const std::string& checkpoint_dir);

 private:
  class Txn;
  struct ColumnFamilies {
    rocksdb::ColumnFamilyHandle* meta = nullptr;
    rocksdb::ColumnFamilyHandle* domains = nullptr;
    rocksdb::ColumnFamilyHandle* entries = nullptr;
    rocksdb::ColumnFamilyHandle* bodies = nullptr;
    rocksdb::ColumnFamilyHandle* index = nullptr;
    rocksdb::ColumnFamilyHandle* greylist = nullptr;
  };

  QueueStateMachine(const StateMachineOptions& options, std::string dir);
  // Opens the database in dir_ and loads the applied index and cluster time.
  absl::Status OpenDatabase();
  void CloseDatabase();
  // Unavailable while the database is closed (a failed ReplaceWith).
  absl::Status CheckOpen() const;
  absl::StatusOr<std::string> ReadValue(rocksdb::ColumnFamilyHandle* cf,
                                        std::string_view key) const;

  const StateMachineOptions options_;
  const std::string dir_;
  // Shared by the queries, exclusive while ReplaceWith swaps the database. The applying thread
  // (the only one that replaces it) reads db_ without it.
  mutable std::shared_mutex db_mutex_;
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;  // owned; destroyed before db_
  ColumnFamilies cf_;
  std::atomic<uint64_t> applied_index_ = 0;
  mutable std::atomic<uint64_t> leases_expired_ = 0;  // counted by the (const) transactions
  int64_t cluster_time_ms_ = 0;  // the largest cluster time applied; time never runs backwards
};

}  // namespace backstop::queue
