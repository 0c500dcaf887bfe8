#include "bench/loadgen_core.h"

#include <map>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace backstop::bench {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

const absl::Time kT0 = absl::FromUnixSeconds(1000);

// --- Sizes ---------------------------------------------------------------------------------------

TEST(ParseSizeMixTest, ReadsWeightedSizes) {
  absl::StatusOr<std::vector<SizeWeight>> mix = ParseSizeMix("2KiB:90,50KiB:10");
  ASSERT_TRUE(mix.ok()) << mix.status();
  ASSERT_EQ(mix->size(), 2u);
  EXPECT_EQ((*mix)[0].bytes, 2048u);
  EXPECT_EQ((*mix)[0].weight, 90u);
  EXPECT_EQ((*mix)[1].bytes, 51200u);
  EXPECT_EQ((*mix)[1].weight, 10u);
}

TEST(ParseSizeMixTest, ASingleSizeWithoutWeightIsFixed) {
  absl::StatusOr<std::vector<SizeWeight>> mix = ParseSizeMix("2KiB");
  ASSERT_TRUE(mix.ok()) << mix.status();
  ASSERT_EQ(mix->size(), 1u);
  EXPECT_EQ((*mix)[0].bytes, 2048u);
  EXPECT_EQ((*mix)[0].weight, 1u);
}

TEST(ParseSizeMixTest, RefusesMalformedMixes) {
  for (const char* text : {"", "2KiB:", "2KiB:x", "2KiB:-1", "2KB:1", "0:5", "2KiB:0", "2KiB:90,",
                           "2KiB:9 0", "2KiB:90,,50KiB:10"}) {
    EXPECT_FALSE(ParseSizeMix(text).ok()) << text;
  }
}

TEST(SizePickerTest, SharesFollowTheWeights) {
  SizePicker picker({{2048, 90}, {51200, 10}});
  std::map<uint64_t, int> counts;
  for (uint64_t seq = 1; seq <= 10000; ++seq) {
    ++counts[picker.SizeOf(seq)];
  }
  EXPECT_EQ(counts.size(), 2u);
  EXPECT_NEAR(counts[51200], 1000, 150);
  EXPECT_EQ(picker.SizeOf(42), picker.SizeOf(42));
}

TEST(MakeMessageTest, NumbersTheMessageAndReachesTheSize) {
  const std::string data = MakeMessage(7, 2048, MessageOptions{});
  EXPECT_THAT(data, HasSubstr("\r\nX-Loadgen-Seq: 7\r\n"));
  EXPECT_EQ(data.rfind("From: <loadgen@example.org>\r\n", 0), 0u);
  ASSERT_GE(data.size(), 5u);
  EXPECT_EQ(data.substr(data.size() - 5), "\r\n.\r\n");
  const size_t message = data.size() - 3;
  EXPECT_GE(message, 2047u);
  EXPECT_LE(message, 2048u);
  EXPECT_EQ(data.find("\r\n."), data.size() - 5) << "a line starts with a dot";
}

TEST(MakeMessageTest, KeepsTheHeadersWhenTheSizeIsSmaller) {
  const std::string data = MakeMessage(1, 10, MessageOptions{});
  EXPECT_THAT(data, HasSubstr("X-Loadgen-Seq: 1\r\n\r\n.\r\n"));
}

// --- Percentiles ---------------------------------------------------------------------------------

TEST(SummarizeTest, NearestRankPercentiles) {
  std::vector<absl::Duration> samples;
  for (int i = 1000; i >= 1; --i) {
    samples.push_back(absl::Milliseconds(i));
  }
  const Percentiles p = Summarize(samples);
  EXPECT_EQ(p.count, 1000u);
  EXPECT_EQ(p.p50, absl::Milliseconds(500));
  EXPECT_EQ(p.p90, absl::Milliseconds(900));
  EXPECT_EQ(p.p99, absl::Milliseconds(990));
  EXPECT_EQ(p.p999, absl::Milliseconds(999));
  EXPECT_EQ(p.max, absl::Milliseconds(1000));
}

TEST(SummarizeTest, OneSampleIsEveryPercentile) {
  std::vector<absl::Duration> samples = {absl::Milliseconds(3)};
  const Percentiles p = Summarize(samples);
  EXPECT_EQ(p.p50, absl::Milliseconds(3));
  EXPECT_EQ(p.p999, absl::Milliseconds(3));
}

TEST(SummarizeTest, NoSamplesGiveZeros) {
  std::vector<absl::Duration> samples;
  const Percentiles p = Summarize(samples);
  EXPECT_EQ(p.count, 0u);
  EXPECT_EQ(p.max, absl::ZeroDuration());
}

// --- The session ---------------------------------------------------------------------------------

constexpr char kEhloReply[] = "250-mx.test\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 8BITMIME\r\n";

SessionOptions Options(Pipelining pipelining, StartTls starttls = StartTls::kOff,
                       std::vector<std::string> recipients = {"rcpt@example.com"}) {
  SessionOptions options;
  options.pipelining = pipelining;
  options.starttls = starttls;
  options.recipients = std::move(recipients);
  return options;
}

