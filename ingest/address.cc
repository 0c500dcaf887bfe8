#include "ingest/address.h"

#include <arpa/inet.h>

#include <cstring>

namespace backstop::ingest {
namespace {

bool IsAlpha(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
bool IsDigit(unsigned char c) {
  return c >= '0' && c <= '9';
}
bool IsNonAscii(unsigned char c) {
  return c >= 0x80;
}

// RFC 5322 atext, extended by RFC 6531 with UTF8-non-ascii.
bool IsAtext(unsigned char c) {
  return IsAlpha(c) || IsDigit(c) || IsNonAscii(c) ||
         (c != 0 && std::strchr("!#$%&'*+-/=?^_`{|}~", c) != nullptr);
}

// RFC 5321 qtextSMTP (+ UTF8-non-ascii).
bool IsQtext(unsigned char c) {
  return (c >= 32 && c <= 126 && c != '"' && c != '\\') || IsNonAscii(c);
}

char AsciiLower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

std::string AsciiLowered(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    c = AsciiLower(c);
  }
  return out;
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) {
    return false;
  }
  for (size_t i = 0; i < a.size(); ++i) {
    if (AsciiLower(a[i]) != AsciiLower(b[i])) {
      return false;
    }
  }
  return true;
}

// A cursor over the text of one path.
class Cursor {
 public:
  explicit Cursor(std::string_view text) : text_(text) {}
  bool done() const { return pos_ >= text_.size(); }
  unsigned char peek() const { return done() ? 0 : static_cast<unsigned char>(text_[pos_]); }
  bool Take(char c) {
    if (!done() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  size_t pos() const { return pos_; }
  void Advance() { ++pos_; }
  std::string_view Slice(size_t from) const { return text_.substr(from, pos_ - from); }

 private:
  std::string_view text_;
  size_t pos_ = 0;
};

// sub-domain = Let-dig [Ldh-str], with U-labels (RFC 6531) as letters.
bool ParseSubDomain(Cursor& in) {
  const size_t start = in.pos();
  unsigned char last = 0;
  while (!in.done()) {
    const unsigned char c = in.peek();
    if (IsAlpha(c) || IsDigit(c) || IsNonAscii(c) || (c == '-' && in.pos() != start)) {
      last = c;
      in.Advance();
    } else {
      break;
    }
  }
  return in.pos() > start && last != '-' && in.pos() - start <= 63;
}

// Domain = sub-domain *("." sub-domain), then at most one trailing dot (removed).
bool ParseDomain(Cursor& in, std::string_view* domain) {
  const size_t start = in.pos();
  if (!ParseSubDomain(in)) {
    return false;
  }
  while (in.Take('.')) {
    if (in.peek() == '>') {
      *domain = in.Slice(start);
      domain->remove_suffix(1);
      return true;
    }
    if (!ParseSubDomain(in)) {
      return false;
    }
  }
  *domain = in.Slice(start);
  return true;
}

bool IsIpv4Literal(std::string_view s) {
  int parts = 0;
  size_t i = 0;
  while (true) {
    size_t digits = 0;
    int value = 0;
    while (i < s.size() && IsDigit(s[i]) && digits < 3) {
      value = value * 10 + (s[i] - '0');
      ++i;
      ++digits;
    }
    if (digits == 0 || value > 255) {
      return false;
    }
    ++parts;
    if (i == s.size()) {
      return parts == 4;
    }
    if (s[i] != '.' || parts == 4) {
      return false;
    }
    ++i;
  }
}

// address-literal = "[" ( IPv4-address-literal / IPv6-address-literal ) "]"
bool ParseAddressLiteral(Cursor& in, std::string_view* literal) {
  const size_t start = in.pos();
  if (!in.Take('[')) {
    return false;
  }
  const size_t content = in.pos();
  while (!in.done() && in.peek() != ']') {
    if (in.peek() < 33 || in.peek() > 126 || in.peek() == '[' || in.peek() == '\\') {
      return false;
    }
    in.Advance();
  }
  const std::string_view inner = in.Slice(content);
  if (!in.Take(']')) {
    return false;
  }
  constexpr std::string_view kIpv6Tag = "IPv6:";
  if (inner.size() > kIpv6Tag.size() &&
      EqualsIgnoreCase(inner.substr(0, kIpv6Tag.size()), kIpv6Tag)) {
    const std::string address(inner.substr(kIpv6Tag.size()));
    in6_addr parsed{};
    if (inet_pton(AF_INET6, address.c_str(), &parsed) != 1) {
      return false;
    }
  } else if (!IsIpv4Literal(inner)) {
    return false;
  }
  *literal = in.Slice(start);
  return true;
}

// Local-part = Dot-string / Quoted-string; fills the decoded local part.
bool ParseLocalPart(Cursor& in, Path& path) {
  if (in.Take('"')) {
    path.quoted_local_part = true;
    while (!in.done() && in.peek() != '"') {
      if (in.Take('\\')) {
        if (in.peek() < 32 || in.peek() > 126) {
          return false;
        }
      } else if (!IsQtext(in.peek())) {
        return false;
      }
      path.local_part.push_back(static_cast<char>(in.peek()));
      in.Advance();
    }
    return in.Take('"');
  }
  const size_t start = in.pos();
  while (true) {
    const size_t atom = in.pos();
    while (IsAtext(in.peek()) && !in.done()) {
      in.Advance();
    }
    if (in.pos() == atom) {
      return false;  // empty atom: leading, trailing or double dot
    }
    if (!in.Take('.')) {
      break;
    }
  }
  path.local_part = std::string(in.Slice(start));
  return true;
}

// A-d-l = At-domain *( "," At-domain ) ":" — consumed and ignored.
bool SkipSourceRoute(Cursor& in) {
  do {
    std::string_view ignored;
    if (!in.Take('@') || !ParseDomain(in, &ignored)) {
      return false;
    }
  } while (in.Take(','));
  return in.Take(':');
}

bool HasNonAscii(std::string_view s) {
  for (const char c : s) {
    if (IsNonAscii(static_cast<unsigned char>(c))) {
      return true;
    }
  }
  return false;
}

}  // namespace

PathParseResult ParsePath(std::string_view text, PathType type) {
  PathParseResult result;
  result.error = AddressError::kSyntax;
  Cursor in(text);
  if (!in.Take('<')) {
    return result;
  }
  Path& path = result.path;
  if (in.Take('>')) {
    if (type != PathType::kReversePath) {
      return result;
    }
    path.null = true;
    result.rest = text.substr(in.pos());
    result.error = AddressError::kNone;
    return result;
  }
  if (in.peek() == '@') {
    if (!SkipSourceRoute(in)) {
      return result;
    }
    path.source_route = true;
  }
  const size_t mailbox_start = in.pos();
  if (!ParseLocalPart(in, path)) {
    return result;
  }
  const size_t local_part_octets = in.pos() - mailbox_start;
  size_t domain_octets = 0;
  if (in.Take('@')) {
    std::string_view domain;
    if (in.peek() == '[') {
      if (!ParseAddressLiteral(in, &domain)) {
        return result;
      }
      path.address_literal = true;
    } else if (!ParseDomain(in, &domain)) {
      return result;
    }
    domain_octets = domain.size();
    path.domain = AsciiLowered(domain);
  } else if (type != PathType::kForwardPath || path.source_route || path.quoted_local_part ||
             !EqualsIgnoreCase(path.local_part, "postmaster")) {
    return result;
  } else {
    path.postmaster = true;
  }
  path.address = std::string(in.Slice(mailbox_start));
  if (!in.Take('>')) {
    return result;
  }
  const std::string_view whole = text.substr(0, in.pos());
  if (!IsValidUtf8(whole)) {
    return result;
  }
  path.non_ascii = HasNonAscii(whole);
  result.rest = text.substr(in.pos());
  if (whole.size() > kMaxPathLength || local_part_octets > kMaxLocalPartLength ||
      domain_octets > kMaxDomainLength) {
    result.error = AddressError::kTooLong;
    return result;
  }
  result.error = AddressError::kNone;
  return result;
}

std::optional<std::vector<EsmtpParam>> ParseEsmtpParams(std::string_view text) {
  std::vector<EsmtpParam> params;
  size_t i = 0;
  while (true) {
    const size_t spaces = i;
    while (i < text.size() && text[i] == ' ') {
      ++i;
    }
    if (i == text.size()) {
      return params;
    }
    if (i == spaces) {
      return std::nullopt;  // parameters must be separated by spaces
    }
    EsmtpParam param;
    // esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
    while (i < text.size()) {
      const unsigned char c = static_cast<unsigned char>(text[i]);
      if (!(IsAlpha(c) || IsDigit(c) || (c == '-' && !param.keyword.empty()))) {
        break;
      }
      param.keyword.push_back(static_cast<char>(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c));
      ++i;
    }
    if (param.keyword.empty()) {
      return std::nullopt;
    }
    if (i < text.size() && text[i] == '=') {
      ++i;
      // esmtp-value = 1*(%d33-60 / %d62-126)
      const size_t start = i;
      while (i < text.size() && text[i] >= 33 && text[i] <= 126 && text[i] != '=') {
        ++i;
      }
      if (i == start) {
        return std::nullopt;
      }
      param.value = std::string(text.substr(start, i - start));
    }
    if (i < text.size() && text[i] != ' ') {
      return std::nullopt;
    }
    params.push_back(std::move(param));
  }
}

std::optional<std::string> DecodeXtext(std::string_view text) {
  auto hex = [](char c) -> int {
    if (IsDigit(c)) {
      return c - '0';
    }
    const char lower = AsciiLower(c);
    return (lower >= 'a' && lower <= 'f') ? lower - 'a' + 10 : -1;
  };
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '+') {
      if (i + 2 >= text.size()) {
        return std::nullopt;
      }
      const int high = hex(text[i + 1]);
      const int low = hex(text[i + 2]);
      if (high < 0 || low < 0) {
        return std::nullopt;
      }
      out.push_back(static_cast<char>(high * 16 + low));
      i += 2;
    } else if (c >= 33 && c <= 126 && c != '=') {
      out.push_back(c);
    } else {
      return std::nullopt;
    }
  }
  return out;
}

bool IsValidUtf8(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t length = 0;
    uint32_t code_point = 0;
    if (c >= 0xC2 && c <= 0xDF) {
      length = 2;
      code_point = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      length = 3;
      code_point = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      length = 4;
      code_point = c & 0x07;
    } else {
      return false;
    }
    if (text.size() - i < length) {
      return false;
    }
    for (size_t k = 1; k < length; ++k) {
      const unsigned char next = static_cast<unsigned char>(text[i + k]);
      if ((next & 0xC0) != 0x80) {
        return false;
      }
      code_point = (code_point << 6) | (next & 0x3F);
    }
    const bool overlong =
        (length == 3 && code_point < 0x800) || (length == 4 && code_point < 0x10000);
    const bool surrogate = code_point >= 0xD800 && code_point <= 0xDFFF;
    if (overlong || surrogate || code_point > 0x10FFFF) {
      return false;
    }
    i += length;
  }
  return true;
}

}  // namespace backstop::ingest
