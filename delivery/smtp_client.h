#pragma once

// The SMTP client session toward a primary MX (DESIGN §3.4; RFC 5321, 3207 STARTTLS, 2920
// PIPELINING, 1870 SIZE, 6152 8BITMIME, 6531 SMTPUTF8, 3461 DSN, 2034/3463 enhanced codes) as
// a pure state machine: server bytes and the time in; bytes to send, a STARTTLS request, a
// deadline and per-message results out. It does no I/O, owns no timer and reads no clock.
//
// The shell's loop, for one TCP connection:
//   SmtpClient client(options, now);              // connected: waits for the 220 greeting
//   client.AddMessage(entry, now) ...              // any time, also while connected (reuse)
//   loop:
//     write client.TakeOutput(); report written bytes with OnBytesSent(n, now)
//     if client.tls_requested(): handshake, then TlsEstablished(now) or TlsFailed(why, now)
//     read → Feed(bytes, now); timer at deadline() → OnTimer(now); EOF/error → ConnectionLost
//     collect TakeResults(); when idle() and nothing else is due for the host, Finish(now)
//     when closing(): write the remaining output, close the socket
//
// OnBytesSent must account for every byte taken with TakeOutput: the data-termination timeout
// starts only once the whole end of data is reported written.
//
// Every message added gets exactly one MessageResult with one RecipientResult per envelope
// recipient, whatever happens to the connection: what the server did not answer is a temporary
// failure carrying the connection failure (so the shell may try the next MX host with it).
//
// Decisions (tests rely on them):
// - Permanent: a 5xx greeting (for every message); 5xx to MAIL, RCPT, DATA or the end of data;
//   and messages we refuse to send, never altering them: 8-bit content to a server without
//   8BITMIME (554 5.6.3), an SMTPUTF8 envelope (flag or non-ASCII address) to a server without
//   SMTPUTF8 (554 5.6.7), more than the server's SIZE (552 5.3.4), control characters in an
//   envelope address (553 5.1.3). Refused messages cost no command; the session goes on.
// - Temporary: every 4xx; EHLO 4xx, and HELO refused even with 5xx (our name being refused is
//   for an operator to fix, not a reason to bounce a backlog); any 421 (the server closes);
//   TLS required but not offered or refused (451 4.7.4) or the handshake failed (451 4.7.5);
//   connection loss and timeouts (451 4.4.2); garbage, over-long or unexpected replies and a
//   refused RSET (451 4.5.0).
// - Opportunistic TLS: a refused STARTTLS continues in plaintext; a failed handshake fails the
//   connection (kTlsFailure), and the shell may reconnect to that host with TlsPolicy::kNone.
// - RSET follows a transaction aborted before the end of data (MAIL refused, no recipient
//   accepted, DATA refused); after a reply to the end of data the server has reset itself.
// - With PIPELINING, MAIL, every RCPT and DATA go in one write; when DATA is accepted although
//   no recipient was, the data is only the terminating dot (RFC 2920 §3.1).

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"
#include "proto/queue.pb.h"

