// libFuzzer target for Raft message handling: what a peer (or anything that reaches the peer
// port) sends is decoded by queue/raft/codec.h and stepped into a Node of a small in-memory
// cluster, exactly as the queue's transport and Raft thread do.
//
// Input layout: one setup byte (bits 0-1: the node elected before the attack, 0 = none;
// bits 2-4: entries it commits first), then a wire::MessageBatch in protobuf binary form. Every
// message that decodes is re-addressed to a member (the transport drops misaddressed ones, so
// only members are interesting), stepped into that member, and followed by the cluster's own
// traffic and one tick. Aborts when:
// - a decoded message does not survive ToWire/FromWire unchanged;
// - the storage refuses what a healthy node asks it to persist;
// - a healthy node's commit index passes its last index, or its applied index passes its commit
//   (a node that detected a corrupt log, corruption() set, has stopped and is exempt).
// Forged messages may of course make the members disagree (they can forge votes): Raft trusts
// its peers, so safety across nodes is the simulator's job (tests/sim), not this target's.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/raft.pb.h"
#include "queue/raft/codec.h"
#include "queue/raft/log_storage.h"
#include "queue/raft/node.h"

namespace {

using backstop::raft::ConfState;
using backstop::raft::Entry;
using backstop::raft::EntryType;
using backstop::raft::MemoryLogStorage;
using backstop::raft::Message;
using backstop::raft::Node;
using backstop::raft::NodeId;
using backstop::raft::NodeOptions;
using backstop::raft::Ready;
using backstop::raft::Role;

constexpr uint64_t kMembers = 3;
// Bounds the cluster's own traffic after each injected message; forged terms can keep members
// busy for a while, never forever.
constexpr int kMaxRounds = 2000;

void Check(bool condition) {
  if (!condition) {
    std::abort();
  }
}

// Three voters with in-memory storage, Readys processed in node.h's order. Single-threaded.
class Cluster {
 public:
  Cluster() {
    ConfState conf;
    for (uint64_t i = 1; i <= kMembers; ++i) {
      conf.voters.emplace_back(i);
    }
    for (uint64_t i = 1; i <= kMembers; ++i) {
      auto storage = std::make_unique<MemoryLogStorage>();
      Check(backstop::raft::Bootstrap(*storage, conf).ok());
      NodeOptions options;
      options.id = NodeId(i);
      options.random_seed = i * 7919;
      absl::StatusOr<std::unique_ptr<Node>> node = Node::Create(options, storage.get());
      Check(node.ok());
      storages_[NodeId(i)] = std::move(storage);
      nodes_[NodeId(i)] = *std::move(node);
    }
  }

  Node& node(uint64_t id) { return *nodes_.at(NodeId(id)); }
  absl::Time now() const { return now_; }

  void Deliver(const Message& message) {
    if (nodes_.contains(message.to)) {
      nodes_.at(message.to)->Step(message);
    }
  }

  void Stabilize() {
    for (int round = 0; round < kMaxRounds; ++round) {
      bool progress = false;
      for (const auto& [id, node] : nodes_) {
        progress |= ProcessReady(id);
      }
      if (!in_flight_.empty()) {
        const Message message = std::move(in_flight_.front());
        in_flight_.pop_front();
        Deliver(message);
        progress = true;
      }
      if (!progress) {
        return;
      }
    }
    in_flight_.clear();
  }

  void TickAll() {
    now_ += absl::Milliseconds(100);
    for (auto& [id, node] : nodes_) {
      node->Tick(now_);
    }
    Stabilize();
  }

  void CheckInvariants() const {
    for (const auto& [id, node] : nodes_) {
      if (!node->corruption().empty()) {
        continue;
      }
      Check(node->commit() <= node->last_index());
      Check(node->applied() <= node->commit());
      Check(node->first_index() <= node->last_index() + 1);
    }
  }

 private:
  bool ProcessReady(NodeId id) {
    Node& node = *nodes_.at(id);
    if (!node.HasReady()) {
      return false;
    }
    Ready ready = node.GetReady();
    in_flight_.insert(in_flight_.end(), ready.messages.begin(), ready.messages.end());
    MemoryLogStorage& storage = *storages_.at(id);
    const bool healthy = node.corruption().empty();
    if (ready.snapshot.has_value()) {
      Check(storage.ApplySnapshot(*ready.snapshot).ok() || !healthy);
    }
    Check(storage.Append(ready.entries).ok() || !healthy);
    if (ready.hard_state.has_value()) {
      Check(storage.SetHardState(*ready.hard_state).ok() || !healthy);
    }
    in_flight_.insert(in_flight_.end(), ready.messages_after_persist.begin(),
                      ready.messages_after_persist.end());
    for (const Entry& entry : ready.committed_entries) {
      if (entry.type == EntryType::kConfChange) {
        (void)backstop::raft::DecodeConfChange(entry.data);
      }
    }
    node.Advance();
    return true;
  }

  absl::Time now_ = absl::FromUnixSeconds(1'700'000'000);
  std::map<NodeId, std::unique_ptr<MemoryLogStorage>> storages_;
  std::map<NodeId, std::unique_ptr<Node>> nodes_;
  std::deque<Message> in_flight_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) {
    return 0;
  }
  backstop::raft::wire::MessageBatch batch;
  if (!batch.ParseFromArray(data + 1, static_cast<int>(size - 1))) {
    return 0;
  }
  const uint8_t setup = data[0];
  Cluster cluster;
  if (const uint64_t leader = setup & 3; leader != 0) {
    cluster.node(leader).Campaign();
    cluster.Stabilize();
    if (cluster.node(leader).role() == Role::kLeader) {
      for (int i = 0; i < ((setup >> 2) & 7); ++i) {
        (void)cluster.node(leader).Propose({"entry " + std::to_string(i)}, cluster.now());
        cluster.Stabilize();
      }
    }
  }
  for (const backstop::raft::wire::Message& wire : batch.messages()) {
    absl::StatusOr<Message> message = backstop::raft::FromWire(wire);
    if (!message.ok()) {
      continue;
    }
    absl::StatusOr<Message> again = backstop::raft::FromWire(backstop::raft::ToWire(*message));
    Check(again.ok() && *again == *message);
    if (message->to.value() < 1 || message->to.value() > kMembers) {
      message->to = NodeId(1 + message->to.value() % kMembers);
    }
    cluster.Deliver(*message);
    cluster.Stabilize();
    cluster.CheckInvariants();
    cluster.TickAll();
    cluster.CheckInvariants();
  }
  return 0;
}
