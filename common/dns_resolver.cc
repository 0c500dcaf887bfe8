#include "common/dns_resolver.h"

#include <ares.h>
#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netdb.h>
#include <poll.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <optional>
#include <string_view>
#include <utility>

#include "absl/strings/cord.h"
#include "common/status.h"
#include "fmt/format.h"

namespace backstop {
namespace {

// Where a NotFound status says which kind of absence it is.
constexpr char kAbsencePayload[] = "type.backstop/dns.absence";
constexpr char kNxDomain[] = "NXDOMAIN";
constexpr char kNoData[] = "NODATA";

bool HasAbsence(const absl::Status& status, const char* kind) {
  if (status.code() != absl::StatusCode::kNotFound) {
    return false;
  }
  // absl::optional here: Debian builds Abseil without std::optional.
  const auto payload = status.GetPayload(kAbsencePayload);
  return payload.has_value() && *payload == kind;
}

const char* TypeName(int type) {
  switch (type) {
    case ns_t_mx:
      return "MX";
    case ns_t_a:
      return "A";
    case ns_t_aaaa:
      return "AAAA";
    case ns_t_ptr:
      return "PTR";
    case ns_t_txt:
      return "TXT";
    default:
      return "?";
  }
}

absl::Status AresStatus(int ares_status, int type, const std::string& name) {
  const std::string what = fmt::format("DNS {} {}: ", TypeName(type), name);
  auto absent = [&](const char* kind, const char* explanation) {
    absl::Status status = absl::NotFoundError(what + kind + " (" + explanation + ")");
    status.SetPayload(kAbsencePayload, absl::Cord(kind));
    return status;
  };
  switch (ares_status) {
    case ARES_ENOTFOUND:
      return absent(kNxDomain, "the name does not exist");
    case ARES_ENODATA:
      return absent(kNoData, "the name has no record of this type");
    case ARES_ETIMEOUT:
      return absl::DeadlineExceededError(what + "no answer from any server in time");
    case ARES_ESERVFAIL:
      return absl::UnavailableError(what + "SERVFAIL");
    case ARES_EREFUSED:
      return absl::UnavailableError(what + "REFUSED");
    case ARES_ECONNREFUSED:
      // c-ares 1.18 retries SERVFAIL and REFUSED on the next server and, once every try is
      // used up, reports them with the status it starts each query with: this one.
      return absl::UnavailableError(
          what + "no usable answer (connection refused, or SERVFAIL/REFUSED from every server)");
    case ARES_EBADNAME:
      return absl::InvalidArgumentError(what + "not a valid domain name");
    case ARES_EDESTRUCTION:
    case ARES_ECANCELLED:
      return absl::CancelledError(what + "resolver destroyed");
    default:
      // Malformed answers, FORMERR, NOTIMP, out of memory: nothing that proves absence.
      return absl::UnavailableError(what + ares_strerror(ares_status));
  }
}

// c-ares 1.18 parses an answer that holds no record of the type asked for (only a CNAME, say:
// what a resolver returns for an alias whose target has none) as a success without records.
// That is NODATA (RFC 2308 §2.2), which callers act on (an MX lookup falls back to the implicit
// MX); an empty success they could only treat as a temporary failure, forever.
absl::Status NoRecords(int type, const std::string& name) {
  return AresStatus(ARES_ENODATA, type, name);
}

// c-ares returns names without the trailing dot, and the root as "".
std::string NormalizeName(const char* name) {
  std::string result(name);
  while (result.size() > 1 && result.back() == '.') {
    result.pop_back();
  }
  return result.empty() ? "." : result;
}

// An IP literal in network byte order; IPv4-mapped IPv6 addresses count as IPv4.
struct IpAddress {
  int family = AF_UNSPEC;
  std::array<unsigned char, 16> bytes{};
  int length() const { return family == AF_INET ? 4 : 16; }
};

absl::StatusOr<IpAddress> ParseIp(const std::string& ip) {
  IpAddress address;
  if (inet_pton(AF_INET, ip.c_str(), address.bytes.data()) == 1) {
    address.family = AF_INET;
    return address;
  }
  if (inet_pton(AF_INET6, ip.c_str(), address.bytes.data()) == 1) {
    static constexpr unsigned char kMappedPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (std::memcmp(address.bytes.data(), kMappedPrefix, sizeof(kMappedPrefix)) == 0) {
      std::memmove(address.bytes.data(), address.bytes.data() + 12, 4);
      address.family = AF_INET;
    } else {
      address.family = AF_INET6;
    }
    return address;
  }
  return absl::InvalidArgumentError(fmt::format("not an IP address: \"{}\"", ip));
}

// The address's labels in reverse order, without a zone: "4.3.2.1" for 1.2.3.4, 32 nibbles
// for IPv6 (RFC 3596 §2.5).
std::string ReversedLabels(const IpAddress& address) {
  std::string labels;
  if (address.family == AF_INET) {
    for (int i = 3; i >= 0; --i) {
      labels += fmt::format("{}{}", address.bytes[static_cast<size_t>(i)], i > 0 ? "." : "");
    }
    return labels;
  }
  static constexpr char kHex[] = "0123456789abcdef";
  for (int i = 15; i >= 0; --i) {
    const unsigned char byte = address.bytes[static_cast<size_t>(i)];
    labels += kHex[byte & 0xf];
    labels += '.';
    labels += kHex[byte >> 4];
    if (i > 0) {
      labels += '.';
    }
  }
  return labels;
}

std::string ReverseZone(const IpAddress& address) {
  return address.family == AF_INET ? "in-addr.arpa" : "ip6.arpa";
}

}  // namespace

bool IsNxDomain(const absl::Status& status) {
  return HasAbsence(status, kNxDomain);
}

bool IsNoData(const absl::Status& status) {
  return HasAbsence(status, kNoData);
}

absl::StatusOr<std::string> ReverseLookupName(const std::string& ip) {
  ASSIGN_OR_RETURN(const IpAddress address, ParseIp(ip));
  return ReversedLabels(address) + "." + ReverseZone(address);
}

absl::StatusOr<std::string> DnsblQueryName(const std::string& ip, const std::string& zone) {
  ASSIGN_OR_RETURN(const IpAddress address, ParseIp(ip));
  return ReversedLabels(address) + "." + zone;
}

// ---------------------------------------------------------------------------------------------
// Queries: one object per Lookup call, handed to c-ares (as the `arg` of each of its parts)
// until every part is answered, then queued in ready_ until its callback runs.

namespace dns_internal {

struct Query {
  // What c-ares gets as `arg`: which query, and which record type this part asked for.
  struct Part {
    Query* query = nullptr;
    int type = 0;
  };

