#pragma once

// The trailing metadata with which a queue voter that does not lead names the leader, so that
// clients (queue/queue_client.h) follow it without a lookup.

namespace backstop::queue {

inline constexpr char kLeaderIdKey[] = "backstop-leader-id";
inline constexpr char kLeaderAddressKey[] = "backstop-leader";

}  // namespace backstop::queue
