#pragma once

// The ingest role of a backstop process: the SMTP server, the decisions its sessions need (the
// filter chain of DESIGN §3.3, relay control first), and the durable handoff of every accepted
// message to the queue (DESIGN §3.1: 250 only after the quorum commit).

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "common/config.h"
#include "common/metrics.h"
#include "common/tls.h"
#include "common/worker_pool.h"
#include "ingest/callout.h"
#include "ingest/filter.h"
#include "ingest/limit_filters.h"
#include "ingest/queue_handoff.h"
#include "ingest/relay_policy.h"
#include "ingest/smtp_server.h"
#include "queue/queue_client.h"

namespace backstop::ingest {

// What the ingest role counts for /metrics beyond the server's connection counters. Written on
// the handoff's threads, read by the scrape hook.
struct IngestCounters {
  // End-of-data outcomes after the filters passed: the queue commit.
  std::atomic<uint64_t> accepted{0};    // 250
  std::atomic<uint64_t> tempfail{0};    // 451 4.3.0: no commit in time
  std::atomic<uint64_t> over_limit{0};  // 452 4.3.1: a domain limit or the queue's storage
  std::atomic<uint64_t> refused{0};     // 554: the queue refused the entries
  std::atomic<uint64_t> recipients{0};  // of accepted messages
  metrics::Histogram message_bytes{metrics::SizeBounds()};      // accepted messages
  metrics::Histogram commit_seconds{metrics::LatencyBounds()};  // end of data → 250
};

// Owns the queue client, the handoff, the filter chain, each connection's filter state, the TLS
// context and the SMTP server. Start/Reload/Drain/destruction on the control thread (main);
// Decide() and Closed() on the SMTP loop threads; filter callbacks and the handoff's callbacks on
// any thread; ETRN flushes (blocking queue calls) on the flush thread; the greylist filter's
// queue calls on the queue_checks_ pool (daily-session counts go through the handoff).
class IngestRole : public SessionHandler {
 public:
  // `queue`: how to reach the queue (queue_client.h ConnectToQueue).
  static absl::StatusOr<std::unique_ptr<IngestRole>> Start(const Config& config,
                                                           const queue::QueueConnection& queue);
  ~IngestRole() override;

  // SIGHUP: the filter chain (relay domains, recipient lists, filters) and the TLS certificate.
  // Errors leave the previous TLS context in force.
  absl::Status Reload(const Config& config);
  // SIGTERM: stop accepting; sessions end at their next command. Then WaitIdle().
  void Drain() { server_->Drain(); }
  bool WaitIdle(absl::Duration timeout) { return server_->WaitIdle(timeout); }

  const std::vector<std::string>& listen_addresses() const { return server_->listen_addresses(); }
  uint64_t active_connections() const { return server_->active_connections(); }
  uint64_t accepted_connections() const { return server_->accepted_connections(); }
  uint64_t refused_connections() const { return server_->refused_connections(); }
  const QueueHandoff& handoff() const { return *handoff_; }
  const IngestCounters& counters() const { return counters_; }
  uint64_t tls_established() const { return server_->tls_established(); }
  // Not-after of the STARTTLS certificate in force (seconds since the epoch), 0 without TLS.
  int64_t tls_certificate_not_after() const;
  uint64_t tls_failed() const { return server_->tls_failed(); }
  // The outcomes of the filters since startup.
  std::vector<FilterCount> filter_counts() const { return filter_counters_->Snapshot(); }

  void Decide(const ConnectionInfo& connection, SmtpSession& session,
              std::function<void(const Verdict&)> respond) override;
  void Closed(const ConnectionInfo& connection, const SmtpSession* session) override;

 private:
  explicit IngestRole(const Config& config);
  // The filters of `config` in their order, around the relay policy in force. Not static: the
  // queue-backed filters call the role's queue client (on queue_checks_).
  std::shared_ptr<const FilterChain> BuildChain(const Config& config,
                                                std::shared_ptr<const RelayPolicy> policy);
  // `method` of the queue client, run on queue_checks_.
  template <typename Request, typename Result>
  AsyncQueueCall<Request, Result> QueueCall(
      absl::StatusOr<Result> (queue::QueueClient::*method)(const Request&));
  std::shared_ptr<const FilterChain> chain() const;
  std::shared_ptr<ConnectionState> ConnectionStateOf(uint64_t connection_id);
  // Counts one session against `domain` through the handoff (the filter's CountSessionCall).
  void CountSession(const std::string& domain,
                    std::function<void(absl::StatusOr<queue::SessionCount>)> answer);
  // End of data, every filter passed: the queue commit.
  void Commit(const FilterInput& transaction, std::function<void(const Verdict&)> respond);
  // ETRN (RFC 1985) from one of the domain's primaries: the domain is due now.
  void Etrn(const ConnectionInfo& connection, const std::string& domain,
            std::function<void(const Verdict&)> respond);
  void FlushLoop();

  // Each configured domain's primary hosts that are IP literals: the clients allowed to ETRN.
  using EtrnClients = std::unordered_map<std::string, std::vector<std::string>>;
  static std::shared_ptr<const EtrnClients> MakeEtrnClients(const Config& config);

  const uint64_t node_id_;
  const std::string hostname_;
  const absl::Duration commit_timeout_;
  std::atomic<uint64_t> next_sequence_{0};
  IngestCounters counters_;

  const std::shared_ptr<FilterCounters> filter_counters_ = std::make_shared<FilterCounters>();
  // Marked by the commits, read by every chain's QueueStorageFilter (kept across reloads).
  const std::shared_ptr<QueueStorageState> storage_state_ = std::make_shared<QueueStorageState>();
  // Daily-session counts the queue answered (the filter's, and those of appended messages):
  // kept across reloads, which rebuild the chain.
  const std::shared_ptr<KnownSessionCounts> known_sessions_ =
      std::make_shared<KnownSessionCounts>();
  mutable std::mutex config_mutex_;
  std::shared_ptr<const FilterChain> chain_;  // guarded by config_mutex_
  // The relay policy in force: a reload that cannot read a recipients file keeps its entries.
  std::shared_ptr<const RelayPolicy> relay_policy_;  // guarded by config_mutex_
  std::shared_ptr<const EtrnClients> etrn_clients_;  // guarded by config_mutex_
  std::mutex states_mutex_;
  // Open connections' filter state, by connection id; guarded by states_mutex_.
  std::unordered_map<uint64_t, std::shared_ptr<ConnectionState>> states_;
  std::unique_ptr<tls::ReloadableContext> tls_;  // null = no STARTTLS

  std::unique_ptr<queue::QueueClient> client_;
  std::unique_ptr<QueueHandoff> handoff_;
  // The filters' blocking queue calls (greylist, daily sessions). After client_: destroyed
  // first, so that no call outlives the client.
  WorkerPool queue_checks_;
  // Callouts to primaries and their cache, kept across reloads ([filters] callout changes take
  // effect at restart); the chains' CalloutFilters point at it.
  std::unique_ptr<Callout> callout_;

  std::mutex flush_mutex_;
  std::condition_variable flush_wake_;
  bool flush_stopping_ = false;  // guarded by flush_mutex_
  // Domains to flush and the sessions waiting for the answer; guarded by flush_mutex_.
  std::deque<std::pair<std::string, std::function<void(const Verdict&)>>> flushes_;
  std::thread flush_thread_;
  // Last: destroyed first, so that no session decides after the parts above are gone.
  std::unique_ptr<SmtpServer> server_;
};

}  // namespace backstop::ingest
