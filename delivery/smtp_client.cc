#include "delivery/smtp_client.h"

#include <utility>

#include "absl/strings/ascii.h"
#include "delivery/canonicalize.h"
#include "delivery/xtext.h"
#include "fmt/format.h"

namespace backstop::delivery {

// Longest reply line and most lines of one reply we accept: RFC 5321 allows 512 octets a line;
// the slack covers sloppy servers, the bound stops a server from growing our buffers forever.
constexpr size_t kMaxReplyLine = 4096;
constexpr size_t kMaxReplyLines = 256;

enum class SmtpClient::Phase : uint8_t {
  kSession,       // plaintext or TLS SMTP: replies are expected per pending_
  kTlsHandshake,  // STARTTLS accepted; the shell runs the handshake
  kClosed,
};

struct SmtpClient::Transaction {
  queue::QueueEntry entry;
  std::string data;  // the DATA form, until it is sent
  bool pipelined = false;
  std::vector<RecipientResult> results;
  std::vector<bool> decided;
  std::vector<bool> accepted;
  bool mail_accepted = false;
  size_t next_rcpt = 0;
  size_t accepted_count = 0;
  bool discarding = false;  // DATA got 354 with no recipient: an empty message ends it
  absl::Time started;       // when MAIL was produced
};

namespace {

Reply MakeReply(int code, std::string enhanced, std::string text) {
  Reply reply;
  reply.code = code;
  reply.lines.push_back(enhanced + " " + text);  // laid out as a server would send it
  reply.enhanced = std::move(enhanced);
  return reply;
}

RecipientOutcome OutcomeOf(int code) {
  switch (code / 100) {
    case 2:
      return RecipientOutcome::kDelivered;
    case 5:
      return RecipientOutcome::kPermanentFailure;
    default:
      return RecipientOutcome::kTemporaryFailure;
  }
}

bool IsDigit(char c) {
  return c >= '0' && c <= '9';
}

// "d.ddd.ddd" at the start of `text`, its class digit matching the reply code (RFC 3463).
std::string EnhancedCodeOf(int code, std::string_view text) {
  if (text.size() < 5 || text[0] != static_cast<char>('0' + code / 100) || text[1] != '.') {
    return "";
  }
  size_t i = 2;
  for (int part = 0; part < 2; ++part) {
    size_t start = i;
    while (i < text.size() && IsDigit(text[i]) && i - start < 3) {
      ++i;
    }
    if (i == start) {
      return "";
    }
    if (part == 0) {
      if (i >= text.size() || text[i] != '.') {
        return "";
      }
      ++i;
    }
  }
  if (i < text.size() && text[i] != ' ') {
    return "";
  }
  return std::string(text.substr(0, i));
}

ServerExtensions ParseEhlo(const Reply& reply) {
  ServerExtensions extensions;
  for (size_t i = 1; i < reply.lines.size(); ++i) {
    std::string_view line = reply.lines[i];
    size_t space = line.find(' ');
    std::string keyword =
        absl::AsciiStrToUpper(absl::string_view(line.data(), std::min(space, line.size())));
    std::string_view argument =
        space == std::string_view::npos ? std::string_view() : line.substr(space + 1);
    if (keyword == "PIPELINING") {
      extensions.pipelining = true;
    } else if (keyword == "SIZE") {
      extensions.size = true;
      uint64_t limit = 0;
      for (char c : argument) {
        if (!IsDigit(c) || limit > (UINT64_MAX - 9) / 10) {
          limit = 0;  // unreadable: treat as no fixed limit, the server still enforces its own
          break;
        }
        limit = limit * 10 + static_cast<uint64_t>(c - '0');
      }
      extensions.max_size = limit;
    } else if (keyword == "8BITMIME") {
      extensions.eight_bit_mime = true;
    } else if (keyword == "SMTPUTF8") {
      extensions.smtputf8 = true;
    } else if (keyword == "DSN") {
      extensions.dsn = true;
    } else if (keyword == "STARTTLS") {
      extensions.starttls = true;
    } else if (keyword == "CHUNKING") {
      extensions.chunking = true;
    } else if (keyword == "ENHANCEDSTATUSCODES") {
      extensions.enhanced_status_codes = true;
    }
  }
  return extensions;
}

bool HasControlBytes(std::string_view text) {
  for (char c : text) {
    auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte == 0x7f) {
      return true;
    }
  }
  return false;
}

bool NeedsSmtpUtf8(const queue::Envelope& envelope) {
  if (envelope.smtputf8() || HasEightBitBytes(envelope.reverse_path())) {
    return true;
  }
  for (const queue::Recipient& recipient : envelope.recipients()) {
    if (HasEightBitBytes(recipient.address())) {
      return true;
    }
  }
  return false;
}

// ORCPT is stored as the client gave it ("rfc822;" xtext). Pass valid xtext on verbatim;
// anything else (a decoded or non-ASCII address) gets its address part encoded.
std::string OrcptParameter(std::string_view orcpt) {
  if (XtextDecode(orcpt).has_value()) {
    return std::string(orcpt);
  }
  size_t semicolon = orcpt.find(';');
  if (semicolon == std::string_view::npos) {
    return "rfc822;" + XtextEncode(orcpt);
  }
  return std::string(orcpt.substr(0, semicolon + 1)) + XtextEncode(orcpt.substr(semicolon + 1));
}

std::string NotifyParameter(const queue::Recipient& recipient) {
  bool never = false;
  bool success = false;
  bool failure = false;
  bool delay = false;
  for (int notify : recipient.notify()) {
    never |= notify == queue::NOTIFY_NEVER;
    success |= notify == queue::NOTIFY_SUCCESS;
    failure |= notify == queue::NOTIFY_FAILURE;
    delay |= notify == queue::NOTIFY_DELAY;
  }
  if (never) {
    return "NEVER";
  }
  std::string value;
  for (auto [set, name] : {std::pair{success, "SUCCESS"}, {failure, "FAILURE"}, {delay, "DELAY"}}) {
    if (set) {
      value += value.empty() ? "" : ",";
      value += name;
    }
  }
  return value;
}

}  // namespace

