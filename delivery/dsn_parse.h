#pragma once

// A reader of RFC 3464 delivery status notifications (multipart/report with a
// message/delivery-status or message/global-delivery-status part). It checks DSNs built by
// delivery/dsn.h in tests and the fuzz target, and reads any MTA's DSN that uses CRLF line
// ends. Pure functions on bytes; linear in the size of the message.

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace backstop::delivery {

// A header field: its name as written and its value unfolded (every CRLF before white space
// removed), without the one space after the colon.
struct HeaderField {
  std::string name;
  std::string value;
};

// Fields of one header block, looked up case-insensitively.
class HeaderFields {
 public:
  HeaderFields() = default;
  explicit HeaderFields(std::vector<HeaderField> fields) : fields_(std::move(fields)) {}

  // The value of the first field called `name`; nullopt when there is none.
  std::optional<std::string> Get(std::string_view name) const;
  size_t Count(std::string_view name) const;
  const std::vector<HeaderField>& all() const { return fields_; }

 private:
  std::vector<HeaderField> fields_;
};

// Parses a header block: lines ending with CRLF, continuation lines starting with SP or HTAB.
absl::StatusOr<HeaderFields> ParseHeaderBlock(std::string_view block);

struct MimePart {
  HeaderFields headers;
  std::string media_type;  // "message/delivery-status", lower-cased, without parameters
  std::string body;        // the bytes between the part's empty line and the next delimiter
};

struct ParsedDsn {
  HeaderFields headers;     // of the DSN message itself
  std::string report_type;  // the Content-Type's report-type parameter, lower-cased
  std::string boundary;
  std::vector<MimePart> parts;
  HeaderFields per_message;  // Reporting-MTA, Original-Envelope-Id, Arrival-Date, ...
  std::vector<HeaderFields> per_recipient;
};

absl::StatusOr<ParsedDsn> ParseDsn(std::string_view message);

}  // namespace backstop::delivery
