#include "common/config.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <toml++/toml.h>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "absl/status/status.h"
#include "common/status.h"
#include "common/units.h"

// toml++ is the Debian shared library, which exports only its exception-throwing API
// (toml::v3::ex), so it cannot be built with TOML_EXCEPTIONS=0 here. The one call that throws,
// toml::parse, is wrapped below and the exception never leaves this file; toml++ stays out of
// every header.

namespace backstop {
namespace {

constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();
constexpr int64_t kUint32Max = std::numeric_limits<uint32_t>::max();

// 1-based, as editors show them; line 0 = no position.
struct Position {
  int64_t line = 0;
  int64_t column = 0;
};

Position PositionOf(const toml::source_region& region) {
  return {static_cast<int64_t>(region.begin.line), static_cast<int64_t>(region.begin.column)};
}

struct Problem {
  Position position;
  std::string text;
};

std::string ToLower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) {
    return static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  });
  return out;
}

// What a value is, for "expected X, got Y": strings and scalars show themselves.
std::string Describe(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::string:
      return fmt::format("\"{}\"", node.as_string()->get());
    case toml::node_type::integer:
      return std::to_string(node.as_integer()->get());
    case toml::node_type::floating_point:
      return fmt::format("{}", node.as_floating_point()->get());
    case toml::node_type::boolean:
      return node.as_boolean()->get() ? "true" : "false";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::table:
      return "a table";
    default:
      return "a date or time";
  }
}

std::string RangeText(int64_t min, int64_t max, int64_t value) {
  if (max == kInt64Max) {
    return fmt::format("must be at least {}, got {}", min, value);
  }
  return fmt::format("must be between {} and {}, got {}", min, max, value);
}

bool IsIpv4(const std::string& text) {
  in_addr addr{};
  return inet_pton(AF_INET, text.c_str(), &addr) == 1;
}

bool IsIpv6(const std::string& text) {
  in6_addr addr{};
  return inet_pton(AF_INET6, text.c_str(), &addr) == 1;
}

// RFC 1123 host name in ASCII (IDNs in their xn-- form); the last label may not be all digits
// (RFC 3696 §2), which keeps "300.1.1.1" from passing as a name.
bool IsDnsName(std::string_view name) {
  if (name.empty() || name.size() > 253) {
    return false;
  }
  size_t start = 0;
  bool last_all_digits = false;
  while (start <= name.size()) {
    size_t end = name.find('.', start);
    if (end == std::string_view::npos) {
      end = name.size();
    }
    const std::string_view label = name.substr(start, end - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') {
      return false;
    }
    last_all_digits = true;
    for (char c : label) {
      const bool digit = c >= '0' && c <= '9';
      const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
      if (!digit && !alpha && c != '-') {
        return false;
      }
      last_all_digits = last_all_digits && digit;
    }
    start = end + 1;
  }
  return !last_all_digits;
}