std::string Reply::OneLine() const {
  std::string text = std::to_string(code);
  for (const std::string& line : lines) {
    if (!line.empty()) {
      text += ' ';
      text += line;
    }
  }
  return text;
}

std::string_view ConnectionFailureName(ConnectionFailure failure) {
  switch (failure) {
    case ConnectionFailure::kNone:
      return "none";
    case ConnectionFailure::kGreetingRejected:
      return "greeting rejected";
    case ConnectionFailure::kHeloRejected:
      return "HELO rejected";
    case ConnectionFailure::kTlsFailure:
      return "TLS failure";
    case ConnectionFailure::kConnectionLost:
      return "connection lost";
    case ConnectionFailure::kTimeout:
      return "timeout";
    case ConnectionFailure::kProtocolError:
      return "protocol error";
  }
  return "unknown";
}

std::string_view SmtpStageLabel(SmtpStage stage) {
  switch (stage) {
    case SmtpStage::kGreeting:
      return "greeting";
    case SmtpStage::kEhlo:
      return "ehlo";
    case SmtpStage::kHelo:
      return "helo";
    case SmtpStage::kStartTls:
      return "starttls";
    case SmtpStage::kMail:
      return "mail";
    case SmtpStage::kRcpt:
      return "rcpt";
    case SmtpStage::kData:
      return "data";
    case SmtpStage::kDataEnd:
      return "data_end";
    case SmtpStage::kRset:
      return "rset";
    case SmtpStage::kQuit:
      return "quit";
  }
  return "unknown";
}

ReplyClass ReplyClassOf(int code) {
  switch (code / 100) {
    case 2:
      return ReplyClass::k2xx;
    case 3:
      return ReplyClass::k3xx;
    case 4:
      return ReplyClass::k4xx;
    case 5:
      return ReplyClass::k5xx;
    default:
      return ReplyClass::kNone;
  }
}

std::string_view ReplyClassLabel(ReplyClass reply_class) {
  switch (reply_class) {
    case ReplyClass::k2xx:
      return "2xx";
    case ReplyClass::k3xx:
      return "3xx";
    case ReplyClass::k4xx:
      return "4xx";
    case ReplyClass::k5xx:
      return "5xx";
    case ReplyClass::kNone:
      return "none";
  }
  return "none";
}

