#include "delivery/smtp_client.h"

#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "absl/time/time.h"
#include "proto/queue.pb.h"

namespace backstop::delivery {
namespace {

constexpr char kPipeliningEhlo[] =
    "250-mx1.example.com hello\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n";
constexpr char kLockStepEhlo[] = "250-mx1.example.com hello\r\n250 8BITMIME\r\n";

queue::QueueEntry Entry(std::string id, std::string reverse_path,
                        std::vector<std::string> recipients,
                        std::string message = "Subject: t\r\n\r\nhi\r\n") {
  queue::QueueEntry entry;
  entry.set_id(std::move(id));
  entry.set_domain("example.com");
  entry.mutable_envelope()->set_reverse_path(std::move(reverse_path));
  for (std::string& address : recipients) {
    entry.mutable_envelope()->add_recipients()->set_address(std::move(address));
  }
  entry.set_message(std::move(message));
  return entry;
}

class SmtpClientTest : public testing::Test {
 protected:
  ClientOptions Options(TlsPolicy tls = TlsPolicy::kOpportunistic) {
    ClientOptions options;
    options.helo_name = "mx2.example.net";
    options.tls = tls;
    options.greeting_timeout = absl::Seconds(50);
    options.ehlo_timeout = absl::Seconds(51);
    options.starttls_timeout = absl::Seconds(52);
    options.mail_timeout = absl::Seconds(53);
    options.rcpt_timeout = absl::Seconds(54);
    options.data_init_timeout = absl::Seconds(20);
    options.data_block_timeout = absl::Seconds(30);
    options.data_end_timeout = absl::Seconds(100);
    options.rset_timeout = absl::Seconds(55);
    options.quit_timeout = absl::Seconds(56);
    return options;
  }

  // Greeting and EHLO answered with `ehlo`; the session is ready for messages.
  void Greet(SmtpClient& client, std::string_view ehlo) {
    client.Feed("220 mx1.example.com ESMTP\r\n", now_);
    ASSERT_EQ(client.TakeOutput(), "EHLO mx2.example.net\r\n");
    client.Feed(ehlo, now_);
  }

  absl::Time now_ = absl::FromUnixSeconds(1'800'000'000);
};

const RecipientResult& Only(const std::vector<MessageResult>& results, size_t message,
                            size_t recipient) {
  return results.at(message).recipients.at(recipient);
}

TEST_F(SmtpClientTest, GreetsWithEhloAndWaitsForTheBanner) {
  SmtpClient client(Options(), now_);
  EXPECT_EQ(client.TakeOutput(), "");
  EXPECT_EQ(client.deadline(), now_ + absl::Seconds(50));
  client.Feed("220 mx1.example.com ESMTP\r\n", now_);
  EXPECT_EQ(client.TakeOutput(), "EHLO mx2.example.net\r\n");
  EXPECT_EQ(client.deadline(), now_ + absl::Seconds(51));
}

TEST_F(SmtpClientTest, ParsesEhloKeywordsCaseInsensitively) {
  SmtpClient client(Options(TlsPolicy::kNone), now_);
  Greet(client,
        "250-mx1.example.com greets you\r\n250-pipelining\r\n250-SIZE 1000000\r\n"
        "250-8BITMIME\r\n250-SMTPUTF8\r\n250-DSN\r\n250-STARTTLS\r\n250-CHUNKING\r\n"
        "250-AUTH PLAIN\r\n250 ENHANCEDSTATUSCODES\r\n");
  const ServerExtensions& ext = client.extensions();
  EXPECT_TRUE(ext.pipelining);
  EXPECT_TRUE(ext.size);
  EXPECT_EQ(ext.max_size, 1000000u);
  EXPECT_TRUE(ext.eight_bit_mime);
  EXPECT_TRUE(ext.smtputf8);
  EXPECT_TRUE(ext.dsn);
  EXPECT_TRUE(ext.starttls);
  EXPECT_TRUE(ext.chunking);
  EXPECT_TRUE(ext.enhanced_status_codes);
  EXPECT_TRUE(client.idle());
  EXPECT_EQ(client.deadline(), absl::InfiniteFuture());
}

TEST_F(SmtpClientTest, PipelinesMailRcptAndDataInOneWrite) {
  SmtpClient client(Options(), now_);
  Greet(client, kPipeliningEhlo);
  client.AddMessage(Entry("id1", "alice@sender.org", {"bob@example.com", "carol@example.com"}),
                    now_);
  EXPECT_EQ(client.TakeOutput(),
            "MAIL FROM:<alice@sender.org>\r\nRCPT TO:<bob@example.com>\r\n"
            "RCPT TO:<carol@example.com>\r\nDATA\r\n");
  client.Feed("250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 <carol@example.com>: unknown\r\n", now_);
  EXPECT_EQ(client.TakeOutput(), "");
  client.Feed("354 go ahead\r\n", now_);
  EXPECT_EQ(client.TakeOutput(), "Subject: t\r\n\r\nhi\r\n.\r\n");
  client.Feed("250 2.0.0 queued as 123\r\n", now_);

  std::vector<MessageResult> results = client.TakeResults();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].id, "id1");
  EXPECT_EQ(results[0].failure, ConnectionFailure::kNone);
  const RecipientResult& bob = Only(results, 0, 0);
  EXPECT_EQ(bob.address, "bob@example.com");
  EXPECT_EQ(bob.outcome, RecipientOutcome::kDelivered);
  EXPECT_EQ(bob.reply.OneLine(), "250 2.0.0 queued as 123");
  const RecipientResult& carol = Only(results, 0, 1);
  EXPECT_EQ(carol.outcome, RecipientOutcome::kPermanentFailure);
  EXPECT_EQ(carol.source, ReplySource::kServer);
  EXPECT_EQ(carol.reply.code, 550);
  EXPECT_EQ(carol.reply.enhanced, "5.1.1");
  EXPECT_EQ(carol.reply.OneLine(), "550 5.1.1 <carol@example.com>: unknown");
  EXPECT_TRUE(client.idle());
}

TEST_F(SmtpClientTest, WithoutPipeliningSendsOneCommandPerReply) {
  SmtpClient client(Options(), now_);
  Greet(client, kLockStepEhlo);
  client.AddMessage(Entry("id1", "", {"bob@example.com", "carol@example.com"}), now_);
  EXPECT_EQ(client.TakeOutput(), "MAIL FROM:<>\r\n");
  EXPECT_EQ(client.deadline(), now_ + absl::Seconds(53));
  client.Feed("250 ok\r\n", now_);
  EXPECT_EQ(client.TakeOutput(), "RCPT TO:<bob@example.com>\r\n");
  EXPECT_EQ(client.deadline(), now_ + absl::Seconds(54));
  client.Feed("451 4.2.0 try later\r\n", now_);
  EXPECT_EQ(client.TakeOutput(), "RCPT TO:<carol@example.com>\r\n");
  client.Feed("250 ok\r\n", now_);
  EXPECT_EQ(client.TakeOutput(), "DATA\r\n");
  EXPECT_EQ(client.deadline(), now_ + absl::Seconds(20));
  client.Feed("354 go\r\n", now_);
  EXPECT_EQ(client.TakeOutput(), "Subject: t\r\n\r\nhi\r\n.\r\n");
  client.Feed("250 ok\r\n", now_);
  std::vector<MessageResult> results = client.TakeResults();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(Only(results, 0, 0).outcome, RecipientOutcome::kTemporaryFailure);
  EXPECT_EQ(Only(results, 0, 0).reply.OneLine(), "451 4.2.0 try later");
  EXPECT_EQ(Only(results, 0, 1).outcome, RecipientOutcome::kDelivered);
}

TEST_F(SmtpClientTest, ReadsRepliesSplitAcrossReadsAndMultiline) {
  SmtpClient client(Options(), now_);
  client.Feed("22", now_);
  client.Feed("0-mx1 first\r\n220", now_);
  EXPECT_EQ(client.TakeOutput(), "");
  client.Feed(" second\r", now_);
  client.Feed("\n", now_);
  EXPECT_EQ(client.TakeOutput(), "EHLO mx2.example.net\r\n");
  client.Feed("250-mx1\r\n250-PIPE", now_);
  client.Feed("LINING\n250 DSN\r\n", now_);  // a bare LF ending is tolerated
  EXPECT_TRUE(client.extensions().pipelining);
  EXPECT_TRUE(client.extensions().dsn);
  EXPECT_TRUE(client.idle());
}

TEST_F(SmtpClientTest, KeepsEveryLineOfAMultilineRejection) {
  SmtpClient client(Options(), now_);
  Greet(client, kLockStepEhlo);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}), now_);
  client.TakeOutput();
  client.Feed("250 ok\r\n", now_);
  client.Feed("550-5.7.1 policy\r\n550 5.7.1 see https://example.com\r\n", now_);
  std::vector<MessageResult> results = client.TakeResults();
  ASSERT_EQ(results.size(), 1u);
  const Reply& reply = Only(results, 0, 0).reply;
  EXPECT_EQ(reply.enhanced, "5.7.1");
  EXPECT_EQ(reply.lines,
            (std::vector<std::string>{"5.7.1 policy", "5.7.1 see https://example.com"}));
  EXPECT_EQ(reply.OneLine(), "550 5.7.1 policy 5.7.1 see https://example.com");
}

