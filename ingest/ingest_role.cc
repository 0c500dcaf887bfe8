#include "ingest/ingest_role.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <utility>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "absl/strings/ascii.h"
#include "common/log.h"
#include "common/status.h"
#include "ingest/dns_filters.h"
#include "ingest/greylist_filter.h"
#include "ingest/header_check.h"
#include "ingest/received.h"
#include "queue/message_id.h"

namespace backstop::ingest {
namespace {

const log::Logger& Log() {
  static const log::Logger logger("ingest");
  return logger;
}

// Threads for the filters' queue calls: each blocks for a Raft commit, and concurrent ones
// share the leader's group commit, so a few more threads mean more sessions served at once.
constexpr size_t kQueueCheckThreads = 16;

Verdict Refuse(int code, const char* enhanced, std::string text) {
  return Verdict::Reject(Reply{code, enhanced, {std::move(text)}});
}

// DESIGN §3.2: one entry per destination domain, with only that domain's recipients.
std::map<std::string, std::vector<const RcptRequest*>> RecipientsByDomain(
    const FilterInput& transaction) {
  std::map<std::string, std::vector<const RcptRequest*>> by_domain;
  // RcptRequest::domain is already canonical: lower-case, one trailing dot removed.
  for (const RcptRequest& rcpt : transaction.recipients) {
    by_domain[rcpt.domain].push_back(&rcpt);
  }
  return by_domain;
}

}  // namespace

IngestRole::IngestRole(const Config& config)
    : node_id_(config.node.id),
      hostname_(config.node.hostname),
      commit_timeout_(config.smtp.commit_timeout),
      etrn_clients_(MakeEtrnClients(config)),
      queue_checks_(kQueueCheckThreads),
      callout_(std::make_unique<Callout>(CalloutOptions{
          .probe = {.helo = config.node.hostname, .timeout = config.filters.callout.timeout},
          .cache = {.positive_ttl = config.filters.callout.positive_ttl,
                    .negative_ttl = config.filters.callout.negative_ttl,
                    .max_entries = config.filters.callout.cache_size},
          .threads = config.filters.callout.threads,
          .unreachable_ttl = config.filters.callout.unreachable_ttl})) {}

std::shared_ptr<const IngestRole::EtrnClients> IngestRole::MakeEtrnClients(const Config& config) {
  auto clients = std::make_shared<EtrnClients>();
  for (const DomainConfig& domain : config.domains) {
    std::vector<std::string>& hosts = (*clients)[absl::AsciiStrToLower(domain.name)];
    for (const HostPort& primary : domain.primary) {
      std::string host = primary.host;
      if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
        host = host.substr(1, host.size() - 2);
      }
      hosts.push_back(absl::AsciiStrToLower(host));
    }
  }
  return clients;
}

int64_t IngestRole::tls_certificate_not_after() const {
  const std::shared_ptr<const tls::Context> context = tls_ != nullptr ? tls_->Current() : nullptr;
  return context != nullptr ? context->certificate_not_after() : 0;
}

absl::StatusOr<std::unique_ptr<IngestRole>> IngestRole::Start(const Config& config,
                                                              const queue::QueueConnection& queue) {
  std::unique_ptr<IngestRole> role(new IngestRole(config));
  // An unreadable recipients file at startup is a configuration error.
  ASSIGN_OR_RETURN(role->relay_policy_, RelayPolicy::Load(config.domains, nullptr));

  if (!config.smtp.tls_cert.empty()) {
    role->tls_ = std::make_unique<tls::ReloadableContext>(
        tls::ServerContextOptions{config.smtp.tls_cert, config.smtp.tls_key});
    RETURN_IF_ERROR(role->tls_->Reload());
  }

  ASSIGN_OR_RETURN(role->client_, queue::ConnectToQueue(config, queue, role->commit_timeout_));
  queue::QueueClient* client = role->client_.get();
  role->chain_ = role->BuildChain(config, role->relay_policy_);
  role->handoff_ = std::make_unique<QueueHandoff>(
      [client](const queue::AppendMessages& request) { return client->Append(request); });

  SmtpServerOptions options;
  options.listen = config.smtp.listen;
  options.threads = config.smtp.threads;
  options.session.hostname = config.node.hostname;
  options.session.max_message_size = config.smtp.max_message_size;
  options.session.max_recipients = config.smtp.max_recipients;
  options.session.max_errors = config.smtp.max_errors;
  options.session.command_timeout = config.smtp.command_timeout;
  options.session.data_timeout = config.smtp.data_timeout;
  options.max_connections = config.smtp.max_connections;
  options.max_connections_per_ip = config.smtp.max_connections_per_ip;
  options.proxy_protocol = config.smtp.proxy_protocol;
  ASSIGN_OR_RETURN(options.trusted_proxies, CidrSet::Parse(config.smtp.trusted_proxies));
  if (role->tls_) {
    tls::ReloadableContext* tls = role->tls_.get();
    options.tls_context = [tls] { return tls->Current(); };
  }
  // Every loop thread resolves for the DNS-based filters (rDNS, DNSBL, sender domains).
  options.resolver = ResolverOptions{.servers = config.dns.servers};
  IngestRole* raw = role.get();
  role->flush_thread_ = std::thread([raw] { raw->FlushLoop(); });
  ASSIGN_OR_RETURN(role->server_, SmtpServer::Start(std::move(options), role.get()));
  return role;
}

