#include "delivery/delays.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

namespace backstop::delivery {
namespace {

absl::Duration NonNegative(absl::Duration duration) {
  return std::max(duration, absl::ZeroDuration());
}

}  // namespace

Delays ComputeDelays(absl::Time arrival, absl::Time committed, absl::Time now,
                     const AttemptTimes& attempt) {
  Delays delays;
  delays.total = NonNegative(now - arrival);
  delays.connection_setup = NonNegative(attempt.connection_setup);
  delays.transmission = NonNegative(attempt.transmission);
  // a cannot be more than what is left once c and d (measured on this worker's clock) are
  // taken: the ingest and leader clocks are the ones that may disagree.
  const absl::Duration before_attempt =
      NonNegative(delays.total - delays.connection_setup - delays.transmission);
  delays.before_queue = std::clamp(committed - arrival, absl::ZeroDuration(), before_attempt);
  delays.in_queue = before_attempt - delays.before_queue;
  return delays;
}

double RoundedSeconds(absl::Duration duration) {
  return std::round(absl::ToDoubleSeconds(duration) * 100) / 100;
}

std::string FormatDelays(const Delays& delays) {
  return fmt::format("{:.2f}/{:.2f}/{:.2f}/{:.2f}", absl::ToDoubleSeconds(delays.before_queue),
                     absl::ToDoubleSeconds(delays.in_queue),
                     absl::ToDoubleSeconds(delays.connection_setup),
                     absl::ToDoubleSeconds(delays.transmission));
}

}  // namespace backstop::delivery