TEST_F(SmtpClientTest, FallsBackToHeloWhenEhloIsRefused) {
  SmtpClient client(Options(), now_);
  client.Feed("220 old server\r\n", now_);
  EXPECT_EQ(client.TakeOutput(), "EHLO mx2.example.net\r\n");
  client.Feed("502 5.5.1 unknown command\r\n", now_);
  EXPECT_EQ(client.TakeOutput(), "HELO mx2.example.net\r\n");
  client.Feed("250 hi\r\n", now_);
  EXPECT_TRUE(client.idle());
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}), now_);
  EXPECT_EQ(client.TakeOutput(), "MAIL FROM:<a@b.c>\r\n");  // no ESMTP parameters
}

TEST_F(SmtpClientTest, TemporaryBannerFailsEveryMessageTemporarily) {
  SmtpClient client(Options(), now_);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com", "carol@example.com"}), now_);
  client.AddMessage(Entry("id2", "a@b.c", {"dave@example.com"}), now_);
  client.Feed("421 4.3.2 too busy\r\n", now_);
  EXPECT_EQ(client.TakeOutput(), "QUIT\r\n");
  EXPECT_TRUE(client.closing());
  EXPECT_EQ(client.failure(), ConnectionFailure::kGreetingRejected);
  std::vector<MessageResult> results = client.TakeResults();
  ASSERT_EQ(results.size(), 2u);
  EXPECT_EQ(results[1].id, "id2");
  for (const MessageResult& result : results) {
    EXPECT_EQ(result.failure, ConnectionFailure::kGreetingRejected);
    for (const RecipientResult& recipient : result.recipients) {
      EXPECT_EQ(recipient.outcome, RecipientOutcome::kTemporaryFailure);
      EXPECT_EQ(recipient.reply.OneLine(), "421 4.3.2 too busy");
    }
  }
}

TEST_F(SmtpClientTest, PermanentBannerFailsEveryMessagePermanently) {
  SmtpClient client(Options(), now_);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}), now_);
  client.Feed("554 5.7.1 no service\r\n", now_);
  std::vector<MessageResult> results = client.TakeResults();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(Only(results, 0, 0).outcome, RecipientOutcome::kPermanentFailure);
  EXPECT_EQ(Only(results, 0, 0).source, ReplySource::kServer);
  EXPECT_TRUE(client.closing());
}

TEST_F(SmtpClientTest, OpportunisticTlsStartsWhenOfferedAndEhlosAgain) {
  SmtpClient client(Options(TlsPolicy::kOpportunistic), now_);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}), now_);
  Greet(client, "250-mx1\r\n250-PIPELINING\r\n250 STARTTLS\r\n");
  EXPECT_EQ(client.TakeOutput(), "STARTTLS\r\n");
  EXPECT_EQ(client.deadline(), now_ + absl::Seconds(52));
  // A server (or a man in the middle) pipelining plaintext after its 220: discarded.
  client.Feed("220 2.0.0 ready\r\n250 injected\r\n", now_);
  EXPECT_TRUE(client.tls_requested());
  EXPECT_EQ(client.TakeOutput(), "");
  EXPECT_EQ(client.deadline(), now_ + absl::Seconds(52));
  client.TlsEstablished(now_);
  EXPECT_FALSE(client.tls_requested());
  EXPECT_TRUE(client.tls_active());
  EXPECT_FALSE(client.extensions().pipelining);  // forgotten until the new EHLO
  EXPECT_EQ(client.TakeOutput(), "EHLO mx2.example.net\r\n");
  client.Feed("250-mx1\r\n250 STARTTLS\r\n", now_);  // no second STARTTLS inside TLS
  EXPECT_EQ(client.TakeOutput(), "MAIL FROM:<a@b.c>\r\n");
}

