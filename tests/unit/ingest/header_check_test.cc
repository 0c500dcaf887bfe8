#include "ingest/header_check.h"

#include <future>
#include <string>

#include <gtest/gtest.h>

namespace backstop::ingest {
namespace {

constexpr std::string_view kGood =
    "From: Alice Example <alice@example.org>\r\n"
    "To: bob@example.com\r\n"
    "Subject: hello\r\n"
    "Date: Sat, 28 Nov 2026 03:00:00 +0000\r\n"
    "Message-ID: <1@example.org>\r\n"
    "\r\n"
    "Body\r\n";

// The reason of the problem found, "" when the message passes.
std::string Reason(std::string_view message, HeaderCheckOptions options = {}) {
  const std::optional<HeaderProblem> problem = CheckHeaders(message, options);
  return problem ? problem->reason : "";
}

TEST(CheckHeadersTest, AcceptsAnOrdinaryMessage) {
  EXPECT_EQ(Reason(kGood), "");
}

TEST(CheckHeadersTest, AcceptsAMessageWithoutBody) {
  EXPECT_EQ(Reason("From: alice@example.org\r\nSubject: x\r\n"), "");
}

TEST(CheckHeadersTest, AcceptsALastLineWithoutCrlf) {
  EXPECT_EQ(Reason("Subject: x\r\nFrom: alice@example.org"), "");
}

TEST(CheckHeadersTest, RefusesAMessageWithoutFrom) {
  EXPECT_EQ(Reason("To: bob@example.com\r\nSubject: x\r\n\r\nBody\r\n"), "from_missing");
}

TEST(CheckHeadersTest, RefusesAMessageWithoutHeaders) {
  EXPECT_EQ(Reason("\r\nFrom: alice@example.org\r\n"), "from_missing");
}

TEST(CheckHeadersTest, IgnoresHeaderLikeLinesInTheBody) {
  EXPECT_EQ(Reason(std::string(kGood) + "From: again@example.org\r\nno colon here\r\n"), "");
}

TEST(CheckHeadersTest, RefusesTwoFromHeaders) {
  const std::optional<HeaderProblem> problem =
      CheckHeaders("From: a@example.org\r\nfrom: b@example.org\r\n\r\n", {});
  ASSERT_TRUE(problem.has_value());
  EXPECT_EQ(problem->reason, "duplicate_header");
  EXPECT_EQ(problem->text, "more than one From: header");
}

TEST(CheckHeadersTest, RefusesADuplicateOfEverySingleInstanceField) {
  for (const char* name : {"Date", "Sender", "Reply-To", "To", "Cc", "Bcc", "Message-ID",
                           "In-Reply-To", "References", "Subject"}) {
    const std::string message =
        std::string("From: a@example.org\r\n") + name + ": x\r\n" + name + ": y\r\n\r\n";
    EXPECT_EQ(Reason(message), "duplicate_header") << name;
  }
}

TEST(CheckHeadersTest, AllowsRepeatedTraceAndOptionalFields) {
  EXPECT_EQ(Reason("Received: from a\r\nReceived: from b\r\nX-Tag: 1\r\nX-Tag: 2\r\n"
                   "Comments: c\r\nComments: d\r\nFrom: a@example.org\r\n\r\n"),
            "");
}

TEST(CheckHeadersTest, MatchesFieldNamesWithoutCaseAndWithSpaceBeforeTheColon) {
  EXPECT_EQ(Reason("From: a@example.org\r\nSUBJECT: x\r\nSubject : y\r\n\r\n"), "duplicate_header");
}

TEST(CheckHeadersTest, AcceptsFromAddressesInTheirUsualForms) {
  for (const char* from :
       {"alice@example.org", " <alice@example.org>", "\"Example, Alice\" <alice@example.org>",
        "Alice (the boss) <alice@example.org> (work)", "alice@example.org (Alice)",
        "Dr. Alice Example <alice@example.org>", "\"alice smith\"@example.org", "alice@[192.0.2.1]",
        "=?utf-8?q?Alic=C3=A9?= <alice@example.org>", "alice@example.org, bob@example.org",
        "garbage, alice@example.org"}) {
    EXPECT_TRUE(HasValidMailbox(from)) << from;
  }
}

TEST(CheckHeadersTest, RefusesFromWithoutAValidMailbox) {
  for (const char* from :
       {"", "   ", "Alice", "alice", "alice@", "@example.org", "<alice@example.org",
        "alice@example..org", "undisclosed:;", "Alice <alice>",
        "alice@example.org (unclosed comment", "a b@example.org"}) {
    EXPECT_FALSE(HasValidMailbox(from)) << from;
  }
  EXPECT_EQ(Reason("From: Alice\r\n\r\n"), "from_invalid");
}

TEST(CheckHeadersTest, UnfoldsAFoldedFrom) {
  EXPECT_EQ(Reason("From: Alice Example\r\n <alice@example.org>\r\nSubject: x\r\n\r\n"), "");
  EXPECT_EQ(Reason("From: Alice Example\r\n\t<alice@example.org\r\n\r\n"), "from_invalid");
}

TEST(CheckHeadersTest, RefusesBareLineFeedsAndCarriageReturns) {
  EXPECT_EQ(Reason("From: a@example.org\nSubject: x\r\n\r\n"), "bare_cr_lf");
  EXPECT_EQ(Reason("From: a@example.org\rSubject: x\r\n\r\n"), "bare_cr_lf");
}

TEST(CheckHeadersTest, RefusesMalformedFieldNames) {
  EXPECT_EQ(Reason("From: a@example.org\r\nno colon\r\n\r\n"), "malformed_header");
  EXPECT_EQ(Reason("From: a@example.org\r\n: no name\r\n\r\n"), "malformed_header");
  EXPECT_EQ(Reason(" From: a@example.org\r\n\r\n"), "malformed_header");
  EXPECT_EQ(Reason("From: a@example.org\r\nX\x01Y: z\r\n\r\n"), "malformed_header");
  EXPECT_EQ(Reason("From: a@example.org\r\nX\xc3\xa9: z\r\n\r\n", {.smtputf8 = true}),
            "malformed_header");
}

TEST(CheckHeadersTest, RefusesEightBitHeadersWithoutSmtputf8) {
  const std::string message = "From: a@example.org\r\nSubject: caf\xc3\xa9\r\n\r\n";
  EXPECT_EQ(Reason(message), "8bit_header");
  EXPECT_EQ(Reason(message, {.smtputf8 = true}), "");
}

TEST(CheckHeadersTest, AllowsEightBitBodiesWithoutSmtputf8) {
  EXPECT_EQ(Reason("From: a@example.org\r\n\r\ncaf\xc3\xa9\r\n"), "");
}

TEST(CheckHeadersTest, RefusesMalformedUtf8EvenWithSmtputf8) {
  EXPECT_EQ(Reason("From: a@example.org\r\nSubject: \xc3\x28\r\n\r\n", {.smtputf8 = true}),
            "invalid_utf8");
}

TEST(CheckHeadersTest, AcceptsUtf8AddressesWithSmtputf8) {
  EXPECT_EQ(
      Reason("From: J\xc3\xb6rg <j\xc3\xb6rg@exampl\xc3\xa9.org>\r\n\r\n", {.smtputf8 = true}), "");
}

TEST(CheckHeadersTest, RefusesAHeaderSectionLargerThanTheLimit) {
  const std::string filler = "X-Filler: " + std::string(1000, 'x') + "\r\n";
  std::string message = "From: a@example.org\r\n";
  while (message.size() + filler.size() <= 4096) {
    message += filler;
  }
  EXPECT_EQ(Reason(message + "\r\nbody\r\n", {.max_size = 4096}), "");
  message += filler;
  EXPECT_EQ(Reason(message + "\r\nbody\r\n", {.max_size = 4096}), "header_too_large");
  // Without an empty line the whole message is the header section.
  EXPECT_EQ(Reason(message, {.max_size = 4096}), "header_too_large");
}

TEST(CheckHeadersTest, CountsOnlyTheHeaderSectionAgainstTheLimit) {
  std::string message = "From: a@example.org\r\n\r\n";
  message += std::string(100'000, 'b') + "\r\n";
  EXPECT_EQ(Reason(message, {.max_size = 1024}), "");
}

TEST(HeaderFilterTest, RefusesWith554AndAnExplanation) {
  HeadersFilterConfig config;
  HeaderFilter filter(config);
  auto input = std::make_shared<FilterInput>();
  input->stage = Stage::kEndOfData;
  input->message = std::make_shared<const std::string>("Subject: x\r\n\r\nbody\r\n");
  std::promise<FilterResult> promise;
  filter.Check(input, [&](FilterResult result) { promise.set_value(std::move(result)); });
  const FilterResult result = promise.get_future().get();
  ASSERT_EQ(result.kind, FilterResult::Kind::kReject);
  EXPECT_EQ(result.reply->code, 554);
  EXPECT_EQ(result.reply->enhanced, "5.6.0");
  EXPECT_EQ(result.reply->lines.front(), "Message header rejected: no From: header");
  EXPECT_EQ(result.reason, "from_missing");
}

TEST(HeaderFilterTest, HonoursSmtputf8OfTheTransaction) {
  HeaderFilter filter(HeadersFilterConfig{});
  auto input = std::make_shared<FilterInput>();
  input->stage = Stage::kEndOfData;
  input->mail.smtputf8 = true;
  input->message =
      std::make_shared<const std::string>("From: a@example.org\r\nSubject: caf\xc3\xa9\r\n\r\n");
  std::promise<FilterResult> promise;
  filter.Check(input, [&](FilterResult result) { promise.set_value(std::move(result)); });
  EXPECT_EQ(promise.get_future().get().kind, FilterResult::Kind::kContinue);
}

}  // namespace
}  // namespace backstop::ingest
