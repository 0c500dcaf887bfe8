#include "queue/raft_storage.h"

#include <array>
#include <utility>

#include "common/status.h"
#include "proto/raft.pb.h"
#include "queue/raft/codec.h"
#include "rocksdb/env.h"
#include "rocksdb/options.h"
#include "rocksdb/slice.h"
#include "rocksdb/write_batch.h"

namespace backstop::queue {

using raft::Entry;
using raft::EntryType;
using raft::HardState;
using raft::LogIndex;
using raft::SnapshotMeta;
using raft::Term;

namespace {

constexpr char kHardStateKey[] = "hard_state";
constexpr char kSnapshotKey[] = "snapshot";
constexpr char kLogStartKey[] = "log_start";
constexpr size_t kHeaderSize = 17;  // term, time, type

void PutBigEndian(uint64_t value, char* out) {
  for (int i = 7; i >= 0; --i) {
    out[i] = static_cast<char>(value & 0xff);
    value >>= 8;
  }
}

uint64_t GetBigEndian(const char* in) {
  uint64_t value = 0;
  for (int i = 0; i < 8; ++i) {
    value = (value << 8) | static_cast<uint8_t>(in[i]);
  }
  return value;
}

// Big-endian so that RocksDB's bytewise order is index order.
using Key = std::array<char, 8>;
Key EncodeKey(LogIndex index) {
  Key key;
  PutBigEndian(index.value(), key.data());
  return key;
}
rocksdb::Slice AsSlice(const Key& key) {
  return rocksdb::Slice(key.data(), key.size());
}

absl::Status FromRocks(const rocksdb::Status& status, const char* context) {
  if (status.ok()) {
    return absl::OkStatus();
  }
  if (status.IsCorruption()) {
    return absl::DataLossError(std::string(context) + ": " + status.ToString());
  }
  return absl::InternalError(std::string(context) + ": " + status.ToString());
}

// Reads one raft_state record; NotFound leaves `message` untouched.
absl::Status ReadRecord(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* family, const char* key,
                        google::protobuf::MessageLite& message) {
  std::string value;
  rocksdb::Status status = db->Get(rocksdb::ReadOptions(), family, key, &value);
  if (status.IsNotFound()) {
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(FromRocks(status, "reading raft state"));
  if (!message.ParseFromString(value)) {
    return absl::DataLossError(std::string("unparsable raft state record ") + key);
  }
  return absl::OkStatus();
}

std::string EncodeSnapshotMeta(const SnapshotMeta& meta) {
  return raft::ToWire(raft::Snapshot{meta, {}}).meta().SerializeAsString();
}

// The compaction point as a data-less entry: its index and stamp.
std::string EncodeLogStart(LogIndex index, Term term, absl::Time time) {
  Entry entry;
  entry.index = index;
  entry.term = term;
  entry.time = time;
  return raft::ToWire(entry).SerializeAsString();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Database

RocksDbHealth ReadRocksDbHealth(rocksdb::DB& db) {
  RocksDbHealth health;
  db.GetIntProperty(rocksdb::DB::Properties::kEstimatePendingCompactionBytes,
                    &health.pending_compaction_bytes);
  uint64_t stopped = 0;
  db.GetIntProperty(rocksdb::DB::Properties::kIsWriteStopped, &stopped);
  health.write_stopped = stopped != 0;
  db.GetIntProperty(rocksdb::DB::Properties::kActualDelayedWriteRate, &health.delayed_write_rate);
  db.GetIntProperty(rocksdb::DB::Properties::kBackgroundErrors, &health.background_errors);
  return health;
}

absl::StatusOr<std::unique_ptr<Database>> Database::Open(const std::string& path,
                                                         const DatabaseOptions& options) {
  std::unique_ptr<Database> database(new Database());
  rocksdb::DBOptions db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  // Fail-stop: RocksDB must not resume by itself after an I/O error (that would retry writes).
  db_options.max_bgerror_resume_count = 0;
  db_options.max_total_wal_size = options.max_wal_bytes;
  if (options.file_system != nullptr) {
    database->env_ = rocksdb::NewCompositeEnv(options.file_system);
    db_options.env = database->env_.get();
  }

  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors{
      {rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions()},
      {kRaftLogFamily, rocksdb::ColumnFamilyOptions()},
      {kRaftStateFamily, rocksdb::ColumnFamilyOptions()},
  };
  descriptors.insert(descriptors.end(), options.extra_families.begin(),
                     options.extra_families.end());
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* db = nullptr;
  RETURN_IF_ERROR(FromRocks(rocksdb::DB::Open(db_options, path, descriptors, &handles, &db),
                            ("opening RocksDB at " + path).c_str()));
  database->db_.reset(db);
  for (size_t i = 0; i < handles.size(); ++i) {
    database->families_[descriptors[i].name] = handles[i];
  }
  return database;
}

Database::~Database() {
  for (auto& [name, handle] : families_) {
    db_->DestroyColumnFamilyHandle(handle);
  }
  if (db_ != nullptr) {
    db_->Close().PermitUncheckedError();
  }
}

rocksdb::ColumnFamilyHandle* Database::family(const std::string& name) const {
  auto it = families_.find(name);
  return it == families_.end() ? nullptr : it->second;
}

// ---------------------------------------------------------------------------------------------
// RocksDbLogStorage

struct RocksDbLogStorage::Change {
  rocksdb::WriteBatch batch;
  // The log as the staged operations leave it.
  LogIndex offset;
  LogIndex last;
  // What to apply to the cache once the batch is durable.
  std::optional<SnapshotMeta> snapshot;
  bool drop_all = false;
  std::optional<std::pair<LogIndex, Stamp>> new_start;
  LogIndex append_at;
  std::vector<Stamp> appended;
  std::optional<HardState> hard_state;
};

RocksDbLogStorage::RocksDbLogStorage(Database* database, StorageOptions options)
    : database_(database),
      log_family_(database->family(kRaftLogFamily)),
      state_family_(database->family(kRaftStateFamily)),
      options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<RocksDbLogStorage>> RocksDbLogStorage::Open(Database* database,
                                                                           StorageOptions options) {
  std::unique_ptr<RocksDbLogStorage> storage(new RocksDbLogStorage(database, std::move(options)));
  if (storage->log_family_ == nullptr || storage->state_family_ == nullptr) {
    return absl::FailedPreconditionError("database lacks the Raft column families");
  }
  RETURN_IF_ERROR(storage->Load());
  return storage;
}

absl::Status RocksDbLogStorage::Load() {
  rocksdb::DB* db = database_->db();
  raft::wire::HardState hard_state;
  RETURN_IF_ERROR(ReadRecord(db, state_family_, kHardStateKey, hard_state));
  hard_state_ = raft::FromWire(hard_state);
  raft::wire::Snapshot snapshot;
  RETURN_IF_ERROR(ReadRecord(db, state_family_, kSnapshotKey, *snapshot.mutable_meta()));
  snapshot_ = raft::FromWire(snapshot).meta;
  raft::wire::Entry start;
  RETURN_IF_ERROR(ReadRecord(db, state_family_, kLogStartKey, start));
  ASSIGN_OR_RETURN(Entry start_entry, raft::FromWire(start));
  offset_ = start_entry.index;
  offset_stamp_ = Stamp{start_entry.term, start_entry.time};

  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), log_family_));
  const Key first = EncodeKey(offset_ + 1);
  for (it->Seek(AsSlice(first)); it->Valid(); it->Next()) {
    const LogIndex expected = LastIndex() + 1;
    if (it->key().size() != 8 || LogIndex(GetBigEndian(it->key().data())) != expected ||
        it->value().size() < kHeaderSize) {
      return absl::DataLossError("raft log is not contiguous after index " +
                                 std::to_string(LastIndex().value()));
    }
    const char* header = it->value().data();
    stamps_.push_back(Stamp{Term(GetBigEndian(header)),
                            absl::FromUnixMicros(static_cast<int64_t>(GetBigEndian(header + 8)))});
  }
  RETURN_IF_ERROR(FromRocks(it->status(), "scanning the raft log"));
  if (hard_state_.commit > LastIndex()) {
    return absl::DataLossError("raft commit index " + std::to_string(hard_state_.commit.value()) +
                               " is beyond the last index " + std::to_string(LastIndex().value()));
  }
  return absl::OkStatus();
}

absl::StatusOr<RocksDbLogStorage::Stamp> RocksDbLogStorage::StampAt(LogIndex index) const {
  if (index < offset_) {
    return raft::CompactedError(index);
  }
  if (index == offset_) {
    return offset_stamp_;
  }
  if (index > LastIndex()) {
    return absl::OutOfRangeError("raft log index " + std::to_string(index.value()) +
                                 " is beyond the last index");
  }
  return stamps_[index.Since(offset_) - 1];
}

absl::StatusOr<Term> RocksDbLogStorage::TermAt(LogIndex index) const {
  ASSIGN_OR_RETURN(Stamp stamp, StampAt(index));
  return stamp.term;
}

absl::StatusOr<absl::Time> RocksDbLogStorage::TimeAt(LogIndex index) const {
  ASSIGN_OR_RETURN(Stamp stamp, StampAt(index));
  return stamp.time;
}

absl::StatusOr<std::vector<Entry>> RocksDbLogStorage::Entries(LogIndex lo, LogIndex hi,
                                                              uint64_t max_bytes) const {
  if (lo <= offset_) {
    return raft::CompactedError(lo);
  }
  if (hi > LastIndex() + 1 || lo > hi) {
    return absl::OutOfRangeError("raft log range beyond the last index");
  }
  std::vector<Entry> out;
  if (lo == hi) {
    return out;
  }
  const Key lo_key = EncodeKey(lo);
  const Key hi_key = EncodeKey(hi);
  const rocksdb::Slice upper = AsSlice(hi_key);
  rocksdb::ReadOptions read_options;
  read_options.iterate_upper_bound = &upper;
  std::unique_ptr<rocksdb::Iterator> it(database_->db()->NewIterator(read_options, log_family_));
  uint64_t bytes = 0;
  LogIndex expected = lo;
  for (it->Seek(AsSlice(lo_key)); it->Valid(); it->Next()) {
    const rocksdb::Slice value = it->value();
    if (it->key().size() != 8 || LogIndex(GetBigEndian(it->key().data())) != expected ||
        value.size() < kHeaderSize) {
      return absl::DataLossError("raft log entry " + std::to_string(expected.value()) +
                                 " is missing or malformed");
    }
    Entry entry;
    entry.index = expected;
    entry.term = Term(GetBigEndian(value.data()));
    entry.time = absl::FromUnixMicros(static_cast<int64_t>(GetBigEndian(value.data() + 8)));
    entry.type = static_cast<EntryType>(value.data()[16]);
    entry.data.assign(value.data() + kHeaderSize, value.size() - kHeaderSize);
    bytes += entry.ByteSize();
    if (!out.empty() && bytes > max_bytes) {
      return out;
    }
    out.push_back(std::move(entry));
    expected = expected + 1;
  }
  RETURN_IF_ERROR(FromRocks(it->status(), "reading the raft log"));
  if (expected != hi) {
    return absl::DataLossError("raft log entry " + std::to_string(expected.value()) +
                               " is missing");
  }
  return out;
}

absl::StatusOr<raft::Snapshot> RocksDbLogStorage::GetSnapshot() const {
  raft::Snapshot snapshot{snapshot_, {}};
  if (options_.snapshot_data && snapshot_.index != LogIndex(0)) {
    ASSIGN_OR_RETURN(snapshot.data, options_.snapshot_data(snapshot_));
  }
  return snapshot;
}

absl::Status RocksDbLogStorage::StageSnapshot(const SnapshotMeta& meta, Change& change) const {
  if (meta.index <= snapshot_.index && snapshot_.index != LogIndex(0)) {
    return absl::FailedPreconditionError("raft snapshot is older than the one held");
  }
  RETURN_IF_ERROR(FromRocks(change.batch.Put(state_family_, kSnapshotKey, EncodeSnapshotMeta(meta)),
                            "staging the snapshot"));
  if (change.last > change.offset) {
    const Key from = EncodeKey(change.offset + 1);
    const Key to = EncodeKey(change.last + 1);
    RETURN_IF_ERROR(FromRocks(change.batch.DeleteRange(log_family_, AsSlice(from), AsSlice(to)),
                              "staging the snapshot"));
  }
  RETURN_IF_ERROR(FromRocks(change.batch.Put(state_family_, kLogStartKey,
                                             EncodeLogStart(meta.index, meta.term, meta.time)),
                            "staging the snapshot"));
  change.snapshot = meta;
  change.drop_all = true;
  change.new_start = {meta.index, Stamp{meta.term, meta.time}};
  change.offset = meta.index;
  change.last = meta.index;
  return absl::OkStatus();
}

absl::Status RocksDbLogStorage::StageEntries(std::span<const Entry> entries, Change& change) const {
  if (entries.empty()) {
    return absl::OkStatus();
  }
  const LogIndex first = entries.front().index;
  if (first > change.last + 1) {
    return absl::InvalidArgumentError("raft append leaves a gap after the last index");
  }
  for (size_t i = 1; i < entries.size(); ++i) {
    if (entries[i].index != first + i) {
      return absl::InvalidArgumentError("raft append with non-consecutive indexes");
    }
  }
  size_t skip = 0;
  while (skip < entries.size() && entries[skip].index <= change.offset) {
    ++skip;  // already covered by the snapshot
  }
  if (skip == entries.size()) {
    return absl::OkStatus();
  }
  for (size_t i = skip; i < entries.size(); ++i) {
    const Entry& entry = entries[i];
    std::array<char, kHeaderSize> header{};
    PutBigEndian(entry.term.value(), header.data());
    PutBigEndian(static_cast<uint64_t>(absl::ToUnixMicros(entry.time)), header.data() + 8);
    header[16] = static_cast<char>(entry.type);
    const Key key = EncodeKey(entry.index);
    const rocksdb::Slice key_slice = AsSlice(key);
    const std::array<rocksdb::Slice, 2> value{rocksdb::Slice(header.data(), header.size()),
                                              rocksdb::Slice(entry.data)};
    RETURN_IF_ERROR(FromRocks(change.batch.Put(log_family_, rocksdb::SliceParts(&key_slice, 1),
                                               rocksdb::SliceParts(value.data(), 2)),
                              "staging raft entries"));
    change.appended.push_back(
        Stamp{entry.term, absl::FromUnixMicros(absl::ToUnixMicros(entry.time))});
  }
  const LogIndex new_last = entries.back().index;
  if (change.last > new_last) {  // conflict: drop the old suffix the new entries did not overwrite
    const Key from = EncodeKey(new_last + 1);
    const Key to = EncodeKey(change.last + 1);
    RETURN_IF_ERROR(FromRocks(change.batch.DeleteRange(log_family_, AsSlice(from), AsSlice(to)),
                              "staging raft entries"));
  }
  change.append_at = entries[skip].index;
  change.last = new_last;
  return absl::OkStatus();
}

absl::Status RocksDbLogStorage::Commit(Change& change, Durability durability) {
  if (failed()) {
    return failure_;
  }
  const bool synced = durability == Durability::kSynced;
  rocksdb::DB* db = database_->db();
  uint64_t background_errors = 0;
  rocksdb::Status status;
  if (db->GetIntProperty(rocksdb::DB::Properties::kBackgroundErrors, &background_errors) &&
      background_errors > 0) {
    status = rocksdb::Status::IOError("RocksDB reported a background error");
  } else {
    rocksdb::WriteOptions write_options;
    write_options.sync = synced;
    const absl::Time started = absl::Now();
    status = db->Write(write_options, &change.batch);
    if (synced) {
      fsync_seconds_.Observe(absl::ToDoubleSeconds(absl::Now() - started));
    }
  }
  if (!status.ok()) {
    failure_ = absl::InternalError(
        "raft storage failed; the node must stop serving and restart (fail-stop): " +
        status.ToString());
    return failure_;
  }
  if (synced) {
    ++synced_writes_;
  }
  Apply(change);
  return absl::OkStatus();
}

void RocksDbLogStorage::Apply(Change& change) {
  if (change.snapshot.has_value()) {
    snapshot_ = *change.snapshot;
  }
  if (change.new_start.has_value()) {
    const auto& [index, stamp] = *change.new_start;
    if (change.drop_all) {
      stamps_.clear();
    } else {
      stamps_.erase(stamps_.begin(),
                    stamps_.begin() + static_cast<std::ptrdiff_t>(index.Since(offset_)));
    }
    offset_ = index;
    offset_stamp_ = stamp;
  }
  if (!change.appended.empty()) {
    stamps_.resize(change.append_at.Since(offset_) - 1);
    stamps_.insert(stamps_.end(), change.appended.begin(), change.appended.end());
  }
  if (change.hard_state.has_value()) {
    hard_state_ = *change.hard_state;
  }
}

absl::Status RocksDbLogStorage::Persist(const std::optional<raft::Snapshot>& snapshot,
                                        std::span<const Entry> entries,
                                        const std::optional<HardState>& hard_state) {
  if (failed()) {
    return failure_;
  }
  Change change;
  change.offset = offset_;
  change.last = LastIndex();
  if (snapshot.has_value()) {
    RETURN_IF_ERROR(StageSnapshot(snapshot->meta, change));
  }
  RETURN_IF_ERROR(StageEntries(entries, change));
  if (hard_state.has_value()) {
    RETURN_IF_ERROR(FromRocks(change.batch.Put(state_family_, kHardStateKey,
                                               raft::ToWire(*hard_state).SerializeAsString()),
                              "staging the hard state"));
    change.hard_state = hard_state;
  }
  if (change.batch.Count() == 0) {
    return absl::OkStatus();
  }
  // Most Readies of a busy voter carry only a moved commit index besides entries to apply:
  // those wait for the next synced write (QueueNode::ReconcileAppliedIndex covers a state
  // machine that kept more than the durable commit index after a crash).
  const bool must_sync =
      raft::MustSync(hard_state_, snapshot.has_value(), !entries.empty(), hard_state);
  return Commit(change, must_sync ? Durability::kSynced : Durability::kBuffered);
}

absl::Status RocksDbLogStorage::Append(std::span<const Entry> entries) {
  return Persist(std::nullopt, entries, std::nullopt);
}

absl::Status RocksDbLogStorage::SetHardState(const HardState& hard_state) {
  return Persist(std::nullopt, {}, hard_state);
}

absl::Status RocksDbLogStorage::ApplySnapshot(const raft::Snapshot& snapshot) {
  return Persist(snapshot, {}, std::nullopt);
}

absl::Status RocksDbLogStorage::CreateSnapshot(LogIndex index, const raft::ConfState& conf_state,
                                               std::string /*data*/) {
  if (failed()) {
    return failure_;
  }
  if (index <= snapshot_.index || index > LastIndex() || index < offset_) {
    return absl::FailedPreconditionError("raft snapshot index out of range");
  }
  ASSIGN_OR_RETURN(Stamp stamp, StampAt(index));
  Change change;
  change.snapshot = SnapshotMeta{index, stamp.term, stamp.time, conf_state};
  RETURN_IF_ERROR(
      FromRocks(change.batch.Put(state_family_, kSnapshotKey, EncodeSnapshotMeta(*change.snapshot)),
                "staging the snapshot"));
  return Commit(change, Durability::kSynced);
}

absl::Status RocksDbLogStorage::Compact(LogIndex index) {
  if (failed()) {
    return failure_;
  }
  if (index <= offset_) {
    return absl::OkStatus();
  }
  if (index > snapshot_.index) {
    return absl::FailedPreconditionError("raft compaction beyond the snapshot");
  }
  ASSIGN_OR_RETURN(Stamp stamp, StampAt(index));
  Change change;
  const Key from = EncodeKey(offset_ + 1);
  const Key to = EncodeKey(index + 1);
  RETURN_IF_ERROR(FromRocks(change.batch.DeleteRange(log_family_, AsSlice(from), AsSlice(to)),
                            "staging the compaction"));
  RETURN_IF_ERROR(FromRocks(
      change.batch.Put(state_family_, kLogStartKey, EncodeLogStart(index, stamp.term, stamp.time)),
      "staging the compaction"));
  change.new_start = {index, stamp};
  return Commit(change, Durability::kSynced);
}

}  // namespace backstop::queue
