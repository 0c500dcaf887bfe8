#pragma once

// Asynchronous DNS lookups on c-ares whose sockets are polled by the thread's io_uring
// EventLoop (DESIGN §3.3): no resolver thread, no blocking call. Used by delivery (MX routing,
// RFC 5321 §5.1 implicit MX, RFC 7505 null MX) and by the ingest filters (rDNS, DNSBL,
// sender domain checks).
//
// Errors, as the callers need them for SMTP replies:
// - OK: the answer has at least one record.
// - NotFound: the name definitely has no such record. IsNxDomain() tells a name that does
//   not exist from IsNoData(), a name that exists without records of the type asked for
//   (for MX: fall back to the A/AAAA records of the domain itself, RFC 5321 §5.1).
// - DeadlineExceeded: no server answered in time. Unavailable: SERVFAIL, REFUSED, connection
//   refused, malformed answers. Both are temporary (4xx), never a reason to reject for good.
// - InvalidArgument: the name or address cannot be queried at all (e.g. "a..b").
// - Cancelled: the Resolver was destroyed (or its loop stopped) before the answer came.

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/config.h"
#include "common/event_loop.h"

// c-ares' channel type, without including ares.h in every user of this header.
struct ares_channeldata;

namespace backstop {

class Resolver;

namespace dns_internal {
// One lookup in progress (dns_resolver.cc).
struct Query;
}  // namespace dns_internal

// True when `status` says the queried name does not exist (NXDOMAIN).
bool IsNxDomain(const absl::Status& status);
// True when `status` says the name exists but has no record of the queried type (NODATA).
bool IsNoData(const absl::Status& status);

// "4.3.2.1.in-addr.arpa" for "1.2.3.4"; the nibble form under "ip6.arpa" for IPv6.
absl::StatusOr<std::string> ReverseLookupName(const std::string& ip);
// The RFC 5782 query name of `ip` in a DNSBL `zone`: "4.3.2.1.zen.example" for "1.2.3.4".
absl::StatusOr<std::string> DnsblQueryName(const std::string& ip, const std::string& zone);

struct MxRecord {
  uint16_t preference = 0;
  std::string exchange;  // without the trailing dot
  friend bool operator==(const MxRecord&, const MxRecord&) = default;
};

struct MxResult {
  absl::Status status;
  // Sorted by preference (equal preferences in answer order). Empty when null_mx.
  std::vector<MxRecord> records;
  // RFC 7505: the domain's only MX is "0 ." — it accepts no mail. status is OK then.
  bool null_mx = false;
};

struct AddressResult {
  absl::Status status;
  // Textual IPs: every IPv4 address (A) first, then every IPv6 address (AAAA).
  std::vector<std::string> addresses;
};

struct NamesResult {
  absl::Status status;
  std::vector<std::string> names;  // without trailing dots
};

struct TxtResult {
  absl::Status status;
  // One string per TXT record (its character-strings concatenated, RFC 7208 §3.3).
  std::vector<std::string> texts;
};

namespace dns_internal {
// What a lookup reports for raw DNS answers (every part answered, as c-ares hands answers to the
// Resolver), converted by the very code the Resolver runs. For the fuzz target
// tests/fuzz/dns_answer_fuzz.cc, so that hostile answers reach our conversion without a DNS
// server; `name` only appears in error messages, `ip` is the address a PTR lookup asked about.
MxResult MxFromAnswer(const std::string& name, std::string_view answer);
AddressResult AddressesFromAnswers(const std::string& name, std::string_view a_answer,
                                   std::string_view aaaa_answer);
NamesResult PtrFromAnswer(const std::string& ip, std::string_view answer);
TxtResult TxtFromAnswer(const std::string& name, std::string_view answer);
}  // namespace dns_internal

struct ResolverOptions {
  // IP literals with ports; empty = the servers (and options) of /etc/resolv.conf.
  std::vector<HostPort> servers;
  // Per try; c-ares doubles it for each further round through the servers.
  absl::Duration timeout = absl::Seconds(2);
  // Attempts per server before a query fails with DeadlineExceeded.
  int tries = 2;
};

// The lookups DNS-based checks need, so that they can be tested against a fake. Callbacks run
// exactly once each, never inside the call that started the lookup; which thread runs them is
// the implementation's to say (Resolver: its loop thread).
class DnsClient {
 public:
  using MxCallback = std::function<void(MxResult)>;
  using AddressCallback = std::function<void(AddressResult)>;
  using NamesCallback = std::function<void(NamesResult)>;
  using TxtCallback = std::function<void(TxtResult)>;