IngestRole::~IngestRole() {
  // The server first: its loops stop, so nothing decides any more; then the handoff fails what
  // is still waiting (those clients never got a 250).
  server_.reset();
  handoff_.reset();
  // Waits for the probes running; the callbacks of those go nowhere, the loops being gone.
  callout_.reset();
  {
    std::lock_guard lock(flush_mutex_);
    flush_stopping_ = true;
  }
  flush_wake_.notify_all();
  if (flush_thread_.joinable()) {
    flush_thread_.join();
  }
}

absl::Status IngestRole::Reload(const Config& config) {
  std::shared_ptr<const RelayPolicy> policy;
  {
    std::lock_guard lock(config_mutex_);
    policy = relay_policy_;
  }
  // The recipients files are read outside the lock, so that sessions go on deciding. With a
  // previous policy, Load keeps what it cannot re-read and does not fail.
  if (absl::StatusOr<std::shared_ptr<const RelayPolicy>> loaded =
          RelayPolicy::Load(config.domains, policy.get());
      loaded.ok()) {
    policy = *std::move(loaded);
  }
  std::shared_ptr<const FilterChain> chain = BuildChain(config, policy);
  std::shared_ptr<const EtrnClients> etrn_clients = MakeEtrnClients(config);
  {
    std::lock_guard lock(config_mutex_);
    relay_policy_ = std::move(policy);
    chain_ = std::move(chain);
    etrn_clients_ = std::move(etrn_clients);
  }
  if (tls_) {
    return tls_->Reload();
  }
  return absl::OkStatus();
}

void IngestRole::Decide(const ConnectionInfo& connection, SmtpSession& session,
                        std::function<void(const Verdict&)> respond) {
  const RequestKind kind = session.pending();
  if (kind == RequestKind::kEtrn) {
    Etrn(connection, session.pending_etrn(), std::move(respond));
    return;
  }
  auto input = std::make_shared<FilterInput>();
  switch (kind) {
    case RequestKind::kConnect:
      input->stage = Stage::kConnect;
      break;
    case RequestKind::kHelo:
      input->stage = Stage::kHelo;
      break;
    case RequestKind::kMail:
      input->stage = Stage::kMail;
      input->mail = session.pending_mail();
      break;
    case RequestKind::kRcpt:
      input->stage = Stage::kRcpt;
      input->mail = session.mail();
      input->rcpt = session.pending_rcpt();
      break;
    case RequestKind::kEndOfData: {
      const Transaction& transaction = session.transaction();
      input->stage = Stage::kEndOfData;
      input->mail = transaction.mail;
      input->recipients = transaction.recipients;
      input->esmtp = transaction.esmtp;
      input->message = std::make_shared<const std::string>(session.TakeMessage());
      break;
    }
    default:
      respond(Verdict::Accept());
      return;
  }
  input->connection_id = connection.id;
  input->client = connection.client;
  input->tls = connection.tls;
  input->helo = kind == RequestKind::kHelo ? session.pending_helo() : session.helo();
  input->state = ConnectionStateOf(connection.id);
  input->dns = connection.dns;
  input->executor = connection.executor;

  chain()->Run(input, [this, input, respond = std::move(respond)](FilterResult result) mutable {
    if (result.kind == FilterResult::Kind::kReject) {
      // The harvest defence counts refusals (unknown users, relay attempts), not tempfails:
      // a greylisted first delivery to many recipients is no directory harvest.
      if (input->stage == Stage::kRcpt && result.reply->code >= 500) {
        std::lock_guard lock(input->state->mutex);
        ++input->state->rejected_recipients;
      }
      Log().Info("rejected", {{"connection", input->connection_id},
                              {"stage", std::string(StageName(input->stage))},
                              {"reason", result.reason},
                              {"client", input->client.ip},
                              {"reply", result.reply->Serialize()}});
      respond(Verdict::Reject(std::move(*result.reply)));
      return;
    }
    if (input->stage == Stage::kEndOfData) {
      Commit(*input, std::move(respond));
      return;
    }
    respond(Verdict::Accept());
  });
}

