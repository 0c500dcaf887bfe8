#pragma once

// The files behind the queue's Raft snapshots (DESIGN §3.1):
//   <data_dir>/snapshots/<index>    RocksDB checkpoint of the state machine at log index <index>;
//                                   only the newest is kept, it is what a leader streams
//   <data_dir>/snapshots/incoming   a snapshot being received from the leader
// and the crash-safe directory swap that puts a received snapshot in place of the state machine.
//
// A received snapshot also holds kSnapshotMetaFile, the Raft metadata it was sent with: if the
// process dies after the swap but before the Raft log recorded the snapshot, the next start
// finds the state ahead of the log and completes the install from that file.
//
// Every write is fsynced (files, then their directory) before it is relied upon; any failure is
// returned and the caller fail-stops.

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "queue/raft/types.h"

namespace backstop::queue {

inline constexpr char kSnapshotMetaFile[] = "BACKSTOP_SNAPSHOT_META";

struct SnapshotFile {
  std::string name;  // plain file name, no directory part
  uint64_t size = 0;
};

// Running digest of a snapshot stream (FNV-1a 64 over every data byte in stream order); detects
// corrupted chunks that the transport did not.
class StreamDigest {
 public:
  void Add(std::string_view data);
  uint64_t value() const { return value_; }

 private:
  uint64_t value_ = 0xcbf29ce484222325ULL;
};

// A checkpoint opened for streaming. Every file is opened at once, so the store may replace or
// delete the directory while it is read. One thread at a time.
class SnapshotReader {
 public:
  ~SnapshotReader();
  SnapshotReader(const SnapshotReader&) = delete;
  SnapshotReader& operator=(const SnapshotReader&) = delete;

  raft::LogIndex index() const { return index_; }
  const std::vector<SnapshotFile>& files() const { return files_; }
  // Up to `max` bytes of files()[file] from `offset` (fewer only at the end of the file).
  absl::StatusOr<std::string> Read(size_t file, uint64_t offset, size_t max) const;

 private:
  friend class SnapshotStore;
  SnapshotReader() = default;

  raft::LogIndex index_;
  std::vector<SnapshotFile> files_;
  std::vector<int> fds_;
};

// A snapshot being received: files written strictly in manifest order, then verified and
// made durable by Finish(). Destroying it before Release() removes the directory. One thread at
// a time.
class SnapshotStaging {
 public:
  ~SnapshotStaging();
  SnapshotStaging(const SnapshotStaging&) = delete;
  SnapshotStaging& operator=(const SnapshotStaging&) = delete;

  const raft::SnapshotMeta& meta() const { return meta_; }
  const std::string& dir() const { return dir_; }
  // The next bytes of files()[file] at `offset`: must continue exactly where the stream is.
  absl::Status Write(size_t file, uint64_t offset, std::string_view data);
  // Every file complete and the digest equal to the sender's: writes kSnapshotMetaFile and
  // fsyncs the files and the directory.
  absl::Status Finish(uint64_t digest);
  bool finished() const { return finished_; }
  // The directory was moved elsewhere (installed): do not remove it.
  void Release() { released_ = true; }

 private:
  friend class SnapshotStore;
  SnapshotStaging() = default;
  absl::Status CloseCurrent();

  raft::SnapshotMeta meta_;
  std::string dir_;
  std::vector<SnapshotFile> files_;
  size_t current_ = 0;  // file being written
  uint64_t written_ = 0;
  int fd_ = -1;
  StreamDigest digest_;
  bool finished_ = false;
  bool released_ = false;
  std::shared_ptr<int> token_;  // SnapshotStore's "one staging at a time"; released last
};

// Owns <data_dir>/snapshots. Thread-safe: the Raft thread publishes checkpoints while transfer
// threads open them and a gRPC thread stages an incoming one.
class SnapshotStore {
 public:
  // Creates the directory if needed and forgets what an interrupted run left behind (a half
  // written checkpoint or staging directory).
  static absl::StatusOr<std::shared_ptr<SnapshotStore>> Open(const std::string& data_dir);

  // Where a checkpoint at `index` is written before Publish() (removed first if a crash left
  // one there).
  absl::StatusOr<std::string> PrepareDir(raft::LogIndex index);
  // Makes the checkpoint written into PrepareDir(index) durable and the one to send; deletes
  // older ones.
  absl::Status Publish(raft::LogIndex index);
  // The published checkpoint's index, if any.
  std::optional<raft::LogIndex> published() const;

  // Opens the published checkpoint for streaming; NotFound unless it is at `index`.
  absl::StatusOr<std::unique_ptr<SnapshotReader>> OpenForSending(raft::LogIndex index) const;

  // A fresh staging directory for a snapshot streamed with `meta` and `files`; refuses file
  // names that are not plain names. Only one at a time (a second gets ResourceExhausted until
  // the first is destroyed).
  absl::StatusOr<std::unique_ptr<SnapshotStaging>> BeginStaging(
      const raft::SnapshotMeta& meta, const std::vector<SnapshotFile>& files);

 private:
  explicit SnapshotStore(std::string dir) : dir_(std::move(dir)) {}
  std::string PathOf(raft::LogIndex index) const;

  const std::string dir_;
  mutable std::mutex mutex_;
  std::optional<raft::LogIndex> published_;  // guarded by mutex_
  std::weak_ptr<int> staging_;               // guarded by mutex_; alive while one is staged
};

// The metadata a received snapshot was installed with (kSnapshotMetaFile in `dir`); NotFound
// when the directory holds none.
absl::StatusOr<raft::SnapshotMeta> ReadSnapshotMeta(const std::string& dir);

// TEST-ONLY: where SwapInDirectory stops, to simulate a crash between its steps.
enum class SwapStop : uint8_t { kNone, kAfterMoveAside, kAfterRename };

// Replaces directory `target` with `staged` (same filesystem): moves `target` aside, renames
// `staged` into place, fsyncs the parent directories, then deletes the old one. A crash at any
// point leaves, after RecoverDirectorySwap(target), either the old or the new directory.
absl::Status SwapInDirectory(const std::string& staged, const std::string& target,
                             SwapStop stop = SwapStop::kNone);
// Completes or undoes a swap of `target` that a crash interrupted; a no-op otherwise.
absl::Status RecoverDirectorySwap(const std::string& target);

// fsyncs a directory (so that entries created, renamed or removed in it are durable).
absl::Status SyncDirectory(const std::string& dir);

}  // namespace backstop::queue
