#include "delivery/delivery_role.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include "absl/strings/ascii.h"
#include "common/log.h"
#include "common/socket.h"
#include "common/status.h"
#include "common/units.h"
#include "delivery/delays.h"
#include "delivery/dsn.h"
#include "delivery/mx_selection.h"
#include "delivery/smtp_client.h"
#include "queue/message_id.h"

namespace backstop::delivery {
namespace {

// After a failed Extend, the next try waits this long (or until the lease loop wakes anyway).
constexpr absl::Duration kExtendRetry = absl::Seconds(1);
constexpr absl::Duration kConnectTimeout = absl::Seconds(30);
// How often an idle worker asks for due entries.
constexpr absl::Duration kIdlePoll = absl::Milliseconds(500);
// Entries leased and not yet completed, at most.
constexpr size_t kMaxInFlight = 2048;
// Messages one connection carries.
constexpr size_t kMessagesPerConnection = 100;
// Entries one Lease asks for, at most.
constexpr size_t kLeaseBatch = 512;

const log::Logger& Log() {
  static const log::Logger logger("delivery");
  return logger;
}

std::string IdText(const std::string& bytes) {
  absl::StatusOr<queue::MessageId> id = queue::MessageId::FromBytes(bytes);
  return id.ok() ? id->ToString() : "?";
}

double SecondsSince(int64_t ms, absl::Time now) {
  return ms == 0 ? 0 : absl::ToDoubleSeconds(now - absl::FromUnixMillis(ms));
}

// The delay fields of a log line about `leased` at `now` (delivery/delays.h).
Delays DelaysOf(const queue::LeasedEntry& leased, absl::Time now, const AttemptTimes& times) {
  const absl::Time committed = absl::FromUnixMillis(leased.enqueue_ms());
  const int64_t arrival_ms = leased.entry().envelope().arrival_ms();
  return ComputeDelays(arrival_ms == 0 ? committed : absl::FromUnixMillis(arrival_ms), committed,
                       now, times);
}

bool IsIpLiteral(const std::string& host) {
  unsigned char buffer[16];
  return inet_pton(AF_INET, host.c_str(), buffer) == 1 ||
         inet_pton(AF_INET6, host.c_str(), buffer) == 1;
}

// What a delayed-delivery DSN reports for an entry that waits on its domain: the status of the
// domain's last failure ("451 4.3.0 ..." gives 4.3.0) and its text.
DsnRecipient WaitingCause(const std::string& last_error) {
  DsnRecipient cause;
  cause.status = "4.0.0";
  const size_t space = last_error.find(' ');
  if (space == 3 && last_error[0] == '4') {
    const std::string_view rest = std::string_view(last_error).substr(space + 1);
    const std::string_view code = rest.substr(0, rest.find(' '));
    if (code.size() >= 5 && code[0] == '4' && code[1] == '.' &&
        std::all_of(code.begin(), code.end(),
                    [](char c) { return c == '.' || absl::ascii_isdigit(c); })) {
      cause.status = std::string(code);
    }
  }
  cause.reason = last_error.empty() ? "the destination is not reachable yet" : last_error;
  return cause;
}

}  // namespace

std::string_view DnsLookupTypeLabel(DnsLookupType type) {
  return type == DnsLookupType::kMx ? "mx" : "address";
}

std::string_view DnsLookupResultLabel(DnsLookupResult result) {
  switch (result) {
    case DnsLookupResult::kOk:
      return "ok";
    case DnsLookupResult::kNxDomain:
      return "nxdomain";
    case DnsLookupResult::kNoData:
      return "nodata";
    case DnsLookupResult::kError:
      return "error";
  }
  return "error";
}

std::string_view ReplyStageLabel(size_t stage) {
  return stage == kConnectStage ? "connect" : SmtpStageLabel(static_cast<SmtpStage>(stage));
}

std::vector<double> AttemptBounds() {
  return {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600};
}

void DeliveryCounters::CountDns(DnsLookupType type, const absl::Status& status) {
  if (absl::IsCancelled(status)) {
    return;
  }
  const DnsLookupResult result = status.ok()          ? DnsLookupResult::kOk
                                 : IsNxDomain(status) ? DnsLookupResult::kNxDomain
                                 : IsNoData(status)   ? DnsLookupResult::kNoData
                                                      : DnsLookupResult::kError;
  dns_lookups[static_cast<size_t>(type)][static_cast<size_t>(result)].fetch_add(
      1, std::memory_order_relaxed);
}

// One message's result from a connection, with the connection setup it waited for (zero when
// the connection was set up before the message joined it).
struct DeliveryRole::Attempt {
  MessageResult result;
  absl::Duration connection_setup;
};

// ---------------------------------------------------------------------------------------------
// Job: the entries of one domain leased together, until each is completed. Loop thread.

class DeliveryRole::Job {
 public:
  Job(DeliveryRole* role, queue::LeasedDomain leased)
      : role_(role), domain_(leased.domain()), policy_(role->DomainPolicy(leased.domain())) {
    for (queue::LeasedEntry& entry : *leased.mutable_entries()) {
      entries_.push_back(std::move(entry));
    }
  }

  void Start();
  // A connection has finished; `attempts` answer some of this job's entries.
  void ConnectionFinished(Connection* connection, std::vector<Attempt> attempts,
                          const std::string& remote_host);
  const std::string& domain() const { return domain_; }
  DeliveryRole& role() { return *role_; }
  // Opens connections for the entries no connection carries yet, as many as the domain has free
  // slots; while some are left the job waits in the domain's queue of parked jobs for the next
  // free slot. May finish (and delete) the job.
  void OpenConnections();
  // The next share of the entries no connection carries yet, at most `room` of them.
  std::vector<const queue::LeasedEntry*> TakeShare(size_t room);
  // All of them (their connection attempt failed: so would theirs).
  std::vector<const queue::LeasedEntry*> TakeRest() { return TakeShare(SIZE_MAX); }
  size_t share() const { return share_; }
  // The role took the job out of the parked queue (to give it a slot).
  void Unparked() { parked_ = false; }

