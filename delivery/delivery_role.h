#pragma once

// The delivery role of a backstop process (DESIGN §3.4): leases due queue entries in batches
// grouped by domain, routes each domain (configured primaries, else MX records below our own),
// delivers over SMTP connections driven by an io_uring loop (at most connections_per_domain
// per domain, several messages per connection, STARTTLS per the domain's policy), and completes
// every entry in batches: delivered, retry later (the domain backs off), or bounced with the
// RFC 3464 DSN queued in the same command.

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "common/config.h"
#include "common/dns_resolver.h"
#include "common/event_loop.h"
#include "common/metrics.h"
#include "common/tls.h"
#include "delivery/smtp_client.h"
#include "queue/queue_client.h"

namespace backstop::delivery {

// The DNS lookups of routing and connecting: backstop_delivery_dns_lookups_total{type,result}.
// kAddress is one A + AAAA pair: the resolver asks both at once and answers once (OK when
// either has addresses). IP literals are no lookup and are not counted.
enum class DnsLookupType : uint8_t { kMx, kAddress };
inline constexpr size_t kDnsLookupTypes = 2;
enum class DnsLookupResult : uint8_t { kOk, kNxDomain, kNoData, kError };
inline constexpr size_t kDnsLookupResults = 4;
std::string_view DnsLookupTypeLabel(DnsLookupType type);        // "mx", "address"
std::string_view DnsLookupResultLabel(DnsLookupResult result);  // "ok", "nxdomain", ...

// backstop_delivery_primary_replies_total{stage}: the SmtpStage of a reply, or this one for a
// connection attempt that failed before any reply (refused, unreachable, timed out).
inline constexpr size_t kConnectStage = kSmtpStages;
inline constexpr size_t kReplyStages = kSmtpStages + 1;
std::string_view ReplyStageLabel(size_t stage);  // SmtpStageLabel, or "connect"

// Seconds: 10 ms .. 10 min (the longest SMTP timeout is the end of data's 10 minutes).
std::vector<double> AttemptBounds();

// Counters for /metrics and /status; any thread.
struct DeliveryCounters {
  std::atomic<uint64_t> leased{0};
  std::atomic<uint64_t> delivered{0};
  std::atomic<uint64_t> deferred{0};
  std::atomic<uint64_t> bounced{0};
  std::atomic<uint64_t> dsns{0};
  std::atomic<uint64_t> connections{0};
  std::atomic<uint64_t> connection_failures{0};
  std::atomic<int64_t> connections_active{0};  // established and not closed yet
  // [stage][ReplyClass]: replies of the primaries by the command they answer (kReplyStages).
  std::array<std::array<std::atomic<uint64_t>, kReplyClasses>, kReplyStages> primary_replies{};
  // [DnsLookupType][DnsLookupResult].
  std::array<std::array<std::atomic<uint64_t>, kDnsLookupResults>, kDnsLookupTypes> dns_lookups{};
  // One message's attempt on a connection (its share of the connection setup, c, plus its
  // transmission, d; see delivery/delays.h), by how the entry was completed.
  metrics::Histogram attempt_delivered_seconds{AttemptBounds()};
  metrics::Histogram attempt_deferred_seconds{AttemptBounds()};
  metrics::Histogram attempt_bounced_seconds{AttemptBounds()};
  // Arrival at ingest → delivered to the primary, per delivered entry: 1 s .. 5 days.
  metrics::Histogram time_in_queue_seconds{
      {1, 10, 60, 300, 900, 3600, 6 * 3600, 24 * 3600, 2 * 24 * 3600, 5 * 24 * 3600}};

  void CountReply(size_t stage, ReplyClass reply_class) {
    primary_replies[stage][static_cast<size_t>(reply_class)].fetch_add(1,
                                                                       std::memory_order_relaxed);
  }
  // A lookup's answer; Cancelled (we are stopping) is no answer and not counted.
  void CountDns(DnsLookupType type, const absl::Status& status);
};

// Owns the queue client, the lease thread (blocking gRPC calls: Lease, Extend, Complete), and the
// loop thread with its resolver and SMTP connections. Start/Reload/destruction on the control
// thread.
class DeliveryRole {
 public:
  // `queue`: how to reach the queue (queue_client.h ConnectToQueue).
  static absl::StatusOr<std::unique_ptr<DeliveryRole>> Start(const Config& config,
                                                             const queue::QueueConnection& queue);
  // Stops leasing, closes the connections (their entries' leases expire and they are leased
  // again: late, never lost) and joins the threads.
  ~DeliveryRole();
  DeliveryRole(const DeliveryRole&) = delete;
  DeliveryRole& operator=(const DeliveryRole&) = delete;

  // SIGHUP: per-domain primaries and TLS policy.
  void Reload(const Config& config);
  const DeliveryCounters& counters() const { return counters_; }

 private:
  class Job;
  class Connection;
  struct Attempt;
  friend class Job;
  friend class Connection;

  explicit DeliveryRole(const Config& config);
  void LeaseLoop();
  // Loop thread: delivers one leased domain.
  void StartJob(queue::LeasedDomain leased);
  void JobDone(Job* job);
  // Loop thread: a connection of `domain` closed; the oldest parked job of the domain may open
  // one (and may finish, deleting itself).
  void ReleaseConnection(const std::string& domain);
  // Loop thread: takes a job with nothing left to send out of the parked queue.
  void Unpark(Job* job);
  // Any thread: hands finished entries to the lease thread.
  void Finished(std::vector<queue::CompletionItem> items);
  // Lease thread, `lock` holding mutex_ (released during the call): once a held lease is half
  // way to its expiry, extends every held lease in one Extend.
  void ExtendDueLeases(std::unique_lock<std::mutex>& lock);
  // A 16-byte id for a DSN this node creates.
  std::string NewId();
  std::shared_ptr<const DomainConfig> DomainPolicy(const std::string& domain) const;

  // A lease this worker holds until its completion is sent.
  struct HeldLease {
    uint64_t token = 0;
    absl::Time renew_at;  // when to extend it: half a lease after it was granted or extended
  };

  const Config config_;
  const std::string worker_id_;
  const absl::Duration lease_duration_;
  DeliveryCounters counters_;
  std::atomic<uint64_t> next_sequence_{0};

  mutable std::mutex domains_mutex_;
  // Configured domains by name (primaries, TLS policy); guarded by domains_mutex_.
  std::unordered_map<std::string, std::shared_ptr<const DomainConfig>> domains_;

  std::unique_ptr<queue::QueueClient> client_;
  std::shared_ptr<const tls::Context> tls_;

  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;                           // guarded by mutex_
  std::vector<queue::CompletionItem> completions_;  // guarded by mutex_
  // Leased and not completed yet, by entry id; guarded by mutex_.
  std::unordered_map<std::string, HeldLease> held_;
  absl::Time extend_retry_at_ = absl::InfinitePast();  // lease thread only
  std::thread lease_thread_;

  std::unique_ptr<EventLoop> loop_;
  std::thread loop_thread_;
  // Loop thread only.
  std::unique_ptr<Resolver> resolver_;
  std::unordered_map<Job*, std::unique_ptr<Job>> jobs_;
  // Open connections per domain (the connections_per_domain cap spans jobs), and the jobs
  // waiting for one of them, oldest first.
  std::unordered_map<std::string, size_t> domain_connections_;
  std::unordered_map<std::string, std::deque<Job*>> parked_jobs_;
};

}  // namespace backstop::delivery
