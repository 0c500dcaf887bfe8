#pragma once

// Value types of the Raft core: strong ids, log entries, hard state, snapshots, configuration
// and the messages nodes exchange. Plain data, no behaviour beyond comparisons; the wire form is
// in proto/raft.proto (see codec.h).

#include <compare>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"

namespace backstop::raft {

// A 64-bit counter that cannot be mixed with another kind of counter (a term is not an index).
template <typename Tag>
class Ordinal {
 public:
  constexpr Ordinal() = default;
  constexpr explicit Ordinal(uint64_t value) : value_(value) {}
  constexpr uint64_t value() const { return value_; }
  constexpr auto operator<=>(const Ordinal&) const = default;
  constexpr Ordinal operator+(uint64_t n) const { return Ordinal(value_ + n); }
  // Saturates at zero: "the entry before index 0" is index 0, never a wrapped huge index.
  constexpr Ordinal operator-(uint64_t n) const { return Ordinal(value_ > n ? value_ - n : 0); }
  // Number of steps from `other` up to this one (0 when other is not below).
  constexpr uint64_t Since(Ordinal other) const {
    return value_ > other.value_ ? value_ - other.value_ : 0;
  }

 private:
  uint64_t value_ = 0;
};

struct TermTag {};
struct LogIndexTag {};
using Term = Ordinal<TermTag>;
using LogIndex = Ordinal<LogIndexTag>;

// A member id. 0 means "nobody" (no vote, no known leader).
class NodeId {
 public:
  constexpr NodeId() = default;
  constexpr explicit NodeId(uint64_t value) : value_(value) {}
  constexpr uint64_t value() const { return value_; }
  constexpr bool IsNone() const { return value_ == 0; }
  constexpr auto operator<=>(const NodeId&) const = default;

 private:
  uint64_t value_ = 0;
};
inline constexpr NodeId kNoNode{};

enum class EntryType : uint8_t { kNormal, kConfChange };

// One log entry. `time` is the cluster time stamped by the leader that created the entry: it
// never decreases along the log, so applying nodes share a deterministic "now".
struct Entry {
  Term term;
  LogIndex index;
  EntryType type = EntryType::kNormal;
  absl::Time time = absl::UnixEpoch();
  std::string data;

  // Approximate size used for flow control (in-flight bytes, message and Ready limits).
  uint64_t ByteSize() const { return data.size() + 32; }
  bool operator==(const Entry&) const = default;
};

// What must be durable before a node may answer: its term, its vote and its commit index.
struct HardState {
  Term term;
  NodeId vote;
  LogIndex commit;
  bool operator==(const HardState&) const = default;
};

// Membership. Both lists are sorted and disjoint.
struct ConfState {
  std::vector<NodeId> voters;
  std::vector<NodeId> learners;
  bool operator==(const ConfState&) const = default;
};

struct SnapshotMeta {
  LogIndex index;
  Term term;
  absl::Time time = absl::UnixEpoch();  // stamp of the entry at `index`
  ConfState conf_state;
  bool operator==(const SnapshotMeta&) const = default;
};

struct Snapshot {
  SnapshotMeta meta;
  std::string data;  // the application's state machine image, opaque to Raft
  bool operator==(const Snapshot&) const = default;
};

enum class ConfChangeType : uint8_t { kAddLearner, kPromoteVoter, kRemove };

// One membership step. Changes are applied one at a time when their entry is applied.
struct ConfChange {
  ConfChange() = default;
  ConfChange(ConfChangeType change_type, NodeId change_node, std::string change_context = {})
      : type(change_type), node(change_node), context(std::move(change_context)) {}

  ConfChangeType type = ConfChangeType::kAddLearner;
  NodeId node;
  // Opaque to Raft, applied with the change on every member (the queue puts the new member's
  // gRPC address here, so that everyone learns where it is).
  std::string context;
  bool operator==(const ConfChange&) const = default;
};

enum class MessageType : uint8_t {
  kAppend,
  kAppendResponse,
  kHeartbeat,
  kHeartbeatResponse,
  kVote,
  kVoteResponse,
  kPreVote,
  kPreVoteResponse,
  kSnapshot,
  kTimeoutNow,
};

// The one message shape used for every RPC, as in etcd's raftpb.Message. Fields a type does not
// use stay default.
struct Message {
  MessageType type = MessageType::kAppend;
  NodeId from;
  NodeId to;
  Term term;
  LogIndex index;  // append: index before `entries`; response: last matched / rejected index
  Term log_term;   // append: term at `index`; vote: candidate's last term; reject: hint's term
  std::vector<Entry> entries;
  LogIndex commit;
  bool reject = false;
  LogIndex reject_hint;
  std::string context;  // ReadIndex round on heartbeats; kTransferContext on votes
  std::optional<Snapshot> snapshot;
  bool operator==(const Message&) const = default;
};

// Vote requests carrying this context come from a leadership transfer and bypass the leader
// lease (CheckQuorum) that otherwise makes followers ignore them.
inline constexpr char kTransferContext[] = "transfer";

// A linearizable read point: once the application has applied `index`, reads for `context`
// may be served from its state machine.
struct ReadState {
  LogIndex index;
  std::string context;
  bool operator==(const ReadState&) const = default;
};

}  // namespace backstop::raft
