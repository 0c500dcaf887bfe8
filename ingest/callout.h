#pragma once

// Recipient verification by callout (DESIGN §3.3, [[domain]] recipient_callout): before
// accepting a recipient we ask the domain's primary whether it would, with the probe every MTA
// understands — EHLO, MAIL FROM:<>, RCPT TO:<address>, QUIT — and remember the answer. An
// unknown user is refused at RCPT (550 5.1.1) instead of being bounced days later
// (backscatter). Any answer that is not definite (4xx, refused connection, timeout, a primary
// that insists on TLS) accepts the recipient: the primary being down is exactly when a backup
// MX must take mail. Only a cached "no such user" still refuses then.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/time/time.h"
#include "common/clock.h"
#include "common/config.h"
#include "common/worker_pool.h"
#include "ingest/filter.h"

namespace backstop::ingest {

enum class CalloutAnswer : uint8_t {
  kExists,       // RCPT got 2xx
  kUnknownUser,  // RCPT got 550, 551 or 553 with a 5.1.x enhanced code (or none)
  kUnreachable,  // nothing definite: 4xx, other 5xx, refused, timeout, a broken dialog
};

std::string_view CalloutAnswerName(CalloutAnswer answer);

struct ProbeOptions {
  std::string helo;                            // our node.hostname, for EHLO
  absl::Duration timeout = absl::Seconds(10);  // one host's whole dialog, connect included
};

// Asks `hosts` in order whether they accept `address` (the next host only when one gives no
// definite answer). Blocks for up to hosts.size() × timeout; host names are resolved with
// getaddrinfo. Call it on a WorkerPool thread, never on an event loop. Thread-safe (no state).
CalloutAnswer ProbeRecipient(const std::vector<HostPort>& hosts, std::string_view address,
                             const ProbeOptions& options);

struct CalloutCacheOptions {
  absl::Duration positive_ttl = absl::Hours(24);
  absl::Duration negative_ttl = absl::Hours(1);
  size_t max_entries = 100'000;  // beyond it the oldest stored answer goes; 0 = no cache
};

// Definite answers (kExists, kUnknownUser) by address, each until its TTL runs out on the
// clock's monotonic time. Owns its entries. Thread-safe (one mutex, held for a map operation).
class CalloutCache {
 public:
  CalloutCache(CalloutCacheOptions options, const Clock* clock);

  // The answer stored for `key` while it is fresh.
  std::optional<CalloutAnswer> Lookup(const std::string& key);
  // Remembers a definite answer (kUnreachable is not remembered), replacing any older one.
  void Store(const std::string& key, CalloutAnswer answer);
  size_t size() const;

 private:
  struct Entry {
    CalloutAnswer answer;
    absl::Duration expires;                  // monotonic
    std::list<std::string>::iterator order;  // its place in order_
  };
  void EraseLocked(std::unordered_map<std::string, Entry>::iterator it);

  const CalloutCacheOptions options_;
  const Clock* const clock_;
  mutable std::mutex mutex_;
  std::unordered_map<std::string, Entry> entries_;  // guarded by mutex_
  std::list<std::string> order_;                    // keys, oldest stored first; guarded by mutex_
};

struct CalloutOptions {
  ProbeOptions probe;
  CalloutCacheOptions cache;
  size_t threads = 4;
  // After a probe without a definite answer, the primary is taken to be down for this long:
  // addresses not in the cache are accepted at once instead of each waiting for a timeout of
  // its own (a silent primary would otherwise hold every RCPT for `probe.timeout`). 0 = ask
  // every time.
  absl::Duration unreachable_ttl = absl::Minutes(1);
};

// The callout service shared by every connection and by successive filter chains (a reload
// keeps the cache): the cache, the threads that probe, and the probes in flight, so that
// concurrent RCPTs for one address make one probe. Owned by IngestRole, which destroys it after
// the SMTP server (its destructor waits for the probes running and cancels the queued ones,
// whose callers hear kUnreachable). Verify() from any thread.
class Callout {
 public:
  struct Result {
    CalloutAnswer answer = CalloutAnswer::kUnreachable;
    bool cached = false;
  };
  using Done = std::function<void(Result)>;

  explicit Callout(CalloutOptions options, const Clock* clock = &RealClock::Get());

  // Whether `hosts` accept `address`. A cached answer (or kUnreachable while `hosts` are taken
  // to be down) calls `done` at once, on the caller's thread; otherwise `done` runs on a pool
  // thread when the probe ends.
  void Verify(const std::vector<HostPort>& hosts, const std::string& address, Done done);

 private:
  void Probe(const std::vector<HostPort>& hosts, const std::string& address, const std::string& key,
             bool cancelled);

  static std::string HostsKey(const std::vector<HostPort>& hosts);

  const ProbeOptions probe_options_;
  const absl::Duration unreachable_ttl_;
  const Clock* const clock_;
  CalloutCache cache_;
  std::mutex mutex_;
  // Callers waiting for the probe of each key in flight; guarded by mutex_.
  std::unordered_map<std::string, std::vector<Done>> waiting_;
  // Host lists (HostsKey) taken to be down, until a monotonic time; guarded by mutex_.
  std::unordered_map<std::string, absl::Duration> down_until_;
  // Last: destroyed first, so that no probe runs once the members above are gone.
  WorkerPool pool_;
};

// The callout as a filter of the RCPT stage ("callout"), after the relay check: for recipients
// of domains with recipient_callout (postmaster excepted, RFC 5321 §4.5.1). Reasons counted:
// "verified" and "cache_hit" (pass), "callout_unknown_user" and "cache_hit" (reject),
// "callout_unreachable" (pass: the primary gave no definite answer). Holds the domains it
// serves; `callout` is IngestRole's and outlives every chain.
class CalloutFilter : public Filter {
 public:
  CalloutFilter(const std::vector<DomainConfig>& domains, Callout* callout);
  std::string_view name() const override { return "callout"; }
  bool Handles(Stage stage) const override { return stage == Stage::kRcpt; }
  void Check(std::shared_ptr<const FilterInput> input, FilterDone done) override;

 private:
  // Primary hosts by lower-case domain name, for the domains with recipient_callout.
  std::unordered_map<std::string, std::vector<HostPort>> primaries_;
  Callout* const callout_;
};

}  // namespace backstop::ingest
