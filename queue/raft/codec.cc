#include "queue/raft/codec.h"

#include <utility>

#include "common/status.h"

namespace backstop::raft {

namespace {

// Message types map onto the wire enum by value.
static_assert(static_cast<int>(MessageType::kAppend) == wire::MSG_APPEND);
static_assert(static_cast<int>(MessageType::kAppendResponse) == wire::MSG_APPEND_RESPONSE);
static_assert(static_cast<int>(MessageType::kHeartbeat) == wire::MSG_HEARTBEAT);
static_assert(static_cast<int>(MessageType::kHeartbeatResponse) == wire::MSG_HEARTBEAT_RESPONSE);
static_assert(static_cast<int>(MessageType::kVote) == wire::MSG_VOTE);
static_assert(static_cast<int>(MessageType::kVoteResponse) == wire::MSG_VOTE_RESPONSE);
static_assert(static_cast<int>(MessageType::kPreVote) == wire::MSG_PRE_VOTE);
static_assert(static_cast<int>(MessageType::kPreVoteResponse) == wire::MSG_PRE_VOTE_RESPONSE);
static_assert(static_cast<int>(MessageType::kSnapshot) == wire::MSG_SNAPSHOT);
static_assert(static_cast<int>(MessageType::kTimeoutNow) == wire::MSG_TIMEOUT_NOW);

int64_t ToMicros(absl::Time t) {
  return absl::ToUnixMicros(t);
}
absl::Time FromMicros(int64_t micros) {
  return absl::FromUnixMicros(micros);
}

wire::ConfState ToWire(const ConfState& conf_state) {
  wire::ConfState out;
  for (NodeId id : conf_state.voters) {
    out.add_voters(id.value());
  }
  for (NodeId id : conf_state.learners) {
    out.add_learners(id.value());
  }
  return out;
}

ConfState FromWire(const wire::ConfState& conf_state) {
  ConfState out;
  for (uint64_t id : conf_state.voters()) {
    out.voters.emplace_back(id);
  }
  for (uint64_t id : conf_state.learners()) {
    out.learners.emplace_back(id);
  }
  return out;
}

}  // namespace

wire::HardState ToWire(const HardState& hard_state) {
  wire::HardState out;
  out.set_term(hard_state.term.value());
  out.set_vote(hard_state.vote.value());
  out.set_commit(hard_state.commit.value());
  return out;
}

HardState FromWire(const wire::HardState& hard_state) {
  return HardState{Term(hard_state.term()), NodeId(hard_state.vote()),
                   LogIndex(hard_state.commit())};
}

wire::Entry ToWire(const Entry& entry) {
  wire::Entry out;
  out.set_term(entry.term.value());
  out.set_index(entry.index.value());
  out.set_type(entry.type == EntryType::kConfChange ? wire::ENTRY_CONF_CHANGE : wire::ENTRY_NORMAL);
  out.set_time_unix_micros(ToMicros(entry.time));
  out.set_data(entry.data);
  return out;
}

absl::StatusOr<Entry> FromWire(const wire::Entry& entry) {
  Entry out;
  out.term = Term(entry.term());
  out.index = LogIndex(entry.index());
  switch (entry.type()) {
    case wire::ENTRY_NORMAL:
      out.type = EntryType::kNormal;
      break;
    case wire::ENTRY_CONF_CHANGE:
      out.type = EntryType::kConfChange;
      break;
    default:
      return absl::InvalidArgumentError("raft entry: unknown type");
  }
  out.time = FromMicros(entry.time_unix_micros());
  out.data = entry.data();
  return out;
}

wire::Snapshot ToWire(const Snapshot& snapshot) {
  wire::Snapshot out;
  wire::SnapshotMeta* meta = out.mutable_meta();
  meta->set_index(snapshot.meta.index.value());
  meta->set_term(snapshot.meta.term.value());
  meta->set_time_unix_micros(ToMicros(snapshot.meta.time));
  *meta->mutable_conf_state() = ToWire(snapshot.meta.conf_state);
  out.set_data(snapshot.data);
  return out;
}

Snapshot FromWire(const wire::Snapshot& snapshot) {
  Snapshot out;
  out.meta.index = LogIndex(snapshot.meta().index());
  out.meta.term = Term(snapshot.meta().term());
  out.meta.time = FromMicros(snapshot.meta().time_unix_micros());
  out.meta.conf_state = FromWire(snapshot.meta().conf_state());
  out.data = snapshot.data();
  return out;
}

wire::Message ToWire(const Message& message) {
  wire::Message out;
  out.set_type(static_cast<wire::MessageType>(message.type));
  out.set_from(message.from.value());
  out.set_to(message.to.value());
  out.set_term(message.term.value());
  out.set_index(message.index.value());
  out.set_log_term(message.log_term.value());
  for (const Entry& e : message.entries) {
    *out.add_entries() = ToWire(e);
  }
  out.set_commit(message.commit.value());
  out.set_reject(message.reject);
  out.set_reject_hint(message.reject_hint.value());
  out.set_context(message.context);
  if (message.snapshot.has_value()) {
    *out.mutable_snapshot() = ToWire(*message.snapshot);
  }
  return out;
}

absl::StatusOr<Message> FromWire(const wire::Message& message) {
  if (message.type() < wire::MSG_APPEND || message.type() > wire::MSG_TIMEOUT_NOW) {
    return absl::InvalidArgumentError("raft message: unknown type");
  }
  Message out;
  out.type = static_cast<MessageType>(message.type());
  out.from = NodeId(message.from());
  out.to = NodeId(message.to());
  out.term = Term(message.term());
  out.index = LogIndex(message.index());
  out.log_term = Term(message.log_term());
  out.entries.reserve(message.entries_size());
  for (const wire::Entry& e : message.entries()) {
    ASSIGN_OR_RETURN(Entry entry, FromWire(e));
    out.entries.push_back(std::move(entry));
  }
  out.commit = LogIndex(message.commit());
  out.reject = message.reject();
  out.reject_hint = LogIndex(message.reject_hint());
  out.context = message.context();
  if (message.has_snapshot()) {
    out.snapshot = FromWire(message.snapshot());
  }
  return out;
}

std::string EncodeConfChange(const ConfChange& change) {
  wire::ConfChange out;
  switch (change.type) {
    case ConfChangeType::kAddLearner:
      out.set_type(wire::CONF_CHANGE_ADD_LEARNER);
      break;
    case ConfChangeType::kPromoteVoter:
      out.set_type(wire::CONF_CHANGE_PROMOTE_VOTER);
      break;
    case ConfChangeType::kRemove:
      out.set_type(wire::CONF_CHANGE_REMOVE);
      break;
  }
  out.set_node_id(change.node.value());
  out.set_context(change.context);
  return out.SerializeAsString();
}

absl::StatusOr<ConfChange> DecodeConfChange(std::string_view data) {
  wire::ConfChange in;
  if (!in.ParseFromArray(data.data(), static_cast<int>(data.size()))) {
    return absl::InvalidArgumentError("raft conf change: unparsable");
  }
  ConfChange out;
  out.node = NodeId(in.node_id());
  out.context = in.context();
  switch (in.type()) {
    case wire::CONF_CHANGE_ADD_LEARNER:
      out.type = ConfChangeType::kAddLearner;
      break;
    case wire::CONF_CHANGE_PROMOTE_VOTER:
      out.type = ConfChangeType::kPromoteVoter;
      break;
    case wire::CONF_CHANGE_REMOVE:
      out.type = ConfChangeType::kRemove;
      break;
    default:
      return absl::InvalidArgumentError("raft conf change: unknown type");
  }
  return out;
}

}  // namespace backstop::raft
