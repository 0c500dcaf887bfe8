#include "ingest/limit_filters.h"

#include <future>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/synchronization/notification.h"
#include "common/clock.h"
#include "common/event_loop.h"

namespace backstop::ingest {
namespace {

using ::testing::ElementsAre;

std::shared_ptr<FilterInput> Input(Stage stage, const std::string& client_ip = "192.0.2.1") {
  auto input = std::make_shared<FilterInput>();
  input->stage = stage;
  input->client.ip = client_ip;
  input->state = std::make_shared<ConnectionState>();
  return input;
}

std::shared_ptr<FilterInput> Rcpt(const std::string& domain,
                                  std::shared_ptr<ConnectionState> state) {
  auto input = Input(Stage::kRcpt);
  input->rcpt.domain = domain;
  input->rcpt.recipient.set_address("user@" + domain);
  input->state = std::move(state);
  return input;
}

// For filters that answer at once (no loop in the input).
FilterResult CheckNow(Filter& filter, std::shared_ptr<const FilterInput> input) {
  std::optional<FilterResult> result;
  filter.Check(std::move(input), [&result](FilterResult r) { result = std::move(r); });
  EXPECT_TRUE(result.has_value()) << "the filter did not answer at once";
  return result.value_or(FilterResult::Continue("no answer"));
}

// An event loop on its own thread and the executor through which filters reach it.
class LoopThread {
 public:
  LoopThread() {
    absl::StatusOr<std::unique_ptr<EventLoop>> loop = EventLoop::Create();
    EXPECT_TRUE(loop.ok()) << loop.status();
    loop_ = *std::move(loop);
    executor_ = std::make_shared<LoopExecutor>(loop_.get());
    thread_ = std::thread([this] { loop_->Run(); });
  }
  ~LoopThread() {
    loop_->Stop();
    thread_.join();
    executor_->Close();
  }
  const std::shared_ptr<LoopExecutor>& executor() const { return executor_; }