// "10.0.0.0/8", "2001:db8::/32", or a single address.
bool IsCidr(std::string_view text) {
  const size_t slash = text.find('/');
  const std::string address(text.substr(0, slash));
  const bool v4 = IsIpv4(address);
  if (!v4 && !IsIpv6(address)) {
    return false;
  }
  if (slash == std::string_view::npos) {
    return true;
  }
  const std::string_view length = text.substr(slash + 1);
  if (length.empty() || length.size() > 3 ||
      !std::all_of(length.begin(), length.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return false;
  }
  return std::stoi(std::string(length)) <= (v4 ? 32 : 128);
}

absl::StatusOr<uint16_t> ParsePort(std::string_view text) {
  if (text.empty() || text.size() > 5 ||
      !std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return absl::InvalidArgumentError(fmt::format("invalid port \"{}\"", text));
  }
  const int port = std::stoi(std::string(text));
  if (port > 65535) {
    return absl::InvalidArgumentError(fmt::format("port {} is above 65535", port));
  }
  return static_cast<uint16_t>(port);
}

// Errors carry a column (they point at what to fix); warnings a line only.
enum class Severity : uint8_t { kError, kWarning };

// Collects the errors and warnings of one ParseConfig call, rendered as config.h promises.
// Lives on ParseConfig's stack; single-threaded.
class Diagnostics {
 public:
  explicit Diagnostics(std::string_view source) : source_(source) {}

  void Error(Position position, std::string_view key, std::string_view problem) {
    errors_.push_back({position, Render(position, Severity::kError, key, problem)});
    // "smtp.listen[1]" fails "smtp.listen" too.
    failed_keys_.emplace(key.substr(0, key.find('[')));
  }
  void Warn(Position position, std::string_view key, std::string_view what) {
    warnings_.push_back(Render(position, Severity::kWarning, key, what));
  }

  bool has_errors() const { return !errors_.empty(); }

  // Whether a dotted key already has an error. Checks that combine keys skip failed ones, so
  // that one mistake is reported once rather than again through its consequences.
  bool Failed(std::string_view key) const { return failed_keys_.contains(std::string(key)); }

  std::string ErrorText() {
    std::stable_sort(errors_.begin(), errors_.end(), [](const Problem& a, const Problem& b) {
      // Problems without a position (line 0) go last.
      const auto key = [](const Problem& p) {
        return std::pair(p.position.line == 0 ? kInt64Max : p.position.line, p.position.column);
      };
      return key(a) < key(b);
    });
    std::string text;
    for (const Problem& problem : errors_) {
      if (!text.empty()) {
        text += '\n';
      }
      text += problem.text;
    }
    return text;
  }

  std::vector<std::string> TakeWarnings() { return std::move(warnings_); }

 private:
  std::string Render(Position position, Severity severity, std::string_view key,
                     std::string_view text) const {
    if (position.line == 0) {
      return fmt::format("{}: {}: {}", source_, key, text);
    }
    if (severity == Severity::kError) {
      return fmt::format("{}:{}:{}: {}: {}", source_, position.line, position.column, key, text);
    }
    return fmt::format("{}:{}: {}: {}", source_, position.line, key, text);
  }

  std::string source_;
  std::vector<Problem> errors_;
  std::vector<std::string> warnings_;
  std::set<std::string> failed_keys_;
};

// One TOML table being read, with its dotted path; reads report into the Diagnostics. A
// missing table is a Section without `table`: every read leaves the default in place. Borrows
// the parsed document and the Diagnostics, both on ParseConfig's stack; single-threaded.
class Section {
 public:
  Section(const toml::table* table, std::string path, Position position, Diagnostics* diag)
      : table_(table), path_(std::move(path)), position_(position), diag_(diag) {}

  const std::string& path() const { return path_; }
  Position position() const { return position_; }
  bool present() const { return table_ != nullptr; }

  std::string Key(std::string_view key) const {
    return path_.empty() ? std::string(key) : fmt::format("{}.{}", path_, key);
  }

  const toml::node* Get(std::string_view key) const {
    return table_ == nullptr ? nullptr : table_->get(key);
  }

  // Where a key's value is, or the table when the key is absent: the place to point at.
  Position PositionOf(std::string_view key) const {
    const toml::node* node = Get(key);
    return node != nullptr ? backstop::PositionOf(node->source()) : position_;
  }

  void Error(std::string_view key, std::string_view problem) const {
    diag_->Error(PositionOf(key), Key(key), problem);
  }
  void Warn(std::string_view key, std::string_view what) const {
    diag_->Warn(PositionOf(key), Key(key), what);
  }

  // Whether any of `keys` (relative to this section) already has an error.
  bool AnyFailed(std::initializer_list<std::string_view> keys) const {
    return std::any_of(keys.begin(), keys.end(),
                       [&](std::string_view key) { return diag_->Failed(Key(key)); });
  }

  void RejectUnknownKeys(std::initializer_list<std::string_view> known) const {
    if (table_ == nullptr) {
      return;
    }
    for (auto&& [key, value] : *table_) {
      if (std::find(known.begin(), known.end(), key.str()) == known.end()) {
        diag_->Error(backstop::PositionOf(key.source()), Key(key.str()), "unknown key");
      }
    }
  }

  // A nested table (`[smtp]`, `greylist = { ... }`); absent = a Section without table.
  Section Sub(std::string_view key) const {
    const toml::node* node = Get(key);
    if (node == nullptr) {
      return Section(nullptr, Key(key), Position{}, diag_);
    }
    if (!node->is_table()) {
      Error(key, fmt::format("expected a table, got {}", Describe(*node)));
      return Section(nullptr, Key(key), Position{}, diag_);
    }
    return Section(node->as_table(), Key(key), backstop::PositionOf(node->source()), diag_);
  }

  // The value of `key` if present and of TOML type T; reports a type error when it is not.
  template <typename T>
  const toml::value<T>* GetTyped(std::string_view key, std::string_view expected) const {
    const toml::node* node = Get(key);
    if (node == nullptr) {
      return nullptr;
    }
    const toml::value<T>* value = node->as<T>();
    if (value == nullptr) {
      Error(key, fmt::format("expected {}, got {}", expected, Describe(*node)));
    }
    return value;
  }

  void ReadBool(std::string_view key, bool* out) const {
    if (const auto* value = GetTyped<bool>(key, "true or false")) {
      *out = value->get();
    }
  }

  template <typename T>
  void ReadInteger(std::string_view key, int64_t min, int64_t max, T* out) const {
    const auto* value = GetTyped<int64_t>(key, "an integer");
    if (value == nullptr) {
      return;
    }
    if (value->get() < min || value->get() > max) {
      Error(key, RangeText(min, max, value->get()));
      return;
    }
    *out = static_cast<T>(value->get());
  }

  // The string if present and a string.
  std::optional<std::string> ReadString(std::string_view key) const {
    if (const auto* value = GetTyped<std::string>(key, "a string")) {
      return value->get();
    }
    return std::nullopt;
  }

  void ReadString(std::string_view key, std::string* out) const {
    if (std::optional<std::string> value = ReadString(key)) {
      *out = *std::move(value);
    }
  }

  // `min` is inclusive: ZeroDuration() allows "0s", Milliseconds(1) demands a positive value.
  void ReadDuration(std::string_view key, absl::Duration min, absl::Duration* out) const {
    const toml::node* node = Get(key);
    if (node == nullptr) {
      return;
    }
    if (!node->is_string()) {
      Error(key,
            fmt::format("expected a duration like \"30s\" or \"15m\", got {}", Describe(*node)));
      return;
    }
    const std::string& text = node->as_string()->get();
    absl::StatusOr<absl::Duration> duration = ParseDuration(text);
    if (!duration.ok()) {
      Error(key,
            duration.status().code() == absl::StatusCode::kOutOfRange
                ? std::string(duration.status().message())
                : fmt::format("expected a duration like \"30s\" or \"15m\", got \"{}\"", text));
      return;
    }
    if (*duration < min) {
      Error(key, min == absl::Milliseconds(1)
                     ? fmt::format("must be greater than 0, got \"{}\"", text)
                     : fmt::format("must be at least {}, got \"{}\"", backstop::FormatDuration(min),
                                   text));
      return;
    }
    *out = *duration;
  }

  void ReadSize(std::string_view key, uint64_t min, uint64_t* out) const {
    const toml::node* node = Get(key);
    if (node == nullptr) {
      return;
    }
    uint64_t value = 0;
    if (node->is_integer()) {
      const int64_t integer = node->as_integer()->get();
      if (integer < 0) {
        Error(key, fmt::format("must not be negative, got {}", integer));
        return;
      }
      value = static_cast<uint64_t>(integer);
    } else if (node->is_string()) {
      const std::string& text = node->as_string()->get();
      absl::StatusOr<uint64_t> size = ParseSize(text);
      if (!size.ok()) {
        Error(key,
              size.status().code() == absl::StatusCode::kOutOfRange
                  ? std::string(size.status().message())
                  : fmt::format("expected a size like \"50MiB\" or an integer, got \"{}\"", text));
        return;
      }
      value = *size;
    } else {
      Error(key,
            fmt::format("expected a size like \"50MiB\" or an integer, got {}", Describe(*node)));
      return;
    }
    if (value < min) {
      Error(key, fmt::format("must be at least {}, got {}", FormatSize(min), FormatSize(value)));
      return;
    }
    *out = value;
  }

  // Calls `each(index_key, position, text)` for every element of a string array. Returns false
  // when the key is absent or not an array (non-string elements are reported and skipped).
  template <typename Fn>
  bool ForEachString(std::string_view key, Fn each) const {
    const toml::node* node = Get(key);
    if (node == nullptr) {
      return false;
    }
    if (!node->is_array()) {
      Error(key, fmt::format("expected an array of strings, got {}", Describe(*node)));
      return false;
    }
    size_t index = 0;
    for (const toml::node& element : *node->as_array()) {
      const std::string element_key = fmt::format("{}[{}]", Key(key), index++);
      const Position position = backstop::PositionOf(element.source());
      if (!element.is_string()) {
        diag_->Error(position, element_key,
                     fmt::format("expected a string, got {}", Describe(element)));
        continue;
      }
      each(element_key, position, element.as_string()->get());
    }
    return true;
  }

  // A list of validated addresses; `default_port` as in ParseHostPort. Duplicates are errors.
  void ReadHostPortList(std::string_view key, int default_port, bool connectable,
                        std::vector<HostPort>* out) const {
    std::vector<HostPort> list;
    const bool present = ForEachString(
        key, [&](const std::string& element_key, Position position, const std::string& text) {
          absl::StatusOr<HostPort> address = ParseHostPort(text, default_port);
          if (!address.ok()) {
            diag_->Error(position, element_key, std::string(address.status().message()));
            return;
          }
          if (connectable && address->port == 0) {
            diag_->Error(position, element_key, "port 0 cannot be connected to");
            return;
          }
          if (std::find(list.begin(), list.end(), *address) != list.end()) {
            diag_->Error(position, element_key, fmt::format("duplicate address \"{}\"", text));
            return;
          }
          list.push_back(*std::move(address));
        });
    if (present) {
      *out = std::move(list);
    }
  }

  void ReadListenAddress(std::string_view key, HostPort* out) const {
    const std::optional<std::string> text = ReadString(key);
    if (!text) {
      return;
    }
    absl::StatusOr<HostPort> address = ParseHostPort(*text);
    if (!address.ok()) {
      Error(key, std::string(address.status().message()));
      return;
    }
    *out = *std::move(address);
  }

  // A string array whose every element must satisfy `valid` (described by `what`).
  template <typename Valid>
  void ReadCheckedStrings(std::string_view key, Valid valid, std::string_view what,
                          std::vector<std::string>* out) const {
    std::vector<std::string> list;
    const bool present = ForEachString(
        key, [&](const std::string& element_key, Position position, const std::string& text) {
          if (!valid(text)) {
            diag_->Error(position, element_key, fmt::format("expected {}, got \"{}\"", what, text));
            return;
          }
          list.push_back(text);
        });
    if (present) {
      *out = std::move(list);
    }
  }

  Diagnostics* diag() const { return diag_; }

 private:
  const toml::table* table_;
  std::string path_;
  Position position_;
  Diagnostics* diag_;
};

constexpr std::string_view kDnsNameText = "a DNS name";
constexpr std::string_view kDnsblZoneText =
    "a DNS name, optionally with return codes like \"bl.example=127.0.0.2,127.0.0.10\"";

// "zone" or "zone=127.0.0.2,127.0.0.10": the codes are IPv4 addresses in 127.0.0.0/8 (RFC 5782),
// stored in inet_ntop form so that they compare equal to the resolver's answers.
std::optional<DnsblZone> ParseDnsblZone(std::string_view text) {
  const size_t equals = text.find('=');
  DnsblZone zone{std::string(text.substr(0, equals)), {}};
  if (!IsDnsName(zone.name)) {
    return std::nullopt;
  }
  if (equals == std::string_view::npos) {
    return zone;
  }
  std::string_view codes = text.substr(equals + 1);
  while (true) {
    const size_t comma = codes.find(',');
    const std::string code(codes.substr(0, comma));
    in_addr addr{};
    if (inet_pton(AF_INET, code.c_str(), &addr) != 1 || (ntohl(addr.s_addr) >> 24) != 127) {
      return std::nullopt;
    }
    char canonical[INET_ADDRSTRLEN];
    zone.codes.emplace_back(inet_ntop(AF_INET, &addr, canonical, sizeof(canonical)));
    if (comma == std::string_view::npos) {
      return zone;
    }
    codes.remove_prefix(comma + 1);
  }
}

bool IsDnsblZone(std::string_view text) {
  return ParseDnsblZone(text).has_value();
}

constexpr std::string_view kCidrText = "a CIDR like \"10.0.0.0/8\" or an IP address";
constexpr std::string_view kCidrOrDomainText =
    "a CIDR like \"10.0.0.0/8\", an IP address or a domain";

void ReadNode(const Section& s, NodeConfig* node) {
  s.RejectUnknownKeys({"id", "hostname", "data_dir", "roles"});
  s.ReadInteger("id", 1, kInt64Max, &node->id);
  // The default is DESIGN's example name; a real node must know the name its customers' MX
  // records give it, or it would not recognise itself there (RFC 5321 §5.1) and could loop.
  if (s.Get("hostname") == nullptr) {
    s.Warn("hostname", fmt::format("not set: using \"{}\"; set the name this node has in MX "
                                   "records",
                                   node->hostname));
  }
  if (const std::optional<std::string> hostname = s.ReadString("hostname")) {
    if (!IsDnsName(*hostname)) {
      s.Error("hostname",
              fmt::format("expected a fully qualified DNS name, got \"{}\"", *hostname));
    } else {
      node->hostname = ToLower(*hostname);
    }
  }
  if (const std::optional<std::string> data_dir = s.ReadString("data_dir")) {
    if (data_dir->empty()) {
      s.Error("data_dir", "must not be empty");
    } else {
      node->data_dir = *data_dir;
    }
  }
  RoleSet roles;
  const bool present = s.ForEachString(
      "roles", [&](const std::string& element_key, Position position, const std::string& text) {
        const std::optional<Role> parsed = ParseRole(text);
        if (!parsed) {
          s.diag()->Error(position, element_key,
                          fmt::format("unknown role \"{}\" (use ingest, queue, delivery)", text));
          return;
        }
        const Role role = *parsed;
        if (roles.Has(role)) {
          s.diag()->Error(position, element_key, fmt::format("duplicate role \"{}\"", text));
          return;
        }
        roles.Add(role);
      });
  if (present && !s.AnyFailed({"roles"})) {
    if (roles.empty()) {
      s.Error("roles", "must name at least one of ingest, queue, delivery");
    } else {
      node->roles = roles;
    }
  }
}

void ReadSmtp(const Section& s, SmtpConfig* smtp) {
  s.RejectUnknownKeys({"listen", "max_message_size", "max_recipients", "commit_timeout", "tls_cert",
                       "tls_key", "proxy_protocol", "trusted_proxies", "command_timeout",
                       "data_timeout", "max_errors", "max_received_headers", "max_connections",
                       "max_connections_per_ip", "max_connection_rate_per_ip", "threads"});
  s.ReadHostPortList("listen", -1, /*connectable=*/false, &smtp->listen);
  s.ReadSize("max_message_size", 1, &smtp->max_message_size);
  // DESIGN §3.3: at least 100 recipients per transaction (RFC 5321 §4.5.3.1.8).
  s.ReadInteger("max_recipients", 100, kUint32Max, &smtp->max_recipients);
  s.ReadDuration("commit_timeout", absl::Milliseconds(1), &smtp->commit_timeout);
  s.ReadString("tls_cert", &smtp->tls_cert);
  s.ReadString("tls_key", &smtp->tls_key);
  s.ReadBool("proxy_protocol", &smtp->proxy_protocol);
  s.ReadCheckedStrings("trusted_proxies", IsCidr, kCidrText, &smtp->trusted_proxies);
  s.ReadDuration("command_timeout", absl::Milliseconds(1), &smtp->command_timeout);
  s.ReadDuration("data_timeout", absl::Milliseconds(1), &smtp->data_timeout);
  s.ReadInteger("max_errors", 1, kUint32Max, &smtp->max_errors);
  s.ReadInteger("max_received_headers", 1, kUint32Max, &smtp->max_received_headers);
  s.ReadInteger("max_connections", 1, kUint32Max, &smtp->max_connections);
  s.ReadInteger("max_connections_per_ip", 1, kUint32Max, &smtp->max_connections_per_ip);
  s.ReadInteger("max_connection_rate_per_ip", 0, kUint32Max, &smtp->max_connection_rate_per_ip);
  s.ReadInteger("threads", 0, 1024, &smtp->threads);

  if (smtp->tls_cert.empty() != smtp->tls_key.empty() && !s.AnyFailed({"tls_cert", "tls_key"})) {
    const bool cert_set = !smtp->tls_cert.empty();
    s.Error(cert_set ? "tls_cert" : "tls_key",
            cert_set ? "set without smtp.tls_key (set both for STARTTLS, or neither)"
                     : "set without smtp.tls_cert (set both for STARTTLS, or neither)");
  }
  // Without trusted proxies every connection's PROXY header would be refused.
  if (smtp->proxy_protocol && smtp->trusted_proxies.empty() &&
      !s.AnyFailed({"proxy_protocol", "trusted_proxies"})) {
    s.Error("proxy_protocol", "is true but smtp.trusted_proxies is empty");
  }
  if (!smtp->proxy_protocol && !smtp->trusted_proxies.empty()) {
    s.Warn("trusted_proxies", "ignored because smtp.proxy_protocol is false");
  }
}

void ReadQueue(const Section& s, QueueConfig* queue) {
  s.RejectUnknownKeys(
      {"listen", "peers", "endpoints", "join", "snapshot_entries", "min_free_space"});
  s.ReadListenAddress("listen", &queue->listen);
  std::vector<QueuePeer> peers;
  const bool present = s.ForEachString(
      "peers", [&](const std::string& element_key, Position position, const std::string& text) {
        const size_t at = text.find('@');
        const std::string_view id_text = std::string_view(text).substr(0, at);
        const bool id_digits = !id_text.empty() && id_text.size() <= 18 &&
                               std::all_of(id_text.begin(), id_text.end(),
                                           [](char c) { return c >= '0' && c <= '9'; });
        if (at == std::string::npos || !id_digits || std::stoll(std::string(id_text)) == 0) {
          s.diag()->Error(position, element_key,
                          fmt::format("expected \"id@host:port\" with id >= 1, got \"{}\"", text));
          return;
        }
        absl::StatusOr<HostPort> address = ParseHostPort(text.substr(at + 1));
        if (!address.ok()) {
          s.diag()->Error(position, element_key, std::string(address.status().message()));
          return;
        }
        if (address->port == 0) {
          s.diag()->Error(position, element_key, "port 0 cannot be connected to");
          return;
        }
        const QueuePeer peer{static_cast<uint64_t>(std::stoll(std::string(id_text))), *address};
        for (const QueuePeer& other : peers) {
          if (other.id == peer.id) {
            s.diag()->Error(position, element_key, fmt::format("duplicate voter id {}", peer.id));
            return;
          }
          if (other.address == peer.address) {
            s.diag()->Error(position, element_key,
                            fmt::format("duplicate voter address {}", peer.address.ToString()));
            return;
          }
        }
        peers.push_back(peer);
      });
  if (present) {
    queue->peers = std::move(peers);
  }
  s.ReadHostPortList("endpoints", -1, /*connectable=*/true, &queue->endpoints);
  s.ReadBool("join", &queue->join);
  s.ReadInteger("snapshot_entries", 1, kInt64Max, &queue->snapshot_entries);
  s.ReadSize("min_free_space", 0, &queue->min_free_space);
}

void ReadDelivery(const Section& s, DeliveryConfig* delivery) {
  s.RejectUnknownKeys({"retry_initial", "retry_max", "max_queue_lifetime", "delay_warning",
                       "connections_per_domain", "smtp_port", "lease_duration"});
  s.ReadDuration("retry_initial", absl::Milliseconds(1), &delivery->retry_initial);
  s.ReadDuration("retry_max", absl::Milliseconds(1), &delivery->retry_max);
  s.ReadDuration("max_queue_lifetime", absl::Milliseconds(1), &delivery->max_queue_lifetime);
  s.ReadDuration("delay_warning", absl::ZeroDuration(), &delivery->delay_warning);
  s.ReadInteger("connections_per_domain", 1, 10'000, &delivery->connections_per_domain);
  s.ReadInteger("smtp_port", 1, 65535, &delivery->smtp_port);
  s.ReadDuration("lease_duration", absl::Seconds(1), &delivery->lease_duration);

  if (delivery->retry_max < delivery->retry_initial &&
      !s.AnyFailed({"retry_initial", "retry_max"})) {
    s.Error("retry_max", fmt::format("({}) is shorter than delivery.retry_initial ({})",
                                     backstop::FormatDuration(delivery->retry_max),
                                     backstop::FormatDuration(delivery->retry_initial)));
  }
  // A warning due after the bounce would never be sent.
  if (delivery->delay_warning >= delivery->max_queue_lifetime &&
      !s.AnyFailed({"delay_warning", "max_queue_lifetime"})) {
    s.Error("delay_warning",
            fmt::format("({}) must be shorter than delivery.max_queue_lifetime ({})",
                        backstop::FormatDuration(delivery->delay_warning),
                        backstop::FormatDuration(delivery->max_queue_lifetime)));
  }
}

void ReadDns(const Section& s, DnsConfig* dns) {
  s.RejectUnknownKeys({"servers"});
  std::vector<HostPort> servers;
  s.ReadHostPortList("servers", 53, /*connectable=*/true, &servers);
  // c-ares needs addresses: a name here would have to be resolved by the resolver itself.
  std::erase_if(servers, [&](const HostPort& server) {
    if (IsIpv4(server.host) || IsIpv6(server.host)) {
      return false;
    }
    s.Error("servers", fmt::format("\"{}\" is not an IP address", server.host));
    return true;
  });
  dns->servers = std::move(servers);
}

void ReadClusterTls(const Section& s, ClusterTlsConfig* tls) {
  s.RejectUnknownKeys({"ca", "cert", "key"});
  s.ReadString("ca", &tls->ca);
  s.ReadString("cert", &tls->cert);
  s.ReadString("key", &tls->key);
  std::vector<std::string_view> missing;
  for (const auto& [name, value] : {std::pair<std::string_view, const std::string*>{"ca", &tls->ca},
                                    {"cert", &tls->cert},
                                    {"key", &tls->key}}) {
    if (value->empty()) {
      missing.push_back(name);
    }
  }
  if (missing.size() == 3) {
    s.diag()->Warn(s.position(), s.path(),
                   "empty: gRPC between nodes and from backstopctl is plaintext (only for "
                   "loopback and tests)");
  } else if (!missing.empty() && !s.AnyFailed({"ca", "cert", "key"})) {
    s.diag()->Error(s.position(), s.path(),
                    fmt::format("ca, cert and key must be all set or all empty; missing: {}",
                                fmt::join(missing, ", ")));
  }
}

void ReadFilters(const Section& s, FiltersConfig* filters) {
  s.RejectUnknownKeys({"greylist", "harvest", "dnsbl", "rdns", "sender", "headers", "callout"});

  const Section greylist = s.Sub("greylist");
  greylist.RejectUnknownKeys({"enabled", "delay", "retry_window", "auto_allow_after", "allow"});
  GreylistConfig& g = filters->greylist;
  greylist.ReadBool("enabled", &g.enabled);
  greylist.ReadDuration("delay", absl::Milliseconds(1), &g.delay);
  greylist.ReadDuration("retry_window", absl::Milliseconds(1), &g.retry_window);
  greylist.ReadInteger("auto_allow_after", 0, kUint32Max, &g.auto_allow_after);
  greylist.ReadCheckedStrings(
      "allow", [](std::string_view text) { return IsCidr(text) || IsDnsName(text); },
      kCidrOrDomainText, &g.allow);
  if (g.retry_window <= g.delay && !greylist.AnyFailed({"delay", "retry_window"})) {
    greylist.Error("retry_window", fmt::format("({}) must be longer than the delay ({})",
                                               backstop::FormatDuration(g.retry_window),
                                               backstop::FormatDuration(g.delay)));
  }

  const Section harvest = s.Sub("harvest");
  harvest.RejectUnknownKeys({"enabled", "delay"});
  harvest.ReadBool("enabled", &filters->harvest.enabled);
  harvest.ReadDuration("delay", absl::ZeroDuration(), &filters->harvest.delay);

  const Section dnsbl = s.Sub("dnsbl");
  dnsbl.RejectUnknownKeys({"enabled", "zones", "allow_zones"});
  DnsblConfig& d = filters->dnsbl;
  dnsbl.ReadBool("enabled", &d.enabled);
  const auto read_zones = [&dnsbl](std::string_view key, std::vector<DnsblZone>* zones) {
    if (dnsbl.Get(key) == nullptr) {
      return;
    }
    std::vector<std::string> texts;
    dnsbl.ReadCheckedStrings(key, IsDnsblZone, kDnsblZoneText, &texts);
    zones->clear();
    for (const std::string& text : texts) {
      zones->push_back(*ParseDnsblZone(text));
    }
  };
  read_zones("zones", &d.zones);
  read_zones("allow_zones", &d.allow_zones);
  if (d.enabled && d.zones.empty() && !dnsbl.AnyFailed({"enabled", "zones"})) {
    dnsbl.Error("zones", "is empty but the dnsbl filter is enabled");
  }

  const Section rdns = s.Sub("rdns");
  rdns.RejectUnknownKeys({"enabled", "require"});
  rdns.ReadBool("enabled", &filters->rdns.enabled);
  if (const std::optional<std::string> require = rdns.ReadString("require")) {
    if (*require == "ptr") {
      filters->rdns.require = RdnsRequirement::kPtr;
    } else if (*require == "fcrdns") {
      filters->rdns.require = RdnsRequirement::kFcrdns;
    } else {
      rdns.Error("require", fmt::format("expected \"ptr\" or \"fcrdns\", got \"{}\"", *require));
    }
  }

  const Section sender = s.Sub("sender");
  sender.RejectUnknownKeys({"enabled"});
  sender.ReadBool("enabled", &filters->sender.enabled);

  const Section headers = s.Sub("headers");
  headers.RejectUnknownKeys({"enabled", "max_size"});
  headers.ReadBool("enabled", &filters->headers.enabled);
  // Below 1 KiB even an ordinary message's From/To/Date/Message-ID would not fit.
  headers.ReadSize("max_size", 1024, &filters->headers.max_size);

  const Section callout = s.Sub("callout");
  callout.RejectUnknownKeys(
      {"timeout", "positive_ttl", "negative_ttl", "cache_size", "threads", "unreachable_ttl"});
  CalloutConfig& c = filters->callout;
  callout.ReadDuration("timeout", absl::Milliseconds(1), &c.timeout);
  callout.ReadDuration("positive_ttl", absl::ZeroDuration(), &c.positive_ttl);
  callout.ReadDuration("negative_ttl", absl::ZeroDuration(), &c.negative_ttl);
  callout.ReadInteger("cache_size", 0, kInt64Max, &c.cache_size);
  callout.ReadInteger("threads", 1, 256, &c.threads);
  callout.ReadDuration("unreachable_ttl", absl::ZeroDuration(), &c.unreachable_ttl);
}

// A recipient entry: a bare local part, or a full address whose domain is this domain.
// Returns the stored form (domain part lower-cased) or an error text.
absl::StatusOr<std::string> CheckRecipient(const std::string& text, const std::string& domain) {
  if (text.empty()) {
    return absl::InvalidArgumentError("empty recipient");
  }
  for (unsigned char c : text) {
    if (c <= ' ' || c == 0x7f || c == '<' || c == '>') {
      return absl::InvalidArgumentError(
          fmt::format("\"{}\" contains a space, control character or angle bracket", text));
    }
  }
  const size_t at = text.rfind('@');
  const std::string local = text.substr(0, at);
  if (local.empty() || local.size() > 64) {
    return absl::InvalidArgumentError(
        fmt::format("\"{}\": the local part must have 1 to 64 characters", text));
  }
  if (at == std::string::npos) {
    return text;
  }
  const std::string address_domain = ToLower(text.substr(at + 1));
  if (address_domain != domain) {
    return absl::InvalidArgumentError(fmt::format("\"{}\" is not an address of {}", text, domain));
  }
  return local + "@" + address_domain;
}

void ReadDomain(const Section& s, const Config& config, DomainConfig* domain) {
  s.RejectUnknownKeys({"name", "primary", "tls", "recipients", "recipients_file",
                       "recipient_callout", "max_queued_messages", "max_queued_bytes",
                       "max_monthly_bytes", "max_daily_connections"});
  if (s.Get("name") == nullptr) {
    s.diag()->Error(s.position(), s.Key("name"), "missing (every [[domain]] needs a name)");
  } else if (const std::optional<std::string> name = s.ReadString("name")) {
    if (!IsDnsName(*name)) {
      s.Error("name", fmt::format("expected a domain name, got \"{}\"", *name));
    } else {
      domain->name = ToLower(*name);
    }
  }

  s.ReadHostPortList("primary", 25, /*connectable=*/true, &domain->primary);
  for (const HostPort& primary : domain->primary) {
    if (ToLower(primary.host) == config.node.hostname) {
      s.Error("primary",
              fmt::format("{} is this node (node.hostname): delivery would loop", primary.host));
    }
  }

  if (const std::optional<std::string> tls = s.ReadString("tls")) {
    if (*tls == "opportunistic") {
      domain->tls = DomainTls::kOpportunistic;
    } else if (*tls == "required") {
      domain->tls = DomainTls::kRequired;
    } else {
      s.Error("tls", fmt::format("expected \"opportunistic\" or \"required\", got \"{}\"", *tls));
    }
  }

  std::vector<std::string> recipients;
  s.ForEachString("recipients", [&](const std::string& element_key, Position position,
                                    const std::string& text) {
    absl::StatusOr<std::string> recipient = CheckRecipient(text, domain->name);
    if (!recipient.ok()) {
      s.diag()->Error(position, element_key, std::string(recipient.status().message()));
      return;
    }
    recipients.push_back(*std::move(recipient));
  });
  domain->recipients = std::move(recipients);
  if (const std::optional<std::string> file = s.ReadString("recipients_file")) {
    if (file->empty()) {
      s.Error("recipients_file", "must not be empty (leave the key out for no file)");
    } else {
      domain->recipients_file = *file;
    }
  }
  s.ReadBool("recipient_callout", &domain->recipient_callout);
  // The callout asks the configured primaries only: the MX records of the domain would need a
  // DNS round trip per probe and could name a peer backup.
  if (domain->recipient_callout && domain->primary.empty() &&
      !s.AnyFailed({"recipient_callout", "primary"})) {
    s.Error("recipient_callout", "is true but the domain has no primary to ask (set primary)");
  }

  s.ReadInteger("max_queued_messages", 1, kInt64Max, &domain->max_queued_messages);
  s.ReadSize("max_queued_bytes", 1, &domain->max_queued_bytes);
  s.ReadSize("max_monthly_bytes", 1, &domain->max_monthly_bytes);
  s.ReadInteger("max_daily_connections", 1, kInt64Max, &domain->max_daily_connections);

  const std::string label = domain->name.empty() ? s.path() : domain->name;
  const bool validated = domain->recipient_callout || !domain->recipients_file.empty();
  if (domain->recipients.empty() && !validated && s.Get("recipients") == nullptr) {
    s.diag()->Warn(s.position(), s.path(),
                   fmt::format("no recipients and no recipient_callout: accepts any local part "
                               "of {} (backscatter risk)",
                               label));
  } else if (domain->recipients.empty() && !validated) {
    s.Warn("recipients", fmt::format("empty and no recipient_callout: accepts any local part of "
                                     "{} (backscatter risk)",
                                     label));
  }
  if (domain->max_queued_bytes < config.smtp.max_message_size) {
    s.Warn("max_queued_bytes",
           fmt::format("({}) is below smtp.max_message_size ({}): a message of the maximum size "
                       "can never be queued for {}",
                       FormatSize(domain->max_queued_bytes),
                       FormatSize(config.smtp.max_message_size), label));
  }
}

void ReadDomains(const Section& root, const toml::node* node, Config* config) {
  if (node == nullptr) {
    return;
  }
  if (!node->is_array()) {
    root.Error("domain", fmt::format("expected [[domain]] tables, got {}", Describe(*node)));
    return;
  }
  std::map<std::string, int64_t> first_line;  // lower-cased name → line of its first entry
  size_t index = 0;
  for (const toml::node& element : *node->as_array()) {
    const std::string path = fmt::format("domain[{}]", index++);
    const Position position = PositionOf(element.source());
    if (!element.is_table()) {
      root.diag()->Error(position, path,
                         fmt::format("expected a table, got {}", Describe(element)));
      continue;
    }
    const Section s(element.as_table(), path, position, root.diag());
    DomainConfig domain;
    ReadDomain(s, *config, &domain);
    if (!domain.name.empty()) {
      const auto [it, inserted] = first_line.emplace(domain.name, s.PositionOf("name").line);
      if (!inserted) {
        s.Error("name",
                fmt::format("duplicate domain {} (first at line {})", domain.name, it->second));
      }
    }
    config->domains.push_back(std::move(domain));
  }
}

// Rules that span sections; each is explained where it is checked.
void CheckRoles(const Section& root, const Section& smtp, const Section& queue, Config* config) {
  const RoleSet& roles = config->node.roles;

  if (root.AnyFailed({"node.roles"})) {
    return;
  }
  if (roles.Has(Role::kIngest) && config->smtp.listen.empty() && !smtp.AnyFailed({"listen"})) {
    smtp.Error("listen", "is empty but this node has the ingest role");
  }
  if (roles.Has(Role::kQueue) && !root.AnyFailed({"node.id", "queue.peers"})) {
    const std::vector<QueuePeer>& peers = config->queue.peers;
    if (peers.empty()) {
      queue.Error("peers", "is empty but this node has the queue role (list every voter)");
    } else if (!config->queue.join &&
               std::none_of(peers.begin(), peers.end(),
                            [&](const QueuePeer& p) { return p.id == config->node.id; })) {
      queue.Error("peers", fmt::format("does not contain this node's id {} (node.id), but this "
                                       "node has the queue role and must be a voter",
                                       config->node.id));
    }
    // Raft needs a majority: two voters survive no more failures than one, four no more than
    // three, and cost more writes. (A joining node lists the others: the count is not its own.)
    if (peers.size() % 2 == 0 && !peers.empty() && !config->queue.join) {
      queue.Warn("peers", fmt::format("{} voters tolerate no more failures than {}; use an odd "
                                      "number",
                                      peers.size(), peers.size() - 1));
    }
  } else if (!roles.Has(Role::kQueue) && config->queue.endpoints.empty() &&
             !queue.AnyFailed({"endpoints"})) {
    // Without the queue role there is no in-process voter to fall back to.
    queue.Error("endpoints", "is empty but this node has no queue role (list the queue nodes)");
  }
  if (config->domains.empty() && roles.Has(Role::kIngest)) {
    root.diag()->Warn(Position{}, "domain",
                      "no [[domain]]: this node relays for no domain and refuses every recipient");
  }
}

}  // namespace

std::string HostPort::ToString() const {
  if (host.find(':') != std::string::npos) {
    return fmt::format("[{}]:{}", host, port);
  }
  return fmt::format("{}:{}", host, port);
}

absl::StatusOr<HostPort> ParseHostPort(std::string_view text, int default_port) {
  if (text.empty()) {
    return absl::InvalidArgumentError("empty address (expected host:port)");
  }
  std::string host;
  std::string_view port_text;
  bool has_port = false;
  if (text.front() == '[') {
    const size_t close = text.find(']');
    if (close == std::string_view::npos) {
      return absl::InvalidArgumentError(fmt::format("\"{}\": missing ']'", text));
    }
    host = std::string(text.substr(1, close - 1));
    if (!IsIpv6(host)) {
      return absl::InvalidArgumentError(
          fmt::format("\"{}\": \"{}\" is not an IPv6 address", text, host));
    }
    const std::string_view rest = text.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') {
        return absl::InvalidArgumentError(
            fmt::format("\"{}\": expected ':' and a port after ']'", text));
      }
      port_text = rest.substr(1);
      has_port = true;
    }
  } else {
    const size_t colon = text.find(':');
    if (colon != std::string_view::npos && text.find(':', colon + 1) != std::string_view::npos) {
      return absl::InvalidArgumentError(
          fmt::format("\"{}\": write IPv6 addresses in brackets, like [::1]:25", text));
    }
    host = std::string(text.substr(0, colon));
    if (colon != std::string_view::npos) {
      port_text = text.substr(colon + 1);
      has_port = true;
    }
    if (!IsIpv4(host) && !IsDnsName(host)) {
      return absl::InvalidArgumentError(
          fmt::format("\"{}\": \"{}\" is neither an IP address nor a host name", text, host));
    }
  }
  if (!has_port) {
    if (default_port < 0) {
      return absl::InvalidArgumentError(fmt::format("\"{}\": missing port (host:port)", text));
    }
    return HostPort{std::move(host), static_cast<uint16_t>(default_port)};
  }
  absl::StatusOr<uint16_t> port = ParsePort(port_text);
  if (!port.ok()) {
    return absl::InvalidArgumentError(
        fmt::format("\"{}\": {}", text, std::string(port.status().message())));
  }
  return HostPort{std::move(host), *port};
}