namespace backstop::delivery {

// STARTTLS toward the server ([[domain]] tls).
enum class TlsPolicy : uint8_t {
  kNone,           // never STARTTLS (e.g. the retry after an opportunistic handshake failure)
  kOpportunistic,  // STARTTLS when offered; a refused STARTTLS continues in plaintext
  kRequired,       // no STARTTLS offered, refused or failed: temporary failure, stays queued
};

// The command a server reply answers (or the greeting). Label values of
// backstop_delivery_primary_replies_total{stage}: SmtpStageLabel.
enum class SmtpStage : uint8_t {
  kGreeting,
  kEhlo,
  kHelo,
  kStartTls,
  kMail,
  kRcpt,
  kData,
  kDataEnd,
  kRset,
  kQuit,
};
inline constexpr size_t kSmtpStages = 10;
// "greeting", "ehlo", "helo", "starttls", "mail", "rcpt", "data", "data_end", "rset", "quit".
std::string_view SmtpStageLabel(SmtpStage stage);

// The class of a reply code; kNone for a reply that never came (timeout, connection lost).
enum class ReplyClass : uint8_t { k2xx, k3xx, k4xx, k5xx, kNone };
inline constexpr size_t kReplyClasses = 5;
// 0 (no reply) and codes outside 200..599 are kNone.
ReplyClass ReplyClassOf(int code);
// "2xx", "3xx", "4xx", "5xx", "none".
std::string_view ReplyClassLabel(ReplyClass reply_class);

// RFC 5321 §4.5.3.2 timeouts: each runs from the moment the command was produced (for the data
// block: from the last reported write progress; for the end of data: from the moment the last
// data byte was reported sent).
struct ClientOptions {
  std::string helo_name;  // our [node] hostname
  TlsPolicy tls = TlsPolicy::kOpportunistic;
  absl::Duration greeting_timeout = absl::Minutes(5);
  absl::Duration ehlo_timeout = absl::Minutes(5);
  absl::Duration starttls_timeout = absl::Minutes(5);  // STARTTLS reply, then the handshake
  absl::Duration mail_timeout = absl::Minutes(5);
  absl::Duration rcpt_timeout = absl::Minutes(5);
  absl::Duration data_init_timeout = absl::Minutes(2);
  absl::Duration data_block_timeout = absl::Minutes(3);
  absl::Duration data_end_timeout = absl::Minutes(10);
  absl::Duration rset_timeout = absl::Minutes(5);
  absl::Duration quit_timeout = absl::Minutes(5);
  // Optional, for metrics: called with every reply the server gives to one of our commands (or
  // its greeting), and with code 0 once for the reply awaited when the connection is lost or
  // times out. Unsolicited replies and the TLS handshake are not reported.
  std::function<void(SmtpStage stage, int code)> on_reply;
};

// What EHLO advertised (all false/0 after HELO).
struct ServerExtensions {
  bool pipelining = false;
  bool size = false;
  uint64_t max_size = 0;  // SIZE n; 0 = no fixed limit
  bool eight_bit_mime = false;
  bool smtputf8 = false;
  bool dsn = false;
  bool starttls = false;
  bool chunking = false;
  bool enhanced_status_codes = false;
};

// A reply of the server, or one the client made up for a decision of its own (source kClient).
struct Reply {
  int code = 0;
  std::string enhanced;            // "5.1.1" when the first line starts with one, else empty
  std::vector<std::string> lines;  // the text after "NNN-" / "NNN " of each line, as sent
  // "550 5.1.1 first line second line": the lines joined by spaces after the code; what a DSN
  // puts after "Diagnostic-Code: smtp; ".
  std::string OneLine() const;
};

enum class RecipientOutcome : uint8_t { kDelivered, kTemporaryFailure, kPermanentFailure };

enum class ReplySource : uint8_t {
  kServer,  // the server's reply to MAIL, RCPT, DATA, the end of data, or the greeting/EHLO
  kClient,  // made up here: a connection failure, or a message we refused to send
};

// Why the connection ended early; kNone when the server's replies decided everything.
enum class ConnectionFailure : uint8_t {
  kNone,
  kGreetingRejected,  // 4xx/5xx banner
  kHeloRejected,      // EHLO and HELO refused, or EHLO 4xx
  kTlsFailure,        // required but not offered/refused, or the handshake failed
  kConnectionLost,    // EOF or error, or a 421 reply (the server closes the channel)
  kTimeout,
  kProtocolError,  // garbage or unexpected replies, or RSET refused
};

std::string_view ConnectionFailureName(ConnectionFailure failure);

struct RecipientResult {
  std::string address;
  RecipientOutcome outcome = RecipientOutcome::kTemporaryFailure;
  ReplySource source = ReplySource::kServer;
  Reply reply;
};

struct MessageResult {
  std::string id;                           // QueueEntry.id of the message
  std::vector<RecipientResult> recipients;  // in envelope order
  ConnectionFailure failure = ConnectionFailure::kNone;
  // The message's transmission (Postfix's delays "d"): from its MAIL command (or our decision to
  // refuse it) to the reply that decided it. A message that never started (the connection
  // failed first) has started == finished, the time of the failure.
  absl::Time started;
  absl::Time finished;
};

// One SMTP client connection. Owns the messages handed to it until their results are taken, the
// input not yet parsed and the output not yet taken. Runs on the connection's loop thread; not
// thread-safe.
class SmtpClient {
 public:
  // The TCP connection is established at `now`: the greeting timeout starts.
  SmtpClient(ClientOptions options, absl::Time now);
  ~SmtpClient();
  SmtpClient(const SmtpClient&) = delete;
  SmtpClient& operator=(const SmtpClient&) = delete;

  // Queues a message; it is sent once the session is ready and the earlier ones are done. On a
  // closing session it fails at once (temporary, with the connection's failure).
  void AddMessage(queue::QueueEntry entry, absl::Time now);
  // No more messages: QUIT once the queued ones are done.
  void Finish(absl::Time now);

  // Bytes from the server (plaintext, i.e. after TLS).
  void Feed(std::string_view bytes, absl::Time now);
  // `count` more bytes of the taken output reached the socket: the data-block timer restarts,
  // and once the end of data is sent the data-termination timer starts.
  void OnBytesSent(size_t count, absl::Time now);
  // The TLS handshake the client asked for completed: EHLO again (RFC 3207 §4.2).
  void TlsEstablished(absl::Time now);
  void TlsFailed(std::string_view error, absl::Time now);
  // EOF or a socket error.
  void ConnectionLost(absl::Time now);
  // The timer armed for deadline() fired.
  void OnTimer(absl::Time now);

