#include "ingest/callout.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <future>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/clock.h"
#include "common/socket.h"

namespace backstop::ingest {
namespace {

using ::testing::ElementsAre;

// How the fake primary answers.
enum class Behaviour : uint8_t {
  kAnswer,    // 250 for its users, 550 5.1.1 for others
  kTempFail,  // 451 4.3.0 to every RCPT
  kPolicy,    // 550 5.7.1 (a refusal that says nothing about the user)
  kSilent,    // accepts the connection and never says a word
  kHoldRcpt,  // answers RCPT only once Release() is called
};

// An SMTP primary on a loopback port-0 socket, served by one thread, one connection at a time,
// that records the commands it gets.
class FakePrimary {
 public:
  FakePrimary(std::set<std::string> users, Behaviour behaviour)
      : users_(std::move(users)), behaviour_(behaviour) {
    absl::StatusOr<SocketAddress> any = SocketAddress::Parse("127.0.0.1:0");
    absl::StatusOr<UniqueFd> fd = Listen(*any);
    EXPECT_TRUE(fd.ok()) << fd.status();
    listener_ = *std::move(fd);
    port_ = SocketAddress::LocalOf(listener_.get())->port();
    thread_ = std::thread([this] { Serve(); });
  }
  ~FakePrimary() {
    Release();
    stopping_ = true;
    thread_.join();
  }

  HostPort address() const { return {"127.0.0.1", port_}; }
  int connections() const { return connections_; }
  std::vector<std::string> commands() {
    std::lock_guard lock(mutex_);
    return commands_;
  }
  void Release() {
    std::lock_guard lock(mutex_);
    released_ = true;
    release_.notify_all();
  }

