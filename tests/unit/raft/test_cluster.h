#pragma once

// A synchronous in-memory cluster for unit tests: every node has a MemoryLogStorage, Readys are
// processed exactly as node.h prescribes, and messages are delivered in FIFO order unless a test
// cuts a link. Single-threaded, deterministic.

#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "queue/raft/log_storage.h"
#include "queue/raft/node.h"

namespace backstop::raft::testing {

class TestCluster {
 public:
  // Voters 1..n, bootstrapped with the same configuration.
  explicit TestCluster(int n, NodeOptions base = {}) : base_(base) {
    ConfState conf;
    for (int i = 1; i <= n; ++i) {
      conf.voters.emplace_back(i);
    }
    for (int i = 1; i <= n; ++i) {
      auto storage = std::make_unique<MemoryLogStorage>();
      EXPECT_TRUE(Bootstrap(*storage, conf).ok());
      storages_[NodeId(i)] = std::move(storage);
      Start(NodeId(i));
    }
  }

  Node& node(uint64_t id) { return *nodes_.at(NodeId(id)); }
  MemoryLogStorage& storage(uint64_t id) { return *storages_.at(NodeId(id)); }
  const std::vector<Entry>& applied(uint64_t id) { return applied_[NodeId(id)]; }
  std::vector<std::string> applied_data(uint64_t id) {
    std::vector<std::string> out;
    for (const Entry& e : applied_[NodeId(id)]) {
      if (e.type == EntryType::kNormal && !e.data.empty()) {
        out.push_back(e.data);
      }
    }
    return out;
  }
  std::vector<ReadState>& read_states(uint64_t id) { return read_states_[NodeId(id)]; }
  absl::Time now() const { return now_; }
  void set_now(absl::Time now) { now_ = now; }

  // (Re)creates a node from its storage; what was not persisted is gone.
  void Start(NodeId id) {
    NodeOptions options = base_;
    options.id = id;
    options.random_seed = id.value() * 7919;
    auto node = Node::Create(options, storages_.at(id).get());
    ASSERT_TRUE(node.ok()) << node.status();
    nodes_[id] = *std::move(node);
    applied_[id].clear();
  }
  void Restart(uint64_t id) { Start(NodeId(id)); }
  // A node that joins later, with empty storage.
  void AddFreshNode(uint64_t id) {
    storages_[NodeId(id)] = std::make_unique<MemoryLogStorage>();
    Start(NodeId(id));
  }

  void Cut(uint64_t from, uint64_t to) { cut_.insert({NodeId(from), NodeId(to)}); }
  void Isolate(uint64_t id) {
    for (const auto& [other, node] : nodes_) {
      Cut(id, other.value());
      Cut(other.value(), id);
    }
  }
  void Heal() { cut_.clear(); }
  // Drops every message that would be sent, e.g. to inspect a Ready by hand.
  void Send(const Message& m) {
    if (m.type == MessageType::kAppendResponse && m.reject) {
      ++rejected_appends_;
    }
    if (!cut_.contains({m.from, m.to}) && nodes_.contains(m.to)) {
      queue_.push_back(m);
    }
  }

  // Handles one Ready of `id` (if any), following node.h's processing order.
  bool ProcessReady(NodeId id) {
    Node& n = *nodes_.at(id);
    if (!n.HasReady()) {
      return false;
    }
    Ready rd = n.GetReady();
    for (const Message& m : rd.messages) {
      Send(m);
    }
    MemoryLogStorage& s = *storages_.at(id);
    if (rd.snapshot.has_value()) {
      EXPECT_TRUE(s.ApplySnapshot(*rd.snapshot).ok());
      applied_[id].clear();
      snapshot_installed_[id] = rd.snapshot->meta.index;
    }
    EXPECT_TRUE(s.Append(rd.entries).ok());
    if (rd.hard_state.has_value()) {
      EXPECT_TRUE(s.SetHardState(*rd.hard_state).ok());
    }
    for (const Message& m : rd.messages_after_persist) {
      Send(m);
    }
    for (const Entry& e : rd.committed_entries) {
      applied_[id].push_back(e);
    }
    for (const ReadState& r : rd.read_states) {
      read_states_[id].push_back(r);
    }
    n.Advance();
    return true;
  }

  // Runs until no node has work and no message is in flight.
  void Stabilize() {
    for (int rounds = 0; rounds < 100000; ++rounds) {
      bool progress = false;
      for (const auto& [id, node] : nodes_) {
        progress |= ProcessReady(id);
      }
      if (!queue_.empty()) {
        Message m = std::move(queue_.front());
        queue_.pop_front();
        if (nodes_.contains(m.to)) {
          nodes_.at(m.to)->Step(m);
        }
        progress = true;
      }
      if (!progress) {
        return;
      }
    }
    ADD_FAILURE() << "cluster did not stabilise";
  }

  // Processes one Ready or one message at a time until `done` holds (or nothing is left).
  template <typename Predicate>
  bool RunUntil(Predicate done) {
    for (int rounds = 0; rounds < 100000 && !done(); ++rounds) {
      bool progress = false;
      for (const auto& [id, node] : nodes_) {
        if (ProcessReady(id)) {
          progress = true;
          break;
        }
      }
      if (!progress && !queue_.empty()) {
        Message m = std::move(queue_.front());
        queue_.pop_front();
        nodes_.at(m.to)->Step(m);
        progress = true;
      }
      if (!progress) {
        break;
      }
    }
    return done();
  }

  void TickAll(int ticks) {
    for (int t = 0; t < ticks; ++t) {
      now_ += absl::Milliseconds(100);
      for (auto& [id, node] : nodes_) {
        node->Tick(now_);
      }
      Stabilize();
    }
  }
  void Tick(uint64_t id, int ticks) {
    for (int t = 0; t < ticks; ++t) {
      now_ += absl::Milliseconds(100);
      node(id).Tick(now_);
    }
  }

  void Elect(uint64_t id) {
    node(id).Campaign();
    Stabilize();
    ASSERT_EQ(node(id).role(), Role::kLeader);
  }

  void Propose(uint64_t id, std::string payload) {
    ASSERT_TRUE(node(id).Propose({std::move(payload)}, now_).ok());
    Stabilize();
  }

  std::deque<Message>& in_flight() { return queue_; }
  int rejected_appends() const { return rejected_appends_; }

 private:
  NodeOptions base_;
  absl::Time now_ = absl::FromUnixSeconds(1'700'000'000);
  std::map<NodeId, std::unique_ptr<MemoryLogStorage>> storages_;
  std::map<NodeId, std::unique_ptr<Node>> nodes_;
  std::map<NodeId, std::vector<Entry>> applied_;
  std::map<NodeId, std::vector<ReadState>> read_states_;
  std::map<NodeId, LogIndex> snapshot_installed_;
  std::set<std::pair<NodeId, NodeId>> cut_;
  std::deque<Message> queue_;
  int rejected_appends_ = 0;
};

}  // namespace backstop::raft::testing