// A session that has greeted and answered EHLO.
ClientSession ReadySession(SessionOptions options = {}) {
  ClientSession session(std::move(options));
  session.Feed("220 mx.test ESMTP\r\n", kT0);
  EXPECT_EQ(session.TakeOutput(kT0), "EHLO loadgen.bench.test\r\n");
  session.Feed(kEhloReply, kT0);
  EXPECT_TRUE(session.ready_for_message());
  return session;
}

TEST(ClientSessionTest, PipelinesMailRcptAndDataInOneWrite) {
  ClientSession session = ReadySession();
  session.StartMessage(1, "Subject: x\r\n\r\nbody\r\n.\r\n", 21);
  EXPECT_EQ(session.TakeOutput(kT0),
            "MAIL FROM:<loadgen@example.org>\r\nRCPT TO:<rcpt@example.com>\r\nDATA\r\n");
  session.Feed("250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go on\r\n", kT0);
  EXPECT_EQ(session.TakeOutput(kT0 + absl::Milliseconds(1)), "Subject: x\r\n\r\nbody\r\n.\r\n");
  session.Feed("250 2.0.0 queued\r\n", kT0 + absl::Milliseconds(4));
  const std::vector<MessageResult> results = session.TakeResults();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].seq, 1u);
  EXPECT_EQ(results[0].outcome, Outcome::k2xx);
  EXPECT_EQ(results[0].code, 250);
  EXPECT_EQ(results[0].bytes, 21u);
  ASSERT_TRUE(results[0].replied.has_value());
  EXPECT_EQ(*results[0].replied - *results[0].data_end_sent, absl::Milliseconds(3));
  EXPECT_TRUE(session.ready_for_message());
}

TEST(ClientSessionTest, WithoutPipeliningWaitsForEachReply) {
  ClientSession session = ReadySession(Options(Pipelining::kOff));
  session.StartMessage(1, "a\r\n.\r\n", 3);
  EXPECT_EQ(session.TakeOutput(kT0), "MAIL FROM:<loadgen@example.org>\r\n");
  session.Feed("250 ok\r\n", kT0);
  EXPECT_EQ(session.TakeOutput(kT0), "RCPT TO:<rcpt@example.com>\r\n");
  session.Feed("250 ok\r\n", kT0);
  EXPECT_EQ(session.TakeOutput(kT0), "DATA\r\n");
  session.Feed("354 go\r\n", kT0);
  EXPECT_EQ(session.TakeOutput(kT0), "a\r\n.\r\n");
  session.Feed("250 ok\r\n", kT0);
  EXPECT_EQ(session.TakeResults().size(), 1u);
}

TEST(ClientSessionTest, DoesNotPipelineWhenTheServerDoesNotOfferIt) {
  ClientSession session(SessionOptions{});
  session.Feed("220 mx\r\n", kT0);
  session.TakeOutput(kT0);
  session.Feed("250-mx\r\n250 8BITMIME\r\n", kT0);
  EXPECT_FALSE(session.pipelining());
  session.StartMessage(1, "a\r\n.\r\n", 3);
  EXPECT_EQ(session.TakeOutput(kT0), "MAIL FROM:<loadgen@example.org>\r\n");
}

TEST(ClientSessionTest, ARefusedRecipientDecidesTheMessageAndResets) {
  ClientSession session = ReadySession();
  session.StartMessage(1, "a\r\n.\r\n", 3);
  session.TakeOutput(kT0);
  session.Feed("250 ok\r\n550 5.1.1 no such user\r\n554 5.5.1 no valid recipients\r\n", kT0);
  EXPECT_EQ(session.TakeOutput(kT0), "RSET\r\n");
  const std::vector<MessageResult> results = session.TakeResults();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].outcome, Outcome::k5xx);
  EXPECT_EQ(results[0].code, 550);
  EXPECT_FALSE(results[0].replied.has_value());
  session.Feed("250 reset\r\n", kT0);
  EXPECT_TRUE(session.ready_for_message());
}

TEST(ClientSessionTest, PipelinedDataAcceptedWithoutRecipientsSendsOnlyTheDot) {
  ClientSession session = ReadySession();
  session.StartMessage(1, "a\r\n.\r\n", 3);
  session.TakeOutput(kT0);
  session.Feed("250 ok\r\n450 4.2.1 later\r\n354 go\r\n", kT0);
  EXPECT_EQ(session.TakeOutput(kT0), ".\r\n");
  session.Feed("554 5.5.1 no valid recipients\r\n", kT0);
  const std::vector<MessageResult> results = session.TakeResults();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].outcome, Outcome::k4xx);
  EXPECT_EQ(results[0].code, 450);
}

TEST(ClientSessionTest, TemporaryFailureAtTheEndOfDataIsCounted4xx) {
  ClientSession session = ReadySession();
  session.StartMessage(1, "a\r\n.\r\n", 3);
  session.TakeOutput(kT0);
  session.Feed("250 ok\r\n250 ok\r\n354 go\r\n", kT0);
  session.TakeOutput(kT0);
  session.Feed("451 4.3.0 try later\r\n", kT0);
  const std::vector<MessageResult> results = session.TakeResults();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].outcome, Outcome::k4xx);
  EXPECT_TRUE(results[0].replied.has_value());
}

