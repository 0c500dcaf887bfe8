#pragma once

// The limits of the filter chain (DESIGN §3.2, §3.3): the per-IP connection rate at connect, the
// queue's storage reserve at MAIL, the directory-harvest tarpit and the per-domain daily sessions
// at RCPT. Also the plumbing shared by the filters that ask the replicated queue (this file's
// DomainConnectionFilter and the GreylistFilter): an asynchronous queue call, and answering on
// the connection's loop.

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "ingest/filter.h"
#include "proto/queue.pb.h"

namespace backstop::ingest {

// A call to the replicated queue that must not run on a loop thread (queue::QueueClient blocks):
// `answer` is called exactly once, on any thread. IngestRole runs the call on its worker pool;
// tests answer with fakes.
template <typename Request, typename Result>
using AsyncQueueCall =
    std::function<void(const Request& request, std::function<void(absl::StatusOr<Result>)> answer)>;

// Calls `done(result)` on the connection's loop thread, where the chain's next filter expects
// to run (at once when already there, or when the input has no loop, as in some tests). Dropped
// when the loop has stopped: the connection is gone.
void DoneOnLoop(const FilterInput& input, FilterDone done, FilterResult result);

struct ConnectionRateOptions {
  uint32_t max_per_minute = 0;  // new connections per client address; must be positive
  const Clock* clock = &RealClock::Get();
  // Addresses tracked at most; beyond it a new address is let through untracked (counted as
  // "untracked"), so that a flood of distinct addresses cannot grow the table without bound.
  size_t max_tracked = 100'000;
};

// "connection_rate", at connect: more than `max_per_minute` connections from one client address
// in the last minute → 421 4.7.0 (the session ends). The last minute is a sliding window,
// estimated from the counts of the current and the previous calendar minute (the previous one
// weighted by how much of it the window still covers), so each address costs two counters.
// Refused attempts count too: a client that keeps hammering stays refused until it slows down.
// The counts are per process (every ingest replica limits on its own) and start over when a
// reload rebuilds the chain. Thread-safe (one mutex; the work under it is a hash lookup).
class ConnectionRateFilter : public Filter {
 public:
  explicit ConnectionRateFilter(const ConnectionRateOptions& options);
  std::string_view name() const override { return "connection_rate"; }
  bool Handles(Stage stage) const override { return stage == Stage::kConnect; }
  void Check(std::shared_ptr<const FilterInput> input, FilterDone done) override;

 private:
  enum class Admission : uint8_t { kAdmitted, kUntracked, kOverRate };
  struct Counts {
    int64_t minute = 0;  // the calendar minute `current` counts (monotonic clock)
    uint32_t current = 0;
    uint32_t previous = 0;  // the minute before `minute`
  };

  Admission Admit(const std::string& ip);

  const ConnectionRateOptions options_;
  std::mutex mutex_;
  std::unordered_map<std::string, Counts> counts_;  // by client address; guarded by mutex_
  int64_t swept_minute_ = 0;                        // guarded by mutex_
};

// DESIGN §3.3's fixed thresholds: slower replies after this many rejected recipients in a
// session, 421 after that many.
inline constexpr uint32_t kHarvestSlowAfter = 10;
inline constexpr uint32_t kHarvestCloseAfter = 20;

// "harvest", the first RCPT filter: a session that has had kHarvestSlowAfter recipients
// rejected waits `delay` before every further RCPT reply (on its loop, through the chain), and
// one that has had kHarvestCloseAfter rejected ends with 421 4.7.0. IngestRole counts the
// rejections (ConnectionState::rejected_recipients), whatever filter refused them. Stateless.
class HarvestFilter : public Filter {
 public:
  explicit HarvestFilter(absl::Duration delay) : delay_(delay) {}
  std::string_view name() const override { return "harvest"; }
  bool Handles(Stage stage) const override { return stage == Stage::kRcpt; }
  void Check(std::shared_ptr<const FilterInput> input, FilterDone done) override;

 private:
  const absl::Duration delay_;
};

// The refusal of a session over `domain`'s daily session limit (421: the session ends), at RCPT
// or, for a session that raced past the limit, at the end of data.
Reply DailySessionsRefusal(std::string_view domain);

// Counts one session against a domain's daily limit: QueueHandoff::CountSession in production
// (it travels in the ingest's group commit), a fake in tests.
using CountSessionCall = AsyncQueueCall<std::string, queue::SessionCount>;

// The last daily-session count the queue answered per domain, the highest of its UTC day:
// whether a session's RCPT must wait for its count. Thread-safe (one mutex over a small map:
// one entry per configured domain).
class KnownSessionCounts {
 public:
  explicit KnownSessionCounts(const Clock* clock = &RealClock::Get()) : clock_(clock) {}
  // The RCPTs of the last tenth of a limit, and of its last kWaitedLastSessions at least, wait
  // for their count: a small limit stays exact at RCPT.
  static constexpr uint64_t kWaitedLastSessions = 10;

