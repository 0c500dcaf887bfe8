// Raft core throughput: proposals until committed on an in-memory 3-node cluster, with the
// Ready/persist/Advance cycle done exactly as node.h prescribes but with MemoryLogStorage and a
// synchronous in-process network. Measures the core's CPU cost per entry, not I/O.

#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "queue/raft/log_storage.h"
#include "queue/raft/node.h"

namespace backstop::raft {
namespace {

constexpr size_t kPayloadBytes = 256;

class BenchCluster {
 public:
  BenchCluster() {
    ConfState conf{{NodeId(1), NodeId(2), NodeId(3)}, {}};
    for (uint64_t id = 1; id <= 3; ++id) {
      auto storage = std::make_unique<MemoryLogStorage>();
      (void)Bootstrap(*storage, conf);
      NodeOptions options;
      options.id = NodeId(id);
      options.random_seed = id;
      auto node = Node::Create(options, storage.get());
      storages_[id] = std::move(storage);
      nodes_[id] = *std::move(node);
    }
    nodes_[1]->Campaign();
    Drain();
  }

  Node& leader() { return *nodes_[1]; }

  void Drain() {
    bool progress = true;
    while (progress) {
      progress = false;
      for (auto& [id, node] : nodes_) {
        if (node->HasReady()) {
          Process(id);
          progress = true;
        }
      }
      while (!queue_.empty()) {
        Message m = std::move(queue_.front());
        queue_.pop_front();
        nodes_[m.to.value()]->Step(m);
        progress = true;
      }
    }
  }

  // Keeps memory flat over long runs, as the real queue will.
  void Compact() {
    for (auto& [id, node] : nodes_) {
      const LogIndex applied = node->applied();
      MemoryLogStorage& s = *storages_[id];
      if (applied > s.GetSnapshot()->meta.index + 1000) {
        (void)s.CreateSnapshot(applied, node->conf_state(), "");
        (void)s.Compact(applied - 100);
      }
    }
  }

 private:
  void Process(uint64_t id) {
    Node& n = *nodes_[id];
    Ready rd = n.GetReady();
    for (Message& m : rd.messages) {
      queue_.push_back(std::move(m));
    }
    MemoryLogStorage& s = *storages_[id];
    if (rd.snapshot) {
      (void)s.ApplySnapshot(*rd.snapshot);
    }
    (void)s.Append(rd.entries);
    if (rd.hard_state) {
      (void)s.SetHardState(*rd.hard_state);
    }
    for (Message& m : rd.messages_after_persist) {
      queue_.push_back(std::move(m));
    }
    n.Advance();
  }

  std::map<uint64_t, std::unique_ptr<MemoryLogStorage>> storages_;
  std::map<uint64_t, std::unique_ptr<Node>> nodes_;
  std::deque<Message> queue_;
};

void BM_ProposeToCommit(benchmark::State& state) {
  const size_t batch = static_cast<size_t>(state.range(0));
  BenchCluster cluster;
  const std::vector<std::string> payloads(batch, std::string(kPayloadBytes, 'x'));
  const absl::Time now = absl::FromUnixSeconds(1'700'000'000);
  int64_t rounds = 0;
  for (auto _ : state) {
    absl::StatusOr<LogIndex> last = cluster.leader().Propose(payloads, now);
    if (!last.ok()) {
      state.SkipWithError("proposal refused");
      break;
    }
    cluster.Drain();
    if (cluster.leader().commit() < *last) {
      state.SkipWithError("not committed");
      break;
    }
    if (++rounds % 64 == 0) {
      cluster.Compact();
    }
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(batch));
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(batch * kPayloadBytes));
}
BENCHMARK(BM_ProposeToCommit)->Arg(1)->Arg(16)->Arg(256);

}  // namespace
}  // namespace backstop::raft

BENCHMARK_MAIN();