std::string_view SmtpClient::ExpectName(Expect expect) {
  switch (expect) {
    case Expect::kGreeting:
      return "the greeting";
    case Expect::kEhlo:
      return "the reply to EHLO";
    case Expect::kHelo:
      return "the reply to HELO";
    case Expect::kStartTls:
      return "the reply to STARTTLS";
    case Expect::kMail:
      return "the reply to MAIL";
    case Expect::kRcpt:
      return "the reply to RCPT";
    case Expect::kData:
      return "the reply to DATA";
    case Expect::kDataEnd:
      return "the reply to the end of data";
    case Expect::kRset:
      return "the reply to RSET";
    case Expect::kQuit:
      return "the reply to QUIT";
  }
  return "a reply";
}

SmtpClient::SmtpClient(ClientOptions options, absl::Time now)
    : options_(std::move(options)), phase_(Phase::kSession) {
  pending_.push_back({Expect::kGreeting});
  deadline_ = now + options_.greeting_timeout;
}

SmtpClient::~SmtpClient() = default;

void SmtpClient::AddMessage(queue::QueueEntry entry, absl::Time now) {
  if (phase_ == Phase::kClosed || quit_sent_) {
    FailMessage(
        std::move(entry),
        failure_ == ConnectionFailure::kNone ? ConnectionFailure::kConnectionLost : failure_,
        RecipientOutcome::kTemporaryFailure, MakeReply(451, "4.4.2", "the connection was closing"),
        ReplySource::kClient, now);
    return;
  }
  queued_.push_back(std::move(entry));
  if (idle_point()) {
    StartNextMessage(now);
  }
}

void SmtpClient::Finish(absl::Time now) {
  finish_requested_ = true;
  if (phase_ == Phase::kSession && idle_point()) {
    StartNextMessage(now);  // nothing queued: sends QUIT
  }
}

bool SmtpClient::idle_point() const {
  return phase_ == Phase::kSession && session_ready_ && !transaction_ && pending_.empty() &&
         !quit_sent_;
}

bool SmtpClient::idle() const {
  return idle_point() && queued_.empty();
}

bool SmtpClient::closing() const {
  return phase_ == Phase::kClosed;
}

bool SmtpClient::tls_requested() const {
  return phase_ == Phase::kTlsHandshake;
}

size_t SmtpClient::pending_messages() const {
  return queued_.size() + (transaction_ ? 1 : 0);
}

std::string SmtpClient::TakeOutput() {
  return std::exchange(output_, std::string());
}

std::vector<MessageResult> SmtpClient::TakeResults() {
  return std::exchange(results_, std::vector<MessageResult>());
}

void SmtpClient::Emit(std::string_view bytes) {
  output_.append(bytes);
  output_total_ += bytes.size();
}

void SmtpClient::Send(std::string_view command, Expect expect, absl::Time now, size_t rcpt) {
  Emit(command);
  Emit("\r\n");
  pending_.push_back({expect, rcpt});
  if (pending_.size() == 1) {
    ArmDeadline(now);
  }
}

absl::Duration SmtpClient::TimeoutFor(Expect expect) const {
  switch (expect) {
    case Expect::kGreeting:
      return options_.greeting_timeout;
    case Expect::kEhlo:
    case Expect::kHelo:
      return options_.ehlo_timeout;
    case Expect::kStartTls:
      return options_.starttls_timeout;
    case Expect::kMail:
      return options_.mail_timeout;
    case Expect::kRcpt:
      return options_.rcpt_timeout;
    case Expect::kData:
      return options_.data_init_timeout;
    case Expect::kDataEnd:
      return data_end_offset_ > sent_total_ ? options_.data_block_timeout
                                            : options_.data_end_timeout;
    case Expect::kRset:
      return options_.rset_timeout;
    case Expect::kQuit:
      return options_.quit_timeout;
  }
  return options_.quit_timeout;
}

void SmtpClient::ArmDeadline(absl::Time now) {
  if (phase_ != Phase::kSession || pending_.empty()) {
    deadline_ = phase_ == Phase::kTlsHandshake ? deadline_ : absl::InfiniteFuture();
    return;
  }
  deadline_ = now + TimeoutFor(pending_.front().expect);
}

