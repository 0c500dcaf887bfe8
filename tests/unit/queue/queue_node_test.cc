#include "queue/queue_node.h"

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace backstop::queue {
namespace {

using raft::NodeId;

std::string TempDir(const std::string& name) {
  const std::string dir =
      ::testing::TempDir() + "/queue_node_test_" + name + "_" + std::to_string(::getpid());
  std::filesystem::remove_all(dir);
  return dir;
}

// One voter: its gRPC server (port 0), transport and queue node, restartable on its data dir.
class Voter {
 public:
  Voter(uint64_t id, std::string data_dir) : id_(id), data_dir_(std::move(data_dir)) {
    RaftTransportOptions options;
    options.self = NodeId(id);
    transport_ = std::make_unique<RaftTransport>(options, [this](raft::Message message) {
      std::lock_guard lock(node_mutex_);
      if (node_ != nullptr) {
        node_->Receive(std::move(message));
      }
    });
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(transport_->service());
    server_ = builder.BuildAndStart();
  }

  ~Voter() {
    Stop();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(100));
    server_->Wait();
  }

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

  void Start(const std::vector<QueuePeer>& voters) {
    QueueNodeOptions options;
    options.id = NodeId(id_);
    options.voters = voters;
    options.data_dir = data_dir_;
    options.tick_interval = absl::Milliseconds(20);
    options.on_fatal_error = [](const absl::Status& status) {
      ADD_FAILURE() << "fatal queue error: " << status;
    };
    absl::StatusOr<std::unique_ptr<QueueNode>> node = QueueNode::Start(options, transport_.get());
    ASSERT_TRUE(node.ok()) << node.status();
    std::lock_guard lock(node_mutex_);
    node_ = *std::move(node);
  }

  // Like a crash of the process: the node goes away with whatever it had not persisted.
  void Stop() {
    std::unique_ptr<QueueNode> node;
    {
      std::lock_guard lock(node_mutex_);
      node.swap(node_);
    }
  }

  QueueNode* node() {
    std::lock_guard lock(node_mutex_);
    return node_.get();
  }

 private:
  uint64_t id_;
  std::string data_dir_;
  std::unique_ptr<RaftTransport> transport_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::mutex node_mutex_;
  std::unique_ptr<QueueNode> node_;  // guarded by node_mutex_
};

absl::StatusOr<CommandResult> ProposeAndWait(QueueNode* node, Command command) {
  std::promise<absl::StatusOr<CommandResult>> promise;
  auto future = promise.get_future();
  node->Propose(std::move(command),
                [&promise](absl::StatusOr<CommandResult> result) { promise.set_value(result); });
  if (future.wait_for(std::chrono::seconds(20)) != std::future_status::ready) {
    return absl::DeadlineExceededError("no answer within 20 s");
  }
  return future.get();
}

Command AppendOne(int n) {
  Command command;
  QueueEntry* entry = command.mutable_append()->add_entries();
  std::string id(16, '\0');
  id[14] = static_cast<char>(n >> 8);
  id[15] = static_cast<char>(n);
  entry->set_id(id);
  entry->set_domain("example.test");
  entry->mutable_envelope()->set_reverse_path("sender@example.org");
  entry->mutable_envelope()->add_recipients()->set_address("alice@example.test");
  entry->set_message("Subject: " + std::to_string(n) + "\r\n\r\nbody\r\n");
  return command;
}

// Waits until some voter is leader; returns it.
QueueNode* WaitForLeader(std::vector<std::unique_ptr<Voter>>& voters) {
  for (int i = 0; i < 2000; ++i) {
    for (auto& voter : voters) {
      if (QueueNode* node = voter->node(); node != nullptr && node->status().is_leader) {
        return node;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return nullptr;
}

// Appends `n` messages through whichever voter leads, retrying on Unavailable like a client.
void AppendThroughLeader(std::vector<std::unique_ptr<Voter>>& voters, int first, int count) {
  for (int n = first; n < first + count; ++n) {
    for (int attempt = 0;; ++attempt) {
      ASSERT_LT(attempt, 100) << "message " << n << " never committed";
      QueueNode* leader = WaitForLeader(voters);
      ASSERT_NE(leader, nullptr);
      absl::StatusOr<CommandResult> result = ProposeAndWait(leader, AppendOne(n));
      if (result.ok()) {
        ASSERT_EQ(result->code(), OK);
        break;
      }
    }
  }
}

void WaitUntilApplied(QueueNode* node, uint64_t index) {
  for (int i = 0; i < 2000 && node->state_machine().applied_index() < index; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_GE(node->state_machine().applied_index(), index);
}

class QueueNodeTest : public ::testing::Test {
 protected:
  void StartCluster(int size) {
    for (int i = 1; i <= size; ++i) {
      voters_.push_back(std::make_unique<Voter>(i, TempDir(std::to_string(i))));
    }
    for (int i = 0; i < size; ++i) {
      peers_.push_back(QueuePeer{NodeId(i + 1), voters_[i]->address()});
    }
    for (auto& voter : voters_) {
      voter->Start(peers_);
    }
  }

  std::vector<std::unique_ptr<Voter>> voters_;
  std::vector<QueuePeer> peers_;
};

TEST_F(QueueNodeTest, SingleVoterCommitsOnItsOwnFsync) {
  StartCluster(1);
  QueueNode* leader = WaitForLeader(voters_);
  ASSERT_NE(leader, nullptr);
  absl::StatusOr<CommandResult> result = ProposeAndWait(leader, AppendOne(1));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->code(), OK);
  EXPECT_EQ(result->append().outcomes(0).code(), OK);
  EXPECT_GE(leader->status().synced_writes, 1u);
}

TEST_F(QueueNodeTest, FollowerRefusesProposalsNamingTheLeader) {
  StartCluster(3);
  QueueNode* leader = WaitForLeader(voters_);
  ASSERT_NE(leader, nullptr);
  for (auto& voter : voters_) {
    if (voter->node() != leader) {
      absl::StatusOr<CommandResult> result = ProposeAndWait(voter->node(), AppendOne(1));
      ASSERT_FALSE(result.ok());
      EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
      EXPECT_NE(std::string(result.status().message()).find("leader is"), std::string::npos)
          << result.status();
      break;
    }
  }
}

TEST_F(QueueNodeTest, ThreeVotersApplyIdenticalStateThroughALeaderCrash) {
  StartCluster(3);
  AppendThroughLeader(voters_, 0, 50);
  // Crash the leader; the others elect a new one and carry on.
  QueueNode* leader = WaitForLeader(voters_);
  ASSERT_NE(leader, nullptr);
  size_t crashed = 0;
  for (size_t i = 0; i < voters_.size(); ++i) {
    if (voters_[i]->node() == leader) {
      crashed = i;
    }
  }
  voters_[crashed]->Stop();
  AppendThroughLeader(voters_, 50, 50);
  // The crashed voter restarts from its data directory and catches up.
  voters_[crashed]->Start(peers_);
  QueueNode* new_leader = WaitForLeader(voters_);
  ASSERT_NE(new_leader, nullptr);
  AppendThroughLeader(voters_, 100, 1);
  const uint64_t target = new_leader->state_machine().applied_index();
  for (auto& voter : voters_) {
    WaitUntilApplied(voter->node(), target);
  }
  // Every acknowledged message is on every voter, and the replicas are identical.
  for (auto& voter : voters_) {
    auto summaries = voter->node()->state_machine().Summaries();
    ASSERT_TRUE(summaries.ok());
    ASSERT_EQ(summaries->size(), 1u);
    EXPECT_EQ((*summaries)[0].queued_messages(), 101u);
  }
}

}  // namespace
}  // namespace backstop::queue