  virtual ~Query() = default;
  // Records c-ares' answer (or error) for one part.
  virtual void Take(int type, int ares_status, const unsigned char* answer, int length) = 0;
  // Called once every part is answered.
  virtual void Finish() {}
  // Replaces whatever was found with an error.
  virtual void Fail(absl::Status status) = 0;
  virtual void Deliver() = 0;

  Resolver* resolver = nullptr;
  std::string name;
  std::array<Part, 2> parts;
  int pending = 0;
};

}  // namespace dns_internal

namespace {

template <typename Result>
struct TypedQuery : dns_internal::Query {
  explicit TypedQuery(std::function<void(Result)> on_done) : callback(std::move(on_done)) {}
  void Fail(absl::Status status) override {
    result = Result{};
    result.status = std::move(status);
  }
  void Deliver() override { callback(std::move(result)); }

  Result result;
  std::function<void(Result)> callback;
};

struct MxQuery : TypedQuery<MxResult> {
  using TypedQuery::TypedQuery;
  void Take(int type, int ares_status, const unsigned char* answer, int length) override {
    ares_mx_reply* replies = nullptr;
    if (ares_status == ARES_SUCCESS) {
      ares_status = ares_parse_mx_reply(answer, length, &replies);
    }
    if (ares_status != ARES_SUCCESS) {
      Fail(AresStatus(ares_status, type, name));
      return;
    }
    for (const ares_mx_reply* reply = replies; reply != nullptr; reply = reply->next) {
      result.records.push_back(MxRecord{reply->priority, NormalizeName(reply->host)});
    }
    ares_free_data(replies);
    if (result.records.empty()) {
      Fail(NoRecords(type, name));
      return;
    }
    std::stable_sort(
        result.records.begin(), result.records.end(),
        [](const MxRecord& a, const MxRecord& b) { return a.preference < b.preference; });
    if (result.records.size() == 1 && result.records[0] == MxRecord{0, "."}) {
      result.null_mx = true;
      result.records.clear();
    }
  }
};

// A and/or AAAA: one part per type; the parts' outcomes are combined in Finish.
struct AddressQuery : TypedQuery<AddressResult> {
  using TypedQuery::TypedQuery;
  void Take(int type, int ares_status, const unsigned char* answer, int length) override {
    hostent* host = nullptr;
    if (ares_status == ARES_SUCCESS) {
      ares_status = type == ns_t_a ? ares_parse_a_reply(answer, length, &host, nullptr, nullptr)
                                   : ares_parse_aaaa_reply(answer, length, &host, nullptr, nullptr);
    }
    if (ares_status != ARES_SUCCESS) {
      errors.push_back(AresStatus(ares_status, type, name));
      return;
    }
    std::vector<std::string>& out = type == ns_t_a ? ipv4 : ipv6;
    const size_t before = out.size();
    for (char** entry = host->h_addr_list; *entry != nullptr; ++entry) {
      char text[INET6_ADDRSTRLEN];
      if (inet_ntop(host->h_addrtype, *entry, text, sizeof(text)) != nullptr) {
        out.emplace_back(text);
      }
    }
    ares_free_hostent(host);
    if (out.size() == before) {
      errors.push_back(NoRecords(type, name));
    }
  }

