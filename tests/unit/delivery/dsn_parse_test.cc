#include "delivery/dsn_parse.h"

#include <string>

#include <gtest/gtest.h>

namespace backstop::delivery {
namespace {

// A DSN as another MTA writes it: preamble, unquoted boundary, folded fields, tabs.
constexpr char kForeignDsn[] =
    "Return-Path: <>\r\n"
    "Subject: Undelivered Mail\r\n"
    "content-type: Multipart/Report; boundary=B0UND;\r\n"
    "\treport-type=Delivery-Status\r\n"
    "\r\n"
    "This is a MIME-encapsulated message.\r\n"
    "--B0UND\r\n"
    "\r\n"
    "no headers here\r\n"
    "--B0UND\r\n"
    "Content-Type: message/delivery-status\r\n"
    "\r\n"
    "Reporting-MTA: dns; mx.other.org\r\n"
    "\r\n"
    "Final-Recipient: rfc822; a@b.c\r\n"
    "Action: failed\r\n"
    "Status: 5.0.0\r\n"
    "Diagnostic-Code: smtp; 550 first\r\n"
    "   second\r\n"
    "\r\n"
    "Final-Recipient: rfc822; d@e.f\r\n"
    "Action: delayed\r\n"
    "Status: 4.0.0\r\n"
    "\r\n"
    "--B0UND\r\n"
    "Content-Type: text/rfc822-headers\r\n"
    "\r\n"
    "Subject: original\r\n"
    "--B0UND--\r\n"
    "epilogue\r\n";

TEST(ParseDsnTest, ReadsAnotherMtasDsn) {
  absl::StatusOr<ParsedDsn> dsn = ParseDsn(kForeignDsn);
  ASSERT_TRUE(dsn.ok()) << dsn.status();
  EXPECT_EQ(dsn->report_type, "delivery-status");
  EXPECT_EQ(dsn->boundary, "B0UND");
  ASSERT_EQ(dsn->parts.size(), 3u);
  EXPECT_EQ(dsn->parts[0].media_type, "text/plain");  // the MIME default
  EXPECT_EQ(dsn->parts[0].body, "no headers here");
  EXPECT_EQ(dsn->parts[1].media_type, "message/delivery-status");
  EXPECT_EQ(dsn->parts[2].media_type, "text/rfc822-headers");
  EXPECT_EQ(dsn->parts[2].body, "Subject: original");
  EXPECT_EQ(dsn->per_message.Get("reporting-mta"), "dns; mx.other.org");
  ASSERT_EQ(dsn->per_recipient.size(), 2u);
  EXPECT_EQ(dsn->per_recipient[0].Get("Diagnostic-Code"), "smtp; 550 first   second");
  EXPECT_EQ(dsn->per_recipient[1].Get("Action"), "delayed");
  EXPECT_EQ(dsn->headers.Get("Return-Path"), "<>");
}

TEST(ParseHeaderBlockTest, UnfoldsAndLooksUpCaseInsensitively) {
  absl::StatusOr<HeaderFields> fields =
      ParseHeaderBlock("A: one\r\n two\r\nb:three\r\nA: again\r\n");
  ASSERT_TRUE(fields.ok()) << fields.status();
  EXPECT_EQ(fields->Get("a"), "one two");
  EXPECT_EQ(fields->Get("B"), "three");
  EXPECT_EQ(fields->Count("A"), 2u);
  EXPECT_EQ(fields->Get("missing"), std::nullopt);
}

TEST(ParseHeaderBlockTest, RejectsMalformedBlocks) {
  for (const char* bad : {"no colon\r\n", " continuation first\r\n", "A: x", ": empty name\r\n",
                          "Bad Name: x\r\n", "A: x\r\n\r\n"}) {
    EXPECT_FALSE(ParseHeaderBlock(bad).ok()) << bad;
  }
}

TEST(ParseDsnTest, RejectsWhatIsNotAReport) {
  const std::string status_part =
      "--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n";
  const std::string report =
      "Content-Type: multipart/report; report-type=delivery-status; "
      "boundary=b\r\n\r\n";
  EXPECT_TRUE(ParseDsn(report + status_part + "--b--\r\n").ok());
  for (const std::string& bad :
       {std::string("Subject: x\r\n\r\nbody"), std::string("Content-Type: text/plain\r\n\r\nx"),
        "Content-Type: multipart/report; boundary=b\r\n\r\n" + status_part + "--b--\r\n",
        "Content-Type: multipart/report; report-type=delivery-status\r\n\r\n" + status_part,
        report + status_part,                                              // no close delimiter
        report + "--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--\r\n",  // no status part
        report + "--b\r\nContent-Type: message/delivery-status\r\n\r\n\r\n--b--\r\n",
        std::string("Content-Type: multipart/report\r\nno end of headers")}) {
    EXPECT_FALSE(ParseDsn(bad).ok()) << bad;
  }
}

TEST(ParseDsnTest, ALongerBoundaryIsNotADelimiter) {
  absl::StatusOr<ParsedDsn> dsn = ParseDsn(
      "Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n"
      "--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n"
      "--bb\r\n--b--\r\n");
  ASSERT_FALSE(dsn.ok());  // "--bb" is inside the status part, which then is not a field block
  dsn = ParseDsn(
      "Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n"
      "--b\r\nContent-Type: text/plain\r\n\r\n--bb\r\n--b\r\n"
      "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n--b--\r\n");
  ASSERT_TRUE(dsn.ok()) << dsn.status();
  EXPECT_EQ(dsn->parts[0].body, "--bb");
}

}  // namespace
}  // namespace backstop::delivery