void IngestRole::Closed(const ConnectionInfo& connection, const SmtpSession* /*session*/) {
  std::shared_ptr<ConnectionState> state;
  {
    std::lock_guard lock(states_mutex_);
    const auto it = states_.find(connection.id);
    if (it == states_.end()) {
      return;
    }
    state = std::move(it->second);
    states_.erase(it);
  }
  std::set<std::string> uncounted;
  {
    std::lock_guard lock(state->mutex);
    uncounted.swap(state->uncounted_domains);
  }
  // No message counted these sessions: they are counted on their own, answered to nobody.
  for (const std::string& domain : uncounted) {
    CountSession(domain, [known = known_sessions_](absl::StatusOr<queue::SessionCount> count) {
      if (count.ok()) {
        known->Remember(count->domain(), count->sessions_today());
      }
    });
  }
}

void IngestRole::CountSession(const std::string& domain,
                              std::function<void(absl::StatusOr<queue::SessionCount>)> answer) {
  handoff_->CountSession(domain, absl::Now() + commit_timeout_,
                         [answer = std::move(answer)](const HandoffOutcome& outcome) {
                           if (outcome.kind != HandoffOutcome::Kind::kCommitted) {
                             answer(absl::UnavailableError(outcome.detail));
                             return;
                           }
                           answer(outcome.session_counts.front());
                         });
}

std::shared_ptr<ConnectionState> IngestRole::ConnectionStateOf(uint64_t connection_id) {
  std::lock_guard lock(states_mutex_);
  std::shared_ptr<ConnectionState>& state = states_[connection_id];
  if (!state) {
    state = std::make_shared<ConnectionState>();
  }
  return state;
}

std::shared_ptr<const FilterChain> IngestRole::chain() const {
  std::lock_guard lock(config_mutex_);
  return chain_;
}

template <typename Request, typename Result>
AsyncQueueCall<Request, Result> IngestRole::QueueCall(
    absl::StatusOr<Result> (queue::QueueClient::*method)(const Request&)) {
  return
      [this, method](const Request& request, std::function<void(absl::StatusOr<Result>)> answer) {
        queue_checks_.Submit([this, method, request, answer = std::move(answer)](bool cancelled) {
          if (cancelled) {
            answer(absl::CancelledError("ingest is shutting down"));
            return;
          }
          answer((client_.get()->*method)(request));
        });
      };
}

std::shared_ptr<const FilterChain> IngestRole::BuildChain(
    const Config& config, std::shared_ptr<const RelayPolicy> policy) {
  // Order matters: cheap local checks first, the relay check before anything that asks the
  // network about a recipient, greylisting last (it costs a queue commit).
  std::vector<std::unique_ptr<Filter>> filters;
  // First at MAIL: with the queue's storage full, nothing else is worth asking.
  filters.push_back(std::make_unique<QueueStorageFilter>(storage_state_));
  if (config.smtp.max_connection_rate_per_ip > 0) {
    filters.push_back(std::make_unique<ConnectionRateFilter>(
        ConnectionRateOptions{.max_per_minute = config.smtp.max_connection_rate_per_ip}));
  }
  if (config.filters.harvest.enabled) {
    filters.push_back(std::make_unique<HarvestFilter>(config.filters.harvest.delay));
  }
  // rDNS and DNSBL look up at connect and give their refusals at MAIL, before the sender check.
  if (config.filters.rdns.enabled) {
    filters.push_back(std::make_unique<RdnsFilter>(config.filters.rdns.require));
  }
  if (config.filters.dnsbl.enabled) {
    filters.push_back(std::make_unique<DnsblFilter>(config.filters.dnsbl));
  }
  if (config.filters.sender.enabled) {
    filters.push_back(std::make_unique<SenderFilter>());
  }
  filters.push_back(std::make_unique<RelayFilter>(std::move(policy)));
  filters.push_back(std::make_unique<CalloutFilter>(config.domains, callout_.get()));
  DomainConnectionOptions sessions;
  sessions.count = [this](const std::string& domain,
                          std::function<void(absl::StatusOr<queue::SessionCount>)> answer) {
    CountSession(domain, std::move(answer));
  };
  sessions.known = known_sessions_;
  for (const DomainConfig& domain : config.domains) {
    sessions.limits[domain.name] = domain.max_daily_connections;
  }
  filters.push_back(std::make_unique<DomainConnectionFilter>(std::move(sessions)));
  if (config.filters.greylist.enabled) {
    filters.push_back(std::make_unique<GreylistFilter>(
        GreylistFilterOptions{.config = config.filters.greylist,
                              .check = QueueCall(&queue::QueueClient::CheckGreylist)}));
  }
  filters.push_back(std::make_unique<HopCountFilter>(config.smtp.max_received_headers));
  if (config.filters.headers.enabled) {
    filters.push_back(std::make_unique<HeaderFilter>(config.filters.headers));
  }
  return std::make_shared<FilterChain>(std::move(filters), filter_counters_);
}