std::string_view RoleName(Role role) {
  switch (role) {
    case Role::kIngest:
      return "ingest";
    case Role::kQueue:
      return "queue";
    case Role::kDelivery:
      return "delivery";
  }
  return "unknown";
}

std::optional<Role> ParseRole(std::string_view name) {
  for (Role role : {Role::kIngest, Role::kQueue, Role::kDelivery}) {
    if (name == RoleName(role)) {
      return role;
    }
  }
  return std::nullopt;
}

RoleSet RoleSet::All() {
  RoleSet all;
  all.Add(Role::kIngest);
  all.Add(Role::kQueue);
  all.Add(Role::kDelivery);
  return all;
}

std::vector<Role> RoleSet::ToVector() const {
  std::vector<Role> out;
  for (Role role : {Role::kIngest, Role::kQueue, Role::kDelivery}) {
    if (Has(role)) {
      out.push_back(role);
    }
  }
  return out;
}

absl::StatusOr<Config> ParseConfig(std::string_view toml_text, std::string_view source_name,
                                   const ConfigOverrides& overrides) {
  Diagnostics diag(source_name);
  toml::table document;
  try {
    document = toml::parse(toml_text, source_name);
  } catch (const toml::parse_error& error) {
    diag.Error(PositionOf(error.source()), "TOML syntax error", error.description());
    return absl::InvalidArgumentError(diag.ErrorText());
  }

  const Section root(&document, "", Position{1, 1}, &diag);
  root.RejectUnknownKeys(
      {"node", "smtp", "queue", "delivery", "dns", "http", "cluster_tls", "filters", "domain"});
  Config config;
  // Each section once: Sub() reports a non-table value.
  const Section smtp = root.Sub("smtp");
  const Section queue = root.Sub("queue");
  ReadNode(root.Sub("node"), &config.node);
  ReadSmtp(smtp, &config.smtp);
  ReadQueue(queue, &config.queue);
  ReadDelivery(root.Sub("delivery"), &config.delivery);
  ReadDns(root.Sub("dns"), &config.dns);
  const Section http = root.Sub("http");
  http.RejectUnknownKeys({"listen"});
  http.ReadListenAddress("listen", &config.http.listen);
  ReadClusterTls(root.Sub("cluster_tls"), &config.cluster_tls);
  ReadFilters(root.Sub("filters"), &config.filters);
  ReadDomains(root, document.get("domain"), &config);
  if (overrides.roles) {
    config.node.roles = *overrides.roles;
  }
  CheckRoles(root, smtp, queue, &config);

  if (diag.has_errors()) {
    return absl::InvalidArgumentError(diag.ErrorText());
  }
  config.warnings = diag.TakeWarnings();
  return config;
}

