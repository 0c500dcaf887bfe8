// libFuzzer target for the DSN builder and parser (delivery/dsn.h, delivery/dsn_parse.h).
//
// 1. ParseDsn on the raw input must return, never crash or hang.
// 2. A DSN built from fuzzed pieces (returned message, sender, recipient, server reply) must
//    parse back with exactly the fields the builder promises: one recipient group, the
//    sanitised Final-Recipient and Diagnostic-Code, and the returned message or its headers
//    byte for byte. Whatever a remote server replies or a sender sends cannot break the report.
//
// Input layout: one flag byte, then up to four pieces separated by NUL bytes: the original
// message, the reverse-path's local part, the server's reply, the recipient address.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"
#include "delivery/canonicalize.h"
#include "delivery/dsn.h"
#include "delivery/dsn_parse.h"
#include "proto/queue.pb.h"

namespace {

using backstop::delivery::DsnCharset;

void Check(bool condition) {
  if (!condition) {
    std::abort();
  }
}

std::vector<std::string_view> Pieces(std::string_view input) {
  std::vector<std::string_view> pieces;
  while (pieces.size() < 3) {
    size_t nul = input.find('\0');
    if (nul == std::string_view::npos) {
      break;
    }
    pieces.push_back(input.substr(0, nul));
    input.remove_prefix(nul + 1);
  }
  pieces.push_back(input);
  pieces.resize(4);
  return pieces;
}

std::string_view HeaderSection(std::string_view message) {
  if (message.starts_with("\r\n")) {
    return {};
  }
  size_t end = message.find("\r\n\r\n");
  return end == std::string_view::npos ? message : message.substr(0, end + 2);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  (void)backstop::delivery::ParseDsn(input);
  if (input.empty()) {
    return 0;
  }
  const uint8_t flags = data[0];
  std::vector<std::string_view> pieces = Pieces(input.substr(1));

  backstop::queue::QueueEntry original;
  original.set_id("fuzz-original-id");
  original.set_message(std::string(pieces[0]));
  backstop::queue::Envelope& envelope = *original.mutable_envelope();
  std::string reverse_path = std::string(pieces[1]) + "@sender.example";
  envelope.set_reverse_path(reverse_path);
  envelope.set_smtputf8((flags & 1) != 0);
  envelope.set_ret((flags & 2) != 0 ? backstop::queue::RET_HDRS : backstop::queue::RET_FULL);
  envelope.set_arrival_ms(1'790'000'000'000);
  std::string address(pieces[3]);
  backstop::queue::Recipient& recipient = *envelope.add_recipients();
  recipient.set_address(address);

  backstop::delivery::DsnRecipient failed;
  failed.address = address;
  failed.action = (flags & 4) != 0 ? backstop::delivery::DsnAction::kDelayed
                                   : backstop::delivery::DsnAction::kFailed;
  failed.status = failed.action == backstop::delivery::DsnAction::kFailed ? "5.1.1" : "4.4.1";
  failed.diagnostic = std::string(pieces[2]);
  failed.remote_mta = "mx1.example.com";
  backstop::delivery::DsnOptions options{.reporting_mta = "mx2.example.net",
                                         .max_returned_message_bytes = 4096};
  std::optional<backstop::queue::QueueEntry> dsn =
      backstop::delivery::BuildDsn(original,
                                   {.id = std::string(16, '\x5a'),
                                    .now = absl::FromUnixSeconds(1'790'003'600),
                                    .recipients = {failed}},
                                   options);
  Check(dsn.has_value());  // NOTIFY absent: FAILURE,DELAY

  absl::StatusOr<backstop::delivery::ParsedDsn> parsed =
      backstop::delivery::ParseDsn(dsn->message());
  Check(parsed.ok());
  Check(parsed->parts.size() == 3);
  Check(parsed->per_recipient.size() == 1);
  bool global = envelope.smtputf8() || backstop::delivery::HasEightBitBytes(reverse_path) ||
                backstop::delivery::HasEightBitBytes(address);
  DsnCharset charset = global ? DsnCharset::kUtf8 : DsnCharset::kAscii;
  Check(dsn->envelope().smtputf8() == global);
  const backstop::delivery::HeaderFields& fields = parsed->per_recipient[0];
  std::string type = backstop::delivery::HasEightBitBytes(address) ? "utf-8" : "rfc822";
  Check(fields.Get("Final-Recipient") ==
        type + "; " + backstop::delivery::DsnFieldValue(address, charset));
  if (failed.diagnostic.empty()) {
    Check(!fields.Get("Diagnostic-Code").has_value());
  } else {
    Check(fields.Get("Diagnostic-Code") ==
          "smtp; " + backstop::delivery::DsnFieldValue(failed.diagnostic, charset));
  }
  bool full = failed.action == backstop::delivery::DsnAction::kFailed && (flags & 2) == 0 &&
              pieces[0].size() <= options.max_returned_message_bytes;
  Check(parsed->parts[2].body == (full ? pieces[0] : HeaderSection(pieces[0])));
  return 0;
}
