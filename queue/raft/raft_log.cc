#include "queue/raft/raft_log.h"

#include <algorithm>
#include <string>

namespace backstop::raft {

RaftLog::RaftLog(const LogStorage* storage, LogIndex applied)
    : storage_(storage),
      offset_(storage->LastIndex() + 1),
      committed_(storage->GetHardState().commit),
      applying_(std::max(applied, storage->FirstIndex() - 1)),
      applied_(applying_),
      persisted_(storage->LastIndex()) {}

LogIndex RaftLog::FirstIndex() const {
  if (unstable_snapshot_) {
    return unstable_snapshot_->meta.index + 1;
  }
  return storage_->FirstIndex();
}

LogIndex RaftLog::LastIndex() const {
  if (!unstable_.empty()) {
    return offset_ + (unstable_.size() - 1);
  }
  if (unstable_snapshot_) {
    return unstable_snapshot_->meta.index;
  }
  return storage_->LastIndex();
}

Term RaftLog::LastTerm() const {
  return TermAt(LastIndex()).value_or(Term(0));
}

std::optional<Term> RaftLog::StorageTermAt(LogIndex index) const {
  absl::StatusOr<Term> term = storage_->TermAt(index);
  if (!term.ok()) {
    return std::nullopt;
  }
  return *term;
}

std::optional<Term> RaftLog::TermAt(LogIndex index) const {
  if (index > LastIndex()) {
    return std::nullopt;
  }
  if (!unstable_.empty() && index >= offset_) {
    return unstable_[index.Since(offset_)].term;
  }
  if (unstable_snapshot_) {
    if (index == unstable_snapshot_->meta.index) {
      return unstable_snapshot_->meta.term;
    }
    return std::nullopt;  // everything else is below the snapshot
  }
  return StorageTermAt(index);
}

std::optional<absl::Time> RaftLog::TimeAt(LogIndex index) const {
  if (index > LastIndex()) {
    return std::nullopt;
  }
  if (!unstable_.empty() && index >= offset_) {
    return unstable_[index.Since(offset_)].time;
  }
  if (unstable_snapshot_) {
    if (index == unstable_snapshot_->meta.index) {
      return unstable_snapshot_->meta.time;
    }
    return std::nullopt;
  }
  absl::StatusOr<absl::Time> time = storage_->TimeAt(index);
  if (!time.ok()) {
    return std::nullopt;
  }
  return *time;
}

bool RaftLog::MatchTerm(LogIndex index, Term term) const {
  std::optional<Term> t = TermAt(index);
  return t.has_value() && *t == term;
}

bool RaftLog::IsUpToDate(LogIndex last_index, Term last_term) const {
  const Term my_last_term = LastTerm();
  return last_term > my_last_term || (last_term == my_last_term && last_index >= LastIndex());
}

std::optional<std::vector<Entry>> RaftLog::Slice(LogIndex lo, LogIndex hi,
                                                 uint64_t max_bytes) const {
  if (lo < FirstIndex()) {
    return std::nullopt;
  }
  hi = std::min(hi, LastIndex() + 1);
  std::vector<Entry> out;
  if (lo >= hi) {
    return out;
  }
  uint64_t bytes = 0;
  const LogIndex stable_end = unstable_.empty() ? hi : std::min(hi, offset_);
  if (lo < stable_end) {
    absl::StatusOr<std::vector<Entry>> stored = storage_->Entries(lo, stable_end, max_bytes);
    if (!stored.ok()) {
      return std::nullopt;
    }
    out = *std::move(stored);
    for (const Entry& e : out) {
      bytes += e.ByteSize();
    }
    if (out.size() < stable_end.Since(lo)) {
      return out;  // hit max_bytes
    }
  }
  for (LogIndex i = std::max(lo, offset_); i < hi && !unstable_.empty(); i = i + 1) {
    const Entry& e = unstable_[i.Since(offset_)];
    bytes += e.ByteSize();
    if (!out.empty() && bytes > max_bytes) {
      break;
    }
    out.push_back(e);
  }
  return out;
}

LogIndex RaftLog::FindConflict(const std::vector<Entry>& entries) const {
  for (const Entry& e : entries) {
    if (!MatchTerm(e.index, e.term)) {
      return e.index;
    }
  }
  return LogIndex(0);
}

std::optional<LogIndex> RaftLog::MaybeAppend(LogIndex index, Term log_term, LogIndex commit,
                                             const std::vector<Entry>& entries) {
  if (!MatchTerm(index, log_term)) {
    return std::nullopt;
  }
  const LogIndex last_new = index + entries.size();
  const LogIndex conflict = FindConflict(entries);
  if (conflict != LogIndex(0)) {
    if (conflict <= committed_) {
      corruption_ = "entry " + std::to_string(conflict.value()) +
                    " conflicts with the committed prefix (commit " +
                    std::to_string(committed_.value()) + ")";
      return std::nullopt;
    }
    Append(std::vector<Entry>(
        entries.begin() + static_cast<std::ptrdiff_t>(conflict.Since(index + 1)), entries.end()));
  }
  CommitTo(std::min(commit, last_new));
  return last_new;
}

LogIndex RaftLog::Append(const std::vector<Entry>& entries) {
  if (entries.empty()) {
    return LastIndex();
  }
  const LogIndex after = entries.front().index;
  const LogIndex end = offset_ + unstable_.size();
  if (after == end) {
    unstable_.insert(unstable_.end(), entries.begin(), entries.end());
  } else if (after <= offset_) {
    offset_ = after;
    unstable_ = entries;
    handed_ = 0;
  } else {
    unstable_.resize(after.Since(offset_));
    handed_ = std::min(handed_, unstable_.size());
    unstable_.insert(unstable_.end(), entries.begin(), entries.end());
  }
  persisted_ = std::min(persisted_, after - 1);
  return LastIndex();
}

std::pair<LogIndex, Term> RaftLog::FindConflictByTerm(LogIndex index, Term term) const {
  index = std::min(index, LastIndex());
  while (true) {
    std::optional<Term> t = TermAt(index);
    if (!t.has_value()) {
      return {index, Term(0)};  // compacted: the leader falls back to a snapshot
    }
    if (*t <= term || index == LogIndex(0)) {
      return {index, *t};
    }
    index = index - 1;
  }
}

void RaftLog::CommitTo(LogIndex index) {
  if (index <= committed_) {
    return;
  }
  if (index > LastIndex()) {
    corruption_ = "commit " + std::to_string(index.value()) + " is beyond the last index " +
                  std::to_string(LastIndex().value());
    return;
  }
  committed_ = index;
}

void RaftLog::Restore(const Snapshot& snapshot) {
  committed_ = snapshot.meta.index;
  unstable_snapshot_ = snapshot;
  snapshot_handed_ = false;
  unstable_.clear();
  offset_ = snapshot.meta.index + 1;
  handed_ = 0;
  persisted_ = LogIndex(0);
}

bool RaftLog::HasUnstableToHand() const {
  return (unstable_snapshot_ && !snapshot_handed_) || handed_ < unstable_.size();
}

std::optional<Snapshot> RaftLog::TakeUnstableSnapshot() {
  if (!unstable_snapshot_ || snapshot_handed_) {
    return std::nullopt;
  }
  snapshot_handed_ = true;
  return unstable_snapshot_;
}

std::vector<Entry> RaftLog::TakeUnstableEntries() {
  std::vector<Entry> out(unstable_.begin() + static_cast<std::ptrdiff_t>(handed_), unstable_.end());
  handed_ = unstable_.size();
  return out;
}

bool RaftLog::HasCommittedToHand() const {
  return !unstable_snapshot_ && applying_ < std::min(committed_, LastIndex());
}

std::vector<Entry> RaftLog::TakeCommittedEntries(uint64_t max_bytes) {
  if (!HasCommittedToHand()) {
    return {};
  }
  std::optional<std::vector<Entry>> entries =
      Slice(applying_ + 1, std::min(committed_, LastIndex()) + 1, max_bytes);
  if (!entries.has_value() || entries->empty()) {
    return {};
  }
  applying_ = entries->back().index;
  return *std::move(entries);
}

void RaftLog::StableTo(LogIndex index, Term term) {
  if (unstable_.empty() || index < offset_ || index >= offset_ + unstable_.size() ||
      unstable_[index.Since(offset_)].term != term) {
    return;  // overwritten since it was handed out; the newer entries are still unstable
  }
  const size_t n = index.Since(offset_) + 1;
  unstable_.erase(unstable_.begin(), unstable_.begin() + static_cast<std::ptrdiff_t>(n));
  offset_ = index + 1;
  handed_ = handed_ > n ? handed_ - n : 0;
  persisted_ = std::max(persisted_, index);
}

void RaftLog::StableSnapTo(LogIndex index) {
  // The state machine holds the snapshot even if a newer one arrived meanwhile.
  applying_ = std::max(applying_, index);
  applied_ = std::max(applied_, index);
  if (!unstable_snapshot_ || unstable_snapshot_->meta.index != index) {
    return;
  }
  unstable_snapshot_.reset();
  snapshot_handed_ = false;
  persisted_ = std::max(persisted_, index);
}

void RaftLog::AppliedTo(LogIndex index) {
  applied_ = std::max(applied_, index);
}

}  // namespace backstop::raft