  void Finish() override {
    result.addresses = std::move(ipv4);
    result.addresses.insert(result.addresses.end(), ipv6.begin(), ipv6.end());
    if (!result.addresses.empty() || errors.empty()) {
      return;
    }
    // Absence only when every part proved it; NXDOMAIN wins over NODATA.
    auto temporary = std::find_if(errors.begin(), errors.end(),
                                  [](const absl::Status& s) { return !absl::IsNotFound(s); });
    auto nxdomain = std::find_if(errors.begin(), errors.end(), IsNxDomain);
    result.status = temporary != errors.end()  ? *temporary
                    : nxdomain != errors.end() ? *nxdomain
                                               : errors.front();
  }

  std::vector<std::string> ipv4;
  std::vector<std::string> ipv6;
  std::vector<absl::Status> errors;
};

struct PtrQuery : TypedQuery<NamesResult> {
  PtrQuery(std::function<void(NamesResult)> on_done, const IpAddress& ip)
      : TypedQuery(std::move(on_done)), address(ip) {}
  void Take(int type, int ares_status, const unsigned char* answer, int length) override {
    hostent* host = nullptr;
    if (ares_status == ARES_SUCCESS) {
      ares_status = ares_parse_ptr_reply(answer, length, address.bytes.data(), address.length(),
                                         address.family, &host);
    }
    if (ares_status != ARES_SUCCESS) {
      Fail(AresStatus(ares_status, type, name));
      return;
    }
    // c-ares lists every PTR target among the aliases and repeats the last as h_name.
    for (char** alias = host->h_aliases; alias != nullptr && *alias != nullptr; ++alias) {
      result.names.push_back(NormalizeName(*alias));
    }
    if (result.names.empty() && host->h_name != nullptr) {
      result.names.push_back(NormalizeName(host->h_name));
    }
    ares_free_hostent(host);
    if (result.names.empty()) {
      Fail(NoRecords(type, name));
    }
  }

