#include "queue/queue_node.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <optional>
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
  if (future.wait_for(testing::Patience(std::chrono::seconds(20))) != std::future_status::ready) {
    return absl::DeadlineExceededError("no answer in time");
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

// Proposes messages first..first+count-1 to the leader all at once (the Raft thread packs them
// into few entries per fsync), then retries those that failed, like clients would.
void AppendManyThroughLeader(Cluster& cluster, int first, int count) {
  std::vector<int> todo;
  for (int n = first; n < first + count; ++n) {
    todo.push_back(n);
  }
  for (int attempt = 0; !todo.empty(); ++attempt) {
    ASSERT_LT(attempt, 50) << todo.size() << " messages never committed";
    Voter* leader = cluster.WaitForLeader();
    ASSERT_NE(leader, nullptr);
    std::vector<std::future<absl::StatusOr<CommandResult>>> results;
    for (int n : todo) {
      auto promise = std::make_shared<std::promise<absl::StatusOr<CommandResult>>>();
      results.push_back(promise->get_future());
      leader->node()->Propose(AppendOne(n), [promise](absl::StatusOr<CommandResult> result) {
        promise->set_value(std::move(result));
      });
    }
    std::vector<int> failed;
    for (size_t i = 0; i < todo.size(); ++i) {
      ASSERT_EQ(results[i].wait_for(testing::Patience(std::chrono::seconds(30))),
                std::future_status::ready);
      absl::StatusOr<CommandResult> result = results[i].get();
      if (!result.ok()) {
        failed.push_back(todo[i]);
      } else {
        ASSERT_EQ(result->code(), OK);
      }
    }
    todo = failed;
  }
}

uint64_t Digest(QueueNode* node) {
  absl::StatusOr<uint64_t> digest = node->state_machine().ContentDigest();
  EXPECT_TRUE(digest.ok()) << digest.status();
  return digest.value_or(0);
}

Voter* AFollower(Cluster& cluster) {
  Voter* leader = cluster.WaitForLeader();
  for (auto& voter : cluster.voters()) {
    if (voter.get() != leader) {
      return voter.get();
    }
  }
  return nullptr;
}

absl::Status WaitFor(std::function<void(QueueNode::StatusDone)> start) {
  auto promise = std::make_shared<std::promise<absl::Status>>();
  std::future<absl::Status> result = promise->get_future();
  start([promise](absl::Status status) { promise->set_value(std::move(status)); });
  if (result.wait_for(testing::Patience(std::chrono::seconds(60))) != std::future_status::ready) {
    return absl::DeadlineExceededError("no answer in time");
  }
  return result.get();
}

// AddVoter through whichever voter leads, retried like an operator would when leadership
// changes midway (a slow machine can starve heartbeats): done once `voter` is a voter; a
// learner an interrupted attempt left behind, which no later leader promotes, is removed first.
absl::Status AddVoterThroughLeader(Cluster& cluster, const VoterAddress& voter) {
  absl::Status last = absl::UnavailableError("not tried");
  for (int attempt = 0; attempt < 20; ++attempt) {
    Voter* leader = cluster.WaitForLeader();
    if (leader == nullptr) {
      return absl::UnavailableError("no leader");
    }
    const raft::ConfState members = leader->node()->status().members;
    auto has = [&](const std::vector<raft::NodeId>& ids) {
      return std::find(ids.begin(), ids.end(), voter.id) != ids.end();
    };
    if (has(members.voters)) {
      return absl::OkStatus();
    }
    last = WaitFor([&](QueueNode::StatusDone done) {
      if (has(members.learners)) {
        leader->node()->ProposeConfChange(raft::ConfChange(raft::ConfChangeType::kRemove, voter.id),
                                          "", std::move(done));
      } else {
        leader->node()->AddVoter(voter, std::move(done));
      }
    });
    if (!last.ok() && last.code() != absl::StatusCode::kUnavailable &&
        last.code() != absl::StatusCode::kFailedPrecondition) {
      return last;
    }
  }
  return last;
}

void WaitUntilApplied(QueueNode* node, uint64_t index) {
  testing::Eventually([&] { return node->state_machine().applied_index() >= index; });
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

// The status of whichever voter leads once `done` holds for it (an election may move the
// leadership on a loaded machine, so the leader is looked up again each time).
std::optional<QueueNodeStatus> LeaderStatusOnce(
    Cluster& cluster, const std::function<bool(const QueueNodeStatus&)>& done) {
  std::optional<QueueNodeStatus> found;
  testing::Eventually([&] {
    Voter* leader = cluster.WaitForLeader();
    if (leader == nullptr) {
      return false;
    }
    QueueNodeStatus status = leader->node()->status();
    if (!status.is_leader || !done(status)) {
      return false;
    }
    found = std::move(status);
    return true;
  });
  return found;
}

TEST(QueueNodeTest, LeaderReportsEachPeersMatchLagAndLastContact) {
  Cluster cluster(3, "progress");
  AppendThroughLeader(cluster, 0, 10);
  // Heartbeats carry the followers up to the leader's last entry.
  std::optional<QueueNodeStatus> status =
      LeaderStatusOnce(cluster, [](const QueueNodeStatus& leader) {
        return leader.peers.size() == 2 && leader.LagOf(leader.peers[0]) == 0 &&
               leader.LagOf(leader.peers[1]) == 0;
      });
  ASSERT_TRUE(status.has_value()) << "the followers never caught up";
  EXPECT_GE(status->last_index.value(), 10u);
  const absl::Time now = RealClock::Get().Now();
  for (const PeerProgress& peer : status->peers) {
    EXPECT_NE(peer.id, status->id);
    EXPECT_FALSE(peer.is_learner);
    EXPECT_EQ(peer.match, status->last_index);
    EXPECT_EQ(peer.address, cluster.peers()[peer.id.value() - 1].address);
    EXPECT_LT(now - peer.last_contact, absl::Seconds(5));
  }
  EXPECT_EQ(status->leader_commit, status->commit);

  // A stopped follower falls behind by what the others commit without it.
  Voter* stopped = AFollower(cluster);
  ASSERT_NE(stopped, nullptr);
  const raft::NodeId stopped_id = stopped->node()->status().id;
  stopped->Stop();
  AppendThroughLeader(cluster, 10, 5);
  status = LeaderStatusOnce(cluster, [&](const QueueNodeStatus& leader) {
    for (const PeerProgress& peer : leader.peers) {
      if (peer.id == stopped_id) {
        return leader.LagOf(peer) >= 5;
      }
    }
    return false;
  });
  EXPECT_TRUE(status.has_value()) << "the stopped follower does not lag";
}

TEST(QueueNodeTest, FollowerKnowsTheLeadersCommitAndWhenItLastHeardFromIt) {
  Cluster cluster(3, "follower_lag");
  AppendThroughLeader(cluster, 0, 10);
  Voter* leader = cluster.WaitForLeader();
  ASSERT_NE(leader, nullptr);
  const raft::LogIndex leader_commit = leader->node()->status().commit;
  Voter* follower = AFollower(cluster);
  ASSERT_NE(follower, nullptr);
  QueueNodeStatus status;
  ASSERT_TRUE(testing::Eventually([&] {
    status = follower->node()->status();
    return status.leader_commit >= leader_commit && status.Lag() == 0;
  })) << "follower "
      << status.id.value() << " heard commit " << status.leader_commit.value() << " applied "
      << status.applied.value() << " leader " << status.leader.value() << "; wanted commit "
      << leader_commit.value();
  EXPECT_FALSE(status.is_leader);
  EXPECT_TRUE(status.peers.empty());
  EXPECT_EQ(status.leader_address, cluster.peers()[status.leader.value() - 1].address);
  EXPECT_LT(follower->node()->clock().Now() - status.leader_contact, absl::Seconds(5));
}

TEST(QueueNodeTest, DepthSumsTheQueuedEntries) {
  Cluster cluster(1, "depth");
  AppendThroughLeader(cluster, 0, 3);
  Voter* leader = cluster.WaitForLeader();
  ASSERT_NE(leader, nullptr);
  absl::StatusOr<QueueDepth> depth = leader->node()->Depth();
  ASSERT_TRUE(depth.ok()) << depth.status();
  EXPECT_EQ(depth->messages, 3u);
  EXPECT_GT(depth->bytes, 0u);
  EXPECT_EQ(depth->held, 0u);
  EXPECT_EQ(depth->leased, 0u);
  EXPECT_EQ(depth->domains, 1u);
  EXPECT_NE(depth->oldest, absl::InfinitePast());
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

// Every voter applied the leader's last index and holds the same state.
void ExpectSameState(Cluster& cluster, std::vector<Voter*> extra = {}) {
  Voter* leader = cluster.WaitForLeader();
  ASSERT_NE(leader, nullptr);
  std::vector<Voter*> voters = std::move(extra);
  for (auto& voter : cluster.voters()) {
    if (voter->node() != nullptr) {
      voters.push_back(voter.get());
    }
  }
  // The leader may still apply entries of its own after the test's last append (a membership
  // change is followed by the record of the new member's address): wait until its applied
  // index holds still while everyone catches up to it.
  uint64_t target = 0;
  for (int round = 0; round < 100; ++round) {
    target = leader->node()->state_machine().applied_index();
    for (Voter* voter : voters) {
      WaitUntilApplied(voter->node(), target);
    }
    if (leader->node()->state_machine().applied_index() == target) {
      break;
    }
  }
  // Digests compare at one index: no appends are running, and everyone reached the target.
  const uint64_t digest = Digest(leader->node());
  for (Voter* voter : voters) {
    EXPECT_EQ(voter->node()->state_machine().applied_index(), target);
    EXPECT_EQ(Digest(voter->node()), digest) << "voter " << voter->node()->status().id.value();
  }
}

// The highest index among <data_dir>/snapshots/<index>, 0 if none.
uint64_t HighestSnapshot(const Voter& voter) {
  uint64_t highest = 0;
  std::error_code error;
  for (const auto& dir :
       std::filesystem::directory_iterator(voter.data_dir() + "/snapshots", error)) {
    const std::string name = dir.path().filename().string();
    if (!name.empty() && std::all_of(name.begin(), name.end(), ::isdigit)) {
      highest = std::max<uint64_t>(highest, std::stoull(name));
    }
  }
  return highest;
}

// Snapshots follow their flush in a later round of the Raft thread: waits until the leader has
// taken one at `index` or later (and compacted its log below it).
void WaitForLeaderSnapshot(Cluster& cluster, uint64_t index) {
  Voter* leader = cluster.WaitForLeader();
  ASSERT_NE(leader, nullptr);
  ASSERT_TRUE(testing::Eventually([&] { return HighestSnapshot(*leader) >= index; }))
      << "the leader's latest snapshot is at " << HighestSnapshot(*leader);
}

TEST(QueueNodeTest, FollowerFarBehindACompactedLeaderCatchesUpBySnapshot) {
  Cluster cluster(3, "snapcatch", /*snapshot_entries=*/200, /*snapshot_keep_entries=*/20);
  AppendManyThroughLeader(cluster, 0, 10);
  Voter* lagging = AFollower(cluster);
  ASSERT_NE(lagging, nullptr);
  lagging->Stop();
  AppendManyThroughLeader(cluster, 10, 1000);
  WaitForLeaderSnapshot(cluster, 200);
  lagging->Start(cluster.peers());
  AppendManyThroughLeader(cluster, 1010, 1);
  ExpectSameState(cluster);
  EXPECT_GE(lagging->transport().stats().snapshots_received, 1u);
  absl::StatusOr<std::vector<DomainSummary>> summaries =
      lagging->node()->state_machine().Summaries();
  ASSERT_TRUE(summaries.ok()) << summaries.status();
  ASSERT_EQ(summaries->size(), 1u);
  EXPECT_EQ((*summaries)[0].queued_messages(), 1011u);
  // It took the leader's checkpoint as its own snapshot, ready to send on.
  EXPECT_TRUE(std::filesystem::exists(lagging->data_dir() + "/snapshots"));
  EXPECT_FALSE(std::filesystem::exists(lagging->data_dir() + "/snapshots/incoming"));
}

TEST(QueueNodeTest, SnapshotFollowsItsBackgroundFlushAfterTheWritesStop) {
  Cluster cluster(1, "snapidle", /*snapshot_entries=*/100, /*snapshot_keep_entries=*/10);
  Voter* voter = cluster.WaitForLeader();
  ASSERT_NE(voter, nullptr);
  // One entry at a time, so that the last write is the one that crosses the threshold: 100
  // entries past the founding snapshot at index 1.
  for (int n = 0; voter->node()->status().applied.value() < 101; ++n) {
    AppendThroughLeader(cluster, n, 1);
  }
  // Nothing is written from here on: the snapshot must still follow its flush.
  WaitForLeaderSnapshot(cluster, 101);
}

// The commit index is persisted without an fsync of its own, so a crash can leave the state
// machine ahead of it; the restarted voter takes the applied index as committed and serves on.
TEST(QueueNodeTest, RestartsWhenACrashLostTheLatestCommitIndex) {
  Cluster cluster(1, "lostcommit");
  AppendThroughLeader(cluster, 0, 10);
  Voter& voter = *cluster.voters().front();
  const uint64_t applied = voter.node()->state_machine().applied_index();
  voter.Stop();
  {
    // What a crash that dropped the unsynced tail of the log leaves: an older commit index.
    auto database = Database::Open(voter.data_dir() + "/raft", DatabaseOptions{});
    ASSERT_TRUE(database.ok()) << database.status();
    auto storage = RocksDbLogStorage::Open(database->get());
    ASSERT_TRUE(storage.ok()) << storage.status();
    raft::HardState lost = (*storage)->GetHardState();
    ASSERT_EQ(lost.commit.value(), applied);
    lost.commit = raft::LogIndex(applied - 5);
    ASSERT_TRUE((*storage)->SetHardState(lost).ok());
  }
  voter.Start(cluster.peers());
  AppendThroughLeader(cluster, 10, 1);
  EXPECT_FALSE(voter.crashed());
  EXPECT_GT(voter.node()->status().commit.value(), applied);
  absl::StatusOr<QueueDepth> depth = voter.node()->Depth();
  ASSERT_TRUE(depth.ok()) << depth.status();
  EXPECT_EQ(depth->messages, 11u);
}

TEST(QueueNodeTest, CrashAfterTheSnapshotSwapIsCompletedOnRestart) {
  Cluster cluster(3, "snapcrash", /*snapshot_entries=*/100, /*snapshot_keep_entries=*/10);
  AppendManyThroughLeader(cluster, 0, 5);
  Voter* lagging = AFollower(cluster);
  ASSERT_NE(lagging, nullptr);
  lagging->Stop();
  AppendManyThroughLeader(cluster, 5, 300);
  WaitForLeaderSnapshot(cluster, 100);
  lagging->options().test_crash = TestCrash::kAfterSnapshotSwap;
  lagging->Start(cluster.peers());
  for (int i = 0; i < 2000 && !lagging->crashed(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(lagging->crashed());
  lagging->Stop();
  lagging->options().test_crash = TestCrash::kNone;
  lagging->Start(cluster.peers());
  AppendManyThroughLeader(cluster, 305, 1);
  ExpectSameState(cluster);
}

TEST(QueueNodeTest, JoiningVoterIsCaughtUpBySnapshotAndEveryMemberLearnsItsAddress) {
  Cluster cluster(3, "snapjoin", /*snapshot_entries=*/100, /*snapshot_keep_entries=*/10);
  AppendManyThroughLeader(cluster, 0, 300);
  WaitForLeaderSnapshot(cluster, 100);
  Voter joining(4, testing::FreshTempDir("snapjoin4"));
  joining.options().snapshot_entries = 100;
  joining.options().snapshot_keep_entries = 10;
  joining.Start(cluster.peers(), StartMode::kJoinExisting);
  const absl::Status added =
      AddVoterThroughLeader(cluster, VoterAddress{raft::NodeId(4), joining.address()});
  ASSERT_TRUE(added.ok()) << added;
  AppendManyThroughLeader(cluster, 300, 1);
  ExpectSameState(cluster, {&joining});
  EXPECT_GE(joining.transport().stats().snapshots_received, 1u);
  for (auto& voter : cluster.voters()) {
    EXPECT_EQ(voter->node()->PeerAddress(raft::NodeId(4)), joining.address());
    const raft::ConfState members = voter->node()->status().members;
    EXPECT_EQ(members.voters.size(), 4u);
  }
  // The address is part of the replicated state: a founder restarted with only the founding
  // list still knows it.
  Voter* restarted = AFollower(cluster);
  ASSERT_NE(restarted, nullptr);
  restarted->Stop();
  restarted->Start(cluster.peers());
  EXPECT_EQ(restarted->node()->PeerAddress(raft::NodeId(4)), joining.address());

  // Removing an original voter: the rest (the new one included) keep committing.
  Voter* removed = AFollower(cluster);
  ASSERT_NE(removed, nullptr);
  raft::NodeId removed_id;
  for (size_t i = 0; i < cluster.voters().size(); ++i) {
    if (cluster.voters()[i].get() == removed) {
      removed_id = cluster.peers()[i].id;
    }
  }
  // Retried like an operator would while a leader change (after the restart) settles.
  absl::Status removal = absl::UnavailableError("not tried");
  for (int attempt = 0; attempt < 50 && !removal.ok(); ++attempt) {
    if (attempt > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    Voter* leader = cluster.WaitForLeader();
    ASSERT_NE(leader, nullptr);
    removal = WaitFor([&](QueueNode::StatusDone done) {
      leader->node()->ProposeConfChange(raft::ConfChange(raft::ConfChangeType::kRemove, removed_id),
                                        "", std::move(done));
    });
  }
  ASSERT_TRUE(removal.ok()) << removal;
  removed->Stop();
  AppendManyThroughLeader(cluster, 301, 50);
  ExpectSameState(cluster, {&joining});
  EXPECT_EQ(joining.node()->PeerAddress(removed_id), "");
}

}  // namespace
}  // namespace backstop::queue
