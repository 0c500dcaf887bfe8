#include "delivery/canonicalize.h"

#include <algorithm>

namespace backstop::delivery {

void DataCanonicalizer::Append(std::string_view chunk, std::string* out) {
  out->reserve(out->size() + chunk.size() + chunk.size() / 64 + 4);
  size_t i = 0;
  if (pending_cr_ && !chunk.empty()) {
    // The CR that ended the previous chunk: CRLF either way; skip a following LF.
    out->append("\r\n");
    pending_cr_ = false;
    at_line_start_ = true;
    if (chunk[0] == '\n') {
      i = 1;
    }
  }
  while (i < chunk.size()) {
    if (at_line_start_ && chunk[i] == '.') {
      out->push_back('.');
    }
    // Copy the run up to the next line-ending byte in one append.
    size_t end = chunk.find_first_of("\r\n", i);
    if (end == std::string_view::npos) {
      out->append(chunk.substr(i));
      at_line_start_ = false;
      return;
    }
    out->append(chunk.substr(i, end - i));
    if (chunk[end] == '\n') {
      out->append("\r\n");
      i = end + 1;
    } else if (end + 1 == chunk.size()) {
      pending_cr_ = true;  // may be the first half of a CRLF split across chunks
      at_line_start_ = false;
      return;
    } else {
      out->append("\r\n");
      i = chunk[end + 1] == '\n' ? end + 2 : end + 1;
    }
    at_line_start_ = true;
  }
}

void DataCanonicalizer::Finish(std::string* out) {
  if (pending_cr_ || !at_line_start_) {
    out->append("\r\n");
  }
  out->append(".\r\n");
  pending_cr_ = false;
  at_line_start_ = true;
}

void AppendDataForm(std::string_view message, std::string* out) {
  DataCanonicalizer canonicalizer;
  canonicalizer.Append(message, out);
  canonicalizer.Finish(out);
}

bool HasEightBitBytes(std::string_view bytes) {
  return std::any_of(bytes.begin(), bytes.end(),
                     [](char c) { return static_cast<unsigned char>(c) >= 0x80; });
}

}  // namespace backstop::delivery