 private:
  std::unique_ptr<EventLoop> loop_;
  std::shared_ptr<LoopExecutor> executor_;
  std::thread thread_;
};

// --- ConnectionRateFilter ---------------------------------------------------------------------

class ConnectionRateFilterTest : public ::testing::Test {
 protected:
  FilterResult Connect(ConnectionRateFilter& filter, const std::string& ip) {
    return CheckNow(filter, Input(Stage::kConnect, ip));
  }
  FakeClock clock_;
};

TEST_F(ConnectionRateFilterTest, AdmitsUpToTheRateThenRefusesWith421) {
  ConnectionRateFilter filter({.max_per_minute = 3, .clock = &clock_});
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(Connect(filter, "192.0.2.1").kind, FilterResult::Kind::kContinue) << i;
  }
  const FilterResult refused = Connect(filter, "192.0.2.1");
  ASSERT_EQ(refused.kind, FilterResult::Kind::kReject);
  EXPECT_EQ(refused.reply->code, 421);
  EXPECT_EQ(refused.reply->enhanced, "4.7.0");
  EXPECT_EQ(refused.reason, "over_rate");
}

TEST_F(ConnectionRateFilterTest, CountsEachAddressApart) {
  ConnectionRateFilter filter({.max_per_minute = 1, .clock = &clock_});
  EXPECT_EQ(Connect(filter, "192.0.2.1").kind, FilterResult::Kind::kContinue);
  EXPECT_EQ(Connect(filter, "192.0.2.2").kind, FilterResult::Kind::kContinue);
  EXPECT_EQ(Connect(filter, "2001:db8::1").kind, FilterResult::Kind::kContinue);
  EXPECT_EQ(Connect(filter, "192.0.2.1").kind, FilterResult::Kind::kReject);
}

TEST_F(ConnectionRateFilterTest, ForgetsConnectionsOlderThanAMinute) {
  ConnectionRateFilter filter({.max_per_minute = 2, .clock = &clock_});
  Connect(filter, "192.0.2.1");
  Connect(filter, "192.0.2.1");
  EXPECT_EQ(Connect(filter, "192.0.2.1").kind, FilterResult::Kind::kReject);
  clock_.Advance(absl::Minutes(2));
  EXPECT_EQ(Connect(filter, "192.0.2.1").kind, FilterResult::Kind::kContinue);
}

TEST_F(ConnectionRateFilterTest, WeighsThePreviousMinuteByWhatTheWindowStillCovers) {
  ConnectionRateFilter filter({.max_per_minute = 4, .clock = &clock_});
  for (int i = 0; i < 4; ++i) {
    Connect(filter, "192.0.2.1");
  }
  // Half of the previous minute is still in the window: its 4 connections count as 2.
  clock_.Advance(absl::Seconds(90));
  EXPECT_EQ(Connect(filter, "192.0.2.1").kind, FilterResult::Kind::kContinue);
  EXPECT_EQ(Connect(filter, "192.0.2.1").kind, FilterResult::Kind::kContinue);
  EXPECT_EQ(Connect(filter, "192.0.2.1").kind, FilterResult::Kind::kReject);
}

TEST_F(ConnectionRateFilterTest, RefusedAttemptsCount) {
  ConnectionRateFilter filter({.max_per_minute = 4, .clock = &clock_});
  for (int i = 0; i < 8; ++i) {
    Connect(filter, "192.0.2.1");
  }
  // 8 attempts (4 refused) in the previous minute, half of it still covered: 4 recent. Had
  // only the admitted ones counted, 2 recent would leave room for this one.
  clock_.Advance(absl::Seconds(90));
  EXPECT_EQ(Connect(filter, "192.0.2.1").kind, FilterResult::Kind::kReject);
}

TEST_F(ConnectionRateFilterTest, BoundsItsTableAndLetsUntrackedAddressesThrough) {
  ConnectionRateFilter filter({.max_per_minute = 1, .clock = &clock_, .max_tracked = 2});
  Connect(filter, "192.0.2.1");
  Connect(filter, "192.0.2.2");
  EXPECT_EQ(Connect(filter, "192.0.2.3").reason, "untracked");
  EXPECT_EQ(Connect(filter, "192.0.2.3").reason, "untracked");
  // Two minutes later the old addresses are swept and the new one is tracked (and limited).
  clock_.Advance(absl::Minutes(2));
  EXPECT_EQ(Connect(filter, "192.0.2.3").kind, FilterResult::Kind::kContinue);
  EXPECT_EQ(Connect(filter, "192.0.2.3").kind, FilterResult::Kind::kReject);
}

// --- HarvestFilter ----------------------------------------------------------------------------

FilterResult HarvestAfter(uint32_t rejected) {
  HarvestFilter filter(absl::Seconds(3));
  auto input = Input(Stage::kRcpt);
  input->state->rejected_recipients = rejected;
  return CheckNow(filter, input);
}

TEST(HarvestFilterTest, LeavesSessionsWithFewRejectionsAlone) {
  const FilterResult result = HarvestAfter(kHarvestSlowAfter - 1);
  EXPECT_EQ(result.kind, FilterResult::Kind::kContinue);
  EXPECT_EQ(result.delay, absl::ZeroDuration());
  EXPECT_EQ(result.reason, "");
}

TEST(HarvestFilterTest, SlowsRepliesAfterTenRejections) {
  for (uint32_t rejected : {kHarvestSlowAfter, kHarvestCloseAfter - 1}) {
    const FilterResult result = HarvestAfter(rejected);
    EXPECT_EQ(result.kind, FilterResult::Kind::kContinue) << rejected;
    EXPECT_EQ(result.delay, absl::Seconds(3)) << rejected;
    EXPECT_EQ(result.reason, "slowed") << rejected;
  }
}

TEST(HarvestFilterTest, EndsTheSessionWith421AfterTwentyRejections) {
  const FilterResult result = HarvestAfter(kHarvestCloseAfter);
  ASSERT_EQ(result.kind, FilterResult::Kind::kReject);
  EXPECT_EQ(result.reply->code, 421);
  EXPECT_EQ(result.reply->enhanced, "4.7.0");
  EXPECT_EQ(result.reason, "closed");
}

TEST(HarvestFilterTest, TheChainWaitsTheDelayOnTheConnectionsLoop) {
  LoopThread loop;
  std::vector<std::unique_ptr<Filter>> filters;
  filters.push_back(std::make_unique<HarvestFilter>(absl::Milliseconds(50)));
  auto chain =
      std::make_shared<FilterChain>(std::move(filters), std::make_shared<FilterCounters>());
  auto input = Input(Stage::kRcpt);
  input->state->rejected_recipients = kHarvestSlowAfter;
  input->executor = loop.executor();

  std::promise<bool> answered_on_loop;
  const absl::Time start = absl::Now();
  chain->Run(input, [&](FilterResult result) {
    EXPECT_EQ(result.kind, FilterResult::Kind::kContinue);
    answered_on_loop.set_value(loop.executor()->OnLoopThread());
  });
  EXPECT_TRUE(answered_on_loop.get_future().get());
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(50));
}