 private:
  void Serve() {
    while (!stopping_) {
      pollfd pfd{listener_.get(), POLLIN, 0};
      if (poll(&pfd, 1, 20) <= 0) {
        continue;
      }
      UniqueFd client(accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (!client.valid()) {
        continue;
      }
      ++connections_;
      Converse(client.get());
    }
  }

  void Converse(int fd) {
    if (behaviour_ == Behaviour::kSilent) {
      // Until the client gives up.
      char byte;
      while (!stopping_ && recv(fd, &byte, 1, 0) > 0) {
      }
      return;
    }
    Send(fd, "220 primary.test ESMTP\r\n");
    std::string line;
    while (ReadLine(fd, &line)) {
      {
        std::lock_guard lock(mutex_);
        commands_.push_back(line);
      }
      if (line.starts_with("EHLO")) {
        Send(fd, "250-primary.test\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n");
      } else if (line.starts_with("MAIL")) {
        Send(fd, "250 2.1.0 Ok\r\n");
      } else if (line.starts_with("RCPT")) {
        Send(fd, RcptReply(line));
      } else if (line == "QUIT") {
        Send(fd, "221 2.0.0 Bye\r\n");
        return;
      } else {
        Send(fd, "500 5.5.1 What?\r\n");
      }
    }
  }

  std::string RcptReply(const std::string& line) {
    switch (behaviour_) {
      case Behaviour::kTempFail:
        return "451 4.3.0 Try again later\r\n";
      case Behaviour::kPolicy:
        return "550 5.7.1 Relaying denied\r\n";
      case Behaviour::kHoldRcpt: {
        std::unique_lock lock(mutex_);
        release_.wait(lock, [this] { return released_; });
        break;
      }
      default:
        break;
    }
    const size_t open = line.find('<');
    const std::string address = line.substr(open + 1, line.find('>') - open - 1);
    return users_.contains(address) ? "250 2.1.5 Ok\r\n" : "550 5.1.1 User unknown\r\n";
  }

  static void Send(int fd, const std::string& text) {
    (void)send(fd, text.data(), text.size(), MSG_NOSIGNAL);
  }

  bool ReadLine(int fd, std::string* line) {
    line->clear();
    char c;
    while (recv(fd, &c, 1, 0) == 1) {
      if (c == '\n' && !line->empty() && line->back() == '\r') {
        line->pop_back();
        return true;
      }
      line->push_back(c);
    }
    return false;
  }

  const std::set<std::string> users_;
  const Behaviour behaviour_;
  UniqueFd listener_;
  uint16_t port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int> connections_{0};
  std::mutex mutex_;
  std::condition_variable release_;
  bool released_ = false;              // guarded by mutex_
  std::vector<std::string> commands_;  // guarded by mutex_
  std::thread thread_;
};

// A loopback port nobody listens on: connecting is refused at once.
HostPort ClosedPort() {
  absl::StatusOr<UniqueFd> fd = Listen(*SocketAddress::Parse("127.0.0.1:0"));
  const uint16_t port = SocketAddress::LocalOf(fd->get())->port();
  return {"127.0.0.1", port};  // closed when `fd` goes
}

ProbeOptions Options(absl::Duration timeout = absl::Seconds(5)) {
  return {.helo = "mx2.test", .timeout = timeout};
}

TEST(ProbeRecipientTest, ReportsAnExistingRecipient) {
  FakePrimary primary({"alice@example.com"}, Behaviour::kAnswer);
  EXPECT_EQ(ProbeRecipient({primary.address()}, "alice@example.com", Options()),
            CalloutAnswer::kExists);
}

TEST(ProbeRecipientTest, ReportsAnUnknownUser) {
  FakePrimary primary({"alice@example.com"}, Behaviour::kAnswer);
  EXPECT_EQ(ProbeRecipient({primary.address()}, "mallory@example.com", Options()),
            CalloutAnswer::kUnknownUser);
}

TEST(ProbeRecipientTest, SpeaksAsANullSenderWithOurHostName) {
  FakePrimary primary({"alice@example.com"}, Behaviour::kAnswer);
  ProbeRecipient({primary.address()}, "alice@example.com", Options());
  EXPECT_THAT(primary.commands(),
              ElementsAre("EHLO mx2.test", "MAIL FROM:<>", "RCPT TO:<alice@example.com>", "QUIT"));
}

TEST(ProbeRecipientTest, TreatsATemporaryFailureAsUnreachable) {
  FakePrimary primary({"alice@example.com"}, Behaviour::kTempFail);
  EXPECT_EQ(ProbeRecipient({primary.address()}, "alice@example.com", Options()),
            CalloutAnswer::kUnreachable);
}

TEST(ProbeRecipientTest, TreatsAPolicyRefusalAsUnreachable) {
  FakePrimary primary({}, Behaviour::kPolicy);
  EXPECT_EQ(ProbeRecipient({primary.address()}, "alice@example.com", Options()),
            CalloutAnswer::kUnreachable);
}

TEST(ProbeRecipientTest, TreatsARefusedConnectionAsUnreachable) {
  EXPECT_EQ(ProbeRecipient({ClosedPort()}, "alice@example.com", Options()),
            CalloutAnswer::kUnreachable);
}

TEST(ProbeRecipientTest, GivesUpOnASilentPrimaryAtTheTimeout) {
  FakePrimary primary({}, Behaviour::kSilent);
  const absl::Time start = absl::Now();
  EXPECT_EQ(
      ProbeRecipient({primary.address()}, "alice@example.com", Options(absl::Milliseconds(200))),
      CalloutAnswer::kUnreachable);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(200));
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
}

TEST(ProbeRecipientTest, AsksTheNextPrimaryWhenOneIsDown) {
  FakePrimary primary({"alice@example.com"}, Behaviour::kAnswer);
  EXPECT_EQ(ProbeRecipient({ClosedPort(), primary.address()}, "alice@example.com", Options()),
            CalloutAnswer::kExists);
}

CalloutCacheOptions CacheOptions(size_t max_entries = 100) {
  return {
      .positive_ttl = absl::Hours(24), .negative_ttl = absl::Hours(1), .max_entries = max_entries};
}

TEST(CalloutCacheTest, ForgetsAPositiveAnswerAfterItsTtl) {
  FakeClock clock;
  CalloutCache cache(CacheOptions(), &clock);
  cache.Store("alice@example.com", CalloutAnswer::kExists);
  clock.Advance(absl::Hours(24) - absl::Seconds(1));
  EXPECT_EQ(cache.Lookup("alice@example.com"), CalloutAnswer::kExists);
  clock.Advance(absl::Seconds(1));
  EXPECT_EQ(cache.Lookup("alice@example.com"), std::nullopt);
  EXPECT_EQ(cache.size(), 0u);
}

TEST(CalloutCacheTest, ForgetsANegativeAnswerAfterItsOwnTtl) {
  FakeClock clock;
  CalloutCache cache(CacheOptions(), &clock);
  cache.Store("mallory@example.com", CalloutAnswer::kUnknownUser);
  clock.Advance(absl::Minutes(59));
  EXPECT_EQ(cache.Lookup("mallory@example.com"), CalloutAnswer::kUnknownUser);
  clock.Advance(absl::Minutes(1));
  EXPECT_EQ(cache.Lookup("mallory@example.com"), std::nullopt);
}

TEST(CalloutCacheTest, DoesNotRememberUnreachable) {
  FakeClock clock;
  CalloutCache cache(CacheOptions(), &clock);
  cache.Store("alice@example.com", CalloutAnswer::kUnreachable);
  EXPECT_EQ(cache.Lookup("alice@example.com"), std::nullopt);
}

TEST(CalloutCacheTest, EvictsTheOldestEntryWhenFull) {
  FakeClock clock;
  CalloutCache cache(CacheOptions(2), &clock);
  cache.Store("a@example.com", CalloutAnswer::kExists);
  cache.Store("b@example.com", CalloutAnswer::kExists);
  cache.Store("a@example.com", CalloutAnswer::kUnknownUser);  // stored again: now the newest
  cache.Store("c@example.com", CalloutAnswer::kExists);
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_EQ(cache.Lookup("b@example.com"), std::nullopt);
  EXPECT_EQ(cache.Lookup("a@example.com"), CalloutAnswer::kUnknownUser);
  EXPECT_EQ(cache.Lookup("c@example.com"), CalloutAnswer::kExists);
}

CalloutOptions ServiceOptions() {
  return {.probe = Options(), .cache = CacheOptions(), .threads = 2};
}

Callout::Result VerifyNow(Callout& callout, const HostPort& host, const std::string& address) {
  std::promise<Callout::Result> promise;
  callout.Verify({host}, address, [&](Callout::Result result) { promise.set_value(result); });
  return promise.get_future().get();
}

TEST(CalloutTest, AnswersFromTheCacheWithoutAskingAgain) {
  FakePrimary primary({"alice@example.com"}, Behaviour::kAnswer);
  FakeClock clock;
  Callout callout(ServiceOptions(), &clock);
  const Callout::Result first = VerifyNow(callout, primary.address(), "alice@example.com");
  EXPECT_EQ(first.answer, CalloutAnswer::kExists);
  EXPECT_FALSE(first.cached);
  const Callout::Result second = VerifyNow(callout, primary.address(), "ALICE@example.com");
  EXPECT_EQ(second.answer, CalloutAnswer::kExists);
  EXPECT_TRUE(second.cached);
  EXPECT_EQ(primary.connections(), 1);
}

TEST(CalloutTest, AsksAgainOnceTheCachedAnswerExpired) {
  FakePrimary primary({}, Behaviour::kAnswer);
  FakeClock clock;
  Callout callout(ServiceOptions(), &clock);
  EXPECT_EQ(VerifyNow(callout, primary.address(), "bob@example.com").answer,
            CalloutAnswer::kUnknownUser);
  clock.Advance(absl::Hours(1));
  const Callout::Result again = VerifyNow(callout, primary.address(), "bob@example.com");
  EXPECT_FALSE(again.cached);
  EXPECT_EQ(primary.connections(), 2);
}

TEST(CalloutTest, TakesAPrimaryWithoutAnswerToBeDownForAWhile) {
  FakePrimary primary({"alice@example.com"}, Behaviour::kTempFail);
  FakeClock clock;
  CalloutOptions options = ServiceOptions();
  options.unreachable_ttl = absl::Minutes(1);
  Callout callout(options, &clock);
  EXPECT_EQ(VerifyNow(callout, primary.address(), "alice@example.com").answer,
            CalloutAnswer::kUnreachable);
  EXPECT_EQ(VerifyNow(callout, primary.address(), "bob@example.com").answer,
            CalloutAnswer::kUnreachable);
  EXPECT_EQ(primary.connections(), 1);
  clock.Advance(absl::Minutes(1));
  EXPECT_EQ(VerifyNow(callout, primary.address(), "bob@example.com").answer,
            CalloutAnswer::kUnreachable);
  EXPECT_EQ(primary.connections(), 2);
}

TEST(CalloutTest, MakesOneProbeForConcurrentQuestionsAboutOneAddress) {
  FakePrimary primary({"alice@example.com"}, Behaviour::kHoldRcpt);
  Callout callout(ServiceOptions());
  std::promise<Callout::Result> first;
  std::promise<Callout::Result> second;
  callout.Verify({primary.address()}, "alice@example.com",
                 [&](Callout::Result result) { first.set_value(result); });
  callout.Verify({primary.address()}, "alice@example.com",
                 [&](Callout::Result result) { second.set_value(result); });
  primary.Release();
  EXPECT_EQ(first.get_future().get().answer, CalloutAnswer::kExists);
  EXPECT_EQ(second.get_future().get().answer, CalloutAnswer::kExists);
  EXPECT_EQ(primary.connections(), 1);
}

class CalloutFilterTest : public ::testing::Test {
 protected:
  static DomainConfig Domain(std::string name, std::vector<HostPort> primary, bool callout) {
    DomainConfig domain;
    domain.name = std::move(name);
    domain.primary = std::move(primary);
    domain.recipient_callout = callout;
    return domain;
  }

