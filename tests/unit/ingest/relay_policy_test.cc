#include "ingest/relay_policy.h"

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

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

namespace backstop::ingest {
namespace {

// Domains whose recipients come (also) from a file in a temporary directory.
class RecipientsFileTest : public ::testing::Test {
 protected:
  RecipientsFileTest() {
    char dir[] = "/tmp/relay_policy_test.XXXXXX";
    dir_ = mkdtemp(dir);
    path_ = dir_ + "/recipients";
  }
  ~RecipientsFileTest() override { std::filesystem::remove_all(dir_); }

  void Write(const std::string& text) { std::ofstream(path_, std::ios::trunc) << text; }

  std::vector<DomainConfig> Domains(std::string path) const {
    DomainConfig domain;
    domain.name = "example.com";
    domain.recipients = {"carol"};
    domain.recipients_file = std::move(path);
    return {domain};
  }

  static int Code(const RelayPolicy& policy, const std::string& local_part) {
    const Verdict verdict = policy.Check(Rcpt(local_part, "example.com"));
    return verdict.kind == Verdict::Kind::kAccept ? 0 : verdict.reply->code;
  }

  std::string dir_;
  std::string path_;
};

TEST_F(RecipientsFileTest, AcceptsTheFileEntriesAndTheListedRecipients) {
  Write("# staff\nalice\n\n  Bob@Example.COM  \n   # former: dave\n");
  absl::StatusOr<std::shared_ptr<const RelayPolicy>> policy =
      RelayPolicy::Load(Domains(path_), nullptr);
  ASSERT_TRUE(policy.ok()) << policy.status();
  EXPECT_EQ(Code(**policy, "alice"), 0);
  EXPECT_EQ(Code(**policy, "BOB"), 0);
  EXPECT_EQ(Code(**policy, "carol"), 0);  // from `recipients`
  EXPECT_EQ(Code(**policy, "dave"), 550);
  EXPECT_EQ(Code(**policy, "# former: dave"), 550);
}

TEST_F(RecipientsFileTest, AnEmptyFileRefusesEveryoneButPostmasterAndTheList) {
  Write("# nobody yet\n");
  DomainConfig domain = Domains(path_)[0];
  domain.recipients.clear();
  absl::StatusOr<std::shared_ptr<const RelayPolicy>> policy = RelayPolicy::Load({domain}, nullptr);
  ASSERT_TRUE(policy.ok()) << policy.status();
  EXPECT_EQ(Code(**policy, "alice"), 550);
  EXPECT_EQ(Code(**policy, "postmaster"), 0);
}

TEST_F(RecipientsFileTest, AMissingFileIsAnErrorAtStartup) {
  absl::StatusOr<std::shared_ptr<const RelayPolicy>> policy =
      RelayPolicy::Load(Domains(dir_ + "/missing"), nullptr);
  ASSERT_FALSE(policy.ok());
  EXPECT_NE(std::string(policy.status().message()).find("missing"), std::string::npos);
}

TEST_F(RecipientsFileTest, AnAddressOfAnotherDomainIsAnErrorNamingTheLine) {
  Write("alice\nmallory@elsewhere.org\n");
  absl::StatusOr<std::shared_ptr<const RelayPolicy>> policy =
      RelayPolicy::Load(Domains(path_), nullptr);
  ASSERT_FALSE(policy.ok());
  EXPECT_NE(std::string(policy.status().message()).find(path_ + ":2:"), std::string::npos)
      << policy.status();
}

TEST_F(RecipientsFileTest, AReloadReadsTheEditedFile) {
  Write("alice\nbob\n");
  absl::StatusOr<std::shared_ptr<const RelayPolicy>> first =
      RelayPolicy::Load(Domains(path_), nullptr);
  ASSERT_TRUE(first.ok()) << first.status();
  Write("alice\nerin\n");
  absl::StatusOr<std::shared_ptr<const RelayPolicy>> second =
      RelayPolicy::Load(Domains(path_), first->get());
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(Code(**second, "erin"), 0);
  EXPECT_EQ(Code(**second, "bob"), 550);
  EXPECT_EQ(Code(**first, "bob"), 0);  // the old policy is unchanged
}

TEST_F(RecipientsFileTest, AReloadKeepsThePreviousEntriesOfAnUnreadableFile) {
  Write("alice\n");
  absl::StatusOr<std::shared_ptr<const RelayPolicy>> first =
      RelayPolicy::Load(Domains(path_), nullptr);
  ASSERT_TRUE(first.ok()) << first.status();
  Write("alice\nnot an address\n");
  absl::StatusOr<std::shared_ptr<const RelayPolicy>> broken =
      RelayPolicy::Load(Domains(path_), first->get());
  ASSERT_TRUE(broken.ok()) << broken.status();
  EXPECT_EQ(Code(**broken, "alice"), 0);
  std::filesystem::remove(path_);
  absl::StatusOr<std::shared_ptr<const RelayPolicy>> missing =
      RelayPolicy::Load(Domains(path_), broken->get());
  ASSERT_TRUE(missing.ok()) << missing.status();
  EXPECT_EQ(Code(**missing, "alice"), 0);
  EXPECT_EQ(Code(**missing, "zoe"), 550);
}

TEST_F(RecipientsFileTest, ANewFileThatCannotBeReadOnReloadTempfails) {
  DomainConfig plain = Domains("")[0];
  absl::StatusOr<std::shared_ptr<const RelayPolicy>> first = RelayPolicy::Load({plain}, nullptr);
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<std::shared_ptr<const RelayPolicy>> second =
      RelayPolicy::Load(Domains(dir_ + "/missing"), first->get());
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(Code(**second, "alice"), 451);
  EXPECT_EQ(Code(**second, "carol"), 0);  // `recipients` still decides for its own entries
}

TEST_F(RecipientsFileTest, ThePolicyFromConfigurationAloneTempfailsFileDomains) {
  const RelayPolicy policy(Domains(path_));
  EXPECT_EQ(Code(policy, "alice"), 451);
}

}  // namespace
}  // namespace backstop::ingest
