#include "queue/fault_injection.h"

#include <cstdlib>
#include <fstream>
#include <string>
#include <utility>

namespace backstop::queue {

namespace {

uint16_t Pack(Fault fault, FaultTarget target) {
  return static_cast<uint16_t>(static_cast<uint16_t>(fault) | (static_cast<uint16_t>(target) << 8));
}
Fault FaultOf(uint16_t state) {
  return static_cast<Fault>(state & 0xff);
}
FaultTarget TargetOf(uint16_t state) {
  return static_cast<FaultTarget>(state >> 8);
}

rocksdb::IOStatus NoSpace() {
  return rocksdb::IOStatus::NoSpace("injected ENOSPC");
}
rocksdb::IOStatus Eio(const char* what) {
  return rocksdb::IOStatus::IOError(std::string("injected EIO on ") + what);
}

class FaultyWritableFile final : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  FaultyWritableFile(FaultInjectionFileSystem* fs, FaultInjectionFileSystem::FileKind kind,
                     std::unique_ptr<rocksdb::FSWritableFile> target)
      : FSWritableFileOwnerWrapper(std::move(target)), fs_(fs), kind_(kind) {}

  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& options,
                           rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus status = fs_->CheckAppend(kind_);
    return status.ok() ? FSWritableFileOwnerWrapper::Append(data, options, dbg) : status;
  }
  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& options,
                           const rocksdb::DataVerificationInfo& info,
                           rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus status = fs_->CheckAppend(kind_);
    return status.ok() ? FSWritableFileOwnerWrapper::Append(data, options, info, dbg) : status;
  }
  rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                                     const rocksdb::IOOptions& options,
                                     rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus status = fs_->CheckAppend(kind_);
    return status.ok() ? FSWritableFileOwnerWrapper::PositionedAppend(data, offset, options, dbg)
                       : status;
  }
  rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                                     const rocksdb::IOOptions& options,
                                     const rocksdb::DataVerificationInfo& info,
                                     rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus status = fs_->CheckAppend(kind_);
    return status.ok()
               ? FSWritableFileOwnerWrapper::PositionedAppend(data, offset, options, info, dbg)
               : status;
  }
  rocksdb::IOStatus Sync(const rocksdb::IOOptions& options, rocksdb::IODebugContext* dbg) override {
    return Synced(fs_->CheckSync(kind_),
                  [&] { return FSWritableFileOwnerWrapper::Sync(options, dbg); });
  }
  rocksdb::IOStatus Fsync(const rocksdb::IOOptions& options,
                          rocksdb::IODebugContext* dbg) override {
    return Synced(fs_->CheckSync(kind_),
                  [&] { return FSWritableFileOwnerWrapper::Fsync(options, dbg); });
  }
  rocksdb::IOStatus RangeSync(uint64_t offset, uint64_t nbytes, const rocksdb::IOOptions& options,
                              rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus status = fs_->CheckSync(kind_);
    return status.ok() ? FSWritableFileOwnerWrapper::RangeSync(offset, nbytes, options, dbg)
                       : status;
  }

 private:
  template <typename F>
  rocksdb::IOStatus Synced(rocksdb::IOStatus injected, F sync) {
    if (!injected.ok()) {
      return injected;
    }
    rocksdb::IOStatus status = sync();
    if (status.ok()) {
      fs_->CountSync();
    }
    return status;
  }

  FaultInjectionFileSystem* fs_;
  FaultInjectionFileSystem::FileKind kind_;
};

class FaultyDirectory final : public rocksdb::FSDirectoryWrapper {
 public:
  FaultyDirectory(FaultInjectionFileSystem* fs, std::unique_ptr<rocksdb::FSDirectory> target)
      : FSDirectoryWrapper(std::move(target)), fs_(fs) {}

  rocksdb::IOStatus Fsync(const rocksdb::IOOptions& options,
                          rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus status = fs_->CheckSync(FaultInjectionFileSystem::FileKind::kOther);
    return status.ok() ? FSDirectoryWrapper::Fsync(options, dbg) : status;
  }
  rocksdb::IOStatus FsyncWithDirOptions(const rocksdb::IOOptions& options,
                                        rocksdb::IODebugContext* dbg,
                                        const rocksdb::DirFsyncOptions& dir_options) override {
    rocksdb::IOStatus status = fs_->CheckSync(FaultInjectionFileSystem::FileKind::kOther);
    return status.ok() ? FSDirectoryWrapper::FsyncWithDirOptions(options, dbg, dir_options)
                       : status;
  }

 private:
  FaultInjectionFileSystem* fs_;
};

}  // namespace

FaultInjectionFileSystem::FaultInjectionFileSystem(
    const std::shared_ptr<rocksdb::FileSystem>& target)
    : FileSystemWrapper(target) {}

void FaultInjectionFileSystem::Inject(Fault fault, FaultTarget target) {
  state_.store(Pack(fault, target), std::memory_order_release);
}

FaultInjectionFileSystem::FileKind FaultInjectionFileSystem::KindOf(const std::string& name) {
  if (name.ends_with(".log")) {
    return FileKind::kWal;
  }
  return name.ends_with(".sst") ? FileKind::kTable : FileKind::kOther;
}

