#pragma once

// Conversions between the core's structs and their wire form in proto/raft.proto. Stateless;
// any thread.

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "proto/raft.pb.h"
#include "queue/raft/types.h"

namespace backstop::raft {

wire::Message ToWire(const Message& message);
// Rejects unknown enum values; everything else in a proto3 message is valid by construction.
absl::StatusOr<Message> FromWire(const wire::Message& message);

wire::HardState ToWire(const HardState& hard_state);
HardState FromWire(const wire::HardState& hard_state);
wire::Entry ToWire(const Entry& entry);
absl::StatusOr<Entry> FromWire(const wire::Entry& entry);
wire::Snapshot ToWire(const Snapshot& snapshot);
Snapshot FromWire(const wire::Snapshot& snapshot);

// The data of a kConfChange entry.
std::string EncodeConfChange(const ConfChange& change);
absl::StatusOr<ConfChange> DecodeConfChange(std::string_view data);

}  // namespace backstop::raft
