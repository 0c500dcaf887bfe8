// backstop-loadgen: an SMTP load generator on our own io_uring loop (common/event_loop.h) and
// TLS over memory BIOs (common/tls.h). N sessions send M messages (or send for a duration),
// each uniquely numbered in an X-Loadgen-Seq header, one connection per message by default (like
// Postfix's smtp-source) or K per connection, pipelined or not, optionally over STARTTLS and
// under a rate cap. Reports throughput, replies by class and the latency of end of data → final
// reply and of connect → greeting, as text or one JSON document (--json).

#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "absl/time/clock.h"
#include "bench/loadgen_core.h"
#include "common/event_loop.h"
#include "common/socket.h"
#include "common/tls.h"
#include "common/units.h"

namespace backstop::bench {
namespace {

struct Flags {
  std::string server;
  int sessions = 10;
  uint64_t messages = 1000;
  std::string duration;  // instead of messages
  std::string size = "2KiB";
  std::string size_mix;
  std::string pipelining = "on";
  uint64_t messages_per_connection = 1;
  bool starttls = false;
  std::string sender = "loadgen@example.org";
  std::string domain = "example.com";
  int recipients = 1;
  std::string helo = "loadgen.bench.test";
  double rate = 0;  // messages/s; 0 = as fast as the server answers
  std::string timeout = "60s";
  bool json = false;
};

struct Settings {
  SocketAddress server;
  std::string server_host;  // for SNI
  int sessions = 0;
  std::optional<uint64_t> messages;
  std::optional<absl::Duration> duration;
  SizePicker sizes{{}};
  SessionOptions session;
  MessageOptions message;
  uint64_t messages_per_connection = 1;
  double rate = 0;
  absl::Duration timeout;
};

// Everything counted during the run. The loop thread only.
struct Stats {
  uint64_t started = 0;
  uint64_t by_outcome[4] = {};  // indexed by Outcome
  uint64_t bytes_accepted = 0;
  uint64_t connections = 0;
  uint64_t connection_errors = 0;  // connect refused, greeting refused, lost, timed out
  std::string first_error;
  std::vector<absl::Duration> data_end;
  std::vector<absl::Duration> greeting;
};

// Runs the whole load on one event loop: one Slot per session, each driving a ClientSession
// over a connection after another. Owns the loop and the slots; the loop thread only.
class Runner {
 public:
  Runner(Settings settings, std::unique_ptr<EventLoop> loop,
         std::shared_ptr<const tls::Context> tls_context)
      : settings_(std::move(settings)),
        loop_(std::move(loop)),
        tls_context_(std::move(tls_context)),
        ticker_([this](const Completion& c) { OnTick(c); }) {}

  Stats Run() {
    start_ = absl::Now();
    for (int i = 0; i < settings_.sessions; ++i) {
      slots_.push_back(std::make_unique<Slot>(this));
    }
    for (auto& slot : slots_) {
      NextConnection(*slot);
    }
    loop_->StartTimer(ticker_, TickInterval());
    MaybeFinish();
    loop_->Run();
    end_ = absl::Now();
    return std::move(stats_);
  }

  absl::Duration elapsed() const { return end_ - start_; }

 private:
  // One session: a connection after another, each with its own ClientSession.
  struct Slot {
    explicit Slot(Runner* runner)
        : connect_op([this, runner](const Completion& c) { runner->OnConnected(*this, c); }),
          recv_op([this, runner](const Completion& c) { runner->OnReceived(*this, c); }),
          send_op([this, runner](const Completion& c) { runner->OnSent(*this, c); }) {}
    Operation connect_op;
    Operation recv_op;
    Operation send_op;
    UniqueFd fd;
    std::unique_ptr<ClientSession> session;
    std::unique_ptr<tls::Session> tls;
    std::string sending;             // the bytes of send_op, while in flight
    std::string queued;              // written while send_op was in flight
    std::optional<uint64_t> ticket;  // the sequence number of the next message on this slot
    absl::Time connect_started;
    absl::Time last_activity;
    uint64_t messages_on_connection = 0;
    bool greeting_counted = false;
    bool closing = false;
    bool receiving = false;  // inside OnReceived, which re-arms or finalizes last
    bool done = false;       // no more work for this slot
  };

