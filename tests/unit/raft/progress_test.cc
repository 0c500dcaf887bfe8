#include "queue/raft/progress.h"

#include "gtest/gtest.h"

namespace backstop::raft {
namespace {

TEST(ProgressTest, ProbeSendsOneAppendAtATime) {
  Progress pr(LogIndex(5), 10, 1000);
  EXPECT_FALSE(pr.IsPaused());
  pr.probe_sent = true;
  EXPECT_TRUE(pr.IsPaused());
  EXPECT_TRUE(pr.MaybeUpdate(LogIndex(4)));
  EXPECT_FALSE(pr.IsPaused());
}

TEST(ProgressTest, RejectionMovesNextToHint) {
  Progress pr(LogIndex(10), 10, 1000);
  EXPECT_TRUE(pr.MaybeDecrTo(LogIndex(9), LogIndex(3)));
  EXPECT_EQ(pr.next, LogIndex(4));
}

TEST(ProgressTest, StaleRejectionIsIgnored) {
  Progress pr(LogIndex(10), 10, 1000);
  EXPECT_FALSE(pr.MaybeDecrTo(LogIndex(5), LogIndex(3)));
  EXPECT_EQ(pr.next, LogIndex(10));
}

TEST(ProgressTest, ReplicateFallsBackToMatchOnRejection) {
  Progress pr(LogIndex(1), 10, 1000);
  pr.MaybeUpdate(LogIndex(5));
  pr.BecomeReplicate();
  pr.next = LogIndex(9);
  EXPECT_TRUE(pr.MaybeDecrTo(LogIndex(8), LogIndex(2)));
  EXPECT_EQ(pr.next, LogIndex(6));
  EXPECT_FALSE(pr.MaybeDecrTo(LogIndex(4), LogIndex(2)));
}

TEST(ProgressTest, SnapshotStatePausesUntilProbe) {
  Progress pr(LogIndex(1), 10, 1000);
  pr.BecomeSnapshot(LogIndex(20));
  EXPECT_TRUE(pr.IsPaused());
  pr.BecomeProbe();
  EXPECT_EQ(pr.next, LogIndex(21));
  EXPECT_FALSE(pr.IsPaused());
}

TEST(InflightsTest, FullByCountOrBytes) {
  Inflights by_count(2, 1000);
  by_count.Add(LogIndex(1), 1);
  EXPECT_FALSE(by_count.Full());
  by_count.Add(LogIndex(2), 1);
  EXPECT_TRUE(by_count.Full());
  by_count.FreeLE(LogIndex(1));
  EXPECT_FALSE(by_count.Full());

  Inflights by_bytes(10, 100);
  by_bytes.Add(LogIndex(1), 150);
  EXPECT_TRUE(by_bytes.Full());
  by_bytes.FreeFirst();
  EXPECT_FALSE(by_bytes.Full());
}

}  // namespace
}  // namespace backstop::raft