 private:
  void Routed(const Route& route);
  const queue::LeasedEntry* Find(const std::string& id) const;
  // Completions, each queued in `items_` and sent when the job ends. `times`: what the attempt
  // spent on a connection, for the log line's delays.
  // `cause`: what a delayed-delivery DSN would report (status, diagnostic or reason).
  void Retry(const queue::LeasedEntry& leased, const std::string& error, const DsnRecipient& cause,
             const AttemptTimes& times, std::vector<std::string> remaining = {});
  // Adds the delayed-delivery DSN to a retry, once per entry (DESIGN §3.2, [delivery]
  // delay_warning), when the entry is that old.
  void WarnOfDelay(const queue::LeasedEntry& leased, const DsnRecipient& cause,
                   const std::vector<std::string>& remaining, const AttemptTimes& times,
                   queue::CompletionItem& item);
  // The same without the age check: the queue leased the entry for its warning.
  void AddDelayWarning(const queue::LeasedEntry& leased, const DsnRecipient& cause,
                       const std::vector<std::string>& remaining, const AttemptTimes& times,
                       queue::CompletionItem& item);
  // An entry leased only for its warning (DISPOSITION_DELAY_WARNING): no delivery attempt.
  void WarnOnly(const queue::LeasedEntry& leased);
  void Bounce(const queue::LeasedEntry& leased, const std::string& status,
              const std::string& reason, const AttemptTimes& times = {});
  void Complete(const queue::LeasedEntry& leased, const Attempt& attempt,
                const std::string& remote_host);
  void MaybeDone();

  DeliveryRole* const role_;
  const std::string domain_;
  const std::shared_ptr<const DomainConfig> policy_;  // null: not a configured domain
  std::vector<queue::LeasedEntry> entries_;
  std::vector<std::unique_ptr<Connection>> connections_;
  size_t open_connections_ = 0;
  std::optional<Route> route_;  // set once routed for delivery
  // When routing started (its DNS is part of the first connections' setup); taken by the first
  // OpenConnections.
  std::optional<absl::Time> setup_from_;
  // Entries to deliver that no connection has taken yet, oldest first; connections take them
  // `share_` at a time, so that the backlog spreads over every connection the domain may have.
  std::deque<const queue::LeasedEntry*> pending_;
  size_t share_ = 1;
  bool parked_ = false;  // in the role's parked_jobs_ of the domain
  bool started_ = false;
  std::vector<queue::CompletionItem> items_;
};

// ---------------------------------------------------------------------------------------------
// Connection: one SMTP client connection, from DNS and connect to QUIT. Loop thread.

class DeliveryRole::Connection {
 public:
  // `entries`: the first share; more are taken from the job between messages. `setup_start`:
  // where this connection's setup time starts counting (its job's routing, or now).
  Connection(Job* job, std::vector<RouteHost> hosts, std::vector<const queue::LeasedEntry*> entries,
             TlsPolicy tls, absl::Time setup_start)
      : job_(job),
        role_(job->role()),
        loop_(*role_.loop_),
        hosts_(std::move(hosts)),
        entries_(std::move(entries)),
        tls_policy_(tls),
        setup_start_(setup_start),
        io_op_([this](const Completion& c) { OnIo(c); }),
        send_op_([this](const Completion& c) { OnSent(c); }),
        timer_op_([this](const Completion& c) { OnTimer(c); }) {}

  void Start() { TryHost(); }

 private:
  enum class Phase : uint8_t { kResolving, kConnecting, kSmtp, kDone };

  void TryHost() {
    if (host_index_ >= hosts_.size() || loop_.stopping() || role_.resolver_ == nullptr) {
      FailAll(last_error_.empty() ? "no host to deliver to" : last_error_);
      return;
    }
    phase_ = Phase::kResolving;
    const RouteHost& host = hosts_[host_index_];
    role_.resolver_->LookupAddresses(host.host, [this](AddressResult result) {
      if (!IsIpLiteral(hosts_[host_index_].host)) {
        role_.counters_.CountDns(DnsLookupType::kAddress, result.status);
      }
      if (!result.status.ok()) {
        last_error_ =
            fmt::format("{}: {}", hosts_[host_index_].host, std::string(result.status.message()));
        ++host_index_;
        TryHost();
        return;
      }
      addresses_ = std::move(result.addresses);
      address_index_ = 0;
      TryAddress();
    });
  }

  void TryAddress() {
    if (address_index_ >= addresses_.size() || loop_.stopping()) {
      ++host_index_;
      TryHost();
      return;
    }
    const RouteHost& host = hosts_[host_index_];
    const std::string& ip = addresses_[address_index_];
    const std::string text = ip.find(':') != std::string::npos
                                 ? fmt::format("[{}]:{}", ip, host.port)
                                 : fmt::format("{}:{}", ip, host.port);
    absl::StatusOr<SocketAddress> address = SocketAddress::Parse(text);
    absl::StatusOr<UniqueFd> fd =
        address.ok() ? Connect(*address, Blocking::kNo) : address.status();
    if (!fd.ok()) {
      ConnectFailed(std::string(fd.status().message()));
      return;
    }
    fd_ = std::move(*fd);
    remote_ = text;
    phase_ = Phase::kConnecting;
    deadline_ = absl::Now() + kConnectTimeout;
    loop_.PollAdd(io_op_, fd_.get(), POLLOUT);
    ArmTimer();
  }

  void ConnectFailed(const std::string& why) {
    role_.counters_.connection_failures.fetch_add(1, std::memory_order_relaxed);
    role_.counters_.CountReply(kConnectStage, ReplyClass::kNone);
    last_error_ = fmt::format("connect to {} ({}): {}", hosts_[host_index_].host, remote_, why);
    Log().Info("connection failed", {{"domain", job_->domain()}, {"error", last_error_}});
    fd_.Reset();
    ++address_index_;
    TryAddress();
  }

  void OnIo(const Completion& c) {
    if (phase_ == Phase::kDone) {
      MaybeFinish();
      return;
    }
    if (phase_ == Phase::kConnecting) {
      OnConnectCompletion(c);
      return;
    }
    OnRecv(c);
  }

