#include "ingest/header_check.h"

#include <algorithm>
#include <array>
#include <cstddef>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "absl/strings/ascii.h"
#include "ingest/address.h"

namespace backstop::ingest {
namespace {

// RFC 5322 §3.6, the fields a message may carry once at most, as they are usually spelled.
constexpr std::array<std::string_view, 11> kSingleInstance = {
    "Date", "From",       "Sender",      "Reply-To",   "To",     "Cc",
    "Bcc",  "Message-ID", "In-Reply-To", "References", "Subject"};
constexpr size_t kFrom = 1;  // kSingleInstance[kFrom] == "From"

bool IsWsp(char c) {
  return c == ' ' || c == '\t';
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return absl::ascii_tolower(static_cast<unsigned char>(x)) ==
                  absl::ascii_tolower(static_cast<unsigned char>(y));
         });
}

// RFC 5322 atext, with RFC 6532's UTF-8 octets (whose validity is checked for the whole
// section elsewhere).
bool IsAtext(char c) {
  const auto u = static_cast<unsigned char>(c);
  return absl::ascii_isalnum(u) || u >= 0x80 ||
         std::string_view("!#$%&'*+-/=?^_`{|}~").find(c) != std::string_view::npos;
}

// A recursive-descent reader of one mailbox (RFC 5322 §3.4) over a field body. Lives on the
// caller's stack; single-threaded.
class MailboxParser {
 public:
  explicit MailboxParser(std::string_view text) : text_(text) {}

  // The whole text is one mailbox (surrounded by optional CFWS).
  bool ParseWholeMailbox() {
    const size_t start = pos_;
    if (AddrSpec() && AtEnd()) {
      return true;
    }
    pos_ = start;
    ok_ = true;
    // name-addr: [display-name] angle-addr; obs-phrase allows '.' between words.
    SkipCfws();
    while (Word() || Consume('.')) {
    }
    if (!Consume('<') || !AddrSpec() || !Consume('>')) {
      return false;
    }
    return AtEnd();
  }

 private:
  bool AtEnd() {
    SkipCfws();
    return ok_ && pos_ == text_.size();
  }

  bool Peek(char c) const { return pos_ < text_.size() && text_[pos_] == c; }

  bool Consume(char c) {
    SkipCfws();
    if (!Peek(c)) {
      return false;
    }
    ++pos_;
    SkipCfws();
    return true;
  }

  // Folding white space and (nested) comments; an unclosed comment spoils the parse.
  void SkipCfws() {
    while (pos_ < text_.size()) {
      const char c = text_[pos_];
      if (IsWsp(c) || c == '\r' || c == '\n') {
        ++pos_;
      } else if (c == '(') {
        int depth = 0;
        while (pos_ < text_.size()) {
          const char d = text_[pos_++];
          if (d == '\\') {
            ++pos_;
          } else if (d == '(') {
            ++depth;
          } else if (d == ')' && --depth == 0) {
            break;
          }
        }
        if (depth != 0) {
          ok_ = false;
          return;
        }
      } else {
        return;
      }
    }
  }

  bool Atom() {
    const size_t start = pos_;
    while (pos_ < text_.size() && IsAtext(text_[pos_])) {
      ++pos_;
    }
    return pos_ > start;
  }

  bool QuotedString() {
    if (!Peek('"')) {
      return false;
    }
    const size_t start = pos_++;
    while (pos_ < text_.size()) {
      const char c = text_[pos_++];
      if (c == '\\') {
        if (pos_ == text_.size()) {
          break;
        }
        ++pos_;
      } else if (c == '"') {
        return true;
      }
    }
    pos_ = start;
    return false;
  }

  // atom / quoted-string, with CFWS around.
  bool Word() {
    SkipCfws();
    const bool found = Atom() || QuotedString();
    SkipCfws();
    return found && ok_;
  }

  // local-part "@" domain; the local part as dot-atom, quoted-string or obs-local-part.
  bool AddrSpec() {
    if (!Word()) {
      return false;
    }
    while (Consume('.')) {
      if (!Word()) {
        return false;
      }
    }
    if (!Consume('@')) {
      return false;
    }
    if (Peek('[')) {
      // domain-literal: dtext up to ']'.
      const size_t close = text_.find(']', pos_);
      if (close == std::string_view::npos ||
          text_.substr(pos_ + 1, close - pos_ - 1).find_first_of("[\\") != std::string_view::npos) {
        return false;
      }
      pos_ = close + 1;
      SkipCfws();
      return ok_;
    }
    SkipCfws();
    if (!Atom()) {
      return false;
    }
    while (Peek('.')) {
      ++pos_;
      if (!Atom()) {
        return false;
      }
    }
    SkipCfws();
    return ok_;
  }

  std::string_view text_;
  size_t pos_ = 0;
  bool ok_ = true;
};