// --- DomainConnectionFilter -------------------------------------------------------------------

class DomainConnectionFilterTest : public ::testing::Test {
 protected:
  DomainConnectionFilter MakeFilter() {
    return DomainConnectionFilter(
        {.count =
             [this](const std::string& domain,
                    std::function<void(absl::StatusOr<queue::SessionCount>)> reply) {
               requests_.push_back(domain);
               reply(answer_);
             },
         .limits = {},
         .known = std::make_shared<KnownSessionCounts>()});
  }

  static queue::SessionCount Count(const std::string& domain, bool over_limit) {
    queue::SessionCount count;
    count.set_domain(domain);
    count.set_sessions_today(over_limit ? 2 : 1);
    count.set_over_limit(over_limit);
    return count;
  }

  std::vector<std::string> RequestedDomains() const { return requests_; }

  std::shared_ptr<ConnectionState> state_ = std::make_shared<ConnectionState>();
  absl::StatusOr<queue::SessionCount> answer_ = Count("example.com", false);
  std::vector<std::string> requests_;
};

TEST_F(DomainConnectionFilterTest, CountsTheSessionOncePerDomain) {
  DomainConnectionFilter filter = MakeFilter();
  EXPECT_EQ(CheckNow(filter, Rcpt("example.com", state_)).kind, FilterResult::Kind::kContinue);
  EXPECT_EQ(CheckNow(filter, Rcpt("example.com", state_)).kind, FilterResult::Kind::kContinue);
  answer_ = Count("example.org", false);
  EXPECT_EQ(CheckNow(filter, Rcpt("example.org", state_)).kind, FilterResult::Kind::kContinue);
  EXPECT_THAT(RequestedDomains(), ElementsAre("example.com", "example.org"));
  EXPECT_THAT(state_->counted_domains, ElementsAre("example.com", "example.org"));
}

// Whether another thread could take the session's lock while `done` ran: the next filter of
// the chain (greylisting) takes it, so an answer given under it deadlocks the loop.
bool AnsweredWithTheSessionUnlocked(Filter& filter, std::shared_ptr<FilterInput> input) {
  std::optional<bool> unlocked;
  filter.Check(input, [&](FilterResult) {
    unlocked = std::async(std::launch::async, [&] {
                 const bool locked = input->state->mutex.try_lock();
                 if (locked) {
                   input->state->mutex.unlock();
                 }
                 return locked;
               }).get();
  });
  return unlocked.value_or(false);
}