void SmtpClient::OnBytesSent(size_t count, absl::Time now) {
  sent_total_ += count;
  if (phase_ != Phase::kSession || pending_.empty() ||
      pending_.front().expect != Expect::kDataEnd || data_end_offset_ == 0) {
    return;
  }
  if (sent_total_ >= data_end_offset_) {
    data_end_offset_ = 0;  // all data is out: from now on the termination timeout applies
  }
  ArmDeadline(now);
}

void SmtpClient::Feed(std::string_view bytes, absl::Time now) {
  if (phase_ != Phase::kSession) {
    return;  // closed, or plaintext during the handshake (the shell should not feed that)
  }
  input_.append(bytes);
  ParseInput(now);
}

void SmtpClient::ParseInput(absl::Time now) {
  size_t consumed = 0;
  while (phase_ == Phase::kSession) {
    size_t newline = input_.find('\n', consumed);
    if (newline == std::string::npos) {
      if (input_.size() - consumed > kMaxReplyLine) {
        ProtocolError("reply line too long", now);
      }
      break;
    }
    std::string_view line(input_.data() + consumed, newline - consumed);
    consumed = newline + 1;
    if (!line.empty() && line.back() == '\r') {
      line.remove_suffix(1);
    }
    if (line.size() < 3 || line[0] < '2' || line[0] > '5' || !IsDigit(line[1]) ||
        !IsDigit(line[2]) || (line.size() > 3 && line[3] != ' ' && line[3] != '-')) {
      ProtocolError(fmt::format("malformed reply line \"{}\"", line.substr(0, 64)), now);
      break;
    }
    int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    std::string_view text = line.size() > 4 ? line.substr(4) : std::string_view();
    if (partial_.has_value() && partial_->code != code) {
      ProtocolError(fmt::format("reply code {} inside a {} reply", code, partial_->code), now);
      break;
    }
    if (!partial_.has_value()) {
      partial_.emplace();
      partial_->code = code;
      partial_->enhanced = EnhancedCodeOf(code, text);
    }
    partial_->lines.emplace_back(text);
    if (partial_->lines.size() > kMaxReplyLines) {
      ProtocolError("reply with too many lines", now);
      break;
    }
    if (line.size() > 3 && line[3] == '-') {
      continue;
    }
    Reply reply = std::move(*partial_);
    partial_.reset();
    OnReply(reply, now);
  }
  if (phase_ == Phase::kSession) {
    input_.erase(0, consumed);
  } else {
    // Closed, or the TLS handshake starts: bytes after the 220 to STARTTLS are discarded so
    // that no plaintext can be injected into the TLS session (RFC 3207 §4.2).
    input_.clear();
    partial_.reset();
  }
}

void SmtpClient::ProtocolError(std::string_view what, absl::Time now) {
  Fail(ConnectionFailure::kProtocolError, RecipientOutcome::kTemporaryFailure,
       MakeReply(451, "4.5.0", fmt::format("protocol error: {}", what)), ReplySource::kClient,
       Goodbye::kDrop, now);
}

void SmtpClient::ReportReply(int code) {
  if (options_.on_reply && !pending_.empty()) {
    options_.on_reply(pending_.front().expect, code);
  }
}

void SmtpClient::OnReply(const Reply& reply, absl::Time now) {
  ReportReply(reply.code);
  bool greeting_or_quit = !pending_.empty() && (pending_.front().expect == Expect::kGreeting ||
                                                pending_.front().expect == Expect::kQuit);
  if (reply.code == 421 && !greeting_or_quit) {
    // The server is closing the channel (RFC 5321 §3.8), in reply to any command or unasked:
    // whatever is unanswered fails with its words, and nothing more is sent but QUIT.
    Fail(ConnectionFailure::kConnectionLost, RecipientOutcome::kTemporaryFailure, reply,
         ReplySource::kServer, Goodbye::kQuit, now);
    return;
  }
  if (pending_.empty()) {
    ProtocolError(fmt::format("unexpected reply \"{}\"", reply.OneLine()), now);
    return;
  }
  Pending pending = pending_.front();
  pending_.pop_front();
  switch (pending.expect) {
    case Expect::kGreeting:
      OnGreeting(reply, now);
      break;
    case Expect::kEhlo:
      OnEhlo(reply, now);
      break;
    case Expect::kHelo:
      OnHelo(reply, now);
      break;
    case Expect::kStartTls:
      OnStartTls(reply, now);
      break;
    case Expect::kMail:
      OnMail(reply, now);
      break;
    case Expect::kRcpt:
      OnRcpt(pending.rcpt, reply, now);
      break;
    case Expect::kData:
      OnData(reply, now);
      break;
    case Expect::kDataEnd:
      OnDataEnd(reply, now);
      break;
    case Expect::kRset:
      OnRset(reply, now);
      break;
    case Expect::kQuit:
      phase_ = Phase::kClosed;
      break;
  }
  ArmDeadline(now);
}

