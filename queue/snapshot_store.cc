#include "queue/snapshot_store.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <set>
#include <system_error>
#include <utility>

#include "common/status.h"
#include "proto/raft.pb.h"
#include "queue/raft/codec.h"

namespace backstop::queue {
namespace {

namespace fs = std::filesystem;

constexpr char kIncoming[] = "incoming";
constexpr char kPreparing[] = ".tmp";  // suffix of a checkpoint not yet published
constexpr char kAside[] = ".old";      // suffix of a directory being replaced

absl::Status FsError(const std::error_code& error, const std::string& what) {
  return absl::InternalError(what + ": " + error.message());
}

absl::Status SyncPath(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) {
    return ErrnoToStatus(errno, "open " + path + " to fsync");
  }
  const int result = ::fsync(fd);
  const int saved = errno;
  ::close(fd);
  return result == 0 ? absl::OkStatus() : ErrnoToStatus(saved, "fsync " + path);
}

std::string ParentOf(const std::string& path) {
  const fs::path parent = fs::path(path).parent_path();
  return parent.empty() ? "." : parent.string();
}

bool PlainFileName(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\0') == std::string::npos && name != kSnapshotMetaFile;
}

absl::Status RemoveAll(const std::string& path) {
  std::error_code error;
  fs::remove_all(path, error);
  return error ? FsError(error, "remove " + path) : absl::OkStatus();
}

}  // namespace

void StreamDigest::Add(std::string_view data) {
  for (char c : data) {
    value_ = (value_ ^ static_cast<uint8_t>(c)) * 0x100000001b3ULL;
  }
}

// ---------------------------------------------------------------------------------------------
// SnapshotReader

SnapshotReader::~SnapshotReader() {
  for (int fd : fds_) {
    ::close(fd);
  }
}

absl::StatusOr<std::string> SnapshotReader::Read(size_t file, uint64_t offset, size_t max) const {
  if (file >= files_.size()) {
    return absl::OutOfRangeError("snapshot file index out of range");
  }
  const size_t length = static_cast<size_t>(
      std::min<uint64_t>(max, files_[file].size - std::min(offset, files_[file].size)));
  std::string out(length, '\0');
  size_t done = 0;
  while (done < length) {
    const ssize_t n =
        ::pread(fds_[file], out.data() + done, length - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return n < 0 ? ErrnoToStatus(errno, "read snapshot file " + files_[file].name)
                   : absl::DataLossError("snapshot file " + files_[file].name + " shrank");
    }
    done += static_cast<size_t>(n);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// SnapshotStaging

SnapshotStaging::~SnapshotStaging() {
  if (fd_ >= 0) {
    ::close(fd_);
  }
  if (!released_) {
    RemoveAll(dir_).IgnoreError();  // the next staging starts by clearing it anyway
  }
}

absl::Status SnapshotStaging::CloseCurrent() {
  const int fd = fd_;
  fd_ = -1;
  if (::fsync(fd) != 0) {
    const int saved = errno;
    ::close(fd);
    return ErrnoToStatus(saved, "fsync staged snapshot file " + files_[current_].name);
  }
  if (::close(fd) != 0) {
    return ErrnoToStatus(errno, "close staged snapshot file " + files_[current_].name);
  }
  return absl::OkStatus();
}

absl::Status SnapshotStaging::Write(size_t file, uint64_t offset, std::string_view data) {
  if (finished_) {
    return absl::FailedPreconditionError("snapshot data after its end");
  }
  // Files complete so far (including empty ones) are closed before moving on.
  while (current_ < files_.size() && file > current_) {
    if (written_ != files_[current_].size) {
      return absl::DataLossError("snapshot file " + files_[current_].name + " is truncated");
    }
    if (fd_ >= 0) {
      RETURN_IF_ERROR(CloseCurrent());
    } else {
      // An empty file gets no chunk: create it here.
      const std::string path = dir_ + "/" + files_[current_].name;
      const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
      if (fd < 0) {
        return ErrnoToStatus(errno, "create " + path);
      }
      fd_ = fd;
      RETURN_IF_ERROR(CloseCurrent());
    }
    ++current_;
    written_ = 0;
  }
  if (file != current_ || file >= files_.size()) {
    return absl::DataLossError("snapshot chunk out of order");
  }
  if (offset != written_ || data.size() > files_[file].size - written_) {
    return absl::DataLossError("snapshot chunk of " + files_[file].name +
                               " does not continue the file or runs past its size");
  }
  if (fd_ < 0) {
    const std::string path = dir_ + "/" + files_[file].name;
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ < 0) {
      return ErrnoToStatus(errno, "create " + path);
    }
  }
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd_, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      return ErrnoToStatus(errno, "write staged snapshot file " + files_[file].name);
    }
    done += static_cast<size_t>(n);
  }
  written_ += data.size();
  digest_.Add(data);
  return absl::OkStatus();
}