  void OnConnectCompletion(const Completion& c) {
    if (timer_op_.in_flight()) {
      loop_.Cancel(timer_op_);
    }
    int error = 0;
    socklen_t length = sizeof(error);
    if (c.result < 0) {
      error = -c.result;
    } else if (getsockopt(fd_.get(), SOL_SOCKET, SO_ERROR, &error, &length) != 0) {
      error = errno;
    }
    if (error != 0) {
      if (timer_op_.in_flight()) {
        // Wait for the cancelled timer before reusing it for the next address.
        pending_connect_error_ = error == ECANCELED ? "timed out" : std::strerror(error);
        return;
      }
      ConnectFailed(error == ECANCELED ? "timed out" : std::strerror(error));
      return;
    }
    // io_uring waits for readiness itself on a blocking socket (common/event_loop.h).
    fcntl(fd_.get(), F_SETFL, fcntl(fd_.get(), F_GETFL) & ~O_NONBLOCK);
    role_.counters_.connections.fetch_add(1, std::memory_order_relaxed);
    role_.counters_.connections_active.fetch_add(1, std::memory_order_relaxed);
    established_ = true;
    phase_ = Phase::kSmtp;
    ClientOptions options;
    options.helo_name = role_.config_.node.hostname;
    options.tls = tls_policy_;
    options.on_reply = [counters = &role_.counters_](SmtpStage stage, int code) {
      counters->CountReply(static_cast<size_t>(stage), ReplyClassOf(code));
    };
    const absl::Time now = absl::Now();
    client_ = std::make_unique<SmtpClient>(options, now);
    for (const queue::LeasedEntry* leased : entries_) {
      client_->AddMessage(leased->entry(), now);
    }
    Pump();
  }

  // Between messages: the job's next share on this connection (reuse), or QUIT when nothing is
  // left or the connection has carried its kMessagesPerConnection.
  void TakeMore(absl::Time now) {
    std::vector<const queue::LeasedEntry*> more;
    if (entries_.size() < kMessagesPerConnection) {
      more = job_->TakeShare(std::min(job_->share(), kMessagesPerConnection - entries_.size()));
    }
    if (more.empty()) {
      client_->Finish(now);
      finish_requested_ = true;
      return;
    }
    for (const queue::LeasedEntry* leased : more) {
      entries_.push_back(leased);
      client_->AddMessage(leased->entry(), now);
    }
  }

  void OnRecv(const Completion& c) {
    const absl::Time now = absl::Now();
    if (c.result <= 0) {
      client_->ConnectionLost(now);
      Pump();
      Close();
      return;
    }
    const std::string_view data(c.data.data(), c.data.size());
    if (tls_) {
      tls_->FeedCiphertext(data);
      if (!tls_->handshake_done()) {
        if (const absl::Status status = tls_->Handshake(); !status.ok()) {
          client_->TlsFailed(std::string(status.message()), now);
          Pump();
          return;
        }
        QueueRaw(tls_->TakeCiphertext(), 0);
        if (!tls_->handshake_done()) {
          Pump();
          return;
        }
        client_->TlsEstablished(now);
      }
      std::string plaintext;
      bool peer_closed = false;
      if (!tls_->ReadPlaintext(&plaintext, &peer_closed).ok()) {
        client_->ConnectionLost(now);
      } else if (!plaintext.empty()) {
        client_->Feed(plaintext, now);
      }
      if (peer_closed) {
        client_->ConnectionLost(now);
      }
    } else {
      client_->Feed(data, now);
    }
    Pump();
  }

  void Pump() {
    if (phase_ != Phase::kSmtp) {
      return;
    }
    if (!ready_at_.has_value() && client_->ready_at().has_value()) {
      // Every message the connection has now waited for its setup; the ones it takes later
      // did not.
      ready_at_ = client_->ready_at();
      setup_entries_ = entries_.size();
    }
    const absl::Time now = absl::Now();
    if (!finish_requested_ && client_->idle()) {
      TakeMore(now);
    }
    std::string output = client_->TakeOutput();
    if (!output.empty()) {
      const size_t plain = output.size();
      if (tls_ && tls_->handshake_done()) {
        if (!tls_->WritePlaintext(output).ok()) {
          client_->ConnectionLost(now);
        } else {
          QueueRaw(tls_->TakeCiphertext(), plain);
        }
      } else {
        QueueRaw(std::move(output), plain);
      }
    }
    if (client_->tls_requested() && !tls_) {
      absl::StatusOr<std::unique_ptr<tls::Session>> session =
          role_.tls_ ? tls::Session::Client(role_.tls_, hosts_[host_index_].host)
                     : absl::StatusOr<std::unique_ptr<tls::Session>>(
                           absl::FailedPreconditionError("no TLS client context"));
      if (!session.ok() || !(*session)->Handshake().ok()) {
        client_->TlsFailed(
            session.ok() ? "handshake failed" : std::string(session.status().message()), now);
      } else {
        tls_ = std::move(*session);
        QueueRaw(tls_->TakeCiphertext(), 0);
      }
    }
    std::vector<MessageResult> results = client_->TakeResults();
    for (MessageResult& result : results) {
      results_.push_back(std::move(result));
    }
    if (client_->closing()) {
      if (!send_op_.in_flight() && queued_.empty()) {
        Close();
      }
      return;
    }
    if (!io_op_.in_flight()) {
      loop_.Recv(io_op_, fd_.get());
    }
    deadline_ = client_->deadline();
    ArmTimer();
  }

  void QueueRaw(std::string bytes, size_t plaintext_bytes) {
    queued_plain_ += plaintext_bytes;
    if (bytes.empty()) {
      return;
    }
    queued_ += bytes;
    StartSend();
  }

  void StartSend() {
    if (send_op_.in_flight() || queued_.empty() || phase_ != Phase::kSmtp) {
      return;
    }
    sending_.swap(queued_);
    queued_.clear();
    sending_plain_ = queued_plain_;
    queued_plain_ = 0;
    loop_.Send(send_op_, fd_.get(), sending_);
  }

  void OnSent(const Completion& c) {
    if (phase_ != Phase::kSmtp) {
      MaybeFinish();
      return;
    }
    const absl::Time now = absl::Now();
    if (c.result < 0) {
      client_->ConnectionLost(now);
      Pump();
      Close();
      return;
    }
    sending_.clear();
    if (sending_plain_ > 0) {
      client_->OnBytesSent(sending_plain_, now);
    }
    sending_plain_ = 0;
    StartSend();
    Pump();
  }

