#include "ingest/smtp_server.h"

#include <sys/socket.h>

#include <algorithm>
#include <thread>
#include <utility>

#include <fmt/format.h>

#include "common/event_loop.h"
#include "common/log.h"
#include "common/socket.h"
#include "common/status.h"

namespace backstop::ingest {
namespace {

// Enough for a v2 header with its largest TLV block; a peer sending more without completing
// one is not a proxy.
constexpr size_t kMaxProxyHeaderBytes = 16 + 65535;

const log::Logger& Log() {
  static const log::Logger logger("ingest");
  return logger;
}

std::string HostOf(const SocketAddress& address) {
  const std::string text = address.ToString();
  const size_t colon = text.rfind(':');
  std::string host = text.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[') {
    host = host.substr(1, host.size() - 2);
  }
  return host;
}

bool IsDecision(RequestKind kind) {
  return kind != RequestKind::kNone && kind != RequestKind::kStartTls;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Limiter

bool SmtpServer::Limiter::Acquire(const std::string& ip) {
  std::lock_guard lock(mutex_);
  if (total_ >= max_total_) {
    return false;
  }
  uint32_t& count = per_ip_[ip];
  if (count >= max_per_ip_) {
    if (count == 0) {
      per_ip_.erase(ip);
    }
    return false;
  }
  ++count;
  ++total_;
  return true;
}

void SmtpServer::Limiter::Release(const std::string& ip) {
  std::lock_guard lock(mutex_);
  const auto it = per_ip_.find(ip);
  if (it == per_ip_.end()) {
    return;
  }
  if (--it->second == 0) {
    per_ip_.erase(it);
  }
  --total_;
}

uint64_t SmtpServer::Limiter::total() const {
  std::lock_guard lock(mutex_);
  return total_;
}

// ---------------------------------------------------------------------------------------------
// Worker: one loop thread, its listening sockets and its connections.

class SmtpServer::Worker {
 public:
  Worker(SmtpServer* server, std::unique_ptr<EventLoop> loop, std::unique_ptr<Resolver> resolver)
      : server_(server),
        loop_(std::move(loop)),
        executor_(std::make_shared<LoopExecutor>(loop_.get())),
        resolver_(std::move(resolver)) {}

  void AddListener(UniqueFd fd) {
    auto listener = std::make_unique<Listener>();
    listener->fd = std::move(fd);
    Listener* raw = listener.get();
    listener->accept =
        std::make_unique<Operation>([this, raw](const Completion& c) { OnAccept(*raw, c); });
    listeners_.push_back(std::move(listener));
  }

  void Start() {
    for (auto& listener : listeners_) {
      loop_->Accept(*listener->accept, listener->fd.get());
    }
    loop_->HandOff();
    thread_ = std::thread([this] {
      loop_->Run();
      // Answers and lookups that come later are dropped; the resolver cancels its lookups on
      // the loop's thread, as it must.
      executor_->Close();
      resolver_.reset();
    });
  }

  void Stop() {
    loop_->Stop();
    if (thread_.joinable()) {
      thread_.join();
    }
  }

  // Loop thread: hands a decision to the connection `id`, if it still exists.
  void DeliverOnLoop(uint64_t id, const Verdict& verdict);
  // Any thread.
  void Drain() {
    loop_->Post([this] { DrainOnLoop(); });
  }

  EventLoop& loop() { return *loop_; }
  const std::shared_ptr<LoopExecutor>& executor() const { return executor_; }
  DnsClient* dns() { return resolver_.get(); }
  SmtpServer& server() { return *server_; }
  void Remove(uint64_t id) { connections_.erase(id); }

 private:
  struct Listener {
    UniqueFd fd;
    std::unique_ptr<Operation> accept;
  };

  void OnAccept(Listener& listener, const Completion& c);
  void DrainOnLoop();

  SmtpServer* const server_;
  std::unique_ptr<EventLoop> loop_;
  // Answers of the handler reach connections through it; shared with every answer callback,
  // which may be called on any thread after the worker is gone.
  const std::shared_ptr<LoopExecutor> executor_;
  std::unique_ptr<Resolver> resolver_;  // null when the options ask for no DNS
  std::vector<std::unique_ptr<Listener>> listeners_;
  // Declared after loop_: destroyed first, when nothing is in flight any more.
  std::unordered_map<uint64_t, std::unique_ptr<Connection>> connections_;
  bool draining_ = false;
  std::thread thread_;
};

// ---------------------------------------------------------------------------------------------
// Connection: one client, from accept to close. Lives on its worker's loop thread.

class SmtpServer::Connection {
 public:
  Connection(Worker* worker, uint64_t id, UniqueFd fd, const SocketAddress& peer, bool expect_proxy)
      : worker_(worker),
        loop_(worker->loop()),
        server_(worker->server()),
        fd_(std::move(fd)),
        recv_op_([this](const Completion& c) { OnRecv(c); }),
        send_op_([this](const Completion& c) { OnSent(c); }),
        timer_op_([this](const Completion& c) { OnTimer(c); }) {
    info_.id = id;
    info_.client.ip = HostOf(peer);
    info_.client.port = peer.port();
    info_.connected = absl::Now();
    info_.dns = worker->dns();
    info_.executor = worker->executor();
    phase_ = expect_proxy ? Phase::kProxy : Phase::kSmtp;
  }

  ~Connection() {
    if (limited_) {
      server_.limiter_.Release(info_.client.ip);
    }
  }

  void Begin() {
    if (phase_ == Phase::kProxy) {
      handshake_deadline_ = info_.connected + server_.options_.handshake_timeout;
      ArmRecv();
      ArmTimer();
    } else {
      StartSession();
    }
  }

  void Drain() {
    if (closed_) {
      return;
    }
    if (!session_) {
      CloseNow();
      return;
    }
    session_->Shutdown(absl::Now());
    Pump();
  }

  void Resolved(const Verdict& verdict) {
    if (deciding_) {
      immediate_verdict_ = verdict;
      return;
    }
    if (closed_ || !session_ || !decision_in_flight_) {
      return;
    }
    decision_in_flight_ = false;
    session_->Resolve(verdict, absl::Now());
    Pump();
  }

 private:
  enum class Phase : uint8_t { kProxy, kRefused, kSmtp, kTlsHandshake, kTls };

  void StartSession() {
    const absl::Time now = absl::Now();
    if (!server_.limiter_.Acquire(info_.client.ip)) {
      server_.refused_.fetch_add(1, std::memory_order_relaxed);
      phase_ = Phase::kRefused;
      handshake_deadline_ = now + server_.options_.handshake_timeout;
      QueueRaw(fmt::format("421 4.7.0 {} Too many connections, try again later\r\n",
                           server_.options_.session.hostname));
      close_after_send_ = true;
      ArmTimer();
      return;
    }
    limited_ = true;
    phase_ = Phase::kSmtp;
    SessionOptions options = server_.options_.session;
    options.starttls_available =
        server_.options_.tls_context && server_.options_.tls_context() != nullptr;
    session_.emplace(std::move(options), info_.client, now);
    session_->Start(now);
    Pump();
  }

  void OnRecv(const Completion& c) {
    if (closed_) {
      MaybeFinish();
      return;
    }
    if (c.result <= 0) {
      // EOF, reset, or cancelled while stopping: the client is gone.
      CloseNow();
      return;
    }
    const std::string_view data(c.data.data(), c.data.size());
    const absl::Time now = absl::Now();
    switch (phase_) {
      case Phase::kProxy:
        OnProxyBytes(data);
        return;
      case Phase::kRefused:
        return;
      case Phase::kSmtp:
        if (session_->pending() == RequestKind::kConnect) {
          heard_before_banner_ = true;
        }
        session_->Feed(data, now);
        break;
      case Phase::kTlsHandshake:
      case Phase::kTls:
        if (!OnCiphertext(data, now)) {
          return;
        }
        break;
    }
    Pump();
  }

  void OnProxyBytes(std::string_view data) {
    proxy_buffer_.append(data);
    const absl::StatusOr<ProxyParseResult> parsed = ParseProxyHeader(proxy_buffer_);
    if (!parsed.ok() ||
        (parsed->state == ProxyParse::kNeedMore && proxy_buffer_.size() > kMaxProxyHeaderBytes)) {
      Log().Warn("invalid PROXY header, closing",
                 {{"connection", info_.id},
                  {"peer", info_.client.ip},
                  {"error", parsed.ok() ? std::string("too long")
                                        : std::string(parsed.status().message())}});
      CloseNow();
      return;
    }
    if (parsed->state == ProxyParse::kNeedMore) {
      ArmRecv();
      return;
    }
    if (parsed->header.has_addresses) {
      info_.client.ip = parsed->header.source_ip;
      info_.client.port = parsed->header.source_port;
    }
    const std::string rest = proxy_buffer_.substr(parsed->header.header_size);
    proxy_buffer_.clear();
    proxy_buffer_.shrink_to_fit();
    StartSession();
    if (!rest.empty() && session_ && !closed_) {
      session_->Feed(rest, absl::Now());
      Pump();
    }
  }

  // False when the connection was closed.
  bool OnCiphertext(std::string_view data, absl::Time now) {
    tls_->FeedCiphertext(data);
    if (phase_ == Phase::kTlsHandshake) {
      if (const absl::Status status = tls_->Handshake(); !status.ok()) {
        server_.tls_failed_.fetch_add(1, std::memory_order_relaxed);
        Log().Info("TLS handshake failed", {{"connection", info_.id},
                                            {"client", info_.client.ip},
                                            {"error", std::string(status.message())}});
        QueueRaw(tls_->TakeCiphertext());  // the alert, best effort
        close_after_send_ = true;
        MaybeCloseAfterSend();
        return false;
      }
      QueueRaw(tls_->TakeCiphertext());
      if (!tls_->handshake_done()) {
        ArmRecv();
        return false;
      }
      phase_ = Phase::kTls;
      server_.tls_established_.fetch_add(1, std::memory_order_relaxed);
      info_.tls = TlsInfo{tls_->protocol(), tls_->cipher()};
      session_->TlsEstablished(*info_.tls, now);
    }
    std::string plaintext;
    bool peer_closed = false;
    if (const absl::Status status = tls_->ReadPlaintext(&plaintext, &peer_closed); !status.ok()) {
      CloseNow();
      return false;
    }
    QueueRaw(tls_->TakeCiphertext());
    if (!plaintext.empty()) {
      session_->Feed(plaintext, now);
    }
    if (peer_closed) {
      close_after_send_ = true;
    }
    return true;
  }

  // Everything that follows an event: decisions, output, TLS start, close, re-arming.
  void Pump() {
    if (closed_ || !session_) {
      return;
    }
    while (IsDecision(session_->pending()) && !decision_in_flight_) {
      decision_in_flight_ = true;
      deciding_ = true;
      const uint64_t id = info_.id;
      server_.handler_->Decide(
          info_, *session_,
          [executor = worker_->executor(), worker = worker_, id](const Verdict& verdict) {
            // The task runs only while the worker's loop runs, so `worker` is alive then.
            executor->Run([worker, id, verdict] { worker->DeliverOnLoop(id, verdict); });
          });
      deciding_ = false;
      if (!immediate_verdict_) {
        break;
      }
      const Verdict verdict = std::move(*immediate_verdict_);
      immediate_verdict_.reset();
      decision_in_flight_ = false;
      session_->Resolve(verdict, absl::Now());
    }
    FlushSessionOutput();
    if (session_->pending() == RequestKind::kStartTls && phase_ == Phase::kSmtp) {
      StartTls();
    }
    if (closed_) {
      return;
    }
    if (session_->closing()) {
      close_after_send_ = true;
    }
    if (close_after_send_) {
      MaybeCloseAfterSend();
      if (closed_) {
        return;
      }
    }
    ArmRecv();
    ArmTimer();
  }

  void StartTls() {
    std::shared_ptr<const tls::Context> context =
        server_.options_.tls_context ? server_.options_.tls_context() : nullptr;
    absl::StatusOr<std::unique_ptr<tls::Session>> tls =
        context ? tls::Session::Server(std::move(context))
                : absl::StatusOr<std::unique_ptr<tls::Session>>(
                      absl::FailedPreconditionError("no certificate"));
    if (!tls.ok()) {
      Log().Error("cannot start TLS",
                  {{"connection", info_.id}, {"error", std::string(tls.status().message())}});
      close_after_send_ = true;
      return;
    }
    tls_ = std::move(*tls);
    phase_ = Phase::kTlsHandshake;
    handshake_deadline_ = absl::Now() + server_.options_.handshake_timeout;
  }

  void FlushSessionOutput() {
    if (!session_->has_output()) {
      return;
    }
    std::string output = session_->TakeOutput();
    if (phase_ == Phase::kTls) {
      if (!tls_->WritePlaintext(output).ok()) {
        CloseNow();
        return;
      }
      QueueRaw(tls_->TakeCiphertext());
    } else {
      QueueRaw(std::move(output));
    }
  }

  void QueueRaw(std::string bytes) {
    if (bytes.empty()) {
      return;
    }
    if (queued_.empty()) {
      queued_ = std::move(bytes);
    } else {
      queued_ += bytes;
    }
    StartSend();
  }

  void StartSend() {
    if (closed_ || send_op_.in_flight() || queued_.empty()) {
      return;
    }
    sending_.swap(queued_);
    queued_.clear();
    // A client that stops reading blocks the send forever; the session's own deadlines do not
    // run then (a closing session has none), so the send gets one of its own.
    send_deadline_ = absl::Now() + server_.options_.session.command_timeout;
    loop_.Send(send_op_, fd_.get(), sending_);
    ArmTimer();
  }

  void OnSent(const Completion& c) {
    if (closed_) {
      MaybeFinish();
      return;
    }
    if (c.result < 0) {
      CloseNow();
      return;
    }
    sending_.clear();
    StartSend();
    if (close_after_send_) {
      MaybeCloseAfterSend();
      return;
    }
    // Reading may have paused until the replies moved on (WantsInput).
    ArmRecv();
  }

  void MaybeCloseAfterSend() {
    if (!send_op_.in_flight() && queued_.empty()) {
      CloseNow();
    }
  }

  bool WantsInput() const {
    switch (phase_) {
      case Phase::kProxy:
      case Phase::kTlsHandshake:
        return true;
      case Phase::kRefused:
        return false;
      case Phase::kSmtp:
      case Phase::kTls:
        if (session_->closing() || close_after_send_) {
          return false;
        }
        // Replies wait behind a send the client has not taken yet: reading more commands
        // would make more replies, and a client that pipelines without reading could grow
        // them without bound. Not reading leaves the back-pressure to its TCP window.
        if (!queued_.empty()) {
          return false;
        }
        // Before the banner, one read tells an early talker (RFC 5321 §4.3.1: the client
        // waits for the greeting) from a client that waits.
        if (session_->pending() == RequestKind::kConnect) {
          return !heard_before_banner_;
        }
        // While a decision is pending the session only buffers: not reading is the
        // back-pressure that bounds what a pipelining client can make us hold.
        return session_->pending() == RequestKind::kNone;
    }
    return false;
  }

  void ArmRecv() {
    if (closed_ || recv_op_.in_flight() || !WantsInput()) {
      return;
    }
    loop_.Recv(recv_op_, fd_.get());
  }

  absl::Time Deadline() const {
    const absl::Time phase_deadline = PhaseDeadline();
    return send_op_.in_flight() ? std::min(phase_deadline, send_deadline_) : phase_deadline;
  }

  absl::Time PhaseDeadline() const {
    switch (phase_) {
      case Phase::kProxy:
      case Phase::kRefused:
      case Phase::kTlsHandshake:
        return handshake_deadline_;
      case Phase::kSmtp:
      case Phase::kTls:
        return session_->deadline();
    }
    return absl::InfiniteFuture();
  }

  // One timer per connection, re-armed lazily: when it fires early (the deadline moved later),
  // it is armed again; only a deadline earlier than the armed one cancels it.
  void ArmTimer() {
    if (closed_) {
      return;
    }
    const absl::Time deadline = Deadline();
    if (deadline == absl::InfiniteFuture()) {
      return;
    }
    if (timer_op_.in_flight()) {
      if (deadline < timer_at_) {
        loop_.Cancel(timer_op_);
      }
      return;
    }
    timer_at_ = deadline;
    loop_.StartTimer(timer_op_, std::max(deadline - absl::Now(), absl::ZeroDuration()));
  }

  void OnTimer(const Completion& c) {
    if (closed_) {
      MaybeFinish();
      return;
    }
    if (c.result == -ECANCELED && loop_.stopping()) {
      return;
    }
    const absl::Time now = absl::Now();
    if (now < Deadline()) {
      ArmTimer();
      return;
    }
    if (!session_ || phase_ == Phase::kTlsHandshake || phase_ == Phase::kRefused ||
        session_->closing() || (send_op_.in_flight() && now >= send_deadline_)) {
      // No session to answer, a handshake that never finished, or a client that does not
      // read what we already sent (a 421 could not reach it either).
      CloseNow();
      return;
    }
    session_->OnTimer(now);
    Pump();
  }

  void CloseNow() {
    if (closed_) {
      return;
    }
    closed_ = true;
    // A blocked send or receive ends with the shutdown; the cancels cover the rest.
    ::shutdown(fd_.get(), SHUT_RDWR);
    loop_.Cancel(recv_op_);
    loop_.Cancel(send_op_);
    loop_.Cancel(timer_op_);
    MaybeFinish();
  }

  // Destroys this connection once nothing is in flight. Must be the caller's last action.
  void MaybeFinish() {
    if (!closed_ || recv_op_.in_flight() || send_op_.in_flight() || timer_op_.in_flight()) {
      return;
    }
    server_.handler_->Closed(info_, session_ ? &*session_ : nullptr);
    worker_->Remove(info_.id);  // deletes this
  }

  Worker* const worker_;
  EventLoop& loop_;
  SmtpServer& server_;
  ConnectionInfo info_;
  UniqueFd fd_;
  bool limited_ = false;  // holds a Limiter slot for info_.client.ip
  Phase phase_ = Phase::kSmtp;
  std::string proxy_buffer_;
  std::optional<SmtpSession> session_;
  std::unique_ptr<tls::Session> tls_;
  absl::Time handshake_deadline_ = absl::InfiniteFuture();
  bool decision_in_flight_ = false;
  bool heard_before_banner_ = false;
  bool deciding_ = false;  // inside SessionHandler::Decide
  std::optional<Verdict> immediate_verdict_;
  std::string sending_;                                // bytes of the send in flight
  std::string queued_;                                 // bytes waiting for it
  absl::Time send_deadline_ = absl::InfiniteFuture();  // for the send in flight
  bool close_after_send_ = false;
  bool closed_ = false;
  absl::Time timer_at_ = absl::InfiniteFuture();
  Operation recv_op_;
  Operation send_op_;
  Operation timer_op_;
};

void SmtpServer::Worker::DeliverOnLoop(uint64_t id, const Verdict& verdict) {
  if (const auto it = connections_.find(id); it != connections_.end()) {
    it->second->Resolved(verdict);
  }
}

void SmtpServer::Worker::OnAccept(Listener& listener, const Completion& c) {
  if (c.result >= 0) {
    UniqueFd fd(c.result);
    SmtpServer& server = *server_;
    absl::StatusOr<SocketAddress> peer = SocketAddress::PeerOf(fd.get());
    if (draining_ || !peer.ok()) {
      return;  // closes fd
    }
    // Best effort: without it replies are slower, not wrong.
    (void)SetNoDelay(fd.get());
    server.accepted_.fetch_add(1, std::memory_order_relaxed);
    const uint64_t id = server.next_connection_id_.fetch_add(1, std::memory_order_relaxed);
    const bool expect_proxy =
        server.options_.proxy_protocol && server.options_.trusted_proxies.Contains(HostOf(*peer));
    auto connection = std::make_unique<Connection>(this, id, std::move(fd), *peer, expect_proxy);
    Connection* raw = connection.get();
    connections_.emplace(id, std::move(connection));
    raw->Begin();
  } else if (c.result != -ECANCELED) {
    Log().Warn("accept failed", {{"error", -c.result}});
  }
  if (!c.more && !loop_->stopping() && !draining_) {
    loop_->Accept(*listener.accept, listener.fd.get());
  }
  if (!c.more && draining_) {
    listener.fd.Reset();
  }
}

void SmtpServer::Worker::DrainOnLoop() {
  draining_ = true;
  for (auto& listener : listeners_) {
    if (listener->accept->in_flight()) {
      loop_->Cancel(*listener->accept);
    } else {
      listener->fd.Reset();
    }
  }
  // Drain() may destroy connections; walk a snapshot of the ids.
  std::vector<uint64_t> ids;
  ids.reserve(connections_.size());
  for (const auto& [id, connection] : connections_) {
    ids.push_back(id);
  }
  for (const uint64_t id : ids) {
    if (const auto it = connections_.find(id); it != connections_.end()) {
      it->second->Drain();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// SmtpServer

SmtpServer::SmtpServer(SmtpServerOptions options, SessionHandler* handler)
    : options_(std::move(options)),
      handler_(handler),
      limiter_(options_.max_connections, options_.max_connections_per_ip) {}

absl::StatusOr<std::unique_ptr<SmtpServer>> SmtpServer::Start(SmtpServerOptions options,
                                                              SessionHandler* handler) {
  if (options.threads == 0) {
    options.threads = std::max(1u, std::thread::hardware_concurrency());
  }
  std::unique_ptr<SmtpServer> server(new SmtpServer(std::move(options), handler));
  const SmtpServerOptions& opts = server->options_;
  for (uint32_t i = 0; i < opts.threads; ++i) {
    ASSIGN_OR_RETURN(std::unique_ptr<EventLoop> loop, EventLoop::Create());
    std::unique_ptr<Resolver> resolver;
    if (opts.resolver.has_value()) {
      ASSIGN_OR_RETURN(resolver, Resolver::Create(*loop, *opts.resolver));
    }
    server->workers_.push_back(
        std::make_unique<Worker>(server.get(), std::move(loop), std::move(resolver)));
  }
  for (const HostPort& listen : opts.listen) {
    ASSIGN_OR_RETURN(SocketAddress address, SocketAddress::Parse(listen.ToString()));
    // Port 0: the first socket picks the port, the other threads' sockets share it.
    for (auto& worker : server->workers_) {
      absl::StatusOr<UniqueFd> fd = Listen(address, {.reuse_port = ReusePort::kYes});
      if (!fd.ok()) {
        return absl::Status(fd.status().code(), fmt::format("smtp.listen {}: {}", listen.ToString(),
                                                            std::string(fd.status().message())));
      }
      ASSIGN_OR_RETURN(address, SocketAddress::LocalOf(fd->get()));
      worker->AddListener(std::move(*fd));
    }
    server->listen_addresses_.push_back(address.ToString());
  }
  for (auto& worker : server->workers_) {
    worker->Start();
  }
  return server;
}

SmtpServer::~SmtpServer() {
  Stop();
}

void SmtpServer::Drain() {
  for (auto& worker : workers_) {
    worker->Drain();
  }
}

bool SmtpServer::WaitIdle(absl::Duration timeout) {
  const absl::Time give_up = absl::Now() + timeout;
  while (limiter_.total() > 0) {
    if (absl::Now() >= give_up) {
      return false;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return true;
}

void SmtpServer::Stop() {
  if (stopped_) {
    return;
  }
  stopped_ = true;
  for (auto& worker : workers_) {
    worker->Stop();
  }
}

}  // namespace backstop::ingest