// The field body split at commas outside quoted strings, comments and angle brackets.
std::vector<std::string_view> SplitMailboxList(std::string_view value) {
  std::vector<std::string_view> elements;
  size_t start = 0;
  int comment_depth = 0;
  bool quoted = false;
  bool angle = false;
  for (size_t i = 0; i < value.size(); ++i) {
    const char c = value[i];
    if (c == '\\' && (quoted || comment_depth > 0)) {
      ++i;
    } else if (quoted) {
      quoted = c != '"';
    } else if (comment_depth > 0) {
      comment_depth += c == '(' ? 1 : c == ')' ? -1 : 0;
    } else if (c == '"') {
      quoted = true;
    } else if (c == '(') {
      comment_depth = 1;
    } else if (c == '<') {
      angle = true;
    } else if (c == '>') {
      angle = false;
    } else if (c == ',' && !angle) {
      elements.push_back(value.substr(start, i - start));
      start = i + 1;
    }
  }
  elements.push_back(value.substr(std::min(start, value.size())));
  return elements;
}

HeaderProblem Problem(std::string reason, std::string text) {
  return {std::move(reason), std::move(text)};
}

}  // namespace

bool HasValidMailbox(std::string_view value) {
  for (std::string_view element : SplitMailboxList(value)) {
    if (MailboxParser(element).ParseWholeMailbox()) {
      return true;
    }
  }
  return false;
}

std::optional<HeaderProblem> CheckHeaders(std::string_view message,
                                          const HeaderCheckOptions& options) {
  // The header section ends before the first empty line. Only the first max_size + 4 octets
  // are searched for it, so that a huge header costs no more than the limit.
  size_t end = message.size();
  if (message.starts_with("\r\n")) {
    end = 0;
  } else if (const size_t blank = message.substr(0, options.max_size + 4).find("\r\n\r\n");
             blank != std::string_view::npos) {
    end = blank + 2;
  }
  if (end > options.max_size) {
    return Problem("header_too_large",
                   fmt::format("header section larger than {} octets", options.max_size));
  }
  const std::string_view section = message.substr(0, end);

  std::array<int, kSingleInstance.size()> seen{};
  bool eight_bit = false;
  bool in_from = false;  // the line before was From: or its continuation
  std::string from;      // the From: field body, unfolded
  size_t pos = 0;
  while (pos < section.size()) {
    // The last line of a BDAT message may lack its CRLF.
    size_t lf = section.find('\n', pos);
    const bool terminated = lf != std::string_view::npos;
    if (!terminated) {
      lf = section.size();
    } else if (lf == pos || section[lf - 1] != '\r') {
      return Problem("bare_cr_lf", "bare CR or LF in the header section");
    }
    const std::string_view line = section.substr(pos, terminated ? lf - 1 - pos : lf - pos);
    pos = lf + 1;
    if (line.empty() || line.find('\r') != std::string_view::npos) {
      return Problem("bare_cr_lf", "bare CR or LF in the header section");
    }
    for (char c : line) {
      eight_bit = eight_bit || static_cast<unsigned char>(c) >= 0x80;
    }
    if (IsWsp(line.front())) {
      if (line.data() == section.data()) {
        return Problem("malformed_header", "the header section starts with a continuation line");
      }
      if (in_from) {
        from.append(line);
      }
      continue;
    }
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos) {
      return Problem("malformed_header", "a header line without a field name and colon");
    }
    std::string_view name = line.substr(0, colon);
    while (!name.empty() && IsWsp(name.back())) {
      name.remove_suffix(1);
    }
    if (name.empty()) {
      return Problem("malformed_header", "a header field without a name");
    }
    for (char c : name) {
      if (c < 33 || c > 126) {
        return Problem("malformed_header",
                       "a header field name with a byte outside printable ASCII");
      }
    }
    in_from = false;
    for (size_t i = 0; i < kSingleInstance.size(); ++i) {
      if (!EqualsIgnoreCase(name, kSingleInstance[i])) {
        continue;
      }
      if (++seen[i] > 1) {
        return Problem("duplicate_header",
                       fmt::format("more than one {}: header", kSingleInstance[i]));
      }
      if (i == kFrom) {
        in_from = true;
        from.assign(line.substr(colon + 1));
      }
    }
  }
  if (eight_bit && !options.smtputf8) {
    return Problem("8bit_header", "8-bit octets in the header section without SMTPUTF8");
  }
  if (eight_bit && !IsValidUtf8(section)) {
    return Problem("invalid_utf8", "the header section is not valid UTF-8");
  }
  if (seen[kFrom] == 0) {
    return Problem("from_missing", "no From: header");
  }
  if (!HasValidMailbox(from)) {
    return Problem("from_invalid", "no valid address in the From: header");
  }
  return std::nullopt;
}

void HeaderFilter::Check(std::shared_ptr<const FilterInput> input, FilterDone done) {
  if (!input->message) {
    done(FilterResult::Continue());
    return;
  }
  std::optional<HeaderProblem> problem =
      CheckHeaders(*input->message, {.max_size = max_size_, .smtputf8 = input->mail.smtputf8});
  if (!problem) {
    done(FilterResult::Continue());
    return;
  }
  done(FilterResult::Reject(
      Reply{554, "5.6.0", {"Message header rejected: " + std::move(problem->text)}},
      std::move(problem->reason)));
}

}  // namespace backstop::ingest