  // Whether more than that is left today by the last count known.
  bool HasHeadroom(const std::string& domain, uint64_t limit) const;
  void Remember(const std::string& domain, uint64_t sessions_today);

 private:
  struct Known {
    int64_t day = 0;  // days since the epoch (UTC)
    uint64_t sessions = 0;
  };
  int64_t Today() const;

  const Clock* const clock_;
  mutable std::mutex mutex_;
  std::unordered_map<std::string, Known> known_;  // guarded by mutex_
};

struct DomainConnectionOptions {
  CountSessionCall count;
  // The configured daily limits by domain: a domain not listed is always waited for.
  std::unordered_map<std::string, uint64_t> limits;
  // Shared with IngestRole, which feeds it the counts that come back with appended messages.
  std::shared_ptr<KnownSessionCounts> known = std::make_shared<KnownSessionCounts>();
};

// "domain_connections", at RCPT after the relay check: the first recipient of each domain in a
// session counts the session against the domain's daily limit in the replicated queue
// (DESIGN §3.2; ConnectionState::counted_domains remembers which domains are counted). Over the
// limit → 421 4.7.0 (the session ends). A queue error lets the recipient through (counted as
// "queue_error"): a backup MX that refuses mail because its own queue is slow would fail at its
// one job.
//
// The RCPT waits for the count only near the limit. While the last count known today leaves
// more than a tenth of the limit (and more than KnownSessionCounts::kWaitedLastSessions), the RCPT
// is answered at once and the domain is left in ConnectionState::uncounted_domains: IngestRole
// counts the session with its next message to the domain (QueueEntry.count_session, in the same
// Raft entry: no commit of its own), or on its own when the session ends without one. The state
// machine still counts exactly; a session that races past the last tenth gets its 421 4.7.0 at the
// end of data, before anything of it is queued. Thread-safe (the counts known are behind their own
// mutex).
class DomainConnectionFilter : public Filter {
 public:
  explicit DomainConnectionFilter(DomainConnectionOptions options) : options_(std::move(options)) {}
  std::string_view name() const override { return "domain_connections"; }
  bool Handles(Stage stage) const override { return stage == Stage::kRcpt; }
  void Check(std::shared_ptr<const FilterInput> input, FilterDone done) override;

 private:
  const DomainConnectionOptions options_;
};

struct QueueStorageStateOptions {
  // While the queue's storage is full, one MAIL per interval is let through to find out,
  // with its Append, whether space is back.
  absl::Duration probe_interval = absl::Seconds(3);
  const Clock* clock = &RealClock::Get();
};

// Whether the queue's leader refused an Append for its storage reserve ([queue] min_free_space,
// LIMIT_QUEUE_STORAGE) more recently than an Append committed. While it is full, new
// transactions are refused at MAIL rather than after their data has been sent, and one MAIL per
// probe interval goes through as the probe: its Append either commits (not full any more) or is
// refused again at end of data. No traffic, no probe: nobody waits to be told that space is
// back. Thread-safe: the handoff's threads mark, the loop threads admit.
class QueueStorageState {
 public:
  explicit QueueStorageState(const QueueStorageStateOptions& options = {});

  // An Append was refused for the queue's storage.
  void MarkFull();
  // An Append committed.
  void MarkAvailable();
  bool full() const;
  // At MAIL: whether the transaction may go on; while full, true once per probe interval.
  bool AdmitMail();

 private:
  const QueueStorageStateOptions options_;
  mutable std::mutex mutex_;
  bool full_ = false;  // guarded by mutex_
  // The clock's monotonic time after which the next MAIL is let through as a probe; guarded by
  // mutex_.
  absl::Duration next_probe_ = absl::ZeroDuration();
};

// "queue_storage", the first MAIL filter: while the queue's storage is full (QueueStorageState)
// → 452 4.3.1 Insufficient system storage, except for the periodic probe.
class QueueStorageFilter : public Filter {
 public:
  explicit QueueStorageFilter(std::shared_ptr<QueueStorageState> state)
      : state_(std::move(state)) {}
  std::string_view name() const override { return "queue_storage"; }
  bool Handles(Stage stage) const override { return stage == Stage::kMail; }
  void Check(std::shared_ptr<const FilterInput> input, FilterDone done) override;

 private:
  const std::shared_ptr<QueueStorageState> state_;
};

}  // namespace backstop::ingest