void IngestRole::Etrn(const ConnectionInfo& connection, const std::string& domain,
                      std::function<void(const Verdict&)> respond) {
  std::shared_ptr<const EtrnClients> clients;
  {
    std::lock_guard lock(config_mutex_);
    clients = etrn_clients_;
  }
  const auto it = clients->find(domain);
  if (it == clients->end()) {
    respond(Refuse(459, "5.1.2", fmt::format("Node {} not allowed: not a relay domain", domain)));
    return;
  }
  const std::string client = absl::AsciiStrToLower(connection.client.ip);
  if (std::find(it->second.begin(), it->second.end(), client) == it->second.end()) {
    Log().Info("etrn refused", {{"domain", domain}, {"client", connection.client.ip}});
    respond(Refuse(458, "4.7.0",
                   fmt::format("Unable to queue messages for node {}: not allowed from {}", domain,
                               connection.client.ip)));
    return;
  }
  {
    std::lock_guard lock(flush_mutex_);
    flushes_.emplace_back(domain, std::move(respond));
  }
  flush_wake_.notify_one();
}

void IngestRole::FlushLoop() {
  std::unique_lock lock(flush_mutex_);
  while (true) {
    flush_wake_.wait(lock, [this] { return flush_stopping_ || !flushes_.empty(); });
    if (flushes_.empty()) {
      return;
    }
    auto [domain, respond] = std::move(flushes_.front());
    flushes_.pop_front();
    if (flush_stopping_) {
      lock.unlock();
      respond(Refuse(458, "4.3.2", "Unable to queue messages for node " + domain));
      lock.lock();
      continue;
    }
    lock.unlock();
    queue::FlushDomain request;
    request.set_domain(domain);
    const absl::StatusOr<queue::SelectionResult> result = client_->Flush(request);
    if (result.ok()) {
      Log().Info("etrn", {{"domain", domain}, {"entries", result->affected()}});
      respond(Verdict::Accept());
    } else {
      Log().Warn("etrn failed",
                 {{"domain", domain}, {"error", std::string(result.status().message())}});
      respond(Refuse(458, "4.3.0", "Unable to queue messages for node " + domain));
    }
    lock.lock();
  }
}

