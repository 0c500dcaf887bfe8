#pragma once

// The durable handoff (DESIGN §3.1): finished SMTP transactions, already split into one queue
// entry per destination domain, go to the queue, and each transaction learns whether it was
// committed. Transactions of many sessions and threads are coalesced into one Append RPC
// (group commit across sessions): while one RPC is in flight, the next batch accumulates.
// Sessions counted against a domain's daily limit (DESIGN §3.2) ride in the same RPCs: one
// Raft entry and fsync serve a batch of messages and session counts together.

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/queue.pb.h"

namespace backstop::ingest {

struct HandoffOutcome {
  enum class Kind : uint8_t {
    kCommitted,  // every entry is in the queue (now or from an earlier attempt): 250
    kOverLimit,  // a domain limit refused an entry: 452 4.3.1
    // The session went over a domain's daily session limit with this message (`detail` is the
    // domain; QueueEntry.count_session): 421 4.7.0, and the session ends.
    kSessionLimit,
    // The queue's leader is below its storage reserve (LIMIT_QUEUE_STORAGE): 452 4.3.1, and
    // MAIL is refused until an Append commits again (QueueStorageState).
    kStorageFull,
    kTempFail,  // no commit within the deadline, no quorum, queue unreachable: 451 4.3.0
    kRejected,  // the queue refused an entry as malformed: 554 5.3.0 (a bug, logged)
  };
  Kind kind = Kind::kTempFail;
  std::string detail;  // for the log (and the reply text of kOverLimit and kStorageFull)
  // The state machine's session counts: CountSession's one when kind is kCommitted; Submit's
  // for its entries that counted their session (QueueEntry.count_session), whatever the kind.
  std::vector<queue::SessionCount> session_counts;
};

// The Append call: QueueClient::Append in production, anything in tests.
using AppendFunction =
    std::function<absl::StatusOr<queue::AppendResult>(const queue::AppendMessages&)>;

struct QueueHandoffOptions {
  // Append RPCs in flight at once. Two: while one waits for its commit, the next batch grows
  // and a large transaction does not hold up the small ones behind it. More make smaller
  // batches, so more RPCs and Raft entries for the same messages (2 KiB, 50 sessions, 3 voters,
  // alternating runs: 4 senders 2,555 msg/s, 2 senders 2,719, medians of 3; 1 sender no faster).
  size_t senders = 2;
  // One RPC carries at most this many entries (a session to count weighs one) / bytes of
  // messages (a single larger transaction still goes alone).
  size_t max_batch_entries = 512;
  size_t max_batch_bytes = size_t{8} << 20;
};

// Owns the sender threads and the queue of transactions waiting for them. Submit() from any
// thread; `done` runs on a sender thread and must not block.
class QueueHandoff {
 public:
  QueueHandoff(AppendFunction append, QueueHandoffOptions options = {});
  // Fails what is still waiting with kTempFail (its senders were told 451 or will see the
  // connection close: never an acknowledgement) and joins the senders.
  ~QueueHandoff();
  QueueHandoff(const QueueHandoff&) = delete;
  QueueHandoff& operator=(const QueueHandoff&) = delete;

  // Commits `entries` (one transaction) unless `deadline` passes first.
  void Submit(std::vector<queue::QueueEntry> entries, absl::Time deadline,
              std::function<void(const HandoffOutcome&)> done);
  // Counts one session against `domain`'s daily session limit unless `deadline` passes first:
  // kCommitted with `session_counts` (over_limit: refused and not counted), else kTempFail.
  void CountSession(std::string domain, absl::Time deadline,
                    std::function<void(const HandoffOutcome&)> done);

  // Counters: Append RPCs made, entries carried (their ratio is the coalescing factor).
  uint64_t rpcs() const;
  uint64_t entries_sent() const;

 private:
  // A transaction's entries, or (entries empty) one session to count.
  struct Pending {
    std::vector<queue::QueueEntry> entries;
    std::string count_session;
    absl::Time deadline;
    std::function<void(const HandoffOutcome&)> done;
  };

  void Enqueue(Pending pending);

  void SenderLoop();
  // Takes the next batch off pending_ (mutex_ held).
  std::vector<Pending> TakeBatch();
  void Send(std::vector<Pending> batch);

  const AppendFunction append_;
  const QueueHandoffOptions options_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Pending> pending_;  // guarded by mutex_
  bool stopping_ = false;        // guarded by mutex_
  uint64_t rpcs_ = 0;            // guarded by mutex_
  uint64_t entries_sent_ = 0;    // guarded by mutex_
  std::vector<std::thread> senders_;
};

}  // namespace backstop::ingest