  absl::Duration TickInterval() const {
    return settings_.rate > 0 ? absl::Milliseconds(1) : absl::Milliseconds(50);
  }

  // The next message's sequence number, if any is left.
  std::optional<uint64_t> Claim(absl::Time now) {
    if (settings_.messages && stats_.started >= *settings_.messages) {
      return std::nullopt;
    }
    if (settings_.duration && now - start_ >= *settings_.duration) {
      return std::nullopt;
    }
    return ++stats_.started;
  }

  // When the rate cap lets message `seq` start.
  absl::Time DueAt(uint64_t seq) const {
    if (settings_.rate <= 0) {
      return start_;
    }
    return start_ + absl::Seconds(static_cast<double>(seq - 1) / settings_.rate);
  }

  void NextConnection(Slot& slot) {
    const absl::Time now = absl::Now();
    slot.ticket = Claim(now);
    if (!slot.ticket) {
      slot.done = true;
      return;
    }
    if (DueAt(*slot.ticket) <= now) {
      Connect(slot);
    }  // else the ticker connects it when it is due
  }

  void Connect(Slot& slot) {
    slot.connect_started = absl::Now();
    slot.last_activity = slot.connect_started;
    slot.messages_on_connection = 0;
    slot.greeting_counted = false;
    slot.closing = false;
    ++stats_.connections;
    absl::StatusOr<UniqueFd> fd = backstop::Connect(settings_.server, Blocking::kNo);
    if (!fd.ok()) {
      slot.ticket.reset();
      ConnectionFailed(slot, std::string(fd.status().message()));
      return;
    }
    slot.fd = std::move(*fd);
    slot.session = std::make_unique<ClientSession>(settings_.session);
    loop_->PollAdd(slot.connect_op, slot.fd.get(), POLLOUT);
  }

