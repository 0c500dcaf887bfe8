#include "queue/raft_transport.h"

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "queue/raft/codec.h"
#include "tests/unit/queue/test_cluster.h"

namespace backstop::queue {
namespace {

using raft::LogIndex;
using raft::Message;
using raft::MessageType;
using raft::NodeId;
using raft::Term;
using testing::Eventually;

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
    changed_.wait_for(lock, testing::Patience(std::chrono::seconds(20)),
                      [&] { return messages_.size() >= count; });
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

// Stages incoming snapshots in its own store and records what InstallSnapshot was handed; can
// hold installs back to keep a transfer running.
class FakeReceiver final : public SnapshotReceiver {
 public:
  explicit FakeReceiver(const std::string& data_dir) : store_(*SnapshotStore::Open(data_dir)) {}

  absl::StatusOr<std::unique_ptr<SnapshotStaging>> BeginSnapshot(
      const Message& message, const std::vector<SnapshotFile>& files) override {
    return store_->BeginStaging(message.snapshot->meta, files);
  }

  absl::Status InstallSnapshot(Message message, std::unique_ptr<SnapshotStaging> staged) override {
    std::unique_lock lock(mutex_);
    std::map<std::string, std::string> files;
    for (const auto& entry : std::filesystem::directory_iterator(staged->dir())) {
      std::ifstream in(entry.path(), std::ios::binary);
      files[entry.path().filename().string()] =
          std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    installed_.push_back({std::move(message), std::move(files)});
    changed_.notify_all();
    changed_.wait_for(lock, testing::Patience(std::chrono::seconds(20)), [this] { return !hold_; });
    return absl::OkStatus();
  }

  void Hold(bool hold) {
    std::lock_guard lock(mutex_);
    hold_ = hold;
    changed_.notify_all();
  }

  // Waits until `count` snapshots were handed over; returns the files of each.
  std::vector<std::pair<Message, std::map<std::string, std::string>>> WaitFor(size_t count) {
    std::unique_lock lock(mutex_);
    changed_.wait_for(lock, testing::Patience(std::chrono::seconds(20)),
                      [&] { return installed_.size() >= count; });
    return installed_;
  }

 private:
  std::shared_ptr<SnapshotStore> store_;
  std::mutex mutex_;
  std::condition_variable changed_;
  bool hold_ = false;
  std::vector<std::pair<Message, std::map<std::string, std::string>>> installed_;
};

Message SnapshotMessage(uint64_t index) {
  Message message;
  message.type = MessageType::kSnapshot;
  message.from = NodeId(1);
  message.to = NodeId(2);
  message.term = Term(4);
  message.snapshot = raft::Snapshot{};
  message.snapshot->meta.index = LogIndex(index);
  message.snapshot->meta.term = Term(3);
  message.snapshot->meta.conf_state.voters = {NodeId(1), NodeId(2)};
  return message;
}

// A published checkpoint at `index` in its own store, as the sending node holds it.
std::shared_ptr<SnapshotStore> SourceStore(const std::string& name, uint64_t index,
                                           const std::map<std::string, std::string>& files) {
  std::shared_ptr<SnapshotStore> store = *SnapshotStore::Open(testing::FreshTempDir(name));
  const std::string dir = *store->PrepareDir(LogIndex(index));
  std::filesystem::create_directories(dir);
  for (const auto& [file, content] : files) {
    std::ofstream(dir + "/" + file, std::ios::binary) << content;
  }
  EXPECT_TRUE(store->Publish(LogIndex(index)).ok());
  return store;
}

TEST(RaftTransportTest, StreamsASnapshotsFilesInChunksAndHandsThemOver) {
  RaftTransportOptions options;
  options.snapshot_chunk_bytes = 4096;
  Node a(1, 0, options);
  Node b(2, 0);
  FakeReceiver receiver(testing::FreshTempDir("transport_rx"));
  b.transport().SetSnapshotReceiver(&receiver);
  std::string big;
  for (int i = 0; big.size() < 100'000; ++i) {
    big += std::to_string(i * 7919) + ",";
  }
  const std::map<std::string, std::string> files = {
      {"000012.sst", big}, {"CURRENT", "MANIFEST-000005\n"}, {"LOCK", ""}};
  std::shared_ptr<SnapshotStore> source = SourceStore("transport_tx", 42, files);
  a.transport().SetPeer(NodeId(2), b.address());
  a.transport().SendSnapshot(SnapshotMessage(42),
                             [source] { return source->OpenForSending(LogIndex(42)); });

  const auto installed = receiver.WaitFor(1);
  ASSERT_EQ(installed.size(), 1u);
  EXPECT_EQ(installed[0].first, SnapshotMessage(42));
  std::map<std::string, std::string> expected = files;
  expected[kSnapshotMetaFile] = installed[0].second.at(kSnapshotMetaFile);
  EXPECT_EQ(installed[0].second, expected);
  EXPECT_TRUE(Eventually([&] { return a.transport().stats().snapshots_sent == 1; }));
  EXPECT_EQ(b.transport().stats().snapshots_received, 1u);
  b.transport().SetSnapshotReceiver(nullptr);
}

TEST(RaftTransportTest, RunsOneSnapshotTransferPerPeerAtATime) {
  Node a(1, 0);
  Node b(2, 0);
  FakeReceiver receiver(testing::FreshTempDir("transport_busy_rx"));
  receiver.Hold(true);
  b.transport().SetSnapshotReceiver(&receiver);
  std::shared_ptr<SnapshotStore> source = SourceStore("transport_busy_tx", 9, {{"f", "data"}});
  a.transport().SetPeer(NodeId(2), b.address());
  const SnapshotOpener open = [source] { return source->OpenForSending(LogIndex(9)); };
  a.transport().SendSnapshot(SnapshotMessage(9), open);
  ASSERT_EQ(receiver.WaitFor(1).size(), 1u);  // the first transfer is running
  a.transport().SendSnapshot(SnapshotMessage(9), open);
  EXPECT_EQ(a.transport().stats().snapshots_dropped_busy, 1u);
  receiver.Hold(false);
  EXPECT_TRUE(Eventually([&] { return a.transport().stats().snapshots_sent == 1; }));
  // Once it finished, the next one runs.
  a.transport().SendSnapshot(SnapshotMessage(9), open);
  EXPECT_EQ(receiver.WaitFor(2).size(), 2u);
  EXPECT_TRUE(Eventually([&] { return a.transport().stats().snapshots_sent == 2; }));
  b.transport().SetSnapshotReceiver(nullptr);
}

TEST(RaftTransportTest, RefusesACorruptedOrTruncatedSnapshotStream) {
  Node b(2, 0);
  const std::string rx_dir = testing::FreshTempDir("transport_bad_rx");
  FakeReceiver receiver(rx_dir);
  b.transport().SetSnapshotReceiver(&receiver);
  auto stub = raft::wire::RaftPeer::NewStub(
      grpc::CreateChannel(b.address(), grpc::InsecureChannelCredentials()));
  // Streams a header announcing one 8-byte file, then `chunks`.
  auto stream = [&](const std::vector<raft::wire::SnapshotChunk>& chunks) {
    grpc::ClientContext context;
    raft::wire::InstallSnapshotResponse response;
    auto writer = stub->InstallSnapshot(&context, &response);
    raft::wire::SnapshotChunk header;
    *header.mutable_message() = raft::ToWire(SnapshotMessage(5));
    raft::wire::SnapshotFile* file = header.add_files();
    file->set_name("000007.sst");
    file->set_size(8);
    writer->Write(header);
    for (const raft::wire::SnapshotChunk& chunk : chunks) {
      writer->Write(chunk);
    }
    writer->WritesDone();
    return writer->Finish().error_code();
  };
  auto data = [](uint64_t offset, std::string bytes) {
    raft::wire::SnapshotChunk chunk;
    chunk.set_offset(offset);
    chunk.set_data(std::move(bytes));
    return chunk;
  };
  auto last = [](std::string_view sent) {
    StreamDigest digest;
    digest.Add(sent);
    raft::wire::SnapshotChunk chunk;
    chunk.set_last(true);
    chunk.set_digest(digest.value());
    return chunk;
  };
  raft::wire::SnapshotChunk corrupted = last("abcdefgh");
  corrupted.set_digest(corrupted.digest() ^ 1);

  EXPECT_EQ(stream({data(0, "abcd"), data(4, "efgh"), corrupted}), grpc::StatusCode::DATA_LOSS);
  EXPECT_EQ(stream({data(0, "abcd")}), grpc::StatusCode::DATA_LOSS);                // ends early
  EXPECT_EQ(stream({data(0, "abcd"), last("abcd")}), grpc::StatusCode::DATA_LOSS);  // short
  EXPECT_EQ(stream({data(0, "abcd"), data(2, "cdefgh"), last("abcdcdefgh")}),
            grpc::StatusCode::DATA_LOSS);  // overlapping chunk
  EXPECT_EQ(receiver.WaitFor(0).size(), 0u);
  EXPECT_EQ(b.transport().stats().snapshots_refused, 4u);
  EXPECT_FALSE(std::filesystem::exists(rx_dir + "/snapshots/incoming"));
  // A whole stream still goes through afterwards.
  EXPECT_EQ(stream({data(0, "abcd"), data(4, "efgh"), last("abcdefgh")}), grpc::StatusCode::OK);
  EXPECT_EQ(receiver.WaitFor(1).at(0).second.at("000007.sst"), "abcdefgh");
  b.transport().SetSnapshotReceiver(nullptr);
}

}  // namespace
}  // namespace backstop::queue
