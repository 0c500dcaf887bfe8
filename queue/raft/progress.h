#pragma once

// The leader's view of one follower's log (etcd's tracker.Progress): how far it matches, what to
// send next, and the flow-control state. Owned by the leader's Node; same threading.

#include <cstddef>
#include <cstdint>
#include <deque>
#include <utility>

#include "queue/raft/types.h"

namespace backstop::raft {

// Appends sent but not yet acknowledged, bounded by count and by bytes.
class Inflights {
 public:
  Inflights(size_t max_count, uint64_t max_bytes) : max_count_(max_count), max_bytes_(max_bytes) {}

  void Add(LogIndex last, uint64_t bytes);
  // Forgets every append whose last index is <= `index` (acknowledged).
  void FreeLE(LogIndex index);
  void FreeFirst();
  bool Full() const { return items_.size() >= max_count_ || bytes_ >= max_bytes_; }
  size_t count() const { return items_.size(); }
  void Reset();

 private:
  size_t max_count_;
  uint64_t max_bytes_;
  uint64_t bytes_ = 0;
  std::deque<std::pair<LogIndex, uint64_t>> items_;
};

enum class ProgressState : uint8_t {
  kProbe,      // match unknown: one append at a time until one is accepted
  kReplicate,  // match known: appends are pipelined up to the in-flight limits
  kSnapshot,   // a snapshot is on its way; nothing else is sent
};

struct Progress {
  Progress(LogIndex next_index, size_t max_inflight, uint64_t max_inflight_bytes)
      : next(next_index), inflights(max_inflight, max_inflight_bytes) {}

  void BecomeProbe();
  void BecomeReplicate();
  void BecomeSnapshot(LogIndex snapshot_index);
  // An acknowledgement up to `index`; returns whether match advanced.
  bool MaybeUpdate(LogIndex index);
  // A rejection of the append at `rejected`; `match_hint` is the highest index that may still
  // match. Returns false for a stale rejection.
  bool MaybeDecrTo(LogIndex rejected, LogIndex match_hint);
  bool IsPaused() const;

  LogIndex match;
  LogIndex next;
  ProgressState state = ProgressState::kProbe;
  bool probe_sent = false;     // kProbe: an append is outstanding
  LogIndex pending_snapshot;   // kSnapshot: index of the snapshot sent
  int ticks_in_snapshot = 0;   // kSnapshot: retry after an election timeout
  bool recent_active = false;  // heard from it since the last CheckQuorum round
  Inflights inflights;
};

}  // namespace backstop::raft
