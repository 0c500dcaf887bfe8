#include "queue/queue_client.h"

#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "queue/message_id.h"
#include "tests/unit/queue/test_cluster.h"

namespace backstop::queue {
namespace {

using testing::Cluster;
using testing::Voter;

QueueEntry Entry(uint64_t n, const std::string& body) {
  QueueEntry entry;
  entry.set_id(std::string(MessageId::Make(absl::FromUnixSeconds(1767225600), 1, n).bytes()));
  entry.set_domain("example.test");
  entry.mutable_envelope()->set_reverse_path("sender@example.org");
  entry.mutable_envelope()->add_recipients()->set_address("alice@example.test");
  entry.set_message(body);
  return entry;
}

std::unique_ptr<QueueClient> ClientFor(const Cluster& cluster) {
  QueueClientOptions options;
  options.endpoints = cluster.endpoints();
  options.call_deadline = absl::FromChrono(testing::Patience(std::chrono::seconds(30)));
  absl::StatusOr<std::unique_ptr<QueueClient>> client = QueueClient::Create(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

TEST(QueueClientTest, RefusesAnEmptyEndpointList) {
  EXPECT_EQ(QueueClient::Create(QueueClientOptions{}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(QueueClientTest, AppendsThroughTheLeaderWhicheverVoterItAsksFirst) {
  Cluster cluster(3, "client_append");
  ASSERT_NE(cluster.WaitForLeader(), nullptr);
  std::unique_ptr<QueueClient> client = ClientFor(cluster);
  for (uint64_t n = 1; n <= 20; ++n) {
    AppendMessages request;
    *request.add_entries() = Entry(n, "Subject: hi\r\n\r\nbody " + std::to_string(n) + "\r\n");
    absl::StatusOr<AppendResult> result = client->Append(request);
    ASSERT_TRUE(result.ok()) << result.status();
    ASSERT_EQ(result->outcomes_size(), 1);
    EXPECT_EQ(result->outcomes(0).code(), OK);
  }
}

TEST(QueueClientTest, AppendIsIdempotentByMessageId) {
  Cluster cluster(1, "client_idempotent");
  std::unique_ptr<QueueClient> client = ClientFor(cluster);
  AppendMessages request;
  *request.add_entries() = Entry(7, "body\r\n");
  ASSERT_TRUE(client->Append(request).ok());
  absl::StatusOr<AppendResult> again = client->Append(request);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->outcomes(0).code(), ALREADY_EXISTS);
}

TEST(QueueClientTest, LeaseCarriesTheMessageBytesAndCompleteRemovesTheEntry) {
  Cluster cluster(3, "client_lease");
  ASSERT_NE(cluster.WaitForLeader(), nullptr);
  std::unique_ptr<QueueClient> client = ClientFor(cluster);
  const std::string body = "Subject: lease\r\n\r\n" + std::string(5000, 'x') + "\r\n";
  AppendMessages append;
  *append.add_entries() = Entry(1, body);
  ASSERT_TRUE(client->Append(append).ok());

  LeaseEntries lease;
  lease.set_worker_id("worker-1");
  lease.set_max_entries(10);
  lease.set_lease_duration_ms(60000);
  absl::StatusOr<LeaseResult> leased = client->Lease(lease);
  ASSERT_TRUE(leased.ok()) << leased.status();
  ASSERT_EQ(leased->domains_size(), 1);
  ASSERT_EQ(leased->domains(0).entries_size(), 1);
  const LeasedEntry& entry = leased->domains(0).entries(0);
  EXPECT_EQ(entry.entry().message(), body);

  CompleteEntries complete;
  CompletionItem* item = complete.add_items();
  item->set_id(entry.entry().id());
  item->set_lease_token(entry.lease().token());
  item->mutable_delivered();
  absl::StatusOr<CompleteResult> completed = client->Complete(complete);
  ASSERT_TRUE(completed.ok()) << completed.status();
  EXPECT_EQ(completed->outcomes(0).code(), OK);
  ReadMessageRequest read;
  read.set_id(entry.entry().id());
  EXPECT_EQ(client->ReadMessage(read).status().code(), absl::StatusCode::kNotFound);
}

TEST(QueueClientTest, KeepsAppendingAcrossALeaderCrash) {
  Cluster cluster(3, "client_failover");
  Voter* leader = cluster.WaitForLeader();
  ASSERT_NE(leader, nullptr);
  std::unique_ptr<QueueClient> client = ClientFor(cluster);
  for (uint64_t n = 1; n <= 100; ++n) {
    if (n == 50) {
      leader->Stop();
    }
    AppendMessages request;
    *request.add_entries() = Entry(n, "body\r\n");
    absl::StatusOr<AppendResult> result = client->Append(request);
    ASSERT_TRUE(result.ok()) << "message " << n << ": " << result.status();
    // A retried append whose first attempt committed reports ALREADY_EXISTS: still stored.
    EXPECT_TRUE(result->outcomes(0).code() == OK || result->outcomes(0).code() == ALREADY_EXISTS);
  }
  // Every acknowledged message is readable from a surviving voter.
  for (uint64_t n = 1; n <= 100; ++n) {
    ReadMessageRequest read;
    read.set_id(Entry(n, "").id());
    EXPECT_TRUE(client->ReadMessage(read).ok()) << n;
  }
}

}  // namespace
}  // namespace backstop::queue
