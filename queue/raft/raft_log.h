#pragma once

// A node's view of its log: the durable part in LogStorage plus the "unstable" tail (entries
// and possibly a snapshot) that the node has accepted but the application has not yet persisted.
// Also tracks the commit and apply points. Owned by one Node; same threading as the Node.

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "queue/raft/log_storage.h"
#include "queue/raft/types.h"

namespace backstop::raft {

class RaftLog {
 public:
  // Starts from what `storage` holds; `applied` is what the application already applied.
  RaftLog(const LogStorage* storage, LogIndex applied);

  LogIndex FirstIndex() const;
  LogIndex LastIndex() const;
  Term LastTerm() const;
  // Term of the entry at `index`; nullopt when compacted away or beyond the last index. Answers
  // for FirstIndex()-1 too (the snapshot's index).
  std::optional<Term> TermAt(LogIndex index) const;
  std::optional<absl::Time> TimeAt(LogIndex index) const;
  bool MatchTerm(LogIndex index, Term term) const;
  // Raft §5.4.1: a candidate's log is at least as up to date as ours.
  bool IsUpToDate(LogIndex last_index, Term last_term) const;

  // Entries [lo, hi) within max_bytes (at least one); nullopt if lo is compacted away.
  std::optional<std::vector<Entry>> Slice(LogIndex lo, LogIndex hi, uint64_t max_bytes) const;

  // The follower side of AppendEntries: if the entry at `index` has `log_term`, appends
  // `entries` (dropping any conflicting suffix), advances the commit to min(commit, last new
  // index) and returns the last new index.
  std::optional<LogIndex> MaybeAppend(LogIndex index, Term log_term, LogIndex commit,
                                      const std::vector<Entry>& entries);
  // Appends after truncating everything from entries.front().index on. Returns LastIndex().
  LogIndex Append(const std::vector<Entry>& entries);
  // Largest index <= `index` whose term is <= `term`, with that term (fast backtracking).
  std::pair<LogIndex, Term> FindConflictByTerm(LogIndex index, Term term) const;

  LogIndex committed() const { return committed_; }
  void CommitTo(LogIndex index);
  LogIndex applied() const { return applied_; }

  // Non-empty once the log was asked to do something only a safety bug elsewhere can cause
  // (overwrite a committed entry, commit past its end). The node's owner treats it as fatal;
  // the simulator reports it as an invariant violation.
  const std::string& corruption() const { return corruption_; }

  // Replaces the log with a snapshot from the leader (still to be persisted).
  void Restore(const Snapshot& snapshot);

  // Highest index such that the log up to it is durable and still part of this log.
  LogIndex persisted() const { return persisted_; }

  // Ready plumbing. Each Take* hands out what was not handed out before.
  bool HasUnstableToHand() const;
  std::optional<Snapshot> TakeUnstableSnapshot();
  std::vector<Entry> TakeUnstableEntries();
  bool HasCommittedToHand() const;
  std::vector<Entry> TakeCommittedEntries(uint64_t max_bytes);
  // The application persisted entries up to (index, term) / the snapshot at `index`.
  void StableTo(LogIndex index, Term term);
  void StableSnapTo(LogIndex index);
  // The application applied everything handed out up to `index`.
  void AppliedTo(LogIndex index);

 private:
  std::optional<Term> StorageTermAt(LogIndex index) const;
  LogIndex FindConflict(const std::vector<Entry>& entries) const;

  const LogStorage* storage_;
  std::optional<Snapshot> unstable_snapshot_;
  bool snapshot_handed_ = false;
  std::vector<Entry> unstable_;  // unstable_[k] has index offset_ + k
  LogIndex offset_;
  size_t handed_ = 0;  // unstable_[0, handed_) are in a Ready being persisted
  LogIndex committed_;
  LogIndex applying_;  // committed entries handed out up to here
  LogIndex applied_;
  LogIndex persisted_;
  std::string corruption_;
};

}  // namespace backstop::raft
