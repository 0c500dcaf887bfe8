#pragma once

// The filter chain of DESIGN §3.3: checks that run at connect, HELO, MAIL, RCPT and end of data,
// each answering continue, reject with a reply (5xx), or tempfail (4xx; 421 also closes).
// Filters may be asynchronous (DNS, the replicated greylist, callouts to the primary) and never
// block the event loop: a filter gets a snapshot of what the session knows (FilterInput, cheap
// to copy; the message is shared, not copied), and answers through a callback from any thread.

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "common/dns_resolver.h"
#include "common/event_loop.h"
#include "ingest/smtp_session.h"

namespace backstop::ingest {

enum class Stage : uint8_t { kConnect, kHelo, kMail, kRcpt, kEndOfData };
std::string_view StageName(Stage stage);

// What one connection's filters learn and keep between stages: written by one stage's filters,
// read by later ones. Shared by the connection's inputs and by the lookups still in flight.
// Thread-safe: the fields are guarded by `mutex` (stages of one connection run one after the
// other, but their callbacks may run on different threads).
struct ConnectionState {
  mutable std::mutex mutex;
  // Recipients refused in this session (the directory-harvest defence).
  uint32_t rejected_recipients = 0;
  // Domains whose daily-session counter this session already bumped.
  std::set<std::string> counted_domains;
  // Of those, the ones whose count rides with the session's next message to the domain
  // (QueueEntry.count_session; DomainConnectionFilter found headroom), or is sent when the
  // session ends without one.
  std::set<std::string> uncounted_domains;
  // Set by connect-stage filters for later stages (all default to "nothing known").
  std::optional<std::string> rdns_name;  // the client's verified host name, if any
  bool dnswl_listed = false;             // a DNSWL zone lists the client
  // A refusal decided at connect that is given later (rDNS, DNSBL: given at MAIL so that the
  // client hears a reply RFC 5321 allows there, and so that it is counted per transaction).
  std::optional<Reply> deferred_refusal;
  std::string deferred_refusal_filter;
  std::string deferred_refusal_reason;
};

// A snapshot of what the session knows at a decision. Filters read it during Check() and may
// keep it (it is shared) while they work asynchronously.
struct FilterInput {
  Stage stage = Stage::kConnect;
  uint64_t connection_id = 0;
  ClientInfo client;
  std::optional<TlsInfo> tls;
  std::string helo;  // kHelo: the one being asked
  bool esmtp = false;
  MailRequest mail;  // kMail: the MAIL being asked; kRcpt, kEndOfData: the transaction's
  RcptRequest rcpt;  // kRcpt
  // kEndOfData: the accepted recipients, and the message (dot-unstuffed, CRLF line ends).
  std::vector<RcptRequest> recipients;
  std::shared_ptr<const std::string> message;
  std::shared_ptr<ConnectionState> state;
  // The connection's loop thread's resolver (null when DNS is not configured): call it through
  // `executor`, on that thread only; its callbacks come back on that thread.
  DnsClient* dns = nullptr;
  std::shared_ptr<LoopExecutor> executor;
};

// A filter's answer. A reject carries the reply the client gets (5xx: refused; 4xx: try
// later; 421: and the session ends). `reason` labels the outcome in metrics: a short fixed
// word, never anything taken from the client (bounded label values, DESIGN §3.5); a Continue
// with a reason is counted too (e.g. "allowlisted", "dns_timeout" for a check that failed open).
struct FilterResult {
  enum class Kind : uint8_t { kContinue, kReject };
  Kind kind = Kind::kContinue;
  std::optional<Reply> reply;
  std::string reason;
  // Wait this long before going on (the harvest tarpit slows every reply of a session).
  absl::Duration delay = absl::ZeroDuration();

  static FilterResult Continue(std::string reason = "") {
    return {Kind::kContinue, std::nullopt, std::move(reason), absl::ZeroDuration()};
  }
  static FilterResult Reject(Reply reply, std::string reason) {
    return {Kind::kReject, std::move(reply), std::move(reason), absl::ZeroDuration()};
  }
};

using FilterDone = std::function<void(FilterResult)>;

// One check. Owned by the FilterChain; Check() is called on the connection's loop thread,
// concurrently for many connections, so a filter's own state is thread-safe.
class Filter {
 public:
  virtual ~Filter() = default;
  // For metrics and logs: "rdns", "dnsbl", "greylist", ...
  virtual std::string_view name() const = 0;
  // Whether Check() wants to see this stage at all.
  virtual bool Handles(Stage stage) const = 0;
  // Calls `done` exactly once, on any thread, now or later.
  virtual void Check(std::shared_ptr<const FilterInput> input, FilterDone done) = 0;
};

// A count of filter outcomes, for /metrics: per filter, stage, result ("reject", "tempfail",
// "pass") and reason.
struct FilterCount {
  std::string filter;
  std::string stage;
  std::string result;
  std::string reason;
  uint64_t count = 0;
};

// The outcome counts of every chain an ingest role builds: they outlive reloads, so that the
// counters exported from them never go back. Thread-safe.
class FilterCounters {
 public:
  void Add(std::string_view filter, Stage stage, const FilterResult& result);
  // Sorted by filter, stage, result, reason.
  std::vector<FilterCount> Snapshot() const;

 private:
  mutable std::mutex mutex_;
  // (filter, stage, result, reason) → count; guarded by mutex_.
  std::map<std::tuple<std::string, std::string, std::string, std::string>, uint64_t> counts_;
};

// The ordered filters of one configuration. Immutable once built; a reload builds a new chain
// (a decision in progress finishes with the old one), owned by shared pointers, which the
// filters' callbacks hold while they run. Thread-safe.
class FilterChain : public std::enable_shared_from_this<FilterChain> {
 public:
  FilterChain(std::vector<std::unique_ptr<Filter>> filters,
              std::shared_ptr<FilterCounters> counters);

  // Runs the filters that handle input->stage in order until one rejects; `done` gets that
  // rejection, else Continue. `done` is called exactly once, on any thread. A filter's delay
  // is waited out on the connection's loop (input->executor) before the chain goes on.
  void Run(std::shared_ptr<const FilterInput> input, FilterDone done) const;

 private:
  void RunFrom(size_t index, std::shared_ptr<const FilterInput> input, FilterDone done) const;

  std::vector<std::unique_ptr<Filter>> filters_;
  const std::shared_ptr<FilterCounters> counters_;
};

}  // namespace backstop::ingest