  void OnConnected(Slot& slot, const Completion& c) {
    if (slot.closing) {
      Finalize(slot);
      return;
    }
    int error = 0;
    socklen_t length = sizeof(error);
    if (c.result < 0) {
      error = -c.result;
    } else if (getsockopt(slot.fd.get(), SOL_SOCKET, SO_ERROR, &error, &length) != 0) {
      error = errno;
    }
    if (error != 0) {
      slot.fd.Reset();
      slot.ticket.reset();
      ConnectionFailed(slot, fmt::format("connect: {}", std::strerror(error)));
      return;
    }
    // The loop's receives wait for data themselves only on blocking descriptors.
    fcntl(slot.fd.get(), F_SETFL, fcntl(slot.fd.get(), F_GETFL) & ~O_NONBLOCK);
    // Each write is a whole command batch or message: nothing to gain from Nagle's delay.
    const int one = 1;
    setsockopt(slot.fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    loop_->Recv(slot.recv_op, slot.fd.get());
  }

  // The connection never got as far as a session: its message counts as an error. The next
  // attempt waits for the ticker, so that a dead server is not hammered in a tight loop.
  void ConnectionFailed(Slot& slot, const std::string& why) {
    NoteError(why);
    ++stats_.by_outcome[static_cast<int>(Outcome::kError)];
    slot.session.reset();
    slot.ticket = Claim(absl::Now());
    slot.done = !slot.ticket;
    MaybeFinish();
  }

  void NoteError(const std::string& why) {
    ++stats_.connection_errors;
    if (stats_.first_error.empty()) {
      stats_.first_error = why;
    }
  }

  void OnReceived(Slot& slot, const Completion& c) {
    slot.receiving = true;
    if (!slot.closing) {
      Receive(slot, c);
    }
    slot.receiving = false;
    if (slot.closing) {
      Finalize(slot);
    } else {
      loop_->Recv(slot.recv_op, slot.fd.get());
    }
  }

  void Receive(Slot& slot, const Completion& c) {
    const absl::Time now = absl::Now();
    slot.last_activity = now;
    if (c.result <= 0) {
      Close(slot, c.result == 0 ? "connection closed by the server"
                                : fmt::format("recv: {}", std::strerror(-c.result)));
      return;
    }
    const std::string_view bytes(c.data.data(), c.data.size());
    if (slot.tls) {
      slot.tls->FeedCiphertext(bytes);
      if (!slot.tls->handshake_done()) {
        if (absl::Status status = slot.tls->Handshake(); !status.ok()) {
          Close(slot, fmt::format("TLS handshake: {}", std::string(status.message())));
          return;
        }
        if (slot.tls->handshake_done()) {
          slot.session->TlsEstablished();
        }
      }
      std::string plaintext;
      bool peer_closed = false;
      if (slot.tls->handshake_done()) {
        if (absl::Status status = slot.tls->ReadPlaintext(&plaintext, &peer_closed); !status.ok()) {
          Close(slot, fmt::format("TLS: {}", std::string(status.message())));
          return;
        }
      }
      slot.session->Feed(plaintext, now);
    } else {
      slot.session->Feed(bytes, now);
    }
    Pump(slot, now);
  }

  // Collects what the session decided, starts the next message or ends the connection, and
  // writes what the session has to say.
  void Pump(Slot& slot, absl::Time now) {
    ClientSession& session = *slot.session;
    if (!slot.greeting_counted && session.greeted_at()) {
      slot.greeting_counted = true;
      stats_.greeting.push_back(*session.greeted_at() - slot.connect_started);
    }
    CollectResults(session);
    if (session.tls_requested() && !slot.tls) {
      absl::StatusOr<std::unique_ptr<tls::Session>> tls =
          tls::Session::Client(tls_context_, settings_.server_host);
      if (!tls.ok()) {
        Close(slot, fmt::format("TLS: {}", std::string(tls.status().message())));
        return;
      }
      slot.tls = std::move(*tls);
      if (absl::Status status = slot.tls->Handshake(); !status.ok()) {
        Close(slot, fmt::format("TLS handshake: {}", std::string(status.message())));
        return;
      }
      Write(slot, slot.tls->TakeCiphertext());
    }
    if (session.ready_for_message()) {
      if (!slot.ticket && slot.messages_on_connection < settings_.messages_per_connection) {
        slot.ticket = Claim(now);
      }
      if (!slot.ticket) {
        session.Quit();
      } else if (DueAt(*slot.ticket) <= now) {
        const uint64_t seq = *slot.ticket;
        slot.ticket.reset();
        ++slot.messages_on_connection;
        const uint64_t size = settings_.sizes.SizeOf(seq);
        std::string data = MakeMessage(seq, size, settings_.message);
        const uint64_t bytes = data.size() - 3;  // without the terminating ".\r\n"
        session.StartMessage(seq, std::move(data), bytes);
      }  // else the ticker starts it when it is due
    }
    if (session.has_output()) {
      std::string output = session.TakeOutput(now);
      if (slot.tls && slot.tls->handshake_done()) {
        if (absl::Status status = slot.tls->WritePlaintext(output); !status.ok()) {
          Close(slot, fmt::format("TLS: {}", std::string(status.message())));
          return;
        }
        output = slot.tls->TakeCiphertext();
      }
      Write(slot, std::move(output));
    } else if (slot.tls && slot.tls->has_ciphertext()) {
      Write(slot, slot.tls->TakeCiphertext());
    }
    if (session.closed()) {
      Close(slot, session.error());
    }
  }

  void CollectResults(ClientSession& session) {
    for (const MessageResult& result : session.TakeResults()) {
      ++stats_.by_outcome[static_cast<int>(result.outcome)];
      if (result.outcome == Outcome::k2xx) {
        stats_.bytes_accepted += result.bytes;
      }
      if (result.data_end_sent && result.replied) {
        stats_.data_end.push_back(*result.replied - *result.data_end_sent);
      }
    }
  }

  void Write(Slot& slot, std::string bytes) {
    if (bytes.empty()) {
      return;
    }
    if (slot.send_op.in_flight()) {
      slot.queued.append(bytes);
      return;
    }
    slot.sending = std::move(bytes);
    loop_->Send(slot.send_op, slot.fd.get(), slot.sending);
  }

  void OnSent(Slot& slot, const Completion& c) {
    slot.sending.clear();
    if (slot.closing) {
      Finalize(slot);
      return;
    }
    if (c.result < 0) {
      Close(slot, fmt::format("send: {}", std::strerror(-c.result)));
      return;
    }
    if (!slot.queued.empty()) {
      Write(slot, std::exchange(slot.queued, std::string()));
    }
  }

  // Ends the connection (the session's QUIT went out, or it failed): shuts the socket down so
  // that the operations in flight complete, then Finalize() closes it.
  void Close(Slot& slot, const std::string& why) {
    if (slot.closing) {
      return;
    }
    slot.closing = true;
    slot.session->ConnectionLost(why);
    if (!slot.session->error().empty()) {
      NoteError(slot.session->error());
    }
    CollectResults(*slot.session);
    if (!slot.sending.empty() && slot.session->error().empty()) {
      // QUIT is still being written: let it go out before the shutdown.
      shutdown(slot.fd.get(), SHUT_RD);
    } else {
      shutdown(slot.fd.get(), SHUT_RDWR);
    }
    Finalize(slot);
  }

  void Finalize(Slot& slot) {
    if (slot.receiving || slot.recv_op.in_flight() || slot.send_op.in_flight() ||
        slot.connect_op.in_flight()) {
      return;
    }
    slot.closing = false;
    slot.fd.Reset();
    slot.tls.reset();
    slot.session.reset();
    slot.sending.clear();
    slot.queued.clear();
    if (slot.ticket) {
      ++stats_.by_outcome[static_cast<int>(Outcome::kError)];  // claimed, never sent
      slot.ticket.reset();
    }
    NextConnection(slot);
    MaybeFinish();
  }

  void OnTick(const Completion& c) {
    if (c.result == -ECANCELED || loop_->stopping()) {
      return;
    }
    const absl::Time now = absl::Now();
    for (auto& slot : slots_) {
      if (slot->done || slot->closing) {
        continue;
      }
      if (!slot->session && slot->ticket && DueAt(*slot->ticket) <= now) {
        Connect(*slot);
      } else if (slot->session && slot->ticket && slot->session->ready_for_message() &&
                 DueAt(*slot->ticket) <= now) {
        Pump(*slot, now);
      } else if (slot->session && now - slot->last_activity > settings_.timeout &&
                 !(slot->ticket && slot->session->ready_for_message())) {
        Close(*slot, "timed out waiting for the server");
      }
    }
    if (!MaybeFinish()) {
      loop_->StartTimer(ticker_, TickInterval());
    }
  }

  bool MaybeFinish() {
    for (auto& slot : slots_) {
      if (!slot->done || slot->session) {
        return false;
      }
    }
    loop_->Cancel(ticker_);
    loop_->Stop();
    return true;
  }

  const Settings settings_;
  std::unique_ptr<EventLoop> loop_;
  std::shared_ptr<const tls::Context> tls_context_;  // shared with every tls::Session
  Operation ticker_;
  std::vector<std::unique_ptr<Slot>> slots_;
  Stats stats_;
  absl::Time start_;
  absl::Time end_;
};

double Ms(absl::Duration d) {
  return absl::ToDoubleMilliseconds(d);
}

std::string PercentilesJson(const Percentiles& p) {
  return fmt::format(
      R"({{"count":{},"p50":{:.3f},"p90":{:.3f},"p99":{:.3f},"p99.9":{:.3f},"max":{:.3f}}})",
      p.count, Ms(p.p50), Ms(p.p90), Ms(p.p99), Ms(p.p999), Ms(p.max));
}

std::string PercentilesText(const Percentiles& p) {
  return fmt::format("p50 {:.2f}  p90 {:.2f}  p99 {:.2f}  p99.9 {:.2f}  max {:.2f} ms ({} samples)",
                     Ms(p.p50), Ms(p.p90), Ms(p.p99), Ms(p.p999), Ms(p.max), p.count);
}

std::string JsonEscape(const std::string& text) {
  std::string out;
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out.append(fmt::format("\\u{:04x}", c));
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string SizeMixText(const SizePicker& sizes) {
  std::string text;
  for (const SizeWeight& entry : sizes.mix()) {
    text.append(
        fmt::format("{}{}:{}", text.empty() ? "" : ",", FormatSize(entry.bytes), entry.weight));
  }
  return text;
}

void Report(const Flags& flags, const Settings& settings, Stats& stats, absl::Duration elapsed) {
  const double seconds = absl::ToDoubleSeconds(elapsed);
  const uint64_t accepted = stats.by_outcome[static_cast<int>(Outcome::k2xx)];
  const Percentiles data_end = Summarize(stats.data_end);
  const Percentiles greeting = Summarize(stats.greeting);
  double load[3] = {};
  if (FILE* file = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(file, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3) {
      load[0] = load[1] = load[2] = 0;
    }
    std::fclose(file);
  }
  const unsigned cores = std::thread::hardware_concurrency();
  const double msg_per_s = seconds > 0 ? static_cast<double>(accepted) / seconds : 0;
  const double bytes_per_s = seconds > 0 ? static_cast<double>(stats.bytes_accepted) / seconds : 0;
  if (flags.json) {
    fmt::print(
        R"({{"server":"{}","sessions":{},"size_mix":"{}","pipelining":{},"starttls":{},)"
        R"("messages_per_connection":{},"rate_cap":{},"messages":{},"connections":{},)"
        R"("accepted":{},"replies":{{"2xx":{},"4xx":{},"5xx":{},"errors":{}}},)"
        R"("connection_errors":{},"first_error":"{}","seconds":{:.3f},"msg_per_s":{:.1f},)"
        R"("bytes_per_s":{:.0f},"latency_ms":{{"data_end_to_reply":{},"connect_to_greeting":{}}},)"
        R"("machine":{{"cores":{},"loadavg":[{:.2f},{:.2f},{:.2f}]}}}})"
        "\n",
        settings.server.ToString(), settings.sessions, SizeMixText(settings.sizes),
        settings.session.pipelining == Pipelining::kOn, flags.starttls,
        settings.messages_per_connection, settings.rate, stats.started, stats.connections, accepted,
        accepted, stats.by_outcome[static_cast<int>(Outcome::k4xx)],
        stats.by_outcome[static_cast<int>(Outcome::k5xx)],
        stats.by_outcome[static_cast<int>(Outcome::kError)], stats.connection_errors,
        JsonEscape(stats.first_error), seconds, msg_per_s, bytes_per_s, PercentilesJson(data_end),
        PercentilesJson(greeting), cores, load[0], load[1], load[2]);
    return;
  }
  fmt::print(
      "server {}  sessions {}  sizes {}  pipelining {}  starttls {}  messages/connection {}\n",
      settings.server.ToString(), settings.sessions, SizeMixText(settings.sizes), flags.pipelining,
      flags.starttls ? "on" : "off", settings.messages_per_connection);
  fmt::print("messages {} in {:.3f} s over {} connections: {:.1f} msg/s accepted, {:.2f} MB/s\n",
             stats.started, seconds, stats.connections, msg_per_s, bytes_per_s / 1e6);
  fmt::print("replies  2xx {}  4xx {}  5xx {}  errors {}\n", accepted,
             stats.by_outcome[static_cast<int>(Outcome::k4xx)],
             stats.by_outcome[static_cast<int>(Outcome::k5xx)],
             stats.by_outcome[static_cast<int>(Outcome::kError)]);
  if (!stats.first_error.empty()) {
    fmt::print("connection errors {} (first: {})\n", stats.connection_errors, stats.first_error);
  }
  fmt::print("end of data -> reply  {}\n", PercentilesText(data_end));
  fmt::print("connect -> greeting   {}\n", PercentilesText(greeting));
  fmt::print("machine: {} cores, load average {:.2f} {:.2f} {:.2f}\n", cores, load[0], load[1],
             load[2]);
}

absl::StatusOr<Settings> MakeSettings(const Flags& flags) {
  Settings settings;
  absl::StatusOr<SocketAddress> server = SocketAddress::Parse(flags.server);
  if (!server.ok()) {
    return server.status();
  }
  settings.server = *server;
  settings.server_host = flags.server.substr(0, flags.server.rfind(':'));
  settings.sessions = flags.sessions;
  if (flags.duration.empty()) {
    settings.messages = flags.messages;
  } else {
    absl::StatusOr<absl::Duration> duration = ParseDuration(flags.duration);
    if (!duration.ok()) {
      return duration.status();
    }
    settings.duration = *duration;
  }
  absl::StatusOr<std::vector<SizeWeight>> mix =
      ParseSizeMix(flags.size_mix.empty() ? flags.size : flags.size_mix);
  if (!mix.ok()) {
    return mix.status();
  }
  settings.sizes = SizePicker(std::move(*mix));
  std::vector<std::string> recipients;
  for (int i = 1; i <= flags.recipients; ++i) {
    recipients.push_back(flags.recipients == 1 ? fmt::format("rcpt@{}", flags.domain)
                                               : fmt::format("rcpt{}@{}", i, flags.domain));
  }
  settings.session = SessionOptions{
      .helo = flags.helo,
      .sender = flags.sender,
      .recipients = recipients,
      .pipelining = flags.pipelining == "on" ? Pipelining::kOn : Pipelining::kOff,
      .starttls = flags.starttls ? StartTls::kOn : StartTls::kOff,
  };
  settings.message = MessageOptions{.sender = flags.sender, .recipients = recipients};
  settings.messages_per_connection = flags.messages_per_connection;
  settings.rate = flags.rate;
  absl::StatusOr<absl::Duration> timeout = ParseDuration(flags.timeout);
  if (!timeout.ok()) {
    return timeout.status();
  }
  settings.timeout = *timeout;
  return settings;
}

int Main(int argc, char** argv) {
  Flags flags;
  CLI::App app{"backstop-loadgen: SMTP load generator (throughput and latency percentiles)"};
  app.add_option("server", flags.server, "SMTP server, HOST:PORT (numeric host)")->required();
  app.add_option("-s,--sessions", flags.sessions, "concurrent sessions")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  auto* messages = app.add_option("-m,--messages", flags.messages, "messages in total")
                       ->check(CLI::PositiveNumber)
                       ->capture_default_str();
  app.add_option("--duration", flags.duration, "send for this long instead (e.g. 30s)")
      ->excludes(messages);
  auto* size =
      app.add_option("--size", flags.size, "message size (e.g. 2KiB)")->capture_default_str();
  app.add_option("--size-mix", flags.size_mix, "weighted sizes, e.g. 2KiB:90,50KiB:10")
      ->excludes(size);
  app.add_option("--pipelining", flags.pipelining, "PIPELINING (RFC 2920) when offered")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  app.add_option("-k,--messages-per-connection", flags.messages_per_connection,
                 "messages per connection (1 = a new connection per message)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_flag("--starttls", flags.starttls, "require STARTTLS (the certificate is not verified)");
  app.add_option("--sender", flags.sender, "MAIL FROM address")->capture_default_str();
  app.add_option("--domain", flags.domain, "recipient domain")->capture_default_str();
  app.add_option("--recipients", flags.recipients, "recipients per message")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app.add_option("--helo", flags.helo, "EHLO name")->capture_default_str();
  app.add_option("--rate", flags.rate, "cap in messages/s (0 = none)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--timeout", flags.timeout, "per-reply timeout")->capture_default_str();
  app.add_flag("--json", flags.json, "print one JSON document");
  CLI11_PARSE(app, argc, argv);

  absl::StatusOr<Settings> settings = MakeSettings(flags);
  if (!settings.ok()) {
    std::fprintf(stderr, "backstop-loadgen: %s\n",
                 std::string(settings.status().message()).c_str());
    return 2;
  }
  std::shared_ptr<const tls::Context> tls_context;
  if (flags.starttls) {
    tls::ClientContextOptions options;
    options.verify_peer = false;  // a load generator measures; it does not authenticate
    absl::StatusOr<std::shared_ptr<const tls::Context>> context = tls::Context::Client(options);
    if (!context.ok()) {
      std::fprintf(stderr, "backstop-loadgen: %s\n",
                   std::string(context.status().message()).c_str());
      return 1;
    }
    tls_context = *context;
  }
  // One receive buffer per session at least (each session has one receive in flight).
  EventLoopOptions loop_options;
  loop_options.queue_depth = 4096;
  loop_options.buffer_count = 4096;
  loop_options.buffer_size = 4096;
  absl::StatusOr<std::unique_ptr<EventLoop>> loop = EventLoop::Create(loop_options);
  if (!loop.ok()) {
    std::fprintf(stderr, "backstop-loadgen: %s\n", std::string(loop.status().message()).c_str());
    return 1;
  }
  Runner runner(*settings, std::move(*loop), tls_context);
  Stats stats = runner.Run();
  Report(flags, *settings, stats, runner.elapsed());
  return stats.by_outcome[static_cast<int>(Outcome::k2xx)] > 0 ? 0 : 1;
}

}  // namespace
}  // namespace backstop::bench

int main(int argc, char** argv) {
  return backstop::bench::Main(argc, argv);
}