  FilterResult Check(CalloutFilter& filter, const std::string& local_part,
                     const std::string& domain) {
    auto input = std::make_shared<FilterInput>();
    input->stage = Stage::kRcpt;
    input->rcpt.local_part = local_part;
    input->rcpt.domain = domain;
    input->rcpt.recipient.set_address(local_part + "@" + domain);
    std::promise<FilterResult> promise;
    filter.Check(input, [&](FilterResult result) { promise.set_value(std::move(result)); });
    return promise.get_future().get();
  }

  FakeClock clock_;
  Callout callout_{ServiceOptions(), &clock_};
};

TEST_F(CalloutFilterTest, RefusesAnUnknownUserWith550) {
  FakePrimary primary({"alice@example.com"}, Behaviour::kAnswer);
  CalloutFilter filter({Domain("example.com", {primary.address()}, true)}, &callout_);
  const FilterResult result = Check(filter, "mallory", "example.com");
  ASSERT_EQ(result.kind, FilterResult::Kind::kReject);
  EXPECT_EQ(result.reply->code, 550);
  EXPECT_EQ(result.reply->enhanced, "5.1.1");
  EXPECT_EQ(result.reason, "callout_unknown_user");
}

TEST_F(CalloutFilterTest, AcceptsAKnownUser) {
  FakePrimary primary({"alice@example.com"}, Behaviour::kAnswer);
  CalloutFilter filter({Domain("example.com", {primary.address()}, true)}, &callout_);
  const FilterResult result = Check(filter, "alice", "example.com");
  EXPECT_EQ(result.kind, FilterResult::Kind::kContinue);
  EXPECT_EQ(result.reason, "verified");
  EXPECT_EQ(Check(filter, "alice", "example.com").reason, "cache_hit");
}

TEST_F(CalloutFilterTest, AcceptsWhenThePrimaryIsDown) {
  CalloutFilter filter({Domain("example.com", {ClosedPort()}, true)}, &callout_);
  const FilterResult result = Check(filter, "anyone", "example.com");
  EXPECT_EQ(result.kind, FilterResult::Kind::kContinue);
  EXPECT_EQ(result.reason, "callout_unreachable");
}

TEST_F(CalloutFilterTest, StillRefusesACachedUnknownUserWhenThePrimaryIsDown) {
  HostPort address;
  {
    FakePrimary primary({}, Behaviour::kAnswer);
    address = primary.address();
    CalloutFilter filter({Domain("example.com", {address}, true)}, &callout_);
    EXPECT_EQ(Check(filter, "mallory", "example.com").kind, FilterResult::Kind::kReject);
  }
  CalloutFilter filter({Domain("example.com", {address}, true)}, &callout_);
  const FilterResult result = Check(filter, "mallory", "example.com");
  ASSERT_EQ(result.kind, FilterResult::Kind::kReject);
  EXPECT_EQ(result.reply->code, 550);
  EXPECT_EQ(result.reason, "cache_hit");
  EXPECT_EQ(Check(filter, "newcomer", "example.com").reason, "callout_unreachable");
}

TEST_F(CalloutFilterTest, LeavesDomainsWithoutCalloutAndPostmasterAlone) {
  FakePrimary primary({}, Behaviour::kAnswer);
  CalloutFilter filter({Domain("example.com", {primary.address()}, true),
                        Domain("example.org", {primary.address()}, false)},
                       &callout_);
  EXPECT_EQ(Check(filter, "mallory", "example.org").kind, FilterResult::Kind::kContinue);
  EXPECT_EQ(Check(filter, "PostMaster", "example.com").kind, FilterResult::Kind::kContinue);
  EXPECT_EQ(primary.connections(), 0);
}

}  // namespace
}  // namespace backstop::ingest
