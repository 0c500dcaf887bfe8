#include "queue/raft/progress.h"

#include <algorithm>

namespace backstop::raft {

void Inflights::Add(LogIndex last, uint64_t bytes) {
  items_.emplace_back(last, bytes);
  bytes_ += bytes;
}

void Inflights::FreeLE(LogIndex index) {
  while (!items_.empty() && items_.front().first <= index) {
    FreeFirst();
  }
}

void Inflights::FreeFirst() {
  if (items_.empty()) {
    return;
  }
  bytes_ -= items_.front().second;
  items_.pop_front();
}

void Inflights::Reset() {
  items_.clear();
  bytes_ = 0;
}

void Progress::BecomeProbe() {
  if (state == ProgressState::kSnapshot) {
    next = std::max(match + 1, pending_snapshot + 1);
  } else {
    next = match + 1;
  }
  state = ProgressState::kProbe;
  probe_sent = false;
  pending_snapshot = LogIndex(0);
  inflights.Reset();
}

void Progress::BecomeReplicate() {
  next = match + 1;
  state = ProgressState::kReplicate;
  probe_sent = false;
  inflights.Reset();
}

void Progress::BecomeSnapshot(LogIndex snapshot_index) {
  state = ProgressState::kSnapshot;
  pending_snapshot = snapshot_index;
  ticks_in_snapshot = 0;
  probe_sent = false;
  inflights.Reset();
}

bool Progress::MaybeUpdate(LogIndex index) {
  bool updated = false;
  if (match < index) {
    match = index;
    updated = true;
    probe_sent = false;
  }
  next = std::max(next, index + 1);
  return updated;
}

bool Progress::MaybeDecrTo(LogIndex rejected, LogIndex match_hint) {
  if (state == ProgressState::kReplicate) {
    if (rejected <= match) {
      return false;  // stale
    }
    next = match + 1;
    return true;
  }
  if (next - 1 != rejected) {
    return false;  // not the probe we are waiting for
  }
  next = std::max(std::min(rejected, match_hint + 1), std::max(match + 1, LogIndex(1)));
  probe_sent = false;
  return true;
}

bool Progress::IsPaused() const {
  switch (state) {
    case ProgressState::kProbe:
      return probe_sent;
    case ProgressState::kReplicate:
      return inflights.Full();
    case ProgressState::kSnapshot:
      return true;
  }
  return true;
}

}  // namespace backstop::raft
