#pragma once

// The SMTP server session as a pure state machine (DESIGN §3.3, RFC 5321 + PIPELINING,
// SIZE, 8BITMIME, SMTPUTF8, CHUNKING, DSN, ENHANCEDSTATUSCODES, STARTTLS): bytes and decisions
// in, reply bytes and requests out. It does no I/O, owns no timer and reads no clock: the
// connection (ingest/smtp_server.h) feeds it what the socket (or TLS) delivered together with
// the current time, sends what it produced, arms a timer for deadline(), and answers its
// requests (filters, relay policy, the queue commit) by calling Resolve().
//
// Pipelining (RFC 2920): Feed() processes every complete command it has, appending replies to
// the output in order; the connection sends the output when Feed() returns, i.e. when the input
// at hand is exhausted or the session waits for a decision, so replies are flushed per group.
// While a request is pending, input is buffered and not processed.
//
// Smuggling-proof by construction: commands end only at CRLF, DATA ends only at CRLF.CRLF on
// the raw bytes; a bare CR or LF anywhere (commands, DATA, BDAT chunks) and a NUL are errors.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"
#include "proto/queue.pb.h"

namespace backstop::ingest {

struct SessionOptions {
  std::string hostname;  // banner, EHLO reply
  uint64_t max_message_size = uint64_t{50} << 20;
  uint32_t max_recipients = 100;
  // Protocol errors (syntax, bad sequence, unknown command, rejected RCPT, ...) after which
  // the session replies 421 4.7.0 and closes.
  uint32_t max_errors = 10;
  // Deadline for a complete command line after the previous reply, and for each DATA/BDAT
  // chunk (RFC 5321 §4.5.3.2: the server waits at least 5 minutes for a command).
  absl::Duration command_timeout = absl::Minutes(5);
  absl::Duration data_timeout = absl::Minutes(3);
  // STARTTLS is offered when the connection has a TLS context and is not already in TLS.
  bool starttls_available = false;
};

// What the connection knows of the client (after PROXY protocol).
struct ClientInfo {
  std::string ip;  // textual address of the SMTP client
  uint16_t port = 0;
};

// TLS parameters once STARTTLS has completed (for the Received header and logs).
struct TlsInfo {
  std::string protocol;  // "TLSv1.3"
  std::string cipher;    // "TLS_AES_256_GCM_SHA384"
};

// A reply: code, enhanced status code (RFC 3463; empty only for 220/221 banners where none
// applies), text. Multi-line replies have several text lines.
struct Reply {
  int code = 0;
  std::string enhanced;  // "2.1.0"
  std::vector<std::string> lines;
  // Wire form, the enhanced code on every line (RFC 2034), e.g.
  // "250-2.0.0 first\r\n250 2.0.0 last\r\n". CR and LF inside a text line become spaces.
  std::string Serialize() const;
};

// MAIL FROM: reverse-path and parameters (RFC 1870, 6152, 6531, 3461).
struct MailRequest {
  std::string reverse_path;  // without angle brackets; empty = <>
  uint64_t declared_size = 0;
  queue::Body body = queue::BODY_UNSPECIFIED;
  bool smtputf8 = false;
  queue::Ret ret = queue::RET_UNSPECIFIED;
  std::string envid;  // xtext-decoded
};

// RCPT TO: forward-path and parameters (RFC 3461).
struct RcptRequest {
  // address: as written, no brackets, source route dropped; notify; orcpt as given (xtext).
  queue::Recipient recipient;
  // As written; a quoted local part is unquoted and its quoted-pairs decoded. `%` and `!`
  // are kept as ordinary characters (see ingest/address.h).
  std::string local_part;
  // Lower-cased, one trailing dot removed; empty for <postmaster>; an address literal keeps
  // its brackets ("[192.0.2.1]", "[ipv6:2001:db8::1]") so it never equals a relay domain.
  std::string domain;
};

// A complete message at the end of DATA or at BDAT LAST, after every recipient was accepted.
struct Transaction {
  MailRequest mail;
  std::vector<RcptRequest> recipients;  // accepted ones, in order
  std::string helo;                     // the EHLO/HELO argument
  bool esmtp = false;                   // EHLO (true) or HELO
  std::optional<TlsInfo> tls;
  // The message: dot-unstuffed, CRLF line ends, the last line's CRLF included, without the
  // terminating ".CRLF" (for BDAT: the chunks concatenated).
  std::string data;
  absl::Time data_start;
};

// What the session waits for. While one is pending, Feed() only buffers.
enum class RequestKind : uint8_t {
  kNone,
  kConnect,    // before the banner: accept (220) or a rejection (554/421) that closes
  kHelo,       // EHLO/HELO accepted syntactically; the filter chain may refuse it
  kMail,       // MAIL FROM parsed; filter chain decides
  kRcpt,       // RCPT TO parsed; relay policy + filters decide (pending_rcpt())
  kEndOfData,  // transaction() complete; the connection commits it to the queue
  kStartTls,   // 220 sent; the connection runs the TLS handshake then calls TlsEstablished()
  kEtrn,       // ETRN (RFC 1985) for pending_etrn(); the ingest role may flush the domain
};

// The answer to a request. kAccept uses the session's own positive reply unless `reply` is
// given (kEndOfData: the connection gives the 250 with the queue id). kReject sends `reply`;
// a 421 reply closes the session after it is sent.
struct Verdict {
  enum class Kind : uint8_t { kAccept, kReject };
  Kind kind = Kind::kAccept;
  std::optional<Reply> reply;

