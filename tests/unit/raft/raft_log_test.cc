#include "queue/raft/raft_log.h"

#include <vector>

#include "gtest/gtest.h"

namespace backstop::raft {
namespace {

Entry E(uint64_t index, uint64_t term) {
  Entry e;
  e.index = LogIndex(index);
  e.term = Term(term);
  return e;
}

class RaftLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::vector<Entry> stored{E(1, 1), E(2, 1), E(3, 2)};
    ASSERT_TRUE(storage_.Append(stored).ok());
  }
  MemoryLogStorage storage_;
};

TEST_F(RaftLogTest, CombinesStorageAndUnstableTail) {
  RaftLog log(&storage_, LogIndex(0));
  log.Append({E(4, 2), E(5, 3)});
  EXPECT_EQ(log.LastIndex(), LogIndex(5));
  EXPECT_EQ(log.TermAt(LogIndex(2)), Term(1));
  EXPECT_EQ(log.TermAt(LogIndex(5)), Term(3));
  EXPECT_EQ(log.Slice(LogIndex(2), LogIndex(6), 1 << 20)->size(), 4u);
  EXPECT_FALSE(log.TermAt(LogIndex(6)).has_value());
}

TEST_F(RaftLogTest, TruncationBelowUnstableShadowsStoredEntries) {
  RaftLog log(&storage_, LogIndex(0));
  log.Append({E(2, 4)});
  EXPECT_EQ(log.LastIndex(), LogIndex(2));
  EXPECT_EQ(log.TermAt(LogIndex(2)), Term(4));
  EXPECT_EQ(log.persisted(), LogIndex(1));
}

TEST_F(RaftLogTest, StableToIgnoresOverwrittenEntries) {
  RaftLog log(&storage_, LogIndex(0));
  log.Append({E(4, 2)});
  std::vector<Entry> handed = log.TakeUnstableEntries();
  log.Append({E(4, 3)});  // overwritten while being persisted
  log.StableTo(LogIndex(4), Term(2));
  EXPECT_TRUE(log.HasUnstableToHand());
  EXPECT_EQ(log.persisted(), LogIndex(3));
}

TEST_F(RaftLogTest, MaybeAppendRefusesToOverwriteCommittedEntries) {
  RaftLog log(&storage_, LogIndex(0));
  log.CommitTo(LogIndex(3));
  EXPECT_FALSE(log.MaybeAppend(LogIndex(2), Term(1), LogIndex(3), {E(3, 5)}).has_value());
  EXPECT_FALSE(log.corruption().empty());
}

TEST_F(RaftLogTest, IsUpToDateComparesLastTermThenLength) {
  RaftLog log(&storage_, LogIndex(0));
  EXPECT_TRUE(log.IsUpToDate(LogIndex(1), Term(3)));
  EXPECT_TRUE(log.IsUpToDate(LogIndex(3), Term(2)));
  EXPECT_FALSE(log.IsUpToDate(LogIndex(2), Term(2)));
  EXPECT_FALSE(log.IsUpToDate(LogIndex(9), Term(1)));
}

TEST_F(RaftLogTest, FindConflictByTermSkipsHigherTerms) {
  RaftLog log(&storage_, LogIndex(0));
  auto [index, term] = log.FindConflictByTerm(LogIndex(3), Term(1));
  EXPECT_EQ(index, LogIndex(2));
  EXPECT_EQ(term, Term(1));
}

TEST_F(RaftLogTest, CommittedEntriesHandedOutOnce) {
  RaftLog log(&storage_, LogIndex(0));
  log.CommitTo(LogIndex(2));
  EXPECT_EQ(log.TakeCommittedEntries(1 << 20).size(), 2u);
  EXPECT_FALSE(log.HasCommittedToHand());
}

TEST_F(RaftLogTest, RestoreReplacesLogWithSnapshot) {
  RaftLog log(&storage_, LogIndex(0));
  Snapshot snap;
  snap.meta.index = LogIndex(10);
  snap.meta.term = Term(4);
  log.Restore(snap);
  EXPECT_EQ(log.LastIndex(), LogIndex(10));
  EXPECT_EQ(log.FirstIndex(), LogIndex(11));
  EXPECT_EQ(log.committed(), LogIndex(10));
  EXPECT_FALSE(log.HasCommittedToHand());
  EXPECT_TRUE(log.TakeUnstableSnapshot().has_value());
}

}  // namespace
}  // namespace backstop::raft
