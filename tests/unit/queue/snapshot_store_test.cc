#include "queue/snapshot_store.h"

#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/unit/queue/test_cluster.h"

namespace backstop::queue {
namespace {

namespace fs = std::filesystem;
using raft::LogIndex;

void WriteFile(const std::string& path, const std::string& content) {
  std::ofstream(path, std::ios::binary) << content;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream content;
  content << in.rdbuf();
  return content.str();
}

std::vector<std::string> Names(const std::string& dir) {
  std::vector<std::string> names;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

raft::SnapshotMeta Meta(uint64_t index) {
  raft::SnapshotMeta meta;
  meta.index = LogIndex(index);
  meta.term = raft::Term(3);
  meta.time = absl::FromUnixMicros(1'700'000'000'000'000);
  meta.conf_state.voters = {raft::NodeId(1), raft::NodeId(2)};
  return meta;
}

uint64_t DigestOf(const std::vector<std::string>& parts) {
  StreamDigest digest;
  for (const std::string& part : parts) {
    digest.Add(part);
  }
  return digest.value();
}

class SnapshotStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::FreshTempDir("snapshot_store");
    absl::StatusOr<std::shared_ptr<SnapshotStore>> store = SnapshotStore::Open(dir_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *store;
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Publishes a checkpoint at `index` holding `files` (name → content).
  void Publish(uint64_t index, const std::vector<std::pair<std::string, std::string>>& files) {
    absl::StatusOr<std::string> prepared = store_->PrepareDir(LogIndex(index));
    ASSERT_TRUE(prepared.ok()) << prepared.status();
    fs::create_directories(*prepared);
    for (const auto& [name, content] : files) {
      WriteFile(*prepared + "/" + name, content);
    }
    ASSERT_TRUE(store_->Publish(LogIndex(index)).ok());
  }

  std::string dir_;
  std::shared_ptr<SnapshotStore> store_;
};

TEST_F(SnapshotStoreTest, SwapLeavesTheOldOrTheNewDirectoryWhereverACrashStopsIt) {
  struct Case {
    SwapStop stop;
    std::string expected;
  };
  for (const Case& c : {Case{SwapStop::kAfterMoveAside, "old"}, Case{SwapStop::kAfterRename, "new"},
                        Case{SwapStop::kNone, "new"}}) {
    const std::string target = dir_ + "/state";
    const std::string staged = dir_ + "/snapshots/incoming";
    fs::remove_all(target);
    fs::create_directories(target);
    fs::create_directories(staged);
    WriteFile(target + "/CURRENT", "old");
    WriteFile(staged + "/CURRENT", "new");
    ASSERT_TRUE(SwapInDirectory(staged, target, c.stop).ok());
    // The process "dies" here; the next start recovers.
    ASSERT_TRUE(RecoverDirectorySwap(target).ok());
    EXPECT_EQ(ReadFile(target + "/CURRENT"), c.expected) << static_cast<int>(c.stop);
    EXPECT_EQ(Names(target), std::vector<std::string>{"CURRENT"});
    EXPECT_FALSE(fs::exists(target + ".old"));
    fs::remove_all(staged);
  }
}

TEST_F(SnapshotStoreTest, PublishKeepsOnlyTheNewestAndOpenReadersSurviveIt) {
  Publish(5, {{"000005.sst", "five"}, {"MANIFEST", "m5"}});
  absl::StatusOr<std::unique_ptr<SnapshotReader>> reader = store_->OpenForSending(LogIndex(5));
  ASSERT_TRUE(reader.ok()) << reader.status();
  ASSERT_EQ((*reader)->files().size(), 2u);
  EXPECT_EQ((*reader)->files()[0].name, "000005.sst");
  EXPECT_EQ((*reader)->files()[0].size, 4u);

  Publish(9, {{"000009.sst", "nine"}});
  EXPECT_EQ(store_->published(), LogIndex(9));
  EXPECT_EQ(Names(dir_ + "/snapshots"), std::vector<std::string>{"9"});
  EXPECT_TRUE(absl::IsNotFound(store_->OpenForSending(LogIndex(5)).status()));
  // Files opened before the old checkpoint went are still readable, in chunks.
  absl::StatusOr<std::string> head = (*reader)->Read(0, 0, 3);
  absl::StatusOr<std::string> tail = (*reader)->Read(0, 3, 3);
  ASSERT_TRUE(head.ok() && tail.ok());
  EXPECT_EQ(*head + *tail, "five");
}

TEST_F(SnapshotStoreTest, OpenKeepsTheNewestCheckpointAndDropsLeftovers) {
  for (const char* name : {"3", "8", "incoming", "12.tmp"}) {
    fs::create_directories(dir_ + "/snapshots/" + name);
  }
  absl::StatusOr<std::shared_ptr<SnapshotStore>> store = SnapshotStore::Open(dir_);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->published(), LogIndex(8));
  EXPECT_EQ(Names(dir_ + "/snapshots"), std::vector<std::string>{"8"});
}

TEST_F(SnapshotStoreTest, StagingWritesFilesInOrderAndRecordsTheMeta) {
  const std::vector<SnapshotFile> files = {{"a", 5}, {"empty", 0}, {"b", 3}};
  absl::StatusOr<std::unique_ptr<SnapshotStaging>> staging = store_->BeginStaging(Meta(42), files);
  ASSERT_TRUE(staging.ok()) << staging.status();
  SnapshotStaging& s = **staging;
  ASSERT_TRUE(s.Write(0, 0, "ab").ok());
  ASSERT_TRUE(s.Write(0, 2, "cde").ok());
  ASSERT_TRUE(s.Write(2, 0, "xyz").ok());
  ASSERT_TRUE(s.Finish(DigestOf({"ab", "cde", "xyz"})).ok());
  EXPECT_EQ(ReadFile(s.dir() + "/a"), "abcde");
  EXPECT_EQ(ReadFile(s.dir() + "/b"), "xyz");
  EXPECT_TRUE(fs::exists(s.dir() + "/empty"));
  absl::StatusOr<raft::SnapshotMeta> meta = ReadSnapshotMeta(s.dir());
  ASSERT_TRUE(meta.ok()) << meta.status();
  EXPECT_EQ(*meta, Meta(42));
}

TEST_F(SnapshotStoreTest, StagingRefusesGapsOverrunsTruncationAndABadDigest) {
  const std::vector<SnapshotFile> files = {{"a", 4}, {"b", 2}};
  auto begin = [&] {
    absl::StatusOr<std::unique_ptr<SnapshotStaging>> staging = store_->BeginStaging(Meta(7), files);
    EXPECT_TRUE(staging.ok()) << staging.status();
    return staging.ok() ? *std::move(staging) : nullptr;
  };
  {
    auto staging = begin();
    ASSERT_TRUE(staging->Write(0, 0, "ab").ok());
    EXPECT_TRUE(absl::IsDataLoss(staging->Write(0, 3, "d")));  // a gap
  }
  {
    auto staging = begin();
    EXPECT_TRUE(absl::IsDataLoss(staging->Write(0, 0, "abcde")));  // past the size
  }
  {
    auto staging = begin();
    ASSERT_TRUE(staging->Write(0, 0, "abc").ok());
    EXPECT_TRUE(absl::IsDataLoss(staging->Write(1, 0, "xy")));  // file a truncated
  }
  {
    auto staging = begin();
    ASSERT_TRUE(staging->Write(0, 0, "abcd").ok());
    ASSERT_TRUE(staging->Write(1, 0, "x").ok());
    EXPECT_TRUE(absl::IsDataLoss(staging->Finish(DigestOf({"abcd", "x"}))));  // b truncated
  }
  {
    auto staging = begin();
    ASSERT_TRUE(staging->Write(0, 0, "abcd").ok());
    ASSERT_TRUE(staging->Write(1, 0, "xy").ok());
    EXPECT_TRUE(absl::IsDataLoss(staging->Finish(DigestOf({"abcd", "xz"}))));  // corrupted
    EXPECT_FALSE(staging->finished());
  }
  // Every refused staging was removed with its object.
  EXPECT_EQ(Names(dir_ + "/snapshots"), std::vector<std::string>{});
}

TEST_F(SnapshotStoreTest, StagingRefusesPathsAndASecondConcurrentStaging) {
  for (const char* name : {"../state", "", ".", "a/b", kSnapshotMetaFile}) {
    EXPECT_TRUE(absl::IsInvalidArgument(store_->BeginStaging(Meta(7), {{name, 1}}).status()))
        << name;
  }
  EXPECT_TRUE(
      absl::IsInvalidArgument(store_->BeginStaging(Meta(7), {{"a", 1}, {"a", 1}}).status()));
  absl::StatusOr<std::unique_ptr<SnapshotStaging>> first = store_->BeginStaging(Meta(7), {});
  ASSERT_TRUE(first.ok());
  EXPECT_TRUE(absl::IsResourceExhausted(store_->BeginStaging(Meta(8), {}).status()));
  first->reset();
  EXPECT_TRUE(store_->BeginStaging(Meta(8), {}).ok());
}

}  // namespace
}  // namespace backstop::queue
