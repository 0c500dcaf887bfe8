#include "ingest/dns_filters.h"

#include <optional>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/unit/ingest/fake_dns_client.h"

namespace backstop::ingest {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

AddressResult Addresses(std::vector<std::string> addresses) {
  return {absl::OkStatus(), std::move(addresses)};
}
AddressResult AddressError(absl::Status status) {
  return {std::move(status), {}};
}
NamesResult Names(std::vector<std::string> names) {
  return {absl::OkStatus(), std::move(names)};
}
TxtResult Txt(std::string text) {
  return {absl::OkStatus(), {std::move(text)}};
}
MxResult Mx(std::string exchange) {
  return {absl::OkStatus(), {{10, std::move(exchange)}}, false};
}
MxResult MxError(absl::Status status) {
  return {std::move(status), {}, false};
}

class DnsFiltersTest : public ::testing::Test {
 protected:
  std::shared_ptr<FilterInput> Input(Stage stage) {
    auto input = std::make_shared<FilterInput>();
    input->stage = stage;
    input->client.ip = client_ip_;
    input->state = state_;
    input->dns = &dns_;
    return input;
  }

  // Check() with every lookup answered; the result must have come exactly once.
  FilterResult Run(Filter& filter, std::shared_ptr<FilterInput> input) {
    std::optional<FilterResult> result;
    int calls = 0;
    filter.Check(std::move(input), [&](FilterResult r) {
      ++calls;
      result = std::move(r);
    });
    dns_.Deliver();
    EXPECT_EQ(calls, 1);
    return result.value_or(FilterResult::Reject(Reply{999, "", {"no answer"}}, "none"));
  }

  FilterResult Connect(Filter& filter) { return Run(filter, Input(Stage::kConnect)); }

  FilterResult Mail(Filter& filter, std::string reverse_path = "s@sender.example") {
    std::shared_ptr<FilterInput> input = Input(Stage::kMail);
    input->mail.reverse_path = std::move(reverse_path);
    return Run(filter, std::move(input));
  }

  std::optional<std::string> RdnsName() const {
    std::lock_guard lock(state_->mutex);
    return state_->rdns_name;
  }

