#include "ingest/relay_policy.h"

#include <gtest/gtest.h>

namespace backstop::ingest {
namespace {

RcptRequest Rcpt(std::string local_part, std::string domain) {
  RcptRequest rcpt;
  rcpt.local_part = local_part;
  rcpt.domain = domain;
  rcpt.recipient.set_address(domain.empty() ? local_part : local_part + "@" + domain);
  return rcpt;
}

class RelayPolicyTest : public ::testing::Test {
 protected:
  RelayPolicyTest() : policy_(Domains()) {}

  static std::vector<DomainConfig> Domains() {
    DomainConfig listed;
    listed.name = "example.com";
    listed.recipients = {"alice", "Bob@example.com"};
    DomainConfig open;
    open.name = "open.example";
    return {listed, open};
  }

  // The reply code, 0 for accept.
  int Code(const RcptRequest& rcpt) const {
    const Verdict verdict = policy_.Check(rcpt);
    if (verdict.kind == Verdict::Kind::kAccept) {
      return 0;
    }
    return verdict.reply->code;
  }
  std::string Enhanced(const RcptRequest& rcpt) const {
    const Verdict verdict = policy_.Check(rcpt);
    return verdict.reply ? verdict.reply->enhanced : "";
  }

  RelayPolicy policy_;
};

TEST_F(RelayPolicyTest, AcceptsListedRecipientsCaseInsensitively) {
  EXPECT_EQ(Code(Rcpt("alice", "example.com")), 0);
  EXPECT_EQ(Code(Rcpt("ALICE", "Example.COM")), 0);
  EXPECT_EQ(Code(Rcpt("bob", "example.com")), 0);
}

TEST_F(RelayPolicyTest, RefusesUnknownUserOfListedDomainWith550) {
  EXPECT_EQ(Code(Rcpt("mallory", "example.com")), 550);
  EXPECT_EQ(Enhanced(Rcpt("mallory", "example.com")), "5.1.1");
}

TEST_F(RelayPolicyTest, AlwaysAcceptsPostmasterOfARelayDomain) {
  EXPECT_EQ(Code(Rcpt("postmaster", "example.com")), 0);
  EXPECT_EQ(Code(Rcpt("PostMaster", "example.com")), 0);
}

TEST_F(RelayPolicyTest, DomainWithoutListAcceptsAnyLocalPart) {
  EXPECT_EQ(Code(Rcpt("anyone", "open.example")), 0);
}

TEST_F(RelayPolicyTest, IgnoresOneTrailingDot) {
  EXPECT_EQ(Code(Rcpt("alice", "example.com.")), 0);
  EXPECT_EQ(Code(Rcpt("alice", "example.com..")), 554);
}

TEST_F(RelayPolicyTest, RefusesForeignDomainsWith554) {
  EXPECT_EQ(Code(Rcpt("alice", "elsewhere.org")), 554);
  EXPECT_EQ(Enhanced(Rcpt("alice", "elsewhere.org")), "5.7.1");
  // A subdomain or a suffix match is not the domain.
  EXPECT_EQ(Code(Rcpt("alice", "sub.example.com")), 554);
  EXPECT_EQ(Code(Rcpt("alice", "notexample.com")), 554);
}

TEST_F(RelayPolicyTest, RefusesSourceRoutingThroughALocalPart) {
  EXPECT_EQ(Code(Rcpt("victim%elsewhere.org", "open.example")), 554);
  EXPECT_EQ(Code(Rcpt("elsewhere.org!victim", "open.example")), 554);
  EXPECT_EQ(Enhanced(Rcpt("victim%elsewhere.org", "open.example")), "5.7.1");
}

TEST_F(RelayPolicyTest, RefusesSourceRoutingThroughAQuotedAt) {
  // <"victim@elsewhere.org"@open.example>: the parser unquotes the local part; a primary
  // that trusts its backup MX (Postfix allow_untrusted_routing, sendmail) would relay on.
  EXPECT_EQ(Code(Rcpt("victim@elsewhere.org", "open.example")), 554);
  EXPECT_EQ(Enhanced(Rcpt("victim@elsewhere.org", "open.example")), "5.7.1");
}

TEST_F(RelayPolicyTest, RefusesAddressLiterals) {
  EXPECT_EQ(Code(Rcpt("alice", "[127.0.0.1]")), 554);
  EXPECT_EQ(Code(Rcpt("alice", "[IPv6:::1]")), 554);
}

TEST_F(RelayPolicyTest, RefusesBarePostmaster) {
  EXPECT_EQ(Code(Rcpt("postmaster", "")), 550);
}

TEST_F(RelayPolicyTest, KnowsItsRelayDomains) {
  EXPECT_TRUE(policy_.IsRelayDomain("EXAMPLE.com."));
  EXPECT_FALSE(policy_.IsRelayDomain("example.net"));
}

}  // namespace
}  // namespace backstop::ingest
