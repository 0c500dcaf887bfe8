#include "ingest/greylist_filter.h"

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/clock.h"

namespace backstop::ingest {
namespace {

using ::testing::ElementsAre;

TEST(GreylistNetworkTest, IsTheSlash24OfAnIpv4Address) {
  EXPECT_EQ(GreylistNetwork("192.0.2.77"), "192.0.2.0/24");
  EXPECT_EQ(GreylistNetwork("::ffff:192.0.2.77"), "192.0.2.0/24");
}

TEST(GreylistNetworkTest, IsTheSlash64OfAnIpv6Address) {
  EXPECT_EQ(GreylistNetwork("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::/64");
  EXPECT_EQ(GreylistNetwork("2001:DB8:1:2::1"), "2001:db8:1:2::/64");
}

TEST(GreylistNetworkTest, IsNothingForTextThatIsNoAddress) {
  EXPECT_EQ(GreylistNetwork("mx.example"), std::nullopt);
  EXPECT_EQ(GreylistNetwork(""), std::nullopt);
}

TEST(NormalizeGreylistAddressTest, LowerCasesTheDomainPartOnly) {
  EXPECT_EQ(NormalizeGreylistAddress("John.Doe@Origin.EXAMPLE"), "John.Doe@origin.example");
  EXPECT_EQ(NormalizeGreylistAddress("a@origin.example."), "a@origin.example");
  EXPECT_EQ(NormalizeGreylistAddress(""), "");
}

// Records the checks the filter asks the queue for and answers each with `answer`.
class GreylistFilterTest : public ::testing::Test {
 protected:
  GreylistFilterTest() { config_.enabled = true; }

  std::unique_ptr<GreylistFilter> MakeFilter() {
    return std::make_unique<GreylistFilter>(GreylistFilterOptions{
        .config = config_,
        .check =
            [this](const queue::GreylistCheck& check,
                   std::function<void(absl::StatusOr<queue::GreylistResult>)> reply) {
              checks_.push_back(check);
              reply(answer_);
            },
        .clock = &clock_});
  }

  std::shared_ptr<FilterInput> Rcpt(const std::string& client_ip, const std::string& sender,
                                    const std::string& recipient) {
    auto input = std::make_shared<FilterInput>();
    input->stage = Stage::kRcpt;
    input->client.ip = client_ip;
    input->mail.reverse_path = sender;
    input->rcpt.recipient.set_address(recipient);
    input->state = std::make_shared<ConnectionState>();
    return input;
  }

  FilterResult Run(const std::shared_ptr<FilterInput>& input) {
    std::optional<FilterResult> result;
    MakeFilter()->Check(input, [&result](FilterResult r) { result = std::move(r); });
    EXPECT_TRUE(result.has_value()) << "the filter did not answer";
    return result.value_or(FilterResult::Continue("no answer"));
  }

  static queue::GreylistResult Verdict(queue::GreylistResult::Verdict verdict) {
    queue::GreylistResult result;
    result.set_verdict(verdict);
    return result;
  }

  GreylistConfig config_;
  FakeClock clock_;
  absl::StatusOr<queue::GreylistResult> answer_ = Verdict(queue::GreylistResult::PASS);
  std::vector<queue::GreylistCheck> checks_;
};

TEST_F(GreylistFilterTest, AsksTheQueueAboutTheTriplet) {
  config_.delay = absl::Seconds(90);
  config_.retry_window = absl::Hours(6);
  config_.auto_allow_after = 3;
  Run(Rcpt("198.51.100.23", "Bounce+X@Lists.Example", "Alice@Example.COM"));
  ASSERT_EQ(checks_.size(), 1u);
  const queue::GreylistCheck& check = checks_[0];
  EXPECT_EQ(check.client_network(), "198.51.100.0/24");
  EXPECT_EQ(check.sender(), "Bounce+X@lists.example");
  EXPECT_EQ(check.recipient(), "Alice@example.com");
  EXPECT_EQ(check.delay_duration_ms(), 90'000);
  EXPECT_EQ(check.retry_window_duration_ms(), 6 * 3600'000);
  EXPECT_EQ(check.pass_lifetime_duration_ms(), 36 * 24 * 3600'000LL);
  EXPECT_EQ(check.auto_allow_after(), 3u);
}

TEST_F(GreylistFilterTest, TheNullSenderIsTheEmptySender) {
  Run(Rcpt("198.51.100.23", "", "alice@example.com"));
  ASSERT_EQ(checks_.size(), 1u);
  EXPECT_EQ(checks_[0].sender(), "");
}

TEST_F(GreylistFilterTest, DefersAFirstSightWith451AndSaysWhenToRetry) {
  config_.delay = absl::Minutes(5);
  queue::GreylistResult deferred = Verdict(queue::GreylistResult::DEFER);
  deferred.set_retry_after_ms(absl::ToUnixMillis(clock_.Now() + absl::Seconds(299)));
  answer_ = deferred;
  const FilterResult result = Run(Rcpt("198.51.100.23", "a@origin.example", "alice@example.com"));
  ASSERT_EQ(result.kind, FilterResult::Kind::kReject);
  EXPECT_EQ(result.reply->code, 451);
  EXPECT_EQ(result.reply->enhanced, "4.7.1");
  EXPECT_THAT(result.reply->lines, ElementsAre("Greylisted, try again in 299 seconds"));
  EXPECT_EQ(result.reason, "greylisted");
}

TEST_F(GreylistFilterTest, RetryHintStaysWithinTheDelayWhateverTheQueueClockSays) {
  config_.delay = absl::Minutes(5);
  queue::GreylistResult deferred = Verdict(queue::GreylistResult::DEFER);
  deferred.set_retry_after_ms(absl::ToUnixMillis(clock_.Now() + absl::Hours(2)));
  answer_ = deferred;
  EXPECT_THAT(Run(Rcpt("198.51.100.23", "a@origin.example", "alice@example.com")).reply->lines,
              ElementsAre("Greylisted, try again in 300 seconds"));
  deferred.set_retry_after_ms(absl::ToUnixMillis(clock_.Now() - absl::Seconds(10)));
  answer_ = deferred;
  EXPECT_THAT(Run(Rcpt("198.51.100.23", "a@origin.example", "alice@example.com")).reply->lines,
              ElementsAre("Greylisted, try again in 1 seconds"));
}

TEST_F(GreylistFilterTest, PassesWhatTheQueuePasses) {
  const FilterResult result = Run(Rcpt("198.51.100.23", "a@origin.example", "alice@example.com"));
  EXPECT_EQ(result.kind, FilterResult::Kind::kContinue);
  EXPECT_EQ(result.reason, "passed");
}

TEST_F(GreylistFilterTest, CountsAnAutoAllowedNetworkApart) {
  queue::GreylistResult allowed = Verdict(queue::GreylistResult::PASS);
  allowed.set_client_allowed(true);
  answer_ = allowed;
  const FilterResult result = Run(Rcpt("198.51.100.23", "a@origin.example", "alice@example.com"));
  EXPECT_EQ(result.kind, FilterResult::Kind::kContinue);
  EXPECT_EQ(result.reason, "auto_allowed");
}

TEST_F(GreylistFilterTest, FailsOpenWhenTheQueueCannotAnswer) {
  answer_ = absl::UnavailableError("no leader");
  const FilterResult result = Run(Rcpt("198.51.100.23", "a@origin.example", "alice@example.com"));
  EXPECT_EQ(result.kind, FilterResult::Kind::kContinue);
  EXPECT_EQ(result.reason, "queue_error");
}

TEST_F(GreylistFilterTest, AllowedClientsSkipTheQueue) {
  config_.allow = {"203.0.113.0/24", "2001:db8::7"};
  answer_ = Verdict(queue::GreylistResult::DEFER);
  EXPECT_EQ(Run(Rcpt("203.0.113.9", "a@origin.example", "alice@example.com")).reason,
            "allowed_client");
  EXPECT_EQ(Run(Rcpt("2001:db8::7", "a@origin.example", "alice@example.com")).reason,
            "allowed_client");
  EXPECT_EQ(checks_.size(), 0u);
  EXPECT_EQ(Run(Rcpt("203.0.114.9", "a@origin.example", "alice@example.com")).kind,
            FilterResult::Kind::kReject);
}

TEST_F(GreylistFilterTest, AllowedSenderDomainsAndTheirSubdomainsSkipTheQueue) {
  config_.allow = {"Partner.Example"};
  answer_ = Verdict(queue::GreylistResult::DEFER);
  for (const char* sender : {"a@partner.example", "b@PARTNER.example.", "c@mail.partner.example"}) {
    const FilterResult result = Run(Rcpt("198.51.100.23", sender, "alice@example.com"));
    EXPECT_EQ(result.kind, FilterResult::Kind::kContinue) << sender;
    EXPECT_EQ(result.reason, "allowed_sender") << sender;
  }
  EXPECT_EQ(checks_.size(), 0u);
  for (const char* sender : {"a@notpartner.example", "a@partner.example.org", ""}) {
    EXPECT_EQ(Run(Rcpt("198.51.100.23", sender, "alice@example.com")).kind,
              FilterResult::Kind::kReject)
        << sender;
  }
  EXPECT_EQ(checks_.size(), 3u);
}

TEST_F(GreylistFilterTest, DnswlListedClientsSkipTheQueue) {
  answer_ = Verdict(queue::GreylistResult::DEFER);
  std::shared_ptr<FilterInput> input = Rcpt("198.51.100.23", "a@origin.example", "alice@x.example");
  input->state->dnswl_listed = true;
  const FilterResult result = Run(input);
  EXPECT_EQ(result.kind, FilterResult::Kind::kContinue);
  EXPECT_EQ(result.reason, "dnswl");
  EXPECT_EQ(checks_.size(), 0u);
}

TEST_F(GreylistFilterTest, ClientsWithoutAnAddressAreNotGreylisted) {
  answer_ = Verdict(queue::GreylistResult::DEFER);
  EXPECT_EQ(Run(Rcpt("unknown", "a@origin.example", "alice@example.com")).reason, "no_network");
  EXPECT_EQ(checks_.size(), 0u);
}

}  // namespace
}  // namespace backstop::ingest
