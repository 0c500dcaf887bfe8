#pragma once

// How the queue's gRPC services (QueueService, AdminService) answer calls that go through the
// Raft log: proposing a command on the local QueueNode and mapping the outcome to a gRPC status,
// naming the leader in trailing metadata when this node cannot serve the call.

#include <functional>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "proto/queue.pb.h"
#include "queue/leader_metadata.h"
#include "queue/queue_node.h"

namespace backstop::queue {

// The gRPC address of a voter, "" when unknown.
using AddressBook = std::function<std::string(raft::NodeId)>;

// The gRPC status for a node-level failure. FailedPrecondition from the node means "not the
// leader" and Unavailable that leadership changed under the call or the node is stopping: both
// become UNAVAILABLE with the known leader in the trailing metadata, so that the client goes
// there and retries. Any thread.
grpc::Status NodeErrorToGrpc(grpc::CallbackServerContext* context, const QueueNode& node,
                             const AddressBook& address_book, const absl::Status& status);

// Proposes `command` on `node`; once it is applied, `fill` moves the command's result into the
// response and the call finishes OK, or with the status matching the command's refusal code.
// `node` and `address_book` must outlive the call.
grpc::ServerUnaryReactor* ProposeAndReply(grpc::CallbackServerContext* context, QueueNode* node,
                                          const AddressBook* address_book, Command command,
                                          std::function<void(CommandResult&)> fill);
// The same for a command already in its wire form.
grpc::ServerUnaryReactor* ProposeEncodedAndReply(grpc::CallbackServerContext* context,
                                                 QueueNode* node, const AddressBook* address_book,
                                                 std::string encoded_command,
                                                 std::function<void(CommandResult&)> fill);

// Fills for ProposeAndReply: move the command's result of that kind into the response.
std::function<void(CommandResult&)> FillSelection(SelectionResult* response);
std::function<void(CommandResult&)> FillDomain(DomainResult* response);

}  // namespace backstop::queue
