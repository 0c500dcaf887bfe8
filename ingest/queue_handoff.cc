#include "ingest/queue_handoff.h"

#include <unordered_map>
#include <utility>

#include <fmt/format.h>

namespace backstop::ingest {
namespace {

using Kind = HandoffOutcome::Kind;

std::string_view LimitName(queue::Limit limit) {
  switch (limit) {
    case queue::LIMIT_QUEUED_MESSAGES:
      return "queued messages";
    case queue::LIMIT_QUEUED_BYTES:
      return "queued bytes";
    case queue::LIMIT_MONTHLY_BYTES:
      return "monthly bytes";
    case queue::LIMIT_DAILY_CONNECTIONS:
      return "daily connections";
    default:
      return "limit";
  }
}

size_t MessageBytes(const std::vector<queue::QueueEntry>& entries) {
  size_t bytes = 0;
  for (const queue::QueueEntry& entry : entries) {
    bytes += entry.message().size();
  }
  return bytes;
}

using OutcomesById = std::unordered_map<std::string, const queue::AppendOutcome*>;

// The verdict on one entry, kCommitted when it is in the queue.
HandoffOutcome JudgeEntry(const queue::QueueEntry& entry, const queue::AppendOutcome& appended) {
  if (appended.code() == queue::OK || appended.code() == queue::ALREADY_EXISTS) {
    return {Kind::kCommitted, "", {}};
  }
  if (appended.code() == queue::OVER_LIMIT && appended.limit() == queue::LIMIT_QUEUE_STORAGE) {
    return {Kind::kStorageFull, "the queue's storage is full", {}};
  }
  if (appended.code() == queue::OVER_LIMIT && appended.limit() == queue::LIMIT_DAILY_CONNECTIONS) {
    return {Kind::kSessionLimit, entry.domain(), {}};
  }
  if (appended.code() == queue::OVER_LIMIT) {
    return {
        Kind::kOverLimit,
        fmt::format("domain {} is over its {} limit", entry.domain(), LimitName(appended.limit())),
        {}};
  }
  return {Kind::kRejected,
          fmt::format("the queue refused the entry for {} ({})", entry.domain(),
                      queue::Code_Name(appended.code())),
          {}};
}

// One transaction's verdict from the outcomes of its entries request[first, first + count):
// the first entry's that is not committed, else kCommitted; with the session counted by its
// entries (QueueEntry.count_session), if any.
HandoffOutcome Judge(const queue::AppendMessages& request, int first, int count,
                     const OutcomesById& by_id) {
  HandoffOutcome verdict{Kind::kCommitted, "", {}};
  std::vector<queue::SessionCount> sessions;
  for (int i = first; i < first + count; ++i) {
    const queue::QueueEntry& entry = request.entries(i);
    const auto it = by_id.find(entry.id());
    if (it == by_id.end()) {
      return {Kind::kTempFail, "the queue's answer lacks an entry", {}};
    }
    const queue::AppendOutcome& appended = *it->second;
    if (entry.count_session()) {
      queue::SessionCount& session = sessions.emplace_back();
      session.set_domain(entry.domain());
      session.set_sessions_today(appended.sessions_today());
      session.set_over_limit(appended.limit() == queue::LIMIT_DAILY_CONNECTIONS);
    }
    if (verdict.kind == Kind::kCommitted) {
      verdict = JudgeEntry(entry, appended);
    }
  }
  verdict.session_counts = std::move(sessions);
  return verdict;
}

}  // namespace

QueueHandoff::QueueHandoff(AppendFunction append, QueueHandoffOptions options)
    : append_(std::move(append)), options_(options) {
  for (size_t i = 0; i < std::max<size_t>(1, options_.senders); ++i) {
    senders_.emplace_back([this] { SenderLoop(); });
  }
}

QueueHandoff::~QueueHandoff() {
  std::deque<Pending> abandoned;
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    abandoned.swap(pending_);
  }
  wake_.notify_all();
  for (std::thread& sender : senders_) {
    sender.join();
  }
  for (Pending& pending : abandoned) {
    pending.done({Kind::kTempFail, "ingest is shutting down", {}});
  }
}

void QueueHandoff::Submit(std::vector<queue::QueueEntry> entries, absl::Time deadline,
                          std::function<void(const HandoffOutcome&)> done) {
  Enqueue({.entries = std::move(entries),
           .count_session = {},
           .deadline = deadline,
           .done = std::move(done)});
}

