#include "common/clock.h"

#include <time.h>

#include <cstdlib>

namespace backstop {

RealClock& RealClock::Get() {
  static RealClock clock;
  return clock;
}

absl::Time RealClock::Now() const {
  return absl::Now();
}

absl::Duration RealClock::Monotonic() const {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return absl::DurationFromTimespec(ts);
}

FakeClock::FakeClock() : FakeClock(absl::FromUnixSeconds(1767225600)) {}

FakeClock::FakeClock(absl::Time start) : wall_(start), monotonic_(absl::ZeroDuration()) {}

absl::Time FakeClock::Now() const {
  std::lock_guard lock(mutex_);
  return wall_;
}

absl::Duration FakeClock::Monotonic() const {
  std::lock_guard lock(mutex_);
  return monotonic_;
}

void FakeClock::Advance(absl::Duration delta) {
  if (delta < absl::ZeroDuration()) {
    std::abort();  // A monotonic clock moving backwards is a bug in the test.
  }
  std::lock_guard lock(mutex_);
  wall_ += delta;
  monotonic_ += delta;
}

void FakeClock::SetWallTime(absl::Time now) {
  std::lock_guard lock(mutex_);
  wall_ = now;
}

}  // namespace backstop
