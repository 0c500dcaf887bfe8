#include "common/config.h"

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace backstop {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::StartsWith;

Config Parse(std::string_view text) {
  absl::StatusOr<Config> config = ParseConfig(text, "t.toml");
  EXPECT_TRUE(config.ok()) << config.status();
  return config.ok() ? *std::move(config) : Config{};
}

// The whole error message; the document must be rejected.
std::string Errors(std::string_view text) {
  absl::StatusOr<Config> config = ParseConfig(text, "t.toml");
  EXPECT_FALSE(config.ok());
  if (config.ok()) {
    return "";
  }
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(config.status().message());
}

// A queue-less ingest node needs endpoints; most error tests need a valid rest of the file.
constexpr std::string_view kIngestOnly =
    "[node]\nroles = [\"ingest\"]\n[queue]\nendpoints = [\"10.0.0.1:7025\"]\n";

TEST(ConfigTest, EmptyDocumentYieldsTheDocumentedDefaults) {
  const Config c = Parse("");
  EXPECT_EQ(c.node.id, 1u);
  EXPECT_EQ(c.node.hostname, "mx2.example.net");
  EXPECT_EQ(c.node.data_dir, "./data");
  EXPECT_EQ(c.node.roles, RoleSet::All());
  EXPECT_THAT(c.smtp.listen, ElementsAre(HostPort{"127.0.0.1", 2525}));
  EXPECT_EQ(c.smtp.max_message_size, 50u * 1024 * 1024);
  EXPECT_EQ(c.smtp.max_recipients, 100u);
  EXPECT_EQ(c.smtp.commit_timeout, absl::Seconds(30));
  EXPECT_EQ(c.smtp.tls_cert, "");
  EXPECT_EQ(c.smtp.tls_key, "");
  EXPECT_FALSE(c.smtp.proxy_protocol);
  EXPECT_THAT(c.smtp.trusted_proxies, IsEmpty());
  EXPECT_EQ(c.smtp.command_timeout, absl::Minutes(5));
  EXPECT_EQ(c.smtp.data_timeout, absl::Minutes(3));
  EXPECT_EQ(c.smtp.max_errors, 10u);
  EXPECT_EQ(c.smtp.max_received_headers, 50u);
  EXPECT_EQ(c.smtp.max_connections, 10000u);
  EXPECT_EQ(c.smtp.max_connections_per_ip, 50u);
  EXPECT_EQ(c.smtp.threads, 0u);
  EXPECT_EQ(c.queue.listen, (HostPort{"127.0.0.1", 7025}));
  EXPECT_THAT(c.queue.peers, ElementsAre(QueuePeer{1, {"127.0.0.1", 7025}}));
  EXPECT_THAT(c.queue.endpoints, IsEmpty());
  EXPECT_EQ(c.delivery.retry_initial, absl::Minutes(1));
  EXPECT_EQ(c.delivery.retry_max, absl::Minutes(15));
  EXPECT_EQ(c.delivery.max_queue_lifetime, absl::Hours(120));
  EXPECT_EQ(c.delivery.delay_warning, absl::ZeroDuration());
  EXPECT_EQ(c.delivery.connections_per_domain, 8u);
  EXPECT_EQ(c.delivery.smtp_port, 25);
  EXPECT_EQ(c.delivery.lease_duration, absl::Minutes(2));
  EXPECT_THAT(c.dns.servers, IsEmpty());
  EXPECT_EQ(c.http.listen, (HostPort{"127.0.0.1", 8025}));
  EXPECT_EQ(c.cluster_tls.ca, "");
  EXPECT_EQ(c.cluster_tls.cert, "");
  EXPECT_EQ(c.cluster_tls.key, "");
  EXPECT_FALSE(c.cluster_tls.enabled());
  EXPECT_FALSE(c.filters.greylist.enabled);
  EXPECT_EQ(c.filters.greylist.delay, absl::Minutes(5));
  EXPECT_EQ(c.filters.greylist.retry_window, absl::Hours(48));
  EXPECT_EQ(c.filters.greylist.auto_allow_after, 5u);
  EXPECT_THAT(c.filters.greylist.allow, IsEmpty());
  EXPECT_FALSE(c.filters.dnsbl.enabled);
  EXPECT_THAT(c.filters.dnsbl.zones, ElementsAre(DnsblZone{"zen.spamhaus.org", {}}));
  EXPECT_THAT(c.filters.dnsbl.allow_zones, IsEmpty());
  EXPECT_FALSE(c.filters.rdns.enabled);
  EXPECT_EQ(c.filters.rdns.require, RdnsRequirement::kPtr);
  EXPECT_TRUE(c.filters.sender.enabled);
  EXPECT_TRUE(c.filters.headers.enabled);
  EXPECT_EQ(c.filters.headers.max_size, 64u << 10);
  EXPECT_EQ(c.filters.callout.timeout, absl::Seconds(10));
  EXPECT_EQ(c.filters.callout.positive_ttl, absl::Hours(24));
  EXPECT_EQ(c.filters.callout.negative_ttl, absl::Hours(1));
  EXPECT_EQ(c.filters.callout.cache_size, 100'000u);
  EXPECT_EQ(c.filters.callout.threads, 4u);
  EXPECT_EQ(c.filters.callout.unreachable_ttl, absl::Minutes(1));
  EXPECT_THAT(c.domains, IsEmpty());
}

TEST(ConfigTest, DomainKeysDefaultWhenAbsent) {
  const Config c = Parse("[[domain]]\nname = \"example.com\"\n");
  ASSERT_EQ(c.domains.size(), 1u);
  const DomainConfig& d = c.domains[0];
  EXPECT_EQ(d.name, "example.com");
  EXPECT_THAT(d.primary, IsEmpty());
  EXPECT_EQ(d.tls, DomainTls::kOpportunistic);
  EXPECT_THAT(d.recipients, IsEmpty());
  EXPECT_EQ(d.recipients_file, "");
  EXPECT_FALSE(d.recipient_callout);
  EXPECT_EQ(d.max_queued_messages, 100'000u);
  EXPECT_EQ(d.max_queued_bytes, uint64_t{1} << 30);
  EXPECT_EQ(d.max_monthly_bytes, uint64_t{10} << 30);
  EXPECT_EQ(d.max_daily_connections, 100'000u);
}

constexpr std::string_view kEveryKey = R"toml(
[node]
id = 3
hostname = "MX9.Example.NET"
data_dir = "/var/lib/backstop"
roles = ["queue", "ingest"]

[smtp]
listen = ["0.0.0.0:25", "[::]:25"]
max_message_size = "20MiB"
max_recipients = 500
commit_timeout = "2s"
tls_cert = "/etc/tls/mx.pem"
tls_key = "/etc/tls/mx.key"
proxy_protocol = true
trusted_proxies = ["10.0.0.0/8", "fd00::/8", "192.0.2.7"]
command_timeout = "3s"
data_timeout = "4s"
max_errors = 3
max_received_headers = 30
max_connections = 200
max_connections_per_ip = 7
threads = 2

[queue]
listen = "0.0.0.0:7125"
peers = ["1@q1.internal:7125", "3@q3.internal:7125", "5@[fd00::5]:7125"]
endpoints = ["q1.internal:7125"]

[delivery]
retry_initial = "10s"
retry_max = "1h"
max_queue_lifetime = "3d"
delay_warning = "4h"
connections_per_domain = 2
smtp_port = 2526
lease_duration = "45s"

[dns]
servers = ["127.0.0.1:5353", "192.0.2.53", "[2001:db8::53]:53"]

[http]
listen = "0.0.0.0:9090"

[cluster_tls]
ca = "/etc/tls/ca.pem"
cert = "/etc/tls/node.pem"
key = "/etc/tls/node.key"

[filters]
greylist = { enabled = true, delay = "1s", retry_window = "1h", auto_allow_after = 0, allow = ["198.51.100.0/24"] }
dnsbl = { enabled = true, zones = ["bl.example.org=127.0.0.2,127.0.0.10", "zen.spamhaus.org"], allow_zones = ["list.dnswl.org=127.0.15.3"] }
rdns = { enabled = true, require = "fcrdns" }
sender = { enabled = false }
headers = { enabled = false, max_size = "32KiB" }
callout = { timeout = "3s", positive_ttl = "2h", negative_ttl = "10m", cache_size = 50, threads = 2, unreachable_ttl = "5s" }

[[domain]]
name = "Example.COM"
primary = ["mx1.example.com", "192.0.2.10:2525", "[2001:db8::10]"]
tls = "required"
recipients = ["alice", "Bob@EXAMPLE.com"]
recipients_file = "/etc/backstop/example.com.recipients"
recipient_callout = true
max_queued_messages = 10
max_queued_bytes = 123456789
max_monthly_bytes = "5GB"
max_daily_connections = 7

[[domain]]
name = "example.org"
primary = ["192.0.2.20"]
recipient_callout = true
)toml";

TEST(ConfigTest, ReadsEveryKey) {
  const Config c = Parse(kEveryKey);
  EXPECT_EQ(c.node.id, 3u);
  EXPECT_EQ(c.node.hostname, "mx9.example.net");
  EXPECT_EQ(c.node.data_dir, "/var/lib/backstop");
  EXPECT_TRUE(c.node.roles.Has(Role::kIngest));
  EXPECT_TRUE(c.node.roles.Has(Role::kQueue));
  EXPECT_FALSE(c.node.roles.Has(Role::kDelivery));
  EXPECT_THAT(c.smtp.listen, ElementsAre(HostPort{"0.0.0.0", 25}, HostPort{"::", 25}));
  EXPECT_EQ(c.smtp.max_message_size, 20u << 20);
  EXPECT_EQ(c.smtp.max_recipients, 500u);
  EXPECT_EQ(c.smtp.commit_timeout, absl::Seconds(2));
  EXPECT_EQ(c.smtp.tls_cert, "/etc/tls/mx.pem");
  EXPECT_EQ(c.smtp.tls_key, "/etc/tls/mx.key");
  EXPECT_TRUE(c.smtp.proxy_protocol);
  EXPECT_THAT(c.smtp.trusted_proxies, ElementsAre("10.0.0.0/8", "fd00::/8", "192.0.2.7"));
  EXPECT_EQ(c.smtp.command_timeout, absl::Seconds(3));
  EXPECT_EQ(c.smtp.data_timeout, absl::Seconds(4));
  EXPECT_EQ(c.smtp.max_errors, 3u);
  EXPECT_EQ(c.smtp.max_received_headers, 30u);
  EXPECT_EQ(c.smtp.max_connections, 200u);
  EXPECT_EQ(c.smtp.max_connections_per_ip, 7u);
  EXPECT_EQ(c.smtp.threads, 2u);
  EXPECT_EQ(c.queue.listen, (HostPort{"0.0.0.0", 7125}));
  EXPECT_THAT(c.queue.peers,
              ElementsAre(QueuePeer{1, {"q1.internal", 7125}}, QueuePeer{3, {"q3.internal", 7125}},
                          QueuePeer{5, {"fd00::5", 7125}}));
  EXPECT_THAT(c.queue.endpoints, ElementsAre(HostPort{"q1.internal", 7125}));
  EXPECT_EQ(c.delivery.retry_initial, absl::Seconds(10));
  EXPECT_EQ(c.delivery.retry_max, absl::Hours(1));
  EXPECT_EQ(c.delivery.max_queue_lifetime, absl::Hours(72));
  EXPECT_EQ(c.delivery.delay_warning, absl::Hours(4));
  EXPECT_EQ(c.delivery.connections_per_domain, 2u);
  EXPECT_EQ(c.delivery.smtp_port, 2526);
  EXPECT_EQ(c.delivery.lease_duration, absl::Seconds(45));
  EXPECT_THAT(c.dns.servers, ElementsAre(HostPort{"127.0.0.1", 5353}, HostPort{"192.0.2.53", 53},
                                         HostPort{"2001:db8::53", 53}));
  EXPECT_EQ(c.http.listen, (HostPort{"0.0.0.0", 9090}));
  EXPECT_EQ(c.cluster_tls.ca, "/etc/tls/ca.pem");
  EXPECT_EQ(c.cluster_tls.cert, "/etc/tls/node.pem");
  EXPECT_EQ(c.cluster_tls.key, "/etc/tls/node.key");
  EXPECT_TRUE(c.cluster_tls.enabled());
  EXPECT_TRUE(c.filters.greylist.enabled);
  EXPECT_EQ(c.filters.greylist.delay, absl::Seconds(1));
  EXPECT_EQ(c.filters.greylist.retry_window, absl::Hours(1));
  EXPECT_EQ(c.filters.greylist.auto_allow_after, 0u);
  EXPECT_THAT(c.filters.greylist.allow, ElementsAre("198.51.100.0/24"));
  EXPECT_TRUE(c.filters.dnsbl.enabled);
  EXPECT_THAT(c.filters.dnsbl.zones,
              ElementsAre(DnsblZone{"bl.example.org", {"127.0.0.2", "127.0.0.10"}},
                          DnsblZone{"zen.spamhaus.org", {}}));
  EXPECT_THAT(c.filters.dnsbl.allow_zones,
              ElementsAre(DnsblZone{"list.dnswl.org", {"127.0.15.3"}}));
  EXPECT_TRUE(c.filters.rdns.enabled);
  EXPECT_EQ(c.filters.rdns.require, RdnsRequirement::kFcrdns);
  EXPECT_FALSE(c.filters.sender.enabled);
  EXPECT_FALSE(c.filters.headers.enabled);
  EXPECT_EQ(c.filters.headers.max_size, 32u << 10);
  EXPECT_EQ(c.filters.callout.timeout, absl::Seconds(3));
  EXPECT_EQ(c.filters.callout.positive_ttl, absl::Hours(2));
  EXPECT_EQ(c.filters.callout.negative_ttl, absl::Minutes(10));
  EXPECT_EQ(c.filters.callout.cache_size, 50u);
  EXPECT_EQ(c.filters.callout.threads, 2u);
  EXPECT_EQ(c.filters.callout.unreachable_ttl, absl::Seconds(5));
  ASSERT_EQ(c.domains.size(), 2u);
  const DomainConfig& d = c.domains[0];
  EXPECT_EQ(d.name, "example.com");
  EXPECT_THAT(d.primary, ElementsAre(HostPort{"mx1.example.com", 25}, HostPort{"192.0.2.10", 2525},
                                     HostPort{"2001:db8::10", 25}));
  EXPECT_EQ(d.tls, DomainTls::kRequired);
  EXPECT_THAT(d.recipients, ElementsAre("alice", "Bob@example.com"));
  EXPECT_EQ(d.recipients_file, "/etc/backstop/example.com.recipients");
  EXPECT_TRUE(d.recipient_callout);
  EXPECT_EQ(d.max_queued_messages, 10u);
  EXPECT_EQ(d.max_queued_bytes, 123456789u);
  EXPECT_EQ(d.max_monthly_bytes, 5'000'000'000u);
  EXPECT_EQ(d.max_daily_connections, 7u);
  EXPECT_EQ(c.domains[1].name, "example.org");
  EXPECT_THAT(c.warnings, IsEmpty());
}

TEST(ConfigTest, FilterTablesMayBeWrittenAsSections) {
  const Config c = Parse("[filters.rdns]\nenabled = true\nrequire = \"fcrdns\"\n");
  EXPECT_TRUE(c.filters.rdns.enabled);
  EXPECT_EQ(c.filters.rdns.require, RdnsRequirement::kFcrdns);
}

TEST(ConfigTest, ReportsTomlSyntaxErrorsWithLineAndColumn) {
  EXPECT_THAT(Errors("[node]\nid = = 2\n"), StartsWith("t.toml:2:6: TOML syntax error: "));
}

TEST(ConfigTest, ReportsDuplicateTomlKeysAsSyntaxErrors) {
  EXPECT_THAT(Errors("[node]\nid = 1\nid = 2\n"), StartsWith("t.toml:3:"));
}

TEST(ConfigTest, RejectsUnknownTopLevelTable) {
  EXPECT_EQ(Errors("[smpt]\nlisten = []\n"), "t.toml:1:2: smpt: unknown key");
}

TEST(ConfigTest, RejectsUnknownKeyInSection) {
  EXPECT_EQ(Errors("[smtp]\nlisten = [\"127.0.0.1:25\"]\nlistne = 1\n"),
            "t.toml:3:1: smtp.listne: unknown key");
}

TEST(ConfigTest, RejectsUnknownKeyInsideInlineFilterTable) {
  EXPECT_EQ(Errors("[filters]\ngreylist = { enabled = false, dleay = \"5m\" }\n"),
            "t.toml:2:31: filters.greylist.dleay: unknown key");
}

TEST(ConfigTest, RejectsUnknownFilter) {
  EXPECT_EQ(Errors("[filters]\nspf = { enabled = true }\n"),
            "t.toml:2:1: filters.spf: unknown key");
}

TEST(ConfigTest, RejectsUnknownKeyInDomain) {
  EXPECT_EQ(Errors("[[domain]]\nname = \"example.com\"\nrecipents = []\n"),
            "t.toml:3:1: domain[0].recipents: unknown key");
}

TEST(ConfigTest, RejectsSectionThatIsNotATable) {
  EXPECT_EQ(Errors("node = 5\n"), "t.toml:1:8: node: expected a table, got 5");
  EXPECT_EQ(
      Errors("smtp = 5\nqueue = 6\n"),
      "t.toml:1:8: smtp: expected a table, got 5\nt.toml:2:9: queue: expected a table, got 6");
}

TEST(ConfigTest, ReportsOneMistakeOnceNotAgainThroughItsConsequences) {
  // A bad element leaves the list empty, which would also break "ingest needs smtp.listen".
  EXPECT_EQ(Errors("[smtp]\nlisten = [25]\n"),
            "t.toml:2:11: smtp.listen[0]: expected a string, got 25");
  EXPECT_EQ(Errors("[smtp]\ntls_cert = 5\ntls_key = \"/k\"\n"),
            "t.toml:2:12: smtp.tls_cert: expected a string, got 5");
  EXPECT_EQ(Errors("[node]\nid = 0\n"), "t.toml:2:6: node.id: must be at least 1, got 0");
}

TEST(ConfigTest, RejectsWrongTypes) {
  EXPECT_EQ(Errors("[node]\nid = \"1\"\n"), "t.toml:2:6: node.id: expected an integer, got \"1\"");
  EXPECT_EQ(Errors("[smtp]\nproxy_protocol = \"yes\"\n"),
            "t.toml:2:18: smtp.proxy_protocol: expected true or false, got \"yes\"");
  EXPECT_EQ(
      Errors("[smtp]\ncommit_timeout = 30\n"),
      "t.toml:2:18: smtp.commit_timeout: expected a duration like \"30s\" or \"15m\", got 30");
  EXPECT_EQ(Errors("[smtp]\ntls_cert = 1\n"),
            "t.toml:2:12: smtp.tls_cert: expected a string, got 1");
  EXPECT_EQ(Errors("[smtp]\nlisten = \"127.0.0.1:25\"\n"),
            "t.toml:2:10: smtp.listen: expected an array of strings, got \"127.0.0.1:25\"");
  EXPECT_EQ(Errors("[smtp]\nlisten = [25]\n"),
            "t.toml:2:11: smtp.listen[0]: expected a string, got 25");
}

TEST(ConfigTest, RejectsMalformedSize) {
  EXPECT_EQ(Errors("[smtp]\nmax_message_size = \"lots\"\n"),
            "t.toml:2:20: smtp.max_message_size: expected a size like \"50MiB\" or an integer, got "
            "\"lots\"");
  EXPECT_EQ(Errors("[smtp]\nmax_message_size = -1\n"),
            "t.toml:2:20: smtp.max_message_size: must not be negative, got -1");
  EXPECT_EQ(Errors("[smtp]\nmax_message_size = 0\n"),
            "t.toml:2:20: smtp.max_message_size: must be at least 1B, got 0B");
  EXPECT_EQ(Errors("[smtp]\nmax_message_size = \"99999999TiB\"\n"),
            "t.toml:2:20: smtp.max_message_size: size \"99999999TiB\" is too large");
}

TEST(ConfigTest, RejectsMalformedDuration) {
  EXPECT_EQ(Errors("[delivery]\nretry_initial = \"-1m\"\n"),
            "t.toml:2:17: delivery.retry_initial: expected a duration like \"30s\" or \"15m\", "
            "got \"-1m\"");
  EXPECT_EQ(Errors("[delivery]\nretry_initial = \"99999999999999d\"\n"),
            "t.toml:2:17: delivery.retry_initial: duration \"99999999999999d\" is too large");
}

TEST(ConfigTest, RejectsOutOfRangeValues) {
  EXPECT_EQ(Errors("[node]\nid = 0\n"), "t.toml:2:6: node.id: must be at least 1, got 0");
  EXPECT_EQ(Errors("[smtp]\nmax_recipients = 99\n"),
            "t.toml:2:18: smtp.max_recipients: must be between 100 and 4294967295, got 99");
  EXPECT_EQ(Errors("[smtp]\ncommit_timeout = \"0s\"\n"),
            "t.toml:2:18: smtp.commit_timeout: must be greater than 0, got \"0s\"");
  EXPECT_EQ(Errors("[delivery]\nconnections_per_domain = 0\n"),
            "t.toml:2:26: delivery.connections_per_domain: must be between 1 and 10000, got 0");
  EXPECT_THAT(Errors("[delivery]\nlease_duration = \"10ms\"\n"),
              HasSubstr("delivery.lease_duration"));
  EXPECT_EQ(Errors("[delivery]\nsmtp_port = 65536\n"),
            "t.toml:2:13: delivery.smtp_port: must be between 1 and 65535, got 65536");
  EXPECT_EQ(Errors("[[domain]]\nname = \"a.example\"\nmax_queued_messages = 0\n"),
            "t.toml:3:23: domain[0].max_queued_messages: must be at least 1, got 0");
}

TEST(ConfigTest, AcceptsZeroDelayWarning) {
  EXPECT_EQ(Parse("[delivery]\ndelay_warning = \"0s\"\n").delivery.delay_warning,
            absl::ZeroDuration());
}

TEST(ConfigTest, RejectsBadListenAddresses) {
  EXPECT_THAT(Errors("[smtp]\nlisten = [\"127.0.0.1:65536\"]\n"),
              StartsWith("t.toml:2:11: smtp.listen[0]: \"127.0.0.1:65536\": port 65536 is above"));
  EXPECT_THAT(Errors("[smtp]\nlisten = [\"127.0.0.1\"]\n"),
              StartsWith("t.toml:2:11: smtp.listen[0]: \"127.0.0.1\": missing port"));
  EXPECT_THAT(Errors("[http]\nlisten = \"::1:80\"\n"),
              StartsWith("t.toml:2:10: http.listen: \"::1:80\": write IPv6 addresses in brackets"));
  EXPECT_THAT(Errors("[queue]\nlisten = \"bad_host:1\"\n"),
              StartsWith("t.toml:2:10: queue.listen: \"bad_host:1\": \"bad_host\" is neither"));
  EXPECT_EQ(Errors("[smtp]\nlisten = [\"127.0.0.1:25\", \"127.0.0.1:25\"]\n"),
            "t.toml:2:27: smtp.listen[1]: duplicate address \"127.0.0.1:25\"");
}

TEST(ConfigTest, AcceptsPortZeroForListening) {
  const Config c = Parse("[smtp]\nlisten = [\"127.0.0.1:0\"]\n[http]\nlisten = \"127.0.0.1:0\"\n");
  EXPECT_EQ(c.smtp.listen[0].port, 0);
  EXPECT_EQ(c.http.listen.port, 0);
}

TEST(ConfigTest, RejectsEmptyDuplicateAndUnknownRoles) {
  EXPECT_EQ(Errors("[node]\nroles = []\n"),
            "t.toml:2:9: node.roles: must name at least one of ingest, queue, delivery");
  EXPECT_EQ(Errors("[node]\nroles = [\"queue\", \"queue\"]\n"),
            "t.toml:2:19: node.roles[1]: duplicate role \"queue\"");
  EXPECT_EQ(Errors("[node]\nroles = [\"relay\"]\n"),
            "t.toml:2:10: node.roles[0]: unknown role \"relay\" (use ingest, queue, delivery)");
}

TEST(ConfigTest, ParseRoleIsTheInverseOfRoleName) {
  for (Role role : RoleSet::All().ToVector()) {
    EXPECT_EQ(ParseRole(RoleName(role)), role);
  }
  EXPECT_EQ(ParseRole("Queue"), std::nullopt);
  EXPECT_EQ(ParseRole(""), std::nullopt);
}

TEST(ConfigTest, RoleOverrideReplacesTheFilesRoles) {
  RoleSet queue_only;
  queue_only.Add(Role::kQueue);
  absl::StatusOr<Config> config = ParseConfig("[node]\nroles = [\"ingest\", \"queue\"]\n", "t.toml",
                                              ConfigOverrides{.roles = queue_only});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->node.roles, queue_only);
}

TEST(ConfigTest, RoleOverrideIsValidatedLikeTheFile) {
  // The file is valid for its own roles; without the queue role the node needs endpoints.
  RoleSet ingest_only;
  ingest_only.Add(Role::kIngest);
  absl::StatusOr<Config> config = ParseConfig("[node]\nroles = [\"ingest\", \"queue\"]\n", "t.toml",
                                              ConfigOverrides{.roles = ingest_only});
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(std::string(config.status().message()),
              HasSubstr("queue.endpoints: is empty but this node has no queue role"));
}

TEST(ConfigTest, RejectsBadNodeHostnameAndDataDir) {
  EXPECT_EQ(
      Errors("[node]\nhostname = \"mx_1.example\"\n"),
      "t.toml:2:12: node.hostname: expected a fully qualified DNS name, got \"mx_1.example\"");
  EXPECT_EQ(Errors("[node]\ndata_dir = \"\"\n"), "t.toml:2:12: node.data_dir: must not be empty");
}

TEST(ConfigTest, RejectsTlsCertWithoutKey) {
  EXPECT_EQ(Errors("[smtp]\ntls_cert = \"/x.pem\"\n"),
            "t.toml:2:12: smtp.tls_cert: set without smtp.tls_key (set both for STARTTLS, or "
            "neither)");
  EXPECT_EQ(Errors("[smtp]\ntls_key = \"/x.key\"\n"),
            "t.toml:2:11: smtp.tls_key: set without smtp.tls_cert (set both for STARTTLS, or "
            "neither)");
}

TEST(ConfigTest, RejectsProxyProtocolWithoutTrustedProxies) {
  EXPECT_EQ(Errors("[smtp]\nproxy_protocol = true\n"),
            "t.toml:2:18: smtp.proxy_protocol: is true but smtp.trusted_proxies is empty");
}

TEST(ConfigTest, RejectsMalformedCidrs) {
  EXPECT_EQ(Errors("[smtp]\nproxy_protocol = true\ntrusted_proxies = [\"10.0.0.0/33\"]\n"),
            "t.toml:3:20: smtp.trusted_proxies[0]: expected a CIDR like \"10.0.0.0/8\" or an IP "
            "address, got \"10.0.0.0/33\"");
  EXPECT_THAT(Errors("[filters]\ngreylist = { allow = [\"10.0.0.0/33\"] }\n"),
              StartsWith("t.toml:2:23: filters.greylist.allow[0]: expected a CIDR"));
}

TEST(ConfigTest, WarnsAboutTrustedProxiesWithoutProxyProtocol) {
  const Config c = Parse("[smtp]\ntrusted_proxies = [\"10.0.0.0/8\"]\n");
  EXPECT_THAT(c.warnings, testing::Contains("t.toml:2: smtp.trusted_proxies: ignored because "
                                            "smtp.proxy_protocol is false"));
}

TEST(ConfigTest, RejectsMalformedPeers) {
  EXPECT_EQ(Errors("[queue]\npeers = [\"1@127.0.0.1:7025\", \"127.0.0.1:7026\"]\n"),
            "t.toml:2:30: queue.peers[1]: expected \"id@host:port\" with id >= 1, got "
            "\"127.0.0.1:7026\"");
  EXPECT_EQ(Errors("[queue]\npeers = [\"1@127.0.0.1:7025\", \"0@127.0.0.1:7026\"]\n"),
            "t.toml:2:30: queue.peers[1]: expected \"id@host:port\" with id >= 1, got "
            "\"0@127.0.0.1:7026\"");
  EXPECT_EQ(Errors("[queue]\npeers = [\"1@127.0.0.1:0\"]\n"),
            "t.toml:2:10: queue.peers[0]: port 0 cannot be connected to");
}

TEST(ConfigTest, RejectsDuplicatePeerIdsAndAddresses) {
  EXPECT_EQ(Errors("[queue]\npeers = [\"1@a.internal:7025\", \"1@b.internal:7025\", "
                   "\"3@c.internal:7025\"]\n"),
            "t.toml:2:31: queue.peers[1]: duplicate voter id 1");
  EXPECT_EQ(Errors("[queue]\npeers = [\"1@a.internal:7025\", \"2@a.internal:7025\", "
                   "\"3@c.internal:7025\"]\n"),
            "t.toml:2:31: queue.peers[1]: duplicate voter address a.internal:7025");
}

TEST(ConfigTest, JoiningNodeNeedNotBeAmongThePeers) {
  const Config c = Parse(
      "[node]\nid = 4\n[queue]\njoin = true\nsnapshot_entries = 300\n"
      "peers = [\"1@a.internal:7025\", \"2@b.internal:7025\", \"3@c.internal:7025\", "
      "\"5@e.internal:7025\"]\n");
  EXPECT_TRUE(c.queue.join);
  EXPECT_EQ(c.queue.snapshot_entries, 300u);
  // Four listed voters: the count is not the joiner's, so no "use an odd number" warning.
  for (const std::string& warning : c.warnings) {
    EXPECT_EQ(warning.find("queue.peers"), std::string::npos) << warning;
  }
}

TEST(ConfigTest, QueueDefaultsFoundAClusterWithSnapshotsEvery10000Entries) {
  const Config c = Parse("");
  EXPECT_FALSE(c.queue.join);
  EXPECT_EQ(c.queue.snapshot_entries, 10000u);
  EXPECT_EQ(Errors("[queue]\nsnapshot_entries = 0\n"),
            "t.toml:2:20: queue.snapshot_entries: must be at least 1, got 0");
}

TEST(ConfigTest, QueueMinFreeSpaceIsASizeDefaulting128MiBAnd0TurnsItOff) {
  EXPECT_EQ(Parse("").queue.min_free_space, uint64_t{128} << 20);
  EXPECT_EQ(Parse("[queue]\nmin_free_space = \"512MiB\"\n").queue.min_free_space,
            uint64_t{512} << 20);
  EXPECT_EQ(Parse("[queue]\nmin_free_space = 0\n").queue.min_free_space, 0u);
  EXPECT_EQ(Errors("[queue]\nmin_free_space = \"lots\"\n"),
            "t.toml:2:18: queue.min_free_space: expected a size like \"50MiB\" or an integer, got "
            "\"lots\"");
}

TEST(ConfigTest, RejectsPeersWithoutThisQueueNode) {
  EXPECT_EQ(Errors("[node]\nid = 4\n[queue]\npeers = [\"1@a.internal:7025\"]\n"),
            "t.toml:4:9: queue.peers: does not contain this node's id 4 (node.id), but this node "
            "has the queue role and must be a voter");
  // The default peers ("1@...") do not name node 4 either; no [queue] table = no position.
  EXPECT_EQ(Errors("[node]\nid = 4\n"),
            "t.toml: queue.peers: does not contain this node's id 4 (node.id), but this node has "
            "the queue role and must be a voter");
  EXPECT_EQ(Errors("[queue]\npeers = []\n"),
            "t.toml:2:9: queue.peers: is empty but this node has the queue role (list every "
            "voter)");
}

TEST(ConfigTest, AcceptsPeersWithoutThisNodeWhenItHasNoQueueRole) {
  const Config c = Parse(std::string(kIngestOnly) + "peers = [\"7@q.internal:7025\"]\n");
  EXPECT_THAT(c.queue.endpoints, ElementsAre(HostPort{"10.0.0.1", 7025}));
}

TEST(ConfigTest, WarnsAboutEvenNumberOfVoters) {
  const Config c = Parse("[queue]\npeers = [\"1@a.internal:7025\", \"2@b.internal:7025\"]\n");
  EXPECT_THAT(c.warnings, testing::Contains("t.toml:2: queue.peers: 2 voters tolerate no more "
                                            "failures than 1; use an odd number"));
}

TEST(ConfigTest, RequiresEndpointsWithoutTheQueueRole) {
  EXPECT_EQ(Errors("[node]\nroles = [\"delivery\"]\n"),
            "t.toml: queue.endpoints: is empty but this node has no queue role (list the queue "
            "nodes)");
  EXPECT_EQ(Errors("[node]\nroles = [\"ingest\"]\n[queue]\nlisten = \"127.0.0.1:7025\"\n"),
            "t.toml:3:1: queue.endpoints: is empty but this node has no queue role (list the "
            "queue nodes)");
  EXPECT_EQ(Errors(std::string(kIngestOnly) + "[smtp]\nlisten = []\n"),
            "t.toml:6:10: smtp.listen: is empty but this node has the ingest role");
  EXPECT_EQ(Errors("[queue]\nendpoints = [\"q:0\"]\n"),
            "t.toml:2:14: queue.endpoints[0]: port 0 cannot be connected to");
}

TEST(ConfigTest, RejectsRetryMaxBelowRetryInitialAndLateDelayWarning) {
  EXPECT_EQ(Errors("[delivery]\nretry_initial = \"20m\"\n"),
            "t.toml:1:1: delivery.retry_max: (15m) is shorter than delivery.retry_initial (20m)");
  EXPECT_EQ(Errors("[delivery]\ndelay_warning = \"5d\"\n"),
            "t.toml:2:17: delivery.delay_warning: (5d) must be shorter than "
            "delivery.max_queue_lifetime (5d)");
}

TEST(ConfigTest, RejectsDnsServersThatAreNotAddresses) {
  EXPECT_EQ(Errors("[dns]\nservers = [\"ns.example.net\"]\n"),
            "t.toml:2:11: dns.servers: \"ns.example.net\" is not an IP address");
}

TEST(ConfigTest, RejectsPartialClusterTls) {
  EXPECT_EQ(Errors("\n[cluster_tls]\nca = \"/ca.pem\"\n"),
            "t.toml:2:1: cluster_tls: ca, cert and key must be all set or all empty; missing: "
            "cert, key");
}

TEST(ConfigTest, WarnsAboutPlaintextCluster) {
  EXPECT_THAT(Parse("[cluster_tls]\n").warnings,
              testing::Contains(StartsWith("t.toml:1: cluster_tls: empty: gRPC")));
  EXPECT_THAT(Parse("").warnings, testing::Contains(StartsWith("t.toml: cluster_tls: empty")));
}

TEST(ConfigTest, RejectsUnknownEnumValues) {
  EXPECT_EQ(Errors("[filters]\nrdns = { require = \"both\" }\n"),
            "t.toml:2:20: filters.rdns.require: expected \"ptr\" or \"fcrdns\", got \"both\"");
  EXPECT_EQ(
      Errors("[[domain]]\nname = \"a.example\"\ntls = \"always\"\n"),
      "t.toml:3:7: domain[0].tls: expected \"opportunistic\" or \"required\", got \"always\"");
}

TEST(ConfigTest, RejectsGreylistRetryWindowNotLongerThanDelay) {
  EXPECT_EQ(Errors("[filters]\ngreylist = { delay = \"1h\", retry_window = \"1h\" }\n"),
            "t.toml:2:43: filters.greylist.retry_window: (1h) must be longer than the delay (1h)");
}

TEST(ConfigTest, RejectsEnabledDnsblWithoutZonesAndBadZoneNames) {
  EXPECT_EQ(Errors("[filters]\ndnsbl = { enabled = true, zones = [] }\n"),
            "t.toml:2:35: filters.dnsbl.zones: is empty but the dnsbl filter is enabled");
  EXPECT_EQ(Errors("[filters]\ndnsbl = { zones = [\"zen..org\"] }\n"),
            "t.toml:2:20: filters.dnsbl.zones[0]: expected a DNS name, optionally with return "
            "codes like \"bl.example=127.0.0.2,127.0.0.10\", got \"zen..org\"");
}

TEST(ConfigTest, RejectsDnsblReturnCodesOutsideLoopback) {
  EXPECT_THAT(Errors("[filters]\ndnsbl = { zones = [\"bl.example=10.0.0.2\"] }\n"),
              HasSubstr("filters.dnsbl.zones[0]: expected a DNS name, optionally"));
  EXPECT_THAT(Errors("[filters]\ndnsbl = { allow_zones = [\"wl.example=127.0.0.2,\"] }\n"),
              HasSubstr("filters.dnsbl.allow_zones[0]: expected a DNS name, optionally"));
  EXPECT_THAT(Errors("[filters]\ndnsbl = { zones = [\"bl.example=\"] }\n"),
              HasSubstr("filters.dnsbl.zones[0]: expected a DNS name, optionally"));
}

TEST(ConfigTest, RejectsDomainWithoutNameOrWithBadName) {
  EXPECT_EQ(Errors("[[domain]]\nrecipients = [\"a\"]\n"),
            "t.toml:1:1: domain[0].name: missing (every [[domain]] needs a name)");
  EXPECT_EQ(Errors("[[domain]]\nname = \"-bad.example\"\n"),
            "t.toml:2:8: domain[0].name: expected a domain name, got \"-bad.example\"");
}

TEST(ConfigTest, RejectsDuplicateDomainsIgnoringCase) {
  EXPECT_EQ(Errors("[[domain]]\nname = \"example.com\"\n\n[[domain]]\nname = \"EXAMPLE.com\"\n"),
            "t.toml:5:8: domain[1].name: duplicate domain example.com (first at line 2)");
}

TEST(ConfigTest, RejectsDomainWrittenAsSingleTable) {
  EXPECT_EQ(Errors("[domain]\nname = \"example.com\"\n"),
            "t.toml:1:1: domain: expected [[domain]] tables, got a table");
}

TEST(ConfigTest, RejectsBadPrimaries) {
  EXPECT_EQ(Errors("[[domain]]\nname = \"a.example\"\nprimary = [\"mx.a.example:0\"]\n"),
            "t.toml:3:12: domain[0].primary[0]: port 0 cannot be connected to");
  EXPECT_EQ(Errors("[node]\nhostname = \"mx2.a.example\"\n[[domain]]\nname = \"a.example\"\n"
                   "primary = [\"MX2.a.example\"]\n"),
            "t.toml:5:11: domain[0].primary: MX2.a.example is this node (node.hostname): "
            "delivery would loop");
}

TEST(ConfigTest, RejectsRecipientsOfAnotherDomain) {
  EXPECT_EQ(Errors("[[domain]]\nname = \"a.example\"\nrecipients = [\"x@b.example\", \"\"]\n"),
            "t.toml:3:15: domain[0].recipients[0]: \"x@b.example\" is not an address of a.example\n"
            "t.toml:3:30: domain[0].recipients[1]: empty recipient");
  EXPECT_THAT(Errors("[[domain]]\nname = \"a.example\"\nrecipients = [\"a b\"]\n"),
              HasSubstr("contains a space"));
}

TEST(ConfigTest, WarnsAboutDomainsThatAcceptAnyLocalPart) {
  const Config absent = Parse("[[domain]]\nname = \"a.example\"\n");
  EXPECT_THAT(absent.warnings,
              testing::Contains("t.toml:1: domain[0]: no recipients and no recipient_callout: "
                                "accepts any local part of a.example (backscatter risk)"));
  const Config empty = Parse("[[domain]]\nname = \"a.example\"\nrecipients = []\n");
  EXPECT_THAT(empty.warnings,
              testing::Contains("t.toml:3: domain[0].recipients: empty and no recipient_callout: "
                                "accepts any local part of a.example (backscatter risk)"));
  const Config callout = Parse(
      "[[domain]]\nname = \"a.example\"\nprimary = [\"192.0.2.1\"]\nrecipient_callout = true\n");
  EXPECT_THAT(callout.warnings, testing::Not(testing::Contains(HasSubstr("any local part"))));
  const Config file = Parse("[[domain]]\nname = \"a.example\"\nrecipients_file = \"/x\"\n");
  EXPECT_THAT(file.warnings, testing::Not(testing::Contains(HasSubstr("any local part"))));
}

TEST(ConfigTest, RejectsCalloutWithoutPrimary) {
  EXPECT_EQ(Errors("[[domain]]\nname = \"a.example\"\nrecipient_callout = true\n"),
            "t.toml:3:21: domain[0].recipient_callout: is true but the domain has no primary to "
            "ask (set primary)");
}

TEST(ConfigTest, RejectsAnEmptyRecipientsFile) {
  EXPECT_EQ(Errors("[[domain]]\nname = \"a.example\"\nrecipients_file = \"\"\n"),
            "t.toml:3:19: domain[0].recipients_file: must not be empty (leave the key out for no "
            "file)");
}

TEST(ConfigTest, ChecksCalloutAndHeaderKeys) {
  EXPECT_EQ(Errors("[filters]\ncallout = { timeout = \"0s\" }\n"),
            "t.toml:2:23: filters.callout.timeout: must be greater than 0, got \"0s\"");
  EXPECT_EQ(Errors("[filters]\ncallout = { threads = 0 }\n"),
            "t.toml:2:23: filters.callout.threads: must be between 1 and 256, got 0");
  EXPECT_EQ(Errors("[filters]\ncallout = { bogus = 1 }\n"),
            "t.toml:2:13: filters.callout.bogus: unknown key");
  EXPECT_EQ(Errors("[filters]\nheaders = { max_size = 100 }\n"),
            "t.toml:2:24: filters.headers.max_size: must be at least 1KiB, got 100B");
  EXPECT_EQ(Parse("[filters]\ncallout = { cache_size = 0, negative_ttl = \"0s\" }\n")
                .filters.callout.cache_size,
            0u);
}

TEST(ConfigTest, ReadsARecipientsFile) {
  const std::string path = (std::filesystem::path(testing::TempDir()) / "recipients_test").string();
  std::ofstream(path) << "# staff\nalice\n\n  Bob@Example.COM\t\r\n   # gone: carol\n";
  absl::StatusOr<std::vector<std::string>> recipients = ReadRecipientsFile(path, "example.com");
  ASSERT_TRUE(recipients.ok()) << recipients.status();
  EXPECT_THAT(*recipients, ElementsAre("alice", "Bob@example.com"));
  std::ofstream(path) << "alice\nx@other.example\n";
  EXPECT_EQ(std::string(ReadRecipientsFile(path, "example.com").status().message()),
            path + ":2: \"x@other.example\" is not an address of example.com");
  std::filesystem::remove(path);
  EXPECT_EQ(ReadRecipientsFile(path, "example.com").status().code(), absl::StatusCode::kNotFound);
}

TEST(ConfigTest, WarnsWhenDomainQueueCannotHoldOneMaximalMessage) {
  const Config c = Parse(
      "[[domain]]\nname = \"a.example\"\nrecipients = [\"a\"]\nmax_queued_bytes = "
      "\"1MiB\"\n");
  EXPECT_THAT(c.warnings,
              testing::Contains(HasSubstr("t.toml:4: domain[0].max_queued_bytes: (1MiB) is below "
                                          "smtp.max_message_size (50MiB)")));
}

TEST(ConfigTest, WarnsWhenHostnameIsLeftAtItsDefault) {
  EXPECT_THAT(Parse("").warnings,
              testing::Contains("t.toml: node.hostname: not set: using \"mx2.example.net\"; set "
                                "the name this node has in MX records"));
  EXPECT_THAT(Parse("[node]\nid = 1\n").warnings,
              testing::Contains(StartsWith("t.toml:1: node.hostname: not set")));
  EXPECT_THAT(Parse("[node]\nhostname = \"mx.example\"\n").warnings,
              testing::Not(testing::Contains(HasSubstr("node.hostname"))));
}

TEST(ConfigTest, WarnsAboutIngestWithoutDomains) {
  EXPECT_THAT(Parse("").warnings, testing::Contains(StartsWith("t.toml: domain: no [[domain]]")));
}

TEST(ConfigTest, ReportsAllProblemsSortedByPosition) {
  EXPECT_EQ(Errors("[smtp]\nmax_recipients = 5\nbogus = 1\n[node]\nid = 0\n"),
            "t.toml:2:18: smtp.max_recipients: must be between 100 and 4294967295, got 5\n"
            "t.toml:3:1: smtp.bogus: unknown key\n"
            "t.toml:5:6: node.id: must be at least 1, got 0");
}

TEST(ConfigTest, LoadsTheStandaloneExample) {
  const std::string path = std::string(BACKSTOP_SOURCE_DIR) + "/examples/standalone.toml";
  absl::StatusOr<Config> config = LoadConfigFile(path);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->node.id, 1u);
  EXPECT_EQ(config->node.roles, RoleSet::All());
  EXPECT_THAT(config->smtp.listen, ElementsAre(HostPort{"127.0.0.1", 2525}));
  EXPECT_THAT(config->queue.peers, ElementsAre(QueuePeer{1, {"127.0.0.1", 7025}}));
  ASSERT_EQ(config->domains.size(), 1u);
  EXPECT_THAT(config->domains[0].primary, ElementsAre(HostPort{"127.0.0.1", 2526}));
  // Only the plaintext cluster warning: the example lists its recipients.
  EXPECT_THAT(config->warnings, ElementsAre(StartsWith(path + ": cluster_tls: empty")));
}

TEST(ConfigTest, LoadConfigFileUsesThePathAsSource) {
  const std::filesystem::path dir = testing::TempDir();
  const std::string path = (dir / "bad_config_test.toml").string();
  std::ofstream(path) << "[node]\nid = 0\n";
  absl::StatusOr<Config> config = LoadConfigFile(path);
  std::filesystem::remove(path);
  EXPECT_EQ(std::string(config.status().message()),
            path + ":2:6: node.id: must be at least 1, got 0");
}

TEST(ConfigTest, LoadConfigFileReportsMissingFile) {
  EXPECT_EQ(LoadConfigFile("/nonexistent/backstop.toml").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(ConfigTest, SummarisesNodeRolesAddressesDomainsAndVoters) {
  const std::string summary = ConfigSummary(Parse(kEveryKey));
  EXPECT_THAT(summary, HasSubstr("node 3 (mx9.example.net), roles: ingest, queue"));
  EXPECT_THAT(summary, HasSubstr("smtp: 0.0.0.0:25, [::]:25"));
  EXPECT_THAT(summary, HasSubstr("voters: 1@q1.internal:7125, 3@q3.internal:7125, "
                                 "5@[fd00::5]:7125"));
  EXPECT_THAT(summary, HasSubstr("http: 0.0.0.0:9090"));
  EXPECT_THAT(summary, HasSubstr("domains (2): example.com, example.org"));
}

TEST(HostPortTest, ParsesNamesAndAddresses) {
  EXPECT_EQ(*ParseHostPort("mx.example.com:25"), (HostPort{"mx.example.com", 25}));
  EXPECT_EQ(*ParseHostPort("[::1]:7025"), (HostPort{"::1", 7025}));
  EXPECT_EQ(*ParseHostPort("10.1.2.3:65535"), (HostPort{"10.1.2.3", 65535}));
  EXPECT_EQ(*ParseHostPort("mx", 25), (HostPort{"mx", 25}));
  EXPECT_EQ(*ParseHostPort("[2001:db8::1]", 25), (HostPort{"2001:db8::1", 25}));
}

TEST(HostPortTest, RejectsMalformedAddresses) {
  for (const char* text : {"", "mx", ":25", "mx:", "mx:x", "mx:-1", "mx:123456", "[::1", "[::1]25",
                           "[mx]:25", "::1", "300.1.1.1:25", "a..b:25", "mx :25"}) {
    EXPECT_FALSE(ParseHostPort(text).ok()) << text;
  }
}

TEST(HostPortTest, ToStringRoundTrips) {
  for (const HostPort& address : {HostPort{"::1", 25}, HostPort{"mx.example", 2525}}) {
    EXPECT_EQ(*ParseHostPort(address.ToString()), address);
  }
  EXPECT_EQ((HostPort{"::1", 25}).ToString(), "[::1]:25");
}

// --- Greylist allow list, harvest tarpit, connection rate ---------------------------------------

TEST(ConfigTest, GreylistAllowTakesAddressesCidrsAndSenderDomains) {
  const Config c = Parse(
      "[filters]\ngreylist = { allow = [\"192.0.2.7\", \"2001:db8::/32\", \"Partner.example\"] "
      "}\n");
  EXPECT_THAT(c.filters.greylist.allow,
              ElementsAre("192.0.2.7", "2001:db8::/32", "Partner.example"));
  EXPECT_EQ(Errors("[filters]\ngreylist = { allow = [\"bad domain\"] }\n"),
            "t.toml:2:23: filters.greylist.allow[0]: expected a CIDR like \"10.0.0.0/8\", an IP "
            "address or a domain, got \"bad domain\"");
}

TEST(ConfigTest, HarvestDefaultsToOnWithFiveSecondDelay) {
  const Config c = Parse("");
  EXPECT_TRUE(c.filters.harvest.enabled);
  EXPECT_EQ(c.filters.harvest.delay, absl::Seconds(5));
}

TEST(ConfigTest, ReadsHarvestKeys) {
  const Config c = Parse("[filters]\nharvest = { enabled = false, delay = \"250ms\" }\n");
  EXPECT_FALSE(c.filters.harvest.enabled);
  EXPECT_EQ(c.filters.harvest.delay, absl::Milliseconds(250));
  EXPECT_EQ(Parse("[filters]\nharvest = { delay = \"0s\" }\n").filters.harvest.delay,
            absl::ZeroDuration());
}

TEST(ConfigTest, RejectsUnknownHarvestKeys) {
  EXPECT_EQ(Errors("[filters]\nharvest = { delay = \"1s\", after = 3 }\n"),
            "t.toml:2:27: filters.harvest.after: unknown key");
}

TEST(ConfigTest, ConnectionRatePerIpDefaultsToOff) {
  EXPECT_EQ(Parse("").smtp.max_connection_rate_per_ip, 0u);
  EXPECT_EQ(Parse("[smtp]\nmax_connection_rate_per_ip = 30\n").smtp.max_connection_rate_per_ip,
            30u);
  EXPECT_EQ(
      Errors("[smtp]\nmax_connection_rate_per_ip = -1\n"),
      "t.toml:2:30: smtp.max_connection_rate_per_ip: must be between 0 and 4294967295, got -1");
}

}  // namespace
}  // namespace backstop