void IngestRole::Commit(const FilterInput& transaction,
                        std::function<void(const Verdict&)> respond) {
  const std::string& data = *transaction.message;
  const absl::Time now = absl::Now();
  std::string rdns;
  std::set<std::string> uncounted;
  {
    std::lock_guard lock(transaction.state->mutex);
    rdns = transaction.state->rdns_name.value_or("");
    uncounted = transaction.state->uncounted_domains;
  }
  std::vector<queue::QueueEntry> entries;
  std::vector<std::string> ids;
  for (const auto& [domain, recipients] : RecipientsByDomain(transaction)) {
    const queue::MessageId id = queue::MessageId::Make(
        now, node_id_, next_sequence_.fetch_add(1, std::memory_order_relaxed));
    queue::QueueEntry& entry = entries.emplace_back();
    entry.set_id(std::string(id.bytes()));
    entry.set_domain(domain);
    entry.set_count_session(uncounted.contains(domain));
    queue::Envelope& envelope = *entry.mutable_envelope();
    envelope.set_reverse_path(transaction.mail.reverse_path);
    for (const RcptRequest* rcpt : recipients) {
      *envelope.add_recipients() = rcpt->recipient;
    }
    envelope.set_declared_size(transaction.mail.declared_size);
    envelope.set_body(transaction.mail.body);
    envelope.set_smtputf8(transaction.mail.smtputf8);
    envelope.set_ret(transaction.mail.ret);
    envelope.set_envid(transaction.mail.envid);
    envelope.set_client_ip(transaction.client.ip);
    envelope.set_rdns(rdns);
    envelope.set_helo(transaction.helo);
    envelope.set_arrival_ms(absl::ToUnixMillis(now));
    envelope.set_ingest_node_id(node_id_);

    ReceivedFields received;
    received.helo = transaction.helo;
    received.client_ip = transaction.client.ip;
    received.client_rdns = rdns;
    received.hostname = hostname_;
    received.esmtp = transaction.esmtp;
    received.smtputf8 = transaction.mail.smtputf8;
    received.tls = transaction.tls;
    received.id = id.ToString();
    if (recipients.size() == 1) {
      received.recipient = recipients.front()->recipient.address();
    }
    received.time = now;
    std::string message = BuildReceivedHeader(received);
    message.reserve(message.size() + data.size());
    message += data;
    entry.set_message(std::move(message));
    ids.push_back(id.ToString());
  }

  const std::string from = transaction.mail.reverse_path;
  const size_t size = data.size();
  const size_t recipient_count = transaction.recipients.size();
  const std::string client = transaction.client.ip;
  handoff_->Submit(
      std::move(entries), now + commit_timeout_,
      [this, respond = std::move(respond), ids = std::move(ids), from, size, recipient_count,
       client, now, state = transaction.state](const HandoffOutcome& outcome) {
        const std::string id_list = fmt::format("{}", fmt::join(ids, ","));
        const double delay = absl::ToDoubleSeconds(absl::Now() - now);
        for (const queue::SessionCount& count : outcome.session_counts) {
          known_sessions_->Remember(count.domain(), count.sessions_today());
          // Counted (or refused, which ends the session): no later message counts it again.
          std::lock_guard lock(state->mutex);
          state->uncounted_domains.erase(count.domain());
        }
        switch (outcome.kind) {
          case HandoffOutcome::Kind::kSessionLimit: {
            // The daily-session filter's refusal, come at the end of data (limit_filters.h).
            const Reply reply = DailySessionsRefusal(outcome.detail);
            filter_counters_->Add("domain_connections", Stage::kEndOfData,
                                  FilterResult::Reject(reply, "over_limit"));
            Log().Info("rejected", {{"reason", "over_daily_sessions"},
                                    {"from", from},
                                    {"client", client},
                                    {"domain", outcome.detail}});
            respond(Verdict::Reject(reply));
            return;
          }
          case HandoffOutcome::Kind::kCommitted:
            storage_state_->MarkAvailable();
            counters_.accepted.fetch_add(1, std::memory_order_relaxed);
            counters_.recipients.fetch_add(recipient_count, std::memory_order_relaxed);
            counters_.message_bytes.Observe(static_cast<double>(size));
            counters_.commit_seconds.Observe(delay);
            // Postfix-like delay: here, end of data → the 250 (the quorum commit).
            Log().Info("received", {{"ids", id_list},
                                    {"from", from},
                                    {"client", client},
                                    {"size", size},
                                    {"delay", std::round(delay * 100) / 100}});
            respond(Verdict::AcceptWith(
                Reply{250, "2.0.0", {fmt::format("Ok: queued as {}", id_list)}}));
            return;
          case HandoffOutcome::Kind::kStorageFull:
            if (!storage_state_->full()) {
              Log().Warn("queue storage full: refusing MAIL until an append commits",
                         {{"detail", outcome.detail}});
            }
            storage_state_->MarkFull();
            [[fallthrough]];
          case HandoffOutcome::Kind::kOverLimit:
            counters_.over_limit.fetch_add(1, std::memory_order_relaxed);
            Log().Info("rejected", {{"reason", "over_limit"},
                                    {"from", from},
                                    {"client", client},
                                    {"detail", outcome.detail}});
            respond(Refuse(452, "4.3.1", "Insufficient system storage: " + outcome.detail));
            return;
          case HandoffOutcome::Kind::kTempFail:
            counters_.tempfail.fetch_add(1, std::memory_order_relaxed);
            Log().Warn(
                "commit failed",
                {{"ids", id_list}, {"from", from}, {"client", client}, {"error", outcome.detail}});
            respond(Refuse(451, "4.3.0", "Queue temporarily unavailable, try again later"));
            return;
          case HandoffOutcome::Kind::kRejected:
            counters_.refused.fetch_add(1, std::memory_order_relaxed);
            Log().Error("queue refused a message", {{"ids", id_list}, {"error", outcome.detail}});
            respond(Refuse(554, "5.3.0", "Message refused by the queue"));
            return;
        }
      });
}

}  // namespace backstop::ingest