  // Bytes to send, in order.
  std::string TakeOutput();
  bool has_output() const { return !output_.empty(); }
  // Results of the messages finished since the last call, in the order they finished.
  std::vector<MessageResult> TakeResults();

  // The server accepted STARTTLS: write the output taken so far, then run the handshake. Input
  // the server sent after its 220 in plaintext was discarded (RFC 3207 §4.2).
  bool tls_requested() const;
  bool tls_active() const { return tls_active_; }
  // When greeting, EHLO/HELO and STARTTLS were done and transactions could start; nullopt
  // until then (and for good if the session never got there).
  std::optional<absl::Time> ready_at() const { return ready_at_; }
  // Ready for another message and none queued: the shell may add one or Finish().
  bool idle() const;
  // The session is over: send the output, then close the connection.
  bool closing() const;
  // When the shell's timer must call OnTimer(); absl::InfiniteFuture() when idle or closing.
  absl::Time deadline() const { return deadline_; }
  const ServerExtensions& extensions() const { return extensions_; }
  ConnectionFailure failure() const { return failure_; }
  // Messages added and not finished yet (queued or in the transaction).
  size_t pending_messages() const;

 private:
  struct Transaction;
  enum class Phase : uint8_t;
  using Expect = SmtpStage;
  enum class AfterTransaction : uint8_t { kNextMessage, kRset };
  enum class Goodbye : uint8_t { kQuit, kDrop };
  struct Pending {
    Expect expect;
    size_t rcpt = 0;
  };

  void ParseInput(absl::Time now);
  void OnReply(const Reply& reply, absl::Time now);
  void OnGreeting(const Reply& reply, absl::Time now);
  void OnEhlo(const Reply& reply, absl::Time now);
  void OnHelo(const Reply& reply, absl::Time now);
  void OnStartTls(const Reply& reply, absl::Time now);
  void OnMail(const Reply& reply, absl::Time now);
  void OnRcpt(size_t index, const Reply& reply, absl::Time now);
  void OnData(const Reply& reply, absl::Time now);
  void OnDataEnd(const Reply& reply, absl::Time now);
  void OnRset(const Reply& reply, absl::Time now);

  void Send(std::string_view command, Expect expect, absl::Time now, size_t rcpt = 0);
  void AfterHello(absl::Time now);
  bool idle_point() const;
  void Emit(std::string_view bytes);
  void ProtocolError(std::string_view what, absl::Time now);
  std::optional<Reply> RefusalOf(const queue::QueueEntry& entry, size_t data_size) const;
  std::string MailCommand(const Transaction& transaction, size_t data_size) const;
  std::string RcptCommand(const queue::Recipient& recipient) const;
  void Decide(size_t index, const Reply& reply);
  void StartNextMessage(absl::Time now);
  void SendRcptOrData(absl::Time now);
  void FinishTransaction(AfterTransaction after, absl::Time now);
  void Fail(ConnectionFailure failure, RecipientOutcome outcome, const Reply& reply,
            ReplySource source, Goodbye goodbye, absl::Time now);
  void FailMessage(queue::QueueEntry entry, ConnectionFailure failure, RecipientOutcome outcome,
                   const Reply& reply, ReplySource source, absl::Time now);
  // The on_reply hook for the reply awaited first, if any.
  void ReportReply(int code);
  void ArmDeadline(absl::Time now);
  absl::Duration TimeoutFor(Expect expect) const;
  static std::string_view ExpectName(Expect expect);

  ClientOptions options_;
  Phase phase_;
  std::deque<Pending> pending_;  // replies expected, in order (several when pipelining)
  std::string input_;
  std::optional<Reply> partial_;  // a multiline reply being read
  std::string output_;
  uint64_t output_total_ = 0;     // bytes ever appended to output_
  uint64_t sent_total_ = 0;       // bytes reported by OnBytesSent
  uint64_t data_end_offset_ = 0;  // output_total_ just after the end of data, while sending it
  ServerExtensions extensions_;
  bool esmtp_ = false;
  bool tls_active_ = false;
  bool finish_requested_ = false;
  bool session_ready_ = false;          // EHLO/HELO and STARTTLS are done: transactions may start
  std::optional<absl::Time> ready_at_;  // when session_ready_ became true
  bool quit_sent_ = false;
  ConnectionFailure failure_ = ConnectionFailure::kNone;
  absl::Time deadline_ = absl::InfiniteFuture();
  std::unique_ptr<Transaction> transaction_;
  std::deque<queue::QueueEntry> queued_;
  std::vector<MessageResult> results_;
};

}  // namespace backstop::delivery
