#pragma once

// The ingest role's I/O shell (DESIGN §3.3): one io_uring event loop per thread, each with its
// own SO_REUSEPORT listening socket per address, so the kernel spreads connections across
// threads and a connection never migrates. Each connection drives a sans-I/O SmtpSession with
// the bytes the ring delivers (through TLS over memory BIOs after STARTTLS, after a PROXY header
// from a trusted load balancer) and asks a SessionHandler for every decision the session needs.

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/config.h"
#include "common/dns_resolver.h"
#include "common/event_loop.h"
#include "common/tls.h"
#include "ingest/proxy_protocol.h"
#include "ingest/smtp_session.h"

namespace backstop::ingest {

// What a handler knows of a connection besides its session.
struct ConnectionInfo {
  uint64_t id = 0;  // unique per process, for logs
  ClientInfo client;
  absl::Time connected;
  std::optional<TlsInfo> tls;
  // The connection's loop thread's resolver (null without SmtpServerOptions::resolver): use it
  // on that thread only, e.g. through `executor`.
  DnsClient* dns = nullptr;
  // Runs tasks on the connection's loop thread while it runs.
  std::shared_ptr<LoopExecutor> executor;
};

// Makes the decisions a session asks for (filters, relay control, the queue commit). Shared by
// every loop thread.
class SessionHandler {
 public:
  virtual ~SessionHandler() = default;
  // session.pending() says what is asked (never kNone or kStartTls). Reads what it needs from
  // the session during the call (the session may be gone afterwards; at kEndOfData it may take
  // the message bytes with TakeMessage() instead of copying them), then calls `respond`
  // exactly once, on any thread, now or later (even after the server is destroyed: the
  // answer is then dropped); must not block.
  virtual void Decide(const ConnectionInfo& connection, SmtpSession& session,
                      std::function<void(const Verdict&)> respond) = 0;
  // The connection is gone (for logs and metrics).
  virtual void Closed(const ConnectionInfo& /*connection*/, const SmtpSession* /*session*/) {}
};

struct SmtpServerOptions {
  std::vector<HostPort> listen;
  uint32_t threads = 1;
  // starttls_available is set per connection from tls_context.
  SessionOptions session;
  uint32_t max_connections = 10'000;
  uint32_t max_connections_per_ip = 50;
  // PROXY protocol: a connection from a trusted proxy must start with a v1/v2 header; other
  // peers are ordinary SMTP clients.
  bool proxy_protocol = false;
  CidrSet trusted_proxies;
  // Time for the PROXY header and for the TLS handshake.
  absl::Duration handshake_timeout = absl::Seconds(30);
  // The server certificate in force (re-read at every STARTTLS, so a reload takes effect for
  // new handshakes); null or returning null = STARTTLS not offered.
  std::function<std::shared_ptr<const tls::Context>()> tls_context;
  // Set: each loop thread gets a DNS resolver (ConnectionInfo::dns) for the handler's checks.
  std::optional<ResolverOptions> resolver;
};

// Owns the loop threads, their listening sockets and every connection. Start/Drain/Stop/
// destruction from one control thread; the counters from any thread.
class SmtpServer {
 public:
  static absl::StatusOr<std::unique_ptr<SmtpServer>> Start(SmtpServerOptions options,
                                                           SessionHandler* handler);
  ~SmtpServer();
  SmtpServer(const SmtpServer&) = delete;
  SmtpServer& operator=(const SmtpServer&) = delete;

  // The bound addresses, "ip:port" (port 0 in the options becomes the kernel's choice, shared
  // by every thread).
  const std::vector<std::string>& listen_addresses() const { return listen_addresses_; }

  // Stops accepting and tells every session to end at its next command (421 4.3.2); a
  // transaction in progress finishes first. Returns at once.
  void Drain();
  // Waits until no connection is left or `timeout` passes; true when none is left.
  bool WaitIdle(absl::Duration timeout);
  // Closes every connection and stops the threads. Idempotent.
  void Stop();

  uint64_t active_connections() const { return limiter_.total(); }
  uint64_t accepted_connections() const { return accepted_.load(std::memory_order_relaxed); }
  uint64_t refused_connections() const { return refused_.load(std::memory_order_relaxed); }
  uint64_t tls_established() const { return tls_established_.load(std::memory_order_relaxed); }
  uint64_t tls_failed() const { return tls_failed_.load(std::memory_order_relaxed); }

  // Per-process connection limits, global and per client address. Thread-safe.
  class Limiter {
   public:
    Limiter(uint32_t max_total, uint32_t max_per_ip)
        : max_total_(max_total), max_per_ip_(max_per_ip) {}
    // False (and nothing counted) when either limit is reached.
    bool Acquire(const std::string& ip);
    void Release(const std::string& ip);
    uint64_t total() const;

   private:
    const uint32_t max_total_;
    const uint32_t max_per_ip_;
    mutable std::mutex mutex_;
    uint64_t total_ = 0;                                // guarded by mutex_
    std::unordered_map<std::string, uint32_t> per_ip_;  // guarded by mutex_
  };

 private:
  class Worker;
  class Connection;
  friend class Connection;

  SmtpServer(SmtpServerOptions options, SessionHandler* handler);

  const SmtpServerOptions options_;
  SessionHandler* const handler_;
  Limiter limiter_;
  std::atomic<uint64_t> next_connection_id_{1};
  std::atomic<uint64_t> accepted_{0};
  std::atomic<uint64_t> refused_{0};
  std::atomic<uint64_t> tls_established_{0};  // STARTTLS handshakes completed
  std::atomic<uint64_t> tls_failed_{0};
  std::vector<std::string> listen_addresses_;
  std::vector<std::unique_ptr<Worker>> workers_;
  bool stopped_ = false;
};

}  // namespace backstop::ingest
