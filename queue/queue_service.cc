#include "queue/queue_service.h"

#include <string>
#include <utility>

#include "queue/message_id.h"

namespace backstop::queue {

std::string EncodeAppendCommand(const AppendMessages& append) {
  // Command is a oneof whose `append` is field 1: on the wire, the tag (field 1, length-
  // delimited), the length as a varint, then the AppendMessages bytes.
  constexpr uint8_t kAppendTag = (1 << 3) | 2;
  const size_t size = append.ByteSizeLong();
  std::string encoded;
  encoded.reserve(1 + 10 + size);
  encoded.push_back(static_cast<char>(kAppendTag));
  for (uint64_t rest = size;; rest >>= 7) {
    if (rest < 0x80) {
      encoded.push_back(static_cast<char>(rest));
      break;
    }
    encoded.push_back(static_cast<char>((rest & 0x7F) | 0x80));
  }
  append.AppendToString(&encoded);
  return encoded;
}

AppendResult StorageFullResult(const AppendMessages& request) {
  AppendResult result;
  for (const QueueEntry& entry : request.entries()) {
    AppendOutcome* outcome = result.add_outcomes();
    outcome->set_id(entry.id());
    outcome->set_code(OVER_LIMIT);
    outcome->set_limit(LIMIT_QUEUE_STORAGE);
  }
  return result;
}

QueueServiceImpl::QueueServiceImpl(QueueNode* node, AddressBook address_book,
                                   StorageReserve* reserve)
    : node_(node), address_book_(std::move(address_book)), reserve_(reserve) {}

grpc::ServerUnaryReactor* QueueServiceImpl::ProposeAndReply(
    grpc::CallbackServerContext* context, Command command,
    std::function<void(CommandResult&)> fill) {
  return queue::ProposeAndReply(context, node_, &address_book_, std::move(command),
                                std::move(fill));
}

grpc::ServerUnaryReactor* QueueServiceImpl::Append(grpc::CallbackServerContext* context,
                                                   const AppendMessages* request,
                                                   AppendResult* response) {
  // Only the leader's disk decides (the reserve is checked first: it is the cheaper question).
  // Refused before proposing, so nothing of the refused messages is written anywhere.
  if (reserve_ != nullptr && reserve_->Low() && node_->status().is_leader) {
    *response = StorageFullResult(*request);
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  // Encoded straight from the request: copying it into a Command first would copy every
  // message body once more on the ingest hot path.
  return ProposeEncodedAndReply(
      context, node_, &address_book_, EncodeAppendCommand(*request),
      [response](CommandResult& result) { response->Swap(result.mutable_append()); });
}

grpc::ServerUnaryReactor* QueueServiceImpl::Lease(grpc::CallbackServerContext* context,
                                                  const LeaseEntries* request,
                                                  LeaseResult* response) {
  Command command;
  *command.mutable_lease() = *request;
  return ProposeAndReply(context, std::move(command), [this, response](CommandResult& result) {
    response->Swap(result.mutable_lease());
    // The state machine leaves message bytes out of its result (followers would only discard
    // them); the leader that granted the lease reads them from its own store. This runs on the
    // Raft thread, so a large lease delays the next Ready by its reads (from the blob files,
    // usually in the page cache); moving them off that thread is a delivery-throughput item.
    for (LeasedDomain& domain : *response->mutable_domains()) {
      for (LeasedEntry& leased : *domain.mutable_entries()) {
        absl::StatusOr<MessageId> id = MessageId::FromBytes(leased.entry().id());
        if (!id.ok()) {
          continue;
        }
        absl::StatusOr<std::string> bytes = node_->state_machine().ReadMessage(*id);
        if (bytes.ok()) {
          leased.mutable_entry()->set_message(*std::move(bytes));
        }
      }
    }
  });
}

grpc::ServerUnaryReactor* QueueServiceImpl::Complete(grpc::CallbackServerContext* context,
                                                     const CompleteEntries* request,
                                                     CompleteResult* response) {
  Command command;
  *command.mutable_complete() = *request;
  return ProposeAndReply(context, std::move(command), [response](CommandResult& result) {
    response->Swap(result.mutable_complete());
  });
}

grpc::ServerUnaryReactor* QueueServiceImpl::Extend(grpc::CallbackServerContext* context,
                                                   const ExtendLeases* request,
                                                   ExtendResult* response) {
  Command command;
  *command.mutable_extend() = *request;
  return ProposeAndReply(context, std::move(command), [response](CommandResult& result) {
    response->Swap(result.mutable_extend());
  });
}

grpc::ServerUnaryReactor* QueueServiceImpl::CheckGreylist(grpc::CallbackServerContext* context,
                                                          const GreylistCheck* request,
                                                          GreylistResult* response) {
  Command command;
  *command.mutable_greylist() = *request;
  return ProposeAndReply(context, std::move(command), [response](CommandResult& result) {
    response->Swap(result.mutable_greylist());
  });
}

grpc::ServerUnaryReactor* QueueServiceImpl::Flush(grpc::CallbackServerContext* context,
                                                  const FlushDomain* request,
                                                  SelectionResult* response) {
  Command command;
  *command.mutable_flush() = *request;
  return ProposeAndReply(context, std::move(command), FillSelection(response));
}

grpc::ServerUnaryReactor* QueueServiceImpl::ReadMessage(grpc::CallbackServerContext* context,
                                                        const ReadMessageRequest* request,
                                                        ReadMessageResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<MessageId> id = MessageId::FromBytes(request->id());
  if (!id.ok()) {
    reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "id must be 16 bytes"));
    return reactor;
  }
  absl::StatusOr<std::string> bytes = node_->state_machine().ReadMessage(*id);
  if (!bytes.ok()) {
    const auto code =
        absl::IsNotFound(bytes.status()) ? grpc::StatusCode::NOT_FOUND : grpc::StatusCode::INTERNAL;
    reactor->Finish(grpc::Status(code, std::string(bytes.status().message())));
    return reactor;
  }
  response->set_message(*std::move(bytes));
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace backstop::queue
