#include "bench/loadgen_core.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <utility>

#include <fmt/format.h>

#include "common/units.h"

namespace backstop::bench {

// --- Message sizes ------------------------------------------------------------------------------

absl::StatusOr<std::vector<SizeWeight>> ParseSizeMix(std::string_view text) {
  std::vector<SizeWeight> mix;
  while (true) {
    const size_t comma = text.find(',');
    const std::string_view item = text.substr(0, comma);
    const size_t colon = item.find(':');
    SizeWeight entry;
    absl::StatusOr<uint64_t> size = ParseSize(item.substr(0, colon));
    if (!size.ok()) {
      return absl::InvalidArgumentError(fmt::format("size mix '{}': {}", std::string(text),
                                                    std::string(size.status().message())));
    }
    entry.bytes = *size;
    entry.weight = 1;
    if (colon != std::string_view::npos) {
      const std::string_view weight = item.substr(colon + 1);
      const auto [end, ec] =
          std::from_chars(weight.data(), weight.data() + weight.size(), entry.weight);
      if (ec != std::errc() || end != weight.data() + weight.size() || weight.empty()) {
        return absl::InvalidArgumentError(
            fmt::format("size mix: weight '{}' is not a whole number", std::string(weight)));
      }
    }
    if (entry.bytes == 0 || entry.weight == 0) {
      return absl::InvalidArgumentError(
          fmt::format("size mix: '{}' has a zero size or weight", std::string(item)));
    }
    mix.push_back(entry);
    if (comma == std::string_view::npos) {
      return mix;
    }
    text.remove_prefix(comma + 1);
  }
}

SizePicker::SizePicker(std::vector<SizeWeight> mix) : mix_(std::move(mix)) {
  for (const SizeWeight& entry : mix_) {
    total_weight_ += entry.weight;
  }
}

uint64_t SizePicker::SizeOf(uint64_t seq) const {
  // splitmix64: consecutive sequence numbers spread evenly over the weights.
  uint64_t z = seq + 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  uint64_t point = z % total_weight_;
  for (const SizeWeight& entry : mix_) {
    if (point < entry.weight) {
      return entry.bytes;
    }
    point -= entry.weight;
  }
  return mix_.back().bytes;
}

std::string MakeMessage(uint64_t seq, uint64_t size, const MessageOptions& options) {
  std::string data = fmt::format(
      "From: <{}>\r\nTo: <{}>\r\nSubject: loadgen message {}\r\n"
      "Message-ID: <{}.loadgen@example.org>\r\nX-Loadgen-Seq: {}\r\n\r\n",
      options.sender, options.recipients.empty() ? "" : options.recipients.front(), seq, seq, seq);
  data.reserve(std::max<uint64_t>(size, data.size()) + 3);
  while (data.size() + 2 < size) {
    data.append(std::min<size_t>(76, size - data.size() - 2), 'x').append("\r\n");
  }
  data.append(".\r\n");
  return data;
}

// --- Latency -------------------------------------------------------------------------------------

Percentiles Summarize(std::vector<absl::Duration>& samples) {
  Percentiles result;
  result.count = samples.size();
  if (samples.empty()) {
    return result;
  }
  std::sort(samples.begin(), samples.end());
  const auto at = [&](double q) {
    const auto rank = static_cast<size_t>(std::ceil(q * static_cast<double>(samples.size())));
    return samples[std::clamp<size_t>(rank, 1, samples.size()) - 1];
  };
  result.p50 = at(0.50);
  result.p90 = at(0.90);
  result.p99 = at(0.99);
  result.p999 = at(0.999);
  result.max = samples.back();
  return result;
}

// --- The SMTP session
// ------------------------------------------------------------------------------

namespace {

Outcome OutcomeOf(int code) {
  if (code >= 200 && code < 400) {
    return Outcome::k2xx;
  }
  if (code >= 400 && code < 500) {
    return Outcome::k4xx;
  }
  if (code >= 500 && code < 600) {
    return Outcome::k5xx;
  }
  return Outcome::kError;
}

bool Positive(int code) {
  return code >= 200 && code < 300;
}

}  // namespace

ClientSession::ClientSession(SessionOptions options) : options_(std::move(options)) {}

void ClientSession::Feed(std::string_view bytes, absl::Time now) {
  if (state_ == State::kClosed || state_ == State::kTlsHandshake) {
    return;
  }
  input_.append(bytes);
  size_t start = 0;
  while (state_ != State::kClosed && state_ != State::kTlsHandshake) {
    const size_t eol = input_.find('\n', start);
    if (eol == std::string::npos) {
      break;
    }
    std::string_view line(input_.data() + start, eol - start);
    start = eol + 1;
    if (!line.empty() && line.back() == '\r') {
      line.remove_suffix(1);
    }
    int code = 0;
    const auto [end, ec] =
        std::from_chars(line.data(), line.data() + std::min<size_t>(3, line.size()), code);
    if (line.size() < 3 || ec != std::errc() || end != line.data() + 3 ||
        (line.size() > 3 && line[3] != ' ' && line[3] != '-') ||
        (partial_.code != 0 && partial_.code != code)) {
      Fail(fmt::format("garbage reply '{}'", std::string(line.substr(0, 80))));
      break;
    }
    partial_.code = code;
    partial_.lines.emplace_back(line.size() > 4 ? line.substr(4) : std::string_view());
    if (line.size() > 3 && line[3] == '-') {
      continue;
    }
    Reply reply = std::move(partial_);
    partial_ = Reply();
    OnReply(reply, now);
  }
  input_.erase(0, start);
}

void ClientSession::OnReply(const Reply& reply, absl::Time now) {
  if (reply.code == 421 && state_ != State::kQuit) {
    if (current_) {
      Decide(421, now);
    }
    Fail("421 from the server");
    return;
  }
  switch (state_) {
    case State::kGreeting:
      greeted_at_ = now;
      if (reply.code != 220) {
        Fail(fmt::format("greeting {}", reply.code));
        return;
      }
      SendEhlo();
      return;
    case State::kEhlo: {
      if (!Positive(reply.code)) {
        Fail(fmt::format("EHLO refused with {}", reply.code));
        return;
      }
      for (size_t i = 1; i < reply.lines.size(); ++i) {
        std::string keyword = reply.lines[i].substr(0, reply.lines[i].find(' '));
        std::transform(keyword.begin(), keyword.end(), keyword.begin(),
                       [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
        server_pipelining_ |= keyword == "PIPELINING";
        server_starttls_ |= keyword == "STARTTLS";
      }
      if (options_.starttls == StartTls::kOn && !tls_done_) {
        if (!server_starttls_) {
          Fail("the server does not offer STARTTLS");
          return;
        }
        output_.append("STARTTLS\r\n");
        state_ = State::kStartTls;
        return;
      }
      pipelining_ = options_.pipelining == Pipelining::kOn && server_pipelining_;
      state_ = State::kReady;
      return;
    }
    case State::kStartTls:
      if (reply.code != 220) {
        Fail(fmt::format("STARTTLS refused with {}", reply.code));
        return;
      }
      state_ = State::kTlsHandshake;
      return;
    case State::kTransaction:
      OnTransactionReply(reply, now);
      return;
    case State::kRset:
      if (!Positive(reply.code)) {
        Fail(fmt::format("RSET refused with {}", reply.code));
        return;
      }
      state_ = State::kReady;
      return;
    case State::kQuit:
      state_ = State::kClosed;
      return;
    case State::kReady:
      Fail(fmt::format("unexpected reply {}", reply.code));
      return;
    case State::kTlsHandshake:
    case State::kClosed:
      return;
  }
}

void ClientSession::OnTransactionReply(const Reply& reply, absl::Time now) {
  const Expect expect = expected_.front();
  expected_.pop_front();
  const std::vector<std::string>& recipients = options_.recipients;
  switch (expect) {
    case Expect::kMail:
      if (!Positive(reply.code)) {
        mail_refusal_ = reply.code;
      }
      if (pipelining_) {
        return;  // the RCPTs and DATA are on their way; their replies follow
      }
      if (mail_refusal_ != 0) {
        Decide(mail_refusal_, now);
        EndTransaction();
        return;
      }
      output_.append(fmt::format("RCPT TO:<{}>\r\n", recipients[rcpts_sent_++]));
      expected_.push_back(Expect::kRcpt);
      return;
    case Expect::kRcpt:
      if (Positive(reply.code)) {
        ++rcpts_accepted_;
      } else {
        rcpt_refusal_ = reply.code;
      }
      if (pipelining_) {
        return;
      }
      if (rcpts_sent_ < recipients.size()) {
        output_.append(fmt::format("RCPT TO:<{}>\r\n", recipients[rcpts_sent_++]));
        expected_.push_back(Expect::kRcpt);
      } else if (rcpts_accepted_ > 0) {
        output_.append("DATA\r\n");
        expected_.push_back(Expect::kData);
      } else {
        Decide(Refusal(), now);
        EndTransaction();
      }
      return;
    case Expect::kData:
      if (reply.code == 354) {
        if (Refusal() == 0) {
          output_.append(data_);
          data_end_in_output_ = true;
        } else {
          // Pipelined DATA accepted without a valid recipient: send no content (RFC 2920 §3.1).
          output_.append(".\r\n");
        }
        expected_.push_back(Expect::kDataEnd);
        return;
      }
      Decide(Refusal() != 0 ? Refusal() : reply.code, now);
      EndTransaction();
      return;
    case Expect::kDataEnd:
      Decide(Refusal() != 0 ? Refusal() : reply.code, now);
      state_ = State::kReady;  // a reply to the end of data resets the transaction
      return;
  }
}

void ClientSession::StartMessage(uint64_t seq, std::string data, uint64_t bytes) {
  current_ = MessageResult();
  current_->seq = seq;
  current_->bytes = bytes;
  data_ = std::move(data);
  expected_.clear();
  rcpts_sent_ = 0;
  rcpts_accepted_ = 0;
  mail_refusal_ = 0;
  rcpt_refusal_ = 0;
  state_ = State::kTransaction;
  output_.append(fmt::format("MAIL FROM:<{}>\r\n", options_.sender));
  expected_.push_back(Expect::kMail);
  if (pipelining_) {
    for (const std::string& recipient : options_.recipients) {
      output_.append(fmt::format("RCPT TO:<{}>\r\n", recipient));
      expected_.push_back(Expect::kRcpt);
    }
    rcpts_sent_ = options_.recipients.size();
    output_.append("DATA\r\n");
    expected_.push_back(Expect::kData);
  }
}

void ClientSession::Quit() {
  output_.append("QUIT\r\n");
  state_ = State::kQuit;
}

void ClientSession::TlsEstablished() {
  tls_done_ = true;
  server_pipelining_ = false;
  server_starttls_ = false;
  SendEhlo();
}

void ClientSession::ConnectionLost(std::string_view why) {
  if (state_ == State::kQuit) {
    state_ = State::kClosed;  // the server may close before its 221 arrives
    return;
  }
  if (state_ != State::kClosed) {
    Fail(std::string(why));
  }
}

std::string ClientSession::TakeOutput(absl::Time now) {
  if (data_end_in_output_) {
    data_end_in_output_ = false;
    current_->data_end_sent = now;
  }
  return std::exchange(output_, std::string());
}

std::vector<MessageResult> ClientSession::TakeResults() {
  return std::exchange(results_, std::vector<MessageResult>());
}

void ClientSession::SendEhlo() {
  output_.append(fmt::format("EHLO {}\r\n", options_.helo));
  state_ = State::kEhlo;
}

void ClientSession::Fail(std::string why) {
  if (current_) {
    current_->data_end_sent.reset();
    results_.push_back(std::move(*current_));  // outcome kError, code 0
    current_.reset();
  }
  error_ = std::move(why);
  state_ = State::kClosed;
}

void ClientSession::Decide(int code, absl::Time now) {
  MessageResult result = std::move(*current_);
  current_.reset();
  result.code = code;
  result.outcome = OutcomeOf(code);
  if (result.data_end_sent) {
    result.replied = now;
  }
  results_.push_back(std::move(result));
  data_.clear();
}

int ClientSession::Refusal() const {
  if (mail_refusal_ != 0) {
    return mail_refusal_;
  }
  return rcpts_accepted_ == 0 ? rcpt_refusal_ : 0;
}

void ClientSession::EndTransaction() {
  output_.append("RSET\r\n");
  state_ = State::kRset;
}

}  // namespace backstop::bench