void SmtpClient::OnGreeting(const Reply& reply, absl::Time now) {
  switch (reply.code / 100) {
    case 2:
      Send("EHLO " + options_.helo_name, Expect::kEhlo, now);
      return;
    case 4:
    case 5:
      Fail(ConnectionFailure::kGreetingRejected, OutcomeOf(reply.code), reply, ReplySource::kServer,
           Goodbye::kQuit, now);
      return;
    default:
      ProtocolError(fmt::format("unexpected greeting \"{}\"", reply.OneLine()), now);
  }
}

void SmtpClient::OnEhlo(const Reply& reply, absl::Time now) {
  switch (reply.code / 100) {
    case 2:
      extensions_ = ParseEhlo(reply);
      AfterHello(now);
      return;
    case 5:
      Send("HELO " + options_.helo_name, Expect::kHelo, now);
      return;
    case 4:
      Fail(ConnectionFailure::kHeloRejected, RecipientOutcome::kTemporaryFailure, reply,
           ReplySource::kServer, Goodbye::kQuit, now);
      return;
    default:
      ProtocolError(fmt::format("unexpected reply to EHLO \"{}\"", reply.OneLine()), now);
  }
}

void SmtpClient::OnHelo(const Reply& reply, absl::Time now) {
  if (reply.code / 100 == 2) {
    extensions_ = ServerExtensions();
    AfterHello(now);
    return;
  }
  // Even a 5xx stays temporary: a server refusing our name is a configuration problem that
  // an operator fixes, not a reason to bounce the whole backlog.
  Fail(ConnectionFailure::kHeloRejected, RecipientOutcome::kTemporaryFailure, reply,
       ReplySource::kServer, Goodbye::kQuit, now);
}

void SmtpClient::AfterHello(absl::Time now) {
  if (!tls_active_ && options_.tls != TlsPolicy::kNone && extensions_.starttls) {
    Send("STARTTLS", Expect::kStartTls, now);
    return;
  }
  if (!tls_active_ && options_.tls == TlsPolicy::kRequired) {
    Fail(ConnectionFailure::kTlsFailure, RecipientOutcome::kTemporaryFailure,
         MakeReply(451, "4.7.4", "TLS required but not offered"), ReplySource::kClient,
         Goodbye::kQuit, now);
    return;
  }
  session_ready_ = true;
  ready_at_ = now;
  StartNextMessage(now);
}

void SmtpClient::OnStartTls(const Reply& reply, absl::Time now) {
  if (reply.code / 100 == 2) {
    phase_ = Phase::kTlsHandshake;
    deadline_ = now + options_.starttls_timeout;
    return;
  }
  if (options_.tls == TlsPolicy::kRequired) {
    Fail(ConnectionFailure::kTlsFailure, RecipientOutcome::kTemporaryFailure,
         MakeReply(451, "4.7.4",
                   fmt::format("TLS required but STARTTLS was refused: {}", reply.OneLine())),
         ReplySource::kClient, Goodbye::kQuit, now);
    return;
  }
  session_ready_ = true;  // opportunistic: carry on in plaintext
  ready_at_ = now;
  StartNextMessage(now);
}

void SmtpClient::TlsEstablished(absl::Time now) {
  if (phase_ != Phase::kTlsHandshake) {
    return;
  }
  phase_ = Phase::kSession;
  tls_active_ = true;
  extensions_ = ServerExtensions();  // forget everything learnt in plaintext
  Send("EHLO " + options_.helo_name, Expect::kEhlo, now);
}

