#pragma once

// The configuration of a Backstop process, DESIGN §4. The TOML keys are a stable contract:
// every key of §4 has a field here holding exactly the documented default, so a missing
// section or key means "the default". ParseConfig validates everything it can without touching
// the filesystem or the network (TLS files are opened by their users) and reports every problem
// at once, each with its position, so that `backstop --check-config` is one round trip.
//
// These are plain values: build one with ParseConfig / LoadConfigFile, then copy or share it
// read-only between threads.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace backstop {

// A validated "host:port". `host` is an IPv4 literal, an IPv6 literal (written in brackets,
// stored without them) or a DNS name.
struct HostPort {
  std::string host;
  uint16_t port = 0;

  // "host:port", or "[v6]:port" for IPv6 literals; ParseHostPort reads it back.
  std::string ToString() const;
  friend bool operator==(const HostPort&, const HostPort&) = default;
};

// Parses "host:port", "[v6]:port", or, when `default_port` is given, also "host" / "[v6]".
// Accepts port 0 (ephemeral, for listening); callers that connect must refuse it.
absl::StatusOr<HostPort> ParseHostPort(std::string_view text, int default_port = -1);

enum class Role : uint8_t { kIngest, kQueue, kDelivery };

// "ingest", "queue", "delivery".
std::string_view RoleName(Role role);
// The inverse of RoleName; nullopt for any other text.
std::optional<Role> ParseRole(std::string_view name);

// The roles one process runs.
class RoleSet {
 public:
  static RoleSet All();

  bool Has(Role role) const { return (bits_ & Bit(role)) != 0; }
  void Add(Role role) { bits_ |= Bit(role); }
  bool empty() const { return bits_ == 0; }
  // In the fixed order ingest, queue, delivery.
  std::vector<Role> ToVector() const;
  friend bool operator==(const RoleSet&, const RoleSet&) = default;

 private:
  static uint8_t Bit(Role role) { return static_cast<uint8_t>(1u << static_cast<uint8_t>(role)); }
  uint8_t bits_ = 0;
};

struct NodeConfig {
  uint64_t id = 1;
  std::string hostname = "mx2.example.net";
  std::string data_dir = "./data";
  RoleSet roles = RoleSet::All();
};

struct SmtpConfig {
  std::vector<HostPort> listen = {{"127.0.0.1", 2525}};
  uint64_t max_message_size = uint64_t{50} << 20;
  uint32_t max_recipients = 100;
  absl::Duration commit_timeout = absl::Seconds(30);
  std::string tls_cert;  // empty (with tls_key) = no STARTTLS
  std::string tls_key;
  bool proxy_protocol = false;
  std::vector<std::string> trusted_proxies;  // CIDRs ("10.0.0.0/8") or single addresses
  // RFC 5321 §4.5.3.2: time for a complete command line after our previous reply (bytes that
  // dribble in do not extend it), and the longest silence inside DATA/BDAT.
  absl::Duration command_timeout = absl::Minutes(5);
  absl::Duration data_timeout = absl::Minutes(3);
  uint32_t max_errors = 10;              // protocol errors before 421 and close
  uint32_t max_received_headers = 50;    // hop count: 554 5.4.6 at this many Received:
  uint32_t max_connections = 10'000;     // per process; 421 at the banner beyond it
  uint32_t max_connections_per_ip = 50;  // per client address and process
  // New connections per minute per client address and process; 0 = no limit. 421 at the banner.
  uint32_t max_connection_rate_per_ip = 0;
  uint32_t threads = 0;  // io_uring threads; 0 = one per core
};

struct QueuePeer {
  uint64_t id = 0;
  HostPort address;
  friend bool operator==(const QueuePeer&, const QueuePeer&) = default;
};

struct QueueConfig {
  HostPort listen = {"127.0.0.1", 7025};
  std::vector<QueuePeer> peers = {{1, {"127.0.0.1", 7025}}};
  // Empty on a node with the queue role = its own voter, in process.
  std::vector<HostPort> endpoints;
  // A voter that joins a running cluster: on its first start it waits, empty, to be added with
  // the admin API (AddVoter) instead of founding a cluster; `peers` then lists the members it
  // knows, itself not among them.
  bool join = false;
  // Applied entries between two snapshots of the queue state (each one compacts the Raft log).
  uint64_t snapshot_entries = 10'000;
  // Bytes each voter keeps free on its data directory's filesystem: the leader refuses new
  // messages (Append: OVER_LIMIT, LIMIT_QUEUE_STORAGE) while its own free space is below it, so
  // ingest answers 452 before the disk is actually full. 0 = off.
  uint64_t min_free_space = uint64_t{128} << 20;
};

struct DeliveryConfig {
  absl::Duration retry_initial = absl::Minutes(1);
  absl::Duration retry_max = absl::Minutes(15);
  absl::Duration max_queue_lifetime = absl::Hours(5 * 24);
  absl::Duration delay_warning = absl::ZeroDuration();  // 0 = no delayed-delivery DSN
  uint32_t connections_per_domain = 8;
  uint16_t smtp_port = 25;
  // How long a worker holds the entries it leased: short, so that a crashed worker's entries
  // are due again soon; a longer delivery extends its leases half a lease before they expire.
  absl::Duration lease_duration = absl::Minutes(2);
};

struct DnsConfig {
  std::vector<HostPort> servers;  // IP literals; port 53 when omitted; empty = resolv.conf
};

struct HttpConfig {
  HostPort listen = {"127.0.0.1", 8025};
};