absl::StatusOr<Config> LoadConfigFile(const std::string& path, const ConfigOverrides& overrides) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    return ErrnoToStatus(errno, fmt::format("cannot open configuration file {}", path));
  }
  std::ostringstream text;
  text << file.rdbuf();
  if (file.bad()) {
    return ErrnoToStatus(errno, fmt::format("cannot read configuration file {}", path));
  }
  return ParseConfig(text.str(), path, overrides);
}

absl::StatusOr<std::vector<std::string>> ReadRecipientsFile(const std::string& path,
                                                            const std::string& domain) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    return ErrnoToStatus(errno, fmt::format("cannot open recipients file {}", path));
  }
  std::vector<std::string> recipients;
  std::string line;
  for (int64_t number = 1; std::getline(file, line); ++number) {
    const size_t begin = line.find_first_not_of(" \t\r");
    if (begin == std::string::npos || line[begin] == '#') {
      continue;
    }
    const size_t end = line.find_last_not_of(" \t\r");
    absl::StatusOr<std::string> recipient =
        CheckRecipient(line.substr(begin, end + 1 - begin), domain);
    if (!recipient.ok()) {
      return absl::InvalidArgumentError(
          fmt::format("{}:{}: {}", path, number, std::string(recipient.status().message())));
    }
    recipients.push_back(*std::move(recipient));
  }
  if (file.bad()) {
    return ErrnoToStatus(errno, fmt::format("cannot read recipients file {}", path));
  }
  return recipients;
}

