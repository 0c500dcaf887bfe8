#include "ingest/queue_handoff.h"

#include <condition_variable>
#include <future>
#include <mutex>

#include <fmt/format.h>
#include <gtest/gtest.h>

namespace backstop::ingest {
namespace {

using Kind = HandoffOutcome::Kind;

queue::QueueEntry Entry(std::string id, std::string domain = "example.com") {
  queue::QueueEntry entry;
  entry.set_id(std::move(id));
  entry.set_domain(std::move(domain));
  entry.set_message("Subject: x\r\n\r\nbody\r\n");
  return entry;
}

// Answers every entry with `code`, except ids listed in `overrides`; counts the sessions of
// the request 1, 2, 3… in order, over the limit for "over.example".
queue::AppendResult Answer(const queue::AppendMessages& request, queue::Code code,
                           const std::map<std::string, queue::Code>& overrides = {}) {
  queue::AppendResult result;
  for (const std::string& domain : request.count_sessions()) {
    queue::SessionCount* count = result.add_session_counts();
    count->set_domain(domain);
    count->set_sessions_today(static_cast<uint64_t>(result.session_counts_size()));
    count->set_over_limit(domain == "over.example");
  }
  for (const queue::QueueEntry& entry : request.entries()) {
    queue::AppendOutcome* outcome = result.add_outcomes();
    outcome->set_id(entry.id());
    const auto it = overrides.find(entry.id());
    outcome->set_code(it == overrides.end() ? code : it->second);
    if (outcome->code() == queue::OVER_LIMIT) {
      outcome->set_limit(queue::LIMIT_QUEUED_BYTES);
    }
  }
  return result;
}

// Collects outcomes by transaction name.
class Outcomes {
 public:
  std::function<void(const HandoffOutcome&)> For(std::string name) {
    return [this, name](const HandoffOutcome& outcome) {
      std::lock_guard lock(mutex_);
      outcomes_[name] = outcome;
      changed_.notify_all();
    };
  }
  HandoffOutcome Wait(const std::string& name) {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return outcomes_.contains(name); });
    return outcomes_[name];
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::map<std::string, HandoffOutcome> outcomes_;
};

absl::Time Later() {
  return absl::Now() + absl::Minutes(1);
}

// An Append whose first call blocks until Release(): what is submitted meanwhile waits behind
// an RPC in flight. Answers every entry with `code` or its per-id override; records batch sizes.
class GatedAppend {
 public:
  explicit GatedAppend(std::map<std::string, queue::Code> overrides = {})
      : overrides_(std::move(overrides)), released_(release_.get_future().share()) {}

  AppendFunction Function() {
    return [this](const queue::AppendMessages& request) {
      bool first;
      {
        std::lock_guard lock(mutex_);
        first = sizes_.empty();
        sizes_.push_back(request.entries_size());
        sessions_.emplace_back(request.count_sessions().begin(), request.count_sessions().end());
      }
      if (first) {
        started_.set_value();
        released_.wait();
      }
      return absl::StatusOr<queue::AppendResult>(Answer(request, queue::OK, overrides_));
    };
  }
  void WaitFirstCall() { started_.get_future().wait(); }
  void Release() { release_.set_value(); }
  std::vector<size_t> sizes() {
    std::lock_guard lock(mutex_);
    return sizes_;
  }
  // The sessions each call counted.
  std::vector<std::vector<std::string>> sessions() {
    std::lock_guard lock(mutex_);
    return sessions_;
  }