  static Verdict Accept() { return {}; }
  static Verdict AcceptWith(Reply reply) { return {Kind::kAccept, std::move(reply)}; }
  static Verdict Reject(Reply reply) { return {Kind::kReject, std::move(reply)}; }
};

// One SMTP server session. Owns its input buffer, the transaction being built and the output
// not yet taken. Runs on the connection's loop thread; not thread-safe.
class SmtpSession {
 public:
  SmtpSession(SessionOptions options, ClientInfo client, absl::Time now);

  // Bytes from the client (plaintext, i.e. after TLS). Bytes that arrive before Start()
  // make the client an early talker: the banner becomes 554 5.5.1 and the session closes.
  void Feed(std::string_view bytes, absl::Time now);
  // The connection may greet: emits the kConnect request (its accept sends the 220 banner).
  void Start(absl::Time now);
  // Answers the pending request, then continues with buffered input.
  void Resolve(const Verdict& verdict, absl::Time now);
  // The TLS handshake completed: resets every piece of session state (RFC 3207 §4.2), the
  // client must EHLO again, STARTTLS is no longer offered.
  void TlsEstablished(TlsInfo info, absl::Time now);
  // The timer armed for deadline() fired: if the deadline passed, 421 4.4.2 and close.
  void OnTimer(absl::Time now);
  // The connection is draining (SIGTERM): the next reply point answers 421 4.3.2 and closes.
  void Shutdown(absl::Time now);

  RequestKind pending() const { return pending_; }
  const MailRequest& pending_mail() const;  // valid while pending() == kMail
  const RcptRequest& pending_rcpt() const;  // valid while pending() == kRcpt
  // The MAIL of the transaction in progress: valid while pending() is kRcpt or kEndOfData.
  const MailRequest& mail() const { return transaction_.mail; }
  // Recipients accepted so far in the transaction in progress.
  const std::vector<RcptRequest>& recipients() const { return transaction_.recipients; }
  // Lower-cased, without the "@" option character; valid while pending() == kEtrn.
  const std::string& pending_etrn() const;
  const Transaction& transaction() const;  // valid while pending() == kEndOfData
  // Moves the message bytes out of transaction() (while pending() == kEndOfData), so that the
  // decision does not copy them; the transaction is reset when the request is resolved.
  std::string TakeMessage() { return std::move(transaction_.data); }
  const std::string& helo() const;
  const std::string& pending_helo() const { return pending_helo_; }  // while pending() == kHelo

  // Reply bytes to send, in order; the connection takes them after each call.
  std::string TakeOutput();
  bool has_output() const { return !output_.empty(); }
  // True once the session is over (QUIT, 421, error limit, timeout): send the output, then
  // close the connection. Input after that is ignored.
  bool closing() const { return closing_; }
  // When the connection's timer should fire (absl::InfiniteFuture() while a request is
  // pending: the connection's own request deadlines apply then).
  absl::Time deadline() const { return deadline_; }

  // Counters for logs and metrics.
  uint32_t errors() const { return errors_; }
  uint32_t messages_accepted() const { return messages_accepted_; }

 private:
  enum class Phase : uint8_t {
    kBeforeStart,  // Start() not called yet
    kCommand,      // reading command lines
    kData,         // reading DATA content up to CRLF.CRLF
    kBdat,         // reading the octets of one BDAT chunk
  };
  enum class BodyMode : uint8_t { kNone, kData, kBdat };
  enum class ErrorCount : uint8_t { kCounted, kNotCounted };

