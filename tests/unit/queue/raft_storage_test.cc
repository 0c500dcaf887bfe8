#include "queue/raft_storage.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "queue/fault_injection.h"
#include "queue/raft/log_storage.h"
#include "queue/raft/node.h"
#include "rocksdb/file_system.h"
#include "tests/unit/queue/test_cluster.h"

namespace backstop::queue {
namespace {

using raft::ConfState;
using raft::Entry;
using raft::EntryType;
using raft::HardState;
using raft::LogIndex;
using raft::LogStorage;
using raft::MemoryLogStorage;
using raft::NodeId;
using raft::Snapshot;
using raft::Term;

namespace fs = std::filesystem;

Entry E(uint64_t index, uint64_t term) {
  Entry e;
  e.index = LogIndex(index);
  e.term = Term(term);
  e.data = "entry " + std::to_string(index) + " of term " + std::to_string(term);
  e.time = absl::FromUnixMicros(static_cast<int64_t>(1'700'000'000'000'000 + index * 1001));
  e.type = index % 3 == 0 ? EntryType::kConfChange : EntryType::kNormal;
  return e;
}

std::vector<Entry> Range(uint64_t lo, uint64_t hi, uint64_t term) {
  std::vector<Entry> out;
  for (uint64_t i = lo; i <= hi; ++i) {
    out.push_back(E(i, term));
  }
  return out;
}

Snapshot SnapshotAt(uint64_t index, uint64_t term) {
  Snapshot snap;
  snap.meta.index = LogIndex(index);
  snap.meta.term = Term(term);
  snap.meta.time = absl::FromUnixSeconds(static_cast<int64_t>(index));
  snap.meta.conf_state = ConfState{{NodeId(1), NodeId(2), NodeId(3)}, {NodeId(4)}};
  return snap;
}

// A fresh directory under the test's temp dir, removed with the object.
class TempDir {
 public:
  TempDir() {
    std::string templ = (fs::temp_directory_path() / "raft_storage_test.XXXXXX").string();
    path_ = mkdtemp(templ.data());
  }
  ~TempDir() { fs::remove_all(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// Everything LogStorage exposes, for comparing two storages (snapshot data excepted: the
// RocksDB storage does not keep it).
void ExpectSameState(const LogStorage& actual, const LogStorage& expected) {
  EXPECT_EQ(actual.GetHardState(), expected.GetHardState());
  ASSERT_EQ(actual.FirstIndex(), expected.FirstIndex());
  ASSERT_EQ(actual.LastIndex(), expected.LastIndex());
  EXPECT_EQ(actual.GetSnapshot()->meta, expected.GetSnapshot()->meta);
  const LogIndex point = expected.FirstIndex() - 1;
  EXPECT_EQ(*actual.TermAt(point), *expected.TermAt(point));
  EXPECT_EQ(*actual.TimeAt(point), *expected.TimeAt(point));
  if (expected.LastIndex() >= expected.FirstIndex()) {
    EXPECT_EQ(*actual.Entries(actual.FirstIndex(), actual.LastIndex() + 1, UINT64_MAX),
              *expected.Entries(expected.FirstIndex(), expected.LastIndex() + 1, UINT64_MAX));
  }
}

// ---------------------------------------------------------------------------------------------
// Conformance: the same behaviours for MemoryLogStorage and RocksDbLogStorage.

class MemoryBackend {
 public:
  LogStorage& storage() { return storage_; }

 private:
  MemoryLogStorage storage_;
};

class RocksDbBackend {
 public:
  RocksDbBackend() {
    database_ = *Database::Open(dir_.path().string(), DatabaseOptions{});
    storage_ = *RocksDbLogStorage::Open(database_.get());
  }
  LogStorage& storage() { return *storage_; }

 private:
  TempDir dir_;
  std::unique_ptr<Database> database_;
  std::unique_ptr<RocksDbLogStorage> storage_;
};

template <typename Backend>
class LogStorageConformanceTest : public ::testing::Test {
 protected:
  LogStorage& s() { return backend_.storage(); }
  Backend backend_;
};

using Backends = ::testing::Types<MemoryBackend, RocksDbBackend>;
TYPED_TEST_SUITE(LogStorageConformanceTest, Backends);

TYPED_TEST(LogStorageConformanceTest, StartsEmpty) {
  EXPECT_EQ(this->s().FirstIndex(), LogIndex(1));
  EXPECT_EQ(this->s().LastIndex(), LogIndex(0));
  EXPECT_EQ(*this->s().TermAt(LogIndex(0)), Term(0));
  EXPECT_EQ(this->s().GetHardState(), HardState{});
  EXPECT_EQ(this->s().GetSnapshot()->meta, raft::SnapshotMeta{});
}

TYPED_TEST(LogStorageConformanceTest, EntriesReturnWhatWasAppended) {
  ASSERT_TRUE(this->s().Append(Range(1, 5, 1)).ok());
  EXPECT_EQ(*this->s().Entries(LogIndex(2), LogIndex(5), UINT64_MAX), Range(2, 4, 1));
  EXPECT_EQ(*this->s().TermAt(LogIndex(5)), Term(1));
  EXPECT_EQ(*this->s().TimeAt(LogIndex(4)), E(4, 1).time);
  EXPECT_TRUE(this->s().Entries(LogIndex(3), LogIndex(3), UINT64_MAX)->empty());
}

TYPED_TEST(LogStorageConformanceTest, AppendTruncatesConflictingSuffix) {
  ASSERT_TRUE(this->s().Append(Range(1, 5, 1)).ok());
  ASSERT_TRUE(this->s().Append(Range(3, 3, 2)).ok());
  EXPECT_EQ(this->s().LastIndex(), LogIndex(3));
  EXPECT_EQ(*this->s().TermAt(LogIndex(3)), Term(2));
  std::vector<Entry> expected = Range(1, 2, 1);
  expected.push_back(E(3, 2));
  EXPECT_EQ(*this->s().Entries(LogIndex(1), LogIndex(4), UINT64_MAX), expected);
  EXPECT_FALSE(this->s().TermAt(LogIndex(4)).ok());
}

TYPED_TEST(LogStorageConformanceTest, AppendReplacesSuffixWithLongerOne) {
  ASSERT_TRUE(this->s().Append(Range(1, 3, 1)).ok());
  ASSERT_TRUE(this->s().Append(Range(2, 6, 3)).ok());
  EXPECT_EQ(this->s().LastIndex(), LogIndex(6));
  EXPECT_EQ(*this->s().Entries(LogIndex(2), LogIndex(7), UINT64_MAX), Range(2, 6, 3));
}

TYPED_TEST(LogStorageConformanceTest, RejectsGap) {
  ASSERT_TRUE(this->s().Append(Range(1, 2, 1)).ok());
  EXPECT_EQ(this->s().Append(Range(4, 4, 1)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(this->s().LastIndex(), LogIndex(2));
}

TYPED_TEST(LogStorageConformanceTest, EntriesRespectByteLimitButReturnOne) {
  ASSERT_TRUE(this->s().Append(Range(1, 3, 1)).ok());
  EXPECT_EQ(this->s().Entries(LogIndex(1), LogIndex(4), 0)->size(), 1u);
  const uint64_t two = E(1, 1).ByteSize() + E(2, 1).ByteSize();
  EXPECT_EQ(this->s().Entries(LogIndex(1), LogIndex(4), two)->size(), 2u);
  EXPECT_EQ(this->s().Entries(LogIndex(1), LogIndex(4), 1000)->size(), 3u);
}

TYPED_TEST(LogStorageConformanceTest, EntriesBeyondLastIndexAreOutOfRange) {
  ASSERT_TRUE(this->s().Append(Range(1, 3, 1)).ok());
  EXPECT_EQ(this->s().Entries(LogIndex(2), LogIndex(5), 100).status().code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_FALSE(raft::IsCompacted(this->s().TermAt(LogIndex(4)).status()));
}

TYPED_TEST(LogStorageConformanceTest, CompactKeepsTermAndTimeOfCompactionPoint) {
  ASSERT_TRUE(this->s().Append(Range(1, 3, 2)).ok());
  ASSERT_TRUE(this->s().CreateSnapshot(LogIndex(2), ConfState{}, "img").ok());
  ASSERT_TRUE(this->s().Compact(LogIndex(2)).ok());
  EXPECT_EQ(this->s().FirstIndex(), LogIndex(3));
  EXPECT_EQ(*this->s().TermAt(LogIndex(2)), Term(2));
  EXPECT_EQ(*this->s().TimeAt(LogIndex(2)), E(2, 2).time);
  EXPECT_TRUE(raft::IsCompacted(this->s().TermAt(LogIndex(1)).status()));
  EXPECT_TRUE(raft::IsCompacted(this->s().Entries(LogIndex(2), LogIndex(4), 100).status()));
  EXPECT_EQ(*this->s().Entries(LogIndex(3), LogIndex(4), 100), Range(3, 3, 2));
}

TYPED_TEST(LogStorageConformanceTest, CreateSnapshotRecordsStampOfItsIndex) {
  ASSERT_TRUE(this->s().Append(Range(1, 4, 3)).ok());
  const ConfState conf{{NodeId(1)}, {}};
  ASSERT_TRUE(this->s().CreateSnapshot(LogIndex(3), conf, "img").ok());
  const raft::SnapshotMeta meta = this->s().GetSnapshot()->meta;
  EXPECT_EQ(meta, (raft::SnapshotMeta{LogIndex(3), Term(3), E(3, 3).time, conf}));
  EXPECT_EQ(this->s().FirstIndex(), LogIndex(1));  // creating a snapshot does not compact
  EXPECT_FALSE(this->s().CreateSnapshot(LogIndex(3), conf, "img").ok());
  EXPECT_FALSE(this->s().CreateSnapshot(LogIndex(5), conf, "img").ok());
}

TYPED_TEST(LogStorageConformanceTest, CompactionBeyondSnapshotIsRefused) {
  ASSERT_TRUE(this->s().Append(Range(1, 2, 1)).ok());
  EXPECT_FALSE(this->s().Compact(LogIndex(2)).ok());
  EXPECT_EQ(this->s().FirstIndex(), LogIndex(1));
}

TYPED_TEST(LogStorageConformanceTest, ApplySnapshotDropsEntries) {
  ASSERT_TRUE(this->s().Append(Range(1, 12, 1)).ok());
  ASSERT_TRUE(this->s().ApplySnapshot(SnapshotAt(10, 3)).ok());
  EXPECT_EQ(this->s().FirstIndex(), LogIndex(11));
  EXPECT_EQ(this->s().LastIndex(), LogIndex(10));
  EXPECT_EQ(*this->s().TermAt(LogIndex(10)), Term(3));
  EXPECT_EQ(*this->s().TimeAt(LogIndex(10)), absl::FromUnixSeconds(10));
  EXPECT_EQ(this->s().GetSnapshot()->meta, SnapshotAt(10, 3).meta);
}

TYPED_TEST(LogStorageConformanceTest, AppendSkipsEntriesCoveredBySnapshot) {
  ASSERT_TRUE(this->s().ApplySnapshot(SnapshotAt(5, 2)).ok());
  ASSERT_TRUE(this->s().Append(Range(4, 7, 2)).ok());
  EXPECT_EQ(this->s().FirstIndex(), LogIndex(6));
  EXPECT_EQ(*this->s().Entries(LogIndex(6), LogIndex(8), UINT64_MAX), Range(6, 7, 2));
}

TYPED_TEST(LogStorageConformanceTest, RefusesOlderSnapshot) {
  ASSERT_TRUE(this->s().ApplySnapshot(SnapshotAt(10, 3)).ok());
  EXPECT_FALSE(this->s().ApplySnapshot(SnapshotAt(9, 3)).ok());
  EXPECT_EQ(this->s().LastIndex(), LogIndex(10));
}

TYPED_TEST(LogStorageConformanceTest, BootstrapWritesInitialConfiguration) {
  const ConfState conf{{NodeId(1), NodeId(2)}, {}};
  ASSERT_TRUE(raft::Bootstrap(this->s(), conf).ok());
  EXPECT_EQ(this->s().GetSnapshot()->meta.conf_state, conf);
  EXPECT_EQ(this->s().GetHardState().commit, LogIndex(1));
  EXPECT_FALSE(raft::Bootstrap(this->s(), conf).ok());
}

// ---------------------------------------------------------------------------------------------
// RocksDB-specific behaviour.

class RocksDbLogStorageTest : public ::testing::Test {
 protected:
  RocksDbLogStorageTest()
      : fault_fs_(std::make_shared<FaultInjectionFileSystem>(rocksdb::FileSystem::Default())) {
    Reopen();
  }

  void Close() {
    storage_.reset();
    database_.reset();
  }
  void Reopen(StorageOptions options = {}) { ReopenAt(dir_.path(), std::move(options)); }
  void ReopenAt(const fs::path& path, StorageOptions options = {}) {
    Close();
    auto database = Database::Open(path.string(), DatabaseOptions{{}, fault_fs_});
    ASSERT_TRUE(database.ok()) << database.status();
    database_ = *std::move(database);
    auto storage = RocksDbLogStorage::Open(database_.get(), std::move(options));
    ASSERT_TRUE(storage.ok()) << storage.status();
    storage_ = *std::move(storage);
  }

  // Applies the same writes to the storage under test and to the model.
  void Persist(const std::optional<Snapshot>& snapshot, const std::vector<Entry>& entries,
               const std::optional<HardState>& hard_state) {
    ASSERT_TRUE(storage_->Persist(snapshot, entries, hard_state).ok());
    if (snapshot) {
      ASSERT_TRUE(model_.ApplySnapshot(*snapshot).ok());
    }
    ASSERT_TRUE(model_.Append(entries).ok());
    if (hard_state) {
      ASSERT_TRUE(model_.SetHardState(*hard_state).ok());
    }
  }

  // The only write-ahead log file (no flush happens in these small tests).
  fs::path WalPath(const fs::path& dir) const {
    fs::path wal;
    for (const auto& file : fs::directory_iterator(dir)) {
      if (file.path().extension() == ".log" && (wal.empty() || file.path() > wal)) {
        wal = file.path();
      }
    }
    return wal;
  }

  // What a crash that cut the write-ahead log after `wal_bytes` leaves, reopened: a copy of the
  // directory at `copy`. Null storage (and a test failure) if it does not open.
  std::pair<std::unique_ptr<Database>, std::unique_ptr<RocksDbLogStorage>> OpenAfterCrash(
      const fs::path& copy, uintmax_t wal_bytes) const {
    fs::copy(dir_.path(), copy, fs::copy_options::recursive);
    fs::resize_file(WalPath(copy), wal_bytes);
    auto database = Database::Open(copy.string(), DatabaseOptions{});
    EXPECT_TRUE(database.ok()) << database.status();
    if (!database.ok()) {
      return {};
    }
    auto storage = RocksDbLogStorage::Open(database->get());
    EXPECT_TRUE(storage.ok()) << storage.status();
    if (!storage.ok()) {
      return {};
    }
    return {*std::move(database), *std::move(storage)};
  }

  uint64_t Sequence() const { return database_->db()->GetLatestSequenceNumber(); }

  // Until no flush of the Raft families runs or waits (each one releases log files at its end).
  void WaitForFlushes() const {
    rocksdb::DB& db = *database_->db();
    ASSERT_TRUE(testing::Eventually([&] {
      uint64_t busy = 0;
      db.GetIntProperty(rocksdb::DB::Properties::kNumRunningFlushes, &busy);
      for (const char* family : {kRaftLogFamily, kRaftStateFamily}) {
        uint64_t immutable = 0;
        db.GetIntProperty(database_->family(family), rocksdb::DB::Properties::kNumImmutableMemTable,
                          &immutable);
        busy += immutable;
      }
      return busy == 0;
    }));
  }

  TempDir dir_;
  std::shared_ptr<FaultInjectionFileSystem> fault_fs_;
  std::unique_ptr<Database> database_;
  std::unique_ptr<RocksDbLogStorage> storage_;
  MemoryLogStorage model_;
};

TEST_F(RocksDbLogStorageTest, ReopenShowsTheSameState) {
  Persist(std::nullopt, Range(1, 20, 1), HardState{Term(1), NodeId(2), LogIndex(5)});
  Persist(std::nullopt, Range(15, 25, 2), HardState{Term(2), NodeId(3), LogIndex(12)});
  ASSERT_TRUE(storage_->CreateSnapshot(LogIndex(10), ConfState{{NodeId(1)}, {}}, "").ok());
  ASSERT_TRUE(model_.CreateSnapshot(LogIndex(10), ConfState{{NodeId(1)}, {}}, "").ok());
  ASSERT_TRUE(storage_->Compact(LogIndex(8)).ok());
  ASSERT_TRUE(model_.Compact(LogIndex(8)).ok());
  Reopen();
  ExpectSameState(*storage_, model_);
  EXPECT_EQ(*storage_->TermAt(LogIndex(8)), Term(1));
}

TEST_F(RocksDbLogStorageTest, ReopenAfterSnapshotInstallShowsOnlyTheSnapshot) {
  Persist(std::nullopt, Range(1, 30, 1), std::nullopt);
  Persist(SnapshotAt(50, 4), Range(51, 53, 4), HardState{Term(4), NodeId(1), LogIndex(50)});
  Reopen();
  ExpectSameState(*storage_, model_);
  EXPECT_EQ(storage_->FirstIndex(), LogIndex(51));
  EXPECT_TRUE(raft::IsCompacted(storage_->TermAt(LogIndex(30)).status()));
}

TEST_F(RocksDbLogStorageTest, WriteAheadLogStaysBoundedWhileTheLogIsCompacted) {
  constexpr uint64_t kMaxWalBytes = 1 << 20;
  Close();
  auto database =
      Database::Open(dir_.path().string(), DatabaseOptions{.extra_families = {},
                                                           .file_system = fault_fs_,
                                                           .max_wal_bytes = kMaxWalBytes});
  ASSERT_TRUE(database.ok()) << database.status();
  database_ = *std::move(database);
  storage_ = *RocksDbLogStorage::Open(database_.get());
  // The hard state is written once, like a term that lasts: its family never fills a write
  // buffer, so only the WAL limit gets its log files released.
  Persist(std::nullopt, {}, HardState{Term(1), NodeId(1), LogIndex(0)});
  // 16 MiB of entries in 64 KiB payloads, compacted as a snapshot would every 16 entries.
  const std::string payload(64 << 10, 'm');
  for (uint64_t first = 1; first <= 256; first += 16) {
    std::vector<Entry> entries = Range(first, first + 15, 1);
    for (Entry& entry : entries) {
      entry.data = payload;
      entry.type = EntryType::kNormal;
    }
    Persist(std::nullopt, entries, std::nullopt);
    if (first > 16) {
      ASSERT_TRUE(storage_->CreateSnapshot(LogIndex(first), ConfState{{NodeId(1)}, {}}, "").ok());
      ASSERT_TRUE(model_.CreateSnapshot(LogIndex(first), ConfState{{NodeId(1)}, {}}, "").ok());
      ASSERT_TRUE(storage_->Compact(LogIndex(first - 1)).ok());
      ASSERT_TRUE(model_.Compact(LogIndex(first - 1)).ok());
    }
  }
  WaitForFlushes();
  uint64_t wal_bytes = 0;
  for (const auto& file : fs::directory_iterator(dir_.path())) {
    if (file.path().extension() == ".log") {
      wal_bytes += file.file_size();
    }
  }
  // The limit, plus the file being written and one whose flush was still finishing.
  EXPECT_LE(wal_bytes, 4 * kMaxWalBytes);
  Reopen();
  ExpectSameState(*storage_, model_);
}

TEST_F(RocksDbLogStorageTest, PersistIsOneSyncedWrite) {
  const uint64_t writes = storage_->synced_writes();
  const uint64_t syncs = fault_fs_->sync_count();
  const uint64_t sequence = Sequence();
  Persist(SnapshotAt(5, 1), Range(6, 9, 1), HardState{Term(1), NodeId(1), LogIndex(7)});
  EXPECT_EQ(storage_->synced_writes(), writes + 1);
  EXPECT_EQ(fault_fs_->sync_count(), syncs + 1);  // one fdatasync of the WAL
  // One batch: its operations share consecutive sequence numbers of one WAL record.
  EXPECT_GT(Sequence(), sequence);
}

// A Ready that only moves the commit index is written without an fsync of its own (most
// Readies of a busy voter): a crash may lose it, so it must not be synced ahead of the next
// entries, and a term or vote change must still be.
TEST_F(RocksDbLogStorageTest, CommitIndexAloneIsWrittenWithoutAnFsync) {
  Persist(std::nullopt, Range(1, 6, 1), HardState{Term(1), NodeId(1), LogIndex(2)});
  const uint64_t writes = storage_->synced_writes();
  const uint64_t syncs = fault_fs_->sync_count();
  const uintmax_t synced_wal = fs::file_size(WalPath(dir_.path()));

  Persist(std::nullopt, {}, HardState{Term(1), NodeId(1), LogIndex(6)});
  EXPECT_EQ(storage_->synced_writes(), writes);
  EXPECT_EQ(fault_fs_->sync_count(), syncs);
  EXPECT_EQ(storage_->GetHardState().commit, LogIndex(6));
  EXPECT_GT(fs::file_size(WalPath(dir_.path())), synced_wal);  // written, just not synced

  // A crash that drops the unsynced tail of the log loses only that commit index.
  TempDir crash;
  {
    auto [database, storage] = OpenAfterCrash(crash.path() / "lost-commit", synced_wal);
    ASSERT_NE(storage, nullptr);
    EXPECT_EQ(storage->GetHardState().commit, LogIndex(2));
    EXPECT_EQ(storage->LastIndex(), LogIndex(6));
  }

  // Entries are synced, and with them the commit index written before them.
  Persist(std::nullopt, Range(7, 7, 1), std::nullopt);
  EXPECT_EQ(fault_fs_->sync_count(), syncs + 1);
  {
    auto [database, storage] =
        OpenAfterCrash(crash.path() / "kept-commit", fs::file_size(WalPath(dir_.path())));
    ASSERT_NE(storage, nullptr);
    EXPECT_EQ(storage->GetHardState().commit, LogIndex(6));
    EXPECT_EQ(storage->LastIndex(), LogIndex(7));
  }

  // The term and the vote are never left unsynced.
  Persist(std::nullopt, {}, HardState{Term(2), NodeId(1), LogIndex(6)});
  EXPECT_EQ(fault_fs_->sync_count(), syncs + 2);
  Persist(std::nullopt, {}, HardState{Term(2), NodeId(2), LogIndex(6)});
  EXPECT_EQ(fault_fs_->sync_count(), syncs + 3);
  EXPECT_EQ(storage_->synced_writes(), writes + 3);
  Reopen();
  ExpectSameState(*storage_, model_);
}

TEST_F(RocksDbLogStorageTest, PersistOfNothingWritesNothing) {
  const uint64_t syncs = fault_fs_->sync_count();
  ASSERT_TRUE(storage_->Persist(std::nullopt, {}, std::nullopt).ok());
  EXPECT_EQ(fault_fs_->sync_count(), syncs);
}

TEST_F(RocksDbLogStorageTest, SnapshotDataComesFromTheCallbackNotTheStorage) {
  ASSERT_TRUE(storage_->ApplySnapshot(Snapshot{SnapshotAt(3, 1).meta, "image"}).ok());
  EXPECT_EQ(storage_->GetSnapshot()->data, "");
  StorageOptions options;
  options.snapshot_data = [](const raft::SnapshotMeta& meta) -> absl::StatusOr<std::string> {
    return "checkpoint@" + std::to_string(meta.index.value());
  };
  Reopen(std::move(options));
  EXPECT_EQ(storage_->GetSnapshot()->data, "checkpoint@3");
}

TEST_F(RocksDbLogStorageTest, SharesTheDatabaseWithExtraFamilies) {
  Close();
  rocksdb::ColumnFamilyOptions blob_options;
  blob_options.enable_blob_files = true;
  DatabaseOptions options{{{"queue_messages", blob_options}}, nullptr};
  auto database = Database::Open(dir_.path().string(), options);
  ASSERT_TRUE(database.ok()) << database.status();
  ASSERT_NE((*database)->family("queue_messages"), nullptr);
  auto storage = RocksDbLogStorage::Open(database->get());
  ASSERT_TRUE(storage.ok());
  EXPECT_TRUE((*storage)->Append(Range(1, 2, 1)).ok());
}

// A crash can cut the write-ahead log anywhere, also inside the record of a Persist. Whatever
// prefix survives, reopening must show the state after some whole Persist: never a hard state
// without the entries written with it, never half a truncation.
TEST_F(RocksDbLogStorageTest, CrashAnywhereInTheLogRecoversTheStateAfterAWholePersist) {
  std::vector<MemoryLogStorage> states{model_};
  std::vector<uintmax_t> ends{fs::file_size(WalPath(dir_.path()))};
  auto step = [&](const std::optional<Snapshot>& snapshot, const std::vector<Entry>& entries,
                  const std::optional<HardState>& hard_state) {
    Persist(snapshot, entries, hard_state);
    states.push_back(model_);
    ends.push_back(fs::file_size(WalPath(dir_.path())));
  };
  step(std::nullopt, Range(1, 6, 1), HardState{Term(1), NodeId(1), LogIndex(0)});
  step(std::nullopt, Range(7, 9, 1), HardState{Term(1), NodeId(1), LogIndex(6)});
  step(std::nullopt, Range(5, 7, 2), HardState{Term(2), NodeId(2), LogIndex(4)});  // conflict
  step(SnapshotAt(20, 3), Range(21, 22, 3), HardState{Term(3), NodeId(2), LogIndex(20)});
  step(std::nullopt, Range(23, 40, 3), HardState{Term(3), NodeId(2), LogIndex(30)});

  TempDir crash;
  for (size_t k = 0; k + 1 < ends.size(); ++k) {
    ASSERT_LT(ends[k], ends[k + 1]);
    const uintmax_t mid = (ends[k] + ends[k + 1]) / 2;
    for (uintmax_t cut : {ends[k], ends[k] + 1, mid, ends[k + 1] - 1, ends[k + 1]}) {
      SCOPED_TRACE("cut the WAL at byte " + std::to_string(cut) + " (persist " +
                   std::to_string(k + 1) + ")");
      auto [database, storage] =
          OpenAfterCrash(crash.path() / (std::to_string(k) + "-" + std::to_string(cut)), cut);
      ASSERT_NE(storage, nullptr);
      const size_t whole = cut == ends[k + 1] ? k + 1 : k;
      ExpectSameState(*storage, states[whole]);
    }
  }
}

// A single voter driven through this storage, one Persist per Ready, then restarted from
// disk: the node comes back with its term, its log and its commit index.
TEST_F(RocksDbLogStorageTest, SingleVoterRestartsFromWhatItPersisted) {
  ASSERT_TRUE(raft::Bootstrap(*storage_, ConfState{{NodeId(1)}, {}}).ok());
  raft::NodeOptions options;
  options.id = NodeId(1);
  std::vector<std::string> applied;
  auto drain = [&](raft::Node& node) {
    while (node.HasReady()) {
      raft::Ready rd = node.GetReady();
      ASSERT_TRUE(storage_->Persist(rd).ok());
      for (const Entry& entry : rd.committed_entries) {
        if (entry.type == EntryType::kNormal && !entry.data.empty()) {
          applied.push_back(entry.data);
        }
      }
      node.Advance();
    }
  };
  const absl::Time now = absl::FromUnixSeconds(1'800'000'000);
  {
    auto node = raft::Node::Create(options, storage_.get());
    ASSERT_TRUE(node.ok()) << node.status();
    (*node)->Campaign();
    drain(**node);
    ASSERT_EQ((*node)->role(), raft::Role::kLeader);
    ASSERT_TRUE((*node)->Propose({"a", "b"}, now).ok());
    drain(**node);
    ASSERT_TRUE((*node)->Propose({"c"}, now).ok());
    drain(**node);
  }
  EXPECT_EQ(applied, (std::vector<std::string>{"a", "b", "c"}));
  const HardState hard_state = storage_->GetHardState();
  const LogIndex last = storage_->LastIndex();
  EXPECT_EQ(hard_state.commit, last);

  Reopen();
  EXPECT_EQ(storage_->GetHardState(), hard_state);
  auto node = raft::Node::Create(options, storage_.get());
  ASSERT_TRUE(node.ok()) << node.status();
  EXPECT_EQ((*node)->term(), hard_state.term);
  EXPECT_EQ((*node)->last_index(), last);
  EXPECT_EQ((*node)->commit(), last);
  applied.clear();
  drain(**node);  // applied 0 on restart: the committed entries are handed out again
  EXPECT_EQ(applied, (std::vector<std::string>{"a", "b", "c"}));
}

// ---------------------------------------------------------------------------------------------
// Fail-stop.

struct FaultCase {
  const char* name;
  Fault fault;
  FaultTarget target;
  // Whether the failed write may survive a restart (it reached the file, only its sync failed).
  bool may_survive;
};

void PrintTo(const FaultCase& fault_case, std::ostream* os) {
  *os << fault_case.name;
}

class RocksDbFailStopTest : public RocksDbLogStorageTest,
                            public ::testing::WithParamInterface<FaultCase> {};

TEST_P(RocksDbFailStopTest, FailedWriteStopsTheStorageForGood) {
  Persist(std::nullopt, Range(1, 10, 1), HardState{Term(1), NodeId(1), LogIndex(3)});
  const MemoryLogStorage before = model_;
  MemoryLogStorage after = model_;
  ASSERT_TRUE(after.Append(Range(11, 12, 1)).ok());
  ASSERT_TRUE(after.SetHardState(HardState{Term(1), NodeId(1), LogIndex(10)}).ok());

  fault_fs_->Inject(GetParam().fault, GetParam().target);
  const absl::Status status = storage_->Persist(std::nullopt, Range(11, 12, 1),
                                                HardState{Term(1), NodeId(1), LogIndex(10)});
  ASSERT_FALSE(status.ok());
  EXPECT_TRUE(storage_->failed());
  EXPECT_EQ(storage_->failure(), status);
  // The cache still shows only what was durable before the failed write.
  ExpectSameState(*storage_, before);

  // Every later write returns the first error without reaching RocksDB, even once the disk
  // works again: a retried fsync could report success for pages the kernel already dropped.
  fault_fs_->Clear();
  const uint64_t sequence = Sequence();
  const uint64_t failures = fault_fs_->injected_failures();
  EXPECT_EQ(storage_->Append(Range(11, 11, 1)), status);
  EXPECT_EQ(storage_->SetHardState(HardState{Term(2), NodeId(2), LogIndex(3)}), status);
  EXPECT_EQ(storage_->ApplySnapshot(SnapshotAt(30, 2)), status);
  EXPECT_EQ(storage_->CreateSnapshot(LogIndex(5), ConfState{}, ""), status);
  EXPECT_EQ(storage_->Compact(LogIndex(1)), status);
  EXPECT_EQ(Sequence(), sequence);
  EXPECT_EQ(fault_fs_->injected_failures(), failures);

  // The restarted process sees a consistent state: everything before, and the failed write
  // entirely or not at all.
  fault_fs_->Inject(GetParam().fault, GetParam().target);  // the dying process's disk
  Close();
  fault_fs_->Clear();
  Reopen();
  if (GetParam().may_survive && storage_->LastIndex() == after.LastIndex()) {
    ExpectSameState(*storage_, after);
  } else {
    ExpectSameState(*storage_, before);
  }
  EXPECT_FALSE(storage_->failed());
  EXPECT_TRUE(storage_->Append(Range(11, 11, 2)).ok());
}

INSTANTIATE_TEST_SUITE_P(
    Faults, RocksDbFailStopTest,
    ::testing::Values(FaultCase{"WalSyncError", Fault::kSyncError, FaultTarget::kWalOnly, true},
                      FaultCase{"WalWriteError", Fault::kWriteError, FaultTarget::kWalOnly, false},
                      FaultCase{"NoSpace", Fault::kNoSpace, FaultTarget::kAllFiles, false}),
    [](const ::testing::TestParamInfo<FaultCase>& param_info) { return param_info.param.name; });

TEST_F(RocksDbLogStorageTest, BackgroundErrorStopsTheStorage) {
  Persist(std::nullopt, Range(1, 3, 1), std::nullopt);
  fault_fs_->Inject(Fault::kWriteError, FaultTarget::kTablesOnly);
  // A flush of the memtable (here forced; in production triggered by size) fails in RocksDB's
  // background thread; the WAL itself still works. (RocksDB's flush thread then pauses one second
  // before it gives up, which closing the database waits for: this test takes about 1 s.)
  EXPECT_FALSE(
      database_->db()->Flush(rocksdb::FlushOptions(), database_->family(kRaftLogFamily)).ok());
  const absl::Status status = storage_->Append(Range(4, 4, 1));
  EXPECT_FALSE(status.ok());
  // Caught before the write, from RocksDB's background error count.
  EXPECT_NE(std::string(status.message()).find("background error"), std::string::npos) << status;
  EXPECT_TRUE(storage_->failed());
  EXPECT_EQ(storage_->LastIndex(), LogIndex(3));
}

}  // namespace
}  // namespace backstop::queue
