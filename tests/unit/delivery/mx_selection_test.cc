#include "delivery/mx_selection.h"

#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace backstop::delivery {
namespace {

RoutingOptions Options(std::string hostname = "mx2.example.net", uint64_t seed = 1) {
  return {.our_hostname = std::move(hostname), .smtp_port = 2525, .shuffle_seed = seed};
}

MxLookup Records(std::vector<MxRecord> records) {
  return {.status = MxLookupStatus::kRecords, .records = std::move(records), .error = ""};
}

std::vector<std::string> Hosts(const Route& route) {
  std::vector<std::string> hosts;
  for (const RouteHost& host : route.hosts) {
    hosts.push_back(host.host);
  }
  return hosts;
}

TEST(RouteToPrimariesTest, KeepsConfiguredOrderAndPorts) {
  Route route = RouteToPrimaries({{"MX1.Example.com.", 25}, {"192.0.2.7", 2525}, {"::1", 26}});
  EXPECT_EQ(route.kind, Route::Kind::kDeliver);
  ASSERT_EQ(route.hosts.size(), 3u);
  EXPECT_EQ(route.hosts[0], (RouteHost{"mx1.example.com", 25, 0}));
  EXPECT_EQ(route.hosts[1], (RouteHost{"192.0.2.7", 2525, 1}));
  EXPECT_EQ(route.hosts[2], (RouteHost{"::1", 26, 2}));
}

TEST(RouteByMxTest, SortsByPreferenceWithTheSmtpPort) {
  Route route = RouteByMx(
      "example.com",
      Records({{30, "c.example.com."}, {10, "a.example.com."}, {20, "b.example.com"}}), Options());
  EXPECT_EQ(route.kind, Route::Kind::kDeliver);
  EXPECT_EQ(Hosts(route),
            (std::vector<std::string>{"a.example.com", "b.example.com", "c.example.com"}));
  EXPECT_EQ(route.hosts[0].port, 2525);
  EXPECT_EQ(route.hosts[2].preference, 30);
}

TEST(RouteByMxTest, DropsOurselvesAndEveryEqualOrWorseRecord) {
  Route route = RouteByMx("example.com",
                          Records({{10, "mx1.example.com"},
                                   {20, "MX2.EXAMPLE.NET."},
                                   {20, "peer-backup.example.org"},
                                   {30, "last.example.org"}}),
                          Options());
  EXPECT_EQ(route.kind, Route::Kind::kDeliver);
  EXPECT_EQ(Hosts(route), (std::vector<std::string>{"mx1.example.com"}));
}

TEST(RouteByMxTest, UsesOurLowestPreferenceWhenListedTwice) {
  Route route = RouteByMx("example.com",
                          Records({{5, "mx1.example.com"},
                                   {40, "mx2.example.net"},
                                   {10, "mx2.example.net"},
                                   {20, "mx3.example.com"}}),
                          Options());
  EXPECT_EQ(Hosts(route), (std::vector<std::string>{"mx1.example.com"}));
}

TEST(RouteByMxTest, WeAreTheBestMxMeansNothingToDeliverTo) {
  Route route = RouteByMx("example.com",
                          Records({{10, "mx2.example.net"}, {20, "mx1.example.com"}}), Options());
  EXPECT_EQ(route.kind, Route::Kind::kWeAreBestMx);
  EXPECT_TRUE(route.hosts.empty());
  EXPECT_NE(route.reason.find("best MX"), std::string::npos);
}

TEST(RouteByMxTest, SharingTheLowestPreferenceWithOthersIsAlsoBestMx) {
  Route route = RouteByMx("example.com",
                          Records({{10, "mx1.example.com"}, {10, "mx2.example.net"}}), Options());
  EXPECT_EQ(route.kind, Route::Kind::kWeAreBestMx);
}

TEST(RouteByMxTest, AnotherHostNamedLikeUsIsNotUs) {
  Route route = RouteByMx("example.com", Records({{10, "mx2.example.net.evil.com"}}), Options());
  EXPECT_EQ(Hosts(route), (std::vector<std::string>{"mx2.example.net.evil.com"}));
}

TEST(RouteByMxTest, NullMxIsAPermanentFailure) {
  Route route = RouteByMx("example.com", Records({{0, "."}}), Options());
  EXPECT_EQ(route.kind, Route::Kind::kPermanentFailure);
  EXPECT_EQ(route.enhanced_status, "5.1.10");
  EXPECT_TRUE(route.hosts.empty());
}

TEST(RouteByMxTest, NullMxAmongOtherRecordsIsIgnored) {
  Route route = RouteByMx("example.com", Records({{0, "."}, {10, "mx1.example.com"}}), Options());
  EXPECT_EQ(Hosts(route), (std::vector<std::string>{"mx1.example.com"}));
}

TEST(RouteByMxTest, NoMxButAddressIsTheImplicitMx) {
  Route route =
      RouteByMx("Example.COM.",
                {.status = MxLookupStatus::kNoMxButAddress, .records = {}, .error = ""}, Options());
  EXPECT_EQ(route.kind, Route::Kind::kDeliver);
  ASSERT_EQ(route.hosts.size(), 1u);
  EXPECT_EQ(route.hosts[0], (RouteHost{"example.com", 2525, 0}));
}

TEST(RouteByMxTest, ImplicitMxNamingUsIsNothingToDeliverTo) {
  Route route =
      RouteByMx("MX2.example.net",
                {.status = MxLookupStatus::kNoMxButAddress, .records = {}, .error = ""}, Options());
  EXPECT_EQ(route.kind, Route::Kind::kWeAreBestMx);
}

TEST(RouteByMxTest, NoMxAndNoAddressIsAPermanentFailure) {
  Route route =
      RouteByMx("example.com",
                {.status = MxLookupStatus::kNoMxNoAddress, .records = {}, .error = ""}, Options());
  EXPECT_EQ(route.kind, Route::Kind::kPermanentFailure);
  EXPECT_EQ(route.enhanced_status, "5.1.2");
}

TEST(RouteByMxTest, DnsFailureIsTemporary) {
  Route route = RouteByMx(
      "example.com",
      {.status = MxLookupStatus::kTemporaryFailure, .records = {}, .error = "SERVFAIL"}, Options());
  EXPECT_EQ(route.kind, Route::Kind::kTemporaryFailure);
  EXPECT_EQ(route.enhanced_status, "4.4.3");
  EXPECT_NE(route.reason.find("SERVFAIL"), std::string::npos);
}

TEST(RouteByMxTest, AnswerWithoutRecordsIsTemporaryNotABounce) {
  Route route = RouteByMx("example.com", Records({}), Options());
  EXPECT_EQ(route.kind, Route::Kind::kTemporaryFailure);
}

TEST(RouteByMxTest, ShufflesEqualPreferencesDeterministicallyBySeed) {
  std::vector<MxRecord> records = {{20, "z.example.com"},
                                   {10, "a.example.com"},
                                   {10, "b.example.com"},
                                   {10, "c.example.com"},
                                   {10, "d.example.com"}};
  std::set<std::vector<std::string>> orders;
  for (uint64_t seed = 0; seed < 32; ++seed) {
    std::vector<std::string> hosts =
        Hosts(RouteByMx("example.com", Records(records), Options("mx2.example.net", seed)));
    EXPECT_EQ(hosts,
              Hosts(RouteByMx("example.com", Records(records), Options("mx2.example.net", seed))));
    ASSERT_EQ(hosts.size(), 5u);
    EXPECT_EQ(hosts.back(), "z.example.com");  // the shuffle stays inside a preference
    EXPECT_EQ(std::set<std::string>(hosts.begin(), hosts.begin() + 4),
              (std::set<std::string>{"a.example.com", "b.example.com", "c.example.com",
                                     "d.example.com"}));
    orders.insert(hosts);
  }
  EXPECT_GT(orders.size(), 4u);  // seeds really change the order
}

TEST(NormalizeHostNameTest, LowersAndDropsOneTrailingDot) {
  EXPECT_EQ(NormalizeHostName("MX.Example.NET."), "mx.example.net");
  EXPECT_EQ(NormalizeHostName("."), "");
}

}  // namespace
}  // namespace backstop::delivery
