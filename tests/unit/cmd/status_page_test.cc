#include "cmd/backstop/status_page.h"

#include <string>

#include <gtest/gtest.h>

namespace backstop {
namespace {

const absl::Time kNow = absl::FromUnixSeconds(1'800'000'000);

BuildInfo Build() {
  return BuildInfo{.version = "0.1.0",
                   .commit = "0123456789ab",
                   .build_type = "Release",
                   .compiler = "GNU 12.2.0"};
}

RoleSet Roles(std::initializer_list<Role> roles) {
  RoleSet set;
  for (Role role : roles) {
    set.Add(role);
  }
  return set;
}

// Voter 1 leads voters 1..3 and learner 4; its log ends at 100.
queue::QueueNodeStatus LeaderStatus() {
  queue::QueueNodeStatus status;
  status.id = raft::NodeId(1);
  status.leader = raft::NodeId(1);
  status.leader_address = "10.0.0.1:7025";
  status.term = raft::Term(3);
  status.commit = raft::LogIndex(98);
  status.applied = raft::LogIndex(97);
  status.last_index = raft::LogIndex(100);
  status.role = raft::Role::kLeader;
  status.is_leader = true;
  status.members.voters = {raft::NodeId(1), raft::NodeId(2), raft::NodeId(3)};
  status.members.learners = {raft::NodeId(4)};
  status.leader_commit = raft::LogIndex(98);
  status.leader_contact = kNow - absl::Milliseconds(60);  // published a moment ago
  status.peers = {
      {raft::NodeId(2), "10.0.0.2:7025", false, raft::LogIndex(100), kNow - absl::Milliseconds(40)},
      {raft::NodeId(3), "10.0.0.3:7025", false, raft::LogIndex(90), kNow - absl::Seconds(2)},
      {raft::NodeId(4), "", true, raft::LogIndex(0), absl::InfinitePast()},
  };
  return status;
}

StatusPage Page(uint64_t node_id, RoleSet roles) {
  StatusPage page;
  page.node_id = node_id;
  page.hostname = "mx2.example.net";
  page.roles = roles;
  page.build = Build();
  page.now = kNow;
  return page;
}

StatusPage QueuePage(queue::QueueNodeStatus status) {
  StatusPage page = Page(status.id.value(), Roles({Role::kQueue}));
  page.queue = QueueStatus{.raft = std::move(status), .depth = std::nullopt};
  return page;
}

bool Contains(const std::string& json, const std::string& part) {
  return json.find(part) != std::string::npos;
}

TEST(StatusPageTest, LeaderListsEveryOtherMemberWithMatchLagAndContactAge) {
  const std::string json = StatusJson(QueuePage(LeaderStatus()));
  EXPECT_TRUE(Contains(
      json,
      R"("peers":[{"id":2,"address":"10.0.0.2:7025","role":"voter","match_index":100,"lag":0,)"
      R"("last_contact_seconds":0.040},)"
      R"({"id":3,"address":"10.0.0.3:7025","role":"voter","match_index":90,"lag":10,)"
      R"("last_contact_seconds":2.000},)"
      R"({"id":4,"address":"","role":"learner","match_index":0,"lag":100,)"
      R"("last_contact_seconds":null}])"))
      << json;
  EXPECT_TRUE(Contains(json, R"("leader_id":1,"leader_address":"10.0.0.1:7025","is_leader":true,)"
                             R"("state":"leader","term":3,"commit_index":98,"applied_index":97,)"
                             R"("last_index":100,)"))
      << json;
  EXPECT_TRUE(Contains(json, R"("voters":[1,2,3],"learners":[4],)")) << json;
  // The leader's own lag is what it has committed but not applied yet; it hears itself now.
  EXPECT_TRUE(Contains(json, R"("leader_commit_index":98,"lag":1,"leader_contact_seconds":0.000,)"))
      << json;
}

TEST(StatusPageTest, FollowerReportsTheLeaderAndItsOwnLagBehindTheLeadersCommit) {
  queue::QueueNodeStatus status;
  status.id = raft::NodeId(2);
  status.leader = raft::NodeId(1);
  status.leader_address = "10.0.0.1:7025";
  status.term = raft::Term(3);
  status.commit = raft::LogIndex(95);
  status.applied = raft::LogIndex(90);
  status.last_index = raft::LogIndex(99);
  status.synced_writes = 7;
  status.entries_persisted = 99;
  status.members.voters = {raft::NodeId(1), raft::NodeId(2), raft::NodeId(3)};
  status.leader_commit = raft::LogIndex(98);
  status.leader_contact = kNow - absl::Milliseconds(250);
  EXPECT_EQ(StatusJson(QueuePage(status)),
            R"({"node_id":2,"hostname":"mx2.example.net","version":"0.1.0+0123456789ab",)"
            R"("roles":["queue"],"build":{"version":"0.1.0","commit":"0123456789ab",)"
            R"("build_type":"Release","compiler":"GNU 12.2.0"},)"
            R"("queue":{"leader_id":1,"leader_address":"10.0.0.1:7025","is_leader":false,)"
            R"("state":"follower","term":3,"commit_index":95,"applied_index":90,"last_index":99,)"
            R"("synced_writes":7,"entries_persisted":99,"voters":[1,2,3],"learners":[],)"
            R"("leader_commit_index":98,"lag":8,"leader_contact_seconds":0.250,"peers":[],)"
            R"("depth":null}})"
            "\n");
}

TEST(StatusPageTest, NodeWithoutALeaderHasNoContactAge) {
  queue::QueueNodeStatus status;
  status.id = raft::NodeId(2);
  status.role = raft::Role::kCandidate;
  const std::string json = StatusJson(QueuePage(status));
  EXPECT_TRUE(Contains(json, R"("leader_id":0,"leader_address":"",)")) << json;
  EXPECT_TRUE(Contains(json, R"("state":"candidate",)")) << json;
  EXPECT_TRUE(Contains(json, R"("lag":0,"leader_contact_seconds":null,"peers":[],)")) << json;
}

TEST(StatusPageTest, QueueDepthCarriesTheOldestMessagesAge) {
  StatusPage page = QueuePage(LeaderStatus());
  page.queue->depth = queue::QueueDepth{.messages = 12,
                                        .bytes = 34'567,
                                        .held = 2,
                                        .leased = 3,
                                        .domains = 4,
                                        .domains_down = 1,
                                        .oldest = kNow - absl::Seconds(90)};
  EXPECT_TRUE(Contains(StatusJson(page),
                       R"("depth":{"messages":12,"bytes":34567,"held":2,"leased":3,"domains":4,)"
                       R"("domains_down":1,"oldest_message_age_seconds":90.000}})"));
  page.queue->depth = queue::QueueDepth{};
  EXPECT_TRUE(
      Contains(StatusJson(page), R"("domains_down":0,"oldest_message_age_seconds":0.000})"));
}

TEST(StatusPageTest, OnlyTheRolesThisProcessRunsHaveASection) {
  const StatusPage delivery_only = Page(5, Roles({Role::kDelivery}));
  const std::string json = StatusJson(delivery_only);
  EXPECT_TRUE(Contains(json, R"("roles":["delivery"],)")) << json;
  EXPECT_FALSE(Contains(json, R"("queue")")) << json;
  EXPECT_FALSE(Contains(json, R"("ingest")")) << json;
  EXPECT_TRUE(Contains(json, R"("compiler":"GNU 12.2.0"}})")) << json;

  StatusPage ingest = delivery_only;
  ingest.roles = Roles({Role::kIngest});
  ingest.ingest = IngestStatus{.listen = {"127.0.0.1:2525"},
                               .active_connections = 2,
                               .append_rpcs = 5,
                               .entries_appended = 9};
  EXPECT_TRUE(Contains(StatusJson(ingest),
                       R"("ingest":{"listen":["127.0.0.1:2525"],"active_connections":2,)"
                       R"("append_rpcs":5,"entries_appended":9}})"));
}

TEST(StatusPageTest, EscapesTextFields) {
  StatusPage page = QueuePage(LeaderStatus());
  page.hostname = "mx\"2\\";
  EXPECT_TRUE(Contains(StatusJson(page), R"("hostname":"mx\"2\\",)"));
}

}  // namespace
}  // namespace backstop
