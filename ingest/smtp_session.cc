#include "ingest/smtp_session.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/ascii.h"
#include "ingest/address.h"

// Decisions this file makes where the RFCs or DESIGN leave a choice (tests rely on them):
// - Early talker: bytes before the banner (before Start(), or while kConnect is pending) are
//   dropped; the banner becomes `554 5.5.1` and the session closes.
// - The greeting and the EHLO/HELO replies carry no enhanced status code (RFC 2034 §3), nor
//   does the intermediate 354. Every other reply does.
// - A command line ends only at CRLF; a bare CR or LF inside it makes the whole line (up to
//   CRLF) an error `500 5.5.2`. A NUL is `501 5.5.2`, 8-bit bytes outside a MAIL/RCPT path
//   `500 5.5.2`. A line over 512 octets is discarded up to its CRLF (keeping at most 512 octets
//   in memory) and answered `500 5.5.2` once its CRLF arrives.
// - Message content is checked while it streams and judged at its end (`.CRLF` or BDAT LAST),
//   in this order: bare CR / bare LF / NUL → `554 5.6.0`; a text line over 1000 octets →
//   `500 5.5.2`; over max_message_size → `552 5.3.4` (the excess is read but not stored).
// - A refused DATA (`503`/`554`) does not switch to content mode: what follows is read as
//   commands (RFC 2920 §3.1 makes the client wait for 354). A refused BDAT still reads and
//   drops its octets (RFC 3030 §2), then replies. A BDAT with an unparsable size cannot be
//   skipped: `501 5.5.4`, and what follows is read as commands.
// - Counted as errors (max_errors): syntax, sequence, unknown command, bad bytes, refused
//   HELO/MAIL/RCPT verdicts, content rejections. Not counted: `452 4.5.3` too many recipients
//   (RFC 5321 §4.5.3.1.10 expects clients to continue), `552` size, EXPN, end-of-data verdicts
//   (a queue outage is not the client's fault).
// - Shutdown() waits for a DATA or BDAT transaction in progress to end.

namespace backstop::ingest {
namespace {

constexpr size_t kMaxCommandLine = 512;  // octets including CRLF (RFC 5321 §4.5.3.1.4)
constexpr size_t kMaxTextLine = 1000;    // octets including CRLF (RFC 5321 §4.5.3.1.6)
constexpr size_t kMaxEnvidLength = 100;  // RFC 3461 §4.4
constexpr size_t kMaxOrcptLength = 500;  // RFC 3461 §4.2
constexpr size_t kMaxSizeDigits = 19;    // fits in uint64_t

char AsciiUpper(char c) {
  return (c >= 'a' && c <= 'z') ? static_cast<char>(c - 'a' + 'A') : c;
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return AsciiUpper(x) == AsciiUpper(y);
         });
}

bool StartsWithIgnoreCase(std::string_view text, std::string_view prefix) {
  return text.size() >= prefix.size() && EqualsIgnoreCase(text.substr(0, prefix.size()), prefix);
}

std::string_view TrimSpaces(std::string_view s) {
  while (!s.empty() && s.front() == ' ') {
    s.remove_prefix(1);
  }
  while (!s.empty() && s.back() == ' ') {
    s.remove_suffix(1);
  }
  return s;
}

bool HasByte(std::string_view s, char c) {
  return std::memchr(s.data(), c, s.size()) != nullptr;
}

bool Has8Bit(std::string_view s) {
  return std::any_of(s.begin(), s.end(),
                     [](char c) { return static_cast<unsigned char>(c) >= 0x80; });
}

std::optional<uint64_t> ParseDecimal(std::string_view s) {
  if (s.empty() || s.size() > kMaxSizeDigits) {
    return std::nullopt;
  }
  uint64_t value = 0;
  for (const char c : s) {
    if (c < '0' || c > '9') {
      return std::nullopt;
    }
    value = value * 10 + static_cast<uint64_t>(c - '0');
  }
  return value;
}

// RFC 3461 §4.1: NOTIFY=NEVER or a comma list of SUCCESS, FAILURE, DELAY (each once).
bool ParseNotify(std::string_view value, queue::Recipient& recipient) {
  if (EqualsIgnoreCase(value, "NEVER")) {
    recipient.add_notify(queue::NOTIFY_NEVER);
    return true;
  }
  bool seen[3] = {false, false, false};
  constexpr std::string_view kNames[3] = {"SUCCESS", "FAILURE", "DELAY"};
  constexpr queue::Notify kValues[3] = {queue::NOTIFY_SUCCESS, queue::NOTIFY_FAILURE,
                                        queue::NOTIFY_DELAY};
  while (true) {
    const size_t comma = value.find(',');
    const std::string_view item = value.substr(0, comma);
    const auto* it = std::find_if(std::begin(kNames), std::end(kNames), [&](std::string_view name) {
      return EqualsIgnoreCase(item, name);
    });
    if (it == std::end(kNames) || seen[it - kNames]) {
      return false;
    }
    seen[it - kNames] = true;
    recipient.add_notify(kValues[it - kNames]);
    if (comma == std::string_view::npos) {
      return true;
    }
    value.remove_prefix(comma + 1);
  }
}

