#include "delivery/dsn.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "delivery/canonicalize.h"
#include "delivery/xtext.h"
#include "fmt/format.h"

namespace backstop::delivery {
namespace {

constexpr size_t kMaxFieldValue = 900;
constexpr size_t kFoldColumn = 78;

std::string Rfc5322Date(absl::Time time) {
  return absl::FormatTime("%a, %d %b %Y %H:%M:%S +0000", time, absl::UTCTimeZone());
}

std::string Hex(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (char c : bytes) {
    auto byte = static_cast<unsigned char>(c);
    out.push_back(kDigits[byte >> 4]);
    out.push_back(kDigits[byte & 0xF]);
  }
  return out;
}

// Appends `text` and CRLF, folding before a space when a line would pass kFoldColumn; the
// continuation lines start with that space. Unfolding (removing each CRLF before white space)
// gives the text back exactly. Values are at most kMaxFieldValue bytes, so even a line that
// cannot be folded stays under the 998 bytes of RFC 5322.
void AppendFolded(std::string_view text, std::string* out) {
  size_t column = 0;
  size_t i = 0;
  while (i < text.size()) {
    size_t next = text.find(' ', i + 1);  // the next word, with its leading space
    if (next == std::string_view::npos) {
      next = text.size();
    }
    std::string_view word = text.substr(i, next - i);
    if (column > 0 && column + word.size() > kFoldColumn) {
      out->append("\r\n");
      column = 0;
    }
    out->append(word);
    column += word.size();
    i = next;
  }
  out->append("\r\n");
}

void AppendField(std::string_view name, std::string_view value, std::string* out) {
  AppendFolded(fmt::format("{}: {}", name, value), out);
}

// The header section of `message`: its lines up to the empty line, each with its CRLF.
std::string_view HeaderSection(std::string_view message) {
  if (message.starts_with("\r\n")) {
    return {};
  }
  size_t end = message.find("\r\n\r\n");
  return end == std::string_view::npos ? message : message.substr(0, end + 2);
}

// The domain of an address, lower-cased (ASCII letters only: a UTF-8 domain keeps its bytes).
std::string DomainOf(std::string_view address) {
  size_t at = address.rfind('@');
  if (at == std::string_view::npos) {
    return "";
  }
  std::string_view domain = address.substr(at + 1);
  return absl::AsciiStrToLower(absl::string_view(domain.data(), domain.size()));
}

const queue::Recipient* FindRecipient(const queue::Envelope& envelope, std::string_view address) {
  for (const queue::Recipient& recipient : envelope.recipients()) {
    if (recipient.address() == address) {
      return &recipient;
    }
  }
  return nullptr;
}

// ORCPT "type;xtext" → {type, decoded address}; a value that is not valid xtext is kept as is.
std::pair<std::string, std::string> SplitOrcpt(std::string_view orcpt) {
  size_t semicolon = orcpt.find(';');
  if (semicolon == std::string_view::npos) {
    return {"rfc822", std::string(orcpt)};
  }
  std::string type(orcpt.substr(0, semicolon));
  std::string_view address = orcpt.substr(semicolon + 1);
  std::optional<std::string> decoded = XtextDecode(address);
  return {type, decoded.has_value() ? *decoded : std::string(address)};
}

struct Reported {
  DsnRecipient recipient;
  std::string orcpt_type;  // empty = no ORCPT
  std::string orcpt_address;
};

std::string AddressType(std::string_view address) {
  return HasEightBitBytes(address) ? "utf-8" : "rfc822";
}

std::string HumanText(const std::vector<Reported>& reported, bool any_failed,
                      const DsnOptions& options) {
  std::string text = fmt::format("This is the mail system at host {}.\r\n\r\n",
                                 DsnFieldValue(options.reporting_mta, DsnCharset::kUtf8));
  if (any_failed) {
    text +=
        "I'm sorry to have to inform you that your message could not\r\n"
        "be delivered to one or more recipients. It's attached below.\r\n";
  } else {
    text +=
        "Your message could not be delivered yet to one or more recipients.\r\n"
        "The mail system will keep trying; you do not need to send it again.\r\n";
  }
  text += "\r\n";
  for (const Reported& entry : reported) {
    const DsnRecipient& recipient = entry.recipient;
    std::string why =
        !recipient.diagnostic.empty()
            ? "host " +
                  (recipient.remote_mta.empty() ? std::string("(unknown)") : recipient.remote_mta) +
                  " said: " + recipient.diagnostic
            : (recipient.reason.empty() ? recipient.status : recipient.reason);
    AppendFolded(fmt::format("<{}>: {} ({})", DsnFieldValue(recipient.address, DsnCharset::kUtf8),
                             DsnFieldValue(why, DsnCharset::kUtf8),
                             DsnFieldValue(recipient.status, DsnCharset::kUtf8)),
                 &text);
    if (recipient.action == DsnAction::kDelayed &&
        recipient.will_retry_until != absl::InfinitePast()) {
      text += fmt::format("    will retry until {}\r\n", Rfc5322Date(recipient.will_retry_until));
    }
  }
  return text;
}

}  // namespace

std::string_view DsnActionName(DsnAction action) {
  return action == DsnAction::kFailed ? "failed" : "delayed";
}

std::string DsnFieldValue(std::string_view value, DsnCharset charset) {
  std::string out;
  out.reserve(std::min(value.size(), kMaxFieldValue));
  for (char c : value) {
    if (out.size() == kMaxFieldValue) {
      break;
    }
    auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte == 0x7f) {
      out.push_back(' ');
    } else if (byte >= 0x80 && charset == DsnCharset::kAscii) {
      out.push_back('?');
    } else {
      out.push_back(c);
    }
  }
  // A value cut inside a UTF-8 sequence would end in a broken character: drop the partial one.
  if (charset == DsnCharset::kUtf8 && value.size() > kMaxFieldValue) {
    size_t lead = out.size();
    while (lead > 0 && (static_cast<unsigned char>(out[lead - 1]) & 0xC0) == 0x80) {
      --lead;
    }
    if (lead > 0) {
      auto byte = static_cast<unsigned char>(out[lead - 1]);
      size_t length = byte >= 0xF0 ? 4 : byte >= 0xE0 ? 3 : byte >= 0xC0 ? 2 : 1;
      if (out.size() - (lead - 1) < length) {
        out.resize(lead - 1);
      }
    }
  }
  return out;
}

