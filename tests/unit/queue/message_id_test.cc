#include "queue/message_id.h"

#include <gtest/gtest.h>

namespace backstop::queue {
namespace {

const absl::Time kTime = absl::FromUnixMillis(1767225600123);

TEST(MessageIdTest, LaterTimeSortsLaterWhateverNodeAndSequence) {
  const MessageId earlier = MessageId::Make(kTime, 65535, ~uint64_t{0});
  const MessageId later = MessageId::Make(kTime + absl::Milliseconds(1), 1, 0);
  EXPECT_LT(earlier, later);
  EXPECT_LT(earlier.bytes(), later.bytes());
}

TEST(MessageIdTest, SequenceOrdersIdsOfOneMillisecond) {
  EXPECT_LT(MessageId::Make(kTime, 7, 1), MessageId::Make(kTime, 7, 2));
  EXPECT_NE(MessageId::Make(kTime, 7, 1), MessageId::Make(kTime, 8, 1));
}

TEST(MessageIdTest, CarriesItsTimeToTheMillisecond) {
  EXPECT_EQ(MessageId::Make(kTime, 1, 1).time(), kTime);
}

TEST(MessageIdTest, StringRoundTrips) {
  const MessageId id = MessageId::Make(kTime, 0x1234, 0xabcdef);
  const std::string text = id.ToString();
  EXPECT_EQ(text.size(), 32u);
  EXPECT_EQ(text.substr(12), "12340000000000abcdef");
  absl::StatusOr<MessageId> parsed = MessageId::FromString(text);
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(*parsed, id);
}

TEST(MessageIdTest, RefusesMalformedText) {
  EXPECT_FALSE(MessageId::FromString("1234").ok());
  EXPECT_FALSE(MessageId::FromString(std::string(32, 'g')).ok());
}

TEST(MessageIdTest, BytesMustBeSixteen) {
  EXPECT_FALSE(MessageId::FromBytes("short").ok());
  const MessageId id = MessageId::Make(kTime, 1, 2);
  absl::StatusOr<MessageId> copy = MessageId::FromBytes(id.bytes());
  ASSERT_TRUE(copy.ok());
  EXPECT_EQ(*copy, id);
}

}  // namespace
}  // namespace backstop::queue