  FakeDnsClient dns_;
  std::string client_ip_ = "192.0.2.1";
  std::shared_ptr<ConnectionState> state_ = std::make_shared<ConnectionState>();
};

void ExpectPass(const FilterResult& result, const std::string& reason = "") {
  EXPECT_EQ(result.kind, FilterResult::Kind::kContinue);
  EXPECT_EQ(result.reason, reason);
}

void ExpectReply(const FilterResult& result, int code, const std::string& enhanced,
                 const std::string& reason) {
  ASSERT_EQ(result.kind, FilterResult::Kind::kReject);
  ASSERT_TRUE(result.reply.has_value());
  EXPECT_EQ(result.reply->code, code);
  EXPECT_EQ(result.reply->enhanced, enhanced);
  EXPECT_EQ(result.reason, reason);
}

TEST_F(DnsFiltersTest, FakeAbsencesAreTheResolversOwn) {
  EXPECT_TRUE(IsNxDomain(NxDomain()));
  EXPECT_FALSE(IsNoData(NxDomain()));
  EXPECT_TRUE(IsNoData(NoData()));
}

// --- rDNS ---

TEST_F(DnsFiltersTest, RdnsPtrAcceptsClientWithPtrAndKeepsTheName) {
  dns_.SetPtr("192.0.2.1", Names({"mail.sender.example", "other.example"}));
  RdnsFilter filter(RdnsRequirement::kPtr);
  ExpectPass(Connect(filter));
  EXPECT_EQ(RdnsName(), "mail.sender.example");
  ExpectPass(Mail(filter));
  EXPECT_THAT(dns_.queries(), ElementsAre("PTR 192.0.2.1"));
}

TEST_F(DnsFiltersTest, RdnsWaitsForTheLookupBeforeAnsweringTheConnect) {
  dns_.SetPtr("192.0.2.1", Names({"mail.sender.example"}));
  RdnsFilter filter(RdnsRequirement::kPtr);
  bool answered = false;
  filter.Check(Input(Stage::kConnect), [&](FilterResult) { answered = true; });
  EXPECT_FALSE(answered);
  dns_.Deliver();
  EXPECT_TRUE(answered);
}

TEST_F(DnsFiltersTest, RdnsRefusesClientWithoutPtrAtMailNotAtConnect) {
  RdnsFilter filter(RdnsRequirement::kPtr);
  ExpectPass(Connect(filter));
  const FilterResult mail = Mail(filter);
  ExpectReply(mail, 550, "5.7.25", "no_ptr");
  EXPECT_THAT(mail.reply->lines.front(), HasSubstr("[192.0.2.1]"));
  EXPECT_EQ(RdnsName(), std::nullopt);
  // Every transaction of the session hears it.
  ExpectReply(Mail(filter), 550, "5.7.25", "no_ptr");
}

TEST_F(DnsFiltersTest, RdnsRefusesEmptyPtrAnswer) {
  dns_.SetPtr("192.0.2.1", NamesResult{NoData(), {}});
  RdnsFilter filter(RdnsRequirement::kPtr);
  Connect(filter);
  ExpectReply(Mail(filter), 550, "5.7.25", "no_ptr");
}

TEST_F(DnsFiltersTest, RdnsGivesLoopbackClientsNoExemption) {
  client_ip_ = "127.0.0.1";
  RdnsFilter filter(RdnsRequirement::kPtr);
  Connect(filter);
  ExpectReply(Mail(filter), 550, "5.7.25", "no_ptr");
}

TEST_F(DnsFiltersTest, RdnsTempfailsOnServfail) {
  dns_.SetPtr("192.0.2.1", NamesResult{ServFail(), {}});
  RdnsFilter filter(RdnsRequirement::kFcrdns);
  ExpectPass(Connect(filter));
  ExpectReply(Mail(filter), 450, "4.7.25", "dns_error");
}

TEST_F(DnsFiltersTest, RdnsTempfailsOnTimeout) {
  dns_.SetPtr("192.0.2.1", NamesResult{Timeout(), {}});
  RdnsFilter filter(RdnsRequirement::kPtr);
  Connect(filter);
  ExpectReply(Mail(filter), 450, "4.7.25", "dns_error");
}

TEST_F(DnsFiltersTest, RdnsTempfailsWithoutResolver) {
  RdnsFilter filter(RdnsRequirement::kPtr);
  std::shared_ptr<FilterInput> input = Input(Stage::kConnect);
  input->dns = nullptr;
  ExpectPass(Run(filter, input));
  ExpectReply(Mail(filter), 450, "4.7.25", "dns_error");
}

TEST_F(DnsFiltersTest, FcrdnsAcceptsTheFirstNameThatResolvesBack) {
  dns_.SetPtr("192.0.2.1", Names({"forged.example", "mail.sender.example"}));
  dns_.SetAddresses("forged.example", Addresses({"198.51.100.7"}));
  dns_.SetAddresses("mail.sender.example", Addresses({"192.0.2.9", "192.0.2.1"}));
  RdnsFilter filter(RdnsRequirement::kFcrdns);
  ExpectPass(Connect(filter));
  EXPECT_EQ(RdnsName(), "mail.sender.example");
  ExpectPass(Mail(filter));
}

TEST_F(DnsFiltersTest, FcrdnsRefusesNamesThatDoNotResolveBack) {
  dns_.SetPtr("192.0.2.1", Names({"forged.example", "gone.example"}));
  dns_.SetAddresses("forged.example", Addresses({"198.51.100.7"}));
  RdnsFilter filter(RdnsRequirement::kFcrdns);
  ExpectPass(Connect(filter));
  EXPECT_EQ(RdnsName(), std::nullopt);
  ExpectReply(Mail(filter), 550, "5.7.25", "not_confirmed");
}

TEST_F(DnsFiltersTest, FcrdnsTempfailsWhenAForwardLookupFailsWithoutMatch) {
  dns_.SetPtr("192.0.2.1", Names({"forged.example", "slow.example"}));
  dns_.SetAddresses("forged.example", Addresses({"198.51.100.7"}));
  dns_.SetAddresses("slow.example", AddressError(Timeout()));
  RdnsFilter filter(RdnsRequirement::kFcrdns);
  Connect(filter);
  ExpectReply(Mail(filter), 450, "4.7.25", "dns_error");
}

TEST_F(DnsFiltersTest, FcrdnsLooksUpAtMostTenNames) {
  std::vector<std::string> names;
  for (int i = 0; i < 12; ++i) {
    names.push_back("host" + std::to_string(i) + ".example");
  }
  dns_.SetPtr("192.0.2.1", Names(names));
  dns_.SetAddresses("host11.example", Addresses({"192.0.2.1"}));
  RdnsFilter filter(RdnsRequirement::kFcrdns);
  Connect(filter);
  EXPECT_EQ(dns_.queries().size(), 1 + RdnsFilter::kMaxConfirmedNames);
  EXPECT_EQ(dns_.queries().back(), "ADDR host9.example");
  ExpectReply(Mail(filter), 550, "5.7.25", "not_confirmed");
}

TEST_F(DnsFiltersTest, FcrdnsMatchesIpv6ClientWhateverTheSpelling) {
  client_ip_ = "2001:db8::25";
  dns_.SetPtr("2001:db8::25", Names({"mail6.sender.example"}));
  dns_.SetAddresses("mail6.sender.example", Addresses({"192.0.2.1", "2001:DB8:0:0::25"}));
  RdnsFilter filter(RdnsRequirement::kFcrdns);
  ExpectPass(Connect(filter));
  EXPECT_EQ(RdnsName(), "mail6.sender.example");
}

// --- DNSBL / DNSWL ---

DnsblConfig Lists(std::vector<DnsblZone> zones, std::vector<DnsblZone> allow_zones = {}) {
  DnsblConfig config;
  config.enabled = true;
  config.zones = std::move(zones);
  config.allow_zones = std::move(allow_zones);
  return config;
}

TEST_F(DnsFiltersTest, DnsblRefusesListedClientAtMailWithTheListsReason) {
  dns_.SetA("1.2.0.192.bl.example", Addresses({"127.0.0.2"}));
  dns_.SetTxt("1.2.0.192.bl.example", Txt("Listed: see https://bl.example/q/192.0.2.1\r\n"));
  DnsblFilter filter(Lists({{"bl.example", {}}}));
  ExpectPass(Connect(filter));
  const FilterResult mail = Mail(filter);
  ExpectReply(mail, 554, "5.7.1", "listed");
  EXPECT_EQ(mail.reply->lines.front(),
            "Client host [192.0.2.1] blocked using bl.example: Listed: see "
            "https://bl.example/q/192.0.2.1");
}

TEST_F(DnsFiltersTest, DnsblNamesTheZoneWhenTheListHasNoTxt) {
  dns_.SetA("1.2.0.192.bl.example", Addresses({"127.0.0.4"}));
  DnsblFilter filter(Lists({{"bl.example", {}}}));
  Connect(filter);
  const FilterResult mail = Mail(filter);
  ExpectReply(mail, 554, "5.7.1", "listed");
  EXPECT_EQ(mail.reply->lines.front(), "Client host [192.0.2.1] listed in bl.example");
}

TEST_F(DnsFiltersTest, DnsblPassesUnlistedClient) {
  DnsblFilter filter(Lists({{"bl.example", {}}}));
  ExpectPass(Connect(filter));
  ExpectPass(Mail(filter));
}

TEST_F(DnsFiltersTest, DnsblQueriesEveryZoneAtOnce) {
  DnsblFilter filter(Lists({{"a.example", {}}, {"b.example", {}}}, {{"wl.example", {}}}));
  filter.Check(Input(Stage::kConnect), [](FilterResult) {});
  EXPECT_EQ(dns_.pending(), 3u);
  EXPECT_THAT(dns_.queries(), ElementsAre("A 1.2.0.192.a.example", "A 1.2.0.192.b.example",
                                          "A 1.2.0.192.wl.example"));
  dns_.Deliver();
}

TEST_F(DnsFiltersTest, DnswlHitOverridesDnsblAndIsKeptForLaterFilters) {
  dns_.SetA("1.2.0.192.bl.example", Addresses({"127.0.0.2"}));
  dns_.SetA("1.2.0.192.wl.example", Addresses({"127.0.0.2"}));
  DnsblFilter filter(Lists({{"bl.example", {}}}, {{"wl.example", {}}}));
  ExpectPass(Connect(filter), "allowlisted");
  {
    std::lock_guard lock(state_->mutex);
    EXPECT_TRUE(state_->dnswl_listed);
  }
  ExpectPass(Mail(filter));
}

TEST_F(DnsFiltersTest, DnsblErrorCodeFailsOpenAndIsCounted) {
  dns_.SetA("1.2.0.192.bl.example", Addresses({"127.255.255.254"}));
  DnsblFilter filter(Lists({{"bl.example", {}}}));
  ExpectPass(Connect(filter), "bad_answer");
  ExpectPass(Mail(filter));
}

TEST_F(DnsFiltersTest, DnsblTimeoutAndServfailFailOpenAndAreCounted) {
  dns_.SetA("1.2.0.192.slow.example", AddressError(Timeout()));
  dns_.SetA("1.2.0.192.broken.example", AddressError(ServFail()));
  DnsblFilter filter(Lists({{"slow.example", {}}, {"broken.example", {}}}));
  ExpectPass(Connect(filter), "dns_error");
  ExpectPass(Mail(filter));
}

TEST_F(DnsFiltersTest, DnsblWithCodesListsOnlyThoseCodes) {
  dns_.SetA("1.2.0.192.bl.example", Addresses({"127.0.0.2"}));
  DnsblFilter only_ten(Lists({{"bl.example", {"127.0.0.10"}}}));
  ExpectPass(Connect(only_ten));
  ExpectPass(Mail(only_ten));

  dns_.SetA("1.2.0.192.bl.example", Addresses({"127.0.0.10"}));
  DnsblFilter ten_or_two(Lists({{"bl.example", {"127.0.0.2", "127.0.0.10"}}}));
  Connect(ten_or_two);
  ExpectReply(Mail(ten_or_two), 554, "5.7.1", "listed");
}

TEST_F(DnsFiltersTest, DnsblQueriesIpv6ClientsByNibbles) {
  client_ip_ = "2001:db8::1";
  const std::string name =
      "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.example";
  dns_.SetA(name, Addresses({"127.0.0.2"}));
  DnsblFilter filter(Lists({{"bl.example", {}}}));
  Connect(filter);
  EXPECT_EQ(dns_.queries().front(), "A " + name);
  ExpectReply(Mail(filter), 554, "5.7.1", "listed");
}

TEST_F(DnsFiltersTest, FirstConnectRefusalWinsAndIsGivenByItsFilter) {
  dns_.SetA("1.2.0.192.bl.example", Addresses({"127.0.0.2"}));
  RdnsFilter rdns(RdnsRequirement::kPtr);
  DnsblFilter dnsbl(Lists({{"bl.example", {}}}));
  Connect(rdns);
  Connect(dnsbl);
  ExpectPass(Mail(dnsbl));
  ExpectReply(Mail(rdns), 550, "5.7.25", "no_ptr");
}

// --- sender ---

TEST_F(DnsFiltersTest, SenderAcceptsDomainWithMx) {
  dns_.SetMx("sender.example", Mx("mx.sender.example"));
  SenderFilter filter;
  ExpectPass(Mail(filter, "s@Sender.Example."));
  EXPECT_THAT(dns_.queries(), ElementsAre("MX sender.example"));
}

TEST_F(DnsFiltersTest, SenderRefusesNullMx) {
  dns_.SetMx("sender.example", MxResult{absl::OkStatus(), {}, true});
  dns_.SetAddresses("sender.example", Addresses({"192.0.2.1"}));
  SenderFilter filter;
  const FilterResult result = Mail(filter);
  ExpectReply(result, 550, "5.1.8", "null_mx");
  EXPECT_THAT(result.reply->lines.front(), HasSubstr("sender.example"));
}

TEST_F(DnsFiltersTest, SenderAcceptsMxlessDomainWithAddress) {
  dns_.SetMx("sender.example", MxError(NoData()));
  dns_.SetAddresses("sender.example", Addresses({"192.0.2.1"}));
  SenderFilter filter;
  ExpectPass(Mail(filter));
}

TEST_F(DnsFiltersTest, SenderRefusesNonexistentDomain) {
  SenderFilter filter;
  ExpectReply(Mail(filter), 550, "5.1.8", "nxdomain");
}

TEST_F(DnsFiltersTest, SenderRefusesDomainWithoutMxOrAddress) {
  dns_.SetMx("sender.example", MxError(NoData()));
  dns_.SetAddresses("sender.example", AddressError(NoData()));
  SenderFilter filter;
  ExpectReply(Mail(filter), 550, "5.1.8", "no_address");
}

TEST_F(DnsFiltersTest, SenderTempfailsOnServfail) {
  dns_.SetMx("sender.example", MxError(ServFail()));
  SenderFilter filter;
  ExpectReply(Mail(filter), 451, "4.1.8", "dns_error");
}

TEST_F(DnsFiltersTest, SenderTempfailsWhenTheAddressLookupTimesOut) {
  dns_.SetMx("sender.example", MxError(NxDomain()));
  dns_.SetAddresses("sender.example", AddressError(Timeout()));
  SenderFilter filter;
  ExpectReply(Mail(filter), 451, "4.1.8", "dns_error");
}

TEST_F(DnsFiltersTest, SenderSkipsNullReversePath) {
  SenderFilter filter;
  ExpectPass(Mail(filter, ""));
  EXPECT_THAT(dns_.queries(), IsEmpty());
}

TEST_F(DnsFiltersTest, SenderAcceptsAddressLiteralWithoutLookup) {
  SenderFilter filter;
  ExpectPass(Mail(filter, "s@[192.0.2.1]"));
  ExpectPass(Mail(filter, "s@[IPv6:2001:db8::1]"));
  EXPECT_THAT(dns_.queries(), IsEmpty());
}

TEST_F(DnsFiltersTest, SenderLeavesInternationalisedDomainsUnchecked) {
  SenderFilter filter;
  ExpectPass(Mail(filter, "j\xc3\xb6rg@b\xc3\xbc\x63her.example"), "unchecked_idn");
  EXPECT_THAT(dns_.queries(), IsEmpty());
}

TEST_F(DnsFiltersTest, SenderTempfailsWithoutResolver) {
  SenderFilter filter;
  std::shared_ptr<FilterInput> input = Input(Stage::kMail);
  input->mail.reverse_path = "s@sender.example";
  input->dns = nullptr;
  ExpectReply(Run(filter, input), 451, "4.1.8", "dns_error");
}

}  // namespace
}  // namespace backstop::ingest
