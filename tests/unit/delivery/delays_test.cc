#include "delivery/delays.h"

#include <gtest/gtest.h>

#include "absl/time/time.h"

namespace backstop::delivery {
namespace {

const absl::Time kArrival = absl::FromUnixSeconds(1'800'000'000);

TEST(ComputeDelaysTest, SplitsTheTotalIntoBeforeQueueInQueueSetupAndTransmission) {
  const Delays delays = ComputeDelays(
      kArrival, kArrival + absl::Milliseconds(30), kArrival + absl::Seconds(100),
      {.connection_setup = absl::Milliseconds(250), .transmission = absl::Milliseconds(1500)});
  EXPECT_EQ(delays.total, absl::Seconds(100));
  EXPECT_EQ(delays.before_queue, absl::Milliseconds(30));
  EXPECT_EQ(delays.in_queue, absl::Seconds(100) - absl::Milliseconds(30 + 250 + 1500));
  EXPECT_EQ(delays.connection_setup, absl::Milliseconds(250));
  EXPECT_EQ(delays.transmission, absl::Milliseconds(1500));
}

TEST(ComputeDelaysTest, WithoutAnAttemptTheQueueTakesTheRest) {
  const Delays delays =
      ComputeDelays(kArrival, kArrival + absl::Seconds(1), kArrival + absl::Seconds(60), {});
  EXPECT_EQ(delays.before_queue, absl::Seconds(1));
  EXPECT_EQ(delays.in_queue, absl::Seconds(59));
  EXPECT_EQ(delays.connection_setup, absl::ZeroDuration());
  EXPECT_EQ(delays.transmission, absl::ZeroDuration());
}

TEST(ComputeDelaysTest, LeaderClockBehindIngestGivesNoNegativeBeforeQueue) {
  const Delays delays =
      ComputeDelays(kArrival, kArrival - absl::Seconds(2), kArrival + absl::Seconds(10), {});
  EXPECT_EQ(delays.before_queue, absl::ZeroDuration());
  EXPECT_EQ(delays.in_queue, absl::Seconds(10));
}

TEST(ComputeDelaysTest, LeaderClockAheadCannotPushThePartsPastTheTotal) {
  const Delays delays =
      ComputeDelays(kArrival, kArrival + absl::Seconds(30), kArrival + absl::Seconds(10),
                    {.connection_setup = absl::Seconds(1), .transmission = absl::Seconds(2)});
  EXPECT_EQ(delays.before_queue, absl::Seconds(7));
  EXPECT_EQ(delays.in_queue, absl::ZeroDuration());
  EXPECT_EQ(delays.before_queue + delays.in_queue + delays.connection_setup + delays.transmission,
            delays.total);
}

TEST(ComputeDelaysTest, WorkerClockBehindIngestGivesZeroNotNegative) {
  const Delays delays = ComputeDelays(kArrival, kArrival, kArrival - absl::Seconds(3), {});
  EXPECT_EQ(delays.total, absl::ZeroDuration());
  EXPECT_EQ(delays.before_queue, absl::ZeroDuration());
  EXPECT_EQ(delays.in_queue, absl::ZeroDuration());
}

TEST(FormatDelaysTest, PrintsFourPartsWithTwoDecimalsLikePostfix) {
  Delays delays;
  delays.before_queue = absl::Milliseconds(4);
  delays.in_queue = absl::Seconds(12) + absl::Milliseconds(496);
  delays.connection_setup = absl::Milliseconds(30);
  delays.transmission = absl::ZeroDuration();
  EXPECT_EQ(FormatDelays(delays), "0.00/12.50/0.03/0.00");
}

TEST(RoundedSecondsTest, RoundsToHundredths) {
  EXPECT_DOUBLE_EQ(RoundedSeconds(absl::Milliseconds(1234)), 1.23);
  EXPECT_DOUBLE_EQ(RoundedSeconds(absl::Milliseconds(1235) + absl::Microseconds(1)), 1.24);
  EXPECT_DOUBLE_EQ(RoundedSeconds(absl::ZeroDuration()), 0);
}

}  // namespace
}  // namespace backstop::delivery
