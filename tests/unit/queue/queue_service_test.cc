#include "queue/queue_service.h"

#include <string>

#include <gtest/gtest.h>

#include "queue/message_id.h"
#include "queue/queue_client.h"
#include "tests/unit/queue/test_cluster.h"

namespace backstop::queue {
namespace {

AppendMessages Request(size_t entries, size_t body_size) {
  AppendMessages request;
  for (size_t i = 0; i < entries; ++i) {
    QueueEntry* entry = request.add_entries();
    entry->set_id(std::string(16, static_cast<char>('a' + i)));
    entry->set_domain("example.test");
    entry->set_message(std::string(body_size, 'x'));
  }
  return request;
}

// The hand-built encoding must be exactly what protobuf writes for Command{append}, for lengths
// whose varint takes one, two and three bytes.
TEST(EncodeAppendCommandTest, MatchesProtobufsEncodingOfTheCommand) {
  for (const auto& [entries, body] :
       {std::pair<size_t, size_t>{0, 0}, {1, 10}, {1, 200}, {3, 50'000}}) {
    const AppendMessages request = Request(entries, body);
    Command command;
    *command.mutable_append() = request;
    EXPECT_EQ(EncodeAppendCommand(request), command.SerializeAsString())
        << entries << " entries of " << body << " bytes";
  }
}

TEST(EncodeAppendCommandTest, ParsesBackToTheSameAppend) {
  const AppendMessages request = Request(2, 1000);
  Command parsed;
  ASSERT_TRUE(parsed.ParseFromString(EncodeAppendCommand(request)));
  ASSERT_TRUE(parsed.has_append());
  EXPECT_EQ(parsed.append().SerializeAsString(), request.SerializeAsString());
}

TEST(QueueServiceTest, LeaderRefusesAppendsWhileItsFreeSpaceIsBelowTheReserve) {
  std::atomic<uint64_t> free_bytes{0};
  StorageReserveOptions reserve_options;
  reserve_options.min_free_bytes = 1'000;
  reserve_options.probe_interval = absl::ZeroDuration();
  reserve_options.probe = [&free_bytes]() -> absl::StatusOr<uint64_t> { return free_bytes.load(); };
  StorageReserve reserve(std::move(reserve_options));
  testing::Voter voter(1, testing::FreshTempDir("service_reserve"));
  voter.set_reserve(&reserve);
  voter.Start({{raft::NodeId(1), voter.address()}});
  ASSERT_TRUE(testing::Eventually([&] { return voter.node()->status().is_leader; }));
  QueueClientOptions client_options;
  client_options.endpoints = {voter.address()};
  absl::StatusOr<std::unique_ptr<QueueClient>> client = QueueClient::Create(client_options);
  ASSERT_TRUE(client.ok()) << client.status();

  AppendMessages request = Request(2, 100);
  for (int i = 0; i < request.entries_size(); ++i) {
    request.mutable_entries(i)->set_id(
        std::string(MessageId::Make(absl::FromUnixSeconds(1767225600), 1, i + 1).bytes()));
  }
  absl::StatusOr<AppendResult> refused = (*client)->Append(request);
  ASSERT_TRUE(refused.ok()) << refused.status();
  ASSERT_EQ(refused->outcomes_size(), 2);
  for (const AppendOutcome& outcome : refused->outcomes()) {
    EXPECT_EQ(outcome.code(), OVER_LIMIT);
    EXPECT_EQ(outcome.limit(), LIMIT_QUEUE_STORAGE);
  }
  // Refused before proposing: nothing was queued.
  absl::StatusOr<QueueDepth> depth = voter.node()->Depth();
  ASSERT_TRUE(depth.ok());
  EXPECT_EQ(depth->messages, 0u);

  free_bytes = 1'000;
  absl::StatusOr<AppendResult> stored = (*client)->Append(request);
  ASSERT_TRUE(stored.ok()) << stored.status();
  ASSERT_EQ(stored->outcomes_size(), 2);
  EXPECT_EQ(stored->outcomes(0).code(), OK);
  EXPECT_EQ(stored->outcomes(1).code(), OK);
  depth = voter.node()->Depth();
  ASSERT_TRUE(depth.ok());
  EXPECT_EQ(depth->messages, 2u);
}

}  // namespace
}  // namespace backstop::queue