 private:
  const std::map<std::string, queue::Code> overrides_;
  std::promise<void> started_;
  std::promise<void> release_;
  std::shared_future<void> released_;
  std::mutex mutex_;
  std::vector<size_t> sizes_;
  std::vector<std::vector<std::string>> sessions_;
};

QueueHandoffOptions OneSender() {
  QueueHandoffOptions options;
  options.senders = 1;
  return options;
}

TEST(QueueHandoffTest, CommitsATransactionOfSeveralEntries) {
  std::vector<size_t> sizes;
  std::mutex mutex;
  QueueHandoff handoff([&](const queue::AppendMessages& request) {
    std::lock_guard lock(mutex);
    sizes.push_back(request.entries_size());
    return absl::StatusOr<queue::AppendResult>(Answer(request, queue::OK));
  });
  Outcomes outcomes;
  handoff.Submit({Entry("a1", "a.example"), Entry("a2", "b.example")}, Later(), outcomes.For("a"));
  EXPECT_EQ(outcomes.Wait("a").kind, Kind::kCommitted);
  std::lock_guard lock(mutex);
  EXPECT_EQ(sizes, std::vector<size_t>{2});
}

TEST(QueueHandoffTest, CoalescesTransactionsWaitingBehindAnRpc) {
  GatedAppend append;
  QueueHandoff handoff(append.Function(), OneSender());
  Outcomes outcomes;
  handoff.Submit({Entry("t0")}, Later(), outcomes.For("t0"));
  append.WaitFirstCall();
  for (int i = 1; i <= 5; ++i) {
    handoff.Submit({Entry(fmt::format("t{}", i))}, Later(), outcomes.For(fmt::format("t{}", i)));
  }
  append.Release();
  for (int i = 0; i <= 5; ++i) {
    EXPECT_EQ(outcomes.Wait(fmt::format("t{}", i)).kind, Kind::kCommitted);
  }
  EXPECT_EQ(append.sizes(), (std::vector<size_t>{1, 5}));
  EXPECT_EQ(handoff.rpcs(), 2u);
  EXPECT_EQ(handoff.entries_sent(), 6u);
}

TEST(QueueHandoffTest, CountsSessionsInTheSameRpcAsTransactionsAndAnswersEachItsOwnCount) {
  GatedAppend append;
  QueueHandoff handoff(append.Function(), OneSender());
  Outcomes outcomes;
  handoff.Submit({Entry("t0")}, Later(), outcomes.For("t0"));
  append.WaitFirstCall();
  handoff.CountSession("example.com", Later(), outcomes.For("com"));
  handoff.Submit({Entry("t1")}, Later(), outcomes.For("t1"));
  handoff.CountSession("over.example", Later(), outcomes.For("over"));
  append.Release();
  const HandoffOutcome com = outcomes.Wait("com");
  ASSERT_EQ(com.kind, Kind::kCommitted);
  EXPECT_EQ(com.session_counts.at(0).domain(), "example.com");
  EXPECT_EQ(com.session_counts.at(0).sessions_today(), 1u);
  EXPECT_FALSE(com.session_counts.at(0).over_limit());
  const HandoffOutcome over = outcomes.Wait("over");
  ASSERT_EQ(over.kind, Kind::kCommitted);
  EXPECT_EQ(over.session_counts.at(0).domain(), "over.example");
  EXPECT_EQ(over.session_counts.at(0).sessions_today(), 2u);
  EXPECT_TRUE(over.session_counts.at(0).over_limit());
  EXPECT_EQ(outcomes.Wait("t1").kind, Kind::kCommitted);
  // One RPC carried the waiting transaction and both sessions.
  EXPECT_EQ(append.sizes(), (std::vector<size_t>{1, 1}));
  EXPECT_EQ(append.sessions(),
            (std::vector<std::vector<std::string>>{{}, {"example.com", "over.example"}}));
  // Entries carried, not sessions counted.
  EXPECT_EQ(handoff.entries_sent(), 2u);
}

TEST(QueueHandoffTest, ASessionCountMissingFromTheAnswerIsATemporaryFailure) {
  // The leader's storage refusal answers the entries only (queue_service.cc StorageFullResult).
  QueueHandoff handoff([](const queue::AppendMessages&) {
    return absl::StatusOr<queue::AppendResult>(queue::AppendResult());
  });
  Outcomes outcomes;
  handoff.CountSession("example.com", Later(), outcomes.For("count"));
  const HandoffOutcome outcome = outcomes.Wait("count");
  EXPECT_EQ(outcome.kind, Kind::kTempFail);
  EXPECT_NE(outcome.detail.find("session count"), std::string::npos);
}

TEST(QueueHandoffTest, JudgesEachTransactionOfABatchByItsOwnEntries) {
  GatedAppend append({{"over", queue::OVER_LIMIT},
                      {"dup", queue::ALREADY_EXISTS},
                      {"bad", queue::INVALID_ARGUMENT}});
  QueueHandoff handoff(append.Function(), OneSender());
  Outcomes outcomes;
  handoff.Submit({Entry("first")}, Later(), outcomes.For("first"));
  append.WaitFirstCall();
  handoff.Submit({Entry("ok1"), Entry("over", "full.example")}, Later(), outcomes.For("mixed"));
  handoff.Submit({Entry("dup")}, Later(), outcomes.For("dup"));
  handoff.Submit({Entry("bad")}, Later(), outcomes.For("bad"));
  handoff.Submit({Entry("ok2")}, Later(), outcomes.For("ok"));
  append.Release();
  const HandoffOutcome mixed = outcomes.Wait("mixed");
  EXPECT_EQ(mixed.kind, Kind::kOverLimit);
  EXPECT_NE(mixed.detail.find("full.example"), std::string::npos);
  EXPECT_NE(mixed.detail.find("queued bytes"), std::string::npos);
  EXPECT_EQ(outcomes.Wait("dup").kind, Kind::kCommitted);
  EXPECT_EQ(outcomes.Wait("bad").kind, Kind::kRejected);
  EXPECT_EQ(outcomes.Wait("ok").kind, Kind::kCommitted);
  EXPECT_EQ(append.sizes().size(), 2u);
}

TEST(QueueHandoffTest, ASessionOverItsDailyLimitAtTheEndOfDataIsASessionLimitWithItsCounts) {
  QueueHandoff handoff([](const queue::AppendMessages& request) {
    queue::AppendResult result = Answer(request, queue::OK);
    for (int i = 0; i < request.entries_size(); ++i) {
      queue::AppendOutcome& outcome = *result.mutable_outcomes(i);
      if (request.entries(i).domain() == "busy.example") {
        outcome.set_code(queue::OVER_LIMIT);
        outcome.set_limit(queue::LIMIT_DAILY_CONNECTIONS);
        outcome.set_sessions_today(7);
      } else if (request.entries(i).count_session()) {
        outcome.set_sessions_today(3);
      }
    }
    return absl::StatusOr<queue::AppendResult>(result);
  });
  Outcomes outcomes;
  queue::QueueEntry counted = Entry("a", "example.org");
  counted.set_count_session(true);
  queue::QueueEntry busy = Entry("b", "busy.example");
  busy.set_count_session(true);
  handoff.Submit({counted, Entry("c"), busy}, Later(), outcomes.For("abc"));
  const HandoffOutcome outcome = outcomes.Wait("abc");
  EXPECT_EQ(outcome.kind, Kind::kSessionLimit);
  EXPECT_EQ(outcome.detail, "busy.example");
  ASSERT_EQ(outcome.session_counts.size(), 2u);
  EXPECT_EQ(outcome.session_counts[0].domain(), "example.org");
  EXPECT_EQ(outcome.session_counts[0].sessions_today(), 3u);
  EXPECT_FALSE(outcome.session_counts[0].over_limit());
  EXPECT_EQ(outcome.session_counts[1].domain(), "busy.example");
  EXPECT_EQ(outcome.session_counts[1].sessions_today(), 7u);
  EXPECT_TRUE(outcome.session_counts[1].over_limit());
}

TEST(QueueHandoffTest, QueueStorageRefusalIsStorageFullNotADomainLimit) {
  QueueHandoff handoff([](const queue::AppendMessages& request) {
    queue::AppendResult result = Answer(request, queue::OVER_LIMIT);
    for (queue::AppendOutcome& outcome : *result.mutable_outcomes()) {
      outcome.set_limit(queue::LIMIT_QUEUE_STORAGE);
    }
    return absl::StatusOr<queue::AppendResult>(result);
  });
  Outcomes outcomes;
  handoff.Submit({Entry("a"), Entry("b", "example.org")}, Later(), outcomes.For("ab"));
  const HandoffOutcome outcome = outcomes.Wait("ab");
  EXPECT_EQ(outcome.kind, Kind::kStorageFull);
  EXPECT_EQ(outcome.detail, "the queue's storage is full");
}

TEST(QueueHandoffTest, RpcFailureIsATemporaryFailure) {
  QueueHandoff handoff([](const queue::AppendMessages&) {
    return absl::StatusOr<queue::AppendResult>(absl::UnavailableError("no quorum"));
  });
  Outcomes outcomes;
  handoff.Submit({Entry("a")}, Later(), outcomes.For("a"));
  const HandoffOutcome outcome = outcomes.Wait("a");
  EXPECT_EQ(outcome.kind, Kind::kTempFail);
  EXPECT_EQ(outcome.detail, "no quorum");
}

TEST(QueueHandoffTest, AnswerMissingAnEntryIsATemporaryFailure) {
  QueueHandoff handoff([](const queue::AppendMessages&) {
    return absl::StatusOr<queue::AppendResult>(queue::AppendResult());
  });
  Outcomes outcomes;
  handoff.Submit({Entry("a")}, Later(), outcomes.For("a"));
  EXPECT_EQ(outcomes.Wait("a").kind, Kind::kTempFail);
}

TEST(QueueHandoffTest, DoesNotSendATransactionPastItsDeadline) {
  std::atomic<int> calls{0};
  QueueHandoff handoff([&](const queue::AppendMessages& request) {
    calls.fetch_add(1);
    return absl::StatusOr<queue::AppendResult>(Answer(request, queue::OK));
  });
  Outcomes outcomes;
  handoff.Submit({Entry("late")}, absl::Now() - absl::Seconds(1), outcomes.For("late"));
  EXPECT_EQ(outcomes.Wait("late").kind, Kind::kTempFail);
  EXPECT_EQ(calls.load(), 0);
}

TEST(QueueHandoffTest, CommitAfterTheDeadlineIsATemporaryFailure) {
  const absl::Time deadline = absl::Now() + absl::Milliseconds(100);
  QueueHandoff handoff([&](const queue::AppendMessages& request) {
    // The queue answers, but only after the transaction's deadline (a slow quorum).
    while (absl::Now() <= deadline) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    return absl::StatusOr<queue::AppendResult>(Answer(request, queue::OK));
  });
  Outcomes outcomes;
  handoff.Submit({Entry("slow")}, deadline, outcomes.For("slow"));
  // DESIGN §3.1: no commit within smtp.commit_timeout is 451; the late commit is a duplicate
  // once the client retries, never an acknowledgement long after the timeout.
  EXPECT_EQ(outcomes.Wait("slow").kind, Kind::kTempFail);
}

TEST(QueueHandoffTest, SplitsBatchesAtTheEntryLimit) {
  GatedAppend append;
  QueueHandoffOptions options = OneSender();
  options.max_batch_entries = 3;
  QueueHandoff handoff(append.Function(), options);
  Outcomes outcomes;
  handoff.Submit({Entry("x")}, Later(), outcomes.For("x"));
  append.WaitFirstCall();
  handoff.Submit({Entry("a1"), Entry("a2")}, Later(), outcomes.For("a"));
  handoff.Submit({Entry("b1"), Entry("b2")}, Later(), outcomes.For("b"));
  handoff.Submit({Entry("c1")}, Later(), outcomes.For("c"));
  append.Release();
  for (const char* name : {"x", "a", "b", "c"}) {
    EXPECT_EQ(outcomes.Wait(name).kind, Kind::kCommitted);
  }
  // a (2) + b (2) would exceed 3: b starts the next batch, c joins it.
  EXPECT_EQ(append.sizes(), (std::vector<size_t>{1, 2, 3}));
}

TEST(QueueHandoffTest, ShutdownFailsWhatIsStillWaiting) {
  GatedAppend append;
  Outcomes outcomes;
  std::thread releaser;
  {
    QueueHandoff handoff(append.Function(), OneSender());
    handoff.Submit({Entry("inflight")}, Later(), outcomes.For("inflight"));
    append.WaitFirstCall();
    handoff.Submit({Entry("waiting")}, Later(), outcomes.For("waiting"));
    // Releases the in-flight call once the destructor has begun: a Submit is then refused on
    // the caller's own thread.
    releaser = std::thread([&] {
      while (true) {
        auto refused_here = std::make_shared<std::atomic<bool>>(false);
        handoff.Submit({Entry("probe")}, Later(),
                       [refused_here, me = std::this_thread::get_id()](const HandoffOutcome&) {
                         if (std::this_thread::get_id() == me) {
                           refused_here->store(true);
                         }
                       });
        if (refused_here->load()) {
          break;
        }
        std::this_thread::yield();
      }
      append.Release();
    });
  }
  releaser.join();
  EXPECT_EQ(outcomes.Wait("inflight").kind, Kind::kCommitted);
  EXPECT_EQ(outcomes.Wait("waiting").kind, Kind::kTempFail);
}

}  // namespace
}  // namespace backstop::ingest
