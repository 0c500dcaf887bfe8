#pragma once

// Our trace header (RFC 5321 §4.4) and the hop count read from the headers a message already
// carries (loop detection).

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "absl/time/time.h"
#include "ingest/filter.h"
#include "ingest/smtp_session.h"

namespace backstop::ingest {

struct ReceivedFields {
  std::string helo;         // as the client gave it
  std::string client_rdns;  // verified PTR name, empty = unknown
  std::string client_ip;
  std::string hostname;  // ours
  bool esmtp = true;
  bool smtputf8 = false;
  std::optional<TlsInfo> tls;
  std::string id;         // the queue id of this copy
  std::string recipient;  // "for <...>" only when the copy has exactly one recipient
  absl::Time time;
};

// "Received: from helo (rdns [ip])\r\n\t(using TLSv1.3 with cipher ...)\r\n\tby host (Backstop)
// with ESMTPS id ...\r\n\tfor <rcpt>; Sat, 28 Nov 2026 00:41:07 +0000\r\n" — folded, with every
// client-supplied text stripped of anything that could end the header or unbalance a comment.
std::string BuildReceivedHeader(const ReceivedFields& fields);

// How many Received: fields the header section of `message` (up to the first empty line)
// has. Stops counting at `limit` (the hop-count check only needs to know whether it is reached).
size_t CountReceivedHeaders(std::string_view message, size_t limit);

// "hops", the first end-of-data filter: a message that already carries `max_received`
// Received: fields is looping (RFC 5321 §6.3) and gets 554 5.4.6 before any other check.
class HopCountFilter : public Filter {
 public:
  explicit HopCountFilter(size_t max_received) : max_received_(max_received) {}
  std::string_view name() const override { return "hops"; }
  bool Handles(Stage stage) const override { return stage == Stage::kEndOfData; }
  void Check(std::shared_ptr<const FilterInput> input, FilterDone done) override;

 private:
  const size_t max_received_;
};

}  // namespace backstop::ingest