// RFC 3461 §4.2: ORCPT=addr-type ";" xtext, addr-type an atom.
bool IsValidOrcpt(std::string_view value) {
  const size_t semicolon = value.find(';');
  if (semicolon == 0 || semicolon == std::string_view::npos || value.size() > kMaxOrcptLength) {
    return false;
  }
  for (const char c : value.substr(0, semicolon)) {
    const bool atext = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                       std::strchr("!#$%&'*+-/=?^_`{|}~", c) != nullptr;
    if (!atext) {
      return false;
    }
  }
  return DecodeXtext(value.substr(semicolon + 1)).has_value();
}

// The end of the segment starting at `pos`: just past the next LF, or the end of `in`.
size_t SegmentEnd(std::string_view in, size_t pos) {
  const void* lf = std::memchr(in.data() + pos, '\n', in.size() - pos);
  return lf == nullptr ? in.size()
                       : static_cast<size_t>(static_cast<const char*>(lf) - in.data()) + 1;
}

Reply MakeReply(int code, std::string_view enhanced, std::string_view text) {
  return Reply{code, std::string(enhanced), {std::string(text)}};
}

// The argument of MAIL FROM / RCPT TO.
struct PathArgument {
  Path path;
  std::vector<EsmtpParam> params;  // only known keywords, each at most once
};

struct PathCommand {
  std::string_view prefix;  // "FROM:"
  std::string_view syntax;  // "MAIL FROM:<address>"
  PathType type;
  std::string_view address_enhanced;  // 5.1.7 for the sender, 5.1.3 for a recipient
  std::string_view role;              // "sender"
  std::vector<std::string_view> known_params;
};

// Parses `arg` (after the verb) into `out`, or returns the error reply.
std::optional<Reply> ParsePathArgument(std::string_view arg, const PathCommand& command, bool esmtp,
                                       PathArgument& out) {
  if (!StartsWithIgnoreCase(arg, command.prefix)) {
    return MakeReply(501, "5.5.4", "Syntax: " + std::string(command.syntax));
  }
  const PathParseResult parsed =
      ParsePath(TrimSpaces(arg.substr(command.prefix.size())), command.type);
  if (parsed.error != AddressError::kNone) {
    const char* problem =
        parsed.error == AddressError::kTooLong ? " address too long" : " address syntax error";
    return MakeReply(501, command.address_enhanced,
                     "Error: " + std::string(command.role) + problem);
  }
  std::optional<std::vector<EsmtpParam>> params = ParseEsmtpParams(parsed.rest);
  if (!params) {
    return MakeReply(501, "5.5.4", "Error: bad parameter syntax");
  }
  if (!params->empty() && !esmtp) {
    return MakeReply(555, "5.5.4", "Error: parameters need EHLO");
  }
  uint32_t seen = 0;
  for (const EsmtpParam& param : *params) {
    const auto known =
        std::find(command.known_params.begin(), command.known_params.end(), param.keyword);
    if (known == command.known_params.end()) {
      return MakeReply(555, "5.5.4", "Error: unsupported parameter " + param.keyword);
    }
    const uint32_t bit = 1u << (known - command.known_params.begin());
    if ((seen & bit) != 0) {
      return MakeReply(501, "5.5.4", "Error: duplicate parameter " + param.keyword);
    }
    seen |= bit;
  }
  out.path = parsed.path;
  out.params = std::move(*params);
  return std::nullopt;
}
}  // namespace

std::string Reply::Serialize() const {
  std::string out;
  const size_t count = std::max<size_t>(lines.size(), 1);
  for (size_t i = 0; i < count; ++i) {
    std::string text = enhanced;
    if (i < lines.size() && !lines[i].empty()) {
      if (!text.empty()) {
        text.push_back(' ');
      }
      text += lines[i];
    }
    std::replace_if(
        text.begin(), text.end(), [](char c) { return c == '\r' || c == '\n'; }, ' ');
    char code_text[8];
    std::snprintf(code_text, sizeof(code_text), "%03d", std::clamp(code, 0, 999));
    out += code_text;
    const bool last = i + 1 == count;
    if (!last) {
      out.push_back('-');
    } else if (!text.empty()) {
      out.push_back(' ');
    }
    out += text;
    out += "\r\n";
  }
  return out;
}

SmtpSession::SmtpSession(SessionOptions options, ClientInfo client, absl::Time now)
    : options_(std::move(options)),
      client_(std::move(client)),
      now_(now),
      last_reply_(now),
      last_data_(now) {}

