#pragma once

// The pure parts of backstop-loadgen (bench/smtp_loadgen.cc): the message size distribution,
// the messages themselves, latency percentiles, and the SMTP client session as a state
// machine (server bytes and the time in; bytes to send, a STARTTLS request and per-message
// results out). No I/O, no clock: the shell in smtp_loadgen.cc does both, and the unit tests
// drive these directly.

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace backstop::bench {

// --- Message sizes ------------------------------------------------------------------------------

struct SizeWeight {
  uint64_t bytes = 0;
  uint64_t weight = 0;
};

// "2KiB:90,50KiB:10": sizes as common/units.h reads them, each with a positive integer weight.
// A single size without a weight ("2KiB") is the fixed distribution of --size.
absl::StatusOr<std::vector<SizeWeight>> ParseSizeMix(std::string_view text);

// Picks the size of message `seq` from a mix: a hash of seq, so the same run always sends the
// same sizes and the shares match the weights over many messages. Immutable; any thread.
class SizePicker {
 public:
  explicit SizePicker(std::vector<SizeWeight> mix);
  uint64_t SizeOf(uint64_t seq) const;
  const std::vector<SizeWeight>& mix() const { return mix_; }

 private:
  std::vector<SizeWeight> mix_;
  uint64_t total_weight_ = 0;
};

struct MessageOptions {
  std::string sender = "loadgen@example.org";
  std::vector<std::string> recipients = {"rcpt@example.com"};
};

// The DATA of message `seq`: From, To, Subject, Message-ID and X-Loadgen-Seq headers, then
// lines of filler up to `size` octets (the header section alone when it is larger), then the
// terminating "\r\n.\r\n" (not counted in `size`). No line starts with a dot, so nothing
// needs stuffing.
std::string MakeMessage(uint64_t seq, uint64_t size, const MessageOptions& options);

// --- Latency -------------------------------------------------------------------------------------

struct Percentiles {
  size_t count = 0;
  absl::Duration p50, p90, p99, p999, max;
};

// Nearest-rank percentiles (the smallest sample with at least q of the samples at or below
// it); all zero for no samples. Sorts `samples`.
Percentiles Summarize(std::vector<absl::Duration>& samples);

// --- The SMTP session
// ------------------------------------------------------------------------------

enum class Pipelining : uint8_t { kOff, kOn };
enum class StartTls : uint8_t { kOff, kOn };

struct SessionOptions {
  std::string helo = "loadgen.bench.test";
  std::string sender = "loadgen@example.org";
  std::vector<std::string> recipients = {"rcpt@example.com"};
  // kOn pipelines MAIL, every RCPT and DATA in one write (RFC 2920) when the server offers it.
  Pipelining pipelining = Pipelining::kOn;
  // kOn requires STARTTLS: a server that does not offer it, or refuses it, fails the session.
  StartTls starttls = StartTls::kOff;
};

// How a message ended: the class of the reply that decided it (the end of data's, or the
// refusal of MAIL, of every RCPT, or of DATA), or kError when the connection failed first.
enum class Outcome : uint8_t { k2xx, k4xx, k5xx, kError };

struct MessageResult {
  uint64_t seq = 0;
  uint64_t bytes = 0;  // the message's size (without the terminating dot)
  Outcome outcome = Outcome::kError;
  int code = 0;  // the deciding reply code; 0 for kError
  // When the end of data was handed to the socket and when its reply arrived; both unset when
  // the message was decided earlier (no latency sample).
  std::optional<absl::Time> data_end_sent;
  std::optional<absl::Time> replied;
};

// One SMTP client connection, from the greeting to QUIT, as a state machine without I/O.
// Owned by the shell's connection slot; one thread.
//
// The shell's loop:
//   feed server bytes with Feed(); after each call (and after StartMessage/Quit) write
//   TakeOutput(); if tls_requested(), handshake and call TlsEstablished() (then the output
//   goes through TLS); when ready_for_message(), StartMessage() or Quit(); collect
//   TakeResults(); when closed(), close the socket (ConnectionLost() on EOF or an error).
class ClientSession {
 public:
  explicit ClientSession(SessionOptions options);

  // Plaintext from the server.
  void Feed(std::string_view bytes, absl::Time now);
  // Only when ready_for_message(). `data` is MakeMessage()'s output; `bytes` its size.
  void StartMessage(uint64_t seq, std::string data, uint64_t bytes);
  // Only when ready_for_message(): ends the session politely.
  void Quit();
  void TlsEstablished();
  // EOF, a socket error or a timeout: a message in flight ends as kError.
  void ConnectionLost(std::string_view why);

  // Bytes to write; `now` is when they are handed to the socket (the end of data's time).
  std::string TakeOutput(absl::Time now);
  bool has_output() const { return !output_.empty(); }
  std::vector<MessageResult> TakeResults();

  bool tls_requested() const { return state_ == State::kTlsHandshake; }
  bool ready_for_message() const { return state_ == State::kReady; }
  bool closed() const { return state_ == State::kClosed; }
  // The greeting's time of arrival, once it came (for connect → greeting).
  std::optional<absl::Time> greeted_at() const { return greeted_at_; }
  // Why the session closed other than by QUIT, for the report; empty otherwise.
  const std::string& error() const { return error_; }
  bool pipelining() const { return pipelining_; }

 private:
  enum class State : uint8_t {
    kGreeting,
    kEhlo,
    kStartTls,
    kTlsHandshake,
    kReady,
    kTransaction,  // MAIL … end of data; the replies expected are in expected_
    kRset,
    kQuit,
    kClosed,
  };
  enum class Expect : uint8_t { kMail, kRcpt, kData, kDataEnd };
  struct Reply {
    int code = 0;
    std::vector<std::string> lines;  // text after "ddd-" / "ddd "
  };

  void OnReply(const Reply& reply, absl::Time now);
  void OnTransactionReply(const Reply& reply, absl::Time now);
  void SendEhlo();
  void Fail(std::string why);
  void Decide(int code, absl::Time now);
  void EndTransaction();
  // The refusal that decides the message once every RCPT is answered: MAIL's, or the last
  // RCPT's when no recipient was accepted; 0 when the transaction may go on.
  int Refusal() const;

  const SessionOptions options_;
  State state_ = State::kGreeting;
  std::string input_;
  Reply partial_;  // the lines of a multi-line reply so far
  std::string output_;
  std::vector<MessageResult> results_;
  std::optional<absl::Time> greeted_at_;
  std::string error_;
  bool tls_done_ = false;
  bool server_pipelining_ = false;
  bool server_starttls_ = false;
  bool pipelining_ = false;

  // The transaction in progress.
  std::optional<MessageResult> current_;
  std::string data_;
  std::deque<Expect> expected_;
  size_t rcpts_sent_ = 0;
  size_t rcpts_accepted_ = 0;
  int mail_refusal_ = 0;
  int rcpt_refusal_ = 0;  // the last refused RCPT's code
  bool data_end_in_output_ = false;
};

}  // namespace backstop::bench