TEST_F(SmtpClientTest, OpportunisticTlsContinuesInPlaintextWhenNotOffered) {
  SmtpClient client(Options(TlsPolicy::kOpportunistic), now_);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}), now_);
  Greet(client, kLockStepEhlo);
  EXPECT_EQ(client.TakeOutput(), "MAIL FROM:<a@b.c>\r\n");
  EXPECT_FALSE(client.tls_active());
}

TEST_F(SmtpClientTest, OpportunisticTlsContinuesInPlaintextWhenStartTlsIsRefused) {
  SmtpClient client(Options(TlsPolicy::kOpportunistic), now_);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}), now_);
  Greet(client, "250-mx1\r\n250 STARTTLS\r\n");
  EXPECT_EQ(client.TakeOutput(), "STARTTLS\r\n");
  client.Feed("454 4.7.0 TLS not available\r\n", now_);
  EXPECT_EQ(client.TakeOutput(), "MAIL FROM:<a@b.c>\r\n");
}

TEST_F(SmtpClientTest, RequiredTlsNotOfferedIsATemporaryFailure) {
  SmtpClient client(Options(TlsPolicy::kRequired), now_);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}), now_);
  Greet(client, kPipeliningEhlo);
  EXPECT_EQ(client.TakeOutput(), "QUIT\r\n");
  EXPECT_TRUE(client.closing());
  EXPECT_EQ(client.failure(), ConnectionFailure::kTlsFailure);
  std::vector<MessageResult> results = client.TakeResults();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].failure, ConnectionFailure::kTlsFailure);
  EXPECT_EQ(Only(results, 0, 0).outcome, RecipientOutcome::kTemporaryFailure);
  EXPECT_EQ(Only(results, 0, 0).source, ReplySource::kClient);
  EXPECT_EQ(Only(results, 0, 0).reply.OneLine(), "451 4.7.4 TLS required but not offered");
}

TEST_F(SmtpClientTest, RequiredTlsRefusedIsATemporaryFailure) {
  SmtpClient client(Options(TlsPolicy::kRequired), now_);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}), now_);
  Greet(client, "250-mx1\r\n250 STARTTLS\r\n");
  client.TakeOutput();
  client.Feed("454 4.7.0 TLS not available\r\n", now_);
  EXPECT_EQ(client.TakeOutput(), "QUIT\r\n");
  std::vector<MessageResult> results = client.TakeResults();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(Only(results, 0, 0).outcome, RecipientOutcome::kTemporaryFailure);
  EXPECT_EQ(client.failure(), ConnectionFailure::kTlsFailure);
}

TEST_F(SmtpClientTest, FailedHandshakeIsATemporaryTlsFailure) {
  SmtpClient client(Options(TlsPolicy::kRequired), now_);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}), now_);
  Greet(client, "250-mx1\r\n250 STARTTLS\r\n");
  client.TakeOutput();
  client.Feed("220 go\r\n", now_);
  client.TlsFailed("certificate verify failed", now_);
  EXPECT_TRUE(client.closing());
  EXPECT_EQ(client.TakeOutput(), "");  // no plaintext QUIT into a broken TLS stream
  std::vector<MessageResult> results = client.TakeResults();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].failure, ConnectionFailure::kTlsFailure);
  EXPECT_EQ(Only(results, 0, 0).reply.OneLine(),
            "451 4.7.5 TLS handshake failed: certificate verify failed");
}

TEST_F(SmtpClientTest, HandshakeTimesOut) {
  SmtpClient client(Options(TlsPolicy::kOpportunistic), now_);
  Greet(client, "250-mx1\r\n250 STARTTLS\r\n");
  client.TakeOutput();
  client.Feed("220 go\r\n", now_);
  client.OnTimer(now_ + absl::Seconds(51));
  EXPECT_FALSE(client.closing());
  client.OnTimer(now_ + absl::Seconds(52));
  EXPECT_TRUE(client.closing());
  EXPECT_EQ(client.failure(), ConnectionFailure::kTimeout);
}

TEST_F(SmtpClientTest, PolicyNoneNeverStartsTls) {
  SmtpClient client(Options(TlsPolicy::kNone), now_);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}), now_);
  Greet(client, "250-mx1\r\n250 STARTTLS\r\n");
  EXPECT_EQ(client.TakeOutput(), "MAIL FROM:<a@b.c>\r\n");
}

TEST_F(SmtpClientTest, EightBitMessageToServerWithoutEightBitMimeIsRefused) {
  SmtpClient client(Options(), now_);
  Greet(client, "250-mx1\r\n250 PIPELINING\r\n");
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com", "carol@example.com"},
                          "Subject: caf\xc3\xa9\r\n\r\n"),
                    now_);
  EXPECT_EQ(client.TakeOutput(), "");  // never sent, never stripped
  std::vector<MessageResult> results = client.TakeResults();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].failure, ConnectionFailure::kNone);
  for (const RecipientResult& recipient : results[0].recipients) {
    EXPECT_EQ(recipient.outcome, RecipientOutcome::kPermanentFailure);
    EXPECT_EQ(recipient.source, ReplySource::kClient);
    EXPECT_EQ(recipient.reply.enhanced, "5.6.3");
    EXPECT_EQ(recipient.reply.OneLine(), "554 5.6.3 8-bit message to a server without 8BITMIME");
  }
  EXPECT_TRUE(client.idle());  // the connection is still good for 7-bit messages
}

TEST_F(SmtpClientTest, EightBitMessageDeclaresBodyToServerWithEightBitMime) {
  SmtpClient client(Options(), now_);
  Greet(client, "250-mx1\r\n250-PIPELINING\r\n250 8BITMIME\r\n");
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}, "x: \xe9\r\n\r\n"), now_);
  EXPECT_EQ(client.TakeOutput(),
            "MAIL FROM:<a@b.c> BODY=8BITMIME\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n");
}