std::string ConfigSummary(const Config& config) {
  std::vector<std::string_view> roles;
  for (Role role : config.node.roles.ToVector()) {
    roles.push_back(RoleName(role));
  }
  std::string out = fmt::format("node {} ({}), roles: {}, data_dir: {}\n", config.node.id,
                                config.node.hostname, fmt::join(roles, ", "), config.node.data_dir);
  if (config.node.roles.Has(Role::kIngest)) {
    std::vector<std::string> listen;
    for (const HostPort& address : config.smtp.listen) {
      listen.push_back(address.ToString());
    }
    out += fmt::format("smtp: {} (max message {}, STARTTLS {})\n", fmt::join(listen, ", "),
                       FormatSize(config.smtp.max_message_size),
                       config.smtp.tls_cert.empty() ? "off" : "on");
  }
  std::vector<std::string> voters;
  for (const QueuePeer& peer : config.queue.peers) {
    voters.push_back(fmt::format("{}@{}", peer.id, peer.address.ToString()));
  }
  if (config.node.roles.Has(Role::kQueue)) {
    out += fmt::format("queue: listen {}, voters: {}{}\n", config.queue.listen.ToString(),
                       fmt::join(voters, ", "),
                       config.queue.join ? " (joining: waits to be added)" : "");
  } else {
    std::vector<std::string> endpoints;
    for (const HostPort& endpoint : config.queue.endpoints) {
      endpoints.push_back(endpoint.ToString());
    }
    out += fmt::format("queue endpoints: {}\n", fmt::join(endpoints, ", "));
  }
  out += fmt::format("http: {}\n", config.http.listen.ToString());
  out +=
      fmt::format("cluster TLS: {}\n", config.cluster_tls.enabled() ? "mTLS" : "off (plaintext)");
  std::vector<std::string_view> names;
  for (const DomainConfig& domain : config.domains) {
    names.push_back(domain.name);
  }
  out += fmt::format("domains ({}): {}\n", config.domains.size(), fmt::join(names, ", "));
  return out;
}

}  // namespace backstop