  void ArmTimer() {
    if (deadline_ == absl::InfiniteFuture() || phase_ == Phase::kDone) {
      return;
    }
    if (timer_op_.in_flight()) {
      if (deadline_ < timer_at_) {
        loop_.Cancel(timer_op_);
      }
      return;
    }
    timer_at_ = deadline_;
    loop_.StartTimer(timer_op_, std::max(deadline_ - absl::Now(), absl::ZeroDuration()));
  }

  void OnTimer(const Completion& c) {
    if (phase_ == Phase::kDone) {
      MaybeFinish();
      return;
    }
    if (!pending_connect_error_.empty()) {
      const std::string error = std::move(pending_connect_error_);
      pending_connect_error_.clear();
      ConnectFailed(error);
      return;
    }
    if (c.result == -ECANCELED && loop_.stopping()) {
      Close();
      return;
    }
    const absl::Time now = absl::Now();
    if (now < deadline_) {
      ArmTimer();
      return;
    }
    if (phase_ == Phase::kConnecting) {
      loop_.Cancel(io_op_);  // its completion reports the failure
      return;
    }
    client_->OnTimer(now);
    Pump();
    if (client_->closing() && send_op_.in_flight()) {
      Close();
    }
  }

  // Every message fails temporarily with `error` (no SMTP session: none has a result), and so
  // does the rest of the job's backlog, which would go the same way.
  void FailAll(const std::string& error) {
    for (const queue::LeasedEntry* leased : job_->TakeRest()) {
      entries_.push_back(leased);
    }
    for (const queue::LeasedEntry* leased : entries_) {
      MessageResult result;
      result.id = leased->entry().id();
      result.failure = ConnectionFailure::kConnectionLost;
      result.started = result.finished = absl::Now();
      for (const queue::Recipient& recipient : leased->entry().envelope().recipients()) {
        RecipientResult recipient_result;
        recipient_result.address = recipient.address();
        recipient_result.outcome = RecipientOutcome::kTemporaryFailure;
        recipient_result.source = ReplySource::kClient;
        recipient_result.reply.code = 451;
        recipient_result.reply.enhanced = "4.4.1";
        recipient_result.reply.lines = {error};
        result.recipients.push_back(std::move(recipient_result));
      }
      results_.push_back(std::move(result));
    }
    phase_ = Phase::kDone;
    MaybeFinish();
  }

  void Close() {
    if (phase_ == Phase::kDone) {
      return;
    }
    phase_ = Phase::kDone;
    if (fd_.valid()) {
      ::shutdown(fd_.get(), SHUT_RDWR);
    }
    loop_.Cancel(io_op_);
    loop_.Cancel(send_op_);
    loop_.Cancel(timer_op_);
    MaybeFinish();
  }

  // Reports to the job once nothing is in flight; may destroy this. Last action of a caller.
  void MaybeFinish() {
    if (phase_ != Phase::kDone || finished_ || io_op_.in_flight() || send_op_.in_flight() ||
        timer_op_.in_flight()) {
      return;
    }
    finished_ = true;
    fd_.Reset();
    if (established_) {
      role_.counters_.connections_active.fetch_sub(1, std::memory_order_relaxed);
    }
    const std::string remote = host_index_ < hosts_.size() ? hosts_[host_index_].host : "";
    job_->ConnectionFinished(this, TakeAttempts(), remote);
  }

  // The results with the setup each waited for: until the session was ready, or, when it never
  // was, until now (a failed setup is all the time such an attempt took).
  std::vector<Attempt> TakeAttempts() {
    const absl::Duration setup = ready_at_.value_or(absl::Now()) - setup_start_;
    std::vector<Attempt> attempts;
    attempts.reserve(results_.size());
    for (MessageResult& result : results_) {
      const auto it = std::find_if(entries_.begin(), entries_.end(), [&](const auto* leased) {
        return leased->entry().id() == result.id;
      });
      const bool waited =
          !ready_at_.has_value() || static_cast<size_t>(it - entries_.begin()) < setup_entries_;
      attempts.push_back({std::move(result), waited ? setup : absl::ZeroDuration()});
    }
    results_.clear();
    return attempts;
  }

