#pragma once

// RFC 5321 §4.1.2 paths and ESMTP parameters as they appear in MAIL FROM and RCPT TO, with the
// RFC 6531 (SMTPUTF8) extension and RFC 3461 xtext. Pure functions, no state: callable from
// any thread.
//
// Decisions (tests rely on them):
// - A source route (`<@a,@b:user@d>`) is accepted and ignored (RFC 5321 §3.6.1 and §4.1.2:
//   servers MUST accept the syntax and SHOULD ignore the route); the path is `user@d`.
// - Address literals keep their brackets in `domain` (`[1.2.3.4]`, `[ipv6:::1]`, lower-cased)
//   so a domain comparison never matches them by accident; `address_literal` says so.
//   Only IPv4 and IPv6 literals are accepted; general literals (`[tag:...]`) are syntax errors.
// - `%` and `!` are ordinary atext in a local part: `user%other@domain` has the local part
//   `user%other` and the domain `domain` — routing through them is for the relay policy to
//   refuse, not for the parser to interpret.
// - Non-ASCII (UTF-8) is accepted by the parser wherever RFC 6531 allows it and reported in
//   `non_ascii`; whether it is permitted (MAIL had SMTPUTF8) is the session's decision.
//   Malformed UTF-8 is a syntax error.
// - A domain may end with one dot (`user@example.com.`); it is removed from `domain`.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace backstop::ingest {

// RFC 5321 §4.5.3.1 limits, in octets.
inline constexpr size_t kMaxLocalPartLength = 64;
inline constexpr size_t kMaxDomainLength = 255;
inline constexpr size_t kMaxPathLength = 256;  // including the angle brackets

enum class PathType : uint8_t {
  kReversePath,  // MAIL FROM: `<>` allowed, `<postmaster>` not
  kForwardPath,  // RCPT TO: `<postmaster>` allowed, `<>` not
};

enum class AddressError : uint8_t {
  kNone,
  kSyntax,   // not a path, or malformed UTF-8
  kTooLong,  // local part, domain or path over the RFC 5321 limits
};

struct Path {
  // The mailbox as written, without brackets and source route; empty for `<>`.
  std::string address;
  // Quoted local parts are unquoted and their quoted-pairs decoded.
  std::string local_part;
  // Lower-cased (ASCII letters only), one trailing dot removed; empty for `<>` and
  // `<postmaster>`; an address literal with its brackets.
  std::string domain;
  bool null = false;        // `<>`
  bool postmaster = false;  // `<postmaster>` (any case), without a domain
  bool quoted_local_part = false;
  bool address_literal = false;
  bool source_route = false;  // a route was given and ignored
  bool non_ascii = false;     // contains UTF-8: needs SMTPUTF8
};

struct PathParseResult {
  AddressError error = AddressError::kNone;
  Path path;
  // What follows the closing `>` (the ESMTP parameters with their leading space), a view into
  // the parsed text.
  std::string_view rest;
};

// Parses `<...>` at the start of `text`.
PathParseResult ParsePath(std::string_view text, PathType type);

// One ESMTP parameter (RFC 5321 §4.1.2 esmtp-param).
struct EsmtpParam {
  std::string keyword;  // upper-cased
  std::optional<std::string> value;
};

// Parses the parameters after a path: space-separated `KEYWORD[=value]`. Keywords are
// case-insensitive; values are printable ASCII without `=`. nullopt on a syntax error.
std::optional<std::vector<EsmtpParam>> ParseEsmtpParams(std::string_view text);

// RFC 3461 §4 xtext: `+XX` hex escapes (either case accepted), other printable ASCII except
// `+` and `=` literal. nullopt when malformed.
std::optional<std::string> DecodeXtext(std::string_view text);

// Well-formed UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above U+10FFFF.
bool IsValidUtf8(std::string_view text);

}  // namespace backstop::ingest
