#include "delivery/dsn.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/time/time.h"
#include "delivery/dsn_parse.h"
#include "proto/queue.pb.h"

namespace backstop::delivery {
namespace {

constexpr char kMessage[] =
    "Received: from a by b\r\nFrom: alice@sender.org\r\nSubject: hello\r\n\r\nbody line\r\n";
const std::string kDsnId("\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10", 16);

queue::QueueEntry Original() {
  queue::QueueEntry entry;
  entry.set_id("original-id-0001");
  entry.set_domain("example.com");
  queue::Envelope& envelope = *entry.mutable_envelope();
  envelope.set_reverse_path("Alice@Sender.ORG");
  envelope.set_envid("env-42");
  envelope.set_arrival_ms(absl::ToUnixMillis(absl::FromUnixSeconds(1'790'000'000)));
  queue::Recipient& bob = *envelope.add_recipients();
  bob.set_address("bob@example.com");
  bob.set_orcpt("rfc822;Bob+2Bx@example.com");
  queue::Recipient& carol = *envelope.add_recipients();
  carol.set_address("carol@example.com");
  carol.add_notify(queue::NOTIFY_NEVER);
  queue::Recipient& dave = *envelope.add_recipients();
  dave.set_address("dave@example.com");
  dave.add_notify(queue::NOTIFY_SUCCESS);
  queue::Recipient& erin = *envelope.add_recipients();
  erin.set_address("erin@example.com");
  erin.add_notify(queue::NOTIFY_DELAY);
  entry.set_message(kMessage);
  return entry;
}

DsnRecipient Failed(std::string address, std::string diagnostic = "550 5.1.1 no such user") {
  DsnRecipient recipient;
  recipient.address = std::move(address);
  recipient.action = DsnAction::kFailed;
  recipient.status = "5.1.1";
  recipient.diagnostic = std::move(diagnostic);
  recipient.remote_mta = "mx1.example.com";
  recipient.last_attempt = absl::FromUnixSeconds(1'790'000'600);
  return recipient;
}

DsnRecipient Delayed(std::string address) {
  DsnRecipient recipient;
  recipient.address = std::move(address);
  recipient.action = DsnAction::kDelayed;
  recipient.status = "4.4.1";
  recipient.reason = "connection refused";
  recipient.last_attempt = absl::FromUnixSeconds(1'790'000'600);
  recipient.will_retry_until = absl::FromUnixSeconds(1'790'432'000);
  return recipient;
}

DsnReport Report(std::vector<DsnRecipient> recipients) {
  return {.id = kDsnId,
          .now = absl::FromUnixSeconds(1'790'003'600),
          .recipients = std::move(recipients)};
}

DsnOptions Options() {
  return {.reporting_mta = "mx2.example.net"};
}

ParsedDsn Parse(const queue::QueueEntry& dsn) {
  absl::StatusOr<ParsedDsn> parsed = ParseDsn(dsn.message());
  EXPECT_TRUE(parsed.ok()) << parsed.status() << "\n" << dsn.message();
  return parsed.ok() ? *parsed : ParsedDsn();
}

TEST(BuildDsnTest, IsANullSenderMessageToTheReversePath) {
  std::optional<queue::QueueEntry> dsn =
      BuildDsn(Original(), Report({Failed("bob@example.com")}), Options());
  ASSERT_TRUE(dsn.has_value());
  EXPECT_EQ(dsn->id(), kDsnId);
  EXPECT_EQ(dsn->domain(), "sender.org");
  EXPECT_EQ(dsn->envelope().reverse_path(), "");
  ASSERT_EQ(dsn->envelope().recipients_size(), 1);
  EXPECT_EQ(dsn->envelope().recipients(0).address(), "Alice@Sender.ORG");
  EXPECT_EQ(dsn->envelope().arrival_ms(), 1'790'003'600'000);
  EXPECT_EQ(dsn->envelope().body(), queue::BODY_7BIT);
  EXPECT_FALSE(dsn->envelope().smtputf8());
  EXPECT_EQ(dsn->envelope().declared_size(), dsn->message().size());
}

TEST(BuildDsnTest, WritesTheMessageHeaders) {
  ParsedDsn dsn = Parse(*BuildDsn(Original(), Report({Failed("bob@example.com")}), Options()));
  EXPECT_EQ(dsn.headers.Get("From"), "Mail Delivery System <MAILER-DAEMON@mx2.example.net>");
  EXPECT_EQ(dsn.headers.Get("To"), "<Alice@Sender.ORG>");
  EXPECT_EQ(dsn.headers.Get("Subject"), "Undelivered Mail Returned to Sender");
  EXPECT_EQ(dsn.headers.Get("Date"), "Mon, 21 Sep 2026 15:13:20 +0000");
  EXPECT_EQ(dsn.headers.Get("Message-ID"),
            "<0102030405060708090a0b0c0d0e0f10.dsn@mx2.example.net>");
  EXPECT_EQ(dsn.headers.Get("Auto-Submitted"), "auto-replied");
  EXPECT_EQ(dsn.headers.Get("MIME-Version"), "1.0");
  EXPECT_EQ(dsn.report_type, "delivery-status");
  EXPECT_EQ(dsn.boundary, "=_backstop_0102030405060708090a0b0c0d0e0f10");
  EXPECT_EQ(dsn.headers.Get("Content-Type"),
            "multipart/report; report-type=delivery-status; boundary=\"" + dsn.boundary + "\"");
}

TEST(BuildDsnTest, WritesEveryDeliveryStatusField) {
  ParsedDsn dsn = Parse(*BuildDsn(Original(), Report({Failed("bob@example.com")}), Options()));
  EXPECT_EQ(dsn.per_message.Get("Reporting-MTA"), "dns; mx2.example.net");
  EXPECT_EQ(dsn.per_message.Get("Original-Envelope-Id"), "env-42");
  EXPECT_EQ(dsn.per_message.Get("Arrival-Date"), "Mon, 21 Sep 2026 14:13:20 +0000");
  EXPECT_EQ(dsn.per_message.all().size(), 3u);
  ASSERT_EQ(dsn.per_recipient.size(), 1u);
  const HeaderFields& bob = dsn.per_recipient[0];
  EXPECT_EQ(bob.Get("Final-Recipient"), "rfc822; bob@example.com");
  EXPECT_EQ(bob.Get("Original-Recipient"), "rfc822; Bob+x@example.com");  // xtext-decoded
  EXPECT_EQ(bob.Get("Action"), "failed");
  EXPECT_EQ(bob.Get("Status"), "5.1.1");
  EXPECT_EQ(bob.Get("Remote-MTA"), "dns; mx1.example.com");
  EXPECT_EQ(bob.Get("Diagnostic-Code"), "smtp; 550 5.1.1 no such user");
  EXPECT_EQ(bob.Get("Last-Attempt-Date"), "Mon, 21 Sep 2026 14:23:20 +0000");
  EXPECT_EQ(bob.Get("Will-Retry-Until"), std::nullopt);
  EXPECT_EQ(bob.all().size(), 7u);
}

TEST(BuildDsnTest, HasTheThreePartsOfAReportAndReturnsTheWholeMessage) {
  ParsedDsn dsn = Parse(*BuildDsn(Original(), Report({Failed("bob@example.com")}), Options()));
  ASSERT_EQ(dsn.parts.size(), 3u);
  EXPECT_EQ(dsn.parts[0].media_type, "text/plain");
  EXPECT_EQ(dsn.parts[0].headers.Get("Content-Type"), "text/plain; charset=us-ascii");
  EXPECT_NE(dsn.parts[0].body.find("<bob@example.com>: host mx1.example.com said: 550 5.1.1 no "
                                   "such user (5.1.1)"),
            std::string::npos)
      << dsn.parts[0].body;
  EXPECT_EQ(dsn.parts[1].media_type, "message/delivery-status");
  EXPECT_EQ(dsn.parts[2].media_type, "message/rfc822");
  EXPECT_EQ(dsn.parts[2].body, kMessage);
  EXPECT_EQ(dsn.parts[2].headers.Get("Content-Transfer-Encoding"), std::nullopt);
}

TEST(BuildDsnTest, OmitsOptionalFieldsThatAreUnknown) {
  queue::QueueEntry original = Original();
  original.mutable_envelope()->clear_envid();
  original.mutable_envelope()->set_arrival_ms(0);
  DsnRecipient recipient;
  recipient.address = "bob@example.com";
  recipient.status = "5.4.7";
  recipient.reason = "delivery time expired";
  ParsedDsn dsn = Parse(*BuildDsn(original, Report({recipient}), Options()));
  EXPECT_EQ(dsn.per_message.all().size(), 1u);
  ASSERT_EQ(dsn.per_recipient.size(), 1u);
  EXPECT_EQ(dsn.per_recipient[0].Get("Status"), "5.4.7");
  EXPECT_EQ(dsn.per_recipient[0].Get("Remote-MTA"), std::nullopt);
  EXPECT_EQ(dsn.per_recipient[0].Get("Diagnostic-Code"), std::nullopt);
  EXPECT_EQ(dsn.per_recipient[0].Get("Last-Attempt-Date"), std::nullopt);
  EXPECT_NE(dsn.parts[0].body.find("<bob@example.com>: delivery time expired (5.4.7)"),
            std::string::npos);
}

TEST(BuildDsnTest, RetHdrsReturnsTheHeaderSectionOnly) {
  queue::QueueEntry original = Original();
  original.mutable_envelope()->set_ret(queue::RET_HDRS);
  ParsedDsn dsn = Parse(*BuildDsn(original, Report({Failed("bob@example.com")}), Options()));
  ASSERT_EQ(dsn.parts.size(), 3u);
  EXPECT_EQ(dsn.parts[2].media_type, "text/rfc822-headers");
  EXPECT_EQ(dsn.parts[2].body,
            "Received: from a by b\r\nFrom: alice@sender.org\r\nSubject: hello\r\n");
}

TEST(BuildDsnTest, RetFullReturnsTheWholeMessage) {
  queue::QueueEntry original = Original();
  original.mutable_envelope()->set_ret(queue::RET_FULL);
  ParsedDsn dsn = Parse(*BuildDsn(original, Report({Failed("bob@example.com")}), Options()));
  EXPECT_EQ(dsn.parts[2].media_type, "message/rfc822");
  EXPECT_EQ(dsn.parts[2].body, kMessage);
}

TEST(BuildDsnTest, MessageOverTheLimitReturnsHeadersOnly) {
  queue::QueueEntry original = Original();
  original.mutable_envelope()->set_ret(queue::RET_FULL);
  DsnOptions options = Options();
  options.max_returned_message_bytes = sizeof(kMessage) - 2;
  ParsedDsn dsn = Parse(*BuildDsn(original, Report({Failed("bob@example.com")}), options));
  EXPECT_EQ(dsn.parts[2].media_type, "text/rfc822-headers");
  options.max_returned_message_bytes = sizeof(kMessage) - 1;  // exactly the size: returned
  dsn = Parse(*BuildDsn(original, Report({Failed("bob@example.com")}), options));
  EXPECT_EQ(dsn.parts[2].media_type, "message/rfc822");
}

TEST(BuildDsnTest, NeverToTheNullReversePath) {
  queue::QueueEntry original = Original();
  original.mutable_envelope()->set_reverse_path("");
  EXPECT_EQ(BuildDsn(original, Report({Failed("bob@example.com")}), Options()), std::nullopt);
}

TEST(BuildDsnTest, NoneToAReversePathWithoutDomain) {
  queue::QueueEntry original = Original();
  original.mutable_envelope()->set_reverse_path("postmaster");
  EXPECT_EQ(BuildDsn(original, Report({Failed("bob@example.com")}), Options()), std::nullopt);
}

TEST(BuildDsnTest, NotifyRulesSelectTheReportedRecipients) {
  // carol: NEVER; dave: SUCCESS only; erin: DELAY only → only bob gets a failure DSN.
  ParsedDsn dsn = Parse(*BuildDsn(Original(),
                                  Report({Failed("bob@example.com"), Failed("carol@example.com"),
                                          Failed("dave@example.com"), Failed("erin@example.com")}),
                                  Options()));
  ASSERT_EQ(dsn.per_recipient.size(), 1u);
  EXPECT_EQ(dsn.per_recipient[0].Get("Final-Recipient"), "rfc822; bob@example.com");
}

TEST(BuildDsnTest, NoDsnWhenNoRecipientWantsOne) {
  EXPECT_EQ(BuildDsn(Original(), Report({Failed("carol@example.com"), Failed("dave@example.com")}),
                     Options()),
            std::nullopt);
  EXPECT_EQ(BuildDsn(Original(), Report({}), Options()), std::nullopt);
}

TEST(BuildDsnTest, RecipientUnknownToTheEnvelopeGetsTheDefault) {
  ParsedDsn dsn = Parse(*BuildDsn(Original(), Report({Failed("zed@example.com")}), Options()));
  ASSERT_EQ(dsn.per_recipient.size(), 1u);
  EXPECT_EQ(dsn.per_recipient[0].Get("Original-Recipient"), std::nullopt);
}

TEST(BuildDsnTest, DelayDsnReturnsHeadersAndSaysWhenRetriesEnd) {
  queue::QueueEntry original = Original();
  original.mutable_envelope()->set_ret(queue::RET_FULL);
  ParsedDsn dsn = Parse(*BuildDsn(original,
                                  Report({Delayed("bob@example.com"), Delayed("erin@example.com"),
                                          Delayed("dave@example.com")}),
                                  Options()));
  EXPECT_EQ(dsn.headers.Get("Subject"), "Delayed Mail (still being retried)");
  ASSERT_EQ(dsn.per_recipient.size(), 2u);  // dave asked for SUCCESS only
  EXPECT_EQ(dsn.per_recipient[1].Get("Final-Recipient"), "rfc822; erin@example.com");
  EXPECT_EQ(dsn.per_recipient[1].Get("Action"), "delayed");
  EXPECT_EQ(dsn.per_recipient[1].Get("Status"), "4.4.1");
  EXPECT_EQ(dsn.per_recipient[1].Get("Will-Retry-Until"), "Sat, 26 Sep 2026 14:13:20 +0000");
  EXPECT_EQ(dsn.parts[2].media_type, "text/rfc822-headers");
  EXPECT_NE(dsn.parts[0].body.find("will retry until Sat, 26 Sep 2026 14:13:20"),
            std::string::npos);
}

TEST(BuildDsnTest, MixedReportIsAFailureReport) {
  ParsedDsn dsn = Parse(*BuildDsn(
      Original(), Report({Failed("bob@example.com"), Delayed("erin@example.com")}), Options()));
  EXPECT_EQ(dsn.headers.Get("Subject"), "Undelivered Mail Returned to Sender");
  ASSERT_EQ(dsn.per_recipient.size(), 2u);
  EXPECT_EQ(dsn.per_recipient[0].Get("Action"), "failed");
  EXPECT_EQ(dsn.per_recipient[1].Get("Action"), "delayed");
  EXPECT_EQ(dsn.parts[2].media_type, "message/rfc822");
}

TEST(BuildDsnTest, AMultilineReplyCannotInjectFields) {
  ParsedDsn dsn = Parse(
      *BuildDsn(Original(),
                Report({Failed("bob@example.com",
                               "550 5.1.1 a\r\nAction: delivered\r\n\r\nFinal-Recipient: x")}),
                Options()));
  ASSERT_EQ(dsn.per_recipient.size(), 1u);
  EXPECT_EQ(dsn.per_recipient[0].Count("Action"), 1u);
  EXPECT_EQ(dsn.per_recipient[0].Get("Diagnostic-Code"),
            "smtp; 550 5.1.1 a  Action: delivered    Final-Recipient: x");
}

TEST(BuildDsnTest, FoldsLongFieldsAndUnfoldsThemExactly) {
  std::string diagnostic = "550 5.7.1";
  for (int i = 0; i < 40; ++i) {
    diagnostic += " word" + std::to_string(i);
  }
  queue::QueueEntry dsn_entry =
      *BuildDsn(Original(), Report({Failed("bob@example.com", diagnostic)}), Options());
  for (size_t start = 0, end; (end = dsn_entry.message().find("\r\n", start)) != std::string::npos;
       start = end + 2) {
    if (dsn_entry.message().compare(start, 5, "Diagn") == 0 ||
        dsn_entry.message().compare(start, 5, " word") == 0) {
      EXPECT_LE(end - start, 78u);
    }
  }
  ParsedDsn dsn = Parse(dsn_entry);
  EXPECT_EQ(dsn.per_recipient[0].Get("Diagnostic-Code"), "smtp; " + diagnostic);
}

TEST(BuildDsnTest, CutsOverlongFieldValues) {
  std::string diagnostic = "550 " + std::string(2000, 'x');
  ParsedDsn dsn =
      Parse(*BuildDsn(Original(), Report({Failed("bob@example.com", diagnostic)}), Options()));
  EXPECT_EQ(dsn.per_recipient[0].Get("Diagnostic-Code"), "smtp; " + diagnostic.substr(0, 900));
}

TEST(BuildDsnTest, PicksABoundaryThatTheReturnedMessageDoesNotContain) {
  queue::QueueEntry original = Original();
  original.set_message("Subject: x\r\n\r\n--=_backstop_0102030405060708090a0b0c0d0e0f10\r\n");
  ParsedDsn dsn = Parse(*BuildDsn(original, Report({Failed("bob@example.com")}), Options()));
  EXPECT_EQ(dsn.boundary, "=_backstop_0102030405060708090a0b0c0d0e0f10.1");
  ASSERT_EQ(dsn.parts.size(), 3u);
  EXPECT_EQ(dsn.parts[2].body, original.message());
}

TEST(BuildDsnTest, AReplyQuotingTheBoundaryCannotSplitTheReport) {
  ParsedDsn dsn = Parse(*BuildDsn(
      Original(),
      Report({Failed("bob@example.com", "550 --=_backstop_0102030405060708090a0b0c0d0e0f10")}),
      Options()));
  EXPECT_NE(dsn.boundary, "=_backstop_0102030405060708090a0b0c0d0e0f10");
  EXPECT_EQ(dsn.parts.size(), 3u);
}

TEST(BuildDsnTest, DeclaresEightBitContentWithoutChangingIt) {
  queue::QueueEntry original = Original();
  original.set_message("Subject: caf\xc3\xa9\r\n\r\nna\xc3\xafve\r\n");
  queue::QueueEntry dsn_entry = *BuildDsn(original, Report({Failed("bob@example.com")}), Options());
  EXPECT_EQ(dsn_entry.envelope().body(), queue::BODY_8BITMIME);
  EXPECT_FALSE(dsn_entry.envelope().smtputf8());
  ParsedDsn dsn = Parse(dsn_entry);
  EXPECT_EQ(dsn.report_type, "delivery-status");
  EXPECT_EQ(dsn.parts[2].media_type, "message/rfc822");
  EXPECT_EQ(dsn.parts[2].headers.Get("Content-Transfer-Encoding"), "8bit");
  EXPECT_EQ(dsn.parts[2].body, original.message());
  EXPECT_EQ(dsn.parts[1].headers.Get("Content-Transfer-Encoding"), std::nullopt);
}

TEST(BuildDsnTest, NonAsciiReplyInAPlainReportBecomesQuestionMarks) {
  ParsedDsn dsn = Parse(*BuildDsn(
      Original(), Report({Failed("bob@example.com", "550 5.1.1 unbekannt \xc3\xbc")}), Options()));
  EXPECT_EQ(dsn.per_recipient[0].Get("Diagnostic-Code"), "smtp; 550 5.1.1 unbekannt ??");
  // The human part may quote it as it was, declared as UTF-8.
  EXPECT_EQ(dsn.parts[0].headers.Get("Content-Type"), "text/plain; charset=utf-8");
  EXPECT_EQ(dsn.parts[0].headers.Get("Content-Transfer-Encoding"), "8bit");
}

TEST(BuildDsnTest, InternationalisedAddressesUseTheGlobalTypes) {
  queue::QueueEntry original = Original();
  original.mutable_envelope()->set_smtputf8(true);
  original.mutable_envelope()->mutable_recipients(0)->set_address("j\xc3\xb6rg@example.com");
  original.mutable_envelope()->mutable_recipients(0)->set_orcpt("utf-8;j\xc3\xb6rg@example.com");
  queue::QueueEntry dsn_entry = *BuildDsn(
      original, Report({Failed("j\xc3\xb6rg@example.com", "550 5.1.1 \xc3\xbc")}), Options());
  EXPECT_TRUE(dsn_entry.envelope().smtputf8());
  ParsedDsn dsn = Parse(dsn_entry);
  EXPECT_EQ(dsn.report_type, "global-delivery-status");
  EXPECT_EQ(dsn.parts[1].media_type, "message/global-delivery-status");
  EXPECT_EQ(dsn.parts[1].headers.Get("Content-Transfer-Encoding"), "8bit");
  EXPECT_EQ(dsn.parts[2].media_type, "message/global");
  EXPECT_EQ(dsn.per_recipient[0].Get("Final-Recipient"), "utf-8; j\xc3\xb6rg@example.com");
  EXPECT_EQ(dsn.per_recipient[0].Get("Original-Recipient"), "utf-8; j\xc3\xb6rg@example.com");
  EXPECT_EQ(dsn.per_recipient[0].Get("Diagnostic-Code"), "smtp; 550 5.1.1 \xc3\xbc");
}

TEST(WantsDsnTest, FollowsRfc3461Notify) {
  queue::Recipient none;
  EXPECT_TRUE(WantsDsn(none, DsnAction::kFailed));
  EXPECT_TRUE(WantsDsn(none, DsnAction::kDelayed));
  queue::Recipient never;
  never.add_notify(queue::NOTIFY_NEVER);
  EXPECT_FALSE(WantsDsn(never, DsnAction::kFailed));
  EXPECT_FALSE(WantsDsn(never, DsnAction::kDelayed));
  queue::Recipient failure;
  failure.add_notify(queue::NOTIFY_SUCCESS);
  failure.add_notify(queue::NOTIFY_FAILURE);
  EXPECT_TRUE(WantsDsn(failure, DsnAction::kFailed));
  EXPECT_FALSE(WantsDsn(failure, DsnAction::kDelayed));
  queue::Recipient delay;
  delay.add_notify(queue::NOTIFY_DELAY);
  EXPECT_FALSE(WantsDsn(delay, DsnAction::kFailed));
  EXPECT_TRUE(WantsDsn(delay, DsnAction::kDelayed));
}

TEST(DsnFieldValueTest, ReplacesControlsAndCutsWithoutBreakingUtf8) {
  EXPECT_EQ(DsnFieldValue("a\r\nb\tc\x7f", DsnCharset::kAscii), "a  b c ");
  EXPECT_EQ(DsnFieldValue("\xc3\xa9", DsnCharset::kAscii), "??");
  EXPECT_EQ(DsnFieldValue("\xc3\xa9", DsnCharset::kUtf8), "\xc3\xa9");
  std::string long_value = std::string(899, 'x') + "\xc3\xa9";
  EXPECT_EQ(DsnFieldValue(long_value, DsnCharset::kUtf8), std::string(899, 'x'));
  std::string whole = std::string(898, 'x') + "\xc3\xa9" + "y";  // the cut falls after the é
  EXPECT_EQ(DsnFieldValue(whole, DsnCharset::kUtf8), std::string(898, 'x') + "\xc3\xa9");
}

RecipientResult Result(ReplySource source, int code, std::string enhanced, std::string text) {
  RecipientResult result;
  result.address = "bob@example.com";
  result.outcome = RecipientOutcome::kPermanentFailure;
  result.source = source;
  result.reply.code = code;
  result.reply.enhanced = std::move(enhanced);
  result.reply.lines = {std::move(text)};
  return result;
}

TEST(DsnRecipientForTest, QuotesTheServersReply) {
  DsnRecipient recipient =
      DsnRecipientFor(Result(ReplySource::kServer, 550, "5.1.1", "5.1.1 unknown user"),
                      DsnAction::kFailed, "mx1.example.com", absl::FromUnixSeconds(10));
  EXPECT_EQ(recipient.address, "bob@example.com");
  EXPECT_EQ(recipient.action, DsnAction::kFailed);
  EXPECT_EQ(recipient.status, "5.1.1");
  EXPECT_EQ(recipient.diagnostic, "550 5.1.1 unknown user");
  EXPECT_EQ(recipient.remote_mta, "mx1.example.com");
  EXPECT_EQ(recipient.reason, "");
  EXPECT_EQ(recipient.last_attempt, absl::FromUnixSeconds(10));
}

TEST(DsnRecipientForTest, DerivesTheStatusFromTheReplyClass) {
  EXPECT_EQ(DsnRecipientFor(Result(ReplySource::kServer, 554, "", "no"), DsnAction::kFailed, "m",
                            absl::FromUnixSeconds(10))
                .status,
            "5.0.0");
  EXPECT_EQ(DsnRecipientFor(Result(ReplySource::kServer, 451, "", "later"), DsnAction::kDelayed,
                            "m", absl::FromUnixSeconds(10))
                .status,
            "4.0.0");
}

TEST(DsnRecipientForTest, OwnDecisionsHaveNoDiagnosticCode) {
  DsnRecipient recipient =
      DsnRecipientFor(Result(ReplySource::kClient, 554, "5.6.3",
                             "5.6.3 8-bit message to a server without 8BITMIME"),
                      DsnAction::kFailed, "mx1.example.com", absl::FromUnixSeconds(10));
  EXPECT_EQ(recipient.status, "5.6.3");
  EXPECT_EQ(recipient.diagnostic, "");
  EXPECT_EQ(recipient.remote_mta, "");
  EXPECT_EQ(recipient.reason, "554 5.6.3 8-bit message to a server without 8BITMIME");
}

}  // namespace
}  // namespace backstop::delivery
