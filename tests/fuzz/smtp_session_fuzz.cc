// libFuzzer target for the SMTP session and the address parser: random bytes fed with random
// split points, random verdicts, timer ticks, STARTTLS completions and shutdowns. Checks the
// invariants the connection relies on; any violation aborts.
//
// Input layout: the first bytes drive the decisions (a FuzzedDataProvider-like reader taking
// from the front), the rest is the client's byte stream.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "ingest/address.h"
#include "ingest/smtp_session.h"

namespace {

using backstop::ingest::AddressError;
using backstop::ingest::ParsePath;
using backstop::ingest::PathType;
using backstop::ingest::Reply;
using backstop::ingest::RequestKind;
using backstop::ingest::SessionOptions;
using backstop::ingest::SmtpSession;
using backstop::ingest::TlsInfo;
using backstop::ingest::Verdict;

void Check(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "invariant violated: %s\n", what);
    std::abort();
  }
}

class Choices {
 public:
  Choices(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  uint8_t Next() { return pos_ < size_ ? data_[pos_++] : 0; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// Every reply line is "ddd", "ddd text" or "ddd-text", ends with CRLF and holds no other CR
// or LF.
void CheckOutput(std::string_view out) {
  if (out.empty()) {
    return;
  }
  Check(out.size() >= 5 && out.substr(out.size() - 2) == "\r\n", "output ends with CRLF");
  size_t start = 0;
  while (start < out.size()) {
    const size_t end = out.find("\r\n", start);
    Check(end != std::string_view::npos, "every line ends with CRLF");
    const std::string_view line = out.substr(start, end - start);
    Check(line.size() >= 3, "reply line has a code");
    for (size_t i = 0; i < 3; ++i) {
      Check(line[i] >= '0' && line[i] <= '9', "reply line starts with 3 digits");
    }
    Check(line.size() == 3 || line[3] == ' ' || line[3] == '-', "separator after the code");
    Check(line.find_first_of("\r\n") == std::string_view::npos, "no bare CR/LF in a reply");
    start = end + 2;
  }
}

// What the session hands over at end of data must be clean: CRLF line ends only, no NUL, no
// text line over 1000 octets, within the size limit.
void CheckMessage(const std::string& data, const SessionOptions& options) {
  Check(data.size() <= options.max_message_size, "message within max size");
  size_t line = 0;
  for (size_t i = 0; i < data.size(); ++i) {
    Check(data[i] != '\0', "no NUL in an accepted message");
    if (data[i] == '\r') {
      Check(i + 1 < data.size() && data[i + 1] == '\n', "no bare CR in an accepted message");
    }
    if (data[i] == '\n') {
      Check(i > 0 && data[i - 1] == '\r', "no bare LF in an accepted message");
      line = 0;
    } else {
      ++line;
      Check(line <= 999, "no line over 1000 octets (with its dot) in an accepted message");
    }
  }
}

void FuzzAddress(std::string_view text) {
  for (const PathType type : {PathType::kReversePath, PathType::kForwardPath}) {
    const auto result = ParsePath(text, type);
    if (result.error == AddressError::kNone) {
      Check(text.size() - result.rest.size() <= backstop::ingest::kMaxPathLength, "path length");
      Check(result.path.null == (type == PathType::kReversePath && result.path.address.empty()),
            "only a reverse path may be null");
    }
  }
  backstop::ingest::ParseEsmtpParams(text);
  backstop::ingest::DecodeXtext(text);
  backstop::ingest::IsValidUtf8(text);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const size_t control = size < 64 ? size / 2 : 32;
  Choices choices(data, control);
  const std::string_view stream(reinterpret_cast<const char*>(data) + control, size - control);
  FuzzAddress(stream.substr(0, 600));

  SessionOptions options;
  options.hostname = "mx.fuzz";
  options.max_message_size = 64 + choices.Next() * 16;
  options.max_recipients = 1 + choices.Next() % 4;
  options.max_errors = 1 + choices.Next() % 20;
  options.starttls_available = (choices.Next() & 1) != 0;
  absl::Time now = absl::FromUnixSeconds(1'700'000'000);
  SmtpSession session(options, {"192.0.2.1", 1}, now);

  bool closed_seen = false;
  auto drain = [&] {
    const std::string out = session.TakeOutput();
    Check(!closed_seen || out.empty(), "no output after closing was reported");
    CheckOutput(out);
    if (session.closing()) {
      closed_seen = true;
    }
  };
  auto resolve_pending = [&] {
    // Bounded: each Resolve consumes at least one command or ends a transaction.
    for (int round = 0; round < 100000 && session.pending() != RequestKind::kNone; ++round) {
      Check(session.deadline() == absl::InfiniteFuture(), "no deadline while pending");
      if (session.pending() == RequestKind::kStartTls) {
        if ((choices.Next() & 3) != 0) {
          session.TlsEstablished(TlsInfo{"TLSv1.3", "TLS_AES_128_GCM_SHA256"}, now);
        }
        break;  // otherwise: the handshake is still running
      }
      if (session.pending() == RequestKind::kEndOfData) {
        CheckMessage(session.transaction().data, options);
        Check(!session.transaction().recipients.empty(), "a message has recipients");
      }
      const uint8_t pick = choices.Next();
      if (pick % 4 == 0) {
        session.Resolve(Verdict::Reject(Reply{pick % 8 == 0 ? 421 : 550, "5.7.1", {"no"}}), now);
      } else {
        session.Resolve(Verdict::Accept(), now);
      }
      drain();
    }
  };

  if ((choices.Next() & 7) == 0) {
    session.Feed(stream.substr(0, 1), now);  // early talker
  }
  session.Start(now);
  resolve_pending();
  size_t pos = 0;
  while (pos < stream.size() && !session.closing()) {
    const size_t piece = 1 + choices.Next() * 4;
    session.Feed(stream.substr(pos, piece), now);
    pos += piece;
    drain();
    resolve_pending();
    const uint8_t event = choices.Next();
    if (event == 1) {
      now += absl::Minutes(10);
      session.OnTimer(now);
      drain();
    } else if (event == 2) {
      session.Shutdown(now);
      drain();
      resolve_pending();
    }
  }
  drain();
  return 0;
}