const MailRequest& SmtpSession::pending_mail() const {
  return pending_mail_;
}
const RcptRequest& SmtpSession::pending_rcpt() const {
  return pending_rcpt_;
}
const std::string& SmtpSession::pending_etrn() const {
  return pending_etrn_;
}
const Transaction& SmtpSession::transaction() const {
  return transaction_;
}
const std::string& SmtpSession::helo() const {
  return helo_;
}

std::string SmtpSession::TakeOutput() {
  std::string out;
  out.swap(output_);
  return out;
}

void SmtpSession::Feed(std::string_view bytes, absl::Time now) {
  now_ = now;
  if (closing_ || bytes.empty()) {
    return;
  }
  if (phase_ == Phase::kBeforeStart || pending_ == RequestKind::kConnect) {
    early_talker_ = true;
    return;
  }
  if (pending_ == RequestKind::kStartTls) {
    return;  // plaintext between STARTTLS and the handshake is never executed
  }
  if (pending_ != RequestKind::kNone) {
    in_.append(bytes);
    return;
  }
  if (in_pos_ == in_.size()) {
    in_.clear();
    in_pos_ = 0;
  }
  if (in_.empty()) {
    // Common case: nothing buffered, so scan the caller's bytes without copying them first.
    const size_t used = Consume(bytes);
    in_.assign(bytes.substr(used));
  } else {
    in_.append(bytes);
    Resume();
  }
  if (closing_) {
    in_.clear();
    in_pos_ = 0;
  }
  UpdateDeadline();
}

void SmtpSession::Start(absl::Time now) {
  now_ = now;
  if (phase_ != Phase::kBeforeStart) {
    return;
  }
  phase_ = Phase::kCommand;
  if (early_talker_) {
    Emit(554, "5.5.1", options_.hostname + " Error: SMTP protocol synchronization");
    closing_ = true;
  } else {
    pending_ = RequestKind::kConnect;
  }
  UpdateDeadline();
}

void SmtpSession::Resolve(const Verdict& verdict, absl::Time now) {
  now_ = now;
  if (closing_) {
    return;
  }
  const RequestKind kind = pending_;
  if (kind == RequestKind::kNone || kind == RequestKind::kStartTls) {
    std::fprintf(stderr, "SmtpSession::Resolve without a pending request (%d)\n",
                 static_cast<int>(kind));
    std::abort();
  }
  pending_ = RequestKind::kNone;
  const bool accept = verdict.kind == Verdict::Kind::kAccept;
  switch (kind) {
    case RequestKind::kConnect:
      if (!accept) {
        Emit(verdict.reply.value_or(MakeReply(554, "5.7.1", "Access denied")));
        closing_ = true;
      } else if (early_talker_) {
        Emit(554, "5.5.1", options_.hostname + " Error: SMTP protocol synchronization");
        closing_ = true;
      } else {
        Emit(verdict.reply.value_or(MakeReply(220, "", options_.hostname + " ESMTP Backstop")));
      }
      break;
    case RequestKind::kHelo:
      if (accept) {
        have_helo_ = true;
        helo_ = std::move(pending_helo_);
        esmtp_ = pending_esmtp_;
      }
      Answer(verdict, EhloReply(esmtp_), MakeReply(550, "5.7.1", "Error: HELO rejected"),
             ErrorCount::kCounted);
      break;
    case RequestKind::kMail:
      if (accept) {
        in_transaction_ = true;
        transaction_.mail = pending_mail_;
      }
      Answer(verdict, MakeReply(250, "2.1.0", "Sender ok"),
             MakeReply(550, "5.7.1", "Error: sender rejected"), ErrorCount::kCounted);
      break;
    case RequestKind::kRcpt:
      if (accept) {
        transaction_.recipients.push_back(pending_rcpt_);
      }
      // Rejected recipients are not protocol errors: the harvest defence of the filter chain
      // counts them (slower replies after 10, 421 after 20; DESIGN §3.3).
      Answer(verdict, MakeReply(250, "2.1.5", "Recipient ok"),
             MakeReply(550, "5.7.1", "Error: recipient rejected"), ErrorCount::kNotCounted);
      break;
    case RequestKind::kEndOfData:
      if (accept) {
        ++messages_accepted_;
      }
      // A failed commit is the queue's trouble, not the client's.
      Answer(verdict, MakeReply(250, "2.0.0", "Ok: queued"),
             MakeReply(554, "5.7.1", "Error: message rejected"), ErrorCount::kNotCounted);
      ResetTransaction();
      break;
    case RequestKind::kEtrn:
      // RFC 1985 §5: 250 queuing started; 458 unable to queue; 459 node not allowed.
      Answer(verdict, MakeReply(250, "2.0.0", "Queuing for node " + pending_etrn_ + " started"),
             MakeReply(458, "4.7.0", "Unable to queue messages for node " + pending_etrn_),
             ErrorCount::kNotCounted);
      break;
    case RequestKind::kNone:
    case RequestKind::kStartTls:
      break;
  }
  if (closing_) {
    in_.clear();
    in_pos_ = 0;
  } else {
    Resume();
  }
  UpdateDeadline();
}