TEST_F(DomainConnectionFilterTest, AnswersWithoutHoldingTheSessionsLock) {
  DomainConnectionFilter filter = MakeFilter();
  EXPECT_TRUE(AnsweredWithTheSessionUnlocked(filter, Rcpt("example.com", state_)));
  // The second recipient of the domain: already counted.
  EXPECT_TRUE(AnsweredWithTheSessionUnlocked(filter, Rcpt("example.com", state_)));
  // With headroom, the count left to the message.
  auto known = std::make_shared<KnownSessionCounts>();
  known->Remember("example.org", 1);
  DomainConnectionFilter roomy(
      {.count = nullptr, .limits = {{"example.org", 1000}}, .known = known});
  EXPECT_TRUE(AnsweredWithTheSessionUnlocked(roomy, Rcpt("example.org", state_)));
  EXPECT_THAT(state_->uncounted_domains, ElementsAre("example.org"));
}

TEST_F(DomainConnectionFilterTest, EachSessionCountsAgain) {
  DomainConnectionFilter filter = MakeFilter();
  CheckNow(filter, Rcpt("example.com", state_));
  CheckNow(filter, Rcpt("example.com", std::make_shared<ConnectionState>()));
  EXPECT_THAT(RequestedDomains(), ElementsAre("example.com", "example.com"));
}

TEST_F(DomainConnectionFilterTest, RefusesASessionOverTheDailyLimitWith421) {
  answer_ = Count("example.com", true);
  DomainConnectionFilter filter = MakeFilter();
  const FilterResult result = CheckNow(filter, Rcpt("example.com", state_));
  ASSERT_EQ(result.kind, FilterResult::Kind::kReject);
  EXPECT_EQ(result.reply->code, 421);
  EXPECT_EQ(result.reply->enhanced, "4.7.0");
  EXPECT_EQ(result.reason, "over_limit");
}

TEST_F(DomainConnectionFilterTest, FailsOpenWhenTheQueueCannotAnswer) {
  answer_ = absl::DeadlineExceededError("no leader");
  DomainConnectionFilter filter = MakeFilter();
  const FilterResult result = CheckNow(filter, Rcpt("example.com", state_));
  EXPECT_EQ(result.kind, FilterResult::Kind::kContinue);
  EXPECT_EQ(result.reason, "queue_error");
  // The session is not asked again for the domain.
  CheckNow(filter, Rcpt("example.com", state_));
  EXPECT_EQ(requests_.size(), 1u);
}

TEST_F(DomainConnectionFilterTest, AnswersOnTheConnectionsLoopWhateverThreadTheQueueAnswersOn) {
  LoopThread loop;
  std::thread queue_thread;
  DomainConnectionFilter filter(
      {.count =
           [&queue_thread](const std::string&,
                           std::function<void(absl::StatusOr<queue::SessionCount>)> reply) {
             queue_thread = std::thread(
                 [reply = std::move(reply)] { reply(Count("example.com", /*over_limit=*/false)); });
           },
       .limits = {},
       .known = std::make_shared<KnownSessionCounts>()});
  auto input = Rcpt("example.com", state_);
  input->executor = loop.executor();
  std::promise<bool> answered_on_loop;
  filter.Check(input,
               [&](FilterResult) { answered_on_loop.set_value(loop.executor()->OnLoopThread()); });
  EXPECT_TRUE(answered_on_loop.get_future().get());
  queue_thread.join();
}

// Counts answered only when the test says so, for the RCPTs that do not wait.
class DeferredCounts {
 public:
  CountSessionCall Call() {
    return [this](const std::string& domain,
                  std::function<void(absl::StatusOr<queue::SessionCount>)> reply) {
      domains_.push_back(domain);
      replies_.push_back(std::move(reply));
    };
  }
  size_t pending() const { return replies_.size(); }
  // Answers the oldest unanswered count.
  void Answer(uint64_t sessions_today, bool over_limit) {
    queue::SessionCount count;
    count.set_domain(domains_.front());
    count.set_sessions_today(sessions_today);
    count.set_over_limit(over_limit);
    auto reply = std::move(replies_.front());
    domains_.erase(domains_.begin());
    replies_.erase(replies_.begin());
    reply(count);
  }

 private:
  std::vector<std::string> domains_;
  std::vector<std::function<void(absl::StatusOr<queue::SessionCount>)>> replies_;
};