  virtual ~DnsClient() = default;
  // Names are queried as given (no search list); a trailing dot is allowed.
  virtual void LookupMx(const std::string& name, MxCallback callback) = 0;
  // A and AAAA in parallel. OK when either has addresses (a failed AAAA next to a good A
  // is not an error); NotFound when neither has any and both said so definitely; otherwise
  // the temporary error. An IP literal (a configured primary) is its own only address.
  virtual void LookupAddresses(const std::string& name, AddressCallback callback) = 0;
  // A only: DNSBL queries (see DnsblQueryName).
  virtual void LookupA(const std::string& name, AddressCallback callback) = 0;
  // PTR of the reverse name of `ip` (IPv4 or IPv6 literal).
  virtual void LookupPtr(const std::string& ip, NamesCallback callback) = 0;
  virtual void LookupTxt(const std::string& name, TxtCallback callback) = 0;
};

// One c-ares channel driven by one EventLoop: it owns the channel, a poll Operation per
// c-ares socket and the timer that makes c-ares notice timeouts.
//
// Threading: everything, including destruction, on the loop's thread; the loop must outlive
// the Resolver. Callbacks run on that thread, exactly once each, never inside the Lookup call
// that started them. Destroying the Resolver (also from inside a callback) completes every
// pending lookup with Cancelled before the destructor returns; those callbacks must not call
// back into the Resolver. Lookups still pending when the loop stops complete, also with
// Cancelled, when the Resolver is destroyed.
class Resolver : public DnsClient {
 public:
  static absl::StatusOr<std::unique_ptr<Resolver>> Create(EventLoop& loop, ResolverOptions options);
  ~Resolver() override;
  Resolver(const Resolver&) = delete;
  Resolver& operator=(const Resolver&) = delete;

  void LookupMx(const std::string& name, MxCallback callback) override;
  void LookupAddresses(const std::string& name, AddressCallback callback) override;
  void LookupA(const std::string& name, AddressCallback callback) override;
  void LookupPtr(const std::string& ip, NamesCallback callback) override;
  void LookupTxt(const std::string& name, TxtCallback callback) override;

 private:
  struct Watch;
  using Query = dns_internal::Query;

  explicit Resolver(EventLoop& loop);
  absl::Status Init(const ResolverOptions& options);

  // Asks c-ares for the records of `types` (one part each) under `name`; `query` goes to
  // c-ares and comes back through OnAnswer.
  void Start(const std::string& name, std::initializer_list<int> types,
             std::unique_ptr<Query> query);
  // Completes `query` with `status` without asking c-ares (bad input, loop stopping).
  void Complete(std::unique_ptr<Query> query, absl::Status status);
  // Queues a finished query for DeliverReady.
  void Enqueue(std::unique_ptr<Query> query);
  static void OnAnswer(void* arg, int ares_status, int timeouts, unsigned char* answer,
                       int answer_length);
  static void OnSocketState(void* data, int fd, int readable, int writable);
  void OnSocketEvent(Watch& watch, const Completion& completion);
  void OnTimer(const Completion& completion);
  void ArmSocket(int fd);
  // Re-arms the timer for c-ares' next timeout, or right away when callbacks are waiting.
  void ScheduleTimer();
  // Runs the ready callbacks. Returns false when one of them destroyed the Resolver.
  bool DeliverReady();
  // Gives up `watch`: cancelled if in flight, then it deletes itself on its final completion.
  void Release(std::unique_ptr<Watch> watch);

  EventLoop& loop_;
  ares_channeldata* channel_ = nullptr;
  std::unordered_map<int, std::unique_ptr<Watch>> sockets_;
  std::unique_ptr<Watch> timer_;
  // When the armed timer fires; monotonic, so that wall-clock steps cannot delay a timeout.
  std::chrono::steady_clock::time_point timer_deadline_;
  bool timer_cancel_requested_ = false;
  // Answers waiting to be handed to their callbacks, outside any c-ares call.
  std::deque<std::unique_ptr<Query>> ready_;
  bool destroying_ = false;
  // Points at a flag on DeliverReady's stack while it runs, so the destructor can tell it.
  bool* destroyed_flag_ = nullptr;
};

}  // namespace backstop