void SmtpSession::Answer(const Verdict& verdict, const Reply& accepted, const Reply& rejected,
                         ErrorCount count) {
  if (verdict.kind == Verdict::Kind::kAccept) {
    Emit(verdict.reply.value_or(accepted));
  } else if (count == ErrorCount::kCounted) {
    Error(verdict.reply.value_or(rejected));
  } else {
    Emit(verdict.reply.value_or(rejected));
  }
}

void SmtpSession::TlsEstablished(TlsInfo info, absl::Time now) {
  now_ = now;
  if (closing_) {
    return;
  }
  if (pending_ != RequestKind::kStartTls) {
    std::fprintf(stderr, "SmtpSession::TlsEstablished without STARTTLS\n");
    std::abort();
  }
  pending_ = RequestKind::kNone;
  in_.clear();
  in_pos_ = 0;
  line_scanned_ = 0;
  discarding_line_ = false;
  have_helo_ = false;
  helo_.clear();
  esmtp_ = false;
  ResetTransaction();
  tls_ = std::move(info);
  last_reply_ = now;  // the client's EHLO is due from the end of the handshake
  Resume();
  UpdateDeadline();
}

void SmtpSession::OnTimer(absl::Time now) {
  now_ = now;
  if (closing_ || pending_ != RequestKind::kNone || phase_ == Phase::kBeforeStart ||
      now < deadline_) {
    return;
  }
  Emit(421, "4.4.2", options_.hostname + " Error: timeout exceeded");
  in_.clear();
  in_pos_ = 0;
  UpdateDeadline();
}

void SmtpSession::Shutdown(absl::Time now) {
  now_ = now;
  shutdown_ = true;
  if (!closing_ && pending_ == RequestKind::kNone && phase_ == Phase::kCommand) {
    Resume();
  }
  UpdateDeadline();
}

void SmtpSession::UpdateDeadline() {
  if (closing_ || pending_ != RequestKind::kNone || phase_ == Phase::kBeforeStart) {
    deadline_ = absl::InfiniteFuture();
  } else if (phase_ == Phase::kCommand) {
    deadline_ = last_reply_ + options_.command_timeout;
  } else {
    deadline_ = last_data_ + options_.data_timeout;
  }
}

void SmtpSession::Resume() {
  const size_t used = Consume(std::string_view(in_).substr(in_pos_));
  in_pos_ += used;
  if (in_pos_ == in_.size()) {
    in_.clear();
    in_pos_ = 0;
  } else if (in_pos_ * 2 >= in_.size()) {
    // Amortised: erase only once the consumed prefix outweighs what remains.
    in_.erase(0, in_pos_);
    in_pos_ = 0;
  }
}

size_t SmtpSession::Consume(std::string_view in) {
  size_t pos = 0;
  while (!closing_ && pending_ == RequestKind::kNone) {
    const std::string_view rest = in.substr(pos);
    if (phase_ == Phase::kCommand) {
      if (shutdown_ && body_mode_ != BodyMode::kBdat) {
        Emit(421, "4.3.2", "Service shutting down");
        return in.size();
      }
      if (discarding_line_) {
        pos += DiscardLongLine(rest);
        if (discarding_line_) {
          return pos;
        }
        Error(500, "5.5.2", "Error: line too long");
        continue;
      }
      const size_t length = FindCommandEnd(rest);
      if (length == 0) {
        if (rest.size() < kMaxCommandLine) {
          return pos;
        }
        discarding_line_ = true;
        discard_prev_cr_ = rest[kMaxCommandLine - 1] == '\r';
        line_scanned_ = 0;
        pos += kMaxCommandLine;
        continue;
      }
      pos += length;
      line_scanned_ = 0;
      HandleLine(rest.substr(0, length - 2));
      if (discard_input_) {
        discard_input_ = false;
        return in.size();
      }
    } else if (phase_ == Phase::kData) {
      const size_t used = ScanData(rest);
      if (used > 0) {
        last_data_ = now_;
      }
      pos += used;
      if (!data_ended_) {
        return pos;
      }
      FinishMessage();
    } else if (phase_ == Phase::kBdat) {
      const size_t take = static_cast<size_t>(std::min<uint64_t>(bdat_remaining_, rest.size()));
      if (take > 0) {
        if (!bdat_refusal_) {
          ScanChunk(rest.substr(0, take));
        }
        last_data_ = now_;
        bdat_remaining_ -= take;
        pos += take;
      }
      if (bdat_remaining_ > 0) {
        return pos;
      }
      FinishChunk();
    } else {
      return pos;
    }
  }
  return pos;
}

