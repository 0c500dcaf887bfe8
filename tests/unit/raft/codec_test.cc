#include "queue/raft/codec.h"

#include "gtest/gtest.h"

namespace backstop::raft {
namespace {

TEST(CodecTest, MessageRoundTripsThroughWire) {
  Message m;
  m.type = MessageType::kSnapshot;
  m.from = NodeId(1);
  m.to = NodeId(2);
  m.term = Term(3);
  m.index = LogIndex(4);
  m.log_term = Term(2);
  m.commit = LogIndex(4);
  m.reject = true;
  m.reject_hint = LogIndex(1);
  m.context = "ctx";
  Entry e;
  e.index = LogIndex(5);
  e.term = Term(3);
  e.type = EntryType::kConfChange;
  e.time = absl::FromUnixMicros(123456789);
  e.data = "data";
  m.entries.push_back(e);
  Snapshot snap;
  snap.meta.index = LogIndex(4);
  snap.meta.term = Term(2);
  snap.meta.time = absl::FromUnixMicros(99);
  snap.meta.conf_state = ConfState{{NodeId(1), NodeId(2)}, {NodeId(3)}};
  snap.data = "image";
  m.snapshot = snap;

  wire::Message w;
  ASSERT_TRUE(w.ParseFromString(ToWire(m).SerializeAsString()));
  absl::StatusOr<Message> back = FromWire(w);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, m);
}

TEST(CodecTest, RejectsUnknownMessageType) {
  wire::Message w;
  w.set_type(static_cast<wire::MessageType>(77));
  EXPECT_FALSE(FromWire(w).ok());
}

TEST(CodecTest, ConfChangeRoundTrips) {
  const ConfChange change{ConfChangeType::kPromoteVoter, NodeId(7)};
  absl::StatusOr<ConfChange> back = DecodeConfChange(EncodeConfChange(change));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, change);
}

TEST(CodecTest, HardStateRoundTrips) {
  const HardState hs{Term(4), NodeId(2), LogIndex(9)};
  EXPECT_EQ(FromWire(ToWire(hs)), hs);
}

}  // namespace
}  // namespace backstop::raft
