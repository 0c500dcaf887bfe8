#pragma once

// xtext (RFC 3461 §4): the encoding of ENVID and ORCPT values in SMTP commands. Every byte
// outside '!'..'~', and '+' and '=', is written "+XX" (upper-case hex).

#include <optional>
#include <string>
#include <string_view>

namespace backstop::delivery {

std::string XtextEncode(std::string_view text);

// nullopt when `xtext` is not valid xtext (a byte outside '!'..'~', a '=', or a '+' not followed
// by two upper-case hex digits).
std::optional<std::string> XtextDecode(std::string_view xtext);

}  // namespace backstop::delivery
