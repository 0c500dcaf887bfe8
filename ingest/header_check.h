#pragma once

// Header checks at the end of data (DESIGN §3.3, RFC 5322): a backup MX that queues a message
// its primary would refuse has to bounce it later, so the header section is checked here,
// before the 250. Refusals are 554 5.6.0 with a short explanation.
//
// Rules (tests rely on them):
// - The header section is everything up to the first empty line (the whole message when there
//   is none); it may not be larger than `max_size` octets.
// - No bare CR or LF (the session already refuses them in DATA; this is the cheap second look).
// - Each line is a field `name:` (printable ASCII except ':', optional spaces before the colon
//   as RFC 5322 §4.5 obs-optional allows) or a folded continuation (starts with a space or tab).
// - Octets above 127 only when MAIL had SMTPUTF8, and then well-formed UTF-8 (RFC 6532).
// - Exactly one From:, in which at least one mailbox parses (addr-spec or display-name
//   <addr-spec>, with comments and quoted strings; groups are not mailboxes).
// - At most one of each single-instance field of RFC 5322 §3.6: Date, From, Sender, Reply-To,
//   To, Cc, Bcc, Message-ID, In-Reply-To, References, Subject.
//
// Pure functions and a filter without state: callable from any thread.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "common/config.h"
#include "ingest/filter.h"

namespace backstop::ingest {

struct HeaderCheckOptions {
  uint64_t max_size = uint64_t{64} << 10;
  bool smtputf8 = false;  // MAIL FROM had the SMTPUTF8 parameter
};

struct HeaderProblem {
  std::string reason;  // a fixed word for metrics: "duplicate_header", "from_missing", ...
  std::string text;    // for the reply: what is wrong, never more than a field name of input
};

// nullopt when `message` (CRLF line ends, as the session hands it over) passes every rule.
std::optional<HeaderProblem> CheckHeaders(std::string_view message,
                                          const HeaderCheckOptions& options);

// Whether `value` (a From: field body, unfolded or not) holds at least one RFC 5322 mailbox.
bool HasValidMailbox(std::string_view value);

// CheckHeaders as the filter of the end-of-data stage ("headers").
class HeaderFilter : public Filter {
 public:
  explicit HeaderFilter(const HeadersFilterConfig& config) : max_size_(config.max_size) {}
  std::string_view name() const override { return "headers"; }
  bool Handles(Stage stage) const override { return stage == Stage::kEndOfData; }
  void Check(std::shared_ptr<const FilterInput> input, FilterDone done) override;

 private:
  const uint64_t max_size_;
};

}  // namespace backstop::ingest
