// libFuzzer target for the address parser (ingest/address.h): MAIL FROM and RCPT TO arguments
// come straight from the network, before any authentication.
//
// Input layout: one flag byte (bit 0: forward path), then the command argument.
// Aborts when a path that parsed breaks a promise of address.h:
// - `rest` is the tail of the input; `<` + address + `>` parses back to the same path;
// - the domain is lower-cased, without a trailing dot, within the RFC 5321 limits;
// - UTF-8 is well-formed and reported in non_ascii;
// - parameters that parse have upper-case keywords and values without `=`, and print back to
//   text that parses to the same parameters; an xtext value decodes to what XtextEncode encodes.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "delivery/xtext.h"
#include "ingest/address.h"

namespace {

using backstop::ingest::AddressError;
using backstop::ingest::EsmtpParam;
using backstop::ingest::Path;
using backstop::ingest::PathParseResult;
using backstop::ingest::PathType;

void Check(bool condition) {
  if (!condition) {
    std::abort();
  }
}

bool HasNonAscii(std::string_view text) {
  for (const char c : text) {
    if (static_cast<unsigned char>(c) >= 0x80) {
      return true;
    }
  }
  return false;
}

bool SamePath(const Path& a, const Path& b) {
  return a.address == b.address && a.local_part == b.local_part && a.domain == b.domain &&
         a.null == b.null && a.postmaster == b.postmaster &&
         a.quoted_local_part == b.quoted_local_part && a.address_literal == b.address_literal;
}

void CheckPath(std::string_view text, PathType type, const PathParseResult& result) {
  const Path& path = result.path;
  // `rest` is a view of the input's tail.
  Check(result.rest.data() >= text.data() &&
        result.rest.data() + result.rest.size() == text.data() + text.size());
  Check(!path.null || (type == PathType::kReversePath && path.address.empty()));
  Check(!path.postmaster || type == PathType::kForwardPath);
  Check(backstop::ingest::IsValidUtf8(path.address));
  Check(!HasNonAscii(path.address) || path.non_ascii);
  Check(path.local_part.size() <= backstop::ingest::kMaxLocalPartLength);
  Check(path.domain.size() <= backstop::ingest::kMaxDomainLength);
  Check(!path.domain.ends_with('.'));
  for (const char c : path.domain) {
    Check(c < 'A' || c > 'Z');
  }
  Check(path.address_literal == path.domain.starts_with('['));
  if (path.null) {
    return;
  }
  // The mailbox alone, without the route, is a path of its own with the same meaning.
  const std::string again_text = "<" + path.address + ">";
  const PathParseResult again = backstop::ingest::ParsePath(again_text, type);
  Check(again.error == AddressError::kNone && again.rest.empty() && !again.path.source_route);
  Check(SamePath(again.path, path));
}

void CheckParams(std::string_view text) {
  const std::optional<std::vector<EsmtpParam>> params = backstop::ingest::ParseEsmtpParams(text);
  if (!params.has_value()) {
    return;
  }
  std::string printed;
  for (const EsmtpParam& param : *params) {
    Check(!param.keyword.empty());
    for (const char c : param.keyword) {
      Check(c < 'a' || c > 'z');
    }
    printed += " " + param.keyword;
    if (!param.value.has_value()) {
      continue;
    }
    Check(!param.value->empty() && param.value->find('=') == std::string::npos);
    printed += "=" + *param.value;
    // What delivery encodes, ingest decodes (ORCPT and ENVID travel as xtext).
    if (const std::optional<std::string> decoded = backstop::ingest::DecodeXtext(*param.value)) {
      const std::string encoded = backstop::delivery::XtextEncode(*decoded);
      Check(backstop::ingest::DecodeXtext(encoded) == decoded);
      Check(backstop::delivery::XtextDecode(encoded) == decoded);
    }
  }
  const std::optional<std::vector<EsmtpParam>> again = backstop::ingest::ParseEsmtpParams(printed);
  Check(again.has_value() && again->size() == params->size());
  for (size_t i = 0; i < params->size(); ++i) {
    Check((*again)[i].keyword == (*params)[i].keyword && (*again)[i].value == (*params)[i].value);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) {
    return 0;
  }
  const PathType type = (data[0] & 1) != 0 ? PathType::kForwardPath : PathType::kReversePath;
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  const PathParseResult result = backstop::ingest::ParsePath(text, type);
  if (result.error == AddressError::kNone) {
    CheckPath(text, type, result);
    CheckParams(result.rest);
  } else {
    CheckParams(text);
  }
  (void)backstop::ingest::IsValidUtf8(text);
  return 0;
}