class DomainConnectionHeadroomTest : public ::testing::Test {
 protected:
  DomainConnectionHeadroomTest()
      : known_(std::make_shared<KnownSessionCounts>(&clock_)),
        filter_({.count = counts_.Call(), .limits = {{"example.com", 100}}, .known = known_}) {
    clock_.SetWallTime(
        absl::FromCivil(absl::CivilSecond(2026, 11, 28, 12, 0, 0), absl::UTCTimeZone()));
  }

  // Runs Check; whether it answered before returning (the RCPT did not wait for a count).
  bool AnsweredAtOnce(std::shared_ptr<const FilterInput> input) {
    auto result = std::make_shared<std::optional<FilterResult>>();
    filter_.Check(std::move(input), [result](FilterResult r) { *result = std::move(r); });
    last_ = result;
    return result->has_value();
  }

  // A first session that waits for its count, answered with `sessions_today`.
  void CountedSessionAnswered(uint64_t sessions_today) {
    EXPECT_FALSE(AnsweredAtOnce(Rcpt("example.com", std::make_shared<ConnectionState>())));
    counts_.Answer(sessions_today, false);
    ASSERT_TRUE(last_->has_value());
    EXPECT_EQ((*last_)->kind, FilterResult::Kind::kContinue);
  }

  FakeClock clock_;
  DeferredCounts counts_;
  std::shared_ptr<KnownSessionCounts> known_;
  DomainConnectionFilter filter_;
  std::shared_ptr<std::optional<FilterResult>> last_;
};

TEST_F(DomainConnectionHeadroomTest, WaitsForTheCountWhileTodaysCountIsUnknown) {
  EXPECT_FALSE(AnsweredAtOnce(Rcpt("example.com", std::make_shared<ConnectionState>())));
  EXPECT_EQ(counts_.pending(), 1u);
}

TEST_F(DomainConnectionHeadroomTest, WithHeadroomLeavesTheCountToTheSessionsMessage) {
  CountedSessionAnswered(10);
  auto state = std::make_shared<ConnectionState>();
  ASSERT_TRUE(AnsweredAtOnce(Rcpt("example.com", state)))
      << "the RCPT waited although 90 of 100 sessions are left";
  EXPECT_EQ((*last_)->kind, FilterResult::Kind::kContinue);
  EXPECT_EQ(counts_.pending(), 0u);
  EXPECT_THAT(state->uncounted_domains, ElementsAre("example.com"));
  EXPECT_THAT(state->counted_domains, ElementsAre("example.com"));
  // A second recipient of the domain in the session changes nothing.
  ASSERT_TRUE(AnsweredAtOnce(Rcpt("example.com", state)));
  EXPECT_THAT(state->uncounted_domains, ElementsAre("example.com"));
}

TEST_F(DomainConnectionHeadroomTest, WaitsAgainInTheLastTenthOfTheLimit) {
  CountedSessionAnswered(90);
  EXPECT_FALSE(AnsweredAtOnce(Rcpt("example.com", std::make_shared<ConnectionState>())));
}

TEST_F(DomainConnectionHeadroomTest, ASmallLimitWaitsForEveryCount) {
  DomainConnectionFilter small(
      {.count = counts_.Call(), .limits = {{"example.com", 12}}, .known = known_});
  known_->Remember("example.com", 2);
  auto answered = std::make_shared<bool>(false);
  small.Check(Rcpt("example.com", std::make_shared<ConnectionState>()),
              [answered](FilterResult) { *answered = true; });
  EXPECT_FALSE(*answered) << "10 of 12 left are the last 10";
  EXPECT_EQ(counts_.pending(), 1u);
}

TEST_F(DomainConnectionHeadroomTest, CountsLearnedFromAppendedMessagesMoveTheThreshold) {
  CountedSessionAnswered(10);
  known_->Remember("example.com", 95);
  EXPECT_FALSE(AnsweredAtOnce(Rcpt("example.com", std::make_shared<ConnectionState>())));
  // An answer of a parallel RPC that comes late does not take the count back.
  known_->Remember("example.com", 20);
  EXPECT_FALSE(AnsweredAtOnce(Rcpt("example.com", std::make_shared<ConnectionState>())));
}

