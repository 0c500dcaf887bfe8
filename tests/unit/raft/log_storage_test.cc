#include "queue/raft/log_storage.h"

#include <vector>

#include "gtest/gtest.h"

namespace backstop::raft {
namespace {

Entry E(uint64_t index, uint64_t term) {
  Entry e;
  e.index = LogIndex(index);
  e.term = Term(term);
  e.data = std::to_string(index);
  e.time = absl::FromUnixSeconds(static_cast<int64_t>(index));
  return e;
}

TEST(MemoryLogStorageTest, StartsEmpty) {
  MemoryLogStorage s;
  EXPECT_EQ(s.FirstIndex(), LogIndex(1));
  EXPECT_EQ(s.LastIndex(), LogIndex(0));
  EXPECT_EQ(*s.TermAt(LogIndex(0)), Term(0));
}

TEST(MemoryLogStorageTest, AppendTruncatesConflictingSuffix) {
  MemoryLogStorage s;
  std::vector<Entry> a{E(1, 1), E(2, 1), E(3, 1)};
  ASSERT_TRUE(s.Append(a).ok());
  std::vector<Entry> b{E(2, 2)};
  ASSERT_TRUE(s.Append(b).ok());
  EXPECT_EQ(s.LastIndex(), LogIndex(2));
  EXPECT_EQ(*s.TermAt(LogIndex(2)), Term(2));
}

TEST(MemoryLogStorageTest, RejectsGap) {
  MemoryLogStorage s;
  std::vector<Entry> a{E(3, 1)};
  EXPECT_FALSE(s.Append(a).ok());
}

TEST(MemoryLogStorageTest, EntriesRespectByteLimitButReturnOne) {
  MemoryLogStorage s;
  std::vector<Entry> a{E(1, 1), E(2, 1), E(3, 1)};
  ASSERT_TRUE(s.Append(a).ok());
  EXPECT_EQ(s.Entries(LogIndex(1), LogIndex(4), 0)->size(), 1u);
  EXPECT_EQ(s.Entries(LogIndex(1), LogIndex(4), 1000)->size(), 3u);
}

TEST(MemoryLogStorageTest, CompactKeepsTermOfCompactionPoint) {
  MemoryLogStorage s;
  std::vector<Entry> a{E(1, 1), E(2, 2), E(3, 2)};
  ASSERT_TRUE(s.Append(a).ok());
  ASSERT_TRUE(s.CreateSnapshot(LogIndex(2), ConfState{}, "img").ok());
  ASSERT_TRUE(s.Compact(LogIndex(2)).ok());
  EXPECT_EQ(s.FirstIndex(), LogIndex(3));
  EXPECT_EQ(*s.TermAt(LogIndex(2)), Term(2));
  EXPECT_EQ(*s.TimeAt(LogIndex(2)), absl::FromUnixSeconds(2));
  EXPECT_TRUE(IsCompacted(s.TermAt(LogIndex(1)).status()));
  EXPECT_TRUE(IsCompacted(s.Entries(LogIndex(2), LogIndex(4), 100).status()));
}

TEST(MemoryLogStorageTest, CompactionBeyondSnapshotIsRefused) {
  MemoryLogStorage s;
  std::vector<Entry> a{E(1, 1), E(2, 1)};
  ASSERT_TRUE(s.Append(a).ok());
  EXPECT_FALSE(s.Compact(LogIndex(2)).ok());
}

TEST(MemoryLogStorageTest, ApplySnapshotDropsEntries) {
  MemoryLogStorage s;
  std::vector<Entry> a{E(1, 1), E(2, 1)};
  ASSERT_TRUE(s.Append(a).ok());
  Snapshot snap;
  snap.meta.index = LogIndex(10);
  snap.meta.term = Term(3);
  ASSERT_TRUE(s.ApplySnapshot(snap).ok());
  EXPECT_EQ(s.FirstIndex(), LogIndex(11));
  EXPECT_EQ(s.LastIndex(), LogIndex(10));
  EXPECT_EQ(*s.TermAt(LogIndex(10)), Term(3));
}

TEST(MemoryLogStorageTest, RefusesOlderSnapshot) {
  MemoryLogStorage s;
  Snapshot snap;
  snap.meta.index = LogIndex(10);
  snap.meta.term = Term(3);
  ASSERT_TRUE(s.ApplySnapshot(snap).ok());
  snap.meta.index = LogIndex(9);
  EXPECT_FALSE(s.ApplySnapshot(snap).ok());
  EXPECT_EQ(s.LastIndex(), LogIndex(10));
}

TEST(MemoryLogStorageTest, BootstrapWritesInitialConfiguration) {
  MemoryLogStorage s;
  ConfState conf{{NodeId(1), NodeId(2)}, {}};
  ASSERT_TRUE(Bootstrap(s, conf).ok());
  EXPECT_EQ(s.GetSnapshot()->meta.conf_state, conf);
  EXPECT_EQ(s.GetHardState().commit, LogIndex(1));
  EXPECT_FALSE(Bootstrap(s, conf).ok());
}

}  // namespace
}  // namespace backstop::raft
