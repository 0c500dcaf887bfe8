#pragma once

// Time behind a seam, so that code with deadlines, retries and expiry can be tested with a fake
// clock (STYLE: time, network and storage sit behind seams).

#include <mutex>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace backstop {

// A source of wall time (for timestamps, Received headers, calendar months) and of monotonic
// time (for timeouts and rates; never goes backwards, origin arbitrary). Implementations are
// thread-safe.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
  virtual absl::Duration Monotonic() const = 0;
};

// The system clocks (CLOCK_REALTIME and CLOCK_MONOTONIC). Stateless; one shared instance.
class RealClock final : public Clock {
 public:
  static RealClock& Get();
  absl::Time Now() const override;
  absl::Duration Monotonic() const override;
};

// A clock that moves only when told. Any thread may read or move it.
class FakeClock final : public Clock {
 public:
  // Starts at a fixed, recognisable wall time (2026-01-01T00:00:00Z) and monotonic time 0.
  FakeClock();
  explicit FakeClock(absl::Time start);

  absl::Time Now() const override;
  absl::Duration Monotonic() const override;

  // Moves both clocks forward by `delta` (which must not be negative).
  void Advance(absl::Duration delta);
  // Sets the wall clock alone, as an NTP step would; monotonic time is unaffected.
  void SetWallTime(absl::Time now);

 private:
  mutable std::mutex mutex_;
  absl::Time wall_;           // guarded by mutex_
  absl::Duration monotonic_;  // guarded by mutex_
};

}  // namespace backstop
