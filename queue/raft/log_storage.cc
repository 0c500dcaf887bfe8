#include "queue/raft/log_storage.h"

#include <string>
#include <utility>

#include "common/status.h"

namespace backstop::raft {

namespace {
constexpr char kCompactedPrefix[] = "raft log compacted at index ";
}  // namespace

absl::Status CompactedError(LogIndex index) {
  return absl::OutOfRangeError(kCompactedPrefix + std::to_string(index.value()));
}

bool IsCompacted(const absl::Status& status) {
  return status.code() == absl::StatusCode::kOutOfRange &&
         std::string(status.message()).starts_with(kCompactedPrefix);
}

bool MustSync(const HardState& durable, bool has_snapshot, bool has_entries,
              const std::optional<HardState>& hard_state) {
  return has_snapshot || has_entries ||
         (hard_state.has_value() &&
          (hard_state->term != durable.term || hard_state->vote != durable.vote));
}

absl::StatusOr<std::pair<Term, absl::Time>> MemoryLogStorage::StampAt(LogIndex index) const {
  if (index < offset_) {
    return CompactedError(index);
  }
  if (index == offset_) {
    return std::pair(offset_term_, offset_time_);
  }
  if (index > LastIndex()) {
    return absl::OutOfRangeError("raft log index " + std::to_string(index.value()) +
                                 " is beyond the last index");
  }
  const Entry& entry = entries_[index.Since(offset_) - 1];
  return std::pair(entry.term, entry.time);
}

absl::StatusOr<Term> MemoryLogStorage::TermAt(LogIndex index) const {
  ASSIGN_OR_RETURN(auto stamp, StampAt(index));
  return stamp.first;
}

absl::StatusOr<absl::Time> MemoryLogStorage::TimeAt(LogIndex index) const {
  ASSIGN_OR_RETURN(auto stamp, StampAt(index));
  return stamp.second;
}

absl::StatusOr<std::vector<Entry>> MemoryLogStorage::Entries(LogIndex lo, LogIndex hi,
                                                             uint64_t max_bytes) const {
  if (lo <= offset_) {
    return CompactedError(lo);
  }
  if (hi > LastIndex() + 1 || lo > hi) {
    return absl::OutOfRangeError("raft log range beyond the last index");
  }
  std::vector<Entry> out;
  uint64_t bytes = 0;
  for (LogIndex i = lo; i < hi; i = i + 1) {
    const Entry& entry = entries_[i.Since(offset_) - 1];
    bytes += entry.ByteSize();
    if (!out.empty() && bytes > max_bytes) {
      break;
    }
    out.push_back(entry);
  }
  return out;
}

absl::Status MemoryLogStorage::Append(std::span<const Entry> entries) {
  if (entries.empty()) {
    return absl::OkStatus();
  }
  const LogIndex first = entries.front().index;
  if (first > LastIndex() + 1) {
    return absl::InvalidArgumentError("raft append leaves a gap after the last index");
  }
  size_t skip = 0;
  while (skip < entries.size() && entries[skip].index <= offset_) {
    ++skip;  // already covered by the snapshot
  }
  if (skip == entries.size()) {
    return absl::OkStatus();
  }
  entries_.resize(entries[skip].index.Since(offset_) - 1);
  entries_.insert(entries_.end(), entries.begin() + static_cast<std::ptrdiff_t>(skip),
                  entries.end());
  return absl::OkStatus();
}

absl::Status MemoryLogStorage::SetHardState(const HardState& hard_state) {
  hard_state_ = hard_state;
  return absl::OkStatus();
}

absl::Status MemoryLogStorage::ApplySnapshot(const Snapshot& snapshot) {
  if (snapshot.meta.index <= snapshot_.meta.index && snapshot_.meta.index != LogIndex(0)) {
    return absl::FailedPreconditionError("raft snapshot is older than the one held");
  }
  snapshot_ = snapshot;
  offset_ = snapshot.meta.index;
  offset_term_ = snapshot.meta.term;
  offset_time_ = snapshot.meta.time;
  entries_.clear();
  return absl::OkStatus();
}

absl::Status MemoryLogStorage::CreateSnapshot(LogIndex index, const ConfState& conf_state,
                                              std::string data) {
  if (index <= snapshot_.meta.index || index > LastIndex() || index < offset_) {
    return absl::FailedPreconditionError("raft snapshot index out of range");
  }
  ASSIGN_OR_RETURN(Term term, TermAt(index));
  ASSIGN_OR_RETURN(absl::Time time, TimeAt(index));
  snapshot_ = Snapshot{SnapshotMeta{index, term, time, conf_state}, std::move(data)};
  return absl::OkStatus();
}

absl::Status MemoryLogStorage::Compact(LogIndex index) {
  if (index <= offset_) {
    return absl::OkStatus();
  }
  if (index > snapshot_.meta.index) {
    return absl::FailedPreconditionError("raft compaction beyond the snapshot");
  }
  ASSIGN_OR_RETURN(offset_term_, TermAt(index));
  ASSIGN_OR_RETURN(offset_time_, TimeAt(index));
  entries_.erase(entries_.begin(),
                 entries_.begin() + static_cast<std::ptrdiff_t>(index.Since(offset_)));
  offset_ = index;
  return absl::OkStatus();
}

absl::Status Bootstrap(LogStorage& storage, const ConfState& conf_state) {
  if (storage.LastIndex() != LogIndex(0) || storage.GetHardState().term != Term(0)) {
    return absl::FailedPreconditionError("raft storage is not empty");
  }
  const FoundingState founding = MakeFoundingState(conf_state);
  RETURN_IF_ERROR(storage.ApplySnapshot(founding.snapshot));
  return storage.SetHardState(founding.hard_state);
}

FoundingState MakeFoundingState(const ConfState& conf_state) {
  FoundingState founding;
  founding.snapshot.meta.index = LogIndex(1);
  founding.snapshot.meta.term = Term(1);
  founding.snapshot.meta.conf_state = conf_state;
  founding.hard_state = HardState{Term(1), kNoNode, LogIndex(1)};
  return founding;
}

}  // namespace backstop::raft