size_t SmtpSession::FindCommandEnd(std::string_view in) {
  const size_t limit = std::min(in.size(), kMaxCommandLine);
  size_t from = line_scanned_;
  while (from < limit) {
    const void* lf = std::memchr(in.data() + from, '\n', limit - from);
    if (lf == nullptr) {
      break;
    }
    const size_t at = static_cast<size_t>(static_cast<const char*>(lf) - in.data());
    if (at > 0 && in[at - 1] == '\r') {
      return at + 1;
    }
    from = at + 1;
  }
  line_scanned_ = limit;
  return 0;
}

size_t SmtpSession::DiscardLongLine(std::string_view in) {
  if (in.empty()) {
    return 0;
  }
  if (discard_prev_cr_ && in[0] == '\n') {
    discarding_line_ = false;
    return 1;
  }
  size_t from = 0;
  while (const void* lf = std::memchr(in.data() + from, '\n', in.size() - from)) {
    const size_t at = static_cast<size_t>(static_cast<const char*>(lf) - in.data());
    if (at > 0 && in[at - 1] == '\r') {
      discarding_line_ = false;
      return at + 1;
    }
    from = at + 1;
  }
  discard_prev_cr_ = in.back() == '\r';
  return in.size();
}

void SmtpSession::HandleLine(std::string_view line) {
  if (HasByte(line, '\r') || HasByte(line, '\n')) {
    Error(500, "5.5.2", "Error: bare <CR> or <LF> in command");
    return;
  }
  if (HasByte(line, '\0')) {
    Error(501, "5.5.2", "Error: NUL in command");
    return;
  }
  const size_t space = line.find(' ');
  const std::string_view verb = line.substr(0, space);
  const std::string_view arg =
      space == std::string_view::npos ? std::string_view() : TrimSpaces(line.substr(space + 1));
  auto is = [&](std::string_view name) { return EqualsIgnoreCase(verb, name); };
  if (is("MAIL")) {
    HandleMail(arg);
    return;
  }
  if (is("RCPT")) {
    HandleRcpt(arg);
    return;
  }
  if (is("EHLO") || is("HELO") || is("DATA") || is("BDAT") || is("RSET") || is("NOOP") ||
      is("QUIT") || is("VRFY") || is("EXPN") || is("HELP") || is("STARTTLS") || is("ETRN")) {
    if (Has8Bit(line)) {
      Error(500, "5.5.2", "Error: 8-bit characters in command");
      return;
    }
  } else {
    Error(500, "5.5.1", "Error: command not recognized");
    return;
  }
  if (is("EHLO") || is("HELO")) {
    HandleHelo(arg, is("EHLO"));
  } else if (is("DATA")) {
    HandleData(arg);
  } else if (is("BDAT")) {
    HandleBdat(arg);
  } else if (is("STARTTLS")) {
    HandleStartTls(arg);
  } else if (is("ETRN")) {
    HandleEtrn(arg);
  } else if (is("RSET")) {
    if (!arg.empty()) {
      Error(501, "5.5.4", "Syntax: RSET");
      return;
    }
    ResetTransaction();
    Emit(250, "2.0.0", "Ok");
  } else if (is("NOOP")) {
    Emit(250, "2.0.0", "Ok");
  } else if (is("QUIT")) {
    Emit(221, "2.0.0", "Bye");
    closing_ = true;
  } else if (is("VRFY")) {
    if (arg.empty()) {
      Error(501, "5.5.4", "Syntax: VRFY address");
      return;
    }
    Emit(252, "2.5.2", "Cannot VRFY user, but will accept message and attempt delivery");
  } else if (is("EXPN")) {
    Emit(502, "5.5.1", "Error: EXPN not supported");
  } else {
    Emit(Reply{214,
               "2.0.0",
               {"Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS ETRN",
                "See RFC 5321"}});
  }
}

Reply SmtpSession::EhloReply(bool esmtp) const {
  Reply reply{250, "", {options_.hostname}};
  if (!esmtp) {
    return reply;
  }
  reply.lines.push_back("PIPELINING");
  reply.lines.push_back("SIZE " + std::to_string(options_.max_message_size));
  for (const char* keyword :
       {"8BITMIME", "SMTPUTF8", "CHUNKING", "DSN", "ENHANCEDSTATUSCODES", "ETRN"}) {
    reply.lines.emplace_back(keyword);
  }
  if (options_.starttls_available && !tls_) {
    reply.lines.emplace_back("STARTTLS");
  }
  return reply;
}

