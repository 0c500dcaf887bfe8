#pragma once

// Queue voters on loopback for tests: each with its own gRPC server (RaftPeer, QueueService and
// AdminService),
// transport, RocksDB data directory and QueueNode, stoppable (a crash: unpersisted state is
// lost) and restartable on the same directory and port.

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "queue/admin_service.h"
#include "queue/queue_node.h"
#include "queue/queue_service.h"
#include "queue/raft_transport.h"

namespace backstop::queue::testing {

inline std::string FreshTempDir(const std::string& name) {
  const std::string dir =
      ::testing::TempDir() + "/backstop_" + name + "_" + std::to_string(::getpid());
  std::filesystem::remove_all(dir);
  return dir;
}

// BACKSTOP_TIMEOUT_SCALE (default 1), which `make test-tsan` sets because ThreadSanitizer runs a
// cluster many times slower (tests/system/conftest.py reads it the same way).
inline double TimeoutScale() {
  static const double scale = [] {
    const char* value = std::getenv("BACKSTOP_TIMEOUT_SCALE");
    const double parsed = value == nullptr ? 1.0 : std::atof(value);
    return parsed > 1.0 ? parsed : 1.0;
  }();
  return scale;
}
// How long a wait of these tests polls before it gives up: `base` times TimeoutScale(). Only
// deadlines stretch, never sleeps: every wait still returns as soon as its condition holds.
inline std::chrono::milliseconds Patience(std::chrono::milliseconds base) {
  return std::chrono::milliseconds(
      static_cast<int64_t>(static_cast<double>(base.count()) * TimeoutScale()));
}

// Polls `done` (a view that converges asynchronously, e.g. a follower's applied state) for up
// to Patience(20 s).
inline bool Eventually(const std::function<bool()>& done) {
  const auto deadline = std::chrono::steady_clock::now() + Patience(std::chrono::seconds(20));
  while (!done()) {
    if (std::chrono::steady_clock::now() >= deadline) {
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

class Voter {
 public:
  Voter(uint64_t id, std::string data_dir) : id_(id), data_dir_(std::move(data_dir)) {
    RaftTransportOptions options;
    options.self = raft::NodeId(id);
    transport_ = std::make_unique<RaftTransport>(options, [this](raft::Message message) {
      std::lock_guard lock(node_mutex_);
      if (node_ != nullptr) {
        node_->Receive(std::move(message));
      }
    });
    // Take a free port now, so that peers can be told the address before anyone starts.
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(transport_->service());  // gRPC refuses to start with no service
    std::unique_ptr<grpc::Server> placeholder = builder.BuildAndStart();
    EXPECT_NE(placeholder, nullptr);
    if (placeholder != nullptr) {
      placeholder->Shutdown();
    }
  }

  ~Voter() { Stop(); }

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  // The [node] hostname its admin service reports.
  std::string hostname() const { return fmt::format("q{}.test", id_); }

  // `voters`: the founding configuration, or for kJoinExisting the members it must answer.
  void Start(const std::vector<VoterAddress>& voters,
             StartMode start_mode = StartMode::kFoundingMember) {
    QueueNodeOptions options = options_;
    options.id = raft::NodeId(id_);
    options.voters = voters;
    options.start_mode = start_mode;
    options.data_dir = data_dir_;
    options.tick_interval = absl::Milliseconds(20);
    // Heartbeats every 20 ms, but an election only after 0.5–1 s of silence: on a loaded
    // machine (CI, parallel builds) a starved thread must not depose a healthy leader mid-test.
    // Under TSan (BACKSTOP_TIMEOUT_SCALE) threads starve for longer: the silence grows with it.
    options.election_ticks = static_cast<int>(25 * TimeoutScale());
    options.on_fatal_error = [this, expected = options_.test_crash !=
                                               TestCrash::kNone](const absl::Status& status) {
      if (!expected) {
        ADD_FAILURE() << "fatal queue error: " << status;
      }
      crashed_ = true;
    };
    absl::StatusOr<std::unique_ptr<QueueNode>> node = QueueNode::Start(options, transport_.get());
    ASSERT_TRUE(node.ok()) << node.status();
    std::lock_guard lock(node_mutex_);
    node_ = *std::move(node);
    service_ = std::make_unique<QueueServiceImpl>(
        node_.get(), [node = node_.get()](raft::NodeId id) { return node->PeerAddress(id); },
        reserve_);
    admin_service_ =
        std::make_unique<AdminServiceImpl>(node_.get(), AdminAccess::kOpen, hostname());
    grpc::ServerBuilder builder;
    builder.AddListeningPort(address(), grpc::InsecureServerCredentials());
    builder.RegisterService(transport_->service());
    builder.RegisterService(service_.get());
    builder.RegisterService(admin_service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr) << "cannot listen again on " << address();
  }

  // Like a crash of the process: the node goes away with whatever it had not persisted.
  void Stop() {
    if (server_ != nullptr) {
      // Peer streams never end on their own: cancel them after a short grace.
      server_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(100));
      server_->Wait();
      server_.reset();
    }
    std::unique_ptr<QueueNode> node;
    {
      std::lock_guard lock(node_mutex_);
      node.swap(node_);
    }
    node.reset();
    service_.reset();
    admin_service_.reset();
  }

  QueueNode* node() {
    std::lock_guard lock(node_mutex_);
    return node_.get();
  }

  // The free-space reserve of the next Start()'s service (null: none); must outlive the voter.
  void set_reserve(StorageReserve* reserve) { reserve_ = reserve; }
  // Options for the next Start() (id, voters, directory and tick are set by Start itself).
  QueueNodeOptions& options() { return options_; }
  RaftTransport& transport() { return *transport_; }
  const std::string& data_dir() const { return data_dir_; }
  // The node stopped serving after a fatal error (or a TestCrash).
  bool crashed() const { return crashed_; }

 private:
  uint64_t id_;
  QueueNodeOptions options_;
  std::atomic<bool> crashed_ = false;
  std::string data_dir_;
  std::unique_ptr<RaftTransport> transport_;
  int port_ = 0;
  StorageReserve* reserve_ = nullptr;
  std::unique_ptr<QueueServiceImpl> service_;
  std::unique_ptr<AdminServiceImpl> admin_service_;
  std::unique_ptr<grpc::Server> server_;
  std::mutex node_mutex_;
  std::unique_ptr<QueueNode> node_;  // guarded by node_mutex_
};

// A cluster of `size` voters with ids 1..size, all started.
class Cluster {
 public:
  // `snapshot_entries` and `snapshot_keep_entries` as in QueueNodeOptions.
  Cluster(int size, const std::string& name, uint64_t snapshot_entries = 10'000,
          uint64_t snapshot_keep_entries = 1'000) {
    for (int i = 1; i <= size; ++i) {
      voters_.push_back(std::make_unique<Voter>(i, FreshTempDir(name + std::to_string(i))));
      voters_.back()->options().snapshot_entries = snapshot_entries;
      voters_.back()->options().snapshot_keep_entries = snapshot_keep_entries;
      peers_.push_back(VoterAddress{raft::NodeId(i), voters_.back()->address()});
    }
    for (auto& voter : voters_) {
      voter->Start(peers_);
    }
  }

  // A new voter `id` started empty to join the running voters (StartMode::kJoinExisting), one
  // of voters() from now on, so that WaitForLeader() finds it should it lead; the peers stay
  // the founding ones.
  Voter& Join(uint64_t id, const std::string& name) {
    voters_.push_back(std::make_unique<Voter>(id, FreshTempDir(name)));
    voters_.back()->Start(peers_, StartMode::kJoinExisting);
    return *voters_.back();
  }

  // The voter that leads, waiting for an election; null if none within Patience(20 s).
  Voter* WaitForLeader() {
    Voter* leader = nullptr;
    Eventually([&] {
      for (auto& voter : voters_) {
        if (QueueNode* node = voter->node(); node != nullptr && node->status().is_leader) {
          leader = voter.get();
          return true;
        }
      }
      return false;
    });
    return leader;
  }

  std::vector<std::string> endpoints() const {
    std::vector<std::string> addresses;
    for (const VoterAddress& peer : peers_) {
      addresses.push_back(peer.address);
    }
    return addresses;
  }

  std::vector<std::unique_ptr<Voter>>& voters() { return voters_; }
  const std::vector<VoterAddress>& peers() const { return peers_; }

 private:
  std::vector<std::unique_ptr<Voter>> voters_;
  std::vector<VoterAddress> peers_;
};

}  // namespace backstop::queue::testing