TEST(ClientSessionTest, ConnectionLostDuringDataIsAnError) {
  ClientSession session = ReadySession();
  session.StartMessage(9, "a\r\n.\r\n", 3);
  session.TakeOutput(kT0);
  session.Feed("250 ok\r\n250 ok\r\n354 go\r\n", kT0);
  session.TakeOutput(kT0);
  session.ConnectionLost("reset by peer");
  EXPECT_TRUE(session.closed());
  EXPECT_EQ(session.error(), "reset by peer");
  const std::vector<MessageResult> results = session.TakeResults();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].seq, 9u);
  EXPECT_EQ(results[0].outcome, Outcome::kError);
}

TEST(ClientSessionTest, A421ClosesTheSessionAndDecidesTheMessage) {
  ClientSession session = ReadySession();
  session.StartMessage(1, "a\r\n.\r\n", 3);
  session.TakeOutput(kT0);
  session.Feed("421 4.3.2 shutting down\r\n", kT0);
  EXPECT_TRUE(session.closed());
  const std::vector<MessageResult> results = session.TakeResults();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].code, 421);
  EXPECT_EQ(results[0].outcome, Outcome::k4xx);
}

TEST(ClientSessionTest, QuitEndsCleanlyEvenIfTheServerClosesFirst) {
  ClientSession session = ReadySession();
  session.Quit();
  EXPECT_EQ(session.TakeOutput(kT0), "QUIT\r\n");
  session.ConnectionLost("connection closed by the server");
  EXPECT_TRUE(session.closed());
  EXPECT_EQ(session.error(), "");
}

TEST(ClientSessionTest, RefusedGreetingFailsTheSession) {
  ClientSession session(SessionOptions{});
  session.Feed("554 go away\r\n", kT0);
  EXPECT_TRUE(session.closed());
  EXPECT_THAT(session.error(), HasSubstr("554"));
  EXPECT_TRUE(session.greeted_at().has_value());
}

TEST(ClientSessionTest, GarbageReplyFailsTheSession) {
  ClientSession session(SessionOptions{});
  session.Feed("hello there\r\n", kT0);
  EXPECT_TRUE(session.closed());
  EXPECT_THAT(session.error(), HasSubstr("garbage"));
}

TEST(ClientSessionTest, RepliesSplitAcrossReadsAreReassembled) {
  ClientSession session(SessionOptions{});
  session.Feed("22", kT0);
  EXPECT_FALSE(session.has_output());
  session.Feed("0 mx\r", kT0);
  EXPECT_FALSE(session.has_output());
  session.Feed("\n", kT0 + absl::Milliseconds(2));
  EXPECT_EQ(session.TakeOutput(kT0), "EHLO loadgen.bench.test\r\n");
  EXPECT_EQ(*session.greeted_at(), kT0 + absl::Milliseconds(2));
}

TEST(ClientSessionTest, StartTlsThenEhloAgain) {
  ClientSession session(Options(Pipelining::kOn, StartTls::kOn));
  session.Feed("220 mx\r\n", kT0);
  session.TakeOutput(kT0);
  session.Feed(kEhloReply, kT0);
  EXPECT_EQ(session.TakeOutput(kT0), "STARTTLS\r\n");
  session.Feed("220 2.0.0 ready\r\n", kT0);
  EXPECT_TRUE(session.tls_requested());
  session.TlsEstablished();
  EXPECT_EQ(session.TakeOutput(kT0), "EHLO loadgen.bench.test\r\n");
  session.Feed(kEhloReply, kT0);
  EXPECT_TRUE(session.ready_for_message());
}

TEST(ClientSessionTest, StartTlsRequiredButNotOfferedFails) {
  ClientSession session(Options(Pipelining::kOn, StartTls::kOn));
  session.Feed("220 mx\r\n", kT0);
  session.Feed("250-mx\r\n250 PIPELINING\r\n", kT0);
  EXPECT_TRUE(session.closed());
  EXPECT_THAT(session.error(), HasSubstr("STARTTLS"));
}

TEST(ClientSessionTest, SeveralRecipientsEachGetARcpt) {
  ClientSession session =
      ReadySession(Options(Pipelining::kOn, StartTls::kOff, {"a@x.test", "b@x.test"}));
  session.StartMessage(1, "a\r\n.\r\n", 3);
  EXPECT_EQ(session.TakeOutput(kT0),
            "MAIL FROM:<loadgen@example.org>\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\n"
            "DATA\r\n");
  session.Feed("250 ok\r\n550 no\r\n250 ok\r\n354 go\r\n", kT0);
  EXPECT_EQ(session.TakeOutput(kT0), "a\r\n.\r\n");
  session.Feed("250 ok\r\n", kT0);
  const std::vector<MessageResult> results = session.TakeResults();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].outcome, Outcome::k2xx);
  EXPECT_THAT(std::vector<int>{results[0].code}, ElementsAre(250));
}

}  // namespace
}  // namespace backstop::bench
