#pragma once

// The durable half of a Raft node: entries, hard state and the latest snapshot. The node only
// reads it; the application writes to it when it persists a Ready (see node.h) and when it
// takes snapshots and compacts. Not thread-safe: the owner serialises reads by the node and its
// own writes (in Backstop both happen on the queue's Raft thread).

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "queue/raft/types.h"

namespace backstop::raft {

// Index below the first retained entry: the caller must fall back to the snapshot.
absl::Status CompactedError(LogIndex index);
bool IsCompacted(const absl::Status& status);

// Whether a write of one Ready's snapshot, entries and hard state over the `durable` hard state
// must be synced before any peer or client hears of it: yes, unless it writes nothing or only
// moves the commit index. Losing the latest commit index in a crash loses nothing (committed
// entries are durable in a quorum's logs, and Raft learns the commit index again), so such a
// write may wait for the next synced one.
bool MustSync(const HardState& durable, bool has_snapshot, bool has_entries,
              const std::optional<HardState>& hard_state);

class LogStorage {
 public:
  virtual ~LogStorage() = default;

  virtual HardState GetHardState() const = 0;
  // First index whose entry is still held; FirstIndex()-1 is covered by the snapshot.
  virtual LogIndex FirstIndex() const = 0;
  virtual LogIndex LastIndex() const = 0;
  // Term of the entry at `index`; also answers for FirstIndex()-1 (the compaction point).
  // CompactedError below that, OutOfRange above LastIndex().
  virtual absl::StatusOr<Term> TermAt(LogIndex index) const = 0;
  // Stamp of the entry at `index` (or at the compaction point), with TermAt's errors.
  virtual absl::StatusOr<absl::Time> TimeAt(LogIndex index) const = 0;
  // Entries [lo, hi), stopping before max_bytes is exceeded but returning at least one.
  virtual absl::StatusOr<std::vector<Entry>> Entries(LogIndex lo, LogIndex hi,
                                                     uint64_t max_bytes) const = 0;
  virtual absl::StatusOr<Snapshot> GetSnapshot() const = 0;

  // Write side, used by the application only.
  // Appends entries, first discarding every held entry at or after entries.front().index.
  virtual absl::Status Append(std::span<const Entry> entries) = 0;
  virtual absl::Status SetHardState(const HardState& hard_state) = 0;
  // Replaces everything with a snapshot received from the leader (drops all entries).
  virtual absl::Status ApplySnapshot(const Snapshot& snapshot) = 0;
  // Records the application's image of the state at `index` (<= LastIndex()) as the snapshot.
  virtual absl::Status CreateSnapshot(LogIndex index, const ConfState& conf_state,
                                      std::string data) = 0;
  // Drops entries up to and including `index`, which must not be above the snapshot's index.
  virtual absl::Status Compact(LogIndex index) = 0;
};

// In-memory LogStorage for tests, the simulator and benchmarks. Everything written is
// "durable" for as long as the object lives: a simulated crash keeps the object and discards the
// node.
class MemoryLogStorage final : public LogStorage {
 public:
  MemoryLogStorage() = default;

  HardState GetHardState() const override { return hard_state_; }
  LogIndex FirstIndex() const override { return offset_ + 1; }
  LogIndex LastIndex() const override { return offset_ + entries_.size(); }
  absl::StatusOr<Term> TermAt(LogIndex index) const override;
  absl::StatusOr<absl::Time> TimeAt(LogIndex index) const override;
  absl::StatusOr<std::vector<Entry>> Entries(LogIndex lo, LogIndex hi,
                                             uint64_t max_bytes) const override;
  absl::StatusOr<Snapshot> GetSnapshot() const override { return snapshot_; }

  absl::Status Append(std::span<const Entry> entries) override;
  absl::Status SetHardState(const HardState& hard_state) override;
  absl::Status ApplySnapshot(const Snapshot& snapshot) override;
  absl::Status CreateSnapshot(LogIndex index, const ConfState& conf_state,
                              std::string data) override;
  absl::Status Compact(LogIndex index) override;

 private:
  absl::StatusOr<std::pair<Term, absl::Time>> StampAt(LogIndex index) const;

  // entries_[k] has index offset_ + 1 + k; offset_ itself is the compaction point.
  HardState hard_state_;
  Snapshot snapshot_;
  LogIndex offset_;
  Term offset_term_;
  absl::Time offset_time_ = absl::UnixEpoch();
  std::vector<Entry> entries_;
};

// Writes the initial state of a brand-new cluster member that is part of the first
// configuration: a snapshot at index 1, term 1 holding `conf_state`. Every founding member must
// be bootstrapped with the same conf_state; members added later start from empty storage.
absl::Status Bootstrap(LogStorage& storage, const ConfState& conf_state);

// What Bootstrap writes: a snapshot at index 1, term 1 holding `conf_state`, and a hard state
// committing it. For storage that can write both in one durable batch.
struct FoundingState {
  Snapshot snapshot;
  HardState hard_state;
};
FoundingState MakeFoundingState(const ConfState& conf_state);

}  // namespace backstop::raft