void SmtpSession::HandleHelo(std::string_view arg, bool esmtp) {
  const bool printable =
      std::all_of(arg.begin(), arg.end(), [](char c) { return c > 32 && c < 127; });
  if (arg.empty() || !printable) {
    Error(501, "5.5.4", esmtp ? "Syntax: EHLO hostname" : "Syntax: HELO hostname");
    return;
  }
  // RFC 5321 §4.1.4: EHLO/HELO in a session implies RSET.
  ResetTransaction();
  have_helo_ = false;
  pending_helo_ = std::string(arg);
  pending_esmtp_ = esmtp;
  pending_ = RequestKind::kHelo;
}

void SmtpSession::HandleEtrn(std::string_view arg) {
  if (!have_helo_) {
    Error(503, "5.5.1", "Error: send HELO/EHLO first");
    return;
  }
  if (in_transaction_) {
    Error(503, "5.5.1", "Error: ETRN within a mail transaction");
    return;
  }
  // "@domain" asks for the domain and its subdomains: ours are whole domains, the same thing.
  std::string_view node = arg;
  if (!node.empty() && node.front() == '@') {
    node.remove_prefix(1);
  }
  const bool hostname_chars = std::all_of(node.begin(), node.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.';
  });
  if (!node.empty() && node.back() == '.') {
    node.remove_suffix(1);
  }
  if (node.empty() || !hostname_chars) {
    // Includes "#queue" names (RFC 1985 §5): we have no named queues.
    Error(501, "5.5.4", "Syntax: ETRN domain");
    return;
  }
  pending_etrn_ = absl::AsciiStrToLower(std::string(node));
  pending_ = RequestKind::kEtrn;
}

void SmtpSession::HandleMail(std::string_view arg) {
  if (!have_helo_) {
    Error(503, "5.5.1", "Error: send HELO/EHLO first");
    return;
  }
  if (in_transaction_) {
    Error(503, "5.5.1", "Error: nested MAIL command");
    return;
  }
  PathArgument parsed;
  const PathCommand command{"FROM:",
                            "MAIL FROM:<address>",
                            PathType::kReversePath,
                            "5.1.7",
                            "sender",
                            {"SIZE", "BODY", "SMTPUTF8", "RET", "ENVID"}};
  if (std::optional<Reply> error = ParsePathArgument(arg, command, esmtp_, parsed)) {
    Error(*error);
    return;
  }
  MailRequest mail;
  mail.reverse_path = parsed.path.address;
  for (const EsmtpParam& param : parsed.params) {
    const std::string_view value = param.value ? std::string_view(*param.value) : "";
    bool valid = param.value.has_value() != (param.keyword == "SMTPUTF8");
    if (valid && param.keyword == "SIZE") {
      const std::optional<uint64_t> size = ParseDecimal(value);
      valid = size.has_value();
      mail.declared_size = size.value_or(0);
    } else if (valid && param.keyword == "BODY") {
      valid = EqualsIgnoreCase(value, "7BIT") || EqualsIgnoreCase(value, "8BITMIME");
      mail.body = EqualsIgnoreCase(value, "7BIT") ? queue::BODY_7BIT : queue::BODY_8BITMIME;
    } else if (valid && param.keyword == "SMTPUTF8") {
      mail.smtputf8 = true;
    } else if (valid && param.keyword == "RET") {
      valid = EqualsIgnoreCase(value, "FULL") || EqualsIgnoreCase(value, "HDRS");
      mail.ret = EqualsIgnoreCase(value, "FULL") ? queue::RET_FULL : queue::RET_HDRS;
    } else if (valid && param.keyword == "ENVID") {
      std::optional<std::string> envid = DecodeXtext(value);
      valid = envid.has_value() && value.size() <= kMaxEnvidLength;
      mail.envid = std::move(envid).value_or("");
    }
    if (!valid) {
      Error(501, "5.5.4", "Error: bad value for parameter " + param.keyword);
      return;
    }
  }
  if (mail.declared_size > options_.max_message_size) {
    Emit(552, "5.3.4", "Error: message size exceeds fixed maximum message size");
    return;
  }
  if (parsed.path.non_ascii && !mail.smtputf8) {
    Error(553, "5.6.7", "Error: non-ASCII address needs SMTPUTF8");
    return;
  }
  pending_mail_ = std::move(mail);
  pending_ = RequestKind::kMail;
}

