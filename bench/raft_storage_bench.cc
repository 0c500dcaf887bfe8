// Group commit of the RocksDB Raft storage: Persist of batches of 2 KiB entries, each batch one
// synced WriteBatch, next to the raw fsync rate of the same directory measured in the same run
// (write 4 KiB + fdatasync), so entries/s and fsyncs/s can be read against what the disk does.
//
// The directory is $BACKSTOP_BENCH_DIR if set (point it at the data disk), else the temp dir.

#include <fcntl.h>
#include <linux/falloc.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "queue/fault_injection.h"
#include "queue/raft_storage.h"
#include "rocksdb/file_system.h"

namespace backstop::queue {
namespace {

namespace fs = std::filesystem;

constexpr size_t kEntryBytes = 2048;

// Set by BM_RawFsync, which runs first: the disk's fsync rate, for BM_Persist's ratio.
double raw_fsyncs_per_second = 0;

double Seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

// A fresh directory under the benchmark directory, removed with the object.
class BenchDir {
 public:
  BenchDir() {
    const char* root = std::getenv("BACKSTOP_BENCH_DIR");
    std::string templ = ((root != nullptr ? fs::path(root) : fs::temp_directory_path()) /
                         "raft_storage_bench.XXXXXX")
                            .string();
    if (mkdtemp(templ.data()) == nullptr) {
      std::abort();
    }
    path_ = templ;
  }
  ~BenchDir() { fs::remove_all(path_); }
  BenchDir(const BenchDir&) = delete;
  BenchDir& operator=(const BenchDir&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

void BM_RawFsync(benchmark::State& state) {
  BenchDir dir;
  const std::string file = (dir.path() / "fsync").string();
  const int fd = open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    state.SkipWithError("cannot create the fsync file");
    return;
  }
  // Preallocated like RocksDB's write-ahead log, so both pay the same metadata updates.
  if (fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 64 << 20) != 0) {
    close(fd);
    state.SkipWithError("fallocate failed");
    return;
  }
  const std::string block(4096, 'x');
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    if (write(fd, block.data(), block.size()) != static_cast<ssize_t>(block.size()) ||
        fdatasync(fd) != 0) {
      state.SkipWithError("write or fdatasync failed");
      break;
    }
  }
  raw_fsyncs_per_second =
      static_cast<double>(state.iterations()) / Seconds(std::chrono::steady_clock::now() - start);
  close(fd);
  state.counters["fsyncs/s"] =
      benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * block.size()));
}
BENCHMARK(BM_RawFsync)->UseRealTime()->Unit(benchmark::kMicrosecond);

void BM_Persist(benchmark::State& state) {
  const uint64_t batch = static_cast<uint64_t>(state.range(0));
  BenchDir dir;
  auto file_system = std::make_shared<FaultInjectionFileSystem>(rocksdb::FileSystem::Default());
  auto database = Database::Open(dir.path().string(), DatabaseOptions{{}, file_system});
  if (!database.ok()) {
    state.SkipWithError(std::string(database.status().message()).c_str());
    return;
  }
  auto storage = RocksDbLogStorage::Open(database->get());
  if (!storage.ok()) {
    state.SkipWithError(std::string(storage.status().message()).c_str());
    return;
  }
  std::vector<raft::Entry> entries(batch);
  for (raft::Entry& entry : entries) {
    entry.term = raft::Term(1);
    entry.data.assign(kEntryBytes, 'm');
  }
  uint64_t next = 1;
  const uint64_t syncs_before = file_system->sync_count();
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    for (raft::Entry& entry : entries) {
      entry.index = raft::LogIndex(next++);
    }
    const raft::HardState hard_state{raft::Term(1), raft::NodeId(1), raft::LogIndex(next - 1)};
    if (absl::Status status = (*storage)->Persist(std::nullopt, entries, hard_state);
        !status.ok()) {
      state.SkipWithError(std::string(status.message()).c_str());
      break;
    }
  }
  const double elapsed = Seconds(std::chrono::steady_clock::now() - start);
  const auto iterations = static_cast<double>(state.iterations());
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * batch));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * batch * kEntryBytes));
  state.counters["entries/s"] =
      benchmark::Counter(iterations * static_cast<double>(batch), benchmark::Counter::kIsRate);
  state.counters["fsyncs/s"] = benchmark::Counter(
      static_cast<double>(file_system->sync_count() - syncs_before), benchmark::Counter::kIsRate);
  state.counters["fsyncs/persist"] =
      static_cast<double>(file_system->sync_count() - syncs_before) / iterations;
  if (raw_fsyncs_per_second > 0) {
    // 1.0: each Persist costs exactly one raw fsync of this disk; below: RocksDB overhead.
    state.counters["vs_raw_fsync"] = static_cast<double>(file_system->sync_count() - syncs_before) /
                                     elapsed / raw_fsyncs_per_second;
  }
}
BENCHMARK(BM_Persist)->Arg(1)->Arg(16)->Arg(256)->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace backstop::queue

BENCHMARK_MAIN();
