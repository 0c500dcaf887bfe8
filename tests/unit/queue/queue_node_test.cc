#include "queue/queue_node.h"

#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/unit/queue/test_cluster.h"

namespace backstop::queue {
namespace {

using testing::Cluster;
using testing::Voter;

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

// Appends messages first..first+count-1 through whichever voter leads, retrying on errors like
// a client would.
void AppendThroughLeader(Cluster& cluster, int first, int count) {
  for (int n = first; n < first + count; ++n) {
    for (int attempt = 0;; ++attempt) {
      ASSERT_LT(attempt, 100) << "message " << n << " never committed";
      Voter* leader = cluster.WaitForLeader();
      ASSERT_NE(leader, nullptr);
      absl::StatusOr<CommandResult> result = ProposeAndWait(leader->node(), AppendOne(n));
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

TEST(QueueNodeTest, SingleVoterCommitsOnItsOwnFsync) {
  Cluster cluster(1, "single");
  Voter* leader = cluster.WaitForLeader();
  ASSERT_NE(leader, nullptr);
  absl::StatusOr<CommandResult> result = ProposeAndWait(leader->node(), AppendOne(1));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->code(), OK);
  ASSERT_EQ(result->append().outcomes_size(), 1);
  EXPECT_EQ(result->append().outcomes(0).code(), OK);
  EXPECT_GE(leader->node()->status().synced_writes, 1u);
}

TEST(QueueNodeTest, FollowerRefusesProposalsNamingTheLeader) {
  Cluster cluster(3, "refuse");
  Voter* leader = cluster.WaitForLeader();
  ASSERT_NE(leader, nullptr);
  for (auto& voter : cluster.voters()) {
    if (voter.get() != leader) {
      absl::StatusOr<CommandResult> result = ProposeAndWait(voter->node(), AppendOne(1));
      ASSERT_FALSE(result.ok());
      EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
      EXPECT_NE(std::string(result.status().message()).find("leader is"), std::string::npos)
          << result.status();
      break;
    }
  }
}

TEST(QueueNodeTest, ThreeVotersKeepEveryAppendThroughALeaderCrashAndRestart) {
  Cluster cluster(3, "crash");
  AppendThroughLeader(cluster, 0, 50);
  Voter* crashed = cluster.WaitForLeader();
  ASSERT_NE(crashed, nullptr);
  crashed->Stop();
  AppendThroughLeader(cluster, 50, 50);
  // The crashed voter restarts from its data directory and catches up.
  crashed->Start(cluster.peers());
  AppendThroughLeader(cluster, 100, 1);
  Voter* leader = cluster.WaitForLeader();
  ASSERT_NE(leader, nullptr);
  const uint64_t target = leader->node()->state_machine().applied_index();
  for (auto& voter : cluster.voters()) {
    WaitUntilApplied(voter->node(), target);
    absl::StatusOr<std::vector<DomainSummary>> summaries =
        voter->node()->state_machine().Summaries();
    ASSERT_TRUE(summaries.ok()) << summaries.status();
    ASSERT_EQ(summaries->size(), 1u);
    EXPECT_EQ((*summaries)[0].queued_messages(), 101u);
  }
}

}  // namespace
}  // namespace backstop::queue
