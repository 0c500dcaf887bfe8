#include "ingest/received.h"

#include <fmt/format.h>

#include "absl/strings/match.h"

namespace backstop::ingest {
namespace {

// Client-supplied text inside a comment or a domain: printable ASCII without the characters
// that delimit comments, escapes or the header itself.
std::string Sanitize(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x21 || byte > 0x7e || c == '(' || c == ')' || c == '\\' || c == ';') {
      out.push_back('_');
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string Protocol(const ReceivedFields& fields) {
  // RFC 3848 and RFC 6531 §4.3 "with" keywords.
  if (!fields.esmtp) {
    return "SMTP";
  }
  std::string protocol = fields.smtputf8 ? "UTF8SMTP" : "ESMTP";
  if (fields.tls) {
    protocol += "S";
  }
  return protocol;
}

}  // namespace

std::string BuildReceivedHeader(const ReceivedFields& fields) {
  std::string header = fmt::format("Received: from {} (", Sanitize(fields.helo));
  if (!fields.client_rdns.empty()) {
    header += Sanitize(fields.client_rdns) + " ";
  }
  header += fmt::format("[{}])\r\n", Sanitize(fields.client_ip));
  if (fields.tls) {
    header += fmt::format("\t(using {} with cipher {})\r\n", Sanitize(fields.tls->protocol),
                          Sanitize(fields.tls->cipher));
  }
  header +=
      fmt::format("\tby {} (Backstop) with {} id {}", fields.hostname, Protocol(fields), fields.id);
  if (!fields.recipient.empty()) {
    header += fmt::format("\r\n\tfor <{}>", Sanitize(fields.recipient));
  }
  header += ";\r\n\t" +
            absl::FormatTime("%a, %d %b %Y %H:%M:%S +0000", fields.time, absl::UTCTimeZone()) +
            "\r\n";
  return header;
}

size_t CountReceivedHeaders(std::string_view message, size_t limit) {
  size_t count = 0;
  size_t pos = 0;
  while (pos < message.size() && count < limit) {
    size_t end = message.find("\r\n", pos);
    if (end == std::string_view::npos) {
      end = message.size();
    }
    const std::string_view line = message.substr(pos, end - pos);
    if (line.empty()) {
      break;  // end of the header section
    }
    // A field name, optional white space (obsolete syntax), then a colon.
    if (absl::StartsWithIgnoreCase(absl::string_view(line.data(), line.size()), "received")) {
      std::string_view rest = line.substr(8);
      while (!rest.empty() && (rest.front() == ' ' || rest.front() == '\t')) {
        rest.remove_prefix(1);
      }
      if (!rest.empty() && rest.front() == ':') {
        ++count;
      }
    }
    pos = end + 2;
  }
  return count;
}

void HopCountFilter::Check(std::shared_ptr<const FilterInput> input, FilterDone done) {
  if (CountReceivedHeaders(*input->message, max_received_) < max_received_) {
    done(FilterResult::Continue());
    return;
  }
  done(FilterResult::Reject(
      Reply{554,
            "5.4.6",
            {fmt::format("Too many hops: {} or more Received: headers", max_received_)}},
      "too_many_hops"));
}

}  // namespace backstop::ingest