  Job* const job_;
  DeliveryRole& role_;
  EventLoop& loop_;
  const std::vector<RouteHost> hosts_;
  std::vector<const queue::LeasedEntry*> entries_;  // every entry this connection took
  const TlsPolicy tls_policy_;
  const absl::Time setup_start_;
  std::optional<absl::Time> ready_at_;  // when the SMTP session was ready for transactions
  size_t setup_entries_ = 0;            // entries_ taken before then
  bool established_ = false;            // TCP connected: counted in connections_active
  bool finish_requested_ = false;       // QUIT is due once the client is idle
  Phase phase_ = Phase::kResolving;
  size_t host_index_ = 0;
  std::vector<std::string> addresses_;
  size_t address_index_ = 0;
  std::string remote_;
  std::string last_error_;
  std::string pending_connect_error_;
  UniqueFd fd_;
  std::unique_ptr<SmtpClient> client_;
  std::unique_ptr<tls::Session> tls_;
  std::string sending_;
  std::string queued_;
  size_t sending_plain_ = 0;  // plaintext bytes the send in flight carries
  size_t queued_plain_ = 0;
  absl::Time deadline_ = absl::InfiniteFuture();
  absl::Time timer_at_ = absl::InfiniteFuture();
  std::vector<MessageResult> results_;
  bool finished_ = false;
  Operation io_op_;  // connect readiness, then receives
  Operation send_op_;
  Operation timer_op_;
};

// ---------------------------------------------------------------------------------------------
// Job

void DeliveryRole::Job::Start() {
  std::vector<queue::LeasedEntry*> deliverable;
  for (queue::LeasedEntry& leased : entries_) {
    switch (leased.lease().disposition()) {
      case queue::DISPOSITION_EXPIRED:
        Bounce(leased, "5.4.7",
               fmt::format("delivery time expired: not delivered within {} of arrival",
                           backstop::FormatDuration(role_->config_.delivery.max_queue_lifetime)));
        break;
      case queue::DISPOSITION_BOUNCE:
        Bounce(
            leased, "5.0.0",
            leased.bounce_reason().empty() ? "returned by the operator" : leased.bounce_reason());
        break;
      case queue::DISPOSITION_DELAY_WARNING:
        WarnOnly(leased);
        break;
      default:
        deliverable.push_back(&leased);
    }
  }
  if (deliverable.empty()) {
    started_ = true;
    MaybeDone();
    return;
  }
  setup_from_ = absl::Now();
  if (policy_ && !policy_->primary.empty()) {
    Routed(RouteToPrimaries(policy_->primary));
    return;
  }
  RoutingOptions options;
  options.our_hostname = role_->config_.node.hostname;
  options.smtp_port = role_->config_.delivery.smtp_port;
  options.shuffle_seed = role_->next_sequence_.load();
  role_->resolver_->LookupMx(domain_, [this, options](MxResult mx) {
    role_->counters_.CountDns(DnsLookupType::kMx, mx.status);
    if (mx.status.ok()) {
      MxLookup lookup;
      lookup.status = MxLookupStatus::kRecords;
      if (mx.null_mx) {
        lookup.records.push_back({0, "."});
      }
      for (const backstop::MxRecord& record : mx.records) {
        lookup.records.push_back({record.preference, record.exchange});
      }
      Routed(RouteByMx(domain_, lookup, options));
      return;
    }
    if (!IsNxDomain(mx.status) && !IsNoData(mx.status)) {
      MxLookup lookup;
      lookup.error = std::string(mx.status.message());
      Routed(RouteByMx(domain_, lookup, options));
      return;
    }
    // No MX: RFC 5321 §5.1's implicit MX, if the domain has an address.
    role_->resolver_->LookupAddresses(domain_, [this, options](AddressResult addresses) {
      role_->counters_.CountDns(DnsLookupType::kAddress, addresses.status);
      MxLookup lookup;
      if (addresses.status.ok()) {
        lookup.status = MxLookupStatus::kNoMxButAddress;
      } else if (IsNxDomain(addresses.status) || IsNoData(addresses.status)) {
        lookup.status = MxLookupStatus::kNoMxNoAddress;
      } else {
        lookup.error = std::string(addresses.status.message());
      }
      Routed(RouteByMx(domain_, lookup, options));
    });
  });
}

void DeliveryRole::Job::Routed(const Route& route) {
  started_ = true;
  // A failed routing: its DNS is the attempt's connection setup.
  const AttemptTimes routing{.connection_setup = absl::Now() - setup_from_.value_or(absl::Now())};
  for (queue::LeasedEntry& leased : entries_) {
    if (leased.lease().disposition() != queue::DISPOSITION_DELIVER &&
        leased.lease().disposition() != queue::DISPOSITION_UNSPECIFIED) {
      continue;
    }
    switch (route.kind) {
      case Route::Kind::kDeliver:
        break;
      case Route::Kind::kWeAreBestMx:
      case Route::Kind::kTemporaryFailure: {
        DsnRecipient cause;
        // RFC 3463: unable to route; a DNS failure is a directory server failure.
        cause.status = route.kind == Route::Kind::kWeAreBestMx ? "4.4.4" : "4.4.3";
        cause.reason = route.reason;
        Retry(leased, route.reason, cause, routing);
        break;
      }
      case Route::Kind::kPermanentFailure:
        Bounce(leased, route.enhanced_status, route.reason, routing);
        break;
    }
  }
  if (route.kind != Route::Kind::kDeliver) {
    MaybeDone();
    return;
  }
  for (const queue::LeasedEntry& leased : entries_) {
    const auto disposition = leased.lease().disposition();
    if (disposition == queue::DISPOSITION_DELIVER ||
        disposition == queue::DISPOSITION_UNSPECIFIED) {
      pending_.push_back(&leased);
    }
  }
  if (pending_.empty()) {
    MaybeDone();
    return;
  }
  route_ = route;
  // Spread the entries: the backlog drains over parallel connections.
  const size_t limit = std::max<size_t>(1, role_->config_.delivery.connections_per_domain);
  share_ = std::clamp<size_t>((pending_.size() + limit - 1) / limit, 1, kMessagesPerConnection);
  OpenConnections();  // may finish (and delete) this job: nothing after it
}

void DeliveryRole::Job::OpenConnections() {
  // The cap is per domain across jobs: another lease of the same backlog waits for a slot.
  const size_t limit = std::max<size_t>(1, role_->config_.delivery.connections_per_domain);
  const TlsPolicy tls = policy_ && policy_->tls == DomainTls::kRequired ? TlsPolicy::kRequired
                                                                        : TlsPolicy::kOpportunistic;
  const size_t first = connections_.size();
  const absl::Time setup_start = setup_from_.value_or(absl::Now());
  setup_from_.reset();
  while (!pending_.empty() && role_->domain_connections_[domain_] < limit) {
    connections_.push_back(
        std::make_unique<Connection>(this, route_->hosts, TakeShare(share_), tls, setup_start));
    ++open_connections_;
    ++role_->domain_connections_[domain_];
  }
  if (!pending_.empty() && !parked_) {
    parked_ = true;
    role_->parked_jobs_[domain_].push_back(this);
  }
  // Start after all exist: a connection may finish (and count down) inside Start(), and the
  // last one to finish may delete this job.
  for (size_t i = first, n = connections_.size(); i < n; ++i) {
    connections_[i]->Start();
  }
}

std::vector<const queue::LeasedEntry*> DeliveryRole::Job::TakeShare(size_t room) {
  std::vector<const queue::LeasedEntry*> share;
  while (!pending_.empty() && share.size() < room) {
    share.push_back(pending_.front());
    pending_.pop_front();
  }
  if (pending_.empty() && parked_) {
    role_->Unpark(this);
    parked_ = false;
  }
  return share;
}

const queue::LeasedEntry* DeliveryRole::Job::Find(const std::string& id) const {
  for (const queue::LeasedEntry& leased : entries_) {
    if (leased.entry().id() == id) {
      return &leased;
    }
  }
  return nullptr;
}

void DeliveryRole::Job::Retry(const queue::LeasedEntry& leased, const std::string& error,
                              const DsnRecipient& cause, const AttemptTimes& times,
                              std::vector<std::string> remaining) {
  queue::CompletionItem& item = items_.emplace_back();
  item.set_id(leased.entry().id());
  item.set_lease_token(leased.lease().token());
  queue::RetryLater& retry = *item.mutable_retry();
  retry.set_error(error);
  for (const std::string& address : remaining) {
    retry.add_remaining_recipients(address);
  }
  WarnOfDelay(leased, cause, remaining, times, item);
  role_->counters_.deferred.fetch_add(1, std::memory_order_relaxed);
  const Delays delays = DelaysOf(leased, absl::Now(), times);
  Log().Info("deferred", {{"id", IdText(leased.entry().id())},
                          {"domain", domain_},
                          {"attempts", leased.attempts() + 1},
                          {"delay", RoundedSeconds(delays.total)},
                          {"delays", FormatDelays(delays)},
                          {"error", error}});
}

void DeliveryRole::Job::WarnOfDelay(const queue::LeasedEntry& leased, const DsnRecipient& cause,
                                    const std::vector<std::string>& remaining,
                                    const AttemptTimes& times, queue::CompletionItem& item) {
  const DeliveryConfig& config = role_->config_.delivery;
  const absl::Time now = absl::Now();
  const absl::Time arrival = absl::FromUnixMillis(leased.enqueue_ms());
  if (config.delay_warning <= absl::ZeroDuration() || leased.delay_warned() ||
      now - arrival < config.delay_warning) {
    return;
  }
  AddDelayWarning(leased, cause, remaining, times, item);
}

void DeliveryRole::Job::WarnOnly(const queue::LeasedEntry& leased) {
  queue::CompletionItem& item = items_.emplace_back();
  item.set_id(leased.entry().id());
  item.set_lease_token(leased.lease().token());
  item.mutable_retry()->set_error(leased.last_error());
  AddDelayWarning(leased, WaitingCause(leased.last_error()), {}, AttemptTimes{}, item);
}

void DeliveryRole::Job::AddDelayWarning(const queue::LeasedEntry& leased, const DsnRecipient& cause,
                                        const std::vector<std::string>& remaining,
                                        const AttemptTimes& times, queue::CompletionItem& item) {
  const DeliveryConfig& config = role_->config_.delivery;
  const absl::Time now = absl::Now();
  const absl::Time arrival = absl::FromUnixMillis(leased.enqueue_ms());
  DsnReport report;
  report.id = role_->NewId();
  report.now = now;
  for (const queue::Recipient& recipient : leased.entry().envelope().recipients()) {
    if (!remaining.empty() &&
        std::find(remaining.begin(), remaining.end(), recipient.address()) == remaining.end()) {
      continue;
    }
    DsnRecipient& dsn = report.recipients.emplace_back(cause);
    dsn.address = recipient.address();
    dsn.action = DsnAction::kDelayed;
    dsn.last_attempt = now;
    dsn.will_retry_until = arrival + config.max_queue_lifetime;
  }
  // Marked even when no DSN is due (NOTIFY without DELAY, a <> sender): decided once.
  item.mutable_retry()->set_mark_delay_warned(true);
  DsnOptions options;
  options.reporting_mta = role_->config_.node.hostname;
  std::optional<queue::QueueEntry> dsn = BuildDsn(leased.entry(), report, options);
  if (dsn.has_value()) {
    *item.add_dsn() = std::move(*dsn);
    role_->counters_.dsns.fetch_add(1, std::memory_order_relaxed);
  }
  const Delays delays = DelaysOf(leased, now, times);
  Log().Info("delay warning", {{"id", IdText(leased.entry().id())},
                               {"domain", domain_},
                               {"status", cause.status},
                               {"dsn", dsn.has_value()},
                               {"delay", RoundedSeconds(delays.total)},
                               {"delays", FormatDelays(delays)}});
}

void DeliveryRole::Job::Bounce(const queue::LeasedEntry& leased, const std::string& status,
                               const std::string& reason, const AttemptTimes& times) {
  const absl::Time now = absl::Now();
  DsnReport report;
  report.id = role_->NewId();
  report.now = now;
  for (const queue::Recipient& recipient : leased.entry().envelope().recipients()) {
    DsnRecipient dsn;
    dsn.address = recipient.address();
    dsn.action = DsnAction::kFailed;
    dsn.status = status;
    dsn.reason = reason;
    report.recipients.push_back(std::move(dsn));
  }
  queue::CompletionItem& item = items_.emplace_back();
  item.set_id(leased.entry().id());
  item.set_lease_token(leased.lease().token());
  item.mutable_bounced()->set_error(reason);
  DsnOptions options;
  options.reporting_mta = role_->config_.node.hostname;
  if (std::optional<queue::QueueEntry> dsn = BuildDsn(leased.entry(), report, options)) {
    *item.add_dsn() = std::move(*dsn);
    role_->counters_.dsns.fetch_add(1, std::memory_order_relaxed);
  }
  role_->counters_.bounced.fetch_add(1, std::memory_order_relaxed);
  const Delays delays = DelaysOf(leased, now, times);
  Log().Info("bounced", {{"id", IdText(leased.entry().id())},
                         {"domain", domain_},
                         {"status", status},
                         {"dsn", item.dsn_size() > 0},
                         {"delay", RoundedSeconds(delays.total)},
                         {"delays", FormatDelays(delays)},
                         {"reason", reason}});
}

void DeliveryRole::Job::Complete(const queue::LeasedEntry& leased, const Attempt& attempt,
                                 const std::string& remote_host) {
  const absl::Time now = absl::Now();
  const MessageResult& result = attempt.result;
  const AttemptTimes times{.connection_setup = attempt.connection_setup,
                           .transmission = result.finished - result.started};
  const double attempt_seconds = absl::ToDoubleSeconds(times.connection_setup + times.transmission);
  const Delays delays = DelaysOf(leased, now, times);
  std::vector<std::string> temporary;
  std::string temporary_error;
  DsnRecipient temporary_cause;
  DsnReport report;
  report.now = now;
  size_t delivered = 0;
  std::string permanent_error;
  for (const RecipientResult& recipient : result.recipients) {
    switch (recipient.outcome) {
      case RecipientOutcome::kDelivered:
        ++delivered;
        break;
      case RecipientOutcome::kTemporaryFailure:
        temporary.push_back(recipient.address);
        if (temporary_error.empty()) {
          temporary_error = recipient.reply.OneLine();
          temporary_cause =
              DsnRecipientFor(recipient, DsnAction::kDelayed,
                              recipient.source == ReplySource::kServer ? remote_host : "", now);
        }
        break;
      case RecipientOutcome::kPermanentFailure:
        report.recipients.push_back(
            DsnRecipientFor(recipient, DsnAction::kFailed,
                            recipient.source == ReplySource::kServer ? remote_host : "", now));
        if (permanent_error.empty()) {
          permanent_error = recipient.reply.OneLine();
        }
        break;
    }
  }
  if (!temporary.empty()) {
    // Only the failed recipients stay, when some were done with.
    role_->counters_.attempt_deferred_seconds.Observe(attempt_seconds);
    Retry(leased, temporary_error, temporary_cause, times,
          temporary.size() == result.recipients.size() ? std::vector<std::string>{}
                                                       : std::move(temporary));
  } else {
    queue::CompletionItem& item = items_.emplace_back();
    item.set_id(leased.entry().id());
    item.set_lease_token(leased.lease().token());
    if (delivered > 0) {
      item.mutable_delivered();
      role_->counters_.delivered.fetch_add(1, std::memory_order_relaxed);
      role_->counters_.time_in_queue_seconds.Observe(
          SecondsSince(leased.entry().envelope().arrival_ms(), now));
      role_->counters_.attempt_delivered_seconds.Observe(attempt_seconds);
      Log().Info("delivered", {{"id", IdText(leased.entry().id())},
                               {"domain", domain_},
                               {"relay", remote_host},
                               {"recipients", delivered},
                               {"delay", RoundedSeconds(delays.total)},
                               {"delays", FormatDelays(delays)}});
    } else {
      item.mutable_bounced()->set_error(permanent_error);
      role_->counters_.bounced.fetch_add(1, std::memory_order_relaxed);
      role_->counters_.attempt_bounced_seconds.Observe(attempt_seconds);
      Log().Info("bounced", {{"id", IdText(leased.entry().id())},
                             {"domain", domain_},
                             {"relay", remote_host},
                             {"delay", RoundedSeconds(delays.total)},
                             {"delays", FormatDelays(delays)},
                             {"reason", permanent_error}});
    }
  }
  if (!report.recipients.empty()) {
    report.id = role_->NewId();
    DsnOptions options;
    options.reporting_mta = role_->config_.node.hostname;
    if (std::optional<queue::QueueEntry> dsn = BuildDsn(leased.entry(), report, options)) {
      *items_.back().add_dsn() = std::move(*dsn);
      role_->counters_.dsns.fetch_add(1, std::memory_order_relaxed);
    }
  }
}

void DeliveryRole::Job::ConnectionFinished(Connection* /*connection*/,
                                           std::vector<Attempt> attempts,
                                           const std::string& remote_host) {
  for (const Attempt& attempt : attempts) {
    if (const queue::LeasedEntry* leased = Find(attempt.result.id)) {
      Complete(*leased, attempt, remote_host);
    }
  }
  --open_connections_;
  if (parked_) {
    // The slot may come back to this job (ReleaseConnection may finish and delete it).
    role_->ReleaseConnection(domain_);
    return;
  }
  role_->ReleaseConnection(domain_);  // to another job: this one has nothing left to send
  MaybeDone();
}

void DeliveryRole::Job::MaybeDone() {
  if (!started_ || open_connections_ > 0 || parked_) {
    return;
  }
  role_->Finished(std::move(items_));
  role_->JobDone(this);  // deletes this
}

// ---------------------------------------------------------------------------------------------
// DeliveryRole

DeliveryRole::DeliveryRole(const Config& config)
    : config_(config),
      worker_id_(fmt::format("delivery-{}", config.node.id)),
      lease_duration_(config.delivery.lease_duration) {
  for (const DomainConfig& domain : config.domains) {
    domains_[domain.name] = std::make_shared<const DomainConfig>(domain);
  }
}

absl::StatusOr<std::unique_ptr<DeliveryRole>> DeliveryRole::Start(
    const Config& config, const queue::QueueConnection& queue) {
  std::unique_ptr<DeliveryRole> role(new DeliveryRole(config));
  ASSIGN_OR_RETURN(role->client_, queue::ConnectToQueue(config, queue, absl::Seconds(30)));
  // Opportunistic STARTTLS toward MX hosts (RFC 7435): encrypted, not authenticated.
  ASSIGN_OR_RETURN(role->tls_, tls::Context::Client({.ca_file = "", .verify_peer = false}));
  ASSIGN_OR_RETURN(role->loop_, EventLoop::Create());
  ResolverOptions resolver_options;
  resolver_options.servers = config.dns.servers;
  ASSIGN_OR_RETURN(role->resolver_, Resolver::Create(*role->loop_, resolver_options));
  DeliveryRole* raw = role.get();
  role->loop_->HandOff();
  role->loop_thread_ = std::thread([raw] { raw->loop_->Run(); });
  role->lease_thread_ = std::thread([raw] { raw->LeaseLoop(); });
  return role;
}

DeliveryRole::~DeliveryRole() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (lease_thread_.joinable()) {
    lease_thread_.join();
  }
  if (loop_) {
    // The resolver belongs to the loop thread; it cancels its lookups as it goes.
    loop_->Post([this] { resolver_.reset(); });
    loop_->Stop();
    if (loop_thread_.joinable()) {
      loop_thread_.join();
    }
  }
  jobs_.clear();
}