TEST_F(SmtpClientTest, SevenBitMessageSendsNoBodyParameter) {
  SmtpClient client(Options(), now_);
  Greet(client, "250-mx1\r\n250 8BITMIME\r\n");
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}), now_);
  EXPECT_EQ(client.TakeOutput(), "MAIL FROM:<a@b.c>\r\n");
}

TEST_F(SmtpClientTest, SmtpUtf8EnvelopeNeedsSmtpUtf8) {
  SmtpClient client(Options(), now_);
  Greet(client, "250-mx1\r\n250 8BITMIME\r\n");
  client.AddMessage(Entry("id1", "j\xc3\xb6rg@b.c", {"bob@example.com"}), now_);
  std::vector<MessageResult> results = client.TakeResults();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(Only(results, 0, 0).outcome, RecipientOutcome::kPermanentFailure);
  EXPECT_EQ(Only(results, 0, 0).reply.enhanced, "5.6.7");
  EXPECT_EQ(client.TakeOutput(), "");
}

TEST_F(SmtpClientTest, SmtpUtf8FlagIsPassedWhenOffered) {
  SmtpClient client(Options(), now_);
  Greet(client, "250-mx1\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n");
  queue::QueueEntry entry = Entry("id1", "a@b.c", {"bob@example.com"});
  entry.mutable_envelope()->set_smtputf8(true);
  client.AddMessage(entry, now_);
  EXPECT_EQ(client.TakeOutput(), "MAIL FROM:<a@b.c> SMTPUTF8\r\n");
}

queue::QueueEntry DsnEntry() {
  queue::QueueEntry entry = Entry("id1", "a@b.c", {"bob@example.com", "carol@example.com"});
  queue::Envelope& envelope = *entry.mutable_envelope();
  envelope.set_ret(queue::RET_HDRS);
  envelope.set_envid("abc+def=1");
  envelope.mutable_recipients(0)->add_notify(queue::NOTIFY_DELAY);
  envelope.mutable_recipients(0)->add_notify(queue::NOTIFY_FAILURE);
  envelope.mutable_recipients(0)->set_orcpt("rfc822;Bob@example.com");
  envelope.mutable_recipients(1)->add_notify(queue::NOTIFY_NEVER);
  envelope.mutable_recipients(1)->set_orcpt("rfc822;c+d@example.com");  // not valid xtext
  return entry;
}

TEST_F(SmtpClientTest, PassesDsnParametersWhenOffered) {
  SmtpClient client(Options(), now_);
  Greet(client, "250-mx1\r\n250-PIPELINING\r\n250 DSN\r\n");
  client.AddMessage(DsnEntry(), now_);
  EXPECT_EQ(client.TakeOutput(),
            "MAIL FROM:<a@b.c> RET=HDRS ENVID=abc+2Bdef+3D1\r\n"
            "RCPT TO:<bob@example.com> NOTIFY=FAILURE,DELAY ORCPT=rfc822;Bob@example.com\r\n"
            "RCPT TO:<carol@example.com> NOTIFY=NEVER ORCPT=rfc822;c+2Bd@example.com\r\n"
            "DATA\r\n");
}

TEST_F(SmtpClientTest, OmitsDsnParametersWhenNotOffered) {
  SmtpClient client(Options(), now_);
  Greet(client, "250-mx1\r\n250 PIPELINING\r\n");
  client.AddMessage(DsnEntry(), now_);
  EXPECT_EQ(client.TakeOutput(),
            "MAIL FROM:<a@b.c>\r\nRCPT TO:<bob@example.com>\r\nRCPT TO:<carol@example.com>\r\n"
            "DATA\r\n");
}

TEST_F(SmtpClientTest, DeclaresTheSizeOfTheDataSent) {
  SmtpClient client(Options(), now_);
  Greet(client, "250-mx1\r\n250 SIZE 100\r\n");
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}, "a\n.b\n"), now_);
  // "a\r\n..b\r\n" is 8 bytes.
  EXPECT_EQ(client.TakeOutput(), "MAIL FROM:<a@b.c> SIZE=8\r\n");
}

TEST_F(SmtpClientTest, RefusesAMessageOverTheServersSizeLimit) {
  SmtpClient client(Options(), now_);
  Greet(client, "250-mx1\r\n250 SIZE 8\r\n");
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}, "123456789"), now_);
  EXPECT_EQ(client.TakeOutput(), "");
  std::vector<MessageResult> results = client.TakeResults();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(Only(results, 0, 0).outcome, RecipientOutcome::kPermanentFailure);
  EXPECT_EQ(Only(results, 0, 0).reply.enhanced, "5.3.4");
}

TEST_F(SmtpClientTest, RecanonicalisesTheDataOnTheWire) {
  SmtpClient client(Options(), now_);
  Greet(client, kLockStepEhlo);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}, "S: x\n\n.hidden\r.\rend"), now_);
  client.TakeOutput();
  client.Feed("250 ok\r\n250 ok\r\n", now_);
  EXPECT_EQ(client.TakeOutput(), "RCPT TO:<bob@example.com>\r\nDATA\r\n");
  client.Feed("354 go\r\n", now_);
  EXPECT_EQ(client.TakeOutput(), "S: x\r\n\r\n..hidden\r\n..\r\nend\r\n.\r\n");
}

TEST_F(SmtpClientTest, DeliversSeveralMessagesWithRsetAfterAFailedTransaction) {
  SmtpClient client(Options(), now_);
  Greet(client, kLockStepEhlo);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}), now_);
  client.AddMessage(Entry("id2", "d@e.f", {"carol@example.com"}), now_);
  EXPECT_EQ(client.TakeOutput(), "MAIL FROM:<a@b.c>\r\n");
  client.Feed("452 4.3.1 insufficient storage\r\n", now_);
  EXPECT_EQ(client.TakeOutput(), "RSET\r\n");
  EXPECT_EQ(client.deadline(), now_ + absl::Seconds(55));
  client.Feed("250 flushed\r\n", now_);
  EXPECT_EQ(client.TakeOutput(), "MAIL FROM:<d@e.f>\r\n");
  client.Feed("250 ok\r\n", now_);
  EXPECT_EQ(client.TakeOutput(), "RCPT TO:<carol@example.com>\r\n");
  client.Feed("250 ok\r\n", now_);
  EXPECT_EQ(client.TakeOutput(), "DATA\r\n");
  client.Feed("354 go\r\n", now_);
  client.TakeOutput();
  client.Feed("250 ok\r\n", now_);
  EXPECT_EQ(client.TakeOutput(), "");  // no RSET after a completed transaction
  EXPECT_TRUE(client.idle());
  client.Finish(now_);
  EXPECT_EQ(client.TakeOutput(), "QUIT\r\n");
  EXPECT_FALSE(client.closing());
  client.Feed("221 bye\r\n", now_);
  EXPECT_TRUE(client.closing());

  std::vector<MessageResult> results = client.TakeResults();
  ASSERT_EQ(results.size(), 2u);
  EXPECT_EQ(results[0].id, "id1");
  EXPECT_EQ(Only(results, 0, 0).outcome, RecipientOutcome::kTemporaryFailure);
  EXPECT_EQ(Only(results, 0, 0).reply.OneLine(), "452 4.3.1 insufficient storage");
  EXPECT_EQ(results[1].id, "id2");
  EXPECT_EQ(Only(results, 1, 0).outcome, RecipientOutcome::kDelivered);
  EXPECT_EQ(client.failure(), ConnectionFailure::kNone);
}

