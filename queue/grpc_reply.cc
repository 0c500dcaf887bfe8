#include "queue/grpc_reply.h"

#include <string>
#include <utility>

namespace backstop::queue {

grpc::Status NodeErrorToGrpc(grpc::CallbackServerContext* context, const QueueNode& node,
                             const AddressBook& address_book, const absl::Status& status) {
  const std::string message(status.message());
  switch (status.code()) {
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kUnavailable: {
      const raft::NodeId leader = node.status().leader;
      if (!leader.IsNone()) {
        context->AddTrailingMetadata(kLeaderIdKey, std::to_string(leader.value()));
        if (const std::string address = address_book(leader); !address.empty()) {
          context->AddTrailingMetadata(kLeaderAddressKey, address);
        }
      }
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, message);
    }
    case absl::StatusCode::kInvalidArgument:
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message);
    case absl::StatusCode::kNotFound:
      return grpc::Status(grpc::StatusCode::NOT_FOUND, message);
    case absl::StatusCode::kAlreadyExists:
      return grpc::Status(grpc::StatusCode::ALREADY_EXISTS, message);
    case absl::StatusCode::kDeadlineExceeded:
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, message);
    default:
      return grpc::Status(grpc::StatusCode::INTERNAL, message);
  }
}

grpc::ServerUnaryReactor* ProposeAndReply(grpc::CallbackServerContext* context, QueueNode* node,
                                          const AddressBook* address_book, Command command,
                                          std::function<void(CommandResult&)> fill) {
  return ProposeEncodedAndReply(context, node, address_book, command.SerializeAsString(),
                                std::move(fill));
}

grpc::ServerUnaryReactor* ProposeEncodedAndReply(grpc::CallbackServerContext* context,
                                                 QueueNode* node, const AddressBook* address_book,
                                                 std::string encoded_command,
                                                 std::function<void(CommandResult&)> fill) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  node->ProposeEncoded(
      std::move(encoded_command), [context, node, address_book, reactor,
                                   fill = std::move(fill)](absl::StatusOr<CommandResult> result) {
        if (!result.ok()) {
          reactor->Finish(NodeErrorToGrpc(context, *node, *address_book, result.status()));
          return;
        }
        switch (result->code()) {
          case OK:
            fill(*result);
            reactor->Finish(grpc::Status::OK);
            return;
          case INVALID_ARGUMENT:
            reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, result->error()));
            return;
          case NOT_FOUND:
            reactor->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND, result->error()));
            return;
          case ALREADY_EXISTS:
            reactor->Finish(grpc::Status(grpc::StatusCode::ALREADY_EXISTS, result->error()));
            return;
          default:
            reactor->Finish(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, result->error()));
            return;
        }
      });
  return reactor;
}

std::function<void(CommandResult&)> FillSelection(SelectionResult* response) {
  return [response](CommandResult& result) { response->Swap(result.mutable_selection()); };
}

std::function<void(CommandResult&)> FillDomain(DomainResult* response) {
  return [response](CommandResult& result) { response->Swap(result.mutable_domain()); };
}

}  // namespace backstop::queue
