#include "cmd/backstop/role_metrics.h"

#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"

namespace backstop {

void RegisterMetrics(metrics::Metrics& metrics, const queue::QueueRole* queue_role,
                     const ingest::IngestRole* ingest_role,
                     const delivery::DeliveryRole* delivery_role,
                     const queue::ClusterCredentials& cluster_credentials) {
  prometheus::Registry& registry = metrics.registry();
  // Certificates reload on SIGHUP: the page shows the one in force.
  auto& expiry =
      prometheus::BuildGauge()
          .Name("backstop_tls_certificate_expiry_timestamp_seconds")
          .Help("Not-after of a certificate in force (kind: smtp STARTTLS, cluster mTLS)")
          .Register(registry);
  if (cluster_credentials.mutual_tls()) {
    auto& cluster = expiry.Add({{"kind", "cluster"}});
    metrics.OnScrape([&cluster, &cluster_credentials] {
      cluster.Set(static_cast<double>(cluster_credentials.certificate_not_after()));
    });
  }
  if (ingest_role != nullptr && ingest_role->tls_certificate_not_after() != 0) {
    auto& smtp = expiry.Add({{"kind", "smtp"}});
    metrics.OnScrape([&smtp, ingest_role] {
      smtp.Set(static_cast<double>(ingest_role->tls_certificate_not_after()));
    });
  }
  auto gauge = [&registry](const std::string& name, const std::string& help) -> prometheus::Gauge& {
    return prometheus::BuildGauge().Name(name).Help(help).Register(registry).Add({});
  };
  auto counter = [&registry](const std::string& name, const std::string& help,
                             const prometheus::Labels& labels = {}) -> prometheus::Counter& {
    return prometheus::BuildCounter().Name(name).Help(help).Register(registry).Add(labels);
  };
  if (queue_role != nullptr) {
    auto& has_leader = gauge("backstop_queue_has_leader", "1 when this voter knows a leader");
    auto& is_leader = gauge("backstop_queue_is_leader", "1 when this voter leads");
    auto& term = gauge("backstop_queue_term", "Raft term");
    auto& commit = gauge("backstop_queue_commit_index", "Raft commit index");
    auto& applied = gauge("backstop_queue_applied_index", "Index applied to the state machine");
    auto& fsyncs = counter("backstop_queue_fsyncs_total", "Synced Raft log writes");
    auto& persisted =
        counter("backstop_queue_entries_persisted_total", "Raft entries written by those fsyncs");
    const queue::QueueNode& node = queue_role->node();
    auto fsync_seconds = std::make_shared<metrics::HistogramMirror>(
        node.fsync_seconds(), prometheus::BuildHistogram()
                                  .Name("backstop_queue_fsync_duration_seconds")
                                  .Help("Synced writes of the Raft log")
                                  .Register(registry)
                                  .Add({}, node.fsync_seconds().bounds()));
    auto commit_seconds = std::make_shared<metrics::HistogramMirror>(
        node.commit_seconds(), prometheus::BuildHistogram()
                                   .Name("backstop_queue_commit_duration_seconds")
                                   .Help("Proposal to applied, on the voter that proposed")
                                   .Register(registry)
                                   .Add({}, node.commit_seconds().bounds()));
    auto& proposals_in_flight = gauge("backstop_queue_proposals_pending",
                                      "Proposals made through this voter and not answered yet");
    auto& leases_expired = counter("backstop_queue_leases_expired_total",
                                   "Delivery leases that ran out before their completion");
    auto& proposals_failed = counter("backstop_queue_proposals_failed_total",
                                     "Proposals that did not commit (lost leadership, timeout)");
    auto& rocksdb_pending = prometheus::BuildGauge()
                                .Name("backstop_rocksdb_pending_compaction_bytes")
                                .Help("RocksDB's estimate of bytes compaction must rewrite")
                                .Register(registry);
    auto& rocksdb_stopped = prometheus::BuildGauge()
                                .Name("backstop_rocksdb_write_stopped")
                                .Help("1 while RocksDB stops writes (stall)")
                                .Register(registry);
    auto& rocksdb_delayed = prometheus::BuildGauge()
                                .Name("backstop_rocksdb_delayed_write_rate_bytes")
                                .Help("Write rate RocksDB throttles to, 0 when not throttling")
                                .Register(registry);
    auto& rocksdb_errors = prometheus::BuildGauge()
                               .Name("backstop_rocksdb_background_errors")
                               .Help(
                                   "Background errors RocksDB has reported (nonzero: the "
                                   "voter has stopped serving)")
                               .Register(registry);
    auto& messages = gauge("backstop_queue_messages", "Queue entries (all states)");
    auto& bytes = gauge("backstop_queue_bytes", "Stored message bytes of the queue entries");
    auto& held = gauge("backstop_queue_held_messages", "Queue entries on hold");
    auto& leased = gauge("backstop_queue_leased_messages", "Queue entries leased to delivery");
    auto& oldest = gauge("backstop_queue_oldest_message_age_seconds",
                         "Age of the oldest queue entry, 0 when empty");
    auto& down = gauge("backstop_queue_domains_down", "Destination domains backing off");
    auto& domain_messages = prometheus::BuildGauge()
                                .Name("backstop_queue_domain_messages")
                                .Help("Queue entries per configured relay domain")
                                .Register(registry);
    auto& domain_bytes = prometheus::BuildGauge()
                             .Name("backstop_queue_domain_bytes")
                             .Help("Stored message bytes per configured relay domain")
                             .Register(registry);
    auto& domain_down = prometheus::BuildGauge()
                            .Name("backstop_queue_domain_down")
                            .Help("1 while a configured relay domain's primary is backing off")
                            .Register(registry);
    metrics.OnScrape([=, &node, &proposals_failed, &proposals_in_flight, &leases_expired,
                      &rocksdb_pending, &rocksdb_stopped, &rocksdb_delayed, &rocksdb_errors,
                      &messages, &bytes, &held, &leased, &oldest, &down, &domain_messages,
                      &domain_bytes, &domain_down] {
      fsync_seconds->Sync();
      commit_seconds->Sync();
      metrics::AdvanceTo(proposals_failed, static_cast<double>(node.proposals_failed()));
      proposals_in_flight.Set(static_cast<double>(node.proposals_in_flight()));
      metrics::AdvanceTo(leases_expired,
                         static_cast<double>(node.state_machine().leases_expired()));
      auto set_health = [&](const char* db, const queue::RocksDbHealth& health) {
        rocksdb_pending.Add({{"db", db}}).Set(static_cast<double>(health.pending_compaction_bytes));
        rocksdb_stopped.Add({{"db", db}}).Set(health.write_stopped ? 1 : 0);
        rocksdb_delayed.Add({{"db", db}}).Set(static_cast<double>(health.delayed_write_rate));
        rocksdb_errors.Add({{"db", db}}).Set(static_cast<double>(health.background_errors));
      };
      set_health("log", node.log_health());
      if (absl::StatusOr<queue::RocksDbHealth> health = node.state_machine().Health();
          health.ok()) {
        set_health("state", *health);
      }
      absl::StatusOr<std::vector<queue::DomainSummary>> summaries =
          node.state_machine().Summaries();
      if (!summaries.ok()) {
        return;
      }
      double total = 0, total_bytes = 0, total_held = 0, total_leased = 0, domains_down = 0;
      int64_t oldest_ms = 0;
      for (const queue::DomainSummary& summary : *summaries) {
        total += static_cast<double>(summary.queued_messages());
        total_bytes += static_cast<double>(summary.queued_bytes());
        total_held += static_cast<double>(summary.held_messages());
        total_leased += static_cast<double>(summary.leased_messages());
        domains_down += summary.down() ? 1 : 0;
        if (summary.oldest_enqueue_ms() > 0 &&
            (oldest_ms == 0 || summary.oldest_enqueue_ms() < oldest_ms)) {
          oldest_ms = summary.oldest_enqueue_ms();
        }
        // Configured domains only: a bounded label set (DSN targets are anyone's domains).
        if (summary.configured()) {
          const prometheus::Labels labels{{"domain", summary.domain()}};
          domain_messages.Add(labels).Set(static_cast<double>(summary.queued_messages()));
          domain_bytes.Add(labels).Set(static_cast<double>(summary.queued_bytes()));
          domain_down.Add(labels).Set(summary.down() ? 1 : 0);
        }
      }
      messages.Set(total);
      bytes.Set(total_bytes);
      held.Set(total_held);
      leased.Set(total_leased);
      down.Set(domains_down);
      oldest.Set(oldest_ms == 0
                     ? 0
                     : std::max(0.0, absl::ToDoubleSeconds(absl::Now() -
                                                           absl::FromUnixMillis(oldest_ms))));
    });
    auto& grpc_started = prometheus::BuildCounter()
                             .Name("grpc_server_started_total")
                             .Help("RPCs started on the queue's gRPC server")
                             .Register(registry);
    auto& grpc_handled = prometheus::BuildCounter()
                             .Name("grpc_server_handled_total")
                             .Help("RPCs completed on the queue's gRPC server, by status code")
                             .Register(registry);
    auto& grpc_seconds = prometheus::BuildHistogram()
                             .Name("grpc_server_handling_seconds")
                             .Help("Time from the start of an RPC to its status")
                             .Register(registry);
    auto grpc_mirrors = std::make_shared<
        std::map<queue::GrpcServerMetrics::Method, std::unique_ptr<metrics::HistogramMirror>>>();
    metrics.OnScrape([=, &grpc_started, &grpc_handled, &grpc_seconds] {
      for (const auto& [method, counts] : queue_role->grpc_metrics().Snapshot()) {
        const prometheus::Labels labels{{"grpc_type", method.type},
                                        {"grpc_service", method.service},
                                        {"grpc_method", method.method}};
        metrics::AdvanceTo(grpc_started.Add(labels), static_cast<double>(counts.started));
        for (const auto& [code, handled] : counts.handled) {
          prometheus::Labels with_code = labels;
          with_code["grpc_code"] = code;
          metrics::AdvanceTo(grpc_handled.Add(with_code), static_cast<double>(handled));
        }
        std::unique_ptr<metrics::HistogramMirror>& mirror = (*grpc_mirrors)[method];
        if (!mirror) {
          mirror = std::make_unique<metrics::HistogramMirror>(
              *counts.seconds, grpc_seconds.Add(labels, counts.seconds->bounds()));
        }
        mirror->Sync();
      }
    });
    metrics.OnScrape([=, &has_leader, &is_leader, &term, &commit, &applied, &fsyncs, &persisted] {
      const queue::QueueNodeStatus status = queue_role->status();
      has_leader.Set(status.leader.IsNone() ? 0 : 1);
      is_leader.Set(status.is_leader ? 1 : 0);
      term.Set(static_cast<double>(status.term.value()));
      commit.Set(static_cast<double>(status.commit.value()));
      applied.Set(static_cast<double>(status.applied.value()));
      metrics::AdvanceTo(fsyncs, static_cast<double>(status.synced_writes));
      metrics::AdvanceTo(persisted, static_cast<double>(status.entries_persisted));
    });
  }
  if (ingest_role != nullptr) {
    auto& active = gauge("backstop_ingest_connections_active", "Open SMTP connections");
    auto& accepted = counter("backstop_ingest_connections_total", "Accepted SMTP connections");
    auto& refused = counter("backstop_ingest_connections_refused_total",
                            "Connections refused at the banner", {{"reason", "limit"}});
    auto& rpcs = counter("backstop_ingest_append_rpcs_total", "Append RPCs to the queue");
    auto& entries =
        counter("backstop_ingest_entries_appended_total", "Queue entries carried by those RPCs");
    auto& filters = prometheus::BuildCounter()
                        .Name("backstop_filter_results_total")
                        .Help(
                            "Filter outcomes that stopped or marked a command, by filter, "
                            "SMTP stage, result (reject, tempfail, pass) and reason")
                        .Register(registry);
    const ingest::IngestCounters& c = ingest_role->counters();
    auto& messages = prometheus::BuildCounter()
                         .Name("backstop_ingest_messages_total")
                         .Help(
                             "Messages at the end of data after the filters passed, by the "
                             "outcome of the queue commit")
                         .Register(registry);
    auto& accepted_messages = messages.Add({{"result", "accepted"}});
    auto& tempfailed_messages = messages.Add({{"result", "tempfail"}});
    auto& over_limit_messages = messages.Add({{"result", "over_limit"}});
    auto& refused_messages = messages.Add({{"result", "refused"}});
    auto& recipients =
        counter("backstop_ingest_recipients_total", "Recipients of accepted messages");
    auto& tls = prometheus::BuildCounter()
                    .Name("backstop_ingest_tls_handshakes_total")
                    .Help("STARTTLS handshakes, by result")
                    .Register(registry);
    auto& tls_ok = tls.Add({{"result", "ok"}});
    auto& tls_failed = tls.Add({{"result", "failed"}});
    auto sizes = std::make_shared<metrics::HistogramMirror>(
        c.message_bytes, prometheus::BuildHistogram()
                             .Name("backstop_ingest_message_size_bytes")
                             .Help("Sizes of accepted messages")
                             .Register(registry)
                             .Add({}, c.message_bytes.bounds()));
    auto commits = std::make_shared<metrics::HistogramMirror>(
        c.commit_seconds, prometheus::BuildHistogram()
                              .Name("backstop_ingest_commit_duration_seconds")
                              .Help("From the end of data to the quorum commit (the 250)")
                              .Register(registry)
                              .Add({}, c.commit_seconds.bounds()));
    metrics.OnScrape([=, &c, &accepted_messages, &tempfailed_messages, &over_limit_messages,
                      &refused_messages, &recipients, &tls_ok, &tls_failed] {
      metrics::AdvanceTo(accepted_messages, static_cast<double>(c.accepted.load()));
      metrics::AdvanceTo(tempfailed_messages, static_cast<double>(c.tempfail.load()));
      metrics::AdvanceTo(over_limit_messages, static_cast<double>(c.over_limit.load()));
      metrics::AdvanceTo(refused_messages, static_cast<double>(c.refused.load()));
      metrics::AdvanceTo(recipients, static_cast<double>(c.recipients.load()));
      metrics::AdvanceTo(tls_ok, static_cast<double>(ingest_role->tls_established()));
      metrics::AdvanceTo(tls_failed, static_cast<double>(ingest_role->tls_failed()));
      sizes->Sync();
      commits->Sync();
    });
    metrics.OnScrape([=, &active, &accepted, &refused, &rpcs, &entries, &filters] {
      for (const ingest::FilterCount& count : ingest_role->filter_counts()) {
        metrics::AdvanceTo(filters.Add({{"filter", count.filter},
                                        {"stage", count.stage},
                                        {"result", count.result},
                                        {"reason", count.reason}}),
                           static_cast<double>(count.count));
      }
      active.Set(static_cast<double>(ingest_role->active_connections()));
      metrics::AdvanceTo(accepted, static_cast<double>(ingest_role->accepted_connections()));
      metrics::AdvanceTo(refused, static_cast<double>(ingest_role->refused_connections()));
      metrics::AdvanceTo(rpcs, static_cast<double>(ingest_role->handoff().rpcs()));
      metrics::AdvanceTo(entries, static_cast<double>(ingest_role->handoff().entries_sent()));
    });
  }
  if (delivery_role != nullptr) {
    const delivery::DeliveryCounters& c = delivery_role->counters();
    auto& family = prometheus::BuildCounter()
                       .Name("backstop_delivery_results_total")
                       .Help("Queue entries completed, by result")
                       .Register(registry);
    auto& delivered = family.Add({{"result", "delivered"}});
    auto& deferred = family.Add({{"result", "deferred"}});
    auto& bounced = family.Add({{"result", "bounced"}});
    auto& leased = counter("backstop_delivery_leased_total", "Queue entries leased");
    auto& dsns = counter("backstop_delivery_dsns_total", "DSNs queued");
    auto& connections = counter("backstop_delivery_connections_total",
                                "SMTP connections established toward primaries");
    auto& failures =
        counter("backstop_delivery_connection_failures_total", "Connection attempts that failed");
    auto time_in_queue = std::make_shared<metrics::HistogramMirror>(
        c.time_in_queue_seconds,
        prometheus::BuildHistogram()
            .Name("backstop_delivery_time_in_queue_seconds")
            .Help("From the arrival at ingest to the delivery to the primary")
            .Register(registry)
            .Add({}, c.time_in_queue_seconds.bounds()));
    auto& active = gauge("backstop_delivery_connections_active",
                         "SMTP connections toward primaries established and not closed yet");
    auto& attempt_family =
        prometheus::BuildHistogram()
            .Name("backstop_delivery_attempt_duration_seconds")
            .Help(
                "One message's delivery attempt: the setup of its connection (DNS, connect, "
                "greeting, EHLO, STARTTLS; 0 on a reused connection) plus its transaction, by "
                "how the entry was completed")
            .Register(registry);
    auto attempts = std::make_shared<std::vector<std::unique_ptr<metrics::HistogramMirror>>>();
    for (const auto& [result, histogram] : {std::pair<const char*, const metrics::Histogram*>{
                                                "delivered", &c.attempt_delivered_seconds},
                                            {"deferred", &c.attempt_deferred_seconds},
                                            {"bounced", &c.attempt_bounced_seconds}}) {
      attempts->push_back(std::make_unique<metrics::HistogramMirror>(
          *histogram, attempt_family.Add({{"result", result}}, histogram->bounds())));
    }
    auto& replies = prometheus::BuildCounter()
                        .Name("backstop_delivery_primary_replies_total")
                        .Help(
                            "Replies of the primaries by the command they answer (stage) and "
                            "class; none = no reply (connection refused, lost or timed out)")
                        .Register(registry);
    auto& dns = prometheus::BuildCounter()
                    .Name("backstop_delivery_dns_lookups_total")
                    .Help(
                        "DNS lookups of delivery routing: MX, and address (A and AAAA asked "
                        "together), by result")
                    .Register(registry);
    metrics.OnScrape([&, attempts] {
      active.Set(static_cast<double>(c.connections_active.load()));
      for (const auto& mirror : *attempts) {
        mirror->Sync();
      }
      // Series appear once they count something: the label sets stay few and bounded.
      for (size_t stage = 0; stage < delivery::kReplyStages; ++stage) {
        for (size_t reply_class = 0; reply_class < delivery::kReplyClasses; ++reply_class) {
          const uint64_t count = c.primary_replies[stage][reply_class].load();
          if (count > 0) {
            metrics::AdvanceTo(
                replies.Add({{"stage", std::string(delivery::ReplyStageLabel(stage))},
                             {"class", std::string(delivery::ReplyClassLabel(
                                           static_cast<delivery::ReplyClass>(reply_class)))}}),
                static_cast<double>(count));
          }
        }
      }
      for (size_t type = 0; type < delivery::kDnsLookupTypes; ++type) {
        for (size_t result = 0; result < delivery::kDnsLookupResults; ++result) {
          const uint64_t count = c.dns_lookups[type][result].load();
          if (count > 0) {
            metrics::AdvanceTo(
                dns.Add({{"type", std::string(delivery::DnsLookupTypeLabel(
                                      static_cast<delivery::DnsLookupType>(type)))},
                         {"result", std::string(delivery::DnsLookupResultLabel(
                                        static_cast<delivery::DnsLookupResult>(result)))}}),
                static_cast<double>(count));
          }
        }
      }
    });
    metrics.OnScrape([&, time_in_queue] {
      time_in_queue->Sync();
      metrics::AdvanceTo(delivered, static_cast<double>(c.delivered.load()));
      metrics::AdvanceTo(deferred, static_cast<double>(c.deferred.load()));
      metrics::AdvanceTo(bounced, static_cast<double>(c.bounced.load()));
      metrics::AdvanceTo(leased, static_cast<double>(c.leased.load()));
      metrics::AdvanceTo(dsns, static_cast<double>(c.dsns.load()));
      metrics::AdvanceTo(connections, static_cast<double>(c.connections.load()));
      metrics::AdvanceTo(failures, static_cast<double>(c.connection_failures.load()));
    });
  }
}

}  // namespace backstop
