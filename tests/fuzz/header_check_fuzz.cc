// libFuzzer target for the header checks (ingest/header_check.h): they read the header section
// of every message a client sends, before anything is stored.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string_view>

#include "ingest/header_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) {
    return 0;
  }
  // The first byte picks the options, the rest is the message.
  const backstop::ingest::HeaderCheckOptions options{.max_size = 1024u + data[0] * 16u,
                                                     .smtputf8 = (data[0] & 1) != 0};
  const std::string_view message(reinterpret_cast<const char*>(data + 1), size - 1);
  const std::optional<backstop::ingest::HeaderProblem> problem =
      backstop::ingest::CheckHeaders(message, options);
  backstop::ingest::HasValidMailbox(message);
  if (problem.has_value()) {
    // Reasons are metric labels (short fixed words) and texts go into one reply line.
    if (problem->reason.empty() || problem->reason.size() > 32 || problem->text.empty() ||
        problem->text.find_first_of("\r\n") != std::string_view::npos) {
      abort();
    }
    return 0;
  }
  // A message that passes has a header section within the limit and no bare LF in it.
  const size_t blank = message.find("\r\n\r\n");
  const std::string_view section =
      message.starts_with("\r\n")
          ? std::string_view()
          : message.substr(0, blank == std::string_view::npos ? message.size() : blank + 2);
  if (section.empty() || section.size() > options.max_size) {
    abort();
  }
  for (size_t i = 0; i < section.size(); ++i) {
    if (section[i] == '\n' && (i == 0 || section[i - 1] != '\r')) {
      abort();
    }
    if (!options.smtputf8 && static_cast<unsigned char>(section[i]) >= 0x80) {
      abort();
    }
  }
  return 0;
}
