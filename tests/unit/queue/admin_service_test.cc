#include "queue/admin_service.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "proto/admin.grpc.pb.h"
#include "queue/message_id.h"
#include "queue/queue_client.h"
#include "queue/queue_node.h"
#include "tests/unit/queue/test_cluster.h"

namespace backstop::queue {
namespace {

using testing::Cluster;
using testing::Eventually;
using testing::FreshTempDir;
using testing::Voter;

constexpr char kDomain[] = "example.test";

std::string Id(uint64_t n) {
  return std::string(MessageId::Make(absl::FromUnixSeconds(1767225600), 1, n).bytes());
}

std::string Body(uint64_t n) {
  return "Subject: " + std::to_string(n) + "\r\n\r\nbody\r\n";
}

std::unique_ptr<admin::AdminService::Stub> AdminStub(const std::string& address) {
  return admin::AdminService::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
}

// A context for one call, with a deadline so that a hung call fails the test instead.
std::unique_ptr<grpc::ClientContext> Context() {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() +
                        testing::Patience(std::chrono::seconds(20)));
  return context;
}

std::unique_ptr<QueueClient> ClientFor(std::vector<std::string> endpoints) {
  QueueClientOptions options;
  options.endpoints = std::move(endpoints);
  options.call_deadline = absl::FromChrono(testing::Patience(std::chrono::seconds(20)));
  absl::StatusOr<std::unique_ptr<QueueClient>> client = QueueClient::Create(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

void AppendThrough(QueueClient& client, uint64_t first, uint64_t last) {
  for (uint64_t n = first; n <= last; ++n) {
    AppendMessages request;
    QueueEntry* entry = request.add_entries();
    entry->set_id(Id(n));
    entry->set_domain(kDomain);
    entry->mutable_envelope()->set_reverse_path("sender@example.org");
    entry->mutable_envelope()->add_recipients()->set_address("alice@example.test");
    entry->set_message(Body(n));
    absl::StatusOr<AppendResult> result = client.Append(request);
    ASSERT_TRUE(result.ok()) << "message " << n << ": " << result.status();
    // A retried append whose first attempt committed (the leader changed meanwhile) reports
    // ALREADY_EXISTS: still stored.
    ASSERT_TRUE(result->outcomes(0).code() == OK || result->outcomes(0).code() == ALREADY_EXISTS)
        << "message " << n << ": " << result->outcomes(0).code();
  }
}

std::vector<uint64_t> Ids(const google::protobuf::RepeatedPtrField<admin::Member>& members) {
  std::vector<uint64_t> ids;
  for (const admin::Member& member : members) {
    ids.push_back(member.id());
  }
  return ids;
}

Voter* Follower(Cluster& cluster, const Voter* leader) {
  for (auto& voter : cluster.voters()) {
    if (voter.get() != leader) {
      return voter.get();
    }
  }
  return nullptr;
}

TEST(AdminServiceTest, ReportsTheClusterStatusOfTheNodeAsked) {
  Cluster cluster(3, "admin_status");
  Voter* leader = cluster.WaitForLeader();
  ASSERT_NE(leader, nullptr);
  const uint64_t leader_id = leader->node()->status().id.value();

  admin::ClusterStatus status;
  ASSERT_TRUE(AdminStub(leader->address())
                  ->GetClusterStatus(Context().get(), admin::GetClusterStatusRequest(), &status)
                  .ok());
  EXPECT_EQ(status.node_id(), leader_id);
  EXPECT_EQ(status.leader_id(), leader_id);
  EXPECT_EQ(status.leader_address(), leader->address());
  EXPECT_GT(status.term(), 0u);
  EXPECT_GE(status.commit_index(), status.applied_index());
  EXPECT_GT(status.applied_index(), 0u);
  EXPECT_EQ(Ids(status.voters()), (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_TRUE(status.learners().empty());
  for (const admin::Member& voter : status.voters()) {
    EXPECT_EQ(voter.address(), cluster.peers()[voter.id() - 1].address);
  }

  Voter* follower = Follower(cluster, leader);
  admin::ClusterStatus follower_status;
  ASSERT_TRUE(Eventually([&] {
    follower_status.Clear();
    return AdminStub(follower->address())
               ->GetClusterStatus(Context().get(), admin::GetClusterStatusRequest(),
                                  &follower_status)
               .ok() &&
           follower_status.leader_id() == leader_id;
  }));
  EXPECT_NE(follower_status.node_id(), leader_id);
  EXPECT_EQ(follower_status.leader_address(), leader->address());
}

// The ClusterStatus of whichever voter leads once `done` holds for it (an election may move
// the leadership on a loaded machine, so the leader is looked up again each time).
std::optional<admin::ClusterStatus> LeaderClusterStatus(
    Cluster& cluster, const std::function<bool(const admin::ClusterStatus&)>& done) {
  std::optional<admin::ClusterStatus> found;
  Eventually([&] {
    Voter* leader = cluster.WaitForLeader();
    admin::ClusterStatus status;
    if (leader == nullptr ||
        !AdminStub(leader->address())
             ->GetClusterStatus(Context().get(), admin::GetClusterStatusRequest(), &status)
             .ok() ||
        status.leader_id() != status.node_id() || !done(status)) {
      return false;
    }
    found = std::move(status);
    return true;
  });
  return found;
}

TEST(AdminServiceTest, LeaderReportsEachMembersMatchAndLag) {
  Cluster cluster(3, "admin_progress");
  std::unique_ptr<QueueClient> client = ClientFor(cluster.endpoints());
  AppendThrough(*client, 1, 10);

  std::optional<admin::ClusterStatus> status =
      LeaderClusterStatus(cluster, [](const admin::ClusterStatus& leader) {
        for (const admin::Member& voter : leader.voters()) {
          if (!voter.has_lag() || voter.lag() != 0) {
            return false;
          }
        }
        return true;
      });
  ASSERT_TRUE(status.has_value()) << "the followers never caught up";
  EXPECT_EQ(status->hostname(), cluster.voters()[status->node_id() - 1]->hostname());
  EXPECT_GE(status->last_index(), 10u);
  ASSERT_EQ(status->voters_size(), 3);
  for (const admin::Member& voter : status->voters()) {
    EXPECT_EQ(voter.match_index(), status->last_index()) << voter.id();
    EXPECT_TRUE(voter.has_last_contact_ms()) << voter.id();
    EXPECT_LT(voter.last_contact_ms(), 5000) << voter.id();
  }

  // A stopped follower lags by what is committed without it; the other voter keeps up.
  Voter* stopped = Follower(cluster, cluster.WaitForLeader());
  const uint64_t stopped_id = stopped->node()->status().id.value();
  stopped->Stop();
  AppendThrough(*client, 11, 15);
  status = LeaderClusterStatus(cluster, [&](const admin::ClusterStatus& leader) {
    for (const admin::Member& voter : leader.voters()) {
      if ((voter.lag() >= 5) != (voter.id() == stopped_id) ||
          voter.match_index() + voter.lag() != leader.last_index()) {
        return false;
      }
    }
    return true;
  });
  EXPECT_TRUE(status.has_value()) << "no leader reported the stopped follower alone as lagging";
}

TEST(AdminServiceTest, FollowerReportsItsHostnameButNoProgress) {
  Cluster cluster(3, "admin_follower_progress");
  Voter* leader = cluster.WaitForLeader();
  ASSERT_NE(leader, nullptr);
  Voter* follower = Follower(cluster, leader);
  admin::ClusterStatus status;
  // Answered while it follows a known leader (an election may be under way).
  ASSERT_TRUE(Eventually([&] {
    status.Clear();
    return AdminStub(follower->address())
               ->GetClusterStatus(Context().get(), admin::GetClusterStatusRequest(), &status)
               .ok() &&
           status.leader_id() != 0 && status.leader_id() != status.node_id();
  }));
  EXPECT_EQ(status.hostname(), follower->hostname());
  ASSERT_EQ(status.voters_size(), 3);
  for (const admin::Member& voter : status.voters()) {
    EXPECT_FALSE(voter.has_match_index());
    EXPECT_FALSE(voter.has_lag());
  }
}

TEST(AdminServiceTest, TransfersLeadershipToTheChosenVoter) {
  Cluster cluster(3, "admin_transfer");
  Voter* leader = cluster.WaitForLeader();
  ASSERT_NE(leader, nullptr);
  Voter* target = Follower(cluster, leader);
  const raft::NodeId target_id = target->node()->status().id;

  admin::TransferLeadershipRequest request;
  request.set_to(target_id.value());
  admin::TransferLeadershipResponse response;
  grpc::Status transferred =
      AdminStub(leader->address())->TransferLeadership(Context().get(), request, &response);
  ASSERT_TRUE(transferred.ok()) << transferred.error_message();
  EXPECT_TRUE(Eventually([&] { return target->node()->status().is_leader; }));
  EXPECT_TRUE(Eventually([&] { return !leader->node()->status().is_leader; }));

  // The new leader serves writes.
  std::unique_ptr<QueueClient> client = ClientFor(cluster.endpoints());
  AppendThrough(*client, 1, 3);
}

TEST(AdminServiceTest, RefusesToTransferLeadershipToANonMember) {
  Cluster cluster(1, "admin_transfer_unknown");
  Voter* leader = cluster.WaitForLeader();
  ASSERT_NE(leader, nullptr);
  admin::TransferLeadershipRequest request;
  request.set_to(9);
  admin::TransferLeadershipResponse response;
  EXPECT_EQ(AdminStub(leader->address())
                ->TransferLeadership(Context().get(), request, &response)
                .error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST(AdminServiceTest, FollowerAnswersAMutationWithTheLeadersAddress) {
  Cluster cluster(3, "admin_follower");
  // On a loaded machine an election may move the leadership between looking the leader up and
  // the follower's answer (the follower may even lead by then): the answer is judged only when
  // both kept the term and the leader they had before the call.
  grpc::Status status;
  std::string named_address;
  std::string leader_address;
  ASSERT_TRUE(Eventually([&] {
    Voter* leader = cluster.WaitForLeader();
    if (leader == nullptr) {
      return false;
    }
    Voter* follower = Follower(cluster, leader);
    const QueueNodeStatus leader_before = leader->node()->status();
    const QueueNodeStatus follower_before = follower->node()->status();
    if (!leader_before.is_leader || follower_before.leader != leader_before.id ||
        follower_before.term != leader_before.term) {
      return false;  // the follower has not heard from this leader yet
    }
    CreateDomain request;
    request.mutable_spec()->set_name(kDomain);
    DomainResult response;
    std::unique_ptr<grpc::ClientContext> context = Context();
    status = AdminStub(follower->address())->CreateDomain(context.get(), request, &response);
    const QueueNodeStatus leader_after = leader->node()->status();
    const QueueNodeStatus follower_after = follower->node()->status();
    if (!leader_after.is_leader || leader_after.term != leader_before.term ||
        follower_after.leader != leader_before.id || follower_after.term != leader_before.term) {
      return false;
    }
    auto named = context->GetServerTrailingMetadata().find(kLeaderAddressKey);
    named_address = named == context->GetServerTrailingMetadata().end()
                        ? ""
                        : std::string(named->second.data(), named->second.size());
    leader_address = leader->address();
    return true;
  })) << "the leadership never stayed put around a call";
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_EQ(named_address, leader_address);
}

TEST(AdminServiceTest, CreatesReadsUpdatesListsAndDeletesADomain) {
  Cluster cluster(1, "admin_domains");
  Voter* leader = cluster.WaitForLeader();
  ASSERT_NE(leader, nullptr);
  std::unique_ptr<admin::AdminService::Stub> stub = AdminStub(leader->address());

  CreateDomain create;
  create.mutable_spec()->set_name(kDomain);
  create.mutable_spec()->add_primary("mx1.example.test:25");
  create.mutable_spec()->set_max_queued_messages(100);
  DomainResult result;
  ASSERT_TRUE(stub->CreateDomain(Context().get(), create, &result).ok());
  EXPECT_EQ(result.code(), OK);
  EXPECT_EQ(stub->CreateDomain(Context().get(), create, &result).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);

  admin::GetDomainRequest get;
  get.set_name(kDomain);
  DomainRecord record;
  ASSERT_TRUE(stub->GetDomain(Context().get(), get, &record).ok());
  EXPECT_EQ(record.spec().primary(0), "mx1.example.test:25");
  EXPECT_EQ(record.spec().max_queued_messages(), 100u);

  UpdateDomain update;
  *update.mutable_spec() = create.spec();
  update.mutable_spec()->set_primary(0, "mx2.example.test:2525");
  ASSERT_TRUE(stub->UpdateDomain(Context().get(), update, &result).ok());
  record.Clear();
  ASSERT_TRUE(stub->GetDomain(Context().get(), get, &record).ok());
  EXPECT_EQ(record.spec().primary(0), "mx2.example.test:2525");

  admin::ListDomainsResponse listed;
  ASSERT_TRUE(stub->ListDomains(Context().get(), admin::ListDomainsRequest(), &listed).ok());
  ASSERT_EQ(listed.domains_size(), 1);
  EXPECT_EQ(listed.domains(0).spec().name(), kDomain);

  DeleteDomain remove;
  remove.set_name(kDomain);
  ASSERT_TRUE(stub->DeleteDomain(Context().get(), remove, &result).ok());
  EXPECT_EQ(stub->GetDomain(Context().get(), get, &record).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(stub->DeleteDomain(Context().get(), remove, &result).error_code(),
            grpc::StatusCode::NOT_FOUND);
  listed.Clear();
  ASSERT_TRUE(stub->ListDomains(Context().get(), admin::ListDomainsRequest(), &listed).ok());
  EXPECT_TRUE(listed.domains().empty());
}

class AdminQueueTest : public ::testing::Test {
 protected:
  void SetUp() override {
    leader_ = cluster_.WaitForLeader();
    ASSERT_NE(leader_, nullptr);
    stub_ = AdminStub(leader_->address());
    client_ = ClientFor(cluster_.endpoints());
    AppendThrough(*client_, 1, 3);
  }

  StoredEntry Show(uint64_t n) {
    admin::ShowEntryRequest request;
    request.set_id(Id(n));
    admin::ShowEntryResponse response;
    EXPECT_TRUE(stub_->ShowEntry(Context().get(), request, &response).ok());
    return response.entry();
  }

  DomainSummary Summary() {
    admin::QueueSummaryResponse response;
    EXPECT_TRUE(stub_->QueueSummary(Context().get(), admin::QueueSummaryRequest(), &response).ok());
    EXPECT_EQ(response.domains_size(), 1);
    return response.domains_size() == 1 ? response.domains(0) : DomainSummary();
  }

  static Selector One(uint64_t n) {
    Selector selector;
    selector.add_ids(Id(n));
    return selector;
  }

  Cluster cluster_{1, "admin_queue"};
  Voter* leader_ = nullptr;
  std::unique_ptr<admin::AdminService::Stub> stub_;
  std::unique_ptr<QueueClient> client_;
};

TEST_F(AdminQueueTest, SummarisesTheQueuePerDomain) {
  const DomainSummary summary = Summary();
  EXPECT_EQ(summary.domain(), kDomain);
  EXPECT_FALSE(summary.configured());
  EXPECT_EQ(summary.queued_messages(), 3u);
  EXPECT_EQ(summary.queued_bytes(), Body(1).size() + Body(2).size() + Body(3).size());
  EXPECT_GT(summary.oldest_enqueue_ms(), 0);
}

TEST_F(AdminQueueTest, ListsEntriesOfADomainPageByPage) {
  ListEntriesRequest request;
  request.set_domain(kDomain);
  request.set_page_size(2);
  ListEntriesResponse first;
  ASSERT_TRUE(stub_->ListEntries(Context().get(), request, &first).ok());
  ASSERT_EQ(first.entries_size(), 2);
  ASSERT_FALSE(first.next_page_token().empty());
  request.set_page_token(first.next_page_token());
  ListEntriesResponse second;
  ASSERT_TRUE(stub_->ListEntries(Context().get(), request, &second).ok());
  ASSERT_EQ(second.entries_size(), 1);
  EXPECT_TRUE(second.next_page_token().empty());
  EXPECT_EQ(first.entries(0).id(), Id(1));
  EXPECT_EQ(first.entries(1).id(), Id(2));
  EXPECT_EQ(second.entries(0).id(), Id(3));
}

TEST_F(AdminQueueTest, ShowsAnEntryWithItsMessageOnlyWhenAsked) {
  admin::ShowEntryRequest request;
  request.set_id(Id(2));
  admin::ShowEntryResponse response;
  ASSERT_TRUE(stub_->ShowEntry(Context().get(), request, &response).ok());
  EXPECT_EQ(response.entry().id(), Id(2));
  EXPECT_EQ(response.entry().envelope().reverse_path(), "sender@example.org");
  EXPECT_EQ(response.entry().message_size(), Body(2).size());
  EXPECT_TRUE(response.message().empty());

  request.set_with_message(true);
  ASSERT_TRUE(stub_->ShowEntry(Context().get(), request, &response).ok());
  EXPECT_EQ(response.message(), Body(2));

  request.set_id(Id(99));
  EXPECT_EQ(stub_->ShowEntry(Context().get(), request, &response).error_code(),
            grpc::StatusCode::NOT_FOUND);
  request.set_id("short");
  EXPECT_EQ(stub_->ShowEntry(Context().get(), request, &response).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(AdminQueueTest, HoldsAndReleasesEntries) {
  HoldEntries hold;
  *hold.mutable_selector() = One(1);
  SelectionResult result;
  ASSERT_TRUE(stub_->Hold(Context().get(), hold, &result).ok());
  EXPECT_EQ(result.affected(), 1u);
  EXPECT_TRUE(Show(1).held());
  EXPECT_EQ(Summary().held_messages(), 1u);

  ReleaseEntries release;
  release.mutable_selector()->set_domain(kDomain);
  ASSERT_TRUE(stub_->Release(Context().get(), release, &result).ok());
  EXPECT_EQ(result.affected(), 1u);
  EXPECT_FALSE(Show(1).held());
  EXPECT_EQ(Summary().held_messages(), 0u);
}

TEST_F(AdminQueueTest, DeletesEntriesAndNamesThoseNotFound) {
  DeleteEntries request;
  *request.mutable_selector() = One(3);
  request.mutable_selector()->add_ids(Id(99));
  SelectionResult result;
  ASSERT_TRUE(stub_->Delete(Context().get(), request, &result).ok());
  EXPECT_EQ(result.affected(), 1u);
  ASSERT_EQ(result.not_found_size(), 1);
  EXPECT_EQ(result.not_found(0), Id(99));
  admin::ShowEntryRequest show;
  show.set_id(Id(3));
  admin::ShowEntryResponse shown;
  EXPECT_EQ(stub_->ShowEntry(Context().get(), show, &shown).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Summary().queued_messages(), 2u);
}

TEST_F(AdminQueueTest, MarksEntriesForBounceWithTheReason) {
  BounceEntries request;
  *request.mutable_selector() = One(2);
  request.set_reason("mailbox retired");
  SelectionResult result;
  ASSERT_TRUE(stub_->Bounce(Context().get(), request, &result).ok());
  EXPECT_EQ(result.affected(), 1u);
  const StoredEntry entry = Show(2);
  EXPECT_TRUE(entry.bounce_requested());
  EXPECT_EQ(entry.bounce_reason(), "mailbox retired");
  EXPECT_FALSE(Show(1).bounce_requested());
}

TEST_F(AdminQueueTest, FlushMakesADeferredDomainDueNow) {
  // A worker defers entry 1 far into the future; the domain goes down.
  LeaseEntries lease;
  lease.set_worker_id("worker");
  lease.set_max_entries(1);
  lease.set_lease_duration_ms(60000);
  absl::StatusOr<LeaseResult> leased = client_->Lease(lease);
  ASSERT_TRUE(leased.ok()) << leased.status();
  ASSERT_EQ(leased->domains(0).entries_size(), 1);
  const LeasedEntry& entry = leased->domains(0).entries(0);
  CompleteEntries complete;
  CompletionItem* item = complete.add_items();
  item->set_id(entry.entry().id());
  item->set_lease_token(entry.lease().token());
  item->mutable_retry()->set_retry_at_ms(absl::ToUnixMillis(absl::Now() + absl::Hours(1)));
  item->mutable_retry()->set_error("451 try later");
  ASSERT_TRUE(client_->Complete(complete).ok());
  ASSERT_NE(Show(1).not_before_ms(), 0);

  FlushDomain flush;
  flush.set_domain(kDomain);
  SelectionResult result;
  ASSERT_TRUE(stub_->Flush(Context().get(), flush, &result).ok());
  EXPECT_EQ(result.affected(), 1u);
  EXPECT_EQ(Show(1).not_before_ms(), 0);

  flush.set_domain("unknown.test");
  EXPECT_EQ(stub_->Flush(Context().get(), flush, &result).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

bool IsIn(const std::vector<raft::NodeId>& members, uint64_t id) {
  return std::find(members.begin(), members.end(), raft::NodeId(id)) != members.end();
}

// One membership change through whichever voter leads. On a loaded machine an election may
// move the leadership before or during the call (Unavailable); the change is then made again
// through the new leader, unless `done` already holds of its configuration (the first call's
// entry was committed but its answer lost). `change` may refuse a leader (Unavailable) to be
// called again once another voter leads.
grpc::Status ChangeMembership(Cluster& cluster,
                              const std::function<bool(const raft::ConfState&)>& done,
                              const std::function<grpc::Status(Voter& leader)>& change) {
  grpc::Status status(grpc::StatusCode::UNAVAILABLE, "no voter led");
  Eventually([&] {
    Voter* leader = cluster.WaitForLeader();
    if (leader == nullptr) {
      return false;
    }
    if (done(leader->node()->status().members)) {
      status = grpc::Status::OK;
      return true;
    }
    status = change(*leader);
    return status.error_code() != grpc::StatusCode::UNAVAILABLE;
  });
  return status;
}

TEST(AdminServiceTest, AddsAFourthVoterThatGetsTheDataThenRemovesAVoter) {
  Cluster cluster(3, "admin_membership");
  ASSERT_NE(cluster.WaitForLeader(), nullptr);
  std::unique_ptr<QueueClient> client = ClientFor(cluster.endpoints());
  AppendThrough(*client, 1, 10);

  // The new node starts empty and waits to be contacted: no configuration, never leads.
  Voter& joining = cluster.Join(4, "admin_membership4");
  EXPECT_TRUE(joining.node()->status().members.voters.empty());
  EXPECT_FALSE(joining.node()->status().is_leader);

  grpc::Status status = ChangeMembership(
      cluster, [](const raft::ConfState& members) { return IsIn(members.voters, 4); },
      [&](Voter& leader) {
        std::unique_ptr<admin::AdminService::Stub> stub = AdminStub(leader.address());
        if (IsIn(leader.node()->status().members.learners, 4)) {
          // An interrupted AddVoter left it a learner, which no later leader promotes: an
          // operator removes it and adds it again.
          admin::RemoveVoterRequest remove;
          remove.set_id(4);
          admin::RemoveVoterResponse removed;
          const grpc::Status removal = stub->RemoveVoter(Context().get(), remove, &removed);
          return removal.ok() ? grpc::Status(grpc::StatusCode::UNAVAILABLE, "learner removed")
                              : removal;
        }
        admin::AddVoterRequest add;
        add.set_id(4);
        add.set_address(joining.address());
        admin::AddVoterResponse added;
        return stub->AddVoter(Context().get(), add, &added);
      });
  ASSERT_TRUE(status.ok()) << status.error_code() << ": " << status.error_message();

  std::optional<admin::ClusterStatus> cluster_status =
      LeaderClusterStatus(cluster, [](const admin::ClusterStatus&) { return true; });
  ASSERT_TRUE(cluster_status.has_value());
  EXPECT_EQ(Ids(cluster_status->voters()), (std::vector<uint64_t>{1, 2, 3, 4}));
  EXPECT_TRUE(cluster_status->learners().empty());
  EXPECT_EQ(cluster_status->voters(3).address(), joining.address());

  AppendThrough(*client, 11, 20);
  // The new voter has everything, including what was appended before it joined.
  EXPECT_TRUE(Eventually([&] {
    for (uint64_t n = 1; n <= 20; ++n) {
      absl::StatusOr<MessageId> id = MessageId::FromBytes(Id(n));
      absl::StatusOr<std::string> bytes = joining.node()->state_machine().ReadMessage(*id);
      if (!bytes.ok() || *bytes != Body(n)) {
        return false;
      }
    }
    return true;
  }));

  // Remove a follower, stop it, and the remaining three keep committing.
  Voter* removed = Follower(cluster, cluster.WaitForLeader());
  const uint64_t removed_id = removed->node()->status().id.value();
  status = ChangeMembership(
      cluster,
      [&](const raft::ConfState& members) {
        return !IsIn(members.voters, removed_id) && !IsIn(members.learners, removed_id);
      },
      [&](Voter& leader) {
        if (&leader == removed) {
          return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the voter to remove leads");
        }
        admin::RemoveVoterRequest remove;
        remove.set_id(removed_id);
        admin::RemoveVoterResponse removed_response;
        return AdminStub(leader.address())->RemoveVoter(Context().get(), remove, &removed_response);
      });
  ASSERT_TRUE(status.ok()) << status.error_code() << ": " << status.error_message();
  cluster_status = LeaderClusterStatus(cluster, [](const admin::ClusterStatus&) { return true; });
  ASSERT_TRUE(cluster_status.has_value());
  EXPECT_EQ(cluster_status->voters_size(), 3);
  for (const admin::Member& voter : cluster_status->voters()) {
    EXPECT_NE(voter.id(), removed_id);
  }
  removed->Stop();
  AppendThrough(*client, 21, 25);
  EXPECT_TRUE(Eventually([&] {
    return joining.node()->state_machine().GetEntry(*MessageId::FromBytes(Id(25))).ok();
  }));
}

TEST(AdminServiceTest, RemovingAnUnknownVoterIsNotFound) {
  Cluster cluster(1, "admin_remove_unknown");
  Voter* leader = cluster.WaitForLeader();
  ASSERT_NE(leader, nullptr);
  admin::RemoveVoterRequest request;
  request.set_id(7);
  admin::RemoveVoterResponse response;
  EXPECT_EQ(
      AdminStub(leader->address())->RemoveVoter(Context().get(), request, &response).error_code(),
      grpc::StatusCode::NOT_FOUND);
}

TEST(AdminServiceTest, RefusesToRemoveTheLeaderItself) {
  Cluster cluster(1, "admin_remove_leader");
  Voter* leader = cluster.WaitForLeader();
  ASSERT_NE(leader, nullptr);
  admin::RemoveVoterRequest request;
  request.set_id(leader->node()->status().id.value());
  admin::RemoveVoterResponse response;
  EXPECT_EQ(
      AdminStub(leader->address())->RemoveVoter(Context().get(), request, &response).error_code(),
      grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(leader->node()->status().is_leader);
}

}  // namespace
}  // namespace backstop::queue
