#include "queue/raft_transport.h"

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace backstop::queue {
namespace {

using raft::LogIndex;
using raft::Message;
using raft::MessageType;
using raft::NodeId;
using raft::Term;

// Collects what a node's inbox receives; tests wait on it for an event, never for a time.
class Inbox {
 public:
  void Push(Message message) {
    {
      std::lock_guard lock(mutex_);
      messages_.push_back(std::move(message));
    }
    changed_.notify_all();
  }

  // Waits (up to a generous bound, so a broken transport fails instead of hanging) until at
  // least `count` messages arrived; returns them.
  std::vector<Message> WaitFor(size_t count) {
    std::unique_lock lock(mutex_);
    changed_.wait_for(lock, std::chrono::seconds(20), [&] { return messages_.size() >= count; });
    return messages_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<Message> messages_;
};

// One queue voter's transport and the gRPC server that receives for it, on 127.0.0.1:port
// (0 = any free port).
class Node {
 public:
  Node(uint64_t id, int port, RaftTransportOptions options = {}) : id_(id) {
    options.self = NodeId(id);
    transport_ = std::make_unique<RaftTransport>(
        options, [this](Message message) { inbox_.Push(std::move(message)); });
    StartServer(port);
  }

  ~Node() { StopServer(); }

  void StartServer(int port) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:" + std::to_string(port), grpc::InsecureServerCredentials(),
                             &port_);
    builder.RegisterService(transport_->service());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port_, 0);
  }

  // Peer streams never end on their own, so shutdown cancels them after a short grace.
  void StopServer() {
    if (server_ != nullptr) {
      server_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(100));
      server_->Wait();
      server_.reset();
    }
  }

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  int port() const { return port_; }
  RaftTransport& transport() { return *transport_; }
  Inbox& inbox() { return inbox_; }

 private:
  uint64_t id_;
  Inbox inbox_;
  std::unique_ptr<RaftTransport> transport_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

Message Heartbeat(uint64_t from, uint64_t to, uint64_t term) {
  Message message;
  message.type = MessageType::kHeartbeat;
  message.from = NodeId(from);
  message.to = NodeId(to);
  message.term = Term(term);
  message.commit = LogIndex(term);
  return message;
}

TEST(RaftTransportTest, DeliversMessagesInOrderWithEveryField) {
  Node a(1, 0);
  Node b(2, 0);
  a.transport().SetPeer(NodeId(2), b.address());

  Message append;
  append.type = MessageType::kAppend;
  append.from = NodeId(1);
  append.to = NodeId(2);
  append.term = Term(7);
  append.index = LogIndex(41);
  append.log_term = Term(6);
  append.commit = LogIndex(40);
  append.entries.push_back(raft::Entry{.term = Term(7),
                                       .index = LogIndex(42),
                                       .type = raft::EntryType::kNormal,
                                       .time = absl::FromUnixMicros(1767225600000001),
                                       .data = std::string("payload\0with nul", 16)});
  std::vector<Message> sent{append};
  for (uint64_t term = 8; term < 108; ++term) {
    sent.push_back(Heartbeat(1, 2, term));
  }
  a.transport().Send(sent);

  const std::vector<Message> received = b.inbox().WaitFor(sent.size());
  ASSERT_EQ(received.size(), sent.size());
  EXPECT_EQ(received, sent);
  EXPECT_EQ(b.transport().stats().received, sent.size());
}

TEST(RaftTransportTest, CarriesTrafficBothWays) {
  Node a(1, 0);
  Node b(2, 0);
  a.transport().SetPeer(NodeId(2), b.address());
  b.transport().SetPeer(NodeId(1), a.address());
  a.transport().Send({Heartbeat(1, 2, 3)});
  b.transport().Send({Heartbeat(2, 1, 4)});
  EXPECT_EQ(b.inbox().WaitFor(1).at(0), Heartbeat(1, 2, 3));
  EXPECT_EQ(a.inbox().WaitFor(1).at(0), Heartbeat(2, 1, 4));
}

