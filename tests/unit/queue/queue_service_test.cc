#include "queue/queue_service.h"

#include <string>

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace backstop::queue