void SmtpClient::TlsFailed(std::string_view error, absl::Time now) {
  if (phase_ == Phase::kClosed) {
    return;
  }
  Fail(ConnectionFailure::kTlsFailure, RecipientOutcome::kTemporaryFailure,
       MakeReply(451, "4.7.5", fmt::format("TLS handshake failed: {}", error)),
       ReplySource::kClient, Goodbye::kDrop, now);
}

void SmtpClient::ConnectionLost(absl::Time now) {
  if (phase_ == Phase::kClosed) {
    return;
  }
  if (quit_sent_) {
    phase_ = Phase::kClosed;  // the server closed first after QUIT: nothing is lost
    return;
  }
  std::string waiting =
      pending_.empty() ? "" : fmt::format(" waiting for {}", ExpectName(pending_.front().expect));
  ReportReply(0);
  Fail(ConnectionFailure::kConnectionLost, RecipientOutcome::kTemporaryFailure,
       MakeReply(451, "4.4.2", "connection lost" + waiting), ReplySource::kClient, Goodbye::kDrop,
       now);
}

void SmtpClient::OnTimer(absl::Time now) {
  if (phase_ == Phase::kClosed || now < deadline_) {
    return;
  }
  if (quit_sent_) {
    phase_ = Phase::kClosed;
    deadline_ = absl::InfiniteFuture();
    return;
  }
  if (phase_ == Phase::kSession && pending_.empty()) {
    return;  // idle: no reply is awaited, so no timeout of ours runs
  }
  std::string what = phase_ == Phase::kTlsHandshake
                         ? std::string("the TLS handshake")
                         : std::string(ExpectName(pending_.front().expect));
  if (phase_ == Phase::kSession) {
    ReportReply(0);
  }
  Fail(ConnectionFailure::kTimeout, RecipientOutcome::kTemporaryFailure,
       MakeReply(451, "4.4.2", fmt::format("timeout waiting for {}", what)), ReplySource::kClient,
       Goodbye::kDrop, now);
}

std::optional<Reply> SmtpClient::RefusalOf(const queue::QueueEntry& entry, size_t data_size) const {
  const queue::Envelope& envelope = entry.envelope();
  bool bad_address = HasControlBytes(envelope.reverse_path());
  for (const queue::Recipient& recipient : envelope.recipients()) {
    bad_address |= HasControlBytes(recipient.address()) || HasControlBytes(recipient.orcpt());
  }
  if (bad_address) {
    return MakeReply(553, "5.1.3", "control characters in an envelope address");
  }
  if (NeedsSmtpUtf8(envelope) && !extensions_.smtputf8) {
    return MakeReply(554, "5.6.7", "SMTPUTF8 message to a server without SMTPUTF8");
  }
  if (HasEightBitBytes(entry.message()) && !extensions_.eight_bit_mime) {
    return MakeReply(554, "5.6.3", "8-bit message to a server without 8BITMIME");
  }
  if (extensions_.size && extensions_.max_size > 0 && data_size > extensions_.max_size) {
    return MakeReply(552, "5.3.4",
                     fmt::format("message size {} exceeds the server's limit of {}", data_size,
                                 extensions_.max_size));
  }
  return std::nullopt;
}

std::string SmtpClient::MailCommand(const Transaction& transaction, size_t data_size) const {
  const queue::Envelope& envelope = transaction.entry.envelope();
  std::string command = fmt::format("MAIL FROM:<{}>", envelope.reverse_path());
  if (extensions_.size) {
    command += fmt::format(" SIZE={}", data_size);
  }
  if (extensions_.eight_bit_mime &&
      (HasEightBitBytes(transaction.entry.message()) || envelope.body() == queue::BODY_8BITMIME ||
       envelope.body() == queue::BODY_BINARYMIME)) {
    command += " BODY=8BITMIME";
  }
  if (NeedsSmtpUtf8(envelope)) {
    command += " SMTPUTF8";  // RefusalOf made sure the server offers it
  }
  if (extensions_.dsn) {
    if (envelope.ret() == queue::RET_FULL) {
      command += " RET=FULL";
    } else if (envelope.ret() == queue::RET_HDRS) {
      command += " RET=HDRS";
    }
    if (!envelope.envid().empty()) {
      command += " ENVID=" + XtextEncode(envelope.envid());
    }
  }
  return command;
}