  IpAddress address;
};

struct TxtQuery : TypedQuery<TxtResult> {
  using TypedQuery::TypedQuery;
  void Take(int type, int ares_status, const unsigned char* answer, int length) override {
    ares_txt_ext* chunks = nullptr;
    if (ares_status == ARES_SUCCESS) {
      ares_status = ares_parse_txt_reply_ext(answer, length, &chunks);
    }
    if (ares_status != ARES_SUCCESS) {
      Fail(AresStatus(ares_status, type, name));
      return;
    }
    for (const ares_txt_ext* chunk = chunks; chunk != nullptr; chunk = chunk->next) {
      if (chunk->record_start != 0 || result.texts.empty()) {
        result.texts.emplace_back();
      }
      result.texts.back().append(reinterpret_cast<const char*>(chunk->txt), chunk->length);
    }
    ares_free_data(chunks);
    if (result.texts.empty()) {
      Fail(NoRecords(type, name));
    }
  }
};

// Runs `query` as the Resolver would once c-ares has answered each of its parts successfully.
template <typename Result>
Result Convert(TypedQuery<Result>& query, const std::string& name,
               std::initializer_list<std::pair<int, std::string_view>> answers) {
  Result out;
  query.callback = [&out](Result result) { out = std::move(result); };
  query.name = name;
  for (const auto& [type, answer] : answers) {
    query.Take(type, ARES_SUCCESS, reinterpret_cast<const unsigned char*>(answer.data()),
               static_cast<int>(std::min<size_t>(answer.size(), std::numeric_limits<int>::max())));
  }
  query.Finish();
  query.Deliver();
  return out;
}

}  // namespace

namespace dns_internal {

MxResult MxFromAnswer(const std::string& name, std::string_view answer) {
  MxQuery query(nullptr);
  return Convert(query, name, {{ns_t_mx, answer}});
}

AddressResult AddressesFromAnswers(const std::string& name, std::string_view a_answer,
                                   std::string_view aaaa_answer) {
  AddressQuery query(nullptr);
  return Convert(query, name, {{ns_t_a, a_answer}, {ns_t_aaaa, aaaa_answer}});
}

NamesResult PtrFromAnswer(const std::string& ip, std::string_view answer) {
  const absl::StatusOr<IpAddress> address = ParseIp(ip);
  if (!address.ok()) {
    return NamesResult{address.status(), {}};
  }
  PtrQuery query(nullptr, *address);
  return Convert(query, ip, {{ns_t_ptr, answer}});
}

TxtResult TxtFromAnswer(const std::string& name, std::string_view answer) {
  TxtQuery query(nullptr);
  return Convert(query, name, {{ns_t_txt, answer}});
}

}  // namespace dns_internal

// ---------------------------------------------------------------------------------------------
// Watches: the Operations through which the loop tells us about c-ares' sockets and timeouts.
// Heap-allocated so that one can outlive the Resolver: the kernel may still hold a poll when
// c-ares closes its socket or the Resolver goes away; such a watch is cancelled, detached
// (owner = nullptr) and deletes itself on its final completion.

struct Resolver::Watch {
  // fd < 0: the timeout timer.
  Watch(Resolver* resolver, int socket)
      : owner(resolver), fd(socket), operation([this](const Completion& c) { OnCompletion(c); }) {}

  void OnCompletion(const Completion& completion) {
    if (owner == nullptr) {
      delete this;
      return;
    }
    // The owner may delete this watch (and itself) in there: touch nothing afterwards.
    if (fd < 0) {
      owner->OnTimer(completion);
    } else {
      owner->OnSocketEvent(*this, completion);
    }
  }