void DeliveryRole::Reload(const Config& config) {
  std::lock_guard lock(domains_mutex_);
  domains_.clear();
  for (const DomainConfig& domain : config.domains) {
    domains_[domain.name] = std::make_shared<const DomainConfig>(domain);
  }
}

std::shared_ptr<const DomainConfig> DeliveryRole::DomainPolicy(const std::string& domain) const {
  std::lock_guard lock(domains_mutex_);
  const auto it = domains_.find(domain);
  return it == domains_.end() ? nullptr : it->second;
}

std::string DeliveryRole::NewId() {
  return std::string(queue::MessageId::Make(absl::Now(), config_.node.id,
                                            next_sequence_.fetch_add(1) | (uint64_t{1} << 63))
                         .bytes());
}

void DeliveryRole::StartJob(queue::LeasedDomain leased) {
  auto job = std::make_unique<Job>(this, std::move(leased));
  Job* raw = job.get();
  jobs_.emplace(raw, std::move(job));
  if (resolver_ == nullptr) {
    return;  // stopping: the leases expire
  }
  raw->Start();
}

void DeliveryRole::ReleaseConnection(const std::string& domain) {
  if (const auto it = domain_connections_.find(domain); it != domain_connections_.end()) {
    if (--it->second == 0) {
      domain_connections_.erase(it);
    }
  }
  const auto parked = parked_jobs_.find(domain);
  if (parked == parked_jobs_.end()) {
    return;
  }
  Job* job = parked->second.front();
  parked->second.pop_front();
  if (parked->second.empty()) {
    parked_jobs_.erase(parked);
  }
  job->Unparked();
  job->OpenConnections();  // may finish (and delete) the job
}