bool FaultInjectionFileSystem::Hits(FileKind kind) const {
  switch (TargetOf(state_.load(std::memory_order_acquire))) {
    case FaultTarget::kAllFiles:
      return true;
    case FaultTarget::kWalOnly:
      return kind == FileKind::kWal;
    case FaultTarget::kTablesOnly:
      return kind == FileKind::kTable;
  }
  return true;
}

void FaultInjectionFileSystem::FollowFile(std::string path) {
  {
    std::lock_guard lock(file_mutex_);
    file_ = std::move(path);
  }
  next_poll_.store(1, std::memory_order_release);
  PollFile();
}

void FaultInjectionFileSystem::PollFile() {
  const int64_t due = next_poll_.load(std::memory_order_acquire);
  const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
  if (due == 0 || now < due) {
    return;
  }
  std::unique_lock lock(file_mutex_, std::try_to_lock);
  if (!lock.owns_lock()) {
    return;  // another thread is reading it
  }
  next_poll_.store(
      now + std::chrono::duration_cast<std::chrono::nanoseconds>(kFaultFilePoll).count(),
      std::memory_order_release);
  std::ifstream in(file_);
  std::string word;
  std::string target_word;
  in >> word >> target_word;
  Fault fault = Fault::kNone;
  if (word == "write_error") {
    fault = Fault::kWriteError;
  } else if (word == "sync_error") {
    fault = Fault::kSyncError;
  } else if (word == "nospace") {
    fault = Fault::kNoSpace;
  } else if (word == "full") {
    fault = Fault::kFull;
  }
  FaultTarget target = FaultTarget::kAllFiles;
  if (target_word == "wal") {
    target = FaultTarget::kWalOnly;
  } else if (target_word == "tables") {
    target = FaultTarget::kTablesOnly;
  }
  Inject(fault, target);
}

bool FaultInjectionFileSystem::ReportsFull() {
  PollFile();
  return FaultOf(state_.load(std::memory_order_acquire)) == Fault::kFull;
}

rocksdb::IOStatus FaultInjectionFileSystem::CheckAppend(FileKind kind) {
  PollFile();
  const Fault fault = FaultOf(state_.load(std::memory_order_acquire));
  if (!Hits(kind) || (fault != Fault::kWriteError && fault != Fault::kNoSpace)) {
    return rocksdb::IOStatus::OK();
  }
  failures_.fetch_add(1, std::memory_order_relaxed);
  return fault == Fault::kNoSpace ? NoSpace() : Eio("write");
}

rocksdb::IOStatus FaultInjectionFileSystem::CheckSync(FileKind kind) {
  PollFile();
  const Fault fault = FaultOf(state_.load(std::memory_order_acquire));
  if (!Hits(kind) || (fault != Fault::kSyncError && fault != Fault::kNoSpace)) {
    return rocksdb::IOStatus::OK();
  }
  failures_.fetch_add(1, std::memory_order_relaxed);
  return fault == Fault::kNoSpace ? NoSpace() : Eio("fsync");
}

rocksdb::IOStatus FaultInjectionFileSystem::Wrap(const std::string& name, rocksdb::IOStatus status,
                                                 std::unique_ptr<rocksdb::FSWritableFile>* result) {
  if (status.ok()) {
    *result = std::make_unique<FaultyWritableFile>(this, KindOf(name), std::move(*result));
  }
  return status;
}

rocksdb::IOStatus FaultInjectionFileSystem::NewWritableFile(
    const std::string& name, const rocksdb::FileOptions& options,
    std::unique_ptr<rocksdb::FSWritableFile>* result, rocksdb::IODebugContext* dbg) {
  return Wrap(name, target()->NewWritableFile(name, options, result, dbg), result);
}

rocksdb::IOStatus FaultInjectionFileSystem::ReopenWritableFile(
    const std::string& name, const rocksdb::FileOptions& options,
    std::unique_ptr<rocksdb::FSWritableFile>* result, rocksdb::IODebugContext* dbg) {
  return Wrap(name, target()->ReopenWritableFile(name, options, result, dbg), result);
}

rocksdb::IOStatus FaultInjectionFileSystem::ReuseWritableFile(
    const std::string& name, const std::string& old_name, const rocksdb::FileOptions& options,
    std::unique_ptr<rocksdb::FSWritableFile>* result, rocksdb::IODebugContext* dbg) {
  return Wrap(name, target()->ReuseWritableFile(name, old_name, options, result, dbg), result);
}

rocksdb::IOStatus FaultInjectionFileSystem::NewDirectory(
    const std::string& name, const rocksdb::IOOptions& options,
    std::unique_ptr<rocksdb::FSDirectory>* result, rocksdb::IODebugContext* dbg) {
  rocksdb::IOStatus status = target()->NewDirectory(name, options, result, dbg);
  if (status.ok()) {
    *result = std::make_unique<FaultyDirectory>(this, std::move(*result));
  }
  return status;
}

std::shared_ptr<rocksdb::FileSystem> FileSystemFromEnvironment() {
  return FaultFileSystemFromEnvironment();
}

std::shared_ptr<FaultInjectionFileSystem> FaultFileSystemFromEnvironment() {
  const char* path = std::getenv(kFaultFileEnvironment);
  if (path == nullptr || *path == '\0') {
    return nullptr;
  }
  auto file_system = std::make_shared<FaultInjectionFileSystem>(rocksdb::FileSystem::Default());
  file_system->FollowFile(path);
  return file_system;
}

}  // namespace backstop::queue