TEST_F(SmtpClientTest, PipelinesTheNextMessageAfterRset) {
  SmtpClient client(Options(), now_);
  Greet(client, kPipeliningEhlo);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}), now_);
  client.AddMessage(Entry("id2", "a@b.c", {"carol@example.com"}), now_);
  client.TakeOutput();
  client.Feed("550 5.7.1 sender refused\r\n503 5.5.1 no MAIL\r\n503 5.5.1 no valid RCPT\r\n", now_);
  EXPECT_EQ(client.TakeOutput(), "RSET\r\n");
  client.Feed("250 ok\r\n", now_);
  EXPECT_EQ(client.TakeOutput(), "MAIL FROM:<a@b.c>\r\nRCPT TO:<carol@example.com>\r\nDATA\r\n");
  std::vector<MessageResult> results = client.TakeResults();
  ASSERT_EQ(results.size(), 1u);
  // The MAIL rejection decides, not the bad-sequence replies that follow it.
  EXPECT_EQ(Only(results, 0, 0).outcome, RecipientOutcome::kPermanentFailure);
  EXPECT_EQ(Only(results, 0, 0).reply.OneLine(), "550 5.7.1 sender refused");
}

TEST_F(SmtpClientTest, SkipsDataWhenNoRecipientIsAccepted) {
  SmtpClient client(Options(), now_);
  Greet(client, kLockStepEhlo);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}), now_);
  client.TakeOutput();
  client.Feed("250 ok\r\n", now_);
  client.TakeOutput();
  client.Feed("550 5.1.1 unknown\r\n", now_);
  EXPECT_EQ(client.TakeOutput(), "RSET\r\n");
}

TEST_F(SmtpClientTest, PipelinedDataAcceptedWithoutRecipientsSendsAnEmptyMessage) {
  SmtpClient client(Options(), now_);
  Greet(client, kPipeliningEhlo);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}), now_);
  client.TakeOutput();
  client.Feed("250 ok\r\n550 5.1.1 unknown\r\n354 go\r\n", now_);
  EXPECT_EQ(client.TakeOutput(), ".\r\n");
  client.Feed("554 5.5.1 no valid recipients\r\n", now_);
  EXPECT_EQ(client.TakeOutput(), "RSET\r\n");
  std::vector<MessageResult> results = client.TakeResults();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(Only(results, 0, 0).reply.OneLine(), "550 5.1.1 unknown");
}

TEST_F(SmtpClientTest, DataRejectionAppliesToAcceptedRecipients) {
  SmtpClient client(Options(), now_);
  Greet(client, kPipeliningEhlo);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com", "carol@example.com"}), now_);
  client.TakeOutput();
  client.Feed("250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n451 4.3.0 no data now\r\n", now_);
  EXPECT_EQ(client.TakeOutput(), "RSET\r\n");
  std::vector<MessageResult> results = client.TakeResults();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(Only(results, 0, 0).outcome, RecipientOutcome::kTemporaryFailure);
  EXPECT_EQ(Only(results, 0, 0).reply.OneLine(), "451 4.3.0 no data now");
  EXPECT_EQ(Only(results, 0, 1).outcome, RecipientOutcome::kPermanentFailure);
}

TEST_F(SmtpClientTest, EndOfDataFailureAppliesToAcceptedRecipients) {
  SmtpClient client(Options(), now_);
  Greet(client, kPipeliningEhlo);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com", "carol@example.com"}), now_);
  client.TakeOutput();
  client.Feed("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n", now_);
  client.TakeOutput();
  client.Feed("554 5.7.1 spam\r\n", now_);
  std::vector<MessageResult> results = client.TakeResults();
  ASSERT_EQ(results.size(), 1u);
  for (const RecipientResult& recipient : results[0].recipients) {
    EXPECT_EQ(recipient.outcome, RecipientOutcome::kPermanentFailure);
    EXPECT_EQ(recipient.reply.OneLine(), "554 5.7.1 spam");
  }
}

TEST_F(SmtpClientTest, ConnectionLossFailsWhatIsUnansweredTemporarily) {
  SmtpClient client(Options(), now_);
  Greet(client, kPipeliningEhlo);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}), now_);
  client.AddMessage(Entry("id2", "a@b.c", {"carol@example.com", "dave@example.com"}), now_);
  client.AddMessage(Entry("id3", "a@b.c", {"erin@example.com"}), now_);
  client.TakeOutput();
  client.Feed("250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n", now_);  // id1 delivered
  client.TakeOutput();
  client.Feed("250 ok\r\n550 5.1.1 unknown carol\r\n250 ok\r\n", now_);
  client.ConnectionLost(now_);
  EXPECT_TRUE(client.closing());
  EXPECT_EQ(client.failure(), ConnectionFailure::kConnectionLost);
  std::vector<MessageResult> results = client.TakeResults();
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(results[0].failure, ConnectionFailure::kNone);
  EXPECT_EQ(Only(results, 0, 0).outcome, RecipientOutcome::kDelivered);
  EXPECT_EQ(results[1].failure, ConnectionFailure::kConnectionLost);
  EXPECT_EQ(Only(results, 1, 0).outcome, RecipientOutcome::kPermanentFailure);  // answered
  EXPECT_EQ(Only(results, 1, 1).outcome, RecipientOutcome::kTemporaryFailure);  // accepted only
  EXPECT_EQ(Only(results, 1, 1).source, ReplySource::kClient);
  EXPECT_EQ(Only(results, 1, 1).reply.OneLine(),
            "451 4.4.2 connection lost waiting for the reply to DATA");
  EXPECT_EQ(results[2].id, "id3");
  EXPECT_EQ(Only(results, 2, 0).outcome, RecipientOutcome::kTemporaryFailure);
}