absl::Status SnapshotStaging::Finish(uint64_t digest) {
  if (!files_.empty()) {
    // Creates any trailing empty files and checks that the last one is complete.
    RETURN_IF_ERROR(Write(files_.size() - 1, files_.back().size, ""));
    RETURN_IF_ERROR(CloseCurrent());
  }
  if (digest != digest_.value()) {
    return absl::DataLossError("snapshot digest mismatch: the stream was corrupted");
  }
  const std::string meta_path = dir_ + "/" + kSnapshotMetaFile;
  const std::string meta = raft::ToWire(raft::Snapshot{meta_, {}}).meta().SerializeAsString();
  const int fd = ::open(meta_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return ErrnoToStatus(errno, "create " + meta_path);
  }
  const ssize_t written = ::write(fd, meta.data(), meta.size());
  int error = written == static_cast<ssize_t>(meta.size()) ? 0 : (written < 0 ? errno : EIO);
  if (error == 0 && ::fsync(fd) != 0) {
    error = errno;
  }
  ::close(fd);
  if (error != 0) {
    return ErrnoToStatus(error, "write " + meta_path);
  }
  RETURN_IF_ERROR(SyncDirectory(dir_));
  finished_ = true;
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// SnapshotStore

absl::StatusOr<std::shared_ptr<SnapshotStore>> SnapshotStore::Open(const std::string& data_dir) {
  const std::string dir = data_dir + "/snapshots";
  std::error_code error;
  fs::create_directories(dir, error);
  if (error) {
    return FsError(error, "create " + dir);
  }
  std::shared_ptr<SnapshotStore> store(new SnapshotStore(dir));
  std::optional<raft::LogIndex> newest;
  std::vector<std::string> leftovers;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, error)) {
    const std::string name = entry.path().filename().string();
    const bool number =
        !name.empty() && name.size() <= 19 &&
        std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (!number) {
      leftovers.push_back(entry.path().string());  // staging, unpublished or aside
      continue;
    }
    const raft::LogIndex index(std::stoull(name));
    if (newest.has_value() && *newest > index) {
      leftovers.push_back(store->PathOf(index));
    } else {
      if (newest.has_value()) {
        leftovers.push_back(store->PathOf(*newest));
      }
      newest = index;
    }
  }
  if (error) {
    return FsError(error, "list " + dir);
  }
  for (const std::string& path : leftovers) {
    RETURN_IF_ERROR(RemoveAll(path));
  }
  store->published_ = newest;
  return store;
}

std::string SnapshotStore::PathOf(raft::LogIndex index) const {
  return dir_ + "/" + std::to_string(index.value());
}

absl::StatusOr<std::string> SnapshotStore::PrepareDir(raft::LogIndex index) {
  const std::string path = PathOf(index) + kPreparing;
  RETURN_IF_ERROR(RemoveAll(path));
  return path;
}

absl::Status SnapshotStore::Publish(raft::LogIndex index) {
  const std::string prepared = PathOf(index) + kPreparing;
  RETURN_IF_ERROR(SyncDirectory(prepared));
  std::lock_guard lock(mutex_);
  if (published_ == index) {
    return RemoveAll(prepared);  // already published (a restart re-created it)
  }
  std::error_code error;
  fs::rename(prepared, PathOf(index), error);
  if (error) {
    return FsError(error, "publish snapshot " + PathOf(index));
  }
  RETURN_IF_ERROR(SyncDirectory(dir_));
  if (published_.has_value()) {
    // Readers opened every file of the old one already; new readers ask for the new index.
    RETURN_IF_ERROR(RemoveAll(PathOf(*published_)));
  }
  published_ = index;
  return absl::OkStatus();
}

std::optional<raft::LogIndex> SnapshotStore::published() const {
  std::lock_guard lock(mutex_);
  return published_;
}