std::string SmtpClient::RcptCommand(const queue::Recipient& recipient) const {
  std::string command = fmt::format("RCPT TO:<{}>", recipient.address());
  if (extensions_.dsn) {
    std::string notify = NotifyParameter(recipient);
    if (!notify.empty()) {
      command += " NOTIFY=" + notify;
    }
    if (!recipient.orcpt().empty()) {
      command += " ORCPT=" + OrcptParameter(recipient.orcpt());
    }
  }
  return command;
}

void SmtpClient::StartNextMessage(absl::Time now) {
  while (!queued_.empty()) {
    queue::QueueEntry entry = std::move(queued_.front());
    queued_.pop_front();
    std::string data;
    AppendDataForm(entry.message(), &data);
    size_t data_size = data.size() - 3;  // without the final ".\r\n"
    if (std::optional<Reply> refusal = RefusalOf(entry, data_size)) {
      // Never sent: nothing to reset on the server.
      FailMessage(std::move(entry), ConnectionFailure::kNone, OutcomeOf(refusal->code), *refusal,
                  ReplySource::kClient, now);
      continue;
    }
    transaction_ = std::make_unique<Transaction>();
    Transaction& transaction = *transaction_;
    transaction.entry = std::move(entry);
    transaction.data = std::move(data);
    transaction.pipelined = extensions_.pipelining;
    transaction.started = now;
    size_t count = static_cast<size_t>(transaction.entry.envelope().recipients_size());
    transaction.results.resize(count);
    transaction.decided.assign(count, false);
    transaction.accepted.assign(count, false);
    for (size_t i = 0; i < count; ++i) {
      transaction.results[i].address =
          transaction.entry.envelope().recipients(static_cast<int>(i)).address();
    }
    Send(MailCommand(transaction, data_size), Expect::kMail, now);
    if (transaction.pipelined) {
      // RFC 2920: MAIL, every RCPT and DATA in one group; replies come back in order.
      while (transaction.next_rcpt < count) {
        SendRcptOrData(now);
      }
      Send("DATA", Expect::kData, now);
    }
    return;
  }
  if (finish_requested_ && !quit_sent_) {
    quit_sent_ = true;
    Send("QUIT", Expect::kQuit, now);
  }
}

void SmtpClient::SendRcptOrData(absl::Time now) {
  Transaction& transaction = *transaction_;
  if (transaction.next_rcpt < transaction.results.size()) {
    size_t index = transaction.next_rcpt++;
    Send(RcptCommand(transaction.entry.envelope().recipients(static_cast<int>(index))),
         Expect::kRcpt, now, index);
  } else if (transaction.accepted_count > 0) {
    Send("DATA", Expect::kData, now);
  } else {
    FinishTransaction(AfterTransaction::kRset, now);
  }
}

void SmtpClient::Decide(size_t index, const Reply& reply) {
  Transaction& transaction = *transaction_;
  if (transaction.decided[index]) {
    return;
  }
  transaction.decided[index] = true;
  RecipientResult& result = transaction.results[index];
  result.outcome = OutcomeOf(reply.code);
  result.source = ReplySource::kServer;
  result.reply = reply;
}

void SmtpClient::OnMail(const Reply& reply, absl::Time now) {
  Transaction& transaction = *transaction_;
  if (reply.code / 100 == 2) {
    transaction.mail_accepted = true;
    if (!transaction.pipelined) {
      SendRcptOrData(now);
    }
    return;
  }
  for (size_t i = 0; i < transaction.results.size(); ++i) {
    Decide(i, reply);
  }
  if (!transaction.pipelined) {
    FinishTransaction(AfterTransaction::kRset, now);
  }
  // Pipelined: the RCPT and DATA replies still to come are bad-sequence errors; they change
  // nothing.
}

void SmtpClient::OnRcpt(size_t index, const Reply& reply, absl::Time now) {
  Transaction& transaction = *transaction_;
  if (transaction.mail_accepted) {
    if (reply.code / 100 == 2) {
      transaction.accepted[index] = true;
      ++transaction.accepted_count;
    } else {
      Decide(index, reply);
    }
  }
  if (!transaction.pipelined) {
    SendRcptOrData(now);
  }
}

