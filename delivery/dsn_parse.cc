#include "delivery/dsn_parse.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "common/status.h"

namespace backstop::delivery {
namespace {

std::string Lower(std::string_view text) {
  return absl::AsciiStrToLower(absl::string_view(text.data(), text.size()));
}

std::string_view Trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) {
    text.remove_prefix(1);
  }
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) {
    text.remove_suffix(1);
  }
  return text;
}

// Splits `entity` at its first empty line into the header block and the body. An entity that
// starts with CRLF has no headers.
absl::Status SplitEntity(std::string_view entity, std::string_view* headers,
                         std::string_view* body) {
  if (entity.starts_with("\r\n")) {
    *headers = {};
    *body = entity.substr(2);
    return absl::OkStatus();
  }
  size_t end = entity.find("\r\n\r\n");
  if (end == std::string_view::npos) {
    return absl::InvalidArgumentError("no empty line after the header section");
  }
  *headers = entity.substr(0, end + 2);
  *body = entity.substr(end + 4);
  return absl::OkStatus();
}

// The media type of a Content-Type value and one of its parameters.
std::string MediaType(std::string_view content_type) {
  return Lower(Trim(content_type.substr(0, content_type.find(';'))));
}

std::optional<std::string> Parameter(std::string_view content_type, std::string_view name) {
  size_t i = content_type.find(';');
  while (i != std::string_view::npos && i < content_type.size()) {
    std::string_view rest = content_type.substr(i + 1);
    size_t equals = rest.find('=');
    if (equals == std::string_view::npos) {
      return std::nullopt;
    }
    std::string key = Lower(Trim(rest.substr(0, equals)));
    rest = rest.substr(equals + 1);
    while (!rest.empty() && (rest.front() == ' ' || rest.front() == '\t')) {
      rest.remove_prefix(1);
    }
    std::string value;
    size_t consumed = 0;
    if (!rest.empty() && rest.front() == '"') {
      size_t close = rest.find('"', 1);
      if (close == std::string_view::npos) {
        return std::nullopt;
      }
      value = std::string(rest.substr(1, close - 1));
      consumed = close + 1;
    } else {
      size_t end = rest.find(';');
      value = std::string(Trim(rest.substr(0, end)));
      consumed = end == std::string_view::npos ? rest.size() : end;
    }
    if (key == Lower(name)) {
      return value;
    }
    size_t next = rest.find(';', consumed);
    if (next == std::string_view::npos) {
      return std::nullopt;
    }
    i = static_cast<size_t>(rest.data() - content_type.data()) + next;
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::string> HeaderFields::Get(std::string_view name) const {
  for (const HeaderField& field : fields_) {
    if (absl::EqualsIgnoreCase(absl::string_view(field.name.data(), field.name.size()),
                               absl::string_view(name.data(), name.size()))) {
      return field.value;
    }
  }
  return std::nullopt;
}

size_t HeaderFields::Count(std::string_view name) const {
  size_t count = 0;
  for (const HeaderField& field : fields_) {
    count += absl::EqualsIgnoreCase(absl::string_view(field.name.data(), field.name.size()),
                                    absl::string_view(name.data(), name.size()))
                 ? 1
                 : 0;
  }
  return count;
}

absl::StatusOr<HeaderFields> ParseHeaderBlock(std::string_view block) {
  std::vector<HeaderField> fields;
  size_t i = 0;
  while (i < block.size()) {
    size_t end = block.find("\r\n", i);
    if (end == std::string_view::npos) {
      return absl::InvalidArgumentError("header line without CRLF");
    }
    std::string_view line = block.substr(i, end - i);
    i = end + 2;
    if (line.empty()) {
      return absl::InvalidArgumentError("empty line inside a header block");
    }
    if (line.front() == ' ' || line.front() == '\t') {
      if (fields.empty()) {
        return absl::InvalidArgumentError("continuation line before the first field");
      }
      fields.back().value.append(line);
      continue;
    }
    size_t colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0) {
      return absl::InvalidArgumentError("header line without a field name");
    }
    std::string_view name = line.substr(0, colon);
    for (char c : name) {
      if (c <= ' ' || c > '~') {
        return absl::InvalidArgumentError("bad character in a field name");
      }
    }
    std::string_view value = line.substr(colon + 1);
    if (!value.empty() && value.front() == ' ') {
      value.remove_prefix(1);
    }
    fields.push_back({std::string(name), std::string(value)});
  }
  return HeaderFields(std::move(fields));
}

absl::StatusOr<ParsedDsn> ParseDsn(std::string_view message) {
  ParsedDsn dsn;
  std::string_view header_block;
  std::string_view body;
  RETURN_IF_ERROR(SplitEntity(message, &header_block, &body));
  ASSIGN_OR_RETURN(dsn.headers, ParseHeaderBlock(header_block));
  std::optional<std::string> content_type = dsn.headers.Get("Content-Type");
  if (!content_type.has_value() || MediaType(*content_type) != "multipart/report") {
    return absl::InvalidArgumentError("not a multipart/report");
  }
  std::optional<std::string> report_type = Parameter(*content_type, "report-type");
  std::optional<std::string> boundary = Parameter(*content_type, "boundary");
  if (!report_type.has_value() || !boundary.has_value() || boundary->empty()) {
    return absl::InvalidArgumentError("multipart/report without report-type or boundary");
  }
  dsn.report_type = Lower(*report_type);
  dsn.boundary = *boundary;

  // Delimiters are CRLF "--" boundary followed by CRLF, or by "--" for the last one; the first
  // may open the body without a CRLF. A longer boundary that only starts like ours is content.
  const std::string delimiter = "\r\n--" + dsn.boundary;
  const std::string framed = "\r\n" + std::string(body);
  auto find_delimiter = [&](size_t from) {
    for (size_t at = framed.find(delimiter, from); at != std::string::npos;
         at = framed.find(delimiter, at + 1)) {
      size_t after = at + delimiter.size();
      if (framed.compare(after, 2, "--") == 0 || framed.compare(after, 2, "\r\n") == 0) {
        return at;
      }
    }
    return std::string::npos;
  };
  bool closed = false;
  for (size_t at = find_delimiter(0); at != std::string::npos;) {
    size_t start = at + delimiter.size() + 2;
    if (framed.compare(at + delimiter.size(), 2, "--") == 0) {
      closed = true;
      break;
    }
    size_t next = find_delimiter(start);
    if (next == std::string::npos) {
      return absl::InvalidArgumentError("body part without a closing delimiter");
    }
    MimePart part;
    std::string_view part_headers;
    std::string_view part_body;
    RETURN_IF_ERROR(SplitEntity(std::string_view(framed).substr(start, next - start), &part_headers,
                                &part_body));
    ASSIGN_OR_RETURN(part.headers, ParseHeaderBlock(part_headers));
    part.media_type = MediaType(part.headers.Get("Content-Type").value_or("text/plain"));
    part.body = std::string(part_body);
    dsn.parts.push_back(std::move(part));
    at = next;
  }
  if (!closed) {
    return absl::InvalidArgumentError("multipart/report without a close delimiter");
  }

  const MimePart* status = nullptr;
  for (const MimePart& part : dsn.parts) {
    if (part.media_type == "message/delivery-status" ||
        part.media_type == "message/global-delivery-status") {
      status = &part;
      break;
    }
  }
  if (status == nullptr) {
    return absl::InvalidArgumentError("no delivery-status part");
  }
  // Groups of fields separated by empty lines: the per-message group, then one per recipient.
  std::string_view rest = status->body;
  bool first = true;
  while (!rest.empty()) {
    while (rest.starts_with("\r\n")) {
      rest.remove_prefix(2);
    }
    if (rest.empty()) {
      break;
    }
    size_t end = rest.find("\r\n\r\n");
    std::string_view group = end == std::string_view::npos ? rest : rest.substr(0, end + 2);
    rest = end == std::string_view::npos ? std::string_view() : rest.substr(end + 4);
    // The CRLF before the closing delimiter belongs to the delimiter: the last line of the
    // last group usually has none left.
    std::string lines(group);
    if (!lines.ends_with("\r\n")) {
      lines += "\r\n";
    }
    ASSIGN_OR_RETURN(HeaderFields fields, ParseHeaderBlock(lines));
    if (first) {
      dsn.per_message = std::move(fields);
      first = false;
    } else {
      dsn.per_recipient.push_back(std::move(fields));
    }
  }
  if (first) {
    return absl::InvalidArgumentError("empty delivery-status part");
  }
  return dsn;
}

}  // namespace backstop::delivery
