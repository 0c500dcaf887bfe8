#include "common/clock.h"

#include <gtest/gtest.h>

namespace backstop {
namespace {

TEST(FakeClockTest, StartsAtItsFixedEpoch) {
  FakeClock clock;
  EXPECT_EQ(clock.Now(), absl::FromUnixSeconds(1767225600));
  EXPECT_EQ(clock.Monotonic(), absl::ZeroDuration());
}

TEST(FakeClockTest, AdvanceMovesWallAndMonotonicTogether) {
  FakeClock clock(absl::FromUnixSeconds(1000));
  clock.Advance(absl::Seconds(90));
  EXPECT_EQ(clock.Now(), absl::FromUnixSeconds(1090));
  EXPECT_EQ(clock.Monotonic(), absl::Seconds(90));
}

TEST(FakeClockTest, WallStepLeavesMonotonicAlone) {
  FakeClock clock(absl::FromUnixSeconds(1000));
  clock.Advance(absl::Seconds(5));
  clock.SetWallTime(absl::FromUnixSeconds(10));
  EXPECT_EQ(clock.Now(), absl::FromUnixSeconds(10));
  EXPECT_EQ(clock.Monotonic(), absl::Seconds(5));
}

TEST(FakeClockDeathTest, AdvancingBackwardsAborts) {
  FakeClock clock;
  EXPECT_DEATH(clock.Advance(absl::Seconds(-1)), "");
}

TEST(RealClockTest, MonotonicNeverGoesBackwards) {
  const Clock& clock = RealClock::Get();
  absl::Duration previous = clock.Monotonic();
  for (int i = 0; i < 1000; ++i) {
    const absl::Duration now = clock.Monotonic();
    ASSERT_GE(now, previous);
    previous = now;
  }
}

TEST(RealClockTest, WallTimeIsTheSystemTime) {
  const absl::Time before = absl::Now();
  const absl::Time now = RealClock::Get().Now();
  EXPECT_GE(now, before);
  EXPECT_LE(now - before, absl::Seconds(5));
}

}  // namespace
}  // namespace backstop
