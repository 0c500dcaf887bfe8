#include "ingest/smtp_session.h"

#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace backstop::ingest {
namespace {

using ::testing::Each;
using ::testing::ElementsAre;
using ::testing::Eq;
using ::testing::IsEmpty;

// "250 2.1.0" / "354" / "220" for each complete reply in `output`: the code and, when the text
// starts with one, the enhanced status code of the reply's last line.
std::vector<std::string> Codes(std::string_view output) {
  std::vector<std::string> codes;
  size_t start = 0;
  while (start < output.size()) {
    const size_t end = output.find("\r\n", start);
    const std::string_view line = output.substr(start, end - start);
    start = end == std::string_view::npos ? output.size() : end + 2;
    if (line.size() > 3 && line[3] == '-') {
      continue;
    }
    std::string code(line.substr(0, 3));
    const std::string_view text = line.size() > 4 ? line.substr(4) : std::string_view();
    const std::string_view token = text.substr(0, text.find(' '));
    if (token.size() >= 5 && (token[0] == '2' || token[0] == '4' || token[0] == '5') &&
        token[1] == '.') {
      code += " " + std::string(token);
    }
    codes.push_back(code);
  }
  return codes;
}

SessionOptions DefaultOptions() {
  SessionOptions options;
  options.hostname = "mx.test";
  options.max_message_size = 1000;
  options.max_recipients = 3;
  options.max_errors = 5;
  options.command_timeout = absl::Seconds(300);
  options.data_timeout = absl::Seconds(180);
  return options;
}

class SmtpSessionTest : public ::testing::Test {
 protected:
  void Make(SessionOptions options = DefaultOptions()) {
    session_ =
        std::make_unique<SmtpSession>(std::move(options), ClientInfo{"192.0.2.7", 40000}, now_);
  }
  void SetUp() override { Make(); }
  // For tests that go through many error paths.
  void MakeLenient() {
    SessionOptions options = DefaultOptions();
    options.max_errors = 100;
    Make(options);
  }

  std::string Take() { return session_->TakeOutput(); }
  std::string Feed(std::string_view bytes) {
    session_->Feed(bytes, now_);
    return Take();
  }
  std::string Resolve(const Verdict& verdict) {
    session_->Resolve(verdict, now_);
    return Take();
  }
  std::string Accept() { return Resolve(Verdict::Accept()); }
  // Feeds `bytes`, accepting every request except kEndOfData and kStartTls; returns all output.
  std::string Run(std::string_view bytes) {
    std::string out = Feed(bytes);
    while (session_->pending() != RequestKind::kNone &&
           session_->pending() != RequestKind::kEndOfData &&
           session_->pending() != RequestKind::kStartTls) {
      out += Accept();
    }
    return out;
  }
  // Banner and EHLO, output discarded.
  void Greet(std::string_view ehlo = "EHLO client.test\r\n") {
    session_->Start(now_);
    ASSERT_EQ(session_->pending(), RequestKind::kConnect);
    ASSERT_EQ(Accept(), "220 mx.test ESMTP Backstop\r\n");
    ASSERT_THAT(Codes(Run(ehlo)), ElementsAre("250"));
  }
  // Greets and opens a transaction with one accepted recipient.
  void OpenTransaction() {
    Greet();
    ASSERT_THAT(Codes(Run("MAIL FROM:<s@sender.test>\r\nRCPT TO:<r@rcpt.test>\r\n")),
                ElementsAre("250 2.1.0", "250 2.1.5"));
  }
  // Sends DATA and `body` (which must end the data); returns the replies from the body on.
  std::string SendData(std::string_view body) {
    EXPECT_THAT(Codes(Feed("DATA\r\n")), ElementsAre("354"));
    return Feed(body);
  }