TEST_F(SmtpClientTest, ConnectionLossAfterQuitIsNoFailure) {
  SmtpClient client(Options(), now_);
  Greet(client, kLockStepEhlo);
  client.Finish(now_);
  EXPECT_EQ(client.TakeOutput(), "QUIT\r\n");
  EXPECT_EQ(client.deadline(), now_ + absl::Seconds(56));
  client.ConnectionLost(now_);
  EXPECT_TRUE(client.closing());
  EXPECT_EQ(client.failure(), ConnectionFailure::kNone);
}

TEST_F(SmtpClientTest, GreetingTimeoutFailsTheConnection) {
  SmtpClient client(Options(), now_);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}), now_);
  client.OnTimer(now_ + absl::Seconds(49));  // early timer: ignored
  EXPECT_FALSE(client.closing());
  client.OnTimer(now_ + absl::Seconds(50));
  EXPECT_TRUE(client.closing());
  EXPECT_EQ(client.failure(), ConnectionFailure::kTimeout);
  std::vector<MessageResult> results = client.TakeResults();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].failure, ConnectionFailure::kTimeout);
  EXPECT_EQ(Only(results, 0, 0).reply.OneLine(), "451 4.4.2 timeout waiting for the greeting");
}

TEST_F(SmtpClientTest, EachPipelinedReplyGetsItsOwnTimeout) {
  SmtpClient client(Options(), now_);
  Greet(client, kPipeliningEhlo);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}), now_);
  EXPECT_EQ(client.deadline(), now_ + absl::Seconds(53));  // MAIL
  absl::Time later = now_ + absl::Seconds(10);
  client.Feed("250 ok\r\n", later);
  EXPECT_EQ(client.deadline(), later + absl::Seconds(54));  // RCPT
  client.Feed("250 ok\r\n", later);
  EXPECT_EQ(client.deadline(), later + absl::Seconds(20));  // DATA initiation
}

TEST_F(SmtpClientTest, DataBlockAndTerminationTimeoutsFollowWriteProgress) {
  SmtpClient client(Options(), now_);
  Greet(client, kLockStepEhlo);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}, "0123456789"), now_);
  client.Feed("250 ok\r\n250 ok\r\n", now_);
  client.OnBytesSent(std::string("EHLO mx2.example.net\r\n").size() + client.TakeOutput().size(),
                     now_);
  client.Feed("354 go\r\n", now_);
  std::string sent = client.TakeOutput();
  ASSERT_EQ(sent, "0123456789\r\n.\r\n");
  EXPECT_EQ(client.deadline(), now_ + absl::Seconds(30));  // data block
  client.OnBytesSent(sent.size() - 5, now_ + absl::Seconds(25));
  EXPECT_EQ(client.deadline(), now_ + absl::Seconds(55));  // progress restarts the block timer
  client.OnBytesSent(5, now_ + absl::Seconds(26));
  EXPECT_EQ(client.deadline(), now_ + absl::Seconds(126));  // termination: 100 s after the end
  client.OnTimer(now_ + absl::Seconds(126));
  EXPECT_TRUE(client.closing());
  std::vector<MessageResult> results = client.TakeResults();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(Only(results, 0, 0).outcome, RecipientOutcome::kTemporaryFailure);
  EXPECT_EQ(Only(results, 0, 0).reply.OneLine(),
            "451 4.4.2 timeout waiting for the reply to the end of data");
}

TEST_F(SmtpClientTest, QuitTimeoutJustCloses) {
  SmtpClient client(Options(), now_);
  Greet(client, kLockStepEhlo);
  client.Finish(now_);
  client.OnTimer(now_ + absl::Seconds(56));
  EXPECT_TRUE(client.closing());
  EXPECT_EQ(client.failure(), ConnectionFailure::kNone);
}

TEST_F(SmtpClientTest, GarbageReplyIsATemporaryProtocolError) {
  SmtpClient client(Options(), now_);
  Greet(client, kLockStepEhlo);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}), now_);
  client.Feed("HTTP/1.1 400 Bad Request\r\n", now_);
  EXPECT_TRUE(client.closing());
  EXPECT_EQ(client.failure(), ConnectionFailure::kProtocolError);
  std::vector<MessageResult> results = client.TakeResults();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(Only(results, 0, 0).outcome, RecipientOutcome::kTemporaryFailure);
  EXPECT_EQ(results[0].failure, ConnectionFailure::kProtocolError);
}

TEST_F(SmtpClientTest, RejectsMalformedReplyLines) {
  for (const char* bad : {"25\r\n", "2500 x\r\n", "250x\r\n", "150 x\r\n", "650 x\r\n", "abc\r\n",
                          "250-a\r\n251 b\r\n"}) {
    SmtpClient client(Options(), now_);
    client.Feed(bad, now_);
    EXPECT_TRUE(client.closing()) << bad;
    EXPECT_EQ(client.failure(), ConnectionFailure::kProtocolError) << bad;
  }
}

TEST_F(SmtpClientTest, AcceptsABareCodeLine) {
  SmtpClient client(Options(), now_);
  client.Feed("220\r\n", now_);
  EXPECT_EQ(client.TakeOutput(), "EHLO mx2.example.net\r\n");
}

TEST_F(SmtpClientTest, UnboundedReplyLineIsAProtocolError) {
  SmtpClient client(Options(), now_);
  client.Feed("220 " + std::string(5000, 'x'), now_);
  EXPECT_TRUE(client.closing());
  EXPECT_EQ(client.failure(), ConnectionFailure::kProtocolError);
}

TEST_F(SmtpClientTest, UnsolicitedReplyIsAProtocolError) {
  SmtpClient client(Options(), now_);
  Greet(client, kLockStepEhlo);
  client.Feed("250 surprise\r\n", now_);
  EXPECT_EQ(client.failure(), ConnectionFailure::kProtocolError);
}