void SmtpSession::HandleRcpt(std::string_view arg) {
  if (!in_transaction_) {
    Error(503, "5.5.1", "Error: need MAIL command");
    return;
  }
  rcpt_seen_ = true;
  PathArgument parsed;
  const PathCommand command{"TO:",   "RCPT TO:<address>", PathType::kForwardPath,
                            "5.1.3", "recipient",         {"NOTIFY", "ORCPT"}};
  if (std::optional<Reply> error = ParsePathArgument(arg, command, esmtp_, parsed)) {
    Error(*error);
    return;
  }
  RcptRequest rcpt;
  for (const EsmtpParam& param : parsed.params) {
    const bool notify = param.keyword == "NOTIFY";
    const bool valid =
        param.value.has_value() &&
        (notify ? ParseNotify(*param.value, rcpt.recipient) : IsValidOrcpt(*param.value));
    if (!valid) {
      Error(501, "5.5.4", "Error: bad value for parameter " + param.keyword);
      return;
    }
    if (!notify) {
      rcpt.recipient.set_orcpt(*param.value);
    }
  }
  if (parsed.path.non_ascii && !transaction_.mail.smtputf8) {
    Error(553, "5.6.7", "Error: non-ASCII address needs SMTPUTF8");
    return;
  }
  if (transaction_.recipients.size() >= options_.max_recipients) {
    Emit(452, "4.5.3", "Error: too many recipients");
    return;
  }
  rcpt.recipient.set_address(parsed.path.address);
  rcpt.local_part = parsed.path.local_part;
  rcpt.domain = parsed.path.domain;
  pending_rcpt_ = std::move(rcpt);
  pending_ = RequestKind::kRcpt;
}

std::optional<Reply> SmtpSession::ContentRefusal() const {
  if (!in_transaction_) {
    return MakeReply(503, "5.5.1", "Error: need MAIL command");
  }
  if (transaction_.recipients.empty()) {
    return rcpt_seen_ ? MakeReply(554, "5.5.1", "Error: no valid recipients")
                      : MakeReply(503, "5.5.1", "Error: need RCPT command");
  }
  return std::nullopt;
}

void SmtpSession::HandleData(std::string_view arg) {
  if (!arg.empty()) {
    Error(501, "5.5.4", "Syntax: DATA");
    return;
  }
  if (std::optional<Reply> refusal = ContentRefusal()) {
    Error(*refusal);
    return;
  }
  if (body_mode_ == BodyMode::kBdat) {
    Error(503, "5.5.1", "Error: DATA after BDAT");
    return;
  }
  body_mode_ = BodyMode::kData;
  BeginContent();
  Emit(354, "", "End data with <CR><LF>.<CR><LF>");
  phase_ = Phase::kData;
}

void SmtpSession::HandleBdat(std::string_view arg) {
  const size_t space = arg.find(' ');
  const std::optional<uint64_t> size = ParseDecimal(arg.substr(0, space));
  const std::string_view flag =
      space == std::string_view::npos ? std::string_view() : arg.substr(space + 1);
  if (!size || !(flag.empty() || EqualsIgnoreCase(flag, "LAST"))) {
    Error(501, "5.5.4", "Syntax: BDAT count [LAST]");
    return;
  }
  bdat_refusal_ = ContentRefusal();
  if (!bdat_refusal_ && body_mode_ == BodyMode::kNone) {
    body_mode_ = BodyMode::kBdat;
    BeginContent();
  }
  bdat_size_ = *size;
  bdat_remaining_ = *size;
  bdat_last_ = !flag.empty();
  last_data_ = now_;
  phase_ = Phase::kBdat;
}

void SmtpSession::HandleStartTls(std::string_view arg) {
  if (!arg.empty()) {
    Error(501, "5.5.4", "Syntax: STARTTLS");
  } else if (tls_) {
    Error(554, "5.5.1", "Error: TLS already active");
  } else if (!options_.starttls_available) {
    Error(502, "5.5.1", "Error: command not implemented");
  } else if (in_transaction_) {
    Error(503, "5.5.1", "Error: MAIL transaction in progress");
  } else {
    Emit(220, "2.0.0", "Ready to start TLS");
    pending_ = RequestKind::kStartTls;
    discard_input_ = true;  // RFC 3207 §4.2 / DESIGN §3.3: pipelined plaintext is dropped
  }
}

void SmtpSession::BeginContent() {
  transaction_.data.clear();
  // One allocation for the common case of an honest SIZE declaration (RFC 1870), instead of
  // repeated doubling and copying; untouched reserved pages cost no memory.
  transaction_.data.reserve(static_cast<size_t>(
      std::min<uint64_t>(transaction_.mail.declared_size, options_.max_message_size)));
  transaction_.data_start = now_;
  last_data_ = now_;
  at_line_start_ = true;
  prev_cr_ = false;
  data_ended_ = false;
  line_length_ = 0;
  content_size_ = 0;
  bad_bytes_ = false;
  line_too_long_ = false;
  too_big_ = false;
}

