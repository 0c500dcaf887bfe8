#pragma once

// Status helpers shared by every component. Fallible functions return absl::Status or
// absl::StatusOr<T>; these macros keep the early-return plumbing to one line.

#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace backstop {

// Converts an errno value into a Status whose message is "<context>: <strerror> (errno N)".
// The code follows the POSIX meaning (ENOENT → NotFound, EACCES → PermissionDenied, EAGAIN →
// Unavailable, ...), via absl::ErrnoToStatusCode.
absl::Status ErrnoToStatus(int error_number, std::string_view context);

}  // namespace backstop

#define BACKSTOP_STATUS_CONCAT_INNER_(a, b) a##b
#define BACKSTOP_STATUS_CONCAT_(a, b) BACKSTOP_STATUS_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status); returns it from the enclosing function if it is not OK.
#define RETURN_IF_ERROR(expr)                                               \
  do {                                                                      \
    if (::absl::Status backstop_status_ = (expr); !backstop_status_.ok()) { \
      return backstop_status_;                                              \
    }                                                                       \
  } while (false)

// Evaluates `rexpr` (an absl::StatusOr<T>); on error returns its status from the enclosing
// function, otherwise moves the value into `lhs`, which may be a declaration
// (`ASSIGN_OR_RETURN(auto x, F())`) or an existing variable.
#define ASSIGN_OR_RETURN(lhs, rexpr) \
  BACKSTOP_ASSIGN_OR_RETURN_IMPL_(BACKSTOP_STATUS_CONCAT_(backstop_statusor_, __LINE__), lhs, rexpr)

#define BACKSTOP_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                    \
  if (!statusor.ok()) {                                       \
    return std::move(statusor).status();                      \
  }                                                           \
  lhs = std::move(statusor).value()