DsnRecipient DsnRecipientFor(const RecipientResult& result, DsnAction action,
                             std::string_view remote_mta, absl::Time attempt) {
  DsnRecipient recipient;
  recipient.address = result.address;
  recipient.action = action;
  recipient.status = !result.reply.enhanced.empty()
                         ? result.reply.enhanced
                         : fmt::format("{}.0.0", result.reply.code / 100 == 5 ? 5 : 4);
  if (result.source == ReplySource::kServer) {
    recipient.diagnostic = result.reply.OneLine();
    recipient.remote_mta = std::string(remote_mta);
  } else {
    recipient.reason = result.reply.OneLine();
  }
  recipient.last_attempt = attempt;
  return recipient;
}

bool WantsDsn(const queue::Recipient& recipient, DsnAction action) {
  if (recipient.notify().empty()) {
    return true;  // FAILURE,DELAY
  }
  queue::Notify wanted = action == DsnAction::kFailed ? queue::NOTIFY_FAILURE : queue::NOTIFY_DELAY;
  bool wants = false;
  for (int notify : recipient.notify()) {
    if (notify == queue::NOTIFY_NEVER) {
      return false;
    }
    wants |= notify == wanted;
  }
  return wants;
}

std::optional<queue::QueueEntry> BuildDsn(const queue::QueueEntry& original,
                                          const DsnReport& report, const DsnOptions& options) {
  const queue::Envelope& envelope = original.envelope();
  const std::string& reverse_path = envelope.reverse_path();
  std::string domain = DomainOf(reverse_path);
  if (reverse_path.empty() || domain.empty()) {
    return std::nullopt;
  }

  std::vector<Reported> reported;
  bool any_failed = false;
  bool global = envelope.smtputf8() || HasEightBitBytes(reverse_path);
  for (const DsnRecipient& recipient : report.recipients) {
    const queue::Recipient* stored = FindRecipient(envelope, recipient.address);
    queue::Recipient none;
    if (!WantsDsn(stored != nullptr ? *stored : none, recipient.action)) {
      continue;
    }
    Reported entry{recipient, "", ""};
    if (stored != nullptr && !stored->orcpt().empty()) {
      std::tie(entry.orcpt_type, entry.orcpt_address) = SplitOrcpt(stored->orcpt());
    }
    global |= HasEightBitBytes(recipient.address) || HasEightBitBytes(entry.orcpt_address);
    any_failed |= recipient.action == DsnAction::kFailed;
    reported.push_back(std::move(entry));
  }
  if (reported.empty()) {
    return std::nullopt;
  }
  const DsnCharset charset = global ? DsnCharset::kUtf8 : DsnCharset::kAscii;
  const std::string host = DsnFieldValue(options.reporting_mta, DsnCharset::kAscii);

  // Part 3: the whole message or its headers.
  const std::string& message = original.message();
  bool full = any_failed && envelope.ret() != queue::RET_HDRS &&
              message.size() <= options.max_returned_message_bytes;
  std::string_view returned = full ? std::string_view(message) : HeaderSection(message);

  // Part 2: the delivery-status fields.
  std::string status;
  AppendField("Reporting-MTA", "dns; " + host, &status);
  if (!envelope.envid().empty()) {
    AppendField("Original-Envelope-Id", DsnFieldValue(envelope.envid(), charset), &status);
  }
  if (envelope.arrival_ms() != 0) {
    AppendField("Arrival-Date", Rfc5322Date(absl::FromUnixMillis(envelope.arrival_ms())), &status);
  }
  for (const Reported& entry : reported) {
    const DsnRecipient& recipient = entry.recipient;
    status.append("\r\n");
    AppendField("Final-Recipient",
                AddressType(recipient.address) + "; " + DsnFieldValue(recipient.address, charset),
                &status);
    if (!entry.orcpt_type.empty()) {
      AppendField("Original-Recipient",
                  DsnFieldValue(entry.orcpt_type, DsnCharset::kAscii) + "; " +
                      DsnFieldValue(entry.orcpt_address, charset),
                  &status);
    }
    AppendField("Action", DsnActionName(recipient.action), &status);
    AppendField("Status", DsnFieldValue(recipient.status, DsnCharset::kAscii), &status);
    if (!recipient.remote_mta.empty()) {
      AppendField("Remote-MTA", "dns; " + DsnFieldValue(recipient.remote_mta, DsnCharset::kAscii),
                  &status);
    }
    if (!recipient.diagnostic.empty()) {
      AppendField("Diagnostic-Code", "smtp; " + DsnFieldValue(recipient.diagnostic, charset),
                  &status);
    }
    if (recipient.last_attempt != absl::InfinitePast()) {
      AppendField("Last-Attempt-Date", Rfc5322Date(recipient.last_attempt), &status);
    }
    if (recipient.action == DsnAction::kDelayed &&
        recipient.will_retry_until != absl::InfinitePast()) {
      AppendField("Will-Retry-Until", Rfc5322Date(recipient.will_retry_until), &status);
    }
  }

  std::string human = HumanText(reported, any_failed, options);

  // A boundary that occurs in no part (the returned message and the server's replies quoted in
  // the other parts are not ours).
  std::string boundary = "=_backstop_" + Hex(report.id);
  auto occurs = [&](const std::string& candidate) {
    std::string delimiter = "--" + candidate;
    return returned.find(delimiter) != std::string_view::npos ||
           status.find(delimiter) != std::string::npos ||
           human.find(delimiter) != std::string::npos;
  };
  for (int attempt = 1; occurs(boundary); ++attempt) {
    boundary = fmt::format("=_backstop_{}.{}", Hex(report.id), attempt);
  }

  std::string dsn;
  dsn.reserve(returned.size() + status.size() + human.size() + 1024);
  AppendField("From", fmt::format("Mail Delivery System <MAILER-DAEMON@{}>", host), &dsn);
  AppendField("To", fmt::format("<{}>", DsnFieldValue(reverse_path, charset)), &dsn);
  AppendField(
      "Subject",
      any_failed ? "Undelivered Mail Returned to Sender" : "Delayed Mail (still being retried)",
      &dsn);
  AppendField("Date", Rfc5322Date(report.now), &dsn);
  AppendField("Message-ID", fmt::format("<{}.dsn@{}>", Hex(report.id), host), &dsn);
  AppendField("Auto-Submitted", "auto-replied", &dsn);
  AppendField("MIME-Version", "1.0", &dsn);
  AppendField("Content-Type",
              fmt::format("multipart/report; report-type={}; boundary=\"{}\"",
                          global ? "global-delivery-status" : "delivery-status", boundary),
              &dsn);
  dsn.append("\r\nThis is a MIME-encapsulated message.\r\n");

  // Every part with 8-bit bytes says so, whatever its type (RFC 6152, RFC 6532 §3.7).
  auto part = [&](std::string_view description, std::string_view type, std::string_view body) {
    dsn.append("\r\n--" + boundary + "\r\n");
    AppendField("Content-Description", description, &dsn);
    AppendField("Content-Type", type, &dsn);
    if (HasEightBitBytes(body)) {
      AppendField("Content-Transfer-Encoding", "8bit", &dsn);
    }
    dsn.append("\r\n");
    dsn.append(body);
  };
  part("Notification",
       HasEightBitBytes(human) ? "text/plain; charset=utf-8" : "text/plain; charset=us-ascii",
       human);
  part("Delivery report", global ? "message/global-delivery-status" : "message/delivery-status",
       status);
  if (full) {
    part("Undelivered Message", global ? "message/global" : "message/rfc822", returned);
  } else {
    part("Undelivered Message Headers", global ? "message/global-headers" : "text/rfc822-headers",
         returned);
  }
  dsn.append("\r\n--" + boundary + "--\r\n");

  queue::QueueEntry entry;
  entry.set_id(report.id);
  entry.set_domain(domain);
  queue::Envelope& out = *entry.mutable_envelope();
  out.set_reverse_path("");
  out.add_recipients()->set_address(reverse_path);
  out.set_smtputf8(global);
  out.set_body(HasEightBitBytes(dsn) ? queue::BODY_8BITMIME : queue::BODY_7BIT);
  out.set_arrival_ms(absl::ToUnixMillis(report.now));
  out.set_declared_size(dsn.size());
  entry.set_message(std::move(dsn));
  return entry;
}

}  // namespace backstop::delivery