void QueueHandoff::CountSession(std::string domain, absl::Time deadline,
                                std::function<void(const HandoffOutcome&)> done) {
  Enqueue({.entries = {},
           .count_session = std::move(domain),
           .deadline = deadline,
           .done = std::move(done)});
}

void QueueHandoff::Enqueue(Pending pending) {
  {
    std::lock_guard lock(mutex_);
    if (!stopping_) {
      pending_.push_back(std::move(pending));
      wake_.notify_one();
      return;
    }
  }
  pending.done({Kind::kTempFail, "ingest is shutting down", {}});
}

uint64_t QueueHandoff::rpcs() const {
  std::lock_guard lock(mutex_);
  return rpcs_;
}

uint64_t QueueHandoff::entries_sent() const {
  std::lock_guard lock(mutex_);
  return entries_sent_;
}

std::vector<QueueHandoff::Pending> QueueHandoff::TakeBatch() {
  std::vector<Pending> batch;
  size_t items = 0;  // entries, and sessions to count (one each)
  size_t bytes = 0;
  while (!pending_.empty()) {
    Pending& next = pending_.front();
    const size_t next_bytes = MessageBytes(next.entries);
    const size_t next_items = std::max<size_t>(1, next.entries.size());
    if (!batch.empty() && (items + next_items > options_.max_batch_entries ||
                           bytes + next_bytes > options_.max_batch_bytes)) {
      break;
    }
    items += next_items;
    bytes += next_bytes;
    entries_sent_ += next.entries.size();
    batch.push_back(std::move(next));
    pending_.pop_front();
  }
  rpcs_ += 1;
  return batch;
}

void QueueHandoff::SenderLoop() {
  while (true) {
    std::vector<Pending> batch;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || !pending_.empty(); });
      if (stopping_) {
        return;
      }
      batch = TakeBatch();
    }
    Send(std::move(batch));
  }
}

void QueueHandoff::Send(std::vector<Pending> batch) {
  // A transaction that waited past its deadline is not sent: its client is told 451 now, and
  // an entry committed after that would only be a duplicate.
  const absl::Time now = absl::Now();
  queue::AppendMessages request;
  std::vector<Pending> sent;
  sent.reserve(batch.size());
  for (Pending& pending : batch) {
    if (pending.deadline <= now) {
      pending.done({Kind::kTempFail, "commit deadline passed before the queue was reached", {}});
      continue;
    }
    for (queue::QueueEntry& entry : pending.entries) {
      *request.add_entries() = std::move(entry);
    }
    if (pending.entries.empty()) {
      request.add_count_sessions(std::move(pending.count_session));
    }
    sent.push_back(std::move(pending));
  }
  if (sent.empty()) {
    return;
  }

  const absl::StatusOr<queue::AppendResult> result = append_(request);
  if (!result.ok()) {
    const HandoffOutcome outcome{Kind::kTempFail, std::string(result.status().message()), {}};
    for (Pending& pending : sent) {
      pending.done(outcome);
    }
    return;
  }
  OutcomesById by_id;
  for (const queue::AppendOutcome& outcome : result->outcomes()) {
    by_id[outcome.id()] = &outcome;
  }

  // A commit that came after a transaction's deadline is not acknowledged (DESIGN §3.1: past
  // smtp.commit_timeout the reply is 451): the RPC's own deadline starts when it is sent, so
  // a transaction that waited for a sender could otherwise get its 250 long after the timeout.
  const absl::Time answered = absl::Now();
  // The request holds every sent transaction's entries and every session to count, in order.
  int first_entry = 0;
  int next_session = 0;
  for (Pending& pending : sent) {
    HandoffOutcome outcome;
    if (pending.entries.empty()) {
      outcome =
          next_session < result->session_counts_size()
              ? HandoffOutcome{Kind::kCommitted, "", {result->session_counts(next_session)}}
              : HandoffOutcome{Kind::kTempFail, "the queue's answer lacks a session count", {}};
      ++next_session;
    } else {
      const int count = static_cast<int>(pending.entries.size());
      outcome = Judge(request, first_entry, count, by_id);
      first_entry += count;
    }
    if (outcome.kind == Kind::kCommitted && pending.deadline <= answered) {
      outcome = {Kind::kTempFail, "committed only after the commit deadline", {}};
    }
    pending.done(outcome);
  }
}

}  // namespace backstop::ingest