absl::StatusOr<std::unique_ptr<SnapshotReader>> SnapshotStore::OpenForSending(
    raft::LogIndex index) const {
  std::lock_guard lock(mutex_);
  if (published_ != index) {
    return absl::NotFoundError("no snapshot checkpoint at index " + std::to_string(index.value()));
  }
  std::unique_ptr<SnapshotReader> reader(new SnapshotReader());
  reader->index_ = index;
  std::error_code error;
  std::vector<std::string> names;
  for (const fs::directory_entry& entry : fs::directory_iterator(PathOf(index), error)) {
    names.push_back(entry.path().filename().string());
  }
  if (error) {
    return FsError(error, "list " + PathOf(index));
  }
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    if (name == kSnapshotMetaFile) {
      continue;  // the receiver writes its own
    }
    const std::string path = PathOf(index) + "/" + name;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      return ErrnoToStatus(errno, "open " + path);
    }
    reader->fds_.push_back(fd);
    const off_t size = ::lseek(fd, 0, SEEK_END);
    if (size < 0) {
      return ErrnoToStatus(errno, "size of " + path);
    }
    reader->files_.push_back(SnapshotFile{name, static_cast<uint64_t>(size)});
  }
  return reader;
}

absl::StatusOr<std::unique_ptr<SnapshotStaging>> SnapshotStore::BeginStaging(
    const raft::SnapshotMeta& meta, const std::vector<SnapshotFile>& files) {
  std::set<std::string> names;
  for (const SnapshotFile& file : files) {
    if (!PlainFileName(file.name) || !names.insert(file.name).second) {
      return absl::InvalidArgumentError("snapshot manifest names a bad or duplicate file \"" +
                                        file.name + "\"");
    }
  }
  std::lock_guard lock(mutex_);
  if (!staging_.expired()) {
    return absl::ResourceExhaustedError("another snapshot is being received");
  }
  std::unique_ptr<SnapshotStaging> staging(new SnapshotStaging());
  staging->meta_ = meta;
  staging->dir_ = dir_ + "/" + kIncoming;
  staging->files_ = files;
  RETURN_IF_ERROR(RemoveAll(staging->dir_));
  std::error_code error;
  fs::create_directory(staging->dir_, error);
  if (error) {
    return FsError(error, "create " + staging->dir_);
  }
  staging->token_ = std::make_shared<int>(0);
  staging_ = staging->token_;
  return staging;
}

// ---------------------------------------------------------------------------------------------
// Directory swap

absl::StatusOr<raft::SnapshotMeta> ReadSnapshotMeta(const std::string& dir) {
  const std::string path = dir + "/" + kSnapshotMetaFile;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return ErrnoToStatus(errno, "open " + path);
  }
  std::string bytes;
  char buffer[4096];
  ssize_t n = 0;
  while ((n = ::read(fd, buffer, sizeof buffer)) > 0) {
    bytes.append(buffer, static_cast<size_t>(n));
  }
  const int saved = errno;
  ::close(fd);
  if (n < 0) {
    return ErrnoToStatus(saved, "read " + path);
  }
  raft::wire::Snapshot wire;
  if (!wire.mutable_meta()->ParseFromString(bytes)) {
    return absl::DataLossError("unparsable " + path);
  }
  return raft::FromWire(wire).meta;
}

absl::Status SyncDirectory(const std::string& dir) {
  return SyncPath(dir, O_RDONLY | O_DIRECTORY);
}

absl::Status SwapInDirectory(const std::string& staged, const std::string& target, SwapStop stop) {
  const std::string aside = target + kAside;
  RETURN_IF_ERROR(RemoveAll(aside));
  std::error_code error;
  if (fs::exists(target, error)) {
    fs::rename(target, aside, error);
    if (error) {
      return FsError(error, "move aside " + target);
    }
    RETURN_IF_ERROR(SyncDirectory(ParentOf(target)));
  }
  if (stop == SwapStop::kAfterMoveAside) {
    return absl::OkStatus();
  }
  fs::rename(staged, target, error);
  if (error) {
    return FsError(error, "rename " + staged + " to " + target);
  }
  RETURN_IF_ERROR(SyncDirectory(ParentOf(target)));
  RETURN_IF_ERROR(SyncDirectory(ParentOf(staged)));
  if (stop == SwapStop::kAfterRename) {
    return absl::OkStatus();
  }
  return RemoveAll(aside);
}

absl::Status RecoverDirectorySwap(const std::string& target) {
  const std::string aside = target + kAside;
  std::error_code error;
  if (!fs::exists(aside, error)) {
    return absl::OkStatus();
  }
  if (fs::exists(target, error)) {
    return RemoveAll(aside);  // the new directory was in place: finish
  }
  fs::rename(aside, target, error);  // the new one never arrived: undo
  if (error) {
    return FsError(error, "restore " + aside);
  }
  return SyncDirectory(ParentOf(target));
}

}  // namespace backstop::queue
