#include "delivery/xtext.h"

namespace backstop::delivery {
namespace {

constexpr char kHexDigits[] = "0123456789ABCDEF";

int HexValue(char c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'A' && c <= 'F') {
    return c - 'A' + 10;
  }
  return -1;
}

bool IsXchar(unsigned char c) {
  return c >= '!' && c <= '~' && c != '+' && c != '=';
}

}  // namespace

std::string XtextEncode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    auto byte = static_cast<unsigned char>(c);
    if (IsXchar(byte)) {
      out.push_back(c);
    } else {
      out.push_back('+');
      out.push_back(kHexDigits[byte >> 4]);
      out.push_back(kHexDigits[byte & 0xF]);
    }
  }
  return out;
}

std::optional<std::string> XtextDecode(std::string_view xtext) {
  std::string out;
  out.reserve(xtext.size());
  for (size_t i = 0; i < xtext.size(); ++i) {
    auto byte = static_cast<unsigned char>(xtext[i]);
    if (byte == '+') {
      if (i + 2 >= xtext.size()) {
        return std::nullopt;
      }
      int high = HexValue(xtext[i + 1]);
      int low = HexValue(xtext[i + 2]);
      if (high < 0 || low < 0) {
        return std::nullopt;
      }
      out.push_back(static_cast<char>(high * 16 + low));
      i += 2;
    } else if (IsXchar(byte)) {
      out.push_back(xtext[i]);
    } else {
      return std::nullopt;
    }
  }
  return out;
}

}  // namespace backstop::delivery
