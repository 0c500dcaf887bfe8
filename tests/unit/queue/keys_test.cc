#include "queue/keys.h"

#include <gtest/gtest.h>

#include "queue/message_id.h"

namespace backstop::queue::keys {
namespace {

std::string Id(uint64_t sequence) {
  return std::string(MessageId::Make(absl::FromUnixSeconds(0), 1, sequence).bytes());
}

TEST(KeysTest, QueueKeysSortByEnqueueTimeThenId) {
  EXPECT_LT(QueueKey("a.example", 5, Id(9)), QueueKey("a.example", 6, Id(1)));
  EXPECT_LT(QueueKey("a.example", 5, Id(1)), QueueKey("a.example", 5, Id(2)));
  EXPECT_LT(QueueKey("a.example", -1, Id(1)), QueueKey("a.example", 0, Id(1)));
}

TEST(KeysTest, DomainPrefixDoesNotMatchALongerDomain) {
  const std::string key = QueueKey("example.com.au", 1, Id(1));
  EXPECT_FALSE(key.starts_with(QueuePrefix("example.com")));
  EXPECT_TRUE(key.starts_with(QueuePrefix("example.com.au")));
}

TEST(KeysTest, QueueKeyParsesBack) {
  const std::optional<IndexKey> parsed = ParseQueueKey(QueueKey("b.example", 1234567, Id(3)));
  ASSERT_TRUE(parsed.has_value());
  EXPECT_EQ(parsed->domain, "b.example");
  EXPECT_EQ(parsed->time_ms, 1234567);
  EXPECT_EQ(parsed->id, Id(3));
}

TEST(KeysTest, ReadyKeysOfOneKindShareAPrefixPerDomain) {
  const std::string key = ReadyKey(ReadyKind::kBounce, "c.example", 9, Id(4));
  EXPECT_TRUE(key.starts_with(ReadyPrefix(ReadyKind::kBounce, "c.example")));
  EXPECT_FALSE(key.starts_with(ReadyPrefix(ReadyKind::kDeliver)));
  const std::optional<IndexKey> parsed = ParseReadyKey(ReadyKind::kBounce, key);
  ASSERT_TRUE(parsed.has_value());
  EXPECT_EQ(parsed->domain, "c.example");
  EXPECT_EQ(parsed->id, Id(4));
  EXPECT_FALSE(ParseReadyKey(ReadyKind::kDeliver, key).has_value());
}

TEST(KeysTest, LeaseUpperBoundIncludesExactlyTheLeasesExpiredByThen) {
  const std::string bound = LeaseUpperBound(100);
  EXPECT_LT(LeaseKey(100, Id(~uint64_t{0})), bound);
  EXPECT_GT(LeaseKey(101, Id(0)), bound);
  const std::optional<IndexKey> parsed = ParseLeaseKey(LeaseKey(100, Id(5)));
  ASSERT_TRUE(parsed.has_value());
  EXPECT_EQ(parsed->time_ms, 100);
  EXPECT_EQ(parsed->id, Id(5));
}

TEST(KeysTest, GreylistExpiryKeysSortByTimeAndPointAtTheirRecord) {
  const std::string record = GreylistKey("192.0.2.0/24", "a@b.example", "c@d.example");
  const std::string expiry = GreylistExpiryKey(100, record);
  EXPECT_LT(expiry, GreylistExpiryUpperBound(100));
  EXPECT_GT(expiry, GreylistExpiryUpperBound(99));
  EXPECT_TRUE(expiry.starts_with(GreylistExpiryPrefix()));
  EXPECT_EQ(ParseGreylistExpiryKey(expiry), record);
  EXPECT_FALSE(ParseGreylistExpiryKey(record).has_value());
}

TEST(KeysTest, PrefixEndIsPastEveryKeyWithThePrefix) {
  EXPECT_EQ(PrefixEnd("ab"), "ac");
  EXPECT_EQ(PrefixEnd(std::string("a\xff", 2)), "b");
  EXPECT_GT(PrefixEnd("q"), QueueKey("zzz", 1, Id(1)));
}

TEST(KeysTest, Fixed64RoundTripsAndSortsNumerically) {
  EXPECT_EQ(DecodeFixed64(EncodeFixed64(0x0102030405060708)), 0x0102030405060708u);
  EXPECT_LT(EncodeFixed64(255), EncodeFixed64(256));
  EXPECT_FALSE(DecodeFixed64("abc").has_value());
}

}  // namespace
}  // namespace backstop::queue::keys