TEST_F(SmtpClientTest, RefusedRsetEndsTheConnection) {
  SmtpClient client(Options(), now_);
  Greet(client, kLockStepEhlo);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}), now_);
  client.AddMessage(Entry("id2", "a@b.c", {"carol@example.com"}), now_);
  client.TakeOutput();
  client.Feed("550 no\r\n", now_);
  client.TakeOutput();
  client.Feed("500 what\r\n", now_);
  EXPECT_EQ(client.TakeOutput(), "QUIT\r\n");
  EXPECT_EQ(client.failure(), ConnectionFailure::kProtocolError);
  std::vector<MessageResult> results = client.TakeResults();
  ASSERT_EQ(results.size(), 2u);
  EXPECT_EQ(Only(results, 0, 0).outcome, RecipientOutcome::kPermanentFailure);
  EXPECT_EQ(Only(results, 1, 0).outcome, RecipientOutcome::kTemporaryFailure);
}

TEST_F(SmtpClientTest, MessageAddedWhileIdleStartsAtOnce) {
  SmtpClient client(Options(), now_);
  Greet(client, kLockStepEhlo);
  EXPECT_TRUE(client.idle());
  EXPECT_EQ(client.pending_messages(), 0u);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}), now_);
  EXPECT_FALSE(client.idle());
  EXPECT_EQ(client.pending_messages(), 1u);
  EXPECT_EQ(client.TakeOutput(), "MAIL FROM:<a@b.c>\r\n");
}

TEST_F(SmtpClientTest, MessageAddedToAClosedSessionFailsAtOnce) {
  SmtpClient client(Options(), now_);
  client.ConnectionLost(now_);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}), now_);
  std::vector<MessageResult> results = client.TakeResults();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].failure, ConnectionFailure::kConnectionLost);
  EXPECT_EQ(Only(results, 0, 0).outcome, RecipientOutcome::kTemporaryFailure);
}

TEST_F(SmtpClientTest, RefusesControlCharactersInAddresses) {
  SmtpClient client(Options(), now_);
  Greet(client, kLockStepEhlo);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com>\r\nRSET"}), now_);
  EXPECT_EQ(client.TakeOutput(), "");
  std::vector<MessageResult> results = client.TakeResults();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(Only(results, 0, 0).reply.enhanced, "5.1.3");
}

TEST_F(SmtpClientTest, A421ReplyEndsTheSessionForEverythingUnanswered) {
  SmtpClient client(Options(), now_);
  Greet(client, kPipeliningEhlo);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com", "carol@example.com"}), now_);
  client.AddMessage(Entry("id2", "a@b.c", {"dave@example.com"}), now_);
  client.TakeOutput();
  client.Feed("250 ok\r\n250 ok\r\n421 4.3.2 shutting down\r\n", now_);
  EXPECT_EQ(client.TakeOutput(), "QUIT\r\n");
  EXPECT_TRUE(client.closing());
  EXPECT_EQ(client.failure(), ConnectionFailure::kConnectionLost);
  std::vector<MessageResult> results = client.TakeResults();
  ASSERT_EQ(results.size(), 2u);
  for (const MessageResult& result : results) {
    for (const RecipientResult& recipient : result.recipients) {
      EXPECT_EQ(recipient.outcome, RecipientOutcome::kTemporaryFailure);
      EXPECT_EQ(recipient.source, ReplySource::kServer);
      EXPECT_EQ(recipient.reply.OneLine(), "421 4.3.2 shutting down");
    }
  }
}

TEST_F(SmtpClientTest, AnUnaskedIdle421ClosesQuietly) {
  SmtpClient client(Options(), now_);
  Greet(client, kLockStepEhlo);
  client.Feed("421 4.4.2 idle timeout\r\n", now_);
  EXPECT_TRUE(client.closing());
  EXPECT_TRUE(client.TakeResults().empty());
}

TEST_F(SmtpClientTest, IdleSessionHasNoTimeout) {
  SmtpClient client(Options(), now_);
  Greet(client, kLockStepEhlo);
  client.OnTimer(now_ + absl::Hours(1));
  EXPECT_FALSE(client.closing());
  EXPECT_TRUE(client.idle());
}

TEST_F(SmtpClientTest, DeclaredEightBitMimeWithSevenBitContentGoesToAnOldServer) {
  SmtpClient client(Options(), now_);
  Greet(client, "250 mx1\r\n");
  queue::QueueEntry entry = Entry("id1", "a@b.c", {"bob@example.com"});
  entry.mutable_envelope()->set_body(queue::BODY_8BITMIME);
  client.AddMessage(entry, now_);
  EXPECT_EQ(client.TakeOutput(), "MAIL FROM:<a@b.c>\r\n");
}

TEST_F(SmtpClientTest, DeclaredEightBitMimeIsPassedOnWhenOffered) {
  SmtpClient client(Options(), now_);
  Greet(client, kLockStepEhlo);
  queue::QueueEntry entry = Entry("id1", "a@b.c", {"bob@example.com"});
  entry.mutable_envelope()->set_body(queue::BODY_8BITMIME);
  client.AddMessage(entry, now_);
  EXPECT_EQ(client.TakeOutput(), "MAIL FROM:<a@b.c> BODY=8BITMIME\r\n");
}

TEST_F(SmtpClientTest, EhloRefusedTemporarilyFailsTheConnection) {
  SmtpClient client(Options(), now_);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}), now_);
  client.Feed("220 mx1\r\n", now_);
  client.TakeOutput();
  client.Feed("450 4.7.1 come back later\r\n", now_);
  EXPECT_EQ(client.TakeOutput(), "QUIT\r\n");
  EXPECT_EQ(client.failure(), ConnectionFailure::kHeloRejected);
  std::vector<MessageResult> results = client.TakeResults();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(Only(results, 0, 0).outcome, RecipientOutcome::kTemporaryFailure);
}

TEST_F(SmtpClientTest, HeloRefusedPermanentlyStaysTemporary) {
  SmtpClient client(Options(), now_);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}), now_);
  client.Feed("220 mx1\r\n", now_);
  client.Feed("500 no EHLO\r\n550 5.7.1 not you\r\n", now_);
  EXPECT_EQ(client.TakeOutput(), "EHLO mx2.example.net\r\nHELO mx2.example.net\r\nQUIT\r\n");
  std::vector<MessageResult> results = client.TakeResults();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].failure, ConnectionFailure::kHeloRejected);
  EXPECT_EQ(Only(results, 0, 0).outcome, RecipientOutcome::kTemporaryFailure);
}