void DeliveryRole::Unpark(Job* job) {
  const auto parked = parked_jobs_.find(job->domain());
  if (parked == parked_jobs_.end()) {
    return;
  }
  std::erase(parked->second, job);
  if (parked->second.empty()) {
    parked_jobs_.erase(parked);
  }
}

void DeliveryRole::JobDone(Job* job) {
  jobs_.erase(job);
}

void DeliveryRole::Finished(std::vector<queue::CompletionItem> items) {
  if (items.empty()) {
    return;
  }
  {
    std::lock_guard lock(mutex_);
    for (queue::CompletionItem& item : items) {
      completions_.push_back(std::move(item));
    }
  }
  wake_.notify_all();
}

void DeliveryRole::LeaseLoop() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    if (!completions_.empty()) {
      queue::CompleteEntries request;
      for (queue::CompletionItem& item : completions_) {
        *request.add_items() = std::move(item);
      }
      completions_.clear();
      lock.unlock();
      const absl::StatusOr<queue::CompleteResult> result = client_->Complete(request);
      if (!result.ok()) {
        // The leases expire and the entries are delivered again: late, never lost.
        Log().Warn("complete failed", {{"entries", request.items_size()},
                                       {"error", std::string(result.status().message())}});
      }
      lock.lock();
      for (const queue::CompletionItem& item : request.items()) {
        if (const auto it = held_.find(item.id());
            it != held_.end() && it->second.token == item.lease_token()) {
          held_.erase(it);
        }
      }
      continue;
    }
    ExtendDueLeases(lock);
    size_t leased_now = 0;
    if (held_.size() < kMaxInFlight) {
      queue::LeaseEntries request;
      request.set_worker_id(worker_id_);
      request.set_max_entries(
          static_cast<uint32_t>(std::min<size_t>(kLeaseBatch, kMaxInFlight - held_.size())));
      request.set_lease_duration_ms(absl::ToInt64Milliseconds(lease_duration_));
      lock.unlock();
      const absl::Time asked = absl::Now();
      absl::StatusOr<queue::LeaseResult> result = client_->Lease(request);
      lock.lock();
      if (result.ok()) {
        for (queue::LeasedDomain& domain : *result->mutable_domains()) {
          leased_now += domain.entries_size();
          for (const queue::LeasedEntry& leased : domain.entries()) {
            // From when we asked: the queue's expiry counts from no earlier than that.
            held_[leased.entry().id()] = {.token = leased.lease().token(),
                                          .renew_at = asked + lease_duration_ / 2};
          }
          loop_->Post(
              [this, domain = std::move(domain)]() mutable { StartJob(std::move(domain)); });
        }
        counters_.leased.fetch_add(leased_now, std::memory_order_relaxed);
      } else {
        Log().Debug("lease failed", {{"error", std::string(result.status().message())}});
      }
    }
    if (leased_now == 0) {
      wake_.wait_for(lock, absl::ToChronoMilliseconds(std::min(kIdlePoll, lease_duration_ / 4)),
                     [this] { return stopping_ || !completions_.empty(); });
    }
  }
}

