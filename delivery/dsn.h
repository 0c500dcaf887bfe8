#pragma once

// Delivery status notifications (DESIGN §3.4; RFC 3464 format, RFC 3461 NOTIFY/RET/ENVID/ORCPT
// rules, RFC 6533 for internationalised addresses): builds the bounce or delay warning for a
// queue entry as a new queue entry, a message like any other, routed by the MX of the sender's
// domain. Pure: the caller passes the time and the DSN's id.
//
// Choices (documented because tests and users rely on them):
// - NOTIFY absent: RFC 3461 §4.1 lets the MTA act as if NOTIFY=FAILURE or FAILURE,DELAY; we use
//   FAILURE,DELAY (as queue.proto documents). NOTIFY=NEVER: no DSN. NOTIFY without FAILURE: no
//   failure DSN for that recipient; without DELAY: no delay DSN. SUCCESS is not ours to report.
// - What is returned: a failure DSN returns the full message (message/rfc822) unless RET=HDRS
//   or the message is larger than DsnOptions::max_returned_message_bytes (default 256 KiB, so
//   a bounce storm of 50 MiB messages cannot fill the sender's mailbox or our queue); then only
//   its header section (text/rfc822-headers). A delay DSN returns the headers only (RFC 3461
//   §4.3: RET concerns failed DSNs).
// - 8-bit and UTF-8: bytes are never altered. When an address involved is non-ASCII or the
//   original was an SMTPUTF8 message, the DSN uses the RFC 6533 types (message/global-delivery-
//   status, message/global, message/global-headers), "utf-8" address types for non-ASCII
//   addresses, and is itself an SMTPUTF8 message. Otherwise a non-ASCII byte in a field of the
//   plain message/delivery-status part becomes '?'. Every part with 8-bit bytes is declared
//   Content-Transfer-Encoding: 8bit and a DSN with any is a BODY=8BITMIME message. The
//   human-readable part is us-ascii, or utf-8 when it quotes non-ASCII text.
// - Field values are made safe: control characters (CR, LF, ...) become spaces, values are cut
//   at 900 bytes and folded at spaces, so a server's reply cannot inject fields or lines.

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"
#include "delivery/smtp_client.h"
#include "proto/queue.pb.h"

namespace backstop::delivery {

enum class DsnAction : uint8_t { kFailed, kDelayed };

// "failed" / "delayed", as in the Action field.
std::string_view DsnActionName(DsnAction action);

// One recipient to report on.
struct DsnRecipient {
  std::string address;  // the envelope recipient (Final-Recipient); NOTIFY and ORCPT are
                        // looked up in the original envelope by this address
  DsnAction action = DsnAction::kFailed;
  std::string status;      // RFC 3463 "5.1.1"
  std::string diagnostic;  // the server's reply after "smtp; ", e.g. "550 5.1.1 no such user";
                           // empty = no Diagnostic-Code (a failure of our own: status says it)
  std::string reason;      // human-readable, for the text part when there is no diagnostic
  std::string remote_mta;  // the server's host name; empty = unknown (no Remote-MTA)
  absl::Time last_attempt = absl::InfinitePast();      // InfinitePast = none
  absl::Time will_retry_until = absl::InfinitePast();  // delayed only; InfinitePast = none
};

struct DsnReport {
  std::string id;  // the DSN's own 16-byte queue id, from the caller
  absl::Time now;  // Date of the DSN, and its arrival time in the queue
  std::vector<DsnRecipient> recipients;
};

struct DsnOptions {
  std::string reporting_mta;  // our [node] hostname: Reporting-MTA, From, Message-ID
  size_t max_returned_message_bytes = size_t{256} << 10;
};

// The failed-recipient entry for an SMTP client result: Status from the reply's enhanced code
// (else "5.0.0" / "4.0.0" by the reply's class), Diagnostic-Code from a server's reply, or the
// reason from a decision of the client (RFC 3464 keeps Diagnostic-Code for the remote MTA).
DsnRecipient DsnRecipientFor(const RecipientResult& result, DsnAction action,
                             std::string_view remote_mta, absl::Time attempt);

// Whether `recipient` asked for a DSN of this kind (the NOTIFY rules above).
bool WantsDsn(const queue::Recipient& recipient, DsnAction action);

// The DSN for `report` about `original`, or nullopt when none is due: the reverse-path is null
// (never a DSN to <>), has no domain, or no reported recipient wants one.
std::optional<queue::QueueEntry> BuildDsn(const queue::QueueEntry& original,
                                          const DsnReport& report, const DsnOptions& options);

// How BuildDsn writes a field value (for checks of round trips): control characters become
// spaces, then the value is cut at 900 bytes; with kAscii non-ASCII bytes become '?'.
enum class DsnCharset : uint8_t { kAscii, kUtf8 };
std::string DsnFieldValue(std::string_view value, DsnCharset charset);

}  // namespace backstop::delivery
