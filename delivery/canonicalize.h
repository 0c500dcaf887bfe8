#pragma once

// Outbound re-canonicalisation (DESIGN §3.4): whatever line endings a queued message has, the
// bytes sent after DATA have CRLF line ends only, are dot-stuffed (RFC 5321 §4.5.2) and end with
// CRLF.CRLF. Bits are never stripped: 8-bit bytes pass through unchanged (the SMTP client
// refuses to send them to a server without 8BITMIME instead).

#include <cstddef>
#include <string>
#include <string_view>

namespace backstop::delivery {

// Streams a message into DATA form in one linear pass: bare LF, bare CR and CRLF each become
// CRLF, a line starting with '.' gets one more '.', and Finish() closes the data with CRLF.CRLF
// (adding the CRLF that ends the last line when the message lacks it). A CR at the end of one
// chunk and an LF at the start of the next are one line ending.
//
// Owns only a few bytes of state between chunks; one per message. Not thread-safe.
class DataCanonicalizer {
 public:
  // Appends the DATA form of `chunk` to `out`.
  void Append(std::string_view chunk, std::string* out);
  // Appends the end of the data: the pending line ending, if any, and ".\r\n".
  void Finish(std::string* out);

 private:
  bool at_line_start_ = true;  // the next byte starts a line (dot-stuffing applies)
  bool pending_cr_ = false;    // the last byte seen was a CR not yet turned into CRLF
};

// The whole DATA form of `message` appended to `out` (one DataCanonicalizer, then Finish).
void AppendDataForm(std::string_view message, std::string* out);

// True when `bytes` has any byte >= 0x80 (needs 8BITMIME, RFC 6152).
bool HasEightBitBytes(std::string_view bytes);

}  // namespace backstop::delivery