TEST(RaftTransportTest, DropsMessagesForUnknownPeersAndCountsThem) {
  Node a(1, 0);
  a.transport().Send({Heartbeat(1, 9, 1), Heartbeat(1, 9, 2)});
  EXPECT_EQ(a.transport().stats().dropped_unknown_peer, 2u);
}

TEST(RaftTransportTest, ReceiverDropsMessagesAddressedToAnotherNode) {
  Node a(1, 0);
  Node b(2, 0);
  // A stale address book can point node 1's idea of "3" at node 2.
  a.transport().SetPeer(NodeId(3), b.address());
  a.transport().SetPeer(NodeId(2), b.address());
  a.transport().Send({Heartbeat(1, 3, 1)});
  a.transport().Send({Heartbeat(1, 2, 2)});
  EXPECT_EQ(b.inbox().WaitFor(1).at(0), Heartbeat(1, 2, 2));
  // Streams to "3" and "2" are independent; wait until the misaddressed one was seen too.
  for (int i = 0; i < 2000 && b.transport().stats().dropped_misaddressed == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(b.transport().stats().dropped_misaddressed, 1u);
  EXPECT_EQ(b.inbox().WaitFor(1).size(), 1u);
}

TEST(RaftTransportTest, ReconnectsWhenThePeerComesBack) {
  Node a(1, 0);
  Node b(2, 0);
  const int port = b.port();
  a.transport().SetPeer(NodeId(2), b.address());
  a.transport().Send({Heartbeat(1, 2, 1)});
  ASSERT_EQ(b.inbox().WaitFor(1).size(), 1u);

  b.StopServer();
  // While the peer is down messages are lost, never queued without bound, and the sender
  // keeps retrying the connection.
  for (int i = 0; i < 50; ++i) {
    a.transport().Send({Heartbeat(1, 2, 100 + i)});
  }
  b.StartServer(port);
  // Keep sending until one gets through on the new connection.
  std::vector<Message> received;
  for (uint64_t term = 1000; received.size() < 2 && term < 1000 + 2000; ++term) {
    a.transport().Send({Heartbeat(1, 2, term)});
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    received = b.inbox().WaitFor(0);
  }
  ASSERT_GE(received.size(), 2u);
  EXPECT_GE(received.back().term, Term(1000));
  EXPECT_GT(a.transport().stats().dropped_send_failed, 0u);
}

TEST(RaftTransportTest, BoundsTheOutboxOfAnUnreachablePeer) {
  RaftTransportOptions options;
  options.max_outbox_messages = 8;
  options.reconnect_backoff_min = absl::Seconds(5);  // stay disconnected for the whole test
  options.reconnect_backoff_max = absl::Seconds(5);
  Node a(1, 0, options);
  // A port that nothing listens on: reserve one from the OS with a server we stop at once.
  int dead_port = 0;
  {
    Node placeholder(9, 0);
    dead_port = placeholder.port();
  }
  a.transport().SetPeer(NodeId(2), "127.0.0.1:" + std::to_string(dead_port));
  std::vector<Message> burst;
  for (uint64_t term = 1; term <= 1000; ++term) {
    burst.push_back(Heartbeat(1, 2, term));
  }
  a.transport().Send(burst);
  const RaftTransportStats stats = a.transport().stats();
  // Everything beyond the bound (plus what the sender thread already took) is refused at once.
  EXPECT_GE(stats.dropped_outbox_full,
            1000u - options.max_outbox_messages - options.max_batch_messages);
  EXPECT_EQ(stats.sent, 0u);
}

TEST(RaftTransportTest, DestructionDoesNotHangOnAPeerThatNeverAnswers) {
  RaftTransportOptions options;
  options.reconnect_backoff_min = absl::Seconds(30);
  options.reconnect_backoff_max = absl::Seconds(30);
  auto a = std::make_unique<Node>(1, 0, options);
  a->transport().SetPeer(NodeId(2), "127.0.0.1:1");  // refused
  a->transport().Send({Heartbeat(1, 2, 1)});
  const auto start = std::chrono::steady_clock::now();
  a.reset();
  // A sender parked in its 30 s back-off must be woken, not waited out.
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
}

}  // namespace
}  // namespace backstop::queue
