#pragma once

// The queue's data-path gRPC service (proto QueueService) for ingest and delivery, served by
// every voter from its QueueNode. Mutations are proposed to the Raft log and answered once
// applied on the leader in the same term (DESIGN §3.1); a follower answers UNAVAILABLE with the
// leader's id and address in the trailing metadata (kLeaderIdKey, kLeaderAddressKey), which the
// client library follows.
//
// Uses gRPC's callback API: no thread is held while a proposal waits for its commit, so one
// fsync can acknowledge the appends of many concurrent SMTP sessions.

#include <functional>

#include "proto/queue.grpc.pb.h"
#include "queue/grpc_reply.h"
#include "queue/queue_node.h"
#include "queue/storage_reserve.h"

namespace backstop::queue {

// The wire form of Command{append}, built from the request without copying it into a Command.
std::string EncodeAppendCommand(const AppendMessages& append);

// Every entry of `request` refused as OVER_LIMIT with LIMIT_QUEUE_STORAGE.
AppendResult StorageFullResult(const AppendMessages& request);

// Thread-safe (gRPC calls the handlers on its own threads); borrows the node and the reserve,
// which must outlive the server that serves this service.
class QueueServiceImpl final : public QueueService::CallbackService {
 public:
  // `reserve` null = no free-space reserve. While it is low, the leader answers every Append
  // with StorageFullResult instead of proposing it; a follower still redirects to the leader.
  QueueServiceImpl(QueueNode* node, AddressBook address_book, StorageReserve* reserve = nullptr);

  grpc::ServerUnaryReactor* Append(grpc::CallbackServerContext* context,
                                   const AppendMessages* request, AppendResult* response) override;
  grpc::ServerUnaryReactor* Lease(grpc::CallbackServerContext* context, const LeaseEntries* request,
                                  LeaseResult* response) override;
  grpc::ServerUnaryReactor* Complete(grpc::CallbackServerContext* context,
                                     const CompleteEntries* request,
                                     CompleteResult* response) override;
  grpc::ServerUnaryReactor* Extend(grpc::CallbackServerContext* context,
                                   const ExtendLeases* request, ExtendResult* response) override;
  grpc::ServerUnaryReactor* CheckGreylist(grpc::CallbackServerContext* context,
                                          const GreylistCheck* request,
                                          GreylistResult* response) override;
  grpc::ServerUnaryReactor* ReadMessage(grpc::CallbackServerContext* context,
                                        const ReadMessageRequest* request,
                                        ReadMessageResponse* response) override;
  grpc::ServerUnaryReactor* Flush(grpc::CallbackServerContext* context, const FlushDomain* request,
                                  SelectionResult* response) override;

 private:
  // Proposes `command`; when it is applied, `fill` moves the command's result into the response.
  grpc::ServerUnaryReactor* ProposeAndReply(grpc::CallbackServerContext* context, Command command,
                                            std::function<void(CommandResult&)> fill);

  QueueNode* const node_;
  const AddressBook address_book_;
  StorageReserve* const reserve_;
};

}  // namespace backstop::queue