size_t SmtpSession::ScanData(std::string_view in) {
  size_t pos = 0;
  size_t span = 0;  // start of the content not yet stored
  while (pos < in.size()) {
    if (at_line_start_ && in[pos] == '.') {
      const size_t left = in.size() - pos;
      if (left < 2 || (in[pos + 1] == '\r' && left < 3)) {
        break;  // cannot tell the terminator from a stuffed dot yet
      }
      StoreContent(in.substr(span, pos - span));
      if (in[pos + 1] == '\r' && in[pos + 2] == '\n') {
        data_ended_ = true;
        return pos + 3;
      }
      // RFC 5321 §4.5.2: drop the stuffed dot, but count it in the line length.
      ++pos;
      span = pos;
      line_length_ = 1;
      at_line_start_ = false;
      continue;
    }
    at_line_start_ = false;
    const size_t end = SegmentEnd(in, pos);
    ScanSegment(in.substr(pos, end - pos), in[end - 1] == '\n');
    pos = end;
  }
  StoreContent(in.substr(span, pos - span));
  return pos;
}

void SmtpSession::ScanChunk(std::string_view in) {
  size_t pos = 0;
  while (pos < in.size()) {
    const size_t end = SegmentEnd(in, pos);
    ScanSegment(in.substr(pos, end - pos), in[end - 1] == '\n');
    pos = end;
  }
  StoreContent(in);
}

// `segment` is non-empty and holds at most one LF, at its end when `ends_with_lf`. A CR is
// legal only right before an LF, and an LF only right after a CR (possibly the last byte of
// the previous segment).
void SmtpSession::ScanSegment(std::string_view segment, bool ends_with_lf) {
  const size_t n = segment.size();
  if (prev_cr_ && segment[0] != '\n') {
    bad_bytes_ = true;
  }
  size_t cr_free = n;  // the prefix in which no CR may appear
  if (ends_with_lf) {
    const bool crlf = n >= 2 ? segment[n - 2] == '\r' : prev_cr_;
    if (!crlf) {
      bad_bytes_ = true;
    }
    cr_free = (n >= 2 && segment[n - 2] == '\r') ? n - 2 : n - 1;
    at_line_start_ = crlf;
    prev_cr_ = false;
  } else {
    prev_cr_ = segment[n - 1] == '\r';
    cr_free = prev_cr_ ? n - 1 : n;
  }
  if (!bad_bytes_ && (std::memchr(segment.data(), '\r', cr_free) != nullptr ||
                      std::memchr(segment.data(), '\0', n) != nullptr)) {
    bad_bytes_ = true;
  }
  line_length_ += n;
  if (line_length_ > kMaxTextLine) {
    line_too_long_ = true;
  }
  if (ends_with_lf) {
    line_length_ = 0;
  }
}

void SmtpSession::StoreContent(std::string_view span) {
  content_size_ += span.size();
  if (too_big_) {
    return;
  }
  if (content_size_ > options_.max_message_size) {
    too_big_ = true;
    std::string().swap(transaction_.data);  // release the memory now
    return;
  }
  transaction_.data.append(span);
}

void SmtpSession::FinishChunk() {
  phase_ = Phase::kCommand;
  if (bdat_refusal_) {
    const Reply refusal = std::move(*bdat_refusal_);
    bdat_refusal_.reset();
    if (bdat_last_) {
      ResetTransaction();  // the client is done with this message either way
    }
    Error(refusal);
    return;
  }
  if (!bdat_last_) {
    Emit(250, "2.0.0", std::to_string(bdat_size_) + " octets received");
    return;
  }
  FinishMessage();
}

void SmtpSession::FinishMessage() {
  phase_ = Phase::kCommand;
  if (prev_cr_) {
    bad_bytes_ = true;  // a BDAT message ending in CR
  }
  if (bad_bytes_) {
    ResetTransaction();
    Error(554, "5.6.0", "Error: message contains bare <CR>, bare <LF> or NUL");
  } else if (line_too_long_) {
    ResetTransaction();
    Error(500, "5.5.2", "Error: message line longer than 1000 octets");
  } else if (too_big_) {
    ResetTransaction();
    Emit(552, "5.3.4", "Error: message too big");
  } else {
    transaction_.helo = helo_;
    transaction_.esmtp = esmtp_;
    transaction_.tls = tls_;
    pending_ = RequestKind::kEndOfData;
  }
}

void SmtpSession::ResetTransaction() {
  in_transaction_ = false;
  rcpt_seen_ = false;
  body_mode_ = BodyMode::kNone;
  transaction_ = Transaction{};
  prev_cr_ = false;
}

void SmtpSession::Emit(const Reply& reply) {
  output_ += reply.Serialize();
  last_reply_ = now_;
  if (reply.code == 421) {
    closing_ = true;
  }
}

void SmtpSession::Emit(int code, std::string_view enhanced, std::string_view text) {
  Emit(MakeReply(code, enhanced, text));
}

void SmtpSession::Error(const Reply& reply) {
  Emit(reply);
  ++errors_;
  if (!closing_ && errors_ >= options_.max_errors) {
    Emit(421, "4.7.0", options_.hostname + " Error: too many errors");
  }
}

void SmtpSession::Error(int code, std::string_view enhanced, std::string_view text) {
  Error(MakeReply(code, enhanced, text));
}

}  // namespace backstop::ingest