TEST(ConnectionFailureNameTest, NamesEveryFailure) {
  EXPECT_EQ(ConnectionFailureName(ConnectionFailure::kNone), "none");
  EXPECT_EQ(ConnectionFailureName(ConnectionFailure::kGreetingRejected), "greeting rejected");
  EXPECT_EQ(ConnectionFailureName(ConnectionFailure::kHeloRejected), "HELO rejected");
  EXPECT_EQ(ConnectionFailureName(ConnectionFailure::kTlsFailure), "TLS failure");
  EXPECT_EQ(ConnectionFailureName(ConnectionFailure::kConnectionLost), "connection lost");
  EXPECT_EQ(ConnectionFailureName(ConnectionFailure::kTimeout), "timeout");
  EXPECT_EQ(ConnectionFailureName(ConnectionFailure::kProtocolError), "protocol error");
}

TEST_F(SmtpClientTest, ReportsEachReplyWithTheStageItAnswers) {
  ClientOptions options = Options();
  std::vector<std::pair<SmtpStage, int>> replies;
  options.on_reply = [&replies](SmtpStage stage, int code) { replies.emplace_back(stage, code); };
  SmtpClient client(options, now_);
  Greet(client, kPipeliningEhlo);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com", "carol@example.com"}), now_);
  client.TakeOutput();
  client.Feed("250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n354 go\r\n", now_);
  client.Feed("250 2.0.0 queued\r\n", now_);
  EXPECT_EQ(replies, (std::vector<std::pair<SmtpStage, int>>{{SmtpStage::kGreeting, 220},
                                                             {SmtpStage::kEhlo, 250},
                                                             {SmtpStage::kMail, 250},
                                                             {SmtpStage::kRcpt, 250},
                                                             {SmtpStage::kRcpt, 550},
                                                             {SmtpStage::kData, 354},
                                                             {SmtpStage::kDataEnd, 250}}));
}

TEST_F(SmtpClientTest, ReportsTheAwaitedReplyOnceAsMissingWhenTheConnectionIsLost) {
  ClientOptions options = Options();
  std::vector<std::pair<SmtpStage, int>> replies;
  options.on_reply = [&replies](SmtpStage stage, int code) { replies.emplace_back(stage, code); };
  SmtpClient client(options, now_);
  Greet(client, kPipeliningEhlo);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}), now_);
  client.TakeOutput();
  replies.clear();
  client.ConnectionLost(now_);  // MAIL, RCPT and DATA unanswered: one missing reply, to MAIL
  EXPECT_EQ(replies, (std::vector<std::pair<SmtpStage, int>>{{SmtpStage::kMail, 0}}));
}

TEST_F(SmtpClientTest, ReportsATimeoutAsAMissingReply) {
  ClientOptions options = Options();
  std::vector<std::pair<SmtpStage, int>> replies;
  options.on_reply = [&replies](SmtpStage stage, int code) { replies.emplace_back(stage, code); };
  SmtpClient client(options, now_);
  client.OnTimer(now_ + absl::Seconds(50));
  EXPECT_EQ(replies, (std::vector<std::pair<SmtpStage, int>>{{SmtpStage::kGreeting, 0}}));
}

TEST_F(SmtpClientTest, ReadyAtIsWhenTheSessionCouldStartTransactions) {
  SmtpClient client(Options(TlsPolicy::kNone), now_);
  EXPECT_FALSE(client.ready_at().has_value());
  client.Feed("220 mx1.example.com ESMTP\r\n", now_ + absl::Seconds(1));
  EXPECT_FALSE(client.ready_at().has_value());
  client.Feed(kLockStepEhlo, now_ + absl::Seconds(2));
  EXPECT_EQ(client.ready_at(), now_ + absl::Seconds(2));
}

TEST_F(SmtpClientTest, MessageResultSpansItsTransactionOnly) {
  SmtpClient client(Options(), now_);
  Greet(client, kLockStepEhlo);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}), now_);
  client.AddMessage(Entry("id2", "a@b.c", {"bob@example.com"}), now_);
  const auto send_one = [&client](absl::Time start) {
    client.Feed("250 ok\r\n", start + absl::Seconds(1));
    client.Feed("250 ok\r\n", start + absl::Seconds(2));
    client.Feed("354 go\r\n", start + absl::Seconds(3));
    client.Feed("250 queued\r\n", start + absl::Seconds(4));
  };
  send_one(now_);
  send_one(now_ + absl::Seconds(4));
  std::vector<MessageResult> results = client.TakeResults();
  ASSERT_EQ(results.size(), 2u);
  EXPECT_EQ(results[0].started, now_);
  EXPECT_EQ(results[0].finished, now_ + absl::Seconds(4));
  // The second waited for the first: its transaction starts with its MAIL.
  EXPECT_EQ(results[1].started, now_ + absl::Seconds(4));
  EXPECT_EQ(results[1].finished, now_ + absl::Seconds(8));
}

TEST_F(SmtpClientTest, MessageThatNeverStartedSpansNoTime) {
  SmtpClient client(Options(), now_);
  client.AddMessage(Entry("id1", "a@b.c", {"bob@example.com"}), now_);
  client.ConnectionLost(now_ + absl::Seconds(7));
  std::vector<MessageResult> results = client.TakeResults();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].started, now_ + absl::Seconds(7));
  EXPECT_EQ(results[0].finished, now_ + absl::Seconds(7));
}

TEST(ReplyClassTest, ClassifiesCodesAndNoReply) {
  EXPECT_EQ(ReplyClassOf(250), ReplyClass::k2xx);
  EXPECT_EQ(ReplyClassOf(354), ReplyClass::k3xx);
  EXPECT_EQ(ReplyClassOf(421), ReplyClass::k4xx);
  EXPECT_EQ(ReplyClassOf(554), ReplyClass::k5xx);
  EXPECT_EQ(ReplyClassOf(0), ReplyClass::kNone);
  EXPECT_EQ(ReplyClassOf(699), ReplyClass::kNone);
  EXPECT_EQ(ReplyClassLabel(ReplyClassOf(451)), "4xx");
  EXPECT_EQ(ReplyClassLabel(ReplyClass::kNone), "none");
  EXPECT_EQ(SmtpStageLabel(SmtpStage::kDataEnd), "data_end");
}

}  // namespace
}  // namespace backstop::delivery
