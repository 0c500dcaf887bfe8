#include "ingest/address.h"

#include <string>

#include <gtest/gtest.h>

namespace backstop::ingest {
namespace {

Path ParseOk(std::string_view text, PathType type = PathType::kForwardPath) {
  const PathParseResult result = ParsePath(text, type);
  EXPECT_EQ(result.error, AddressError::kNone) << text;
  return result.path;
}

AddressError ParseError(std::string_view text, PathType type = PathType::kForwardPath) {
  return ParsePath(text, type).error;
}

TEST(ParsePathTest, ParsesDotStringMailbox) {
  const Path path = ParseOk("<John.Doe@Example.COM>");
  EXPECT_EQ(path.address, "John.Doe@Example.COM");
  EXPECT_EQ(path.local_part, "John.Doe");
  EXPECT_EQ(path.domain, "example.com");
  EXPECT_FALSE(path.null);
  EXPECT_FALSE(path.postmaster);
  EXPECT_FALSE(path.non_ascii);
}

TEST(ParsePathTest, ReturnsTheTextAfterThePath) {
  const PathParseResult result = ParsePath("<a@b.c> SIZE=10", PathType::kReversePath);
  ASSERT_EQ(result.error, AddressError::kNone);
  EXPECT_EQ(result.rest, " SIZE=10");
}

TEST(ParsePathTest, UnquotesQuotedLocalPart) {
  const Path path = ParseOk(R"(<"john \"j\" doe"@example.com>)");
  EXPECT_TRUE(path.quoted_local_part);
  EXPECT_EQ(path.local_part, R"(john "j" doe)");
  EXPECT_EQ(path.address, R"("john \"j\" doe"@example.com)");
  EXPECT_EQ(path.domain, "example.com");
}

TEST(ParsePathTest, QuotedLocalPartMayHoldAngleBracketAndAt) {
  const Path path = ParseOk(R"(<"a>b@c"@example.com>)");
  EXPECT_EQ(path.local_part, "a>b@c");
  EXPECT_EQ(path.domain, "example.com");
}

TEST(ParsePathTest, RejectsMalformedDotStrings) {
  EXPECT_EQ(ParseError("<.a@example.com>"), AddressError::kSyntax);
  EXPECT_EQ(ParseError("<a.@example.com>"), AddressError::kSyntax);
  EXPECT_EQ(ParseError("<a..b@example.com>"), AddressError::kSyntax);
  EXPECT_EQ(ParseError("<a b@example.com>"), AddressError::kSyntax);
  EXPECT_EQ(ParseError("<@example.com>"), AddressError::kSyntax);
  EXPECT_EQ(ParseError("<a(b)@example.com>"), AddressError::kSyntax);
}

TEST(ParsePathTest, RejectsMalformedDomains) {
  EXPECT_EQ(ParseError("<a@>"), AddressError::kSyntax);
  EXPECT_EQ(ParseError("<a@-example.com>"), AddressError::kSyntax);
  EXPECT_EQ(ParseError("<a@example-.com>"), AddressError::kSyntax);
  EXPECT_EQ(ParseError("<a@example..com>"), AddressError::kSyntax);
  EXPECT_EQ(ParseError("<a@.example.com>"), AddressError::kSyntax);
  EXPECT_EQ(ParseError("<a@example.com..>"), AddressError::kSyntax);
  EXPECT_EQ(ParseError("<a@exa_mple.com>"), AddressError::kSyntax);
  EXPECT_EQ(ParseError("<a@" + std::string(64, 'x') + ".com>"), AddressError::kSyntax);
}

TEST(ParsePathTest, RemovesOneTrailingDotFromDomain) {
  const Path path = ParseOk("<a@Example.com.>");
  EXPECT_EQ(path.domain, "example.com");
  EXPECT_EQ(path.address, "a@Example.com.");
}

TEST(ParsePathTest, RequiresAngleBrackets) {
  EXPECT_EQ(ParseError("a@example.com"), AddressError::kSyntax);
  EXPECT_EQ(ParseError("<a@example.com"), AddressError::kSyntax);
  EXPECT_EQ(ParseError(""), AddressError::kSyntax);
}

TEST(ParsePathTest, NullPathOnlyAsReversePath) {
  const Path path = ParseOk("<>", PathType::kReversePath);
  EXPECT_TRUE(path.null);
  EXPECT_EQ(path.address, "");
  EXPECT_EQ(ParseError("<>", PathType::kForwardPath), AddressError::kSyntax);
}

TEST(ParsePathTest, PostmasterWithoutDomainOnlyAsForwardPath) {
  const Path path = ParseOk("<PostMaster>");
  EXPECT_TRUE(path.postmaster);
  EXPECT_EQ(path.address, "PostMaster");
  EXPECT_EQ(path.domain, "");
  EXPECT_EQ(ParseError("<postmaster>", PathType::kReversePath), AddressError::kSyntax);
  EXPECT_EQ(ParseError("<someone>"), AddressError::kSyntax);
  EXPECT_EQ(ParseError(R"(<"postmaster">)"), AddressError::kSyntax);
}

TEST(ParsePathTest, PostmasterAtDomainIsAnOrdinaryMailbox) {
  const Path path = ParseOk("<postmaster@example.com>");
  EXPECT_FALSE(path.postmaster);
  EXPECT_EQ(path.domain, "example.com");
}

TEST(ParsePathTest, AcceptsAndIgnoresSourceRoute) {
  const Path path = ParseOk("<@relay.one,@relay.two:user@example.com>");
  EXPECT_TRUE(path.source_route);
  EXPECT_EQ(path.address, "user@example.com");
  EXPECT_EQ(path.local_part, "user");
  EXPECT_EQ(path.domain, "example.com");
}

TEST(ParsePathTest, RejectsMalformedSourceRoute) {
  EXPECT_EQ(ParseError("<@relay.one:>"), AddressError::kSyntax);
  EXPECT_EQ(ParseError("<@relay.one user@example.com>"), AddressError::kSyntax);
  EXPECT_EQ(ParseError("<@:user@example.com>"), AddressError::kSyntax);
  EXPECT_EQ(ParseError("<@relay.one:postmaster>"), AddressError::kSyntax);
}

TEST(ParsePathTest, PercentHackStaysInLocalPart) {
  const Path path = ParseOk("<user%other.example@example.com>");
  EXPECT_EQ(path.local_part, "user%other.example");
  EXPECT_EQ(path.domain, "example.com");
}

TEST(ParsePathTest, BangPathStaysInLocalPart) {
  const Path path = ParseOk("<other.example!user@example.com>");
  EXPECT_EQ(path.local_part, "other.example!user");
  EXPECT_EQ(path.domain, "example.com");
}

TEST(ParsePathTest, Ipv4AddressLiteralKeepsBrackets) {
  const Path path = ParseOk("<user@[192.0.2.1]>");
  EXPECT_TRUE(path.address_literal);
  EXPECT_EQ(path.domain, "[192.0.2.1]");
  EXPECT_EQ(path.address, "user@[192.0.2.1]");
}

TEST(ParsePathTest, Ipv6AddressLiteralIsLowerCased) {
  const Path path = ParseOk("<user@[IPv6:2001:DB8::1]>");
  EXPECT_TRUE(path.address_literal);
  EXPECT_EQ(path.domain, "[ipv6:2001:db8::1]");
}

TEST(ParsePathTest, RejectsMalformedAddressLiterals) {
  EXPECT_EQ(ParseError("<user@[192.0.2.256]>"), AddressError::kSyntax);
  EXPECT_EQ(ParseError("<user@[192.0.2]>"), AddressError::kSyntax);
  EXPECT_EQ(ParseError("<user@[192.0.2.1.5]>"), AddressError::kSyntax);
  EXPECT_EQ(ParseError("<user@[1234.0.2.1]>"), AddressError::kSyntax);
  EXPECT_EQ(ParseError("<user@[IPv6:zz::1]>"), AddressError::kSyntax);
  EXPECT_EQ(ParseError("<user@[x400:whatever]>"), AddressError::kSyntax);
  EXPECT_EQ(ParseError("<user@[192.0.2.1>"), AddressError::kSyntax);
  EXPECT_EQ(ParseError("<user@[]>"), AddressError::kSyntax);
}

TEST(ParsePathTest, ReportsUtf8LocalPartAndDomain) {
  const Path path = ParseOk("<j\xc3\xb6rg@b\xc3\xbc\x63her.example>");
  EXPECT_TRUE(path.non_ascii);
  EXPECT_EQ(path.local_part, "j\xc3\xb6rg");
  EXPECT_EQ(path.domain, "b\xc3\xbc\x63her.example");
}

TEST(ParsePathTest, RejectsMalformedUtf8) {
  EXPECT_EQ(ParseError("<j\xc3rg@example.com>"), AddressError::kSyntax);
  EXPECT_EQ(ParseError("<j\xc0\xafrg@example.com>"), AddressError::kSyntax);  // overlong '/'
  EXPECT_EQ(ParseError("<a@\xed\xa0\x80.example>"), AddressError::kSyntax);   // surrogate
  EXPECT_EQ(ParseError("<a@b\xff.example>"), AddressError::kSyntax);
}

TEST(ParsePathTest, LocalPartLimitIs64Octets) {
  EXPECT_EQ(ParseError("<" + std::string(64, 'a') + "@example.com>"), AddressError::kNone);
  EXPECT_EQ(ParseError("<" + std::string(65, 'a') + "@example.com>"), AddressError::kTooLong);
}

TEST(ParsePathTest, PathLimitIs256OctetsWithBrackets) {
  // "<" + local part + "@" + domain + ">", domain of 4 labels: 193 octets.
  const std::string label(63, 'd');
  const std::string domain = label + "." + label + "." + label + ".eeee";
  ASSERT_EQ(domain.size(), 196u);
  std::string at_limit = "<";
  at_limit.append(57, 'a').append("@").append(domain).append(">");
  ASSERT_EQ(at_limit.size(), 256u);
  EXPECT_EQ(ParseError(at_limit), AddressError::kNone);
  std::string over = "<";
  over.append(58, 'a').append("@").append(domain).append(">");
  EXPECT_EQ(ParseError(over), AddressError::kTooLong);
}

TEST(ParsePathTest, DomainLimitIs255Octets) {
  std::string domain;
  while (domain.size() + 64 <= 255) {
    domain += std::string(63, 'd') + ".";
  }
  domain += std::string(255 - domain.size(), 'e');
  ASSERT_EQ(domain.size(), 255u);
  // With brackets, "a@" and the domain this is over the path limit as well.
  EXPECT_EQ(ParseError("<a@" + domain + ">"), AddressError::kTooLong);
}

TEST(ParseEsmtpParamsTest, ParsesKeywordsCaseInsensitively) {
  const auto params = ParseEsmtpParams(" size=100 Body=8BITMIME smtputf8");
  ASSERT_TRUE(params.has_value());
  ASSERT_EQ(params->size(), 3u);
  EXPECT_EQ((*params)[0].keyword, "SIZE");
  EXPECT_EQ((*params)[0].value, "100");
  EXPECT_EQ((*params)[1].keyword, "BODY");
  EXPECT_EQ((*params)[1].value, "8BITMIME");
  EXPECT_EQ((*params)[2].keyword, "SMTPUTF8");
  EXPECT_FALSE((*params)[2].value.has_value());
}

TEST(ParseEsmtpParamsTest, EmptyTextHasNoParameters) {
  EXPECT_TRUE(ParseEsmtpParams("")->empty());
  EXPECT_TRUE(ParseEsmtpParams("   ")->empty());
}

TEST(ParseEsmtpParamsTest, RejectsMalformedParameters) {
  EXPECT_FALSE(ParseEsmtpParams("SIZE=1").has_value());  // no separating space
  EXPECT_FALSE(ParseEsmtpParams(" SIZE=").has_value());
  EXPECT_FALSE(ParseEsmtpParams(" =1").has_value());
  EXPECT_FALSE(ParseEsmtpParams(" -X=1").has_value());
  EXPECT_FALSE(ParseEsmtpParams(" A=b=c").has_value());
  EXPECT_FALSE(ParseEsmtpParams(" A=\xc3\xa9").has_value());
  EXPECT_FALSE(ParseEsmtpParams(" A=\t").has_value());
  EXPECT_FALSE(ParseEsmtpParams(" A_B=1").has_value());
}

TEST(DecodeXtextTest, DecodesHexEscapes) {
  EXPECT_EQ(DecodeXtext("abc+2Bdef+3D"), "abc+def=");
  EXPECT_EQ(DecodeXtext("+2b"), "+");
  EXPECT_EQ(DecodeXtext(""), "");
}

TEST(DecodeXtextTest, RejectsMalformedXtext) {
  EXPECT_FALSE(DecodeXtext("a+2").has_value());
  EXPECT_FALSE(DecodeXtext("a+").has_value());
  EXPECT_FALSE(DecodeXtext("a+G1").has_value());
  EXPECT_FALSE(DecodeXtext("a=b").has_value());
  EXPECT_FALSE(DecodeXtext("a b").has_value());
  EXPECT_FALSE(DecodeXtext("\xc3\xa9").has_value());
}

TEST(IsValidUtf8Test, AcceptsWellFormedSequences) {
  EXPECT_TRUE(IsValidUtf8("plain"));
  EXPECT_TRUE(IsValidUtf8("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"));
  EXPECT_TRUE(IsValidUtf8("\xf4\x8f\xbf\xbf"));  // U+10FFFF
}

TEST(IsValidUtf8Test, RejectsMalformedSequences) {
  EXPECT_FALSE(IsValidUtf8("\x80"));
  EXPECT_FALSE(IsValidUtf8("\xc3"));
  EXPECT_FALSE(IsValidUtf8("\xc1\xbf"));          // overlong 2-byte
  EXPECT_FALSE(IsValidUtf8("\xe0\x80\xaf"));      // overlong 3-byte
  EXPECT_FALSE(IsValidUtf8("\xf0\x80\x80\xaf"));  // overlong 4-byte
  EXPECT_FALSE(IsValidUtf8("\xed\xa0\x80"));      // surrogate
  EXPECT_FALSE(IsValidUtf8("\xf4\x90\x80\x80"));  // above U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\xc3\x28"));
}

}  // namespace
}  // namespace backstop::ingest
