#include "queue/fault_injection.h"

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "rocksdb/file_system.h"

namespace backstop::queue {
namespace {

namespace fs = std::filesystem;

class FaultInjectionFileSystemTest : public ::testing::Test {
 protected:
  FaultInjectionFileSystemTest()
      : fs_(std::make_shared<FaultInjectionFileSystem>(rocksdb::FileSystem::Default())) {
    std::string templ = (fs::temp_directory_path() / "fault_injection_test.XXXXXX").string();
    dir_ = mkdtemp(templ.data());
  }
  ~FaultInjectionFileSystemTest() override { fs::remove_all(dir_); }

  std::unique_ptr<rocksdb::FSWritableFile> Create(const std::string& name) {
    std::unique_ptr<rocksdb::FSWritableFile> file;
    EXPECT_TRUE(
        fs_->NewWritableFile((dir_ / name).string(), rocksdb::FileOptions(), &file, nullptr).ok());
    return file;
  }
  static rocksdb::IOStatus Append(rocksdb::FSWritableFile& file) {
    return file.Append("data", rocksdb::IOOptions(), nullptr);
  }
  static rocksdb::IOStatus Sync(rocksdb::FSWritableFile& file) {
    return file.Sync(rocksdb::IOOptions(), nullptr);
  }

  std::shared_ptr<FaultInjectionFileSystem> fs_;
  fs::path dir_;
};

TEST_F(FaultInjectionFileSystemTest, PassesThroughAndCountsSyncsWhenHealthy) {
  auto file = Create("000001.log");
  EXPECT_TRUE(Append(*file).ok());
  EXPECT_TRUE(Sync(*file).ok());
  EXPECT_TRUE(file->Fsync(rocksdb::IOOptions(), nullptr).ok());
  EXPECT_EQ(fs_->sync_count(), 2u);
  EXPECT_EQ(fs_->injected_failures(), 0u);
}

TEST_F(FaultInjectionFileSystemTest, SyncErrorFailsSyncsButNotWrites) {
  auto file = Create("000001.log");
  fs_->Inject(Fault::kSyncError);
  EXPECT_TRUE(Append(*file).ok());
  const rocksdb::IOStatus status = Sync(*file);
  EXPECT_TRUE(status.IsIOError());
  EXPECT_EQ(fs_->sync_count(), 0u);
  EXPECT_EQ(fs_->injected_failures(), 1u);
}

TEST_F(FaultInjectionFileSystemTest, WriteErrorFailsWritesButNotSyncs) {
  auto file = Create("000001.log");
  fs_->Inject(Fault::kWriteError);
  EXPECT_TRUE(Append(*file).IsIOError());
  EXPECT_TRUE(Sync(*file).ok());
}

TEST_F(FaultInjectionFileSystemTest, NoSpaceFailsWritesAndSyncsWithEnospc) {
  auto file = Create("000001.log");
  fs_->Inject(Fault::kNoSpace);
  EXPECT_TRUE(Append(*file).IsNoSpace());
  EXPECT_TRUE(Sync(*file).IsNoSpace());
}

TEST_F(FaultInjectionFileSystemTest, TargetSelectsTheKindOfFile) {
  auto wal = Create("000001.log");
  auto table = Create("000002.sst");
  auto manifest = Create("MANIFEST-000003");
  fs_->Inject(Fault::kWriteError, FaultTarget::kWalOnly);
  EXPECT_FALSE(Append(*wal).ok());
  EXPECT_TRUE(Append(*table).ok());
  EXPECT_TRUE(Append(*manifest).ok());
  fs_->Inject(Fault::kWriteError, FaultTarget::kTablesOnly);
  EXPECT_TRUE(Append(*wal).ok());
  EXPECT_FALSE(Append(*table).ok());
  EXPECT_TRUE(Append(*manifest).ok());
}

TEST_F(FaultInjectionFileSystemTest, ClearRestoresFilesOpenedDuringTheFault) {
  fs_->Inject(Fault::kSyncError);
  auto file = Create("000001.log");
  EXPECT_FALSE(Sync(*file).ok());
  fs_->Clear();
  EXPECT_TRUE(Sync(*file).ok());
}

TEST_F(FaultInjectionFileSystemTest, DirectoryFsyncFailsOnSyncError) {
  std::unique_ptr<rocksdb::FSDirectory> dir;
  ASSERT_TRUE(fs_->NewDirectory(dir_.string(), rocksdb::IOOptions(), &dir, nullptr).ok());
  fs_->Inject(Fault::kSyncError);
  EXPECT_FALSE(dir->Fsync(rocksdb::IOOptions(), nullptr).ok());
  fs_->Inject(Fault::kSyncError, FaultTarget::kWalOnly);
  EXPECT_TRUE(dir->Fsync(rocksdb::IOOptions(), nullptr).ok());
}

TEST_F(FaultInjectionFileSystemTest, FollowedFileNamesTheFaultAndItsTarget) {
  auto wal = Create("000001.log");
  auto table = Create("000002.sst");
  std::ofstream(dir_ / "fault") << "sync_error wal\n";
  fs_->FollowFile((dir_ / "fault").string());
  EXPECT_TRUE(Sync(*wal).IsIOError());
  EXPECT_TRUE(Sync(*table).ok());
  EXPECT_TRUE(Append(*wal).ok());
}

TEST_F(FaultInjectionFileSystemTest, FollowedFileAbsentOrUnknownMeansNoFault) {
  auto file = Create("000001.log");
  fs_->FollowFile((dir_ / "absent").string());
  EXPECT_TRUE(Append(*file).ok());
  std::ofstream(dir_ / "fault") << "bogus\n";
  fs_->FollowFile((dir_ / "fault").string());
  EXPECT_TRUE(Append(*file).ok());
  EXPECT_TRUE(Sync(*file).ok());
}

TEST_F(FaultInjectionFileSystemTest, FollowedNoSpaceFailsWithEnospc) {
  auto file = Create("000001.log");
  std::ofstream(dir_ / "fault") << "nospace";
  fs_->FollowFile((dir_ / "fault").string());
  EXPECT_TRUE(Append(*file).IsNoSpace());
  EXPECT_EQ(fs_->injected_failures(), 1u);
}

TEST_F(FaultInjectionFileSystemTest, FollowedFullReportsFullWhileWritesAndSyncsSucceed) {
  auto file = Create("000001.log");
  fs_->FollowFile((dir_ / "absent").string());
  EXPECT_FALSE(fs_->ReportsFull());
  std::ofstream(dir_ / "fault") << "full\n";
  fs_->FollowFile((dir_ / "fault").string());
  EXPECT_TRUE(fs_->ReportsFull());
  EXPECT_TRUE(Append(*file).ok());
  EXPECT_TRUE(Sync(*file).ok());
  EXPECT_EQ(fs_->injected_failures(), 0u);
}

TEST(FileSystemFromEnvironmentTest, IsRocksDbsOwnUnlessAFaultFileIsNamed) {
  unsetenv(kFaultFileEnvironment);
  EXPECT_EQ(FileSystemFromEnvironment(), nullptr);
  setenv(kFaultFileEnvironment, "/nonexistent/fault", 1);
  const std::shared_ptr<rocksdb::FileSystem> file_system = FileSystemFromEnvironment();
  unsetenv(kFaultFileEnvironment);
  ASSERT_NE(file_system, nullptr);
  EXPECT_STREQ(file_system->Name(), "BackstopFaultInjectionFileSystem");
}

}  // namespace
}  // namespace backstop::queue