// All three set = mTLS on every gRPC connection; all empty = plaintext.
struct ClusterTlsConfig {
  std::string ca;
  std::string cert;
  std::string key;
  bool enabled() const { return !ca.empty(); }
};

struct GreylistConfig {
  bool enabled = false;
  absl::Duration delay = absl::Minutes(5);
  absl::Duration retry_window = absl::Hours(2 * 24);
  uint32_t auto_allow_after = 5;  // 0 = never auto-allow a client
  // Never greylisted: client CIDRs or single addresses, and sender domains (with their
  // subdomains); an entry that parses as an address or CIDR is one.
  std::vector<std::string> allow;
};

// The directory-harvest tarpit (DESIGN §3.3): after 10 rejected recipients in a session every
// RCPT reply waits `delay`; after 20 the session ends with 421.
struct HarvestConfig {
  bool enabled = true;
  absl::Duration delay = absl::Seconds(5);
};

// A DNSBL or DNSWL zone, written "zen.spamhaus.org" or "bl.example=127.0.0.2,127.0.0.10".
struct DnsblZone {
  std::string name;
  // The A records that mean "listed", in dotted-quad form; empty = any of 127.0.0.2 to
  // 127.0.0.255 (RFC 5782 §2.1).
  std::vector<std::string> codes;
  friend bool operator==(const DnsblZone&, const DnsblZone&) = default;
};

struct DnsblConfig {
  bool enabled = false;
  std::vector<DnsblZone> zones = {{"zen.spamhaus.org", {}}};
  std::vector<DnsblZone> allow_zones;
};

enum class RdnsRequirement : uint8_t { kPtr, kFcrdns };

struct RdnsConfig {
  bool enabled = false;
  RdnsRequirement require = RdnsRequirement::kPtr;
};

struct SenderFilterConfig {
  bool enabled = true;
};

struct HeadersFilterConfig {
  bool enabled = true;
  uint64_t max_size = uint64_t{64} << 10;  // the header section, up to the first empty line
};

// The recipient callout to a domain's primary ([[domain]] recipient_callout): how long one
// probe may take, how long its answers are remembered, and how many are.
struct CalloutConfig {
  absl::Duration timeout = absl::Seconds(10);  // one whole probe of one primary host
  absl::Duration positive_ttl = absl::Hours(24);
  absl::Duration negative_ttl = absl::Hours(1);
  uint64_t cache_size = 100'000;  // addresses remembered; the oldest go first
  uint32_t threads = 4;           // probes at once (each blocks a thread for up to `timeout`)
  // A primary that gave no definite answer is not asked again for this long (0 = always ask).
  absl::Duration unreachable_ttl = absl::Minutes(1);
};

struct FiltersConfig {
  GreylistConfig greylist;
  HarvestConfig harvest;
  DnsblConfig dnsbl;
  RdnsConfig rdns;
  SenderFilterConfig sender;
  HeadersFilterConfig headers;
  CalloutConfig callout;
};

enum class DomainTls : uint8_t { kOpportunistic, kRequired };

struct DomainConfig {
  std::string name;               // lower-cased
  std::vector<HostPort> primary;  // empty = MX records with lower preference than ours
  DomainTls tls = DomainTls::kOpportunistic;
  // Full addresses (domain part lower-cased) or bare local parts, as written otherwise.
  // Empty = accept any local part.
  std::vector<std::string> recipients;
  // More entries, one a line (ReadRecipientsFile), read by the ingest role at startup and on
  // SIGHUP (not by ParseConfig); empty = none.
  std::string recipients_file;
  bool recipient_callout = false;  // requires `primary`
  uint64_t max_queued_messages = 100'000;
  uint64_t max_queued_bytes = uint64_t{1} << 30;
  uint64_t max_monthly_bytes = uint64_t{10} << 30;
  uint64_t max_daily_connections = 100'000;
};

struct Config {
  NodeConfig node;
  SmtpConfig smtp;
  QueueConfig queue;
  DeliveryConfig delivery;
  DnsConfig dns;
  HttpConfig http;
  ClusterTlsConfig cluster_tls;
  FiltersConfig filters;
  std::vector<DomainConfig> domains;  // the [[domain]] tables, in file order
  // Legal but suspicious settings, "<source>:<line>: <key>: <what>" (no line when the cause is
  // a missing key), for the binary to log at startup.
  std::vector<std::string> warnings;
};

// Settings given on the command line, applied before the cross-section checks so that they are
// validated exactly like the file's own values.
struct ConfigOverrides {
  std::optional<RoleSet> roles;  // --role
};

// Parses and validates a TOML document. On failure the status (InvalidArgument) message has
// one line per problem, "<source>:<line>:<column>: <dotted key>: <problem>", sorted by
// position; problems that concern a key absent from the file point at its enclosing table, or
// carry no position when that is absent too.
absl::StatusOr<Config> ParseConfig(std::string_view toml_text, std::string_view source_name,
                                   const ConfigOverrides& overrides = {});

// Reads `path` and parses it with `path` as the source name.
absl::StatusOr<Config> LoadConfigFile(const std::string& path,
                                      const ConfigOverrides& overrides = {});

// The entries of a [[domain]] recipients_file for `domain` (lower-cased): one full address of
// the domain or bare local part a line, in the form `recipients` stores them; blank lines and
// lines starting with '#' (after spaces) are ignored. Errors name the file and line.
absl::StatusOr<std::vector<std::string>> ReadRecipientsFile(const std::string& path,
                                                            const std::string& domain);

// A few lines for `backstop --check-config`: node, roles, listen addresses, domains, voters.
std::string ConfigSummary(const Config& config);

}  // namespace backstop
