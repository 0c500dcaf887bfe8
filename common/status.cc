#include "common/status.h"

#include <cstring>
#include <string>

namespace backstop {

absl::Status ErrnoToStatus(int error_number, std::string_view context) {
  // strerror_r (GNU variant) is thread-safe, unlike strerror.
  char buffer[256];
  const char* text = strerror_r(error_number, buffer, sizeof(buffer));
  std::string message(context);
  message.append(": ")
      .append(text)
      .append(" (errno ")
      .append(std::to_string(error_number))
      .append(")");
  return absl::Status(absl::ErrnoToStatusCode(error_number), message);
}

}  // namespace backstop