void DeliveryRole::ExtendDueLeases(std::unique_lock<std::mutex>& lock) {
  const absl::Time now = absl::Now();
  if (now < extend_retry_at_ || std::none_of(held_.begin(), held_.end(), [now](const auto& held) {
        return held.second.renew_at <= now;
      })) {
    return;
  }
  // All of them in one command, not only the due ones: their renewals fall together from then
  // on, one Raft entry per half lease whatever the number of jobs.
  queue::ExtendLeases request;
  request.set_lease_duration_ms(absl::ToInt64Milliseconds(lease_duration_));
  for (const auto& [id, held] : held_) {
    queue::ExtendLeases::Held& item = *request.add_leases();
    item.set_id(id);
    item.set_lease_token(held.token);
  }
  lock.unlock();
  const absl::StatusOr<queue::ExtendResult> result = client_->Extend(request);
  lock.lock();
  if (!result.ok()) {
    // Retried soon; half a lease is left to succeed in.
    extend_retry_at_ = now + kExtendRetry;
    Log().Warn("extending leases failed", {{"entries", request.leases_size()},
                                           {"error", std::string(result.status().message())}});
    return;
  }
  size_t lost = 0;
  for (const queue::ExtendOutcome& outcome : result->outcomes()) {
    const auto it = held_.find(outcome.id());
    if (it == held_.end()) {
      continue;  // completed meanwhile
    }
    if (outcome.code() == queue::OK) {
      it->second.renew_at = now + lease_duration_ / 2;
    } else {
      // Expired before we asked: the entry may go to another worker, and our completion will be
      // refused if it does. Nothing to extend any more.
      held_.erase(it);
      ++lost;
    }
  }
  if (lost > 0) {
    Log().Warn("leases expired before they were extended", {{"entries", lost}});
  }
}

}  // namespace backstop::delivery