TEST_F(DomainConnectionHeadroomTest, ACountOfYesterdayLeavesNoHeadroomToday) {
  CountedSessionAnswered(10);
  clock_.SetWallTime(
      absl::FromCivil(absl::CivilSecond(2026, 11, 29, 0, 0, 1), absl::UTCTimeZone()));
  EXPECT_FALSE(AnsweredAtOnce(Rcpt("example.com", std::make_shared<ConnectionState>())));
}

TEST_F(DomainConnectionHeadroomTest, ADomainWithoutAConfiguredLimitAlwaysWaits) {
  EXPECT_FALSE(AnsweredAtOnce(Rcpt("other.example", std::make_shared<ConnectionState>())));
  counts_.Answer(1, false);
  EXPECT_FALSE(AnsweredAtOnce(Rcpt("other.example", std::make_shared<ConnectionState>())));
}

// --- QueueStorageState, QueueStorageFilter ---

TEST(QueueStorageStateTest, AdmitsEveryMailUntilMarkedFull) {
  FakeClock clock;
  QueueStorageState state({.probe_interval = absl::Seconds(3), .clock = &clock});
  EXPECT_FALSE(state.full());
  EXPECT_TRUE(state.AdmitMail());
  EXPECT_TRUE(state.AdmitMail());
}

TEST(QueueStorageStateTest, WhileFullLetsOneMailThroughPerProbeInterval) {
  FakeClock clock;
  QueueStorageState state({.probe_interval = absl::Seconds(3), .clock = &clock});
  state.MarkFull();
  EXPECT_TRUE(state.full());
  EXPECT_FALSE(state.AdmitMail());
  clock.Advance(absl::Milliseconds(2999));
  EXPECT_FALSE(state.AdmitMail());
  clock.Advance(absl::Milliseconds(1));
  EXPECT_TRUE(state.AdmitMail());  // the probe
  EXPECT_FALSE(state.AdmitMail());
  // The probe's Append refused again: the next probe is still one interval after the last.
  state.MarkFull();
  clock.Advance(absl::Seconds(2));
  EXPECT_FALSE(state.AdmitMail());
  clock.Advance(absl::Seconds(1));
  EXPECT_TRUE(state.AdmitMail());
}

TEST(QueueStorageStateTest, ACommittedAppendEndsTheFullState) {
  FakeClock clock;
  QueueStorageState state({.probe_interval = absl::Seconds(3), .clock = &clock});
  state.MarkFull();
  EXPECT_FALSE(state.AdmitMail());
  state.MarkAvailable();
  EXPECT_FALSE(state.full());
  EXPECT_TRUE(state.AdmitMail());
  EXPECT_TRUE(state.AdmitMail());
}

TEST(QueueStorageFilterTest, RefusesMailWith452WhileTheQueueStorageIsFull) {
  FakeClock clock;
  auto state = std::make_shared<QueueStorageState>(
      QueueStorageStateOptions{.probe_interval = absl::Seconds(3), .clock = &clock});
  QueueStorageFilter filter(state);
  EXPECT_TRUE(filter.Handles(Stage::kMail));
  EXPECT_FALSE(filter.Handles(Stage::kRcpt));
  EXPECT_EQ(CheckNow(filter, Input(Stage::kMail)).kind, FilterResult::Kind::kContinue);
  state->MarkFull();
  const FilterResult refused = CheckNow(filter, Input(Stage::kMail));
  ASSERT_EQ(refused.kind, FilterResult::Kind::kReject);
  EXPECT_EQ(refused.reply->Serialize(), "452 4.3.1 Insufficient system storage\r\n");
  EXPECT_EQ(refused.reason, "queue_storage_full");
  state->MarkAvailable();
  EXPECT_EQ(CheckNow(filter, Input(Stage::kMail)).kind, FilterResult::Kind::kContinue);
}

}  // namespace
}  // namespace backstop::ingest