  Resolver* owner;
  const int fd;
  uint32_t events = 0;  // what c-ares wants to know about the socket: POLLIN, POLLOUT
  Operation operation;
};

Resolver::Resolver(EventLoop& loop) : loop_(loop) {}

absl::StatusOr<std::unique_ptr<Resolver>> Resolver::Create(EventLoop& loop,
                                                           ResolverOptions options) {
  std::unique_ptr<Resolver> resolver(new Resolver(loop));
  RETURN_IF_ERROR(resolver->Init(options));
  return resolver;
}

absl::Status Resolver::Init(const ResolverOptions& options) {
  // c-ares wants one call before the first channel and the call is not thread-safe: a
  // function-local static makes it happen once per process.
  static const int library_status = ares_library_init(ARES_LIB_INIT_ALL);
  if (library_status != ARES_SUCCESS) {
    return absl::InternalError(
        fmt::format("DNS: ares_library_init: {}", ares_strerror(library_status)));
  }
  if (options.tries < 1) {
    return absl::InvalidArgumentError("DNS: tries must be at least 1");
  }
  const int64_t timeout_ms = absl::ToInt64Milliseconds(options.timeout);
  if (timeout_ms < 1 || timeout_ms > std::numeric_limits<int>::max()) {
    return absl::InvalidArgumentError("DNS: the timeout must be between 1 ms and 24 days");
  }

  std::vector<ares_addr_port_node> servers(options.servers.size());
  for (size_t i = 0; i < options.servers.size(); ++i) {
    const HostPort& server = options.servers[i];
    ares_addr_port_node& node = servers[i];
    if (inet_pton(AF_INET, server.host.c_str(), &node.addr.addr4) == 1) {
      node.family = AF_INET;
    } else if (inet_pton(AF_INET6, server.host.c_str(), &node.addr.addr6) == 1) {
      node.family = AF_INET6;
    } else {
      return absl::InvalidArgumentError(
          fmt::format("DNS: server {} must be an IP address", server.ToString()));
    }
    if (server.port == 0) {
      return absl::InvalidArgumentError(
          fmt::format("DNS: server {} needs a port", server.ToString()));
    }
    node.udp_port = server.port;
    node.tcp_port = server.port;
    node.next = i + 1 < servers.size() ? &servers[i + 1] : nullptr;
  }

  ares_options ares{};
  ares.sock_state_cb = &Resolver::OnSocketState;
  ares.sock_state_cb_data = this;
  ares.timeout = static_cast<int>(timeout_ms);
  ares.tries = options.tries;
  int status = ares_init_options(&channel_, &ares,
                                 ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
  if (status != ARES_SUCCESS) {
    channel_ = nullptr;
    return absl::InternalError(fmt::format("DNS: ares_init_options: {}", ares_strerror(status)));
  }
  if (!servers.empty()) {
    status = ares_set_servers_ports(channel_, servers.data());
    if (status != ARES_SUCCESS) {
      return absl::InternalError(
          fmt::format("DNS: ares_set_servers_ports: {}", ares_strerror(status)));
    }
  }
  timer_ = std::make_unique<Watch>(this, -1);
  return absl::OkStatus();
}

Resolver::~Resolver() {
  destroying_ = true;
  if (destroyed_flag_ != nullptr) {
    *destroyed_flag_ = true;
  }
  if (channel_ != nullptr) {
    // Answers every pending query with ARES_EDESTRUCTION (into ready_) and closes its sockets,
    // which releases their watches through OnSocketState.
    ares_destroy(channel_);
  }
  for (auto& [fd, watch] : sockets_) {
    Release(std::move(watch));
  }
  sockets_.clear();
  if (timer_ != nullptr) {
    Release(std::move(timer_));
  }
  const absl::Status cancelled = absl::CancelledError("DNS: the resolver was destroyed");
  while (!ready_.empty()) {
    std::unique_ptr<Query> query = std::move(ready_.front());
    ready_.pop_front();
    query->Fail(cancelled);
    query->Deliver();
  }
}

void Resolver::LookupMx(const std::string& name, MxCallback callback) {
  Start(name, {ns_t_mx}, std::make_unique<MxQuery>(std::move(callback)));
}

void Resolver::LookupAddresses(const std::string& name, AddressCallback callback) {
  auto query = std::make_unique<AddressQuery>(std::move(callback));
  if (const absl::StatusOr<IpAddress> literal = ParseIp(name); literal.ok()) {
    char text[INET6_ADDRSTRLEN];
    inet_ntop(literal->family, literal->bytes.data(), text, sizeof(text));
    query->result.addresses.emplace_back(text);
    Enqueue(std::move(query));
    return;
  }
  Start(name, {ns_t_a, ns_t_aaaa}, std::move(query));
}

void Resolver::LookupA(const std::string& name, AddressCallback callback) {
  Start(name, {ns_t_a}, std::make_unique<AddressQuery>(std::move(callback)));
}

void Resolver::LookupPtr(const std::string& ip, NamesCallback callback) {
  const absl::StatusOr<IpAddress> address = ParseIp(ip);
  if (!address.ok()) {
    auto query = std::make_unique<PtrQuery>(std::move(callback), IpAddress{});
    Complete(std::move(query), address.status());
    return;
  }
  Start(ReversedLabels(*address) + "." + ReverseZone(*address), {ns_t_ptr},
        std::make_unique<PtrQuery>(std::move(callback), *address));
}

void Resolver::LookupTxt(const std::string& name, TxtCallback callback) {
  Start(name, {ns_t_txt}, std::make_unique<TxtQuery>(std::move(callback)));
}

void Resolver::Start(const std::string& name, std::initializer_list<int> types,
                     std::unique_ptr<Query> query) {
  query->resolver = this;
  query->name = name;
  if (destroying_ || loop_.stopping()) {
    Complete(std::move(query), absl::CancelledError("DNS: the event loop is stopping"));
    return;
  }
  if (name.find('\0') != std::string::npos) {
    Complete(std::move(query),
             absl::InvalidArgumentError("DNS: a domain name cannot contain a NUL byte"));
    return;
  }
  query->pending = static_cast<int>(types.size());
  size_t index = 0;
  for (int type : types) {
    query->parts[index++] = Query::Part{query.get(), type};
  }
  // c-ares owns the query until its last part is answered (possibly inside ares_query).
  Query* const raw = query.release();
  for (size_t i = 0; i < types.size(); ++i) {
    ares_query(channel_, name.c_str(), ns_c_in, raw->parts[i].type, &Resolver::OnAnswer,
               &raw->parts[i]);
  }
  ScheduleTimer();
}

void Resolver::Complete(std::unique_ptr<Query> query, absl::Status status) {
  query->Fail(std::move(status));
  Enqueue(std::move(query));
}

void Resolver::Enqueue(std::unique_ptr<Query> query) {
  ready_.push_back(std::move(query));
  ScheduleTimer();
}

void Resolver::OnAnswer(void* arg, int ares_status, int /*timeouts*/, unsigned char* answer,
                        int answer_length) {
  const Query::Part& part = *static_cast<Query::Part*>(arg);
  Query* const query = part.query;
  query->Take(part.type, ares_status, answer, answer_length);
  if (--query->pending > 0) {
    return;
  }
  query->Finish();
  // Callbacks run later, outside c-ares: one of them may destroy the Resolver.
  query->resolver->ready_.emplace_back(query);
}

void Resolver::OnSocketState(void* data, int fd, int readable, int writable) {
  Resolver* const self = static_cast<Resolver*>(data);
  const uint32_t events = (readable != 0 ? POLLIN : 0u) | (writable != 0 ? POLLOUT : 0u);
  auto it = self->sockets_.find(fd);
  if (events == 0) {
    // c-ares is about to close the socket; a new one may soon reuse the number.
    if (it != self->sockets_.end()) {
      std::unique_ptr<Watch> watch = std::move(it->second);
      self->sockets_.erase(it);
      self->Release(std::move(watch));
    }
    return;
  }
  if (it == self->sockets_.end()) {
    it = self->sockets_.emplace(fd, std::make_unique<Watch>(self, fd)).first;
  }
  Watch& watch = *it->second;
  if (watch.events == events) {
    return;
  }
  watch.events = events;
  if (watch.operation.in_flight()) {
    // Polling for the wrong events: its completion re-arms with the new ones.
    self->loop_.Cancel(watch.operation);
    return;
  }
  self->ArmSocket(fd);
}

void Resolver::ArmSocket(int fd) {
  if (destroying_ || loop_.stopping()) {
    return;
  }
  auto it = sockets_.find(fd);
  if (it == sockets_.end()) {
    return;
  }
  Watch& watch = *it->second;
  if (!watch.operation.in_flight() && watch.events != 0) {
    loop_.PollAdd(watch.operation, fd, watch.events);
  }
}

void Resolver::OnSocketEvent(Watch& watch, const Completion& completion) {
  if (loop_.stopping()) {
    return;
  }
  const int fd = watch.fd;
  if (completion.result != -ECANCELED) {
    // A failed poll is handed to c-ares as readable: its read then reports the error.
    const uint32_t revents =
        completion.result < 0 ? POLLERR : static_cast<uint32_t>(completion.result);
    const bool readable = (revents & (POLLIN | POLLERR | POLLHUP)) != 0;
    const bool writable = (revents & (POLLOUT | POLLERR | POLLHUP)) != 0;
    ares_process_fd(channel_, readable && (watch.events & POLLIN) != 0 ? fd : ARES_SOCKET_BAD,
                    writable && (watch.events & POLLOUT) != 0 ? fd : ARES_SOCKET_BAD);
  }
  // `watch` is gone if c-ares closed the socket meanwhile.
  ArmSocket(fd);
  if (!DeliverReady()) {
    return;
  }
  ScheduleTimer();
}

void Resolver::OnTimer(const Completion& /*completion*/) {
  timer_cancel_requested_ = false;
  if (loop_.stopping()) {
    return;
  }
  // Only expires queries whose time is up, so an early (cancelled) timer is harmless.
  ares_process_fd(channel_, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
  if (!DeliverReady()) {
    return;
  }
  ScheduleTimer();
}

void Resolver::ScheduleTimer() {
  if (destroying_ || loop_.stopping()) {
    return;
  }
  absl::Duration wait = absl::ZeroDuration();
  if (ready_.empty()) {
    timeval next{};
    if (ares_timeout(channel_, nullptr, &next) == nullptr) {
      return;  // nothing pending
    }
    wait = absl::DurationFromTimeval(next);
  }
  const auto deadline = std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(wait);
  if (timer_->operation.in_flight()) {
    if (deadline < timer_deadline_ && !timer_cancel_requested_) {
      // Too late for the new deadline: OnTimer runs on the cancellation and re-arms.
      timer_cancel_requested_ = true;
      loop_.Cancel(timer_->operation);
    }
    return;
  }
  timer_deadline_ = deadline;
  loop_.StartTimer(timer_->operation, wait);
}

bool Resolver::DeliverReady() {
  bool destroyed = false;
  destroyed_flag_ = &destroyed;
  while (!ready_.empty()) {
    std::unique_ptr<Query> query = std::move(ready_.front());
    ready_.pop_front();
    query->Deliver();
    if (destroyed) {
      return false;
    }
  }
  destroyed_flag_ = nullptr;
  return true;
}

void Resolver::Release(std::unique_ptr<Watch> watch) {
  if (watch == nullptr || !watch->operation.in_flight()) {
    return;  // deleted here
  }
  watch->owner = nullptr;
  loop_.Cancel(watch->operation);
  watch.release();  // NOLINT(bugprone-unused-return-value): it deletes itself when reaped
}

}  // namespace backstop
