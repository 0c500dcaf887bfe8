#include "ingest/received.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace backstop::ingest {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

ReceivedFields Fields() {
  ReceivedFields fields;
  fields.helo = "client.example";
  fields.client_ip = "192.0.2.1";
  fields.hostname = "mx2.example.net";
  fields.id = "0123456789abcdef0123456789abcdef";
  fields.time = absl::FromUnixSeconds(1796000000);  // 2026-11-30 ... UTC
  return fields;
}

TEST(BuildReceivedHeaderTest, FollowsRfc5321TraceSyntax) {
  ReceivedFields fields = Fields();
  fields.recipient = "alice@example.com";
  const std::string header = BuildReceivedHeader(fields);
  EXPECT_EQ(header,
            "Received: from client.example ([192.0.2.1])\r\n"
            "\tby mx2.example.net (Backstop) with ESMTP id 0123456789abcdef0123456789abcdef\r\n"
            "\tfor <alice@example.com>;\r\n"
            "\t" +
                absl::FormatTime("%a, %d %b %Y %H:%M:%S +0000", fields.time, absl::UTCTimeZone()) +
                "\r\n");
}

TEST(BuildReceivedHeaderTest, NamesTlsAndProtocolKeywords) {
  ReceivedFields fields = Fields();
  fields.tls = TlsInfo{"TLSv1.3", "TLS_AES_256_GCM_SHA384"};
  EXPECT_THAT(BuildReceivedHeader(fields),
              HasSubstr("(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)\r\n"));
  EXPECT_THAT(BuildReceivedHeader(fields), HasSubstr(" with ESMTPS id "));
  fields.smtputf8 = true;
  EXPECT_THAT(BuildReceivedHeader(fields), HasSubstr(" with UTF8SMTPS id "));
  fields.tls.reset();
  fields.esmtp = false;
  fields.smtputf8 = false;
  EXPECT_THAT(BuildReceivedHeader(fields), HasSubstr(" with SMTP id "));
}

TEST(BuildReceivedHeaderTest, NeutralisesHostileHelo) {
  ReceivedFields fields = Fields();
  fields.helo = "evil\r\nBcc: victim@example.org (x)";
  const std::string header = BuildReceivedHeader(fields);
  EXPECT_THAT(header, Not(HasSubstr("\r\nBcc")));
  EXPECT_THAT(header, HasSubstr("from evil__Bcc:_victim@example.org__x_ ("));
}

TEST(BuildReceivedHeaderTest, NamesRdnsWhenKnown) {
  ReceivedFields fields = Fields();
  fields.client_rdns = "host.example";
  EXPECT_THAT(BuildReceivedHeader(fields), HasSubstr("(host.example [192.0.2.1])"));
}

TEST(CountReceivedHeadersTest, CountsOnlyHeaderSectionFields) {
  const std::string message =
      "Received: from a\r\n\tby b\r\n"
      "received : from c\r\n"
      "X-Received: not counted\r\n"
      "Subject: Received: not counted\r\n"
      "\r\n"
      "Received: in the body, not counted\r\n";
  EXPECT_EQ(CountReceivedHeaders(message, 100), 2u);
}

TEST(CountReceivedHeadersTest, StopsAtTheLimit) {
  std::string message;
  for (int i = 0; i < 60; ++i) {
    message += "Received: hop\r\n";
  }
  message += "\r\nbody\r\n";
  EXPECT_EQ(CountReceivedHeaders(message, 50), 50u);
  EXPECT_EQ(CountReceivedHeaders(message, 100), 60u);
}

TEST(CountReceivedHeadersTest, HandlesMessageWithoutBody) {
  EXPECT_EQ(CountReceivedHeaders("Received: x", 10), 1u);
  EXPECT_EQ(CountReceivedHeaders("", 10), 0u);
}

}  // namespace
}  // namespace backstop::ingest