  // Processes as much of `in` as possible; returns the bytes consumed.
  size_t Consume(std::string_view in);
  // Consume() over the buffered input.
  void Resume();
  // Command lines.
  size_t FindCommandEnd(std::string_view in);
  size_t DiscardLongLine(std::string_view in);
  void HandleLine(std::string_view line);
  void HandleHelo(std::string_view arg, bool esmtp);
  void HandleMail(std::string_view arg);
  void HandleRcpt(std::string_view arg);
  void HandleData(std::string_view arg);
  void HandleBdat(std::string_view arg);
  void HandleStartTls(std::string_view arg);
  void HandleEtrn(std::string_view arg);
  // Refusal of DATA/BDAT when the transaction cannot take content; nullopt if it can.
  std::optional<Reply> ContentRefusal() const;
  // Message content (DATA and BDAT).
  void BeginContent();
  size_t ScanData(std::string_view in);
  void ScanChunk(std::string_view in);
  void ScanSegment(std::string_view segment, bool ends_with_lf);
  void StoreContent(std::string_view span);
  void FinishChunk();
  void FinishMessage();
  void ResetTransaction();
  // The reply to a resolved request: the verdict's own, else `accepted` or `rejected`.
  void Answer(const Verdict& verdict, const Reply& accepted, const Reply& rejected,
              ErrorCount count);
  // Replies. Error() also counts the error and ends the session at max_errors.
  void Emit(const Reply& reply);
  void Emit(int code, std::string_view enhanced, std::string_view text);
  void Error(const Reply& reply);
  void Error(int code, std::string_view enhanced, std::string_view text);
  Reply EhloReply(bool esmtp) const;
  void UpdateDeadline();

  SessionOptions options_;
  ClientInfo client_;
  RequestKind pending_ = RequestKind::kNone;
  std::string output_;
  bool closing_ = false;
  absl::Time deadline_ = absl::InfiniteFuture();
  uint32_t errors_ = 0;
  uint32_t messages_accepted_ = 0;

  absl::Time now_;         // of the public call being served
  absl::Time last_reply_;  // the command timeout runs from here
  absl::Time last_data_;   // the data timeout runs from here
  Phase phase_ = Phase::kBeforeStart;
  bool early_talker_ = false;
  bool shutdown_ = false;

  // Unconsumed input: in_[in_pos_, end). Bytes fed while a request is pending, a partial
  // command line, or the few bytes of a possible DATA terminator.
  std::string in_;
  size_t in_pos_ = 0;
  size_t line_scanned_ = 0;       // bytes of the partial command line known to hold no CRLF
  bool discarding_line_ = false;  // after 512 octets without CRLF, up to the next CRLF
  bool discard_prev_cr_ = false;
  bool discard_input_ = false;  // STARTTLS accepted: the rest of the input is dropped

  // What the client told us; RFC 3207 §4.2 forgets it after STARTTLS.
  bool have_helo_ = false;
  std::string helo_;
  bool esmtp_ = false;
  std::string pending_helo_;
  bool pending_esmtp_ = false;
  std::optional<TlsInfo> tls_;

  // The transaction.
  bool in_transaction_ = false;  // MAIL accepted
  bool rcpt_seen_ = false;       // some RCPT was given (554 vs 503 at DATA)
  BodyMode body_mode_ = BodyMode::kNone;
  MailRequest pending_mail_;
  RcptRequest pending_rcpt_;
  std::string pending_etrn_;
  Transaction transaction_;

  // Content scanning state, across Feed() calls and BDAT chunks.
  bool at_line_start_ = true;  // after CRLF: a '.' here is a terminator or stuffing
  bool prev_cr_ = false;       // the last byte scanned was a CR (bare unless LF follows)
  bool data_ended_ = false;
  size_t line_length_ = 0;
  uint64_t content_size_ = 0;
  bool bad_bytes_ = false;  // bare CR, bare LF or NUL
  bool line_too_long_ = false;
  bool too_big_ = false;
  uint64_t bdat_size_ = 0;
  uint64_t bdat_remaining_ = 0;
  bool bdat_last_ = false;
  std::optional<Reply> bdat_refusal_;  // the chunk is read and dropped, then this is the reply
};

}  // namespace backstop::ingest