  absl::Time now_ = absl::FromUnixSeconds(1'700'000'000);
  std::unique_ptr<SmtpSession> session_;
};

// --- Greeting ---------------------------------------------------------------------------

TEST_F(SmtpSessionTest, GreetsAfterConnectIsAccepted) {
  session_->Start(now_);
  EXPECT_EQ(session_->pending(), RequestKind::kConnect);
  EXPECT_EQ(Take(), "");
  EXPECT_EQ(Accept(), "220 mx.test ESMTP Backstop\r\n");
  EXPECT_EQ(session_->pending(), RequestKind::kNone);
  EXPECT_FALSE(session_->closing());
}

TEST_F(SmtpSessionTest, ConnectRejectionClosesAfterReply) {
  session_->Start(now_);
  EXPECT_EQ(Resolve(Verdict::Reject(Reply{554, "5.7.1", {"go away"}})), "554 5.7.1 go away\r\n");
  EXPECT_TRUE(session_->closing());
}

TEST_F(SmtpSessionTest, EarlyTalkerBeforeStartGets554AndCloses) {
  session_->Feed("EHLO fast.test\r\n", now_);
  session_->Start(now_);
  EXPECT_EQ(session_->pending(), RequestKind::kNone);
  EXPECT_THAT(Codes(Take()), ElementsAre("554 5.5.1"));
  EXPECT_TRUE(session_->closing());
}

TEST_F(SmtpSessionTest, EarlyTalkerWhileConnectPendingGets554) {
  session_->Start(now_);
  EXPECT_EQ(Feed("EHLO fast.test\r\n"), "");
  EXPECT_THAT(Codes(Accept()), ElementsAre("554 5.5.1"));
  EXPECT_TRUE(session_->closing());
}

TEST_F(SmtpSessionTest, IgnoresInputAfterClosing) {
  Greet();
  EXPECT_THAT(Codes(Feed("QUIT\r\nNOOP\r\n")), ElementsAre("221 2.0.0"));
  EXPECT_TRUE(session_->closing());
  EXPECT_EQ(Feed("NOOP\r\n"), "");
}

// --- EHLO / HELO ------------------------------------------------------------------------

TEST_F(SmtpSessionTest, EhloListsExtensionsWithoutStartTlsWhenUnavailable) {
  session_->Start(now_);
  Accept();
  EXPECT_EQ(Feed("EHLO client.test\r\n"), "");
  EXPECT_EQ(session_->pending(), RequestKind::kHelo);
  EXPECT_EQ(Accept(),
            "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
            "250-CHUNKING\r\n250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n250 ETRN\r\n");
  EXPECT_EQ(session_->helo(), "client.test");
}

TEST_F(SmtpSessionTest, EhloOffersStartTlsWhenAvailable) {
  SessionOptions options = DefaultOptions();
  options.starttls_available = true;
  Make(options);
  session_->Start(now_);
  Accept();
  EXPECT_THAT(Run("EHLO client.test\r\n"),
              ::testing::EndsWith("250-ENHANCEDSTATUSCODES\r\n250-ETRN\r\n250 STARTTLS\r\n"));
}

TEST_F(SmtpSessionTest, HeloHasNoExtensions) {
  session_->Start(now_);
  Accept();
  EXPECT_EQ(Run("HELO client.test\r\n"), "250 mx.test\r\n");
}

TEST_F(SmtpSessionTest, EhloWithoutArgumentIs501) {
  session_->Start(now_);
  Accept();
  EXPECT_THAT(Codes(Feed("EHLO\r\nHELO \r\n")), ElementsAre("501 5.5.4", "501 5.5.4"));
  EXPECT_EQ(session_->errors(), 2u);
}

TEST_F(SmtpSessionTest, RejectedEhloLeavesNoHelo) {
  session_->Start(now_);
  Accept();
  Feed("EHLO bad.test\r\n");
  EXPECT_EQ(Resolve(Verdict::Reject(Reply{550, "5.7.1", {"no"}})), "550 5.7.1 no\r\n");
  EXPECT_THAT(Codes(Feed("MAIL FROM:<a@b.test>\r\n")), ElementsAre("503 5.5.1"));
}

TEST_F(SmtpSessionTest, EhloResetsTransaction) {
  OpenTransaction();
  EXPECT_THAT(Codes(Run("EHLO again.test\r\nRCPT TO:<r@rcpt.test>\r\n")),
              ElementsAre("250", "503 5.5.1"));
  EXPECT_EQ(session_->helo(), "again.test");
}

// --- MAIL -------------------------------------------------------------------------------

TEST_F(SmtpSessionTest, MailBeforeEhloIs503) {
  session_->Start(now_);
  Accept();
  EXPECT_THAT(Codes(Feed("MAIL FROM:<a@b.test>\r\n")), ElementsAre("503 5.5.1"));
}

TEST_F(SmtpSessionTest, MailRequestCarriesEveryParameter) {
  Greet();
  Feed("mail from:<s@Sender.test> SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=id+2Bx\r\n");
  ASSERT_EQ(session_->pending(), RequestKind::kMail);
  const MailRequest& mail = session_->pending_mail();
  EXPECT_EQ(mail.reverse_path, "s@Sender.test");
  EXPECT_EQ(mail.declared_size, 1000u);
  EXPECT_EQ(mail.body, queue::BODY_8BITMIME);
  EXPECT_TRUE(mail.smtputf8);
  EXPECT_EQ(mail.ret, queue::RET_HDRS);
  EXPECT_EQ(mail.envid, "id+x");
  EXPECT_EQ(Accept(), "250 2.1.0 Sender ok\r\n");
}

TEST_F(SmtpSessionTest, MailAcceptsLowerCaseValuesAndSpaceAfterColon) {
  Greet();
  Feed("MAIL FROM: <s@sender.test> body=7bit ret=full\r\n");
  ASSERT_EQ(session_->pending(), RequestKind::kMail);
  EXPECT_EQ(session_->pending_mail().body, queue::BODY_7BIT);
  EXPECT_EQ(session_->pending_mail().ret, queue::RET_FULL);
}

TEST_F(SmtpSessionTest, MailAcceptsNullReversePath) {
  Greet();
  Feed("MAIL FROM:<>\r\n");
  ASSERT_EQ(session_->pending(), RequestKind::kMail);
  EXPECT_EQ(session_->pending_mail().reverse_path, "");
}

TEST_F(SmtpSessionTest, NestedMailIs503) {
  OpenTransaction();
  EXPECT_THAT(Codes(Feed("MAIL FROM:<a@b.test>\r\n")), ElementsAre("503 5.5.1"));
}

TEST_F(SmtpSessionTest, MailSyntaxErrors) {
  Greet();
  EXPECT_THAT(Codes(Feed("MAIL <a@b.test>\r\n")), ElementsAre("501 5.5.4"));
  EXPECT_THAT(Codes(Feed("MAIL FROM:a@b.test\r\n")), ElementsAre("501 5.1.7"));
  EXPECT_THAT(Codes(Feed("MAIL FROM:<a@b.test>SIZE=1\r\n")), ElementsAre("501 5.5.4"));
  EXPECT_EQ(session_->errors(), 3u);
}

TEST_F(SmtpSessionTest, MailSizeOverMaximumIs552AtMail) {
  Greet();
  EXPECT_THAT(Codes(Feed("MAIL FROM:<a@b.test> SIZE=1001\r\n")), ElementsAre("552 5.3.4"));
  Feed("MAIL FROM:<a@b.test> SIZE=1000\r\n");
  EXPECT_EQ(session_->pending(), RequestKind::kMail);
}

TEST_F(SmtpSessionTest, MailUnknownParameterIs555) {
  Greet();
  EXPECT_THAT(Codes(Feed("MAIL FROM:<a@b.test> AUTH=<>\r\n")), ElementsAre("555 5.5.4"));
  EXPECT_THAT(Codes(Feed("MAIL FROM:<a@b.test> X-FOO\r\n")), ElementsAre("555 5.5.4"));
}

TEST_F(SmtpSessionTest, MailDuplicateParameterIs501) {
  Greet();
  EXPECT_THAT(Codes(Feed("MAIL FROM:<a@b.test> SIZE=1 size=2\r\n")), ElementsAre("501 5.5.4"));
  EXPECT_THAT(Codes(Feed("MAIL FROM:<a@b.test> SMTPUTF8 SMTPUTF8\r\n")), ElementsAre("501 5.5.4"));
}

TEST_F(SmtpSessionTest, MailBadParameterValuesAre501) {
  Greet();
  for (const char* param : {"SIZE=abc", "SIZE=99999999999999999999", "BODY=BINARYMIME", "RET=ALL",
                            "SMTPUTF8=yes", "ENVID=a+Z1", "SIZE", "RET",
                            "ENVID=x+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B"
                            "+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B+2B"}) {
    EXPECT_THAT(Codes(Feed(std::string("MAIL FROM:<a@b.test> ") + param + "\r\n")),
                ElementsAre("501 5.5.4"))
        << param;
    Make();
    Greet();
  }
}

TEST_F(SmtpSessionTest, MailParametersAfterHeloAre555) {
  session_->Start(now_);
  Accept();
  Run("HELO client.test\r\n");
  EXPECT_THAT(Codes(Feed("MAIL FROM:<a@b.test> SIZE=10\r\n")), ElementsAre("555 5.5.4"));
  Feed("MAIL FROM:<a@b.test>\r\n");
  EXPECT_EQ(session_->pending(), RequestKind::kMail);
}

TEST_F(SmtpSessionTest, Utf8SenderNeedsSmtputf8) {
  Greet();
  EXPECT_THAT(Codes(Feed("MAIL FROM:<j\xc3\xb6rg@b.test>\r\n")), ElementsAre("553 5.6.7"));
  Feed("MAIL FROM:<j\xc3\xb6rg@b.test> SMTPUTF8\r\n");
  ASSERT_EQ(session_->pending(), RequestKind::kMail);
  EXPECT_EQ(session_->pending_mail().reverse_path, "j\xc3\xb6rg@b.test");
}

TEST_F(SmtpSessionTest, RejectedMailCountsAsError) {
  Greet();
  Feed("MAIL FROM:<a@b.test>\r\n");
  EXPECT_EQ(Resolve(Verdict::Reject(Reply{550, "5.7.1", {"sender refused"}})),
            "550 5.7.1 sender refused\r\n");
  EXPECT_EQ(session_->errors(), 1u);
  EXPECT_THAT(Codes(Feed("RCPT TO:<r@rcpt.test>\r\n")), ElementsAre("503 5.5.1"));
}

// --- RCPT -------------------------------------------------------------------------------

TEST_F(SmtpSessionTest, RcptBeforeMailIs503) {
  Greet();
  EXPECT_THAT(Codes(Feed("RCPT TO:<r@rcpt.test>\r\n")), ElementsAre("503 5.5.1"));
}

TEST_F(SmtpSessionTest, RcptRequestCarriesAddressAndDsnParameters) {
  Greet();
  Run("MAIL FROM:<s@sender.test>\r\n");
  Feed("RCPT TO:<User@RCPT.Test> NOTIFY=success,Delay ORCPT=rfc822;user+2B1@rcpt.test\r\n");
  ASSERT_EQ(session_->pending(), RequestKind::kRcpt);
  const RcptRequest& rcpt = session_->pending_rcpt();
  EXPECT_EQ(rcpt.recipient.address(), "User@RCPT.Test");
  EXPECT_EQ(rcpt.local_part, "User");
  EXPECT_EQ(rcpt.domain, "rcpt.test");
  EXPECT_THAT(rcpt.recipient.notify(), ElementsAre(queue::NOTIFY_SUCCESS, queue::NOTIFY_DELAY));
  EXPECT_EQ(rcpt.recipient.orcpt(), "rfc822;user+2B1@rcpt.test");
  EXPECT_EQ(Accept(), "250 2.1.5 Recipient ok\r\n");
}

TEST_F(SmtpSessionTest, RcptNotifyNever) {
  Greet();
  Run("MAIL FROM:<s@sender.test>\r\n");
  Feed("RCPT TO:<u@rcpt.test> NOTIFY=NEVER\r\n");
  ASSERT_EQ(session_->pending(), RequestKind::kRcpt);
  EXPECT_THAT(session_->pending_rcpt().recipient.notify(), ElementsAre(queue::NOTIFY_NEVER));
}

TEST_F(SmtpSessionTest, RcptBadDsnParametersAre501) {
  MakeLenient();
  Greet();
  Run("MAIL FROM:<s@sender.test>\r\n");
  for (const char* param :
       {"NOTIFY=NEVER,SUCCESS", "NOTIFY=SUCCESS,SUCCESS", "NOTIFY=SOMETIMES", "NOTIFY=", "NOTIFY",
        "ORCPT=user@x", "ORCPT=;user@x", "ORCPT=rfc822;bad+Q1", "NOTIFY=NEVER NOTIFY=NEVER"}) {
    EXPECT_THAT(Codes(Feed(std::string("RCPT TO:<u@rcpt.test> ") + param + "\r\n")),
                ElementsAre("501 5.5.4"))
        << param;
  }
}

TEST_F(SmtpSessionTest, RcptUnknownParameterIs555) {
  Greet();
  Run("MAIL FROM:<s@sender.test>\r\n");
  EXPECT_THAT(Codes(Feed("RCPT TO:<u@rcpt.test> SIZE=10\r\n")), ElementsAre("555 5.5.4"));
}

TEST_F(SmtpSessionTest, RcptPostmasterWithoutDomain) {
  Greet();
  Run("MAIL FROM:<s@sender.test>\r\n");
  Feed("RCPT TO:<Postmaster>\r\n");
  ASSERT_EQ(session_->pending(), RequestKind::kRcpt);
  EXPECT_EQ(session_->pending_rcpt().recipient.address(), "Postmaster");
  EXPECT_EQ(session_->pending_rcpt().domain, "");
}

TEST_F(SmtpSessionTest, RcptNullPathAndBadSyntaxAre501_5_1_3) {
  Greet();
  Run("MAIL FROM:<s@sender.test>\r\n");
  EXPECT_THAT(Codes(Feed("RCPT TO:<>\r\n")), ElementsAre("501 5.1.3"));
  EXPECT_THAT(Codes(Feed("RCPT TO:<a..b@rcpt.test>\r\n")), ElementsAre("501 5.1.3"));
  EXPECT_THAT(Codes(Feed("RCPT <a@rcpt.test>\r\n")), ElementsAre("501 5.5.4"));
  EXPECT_THAT(Codes(Feed("RCPT TO:<" + std::string(65, 'a') + "@rcpt.test>\r\n")),
              ElementsAre("501 5.1.3"));
}

TEST_F(SmtpSessionTest, Utf8RecipientNeedsSmtputf8OnMail) {
  Greet();
  Run("MAIL FROM:<s@sender.test>\r\n");
  EXPECT_THAT(Codes(Feed("RCPT TO:<\xc3\xbc@rcpt.test>\r\n")), ElementsAre("553 5.6.7"));
  Run("RSET\r\nMAIL FROM:<s@sender.test> SMTPUTF8\r\n");
  Feed("RCPT TO:<\xc3\xbc@rcpt.test>\r\n");
  EXPECT_EQ(session_->pending(), RequestKind::kRcpt);
}

TEST_F(SmtpSessionTest, RelayTricksAreExposedToThePolicy) {
  Greet();
  Run("MAIL FROM:<s@sender.test>\r\n");
  Feed("RCPT TO:<victim%elsewhere.test@rcpt.test>\r\n");
  EXPECT_EQ(session_->pending_rcpt().local_part, "victim%elsewhere.test");
  EXPECT_EQ(session_->pending_rcpt().domain, "rcpt.test");
  Resolve(Verdict::Reject(Reply{554, "5.7.1", {"relay denied"}}));
  Feed("RCPT TO:<elsewhere.test!victim@rcpt.test>\r\n");
  EXPECT_EQ(session_->pending_rcpt().local_part, "elsewhere.test!victim");
  Resolve(Verdict::Reject(Reply{554, "5.7.1", {"relay denied"}}));
  Feed("RCPT TO:<@rcpt.test:victim@elsewhere.test>\r\n");
  EXPECT_EQ(session_->pending_rcpt().recipient.address(), "victim@elsewhere.test");
  EXPECT_EQ(session_->pending_rcpt().domain, "elsewhere.test");
  Resolve(Verdict::Reject(Reply{554, "5.7.1", {"relay denied"}}));
  Feed("RCPT TO:<victim@[192.0.2.1]>\r\n");
  EXPECT_EQ(session_->pending_rcpt().domain, "[192.0.2.1]");
  EXPECT_THAT(Codes(Resolve(Verdict::Reject(Reply{554, "5.7.1", {"relay denied"}}))),
              ElementsAre("554 5.7.1"));
}

TEST_F(SmtpSessionTest, TooManyRecipientsIs452AndNotCounted) {
  Greet();
  const std::string out =
      Run("MAIL FROM:<s@sender.test>\r\nRCPT TO:<a@r.test>\r\nRCPT TO:<b@r.test>\r\n"
          "RCPT TO:<c@r.test>\r\nRCPT TO:<d@r.test>\r\n");
  EXPECT_THAT(Codes(out),
              ElementsAre("250 2.1.0", "250 2.1.5", "250 2.1.5", "250 2.1.5", "452 4.5.3"));
  EXPECT_EQ(session_->errors(), 0u);
}

TEST_F(SmtpSessionTest, RejectedRecipientIsNotInTransaction) {
  Greet();
  Run("MAIL FROM:<s@sender.test>\r\n");
  Feed("RCPT TO:<a@r.test>\r\n");
  Accept();
  Feed("RCPT TO:<unknown@r.test>\r\n");
  EXPECT_THAT(Codes(Resolve(Verdict::Reject(Reply{550, "5.1.1", {"unknown user"}}))),
              ElementsAre("550 5.1.1"));
  EXPECT_EQ(session_->errors(), 0u);
  Feed("RCPT TO:<b@r.test>\r\n");
  Accept();
  SendData(".\r\n");
  ASSERT_EQ(session_->pending(), RequestKind::kEndOfData);
  const auto& recipients = session_->transaction().recipients;
  ASSERT_EQ(recipients.size(), 2u);
  EXPECT_EQ(recipients[0].recipient.address(), "a@r.test");
  EXPECT_EQ(recipients[1].recipient.address(), "b@r.test");
}

// --- DATA -------------------------------------------------------------------------------

TEST_F(SmtpSessionTest, DataSequenceErrors) {
  MakeLenient();
  Greet();
  EXPECT_THAT(Codes(Feed("DATA\r\n")), ElementsAre("503 5.5.1"));  // no MAIL
  Run("MAIL FROM:<s@sender.test>\r\n");
  EXPECT_THAT(Codes(Feed("DATA\r\n")), ElementsAre("503 5.5.1"));  // no RCPT
  Feed("RCPT TO:<a@r.test>\r\n");
  Resolve(Verdict::Reject(Reply{550, "5.1.1", {"unknown"}}));
  EXPECT_THAT(Codes(Feed("DATA\r\n")), ElementsAre("554 5.5.1"));  // no valid recipient
  EXPECT_THAT(Codes(Feed("DATA now\r\n")), ElementsAre("501 5.5.4"));
}

TEST_F(SmtpSessionTest, DeliversDotUnstuffedMessageWithEnvelope) {
  OpenTransaction();
  EXPECT_EQ(SendData("Subject: hi\r\n\r\n..leading dot\r\n..\r\n...\r\nlast\r\n.\r\n"), "");
  ASSERT_EQ(session_->pending(), RequestKind::kEndOfData);
  const Transaction& t = session_->transaction();
  EXPECT_EQ(t.data, "Subject: hi\r\n\r\n.leading dot\r\n.\r\n..\r\nlast\r\n");
  EXPECT_EQ(t.mail.reverse_path, "s@sender.test");
  ASSERT_EQ(t.recipients.size(), 1u);
  EXPECT_EQ(t.recipients[0].recipient.address(), "r@rcpt.test");
  EXPECT_EQ(t.helo, "client.test");
  EXPECT_TRUE(t.esmtp);
  EXPECT_FALSE(t.tls.has_value());
  EXPECT_EQ(t.data_start, now_);
  EXPECT_EQ(Resolve(Verdict::AcceptWith(Reply{250, "2.0.0", {"Ok: queued as 42"}})),
            "250 2.0.0 Ok: queued as 42\r\n");
  EXPECT_EQ(session_->messages_accepted(), 1u);
}

TEST_F(SmtpSessionTest, EmptyMessage) {
  OpenTransaction();
  SendData(".\r\n");
  ASSERT_EQ(session_->pending(), RequestKind::kEndOfData);
  EXPECT_EQ(session_->transaction().data, "");
}

TEST_F(SmtpSessionTest, TransactionResetsAfterEndOfData) {
  OpenTransaction();
  SendData("x\r\n.\r\n");
  EXPECT_THAT(Codes(Accept()), ElementsAre("250 2.0.0"));
  EXPECT_THAT(Codes(Feed("RCPT TO:<r@rcpt.test>\r\n")), ElementsAre("503 5.5.1"));
  EXPECT_THAT(Codes(Run("MAIL FROM:<s@sender.test>\r\n")), ElementsAre("250 2.1.0"));
}

TEST_F(SmtpSessionTest, RejectedEndOfDataResetsTransaction) {
  OpenTransaction();
  SendData("x\r\n.\r\n");
  EXPECT_THAT(Codes(Resolve(Verdict::Reject(Reply{451, "4.3.0", {"try later"}}))),
              ElementsAre("451 4.3.0"));
  EXPECT_EQ(session_->messages_accepted(), 0u);
  EXPECT_EQ(session_->errors(), 0u);
  EXPECT_THAT(Codes(Feed("DATA\r\n")), ElementsAre("503 5.5.1"));
}

TEST_F(SmtpSessionTest, EndOfDataSplitAcrossFeeds) {
  OpenTransaction();
  Feed("DATA\r\n");
  for (const char* piece : {"body\r", "\n", ".", "\r", "\n"}) {
    EXPECT_EQ(session_->pending(), RequestKind::kNone) << piece;
    Feed(piece);
  }
  ASSERT_EQ(session_->pending(), RequestKind::kEndOfData);
  EXPECT_EQ(session_->transaction().data, "body\r\n");
}

// --- Smuggling --------------------------------------------------------------------------

class SmugglingTest : public SmtpSessionTest, public ::testing::WithParamInterface<std::string> {};

// A fake end of data followed by a smuggled transaction must neither end the message nor run
// the smuggled commands; the message is rejected at the real end.
TEST_P(SmugglingTest, FakeEndOfDataIsContentAndMessageIsRejected) {
  for (const size_t piece : {size_t{0}, size_t{1}}) {
    Make();
    OpenTransaction();
    const std::string body = "Subject: x\r\n\r\nhello" + GetParam() +
                             "MAIL FROM:<evil@evil.test>\r\nRCPT TO:<v@rcpt.test>\r\nDATA\r\n"
                             "smuggled\r\n.\r\n";
    EXPECT_THAT(Codes(Feed("DATA\r\n")), ElementsAre("354"));
    std::string out;
    if (piece == 0) {
      out = Feed(body);
    } else {
      for (const char c : body) {
        out += Feed(std::string_view(&c, 1));
      }
    }
    EXPECT_NE(session_->pending(), RequestKind::kEndOfData);
    EXPECT_THAT(Codes(out), ElementsAre("554 5.6.0")) << "byte by byte: " << piece;
    EXPECT_EQ(session_->messages_accepted(), 0u);
    // Back to commands, with no transaction.
    EXPECT_THAT(Codes(Feed("RCPT TO:<v@rcpt.test>\r\n")), ElementsAre("503 5.5.1"));
  }
}

INSTANTIATE_TEST_SUITE_P(EndOfDataVariants, SmugglingTest,
                         ::testing::Values("\n.\n", "\r.\r", "\r\n.\n", "\n.\r\n", "\r\n.\r\r\n",
                                           "\r\n.\r", "\r\n\n.\r\n", "\r\n\r.\r\n", "\r\n.\n\r\n",
                                           std::string("\r\n\0.\r\n", 6),
                                           std::string("\r\n.\0\r\n", 6)));

TEST_F(SmtpSessionTest, RejectsBareLfInData) {
  OpenTransaction();
  EXPECT_THAT(Codes(SendData("a\nb\r\n.\r\n")), ElementsAre("554 5.6.0"));
}

TEST_F(SmtpSessionTest, RejectsBareCrInData) {
  OpenTransaction();
  EXPECT_THAT(Codes(SendData("a\rb\r\n.\r\n")), ElementsAre("554 5.6.0"));
}

TEST_F(SmtpSessionTest, RejectsCrCrLfInData) {
  OpenTransaction();
  EXPECT_THAT(Codes(SendData("a\r\r\n.\r\n")), ElementsAre("554 5.6.0"));
}

TEST_F(SmtpSessionTest, RejectsNulInData) {
  OpenTransaction();
  EXPECT_THAT(Codes(SendData(std::string("a\0b\r\n.\r\n", 8))), ElementsAre("554 5.6.0"));
  EXPECT_EQ(session_->errors(), 1u);
}

TEST_F(SmtpSessionTest, EightBitDataIsAccepted) {
  OpenTransaction();
  SendData("caf\xc3\xa9\xff\r\n.\r\n");
  ASSERT_EQ(session_->pending(), RequestKind::kEndOfData);
  EXPECT_EQ(session_->transaction().data, "caf\xc3\xa9\xff\r\n");
}

TEST_F(SmtpSessionTest, RejectsBareLfRightAfterDataCommand) {
  OpenTransaction();
  EXPECT_THAT(Codes(SendData("\n.\r\n.\r\n")), ElementsAre("554 5.6.0"));
}

TEST_F(SmtpSessionTest, LongTextLineSplitAcrossFeedsIsDetected) {
  SessionOptions options = DefaultOptions();
  options.max_message_size = 10000;
  Make(options);
  OpenTransaction();
  Feed("DATA\r\n");
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(Feed(std::string(100, 'x')), "");
  }
  EXPECT_THAT(Codes(Feed("\r\n.\r\n")), ElementsAre("500 5.5.2"));
}

// --- Commands ---------------------------------------------------------------------------

TEST_F(SmtpSessionTest, RejectsBareLfInCommand) {
  Greet();
  // The line ends only at CRLF: the smuggled NOOP is part of the bad line, one reply.
  EXPECT_THAT(Codes(Feed("NOOP\nNOOP\r\n")), ElementsAre("500 5.5.2"));
  EXPECT_EQ(session_->errors(), 1u);
}

TEST_F(SmtpSessionTest, RejectsBareCrInCommand) {
  Greet();
  EXPECT_THAT(Codes(Feed("NOOP\rNOOP\r\nNOOP\r\r\n")), ElementsAre("500 5.5.2", "500 5.5.2"));
}

TEST_F(SmtpSessionTest, RejectsNulInCommand) {
  Greet();
  EXPECT_THAT(Codes(Feed(std::string("NO\0OP\r\n", 7))), ElementsAre("501 5.5.2"));
  EXPECT_THAT(Codes(Feed(std::string("MAIL FROM:<a\0@b.test>\r\n", 23))), ElementsAre("501 5.5.2"));
}

TEST_F(SmtpSessionTest, RejectsEightBitOutsideAddresses) {
  Greet();
  EXPECT_THAT(Codes(Feed("NOOP caf\xc3\xa9\r\n")), ElementsAre("500 5.5.2"));
  EXPECT_THAT(Codes(Feed("MAIL FROM:<a@b.test> ENVID=\xc3\xa9 SMTPUTF8\r\n")),
              ElementsAre("501 5.5.4"));
}

TEST_F(SmtpSessionTest, UnknownCommandIs500_5_5_1) {
  Greet();
  EXPECT_THAT(Codes(Feed("FOO\r\nAUTH PLAIN x\r\n\r\n")),
              ElementsAre("500 5.5.1", "500 5.5.1", "500 5.5.1"));
}

TEST_F(SmtpSessionTest, CommandsAreCaseInsensitive) {
  Greet();
  EXPECT_THAT(Codes(Feed("noop\r\nRsEt\r\n")), ElementsAre("250 2.0.0", "250 2.0.0"));
}

TEST_F(SmtpSessionTest, SimpleCommands) {
  Greet();
  EXPECT_EQ(Feed("NOOP hello\r\n"), "250 2.0.0 Ok\r\n");
  EXPECT_EQ(Feed("RSET\r\n"), "250 2.0.0 Ok\r\n");
  EXPECT_THAT(Codes(Feed("RSET x\r\n")), ElementsAre("501 5.5.4"));
  EXPECT_THAT(Codes(Feed("VRFY someone\r\n")), ElementsAre("252 2.5.2"));
  EXPECT_THAT(Codes(Feed("VRFY\r\n")), ElementsAre("501 5.5.4"));
  EXPECT_THAT(Codes(Feed("EXPN list\r\n")), ElementsAre("502 5.5.1"));
  const std::string help = Feed("HELP\r\n");
  EXPECT_THAT(help, ::testing::StartsWith("214-2.0.0 "));
  EXPECT_THAT(Codes(help), ElementsAre("214 2.0.0"));
}

// --- ETRN (RFC 1985) -------------------------------------------------------------------------

TEST_F(SmtpSessionTest, EtrnAskedForADomainAnswers250WhenAccepted) {
  Greet();
  EXPECT_EQ(Feed("ETRN Example.TEST\r\n"), "");
  ASSERT_EQ(session_->pending(), RequestKind::kEtrn);
  EXPECT_EQ(session_->pending_etrn(), "example.test");
  EXPECT_EQ(Accept(), "250 2.0.0 Queuing for node example.test started\r\n");
  EXPECT_EQ(session_->pending(), RequestKind::kNone);
}

TEST_F(SmtpSessionTest, EtrnWithTheAtOptionNamesTheDomain) {
  Greet();
  Feed("ETRN @example.test.\r\n");
  ASSERT_EQ(session_->pending(), RequestKind::kEtrn);
  EXPECT_EQ(session_->pending_etrn(), "example.test");
}

TEST_F(SmtpSessionTest, RefusedEtrnGets458AndDoesNotCountAsAnError) {
  Greet();
  Feed("ETRN example.test\r\n");
  EXPECT_EQ(Resolve(Verdict::Reject(Reply{458, "4.7.0", {"not allowed"}})),
            "458 4.7.0 not allowed\r\n");
  EXPECT_EQ(session_->errors(), 0u);
  EXPECT_THAT(Codes(Feed("NOOP\r\n")), ElementsAre("250 2.0.0"));
}

TEST_F(SmtpSessionTest, EtrnSyntaxAndSequenceErrors) {
  MakeLenient();
  session_->Start(now_);
  Accept();
  EXPECT_THAT(Codes(Feed("ETRN example.test\r\n")), ElementsAre("503 5.5.1"));  // no EHLO
  Run("EHLO client.test\r\n");
  EXPECT_THAT(Codes(Feed("ETRN\r\n")), ElementsAre("501 5.5.4"));
  EXPECT_THAT(Codes(Feed("ETRN #queue\r\n")), ElementsAre("501 5.5.4"));
  EXPECT_THAT(Codes(Feed("ETRN exa mple.test\r\n")), ElementsAre("501 5.5.4"));
  EXPECT_THAT(Codes(Feed("ETRN @\r\n")), ElementsAre("501 5.5.4"));
  EXPECT_EQ(session_->pending(), RequestKind::kNone);
  Run("MAIL FROM:<s@sender.test>\r\n");
  EXPECT_THAT(Codes(Feed("ETRN example.test\r\n")), ElementsAre("503 5.5.1"));
}

TEST_F(SmtpSessionTest, RsetAbortsTransaction) {
  OpenTransaction();
  EXPECT_EQ(Feed("RSET\r\n"), "250 2.0.0 Ok\r\n");
  EXPECT_THAT(Codes(Feed("DATA\r\n")), ElementsAre("503 5.5.1"));
}

TEST_F(SmtpSessionTest, QuitReplies221AndCloses) {
  Greet();
  EXPECT_EQ(Feed("QUIT\r\n"), "221 2.0.0 Bye\r\n");
  EXPECT_TRUE(session_->closing());
}

// --- Limits -----------------------------------------------------------------------------

TEST_F(SmtpSessionTest, CommandLineOf512OctetsIsAccepted) {
  Greet();
  const std::string line = "NOOP " + std::string(512 - 7, 'x') + "\r\n";
  ASSERT_EQ(line.size(), 512u);
  EXPECT_THAT(Codes(Feed(line)), ElementsAre("250 2.0.0"));
}

TEST_F(SmtpSessionTest, CommandLineOf513OctetsIs500AndNextCommandWorks) {
  Greet();
  const std::string line = "NOOP " + std::string(513 - 7, 'x') + "\r\n";
  EXPECT_THAT(Codes(Feed(line + "NOOP\r\n")), ElementsAre("500 5.5.2", "250 2.0.0"));
}

TEST_F(SmtpSessionTest, HugeLineIsDiscardedUpToCrlf) {
  Greet();
  EXPECT_EQ(Feed("NOOP "), "");
  for (int i = 0; i < 1000; ++i) {
    EXPECT_EQ(Feed(std::string(1000, 'x') + "\n\r"), "");  // bare LF / CR do not end it
  }
  EXPECT_THAT(Codes(Feed("\r\nNOOP\r\n")), ElementsAre("500 5.5.2", "250 2.0.0"));
  EXPECT_EQ(session_->errors(), 1u);
}

TEST_F(SmtpSessionTest, TooLongLineEndingWithCrlfSplitAcrossFeeds) {
  Greet();
  Feed(std::string(600, 'x') + "\r");
  EXPECT_THAT(Codes(Feed("\nNOOP\r\n")), ElementsAre("500 5.5.2", "250 2.0.0"));
}

TEST_F(SmtpSessionTest, TextLineOf1000OctetsIsAccepted) {
  OpenTransaction();
  const std::string line = std::string(998, 'x') + "\r\n";
  SendData(line + ".\r\n");
  ASSERT_EQ(session_->pending(), RequestKind::kEndOfData);
}

TEST_F(SmtpSessionTest, TextLineOf1001OctetsRejectsMessageAtEnd) {
  SessionOptions options = DefaultOptions();
  options.max_message_size = 10000;
  Make(options);
  OpenTransaction();
  EXPECT_THAT(Codes(SendData(std::string(999, 'x') + "\r\n.\r\n")), ElementsAre("500 5.5.2"));
}

TEST_F(SmtpSessionTest, StuffedDotCountsInLineLength) {
  SessionOptions options = DefaultOptions();
  options.max_message_size = 10000;
  Make(options);
  OpenTransaction();
  EXPECT_THAT(Codes(SendData("." + std::string(998, 'x') + "\r\n.\r\n")), ElementsAre("500 5.5.2"));
}

TEST_F(SmtpSessionTest, MessageOfMaxSizeIsAccepted) {
  OpenTransaction();
  const std::string body = std::string(998, 'x') + "\r\n";  // exactly 1000 octets
  SendData(body + ".\r\n");
  ASSERT_EQ(session_->pending(), RequestKind::kEndOfData);
  EXPECT_EQ(session_->transaction().data, body);
}

TEST_F(SmtpSessionTest, MessageOneOctetOverMaxSizeIs552) {
  OpenTransaction();
  const std::string body = std::string(997, 'x') + "\r\n\r\n";  // 1001 octets
  EXPECT_THAT(Codes(SendData(body + ".\r\n")), ElementsAre("552 5.3.4"));
}

TEST_F(SmtpSessionTest, BdatMessageOfMaxSizeIsAccepted) {
  OpenTransaction();
  const std::string body = std::string(998, 'x') + "\r\n";
  EXPECT_EQ(Feed("BDAT 1000 LAST\r\n" + body), "");
  ASSERT_EQ(session_->pending(), RequestKind::kEndOfData);
  EXPECT_EQ(session_->transaction().data, body);
}

TEST_F(SmtpSessionTest, MessageOverMaxSizeIsReadToTheEndThen552) {
  OpenTransaction();
  Feed("DATA\r\n");
  EXPECT_EQ(Feed(std::string(998, 'x') + "\r\n"), "");
  EXPECT_EQ(Feed("y\r\n.\r\nNOOP\r\n"), "552 5.3.4 Error: message too big\r\n250 2.0.0 Ok\r\n");
  EXPECT_EQ(session_->pending(), RequestKind::kNone);
  EXPECT_EQ(session_->errors(), 0u);
}

TEST_F(SmtpSessionTest, ErrorLimitReplies421AndCloses) {
  Greet();
  EXPECT_THAT(
      Codes(Feed("A\r\nB\r\nC\r\nD\r\nE\r\nNOOP\r\n")),
      ElementsAre("500 5.5.1", "500 5.5.1", "500 5.5.1", "500 5.5.1", "500 5.5.1", "421 4.7.0"));
  EXPECT_TRUE(session_->closing());
  EXPECT_EQ(session_->errors(), 5u);
}

TEST_F(SmtpSessionTest, ErrorsBelowLimitKeepSessionOpen) {
  Greet();
  EXPECT_THAT(Codes(Feed("A\r\nB\r\nC\r\nD\r\nNOOP\r\n")),
              ElementsAre("500 5.5.1", "500 5.5.1", "500 5.5.1", "500 5.5.1", "250 2.0.0"));
  EXPECT_FALSE(session_->closing());
}

// --- Pipelining -------------------------------------------------------------------------

constexpr std::string_view kPipelinedSession =
    "EHLO client.test\r\nMAIL FROM:<s@sender.test> BODY=8BITMIME\r\nRCPT TO:<a@rcpt.test>\r\n"
    "RCPT TO:<b@rcpt.test>\r\nDATA\r\nSubject: pipelined\r\n\r\n..dot\r\n.\r\n"
    "MAIL FROM:<>\r\nRCPT TO:<c@rcpt.test>\r\nBDAT 5\r\nhelloBDAT 8 LAST\r\n world\r\n"
    "QUIT\r\n";

// Drives kPipelinedSession in pieces of `piece` bytes, accepting everything.
std::pair<std::string, std::vector<std::string>> RunPipelined(size_t piece) {
  absl::Time now = absl::FromUnixSeconds(1'700'000'000);
  SmtpSession session(DefaultOptions(), ClientInfo{"192.0.2.7", 1}, now);
  session.Start(now);
  session.Resolve(Verdict::Accept(), now);
  std::string out = session.TakeOutput();
  std::vector<std::string> messages;
  for (size_t i = 0; i < kPipelinedSession.size(); i += piece) {
    session.Feed(kPipelinedSession.substr(i, piece), now);
    while (session.pending() != RequestKind::kNone) {
      if (session.pending() == RequestKind::kEndOfData) {
        messages.push_back(session.transaction().data);
      }
      session.Resolve(Verdict::Accept(), now);
    }
    out += session.TakeOutput();
  }
  return {out, messages};
}

TEST(SmtpSessionPipeliningTest, WholeSessionInOneFeedRepliesInOrder) {
  const auto [out, messages] = RunPipelined(kPipelinedSession.size());
  EXPECT_THAT(Codes(out),
              ElementsAre("220", "250", "250 2.1.0", "250 2.1.5", "250 2.1.5", "354", "250 2.0.0",
                          "250 2.1.0", "250 2.1.5", "250 2.0.0", "250 2.0.0", "221 2.0.0"));
  EXPECT_THAT(messages, ElementsAre("Subject: pipelined\r\n\r\n.dot\r\n", "hello world\r\n"));
}

TEST(SmtpSessionPipeliningTest, ByteByByteGivesSameOutput) {
  const auto whole = RunPipelined(kPipelinedSession.size());
  for (const size_t piece : {size_t{1}, size_t{2}, size_t{3}, size_t{7}}) {
    EXPECT_EQ(RunPipelined(piece), whole) << piece;
  }
}

TEST_F(SmtpSessionTest, BuffersInputWhileRequestPending) {
  Greet();
  EXPECT_EQ(Feed("MAIL FROM:<s@sender.test>\r\n"), "");
  EXPECT_EQ(session_->pending(), RequestKind::kMail);
  EXPECT_EQ(Feed("RCPT TO:<r@rcpt.test>\r\nNOOP\r\n"), "");
  EXPECT_EQ(session_->pending(), RequestKind::kMail);
  EXPECT_EQ(Accept(), "250 2.1.0 Sender ok\r\n");
  EXPECT_EQ(session_->pending(), RequestKind::kRcpt);
  EXPECT_EQ(Accept(), "250 2.1.5 Recipient ok\r\n250 2.0.0 Ok\r\n");
}

TEST_F(SmtpSessionTest, PipelinedDataAfterRejectedRecipientsReadsBodyAsCommands) {
  Greet();
  Feed("MAIL FROM:<s@sender.test>\r\nRCPT TO:<a@r.test>\r\nDATA\r\nNOOP\r\n.\r\n");
  std::string out = Accept();
  out += Resolve(Verdict::Reject(Reply{550, "5.1.1", {"unknown"}}));
  EXPECT_THAT(Codes(out),
              ElementsAre("250 2.1.0", "550 5.1.1", "554 5.5.1", "250 2.0.0", "500 5.5.1"));
}

// --- BDAT -------------------------------------------------------------------------------

TEST_F(SmtpSessionTest, BdatChunksAreCountedExactlyAndBinarySafe) {
  OpenTransaction();
  const std::string chunk1 = "A\r\n.\r\nQUIT\r\n";
  EXPECT_EQ(Feed("BDAT " + std::to_string(chunk1.size()) + "\r\n" + chunk1),
            "250 2.0.0 " + std::to_string(chunk1.size()) + " octets received\r\n");
  EXPECT_FALSE(session_->closing());
  EXPECT_EQ(Feed("BDAT 6 LAST\r\nMORE\r\n"), "");
  ASSERT_EQ(session_->pending(), RequestKind::kEndOfData);
  EXPECT_EQ(session_->transaction().data, chunk1 + "MORE\r\n");
  EXPECT_THAT(Codes(Accept()), ElementsAre("250 2.0.0"));
}

TEST_F(SmtpSessionTest, BdatChunkSplitAcrossFeeds) {
  OpenTransaction();
  EXPECT_EQ(Feed("BDAT 9 last\r\nabc"), "");
  EXPECT_EQ(Feed("de\r"), "");
  EXPECT_EQ(session_->pending(), RequestKind::kNone);
  Feed("\nxyNOOP\r\n");
  ASSERT_EQ(session_->pending(), RequestKind::kEndOfData);
  EXPECT_EQ(session_->transaction().data, "abcde\r\nxy");
  EXPECT_THAT(Codes(Accept()), ElementsAre("250 2.0.0", "250 2.0.0"));
}

TEST_F(SmtpSessionTest, BdatZeroLastEndsMessage) {
  OpenTransaction();
  Feed("BDAT 3\r\nab\r");
  Feed("BDAT 0 LAST\r\n");
  EXPECT_EQ(session_->pending(), RequestKind::kNone);  // message ends with a bare CR
  Make();
  OpenTransaction();
  Feed("BDAT 4\r\nab\r\n");
  EXPECT_THAT(Codes(Feed("BDAT 0 LAST\r\n")), IsEmpty());
  ASSERT_EQ(session_->pending(), RequestKind::kEndOfData);
  EXPECT_EQ(session_->transaction().data, "ab\r\n");
}

TEST_F(SmtpSessionTest, BdatCrlfSplitAcrossChunksIsFine) {
  OpenTransaction();
  Feed("BDAT 3\r\nab\rBDAT 1 LAST\r\n\n");
  ASSERT_EQ(session_->pending(), RequestKind::kEndOfData);
  EXPECT_EQ(session_->transaction().data, "ab\r\n");
}

TEST_F(SmtpSessionTest, BdatRejectsBareLfAndTrailingCr) {
  OpenTransaction();
  EXPECT_THAT(Codes(Feed("BDAT 4\r\na\nb\nBDAT 2 LAST\r\n\r\n")),
              ElementsAre("250 2.0.0", "554 5.6.0"));
  Make();
  OpenTransaction();
  EXPECT_THAT(Codes(Feed("BDAT 2 LAST\r\na\r")), ElementsAre("554 5.6.0"));
  Make();
  OpenTransaction();
  EXPECT_THAT(Codes(Feed(std::string("BDAT 3 LAST\r\na\0b", 16))), ElementsAre("554 5.6.0"));
}

TEST_F(SmtpSessionTest, BdatWithoutTransactionReadsChunkThenRefuses) {
  Greet();
  EXPECT_THAT(Codes(Feed("BDAT 6\r\nQUIT\r\nNOOP\r\n")), ElementsAre("503 5.5.1", "250 2.0.0"));
  EXPECT_FALSE(session_->closing());
  Run("MAIL FROM:<s@sender.test>\r\n");
  EXPECT_THAT(Codes(Feed("BDAT 6\r\nQUIT\r\n")), ElementsAre("503 5.5.1"));
  Feed("RCPT TO:<a@r.test>\r\n");
  Resolve(Verdict::Reject(Reply{550, "5.1.1", {"unknown"}}));
  EXPECT_THAT(Codes(Feed("BDAT 6 LAST\r\nQUIT\r\n")), ElementsAre("554 5.5.1"));
  EXPECT_FALSE(session_->closing());
}

TEST_F(SmtpSessionTest, BdatSyntaxErrorsAre501) {
  OpenTransaction();
  EXPECT_THAT(Codes(Feed("BDAT\r\nBDAT x\r\nBDAT 1 FIRST\r\nBDAT -1\r\n")),
              ElementsAre("501 5.5.4", "501 5.5.4", "501 5.5.4", "501 5.5.4"));
}

TEST_F(SmtpSessionTest, DataAfterBdatIs503) {
  OpenTransaction();
  EXPECT_THAT(Codes(Feed("BDAT 3\r\nab\nDATA\r\n")), ElementsAre("250 2.0.0", "503 5.5.1"));
}

TEST_F(SmtpSessionTest, BdatOverMaxSizeIs552AtLast) {
  OpenTransaction();
  std::string line(98, 'x');
  line += "\r\n";
  std::string chunk;
  for (int i = 0; i < 6; ++i) {
    chunk += line;
  }
  EXPECT_THAT(Codes(Feed("BDAT 600\r\n" + chunk)), ElementsAre("250 2.0.0"));
  chunk.resize(400);
  EXPECT_THAT(Codes(Feed("BDAT 401 LAST\r\n" + chunk + "x")), ElementsAre("552 5.3.4"));
}

TEST_F(SmtpSessionTest, RefusedBdatLastEndsTransaction) {
  Greet();
  Run("MAIL FROM:<s@sender.test>\r\n");
  EXPECT_THAT(Codes(Feed("BDAT 2 LAST\r\nab")), ElementsAre("503 5.5.1"));
  EXPECT_THAT(Codes(Run("MAIL FROM:<s@sender.test>\r\n")), ElementsAre("250 2.1.0"));
}

TEST_F(SmtpSessionTest, ShutdownWaitsForBdatTransaction) {
  OpenTransaction();
  EXPECT_THAT(Codes(Feed("BDAT 2\r\nab")), ElementsAre("250 2.0.0"));
  session_->Shutdown(now_);
  EXPECT_EQ(Take(), "");
  EXPECT_FALSE(session_->closing());
  Feed("BDAT 2 LAST\r\n\r\n");
  ASSERT_EQ(session_->pending(), RequestKind::kEndOfData);
  EXPECT_THAT(Codes(Accept()), ElementsAre("250 2.0.0", "421 4.3.2"));
}

// --- STARTTLS ---------------------------------------------------------------------------

class StartTlsTest : public SmtpSessionTest {
 protected:
  void SetUp() override {
    SessionOptions options = DefaultOptions();
    options.starttls_available = true;
    Make(options);
  }
};

TEST_F(StartTlsTest, RepliesAndRequestsHandshake) {
  Greet();
  EXPECT_EQ(Feed("STARTTLS\r\n"), "220 2.0.0 Ready to start TLS\r\n");
  EXPECT_EQ(session_->pending(), RequestKind::kStartTls);
  EXPECT_EQ(session_->deadline(), absl::InfiniteFuture());
}

TEST_F(StartTlsTest, DiscardsCommandsPipelinedAfterStartTls) {
  Greet();
  EXPECT_EQ(Feed("STARTTLS\r\nMAIL FROM:<evil@evil.test>\r\n"), "220 2.0.0 Ready to start TLS\r\n");
  EXPECT_EQ(Feed("RCPT TO:<v@rcpt.test>\r\n"), "");  // also plaintext before the handshake
  session_->TlsEstablished(TlsInfo{"TLSv1.3", "TLS_AES_256_GCM_SHA384"}, now_);
  EXPECT_EQ(Take(), "");
  EXPECT_EQ(session_->pending(), RequestKind::kNone);
  // Neither the injected MAIL nor the EHLO state survived.
  EXPECT_THAT(Codes(Feed("MAIL FROM:<s@sender.test>\r\n")), ElementsAre("503 5.5.1"));
  EXPECT_EQ(session_->helo(), "");
}

TEST_F(StartTlsTest, ResetsStateAndStopsOfferingStartTls) {
  Greet();
  Feed("STARTTLS\r\n");
  session_->TlsEstablished(TlsInfo{"TLSv1.3", "TLS_AES_128_GCM_SHA256"}, now_);
  const std::string ehlo = Run("EHLO client.test\r\n");
  EXPECT_THAT(ehlo, ::testing::Not(::testing::HasSubstr("STARTTLS")));
  EXPECT_THAT(Codes(Feed("STARTTLS\r\n")), ElementsAre("554 5.5.1"));
  Run("MAIL FROM:<s@sender.test>\r\nRCPT TO:<r@rcpt.test>\r\n");
  SendData("x\r\n.\r\n");
  ASSERT_EQ(session_->pending(), RequestKind::kEndOfData);
  ASSERT_TRUE(session_->transaction().tls.has_value());
  EXPECT_EQ(session_->transaction().tls->protocol, "TLSv1.3");
  EXPECT_EQ(session_->transaction().tls->cipher, "TLS_AES_128_GCM_SHA256");
}

TEST_F(StartTlsTest, CommandTimeoutRunsFromHandshake) {
  Greet();
  Feed("STARTTLS\r\n");
  now_ += absl::Seconds(7);
  session_->TlsEstablished(TlsInfo{"TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256"}, now_);
  EXPECT_EQ(session_->deadline(), now_ + absl::Seconds(300));
}

TEST_F(StartTlsTest, StartTlsDuringTransactionIs503) {
  Greet();
  Run("MAIL FROM:<s@sender.test>\r\n");
  EXPECT_THAT(Codes(Feed("STARTTLS\r\n")), ElementsAre("503 5.5.1"));
  EXPECT_THAT(Codes(Feed("STARTTLS now\r\n")), ElementsAre("501 5.5.4"));
}

TEST_F(SmtpSessionTest, StartTlsUnavailableIs502) {
  Greet();
  EXPECT_THAT(Codes(Feed("STARTTLS\r\n")), ElementsAre("502 5.5.1"));
  EXPECT_EQ(session_->pending(), RequestKind::kNone);
}

// --- Timeouts ---------------------------------------------------------------------------

TEST_F(SmtpSessionTest, DeadlineIsInfiniteBeforeStartAndWhilePending) {
  EXPECT_EQ(session_->deadline(), absl::InfiniteFuture());
  session_->Start(now_);
  EXPECT_EQ(session_->deadline(), absl::InfiniteFuture());
  Accept();
  EXPECT_EQ(session_->deadline(), now_ + absl::Seconds(300));
  Feed("EHLO client.test\r\n");
  EXPECT_EQ(session_->deadline(), absl::InfiniteFuture());
}

TEST_F(SmtpSessionTest, DribblingClientTimesOutFromLastReply) {
  Greet();
  const absl::Time replied = now_;
  for (const char c : std::string("NOOP")) {
    now_ += absl::Seconds(60);
    Feed(std::string_view(&c, 1));
    EXPECT_EQ(session_->deadline(), replied + absl::Seconds(300));
  }
  now_ = replied + absl::Seconds(299);
  session_->OnTimer(now_);
  EXPECT_EQ(Take(), "");
  now_ = replied + absl::Seconds(300);
  session_->OnTimer(now_);
  EXPECT_EQ(Take(), "421 4.4.2 mx.test Error: timeout exceeded\r\n");
  EXPECT_TRUE(session_->closing());
}

TEST_F(SmtpSessionTest, ReplyRestartsCommandTimeout) {
  Greet();
  now_ += absl::Seconds(100);
  Feed("NOOP\r\n");
  EXPECT_EQ(session_->deadline(), now_ + absl::Seconds(300));
}

TEST_F(SmtpSessionTest, DataTimeoutRestartsWithEachChunk) {
  OpenTransaction();
  Feed("DATA\r\n");
  EXPECT_EQ(session_->deadline(), now_ + absl::Seconds(180));
  now_ += absl::Seconds(100);
  Feed("line\r\n");
  EXPECT_EQ(session_->deadline(), now_ + absl::Seconds(180));
  now_ += absl::Seconds(180);
  session_->OnTimer(now_);
  EXPECT_THAT(Codes(Take()), ElementsAre("421 4.4.2"));
}

TEST_F(SmtpSessionTest, BdatChunkUsesDataTimeout) {
  OpenTransaction();
  Feed("BDAT 100\r\nabc");
  EXPECT_EQ(session_->deadline(), now_ + absl::Seconds(180));
}

// --- Shutdown ---------------------------------------------------------------------------

TEST_F(SmtpSessionTest, ShutdownWhileIdleReplies421) {
  Greet();
  session_->Shutdown(now_);
  EXPECT_EQ(Take(), "421 4.3.2 Service shutting down\r\n");
  EXPECT_TRUE(session_->closing());
}

TEST_F(SmtpSessionTest, ShutdownLetsDataTransactionFinish) {
  OpenTransaction();
  Feed("DATA\r\nhalf");
  session_->Shutdown(now_);
  EXPECT_EQ(Take(), "");
  Feed(" a message\r\n.\r\nMAIL FROM:<s@sender.test>\r\n");
  ASSERT_EQ(session_->pending(), RequestKind::kEndOfData);
  EXPECT_THAT(Codes(Accept()), ElementsAre("250 2.0.0", "421 4.3.2"));
  EXPECT_TRUE(session_->closing());
  EXPECT_EQ(session_->messages_accepted(), 1u);
}

TEST_F(SmtpSessionTest, ShutdownWaitsForPendingRequest) {
  Greet();
  Feed("MAIL FROM:<s@sender.test>\r\n");
  session_->Shutdown(now_);
  EXPECT_EQ(Take(), "");
  EXPECT_THAT(Codes(Accept()), ElementsAre("250 2.1.0", "421 4.3.2"));
}

TEST_F(StartTlsTest, StartTlsBeforeEhloIsAllowed) {
  session_->Start(now_);
  Accept();
  EXPECT_THAT(Codes(Feed("STARTTLS\r\n")), ElementsAre("220 2.0.0"));
  EXPECT_EQ(session_->pending(), RequestKind::kStartTls);
}

// The harvest defence of the filter chain counts them instead (its own thresholds).
TEST_F(SmtpSessionTest, RejectedRecipientsAreNotProtocolErrors) {
  Greet();
  Run("MAIL FROM:<s@sender.test>\r\n");
  std::string out;
  for (int i = 0; i < 8; ++i) {
    Feed("RCPT TO:<guess" + std::to_string(i) + "@rcpt.test>\r\n");
    out += Resolve(Verdict::Reject(Reply{550, "5.1.1", {"unknown user"}}));
  }
  EXPECT_THAT(Codes(out), Each(Eq("550 5.1.1")));
  EXPECT_EQ(session_->errors(), 0u);
  EXPECT_FALSE(session_->closing());
  // A 421 from the handler still ends the session.
  Feed("RCPT TO:<guess9@rcpt.test>\r\n");
  EXPECT_THAT(Codes(Resolve(Verdict::Reject(Reply{421, "4.7.0", {"too many"}}))),
              ElementsAre("421 4.7.0"));
  EXPECT_TRUE(session_->closing());
}

TEST_F(SmtpSessionTest, ResolveWithoutPendingRequestAborts) {
  Greet();
  EXPECT_DEATH(session_->Resolve(Verdict::Accept(), now_), "without a pending request");
}

TEST_F(SmtpSessionTest, HeloVerdictReplyReplacesDefault) {
  session_->Start(now_);
  Accept();
  Feed("EHLO client.test\r\n");
  EXPECT_EQ(Resolve(Verdict::AcceptWith(Reply{250, "", {"mx.test hello"}})),
            "250 mx.test hello\r\n");
  EXPECT_EQ(session_->helo(), "client.test");
}

// --- Verdicts ---------------------------------------------------------------------------

TEST_F(SmtpSessionTest, Reject421ClosesAfterReply) {
  Greet();
  Feed("MAIL FROM:<s@sender.test>\r\nNOOP\r\n");
  EXPECT_EQ(Resolve(Verdict::Reject(Reply{421, "4.7.0", {"mx.test too many sessions"}})),
            "421 4.7.0 mx.test too many sessions\r\n");
  EXPECT_TRUE(session_->closing());
}

TEST(ReplyTest, SerializesMultiLineWithEnhancedCodeOnEveryLine) {
  EXPECT_EQ((Reply{550, "5.7.1", {"first", "second"}}).Serialize(),
            "550-5.7.1 first\r\n550 5.7.1 second\r\n");
  EXPECT_EQ((Reply{250, "", {"mx.test", "PIPELINING"}}).Serialize(),
            "250-mx.test\r\n250 PIPELINING\r\n");
  EXPECT_EQ((Reply{250, "2.0.0", {}}).Serialize(), "250 2.0.0\r\n");
  EXPECT_EQ((Reply{250, "", {}}).Serialize(), "250\r\n");
  EXPECT_EQ((Reply{550, "5.7.1", {"a\r\nb"}}).Serialize(), "550 5.7.1 a  b\r\n");
}

}  // namespace
}  // namespace backstop::ingest