void SmtpClient::OnData(const Reply& reply, absl::Time now) {
  Transaction& transaction = *transaction_;
  switch (reply.code / 100) {
    case 3:
      if (transaction.mail_accepted && transaction.accepted_count > 0) {
        Emit(transaction.data);
      } else {
        // RFC 2920 §3.1: the server took DATA although no recipient was accepted; end the data
        // at once without sending the message.
        transaction.discarding = true;
        Emit(".\r\n");
      }
      std::string().swap(transaction.data);
      data_end_offset_ = output_total_;
      pending_.push_back({Expect::kDataEnd});
      return;
    case 4:
    case 5:
      for (size_t i = 0; i < transaction.results.size(); ++i) {
        if (transaction.accepted[i]) {
          Decide(i, reply);
        }
      }
      FinishTransaction(AfterTransaction::kRset, now);
      return;
    default:
      ProtocolError(fmt::format("unexpected reply to DATA \"{}\"", reply.OneLine()), now);
  }
}

void SmtpClient::OnDataEnd(const Reply& reply, absl::Time now) {
  Transaction& transaction = *transaction_;
  data_end_offset_ = 0;
  if (transaction.discarding) {
    FinishTransaction(AfterTransaction::kRset, now);
    return;
  }
  for (size_t i = 0; i < transaction.results.size(); ++i) {
    if (transaction.accepted[i]) {
      Decide(i, reply);
    }
  }
  FinishTransaction(AfterTransaction::kNextMessage, now);
}

void SmtpClient::FinishTransaction(AfterTransaction after, absl::Time now) {
  Transaction& transaction = *transaction_;
  MessageResult result;
  result.id = transaction.entry.id();
  result.recipients = std::move(transaction.results);
  result.started = transaction.started;
  result.finished = now;
  results_.push_back(std::move(result));
  transaction_.reset();
  if (after == AfterTransaction::kRset) {
    Send("RSET", Expect::kRset, now);
  } else {
    StartNextMessage(now);
  }
}

void SmtpClient::OnRset(const Reply& reply, absl::Time now) {
  if (reply.code / 100 == 2) {
    StartNextMessage(now);
    return;
  }
  Fail(ConnectionFailure::kProtocolError, RecipientOutcome::kTemporaryFailure,
       MakeReply(451, "4.5.0", fmt::format("RSET refused: {}", reply.OneLine())),
       ReplySource::kClient, Goodbye::kQuit, now);
}

void SmtpClient::FailMessage(queue::QueueEntry entry, ConnectionFailure failure,
                             RecipientOutcome outcome, const Reply& reply, ReplySource source,
                             absl::Time now) {
  MessageResult result;
  result.id = entry.id();
  result.failure = failure;
  result.started = now;
  result.finished = now;
  for (const queue::Recipient& recipient : entry.envelope().recipients()) {
    result.recipients.push_back({recipient.address(), outcome, source, reply});
  }
  results_.push_back(std::move(result));
}

void SmtpClient::Fail(ConnectionFailure failure, RecipientOutcome outcome, const Reply& reply,
                      ReplySource source, Goodbye goodbye, absl::Time now) {
  failure_ = failure;
  if (transaction_) {
    Transaction& transaction = *transaction_;
    for (size_t i = 0; i < transaction.results.size(); ++i) {
      if (!transaction.decided[i]) {
        transaction.decided[i] = true;
        transaction.results[i].outcome = outcome;
        transaction.results[i].source = source;
        transaction.results[i].reply = reply;
      }
    }
    MessageResult result;
    result.id = transaction.entry.id();
    result.recipients = std::move(transaction.results);
    result.failure = failure;
    result.started = transaction.started;
    result.finished = now;
    results_.push_back(std::move(result));
    transaction_.reset();
  }
  while (!queued_.empty()) {
    FailMessage(std::move(queued_.front()), failure, outcome, reply, source, now);
    queued_.pop_front();
  }
  pending_.clear();
  if (goodbye == Goodbye::kQuit) {
    Emit("QUIT\r\n");  // polite, but the connection closes without waiting for 221
  }
  phase_ = Phase::kClosed;
  deadline_ = absl::InfiniteFuture();
}

}  // namespace backstop::delivery
