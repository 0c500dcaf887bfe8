#pragma once

// The queue's operator API (proto/admin.proto AdminService), served by every voter from its
// QueueNode, for backstopctl.
//
// Mutations (queue operations, domain changes, membership, leadership) run on the leader:
// commands are proposed to the Raft log and answered once applied on the leader in the same term;
// a follower answers UNAVAILABLE naming the leader (grpc_reply.h). Reads (status, summaries,
// lists, entries, domains) are served by the node asked, from its own state machine without a
// round to the leader: a follower's answer may lag the leader's by the entries it has not
// applied yet. Ask the leader for an up-to-date view.

#include "proto/admin.grpc.pb.h"
#include "queue/grpc_reply.h"
#include "queue/queue_node.h"

namespace backstop::queue {

// Who may make the calls that change the queue or the cluster (reads are open to every caller
// the server accepts).
enum class AdminAccess : uint8_t {
  kOpen,              // plaintext: anyone who can connect (loopback and tests)
  kAdminCertificate,  // mTLS: a client certificate marked for admin use (cluster_tls.h)
};

// Thread-safe (gRPC calls the handlers on its own threads); borrows the node, which must
// outlive the server that serves this service. Member addresses come from the node
// (QueueNode::PeerAddress), their replication progress from the node's status when it leads.
class AdminServiceImpl final : public admin::AdminService::CallbackService {
 public:
  // `hostname`: this node's [node] hostname, reported in ClusterStatus.
  AdminServiceImpl(QueueNode* node, AdminAccess access, std::string hostname = "");

  grpc::ServerUnaryReactor* GetClusterStatus(grpc::CallbackServerContext* context,
                                             const admin::GetClusterStatusRequest* request,
                                             admin::ClusterStatus* response) override;
  grpc::ServerUnaryReactor* TransferLeadership(
      grpc::CallbackServerContext* context, const admin::TransferLeadershipRequest* request,
      admin::TransferLeadershipResponse* response) override;
  grpc::ServerUnaryReactor* AddVoter(grpc::CallbackServerContext* context,
                                     const admin::AddVoterRequest* request,
                                     admin::AddVoterResponse* response) override;
  grpc::ServerUnaryReactor* RemoveVoter(grpc::CallbackServerContext* context,
                                        const admin::RemoveVoterRequest* request,
                                        admin::RemoveVoterResponse* response) override;

  grpc::ServerUnaryReactor* QueueSummary(grpc::CallbackServerContext* context,
                                         const admin::QueueSummaryRequest* request,
                                         admin::QueueSummaryResponse* response) override;
  grpc::ServerUnaryReactor* ListEntries(grpc::CallbackServerContext* context,
                                        const ListEntriesRequest* request,
                                        ListEntriesResponse* response) override;
  grpc::ServerUnaryReactor* ShowEntry(grpc::CallbackServerContext* context,
                                      const admin::ShowEntryRequest* request,
                                      admin::ShowEntryResponse* response) override;
  grpc::ServerUnaryReactor* Flush(grpc::CallbackServerContext* context, const FlushDomain* request,
                                  SelectionResult* response) override;
  grpc::ServerUnaryReactor* Hold(grpc::CallbackServerContext* context, const HoldEntries* request,
                                 SelectionResult* response) override;
  grpc::ServerUnaryReactor* Release(grpc::CallbackServerContext* context,
                                    const ReleaseEntries* request,
                                    SelectionResult* response) override;
  grpc::ServerUnaryReactor* Delete(grpc::CallbackServerContext* context,
                                   const DeleteEntries* request,
                                   SelectionResult* response) override;
  grpc::ServerUnaryReactor* Bounce(grpc::CallbackServerContext* context,
                                   const BounceEntries* request,
                                   SelectionResult* response) override;

  grpc::ServerUnaryReactor* CreateDomain(grpc::CallbackServerContext* context,
                                         const queue::CreateDomain* request,
                                         DomainResult* response) override;
  grpc::ServerUnaryReactor* GetDomain(grpc::CallbackServerContext* context,
                                      const admin::GetDomainRequest* request,
                                      DomainRecord* response) override;
  grpc::ServerUnaryReactor* UpdateDomain(grpc::CallbackServerContext* context,
                                         const queue::UpdateDomain* request,
                                         DomainResult* response) override;
  grpc::ServerUnaryReactor* DeleteDomain(grpc::CallbackServerContext* context,
                                         const queue::DeleteDomain* request,
                                         DomainResult* response) override;
  grpc::ServerUnaryReactor* ListDomains(grpc::CallbackServerContext* context,
                                        const admin::ListDomainsRequest* request,
                                        admin::ListDomainsResponse* response) override;

 private:
  grpc::ServerUnaryReactor* Propose(grpc::CallbackServerContext* context, Command command,
                                    std::function<void(CommandResult&)> fill);
  // Answers a membership or leadership call once the node is done with it.
  // Null when the caller may change things; else the reactor, already finished with
  // PERMISSION_DENIED.
  grpc::ServerUnaryReactor* RefuseNonAdmin(grpc::CallbackServerContext* context) const;
  QueueNode::StatusDone FinishWhenDone(grpc::CallbackServerContext* context,
                                       grpc::ServerUnaryReactor* reactor) const;
  grpc::ServerUnaryReactor* Reply(grpc::CallbackServerContext* context,
                                  const absl::Status& status) const;

  QueueNode* const node_;
  const std::string hostname_;
  const AddressBook address_book_;
  const AdminAccess access_;
};

}  // namespace backstop::queue
