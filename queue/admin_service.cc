#include "queue/admin_service.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "queue/cluster_tls.h"
#include "queue/message_id.h"

namespace backstop::queue {
namespace {

grpc::Status ReadError(const absl::Status& status) {
  const auto code =
      absl::IsNotFound(status) ? grpc::StatusCode::NOT_FOUND : grpc::StatusCode::INTERNAL;
  return grpc::Status(code, std::string(status.message()));
}

// `status` is the answering node's: when it leads, each member gets its replication progress.
void AddMembers(const std::vector<raft::NodeId>& ids, const QueueNode& node,
                const QueueNodeStatus& status, absl::Time now,
                google::protobuf::RepeatedPtrField<admin::Member>* members) {
  for (raft::NodeId id : ids) {
    admin::Member* member = members->Add();
    member->set_id(id.value());
    member->set_address(node.PeerAddress(id));
    if (!status.is_leader) {
      continue;
    }
    if (id == status.id) {
      member->set_match_index(status.last_index.value());
      member->set_lag(0);
      member->set_last_contact_ms(0);
      continue;
    }
    for (const PeerProgress& peer : status.peers) {
      if (peer.id == id) {
        member->set_match_index(peer.match.value());
        member->set_lag(status.LagOf(peer));
        if (peer.last_contact != absl::InfinitePast()) {
          member->set_last_contact_ms(
              std::max<int64_t>(0, absl::ToInt64Milliseconds(now - peer.last_contact)));
        }
      }
    }
  }
}

}  // namespace

AdminServiceImpl::AdminServiceImpl(QueueNode* node, AdminAccess access, std::string hostname)
    : node_(node),
      hostname_(std::move(hostname)),
      address_book_([node](raft::NodeId id) { return node->PeerAddress(id); }),
      access_(access) {}

grpc::ServerUnaryReactor* AdminServiceImpl::RefuseNonAdmin(
    grpc::CallbackServerContext* context) const {
  const grpc::Status allowed = AuthorizeAdmin(*context, access_ == AdminAccess::kAdminCertificate);
  if (allowed.ok()) {
    return nullptr;
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(allowed);
  return reactor;
}

grpc::ServerUnaryReactor* AdminServiceImpl::Reply(grpc::CallbackServerContext* context,
                                                  const absl::Status& status) const {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(status.ok() ? grpc::Status::OK : ReadError(status));
  return reactor;
}

grpc::ServerUnaryReactor* AdminServiceImpl::Propose(grpc::CallbackServerContext* context,
                                                    Command command,
                                                    std::function<void(CommandResult&)> fill) {
  if (grpc::ServerUnaryReactor* refused = RefuseNonAdmin(context)) {
    return refused;
  }
  return ProposeAndReply(context, node_, &address_book_, std::move(command), std::move(fill));
}

QueueNode::StatusDone AdminServiceImpl::FinishWhenDone(grpc::CallbackServerContext* context,
                                                       grpc::ServerUnaryReactor* reactor) const {
  return [this, context, reactor](absl::Status status) {
    reactor->Finish(status.ok() ? grpc::Status::OK
                                : NodeErrorToGrpc(context, *node_, address_book_, status));
  };
}

grpc::ServerUnaryReactor* AdminServiceImpl::GetClusterStatus(
    grpc::CallbackServerContext* context, const admin::GetClusterStatusRequest* /*request*/,
    admin::ClusterStatus* response) {
  const QueueNodeStatus status = node_->status();
  response->set_node_id(status.id.value());
  response->set_leader_id(status.leader.value());
  if (!status.leader.IsNone()) {
    response->set_leader_address(node_->PeerAddress(status.leader));
  }
  response->set_term(status.term.value());
  response->set_commit_index(status.commit.value());
  response->set_applied_index(status.applied.value());
  response->set_last_index(status.last_index.value());
  response->set_hostname(hostname_);
  const absl::Time now = node_->clock().Now();
  AddMembers(status.members.voters, *node_, status, now, response->mutable_voters());
  AddMembers(status.members.learners, *node_, status, now, response->mutable_learners());
  return Reply(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* AdminServiceImpl::TransferLeadership(
    grpc::CallbackServerContext* context, const admin::TransferLeadershipRequest* request,
    admin::TransferLeadershipResponse* /*response*/) {
  if (grpc::ServerUnaryReactor* refused = RefuseNonAdmin(context)) {
    return refused;
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  node_->TransferLeadership(raft::NodeId(request->to()), FinishWhenDone(context, reactor));
  return reactor;
}

grpc::ServerUnaryReactor* AdminServiceImpl::AddVoter(grpc::CallbackServerContext* context,
                                                     const admin::AddVoterRequest* request,
                                                     admin::AddVoterResponse* /*response*/) {
  if (grpc::ServerUnaryReactor* refused = RefuseNonAdmin(context)) {
    return refused;
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  node_->AddVoter(VoterAddress{raft::NodeId(request->id()), request->address()},
                  FinishWhenDone(context, reactor));
  return reactor;
}

grpc::ServerUnaryReactor* AdminServiceImpl::RemoveVoter(grpc::CallbackServerContext* context,
                                                        const admin::RemoveVoterRequest* request,
                                                        admin::RemoveVoterResponse* /*response*/) {
  if (grpc::ServerUnaryReactor* refused = RefuseNonAdmin(context)) {
    return refused;
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  node_->ProposeConfChange(
      raft::ConfChange{raft::ConfChangeType::kRemove, raft::NodeId(request->id())}, "",
      FinishWhenDone(context, reactor));
  return reactor;
}

grpc::ServerUnaryReactor* AdminServiceImpl::QueueSummary(
    grpc::CallbackServerContext* context, const admin::QueueSummaryRequest* /*request*/,
    admin::QueueSummaryResponse* response) {
  absl::StatusOr<std::vector<DomainSummary>> summaries = node_->state_machine().Summaries();
  if (!summaries.ok()) {
    return Reply(context, summaries.status());
  }
  for (DomainSummary& summary : *summaries) {
    *response->add_domains() = std::move(summary);
  }
  return Reply(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* AdminServiceImpl::ListEntries(grpc::CallbackServerContext* context,
                                                        const ListEntriesRequest* request,
                                                        ListEntriesResponse* response) {
  absl::StatusOr<ListEntriesResponse> page = node_->state_machine().ListEntries(*request);
  if (page.ok()) {
    response->Swap(&*page);
  }
  return Reply(context, page.status());
}

grpc::ServerUnaryReactor* AdminServiceImpl::ShowEntry(grpc::CallbackServerContext* context,
                                                      const admin::ShowEntryRequest* request,
                                                      admin::ShowEntryResponse* response) {
  absl::StatusOr<MessageId> id = MessageId::FromBytes(request->id());
  if (!id.ok()) {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "id must be 16 bytes"));
    return reactor;
  }
  absl::StatusOr<StoredEntry> entry = node_->state_machine().GetEntry(*id);
  if (!entry.ok()) {
    return Reply(context, entry.status());
  }
  response->mutable_entry()->Swap(&*entry);
  if (request->with_message()) {
    absl::StatusOr<std::string> bytes = node_->state_machine().ReadMessage(*id);
    if (!bytes.ok()) {
      return Reply(context, bytes.status());
    }
    response->set_message(*std::move(bytes));
  }
  return Reply(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* AdminServiceImpl::Flush(grpc::CallbackServerContext* context,
                                                  const FlushDomain* request,
                                                  SelectionResult* response) {
  Command command;
  *command.mutable_flush() = *request;
  return Propose(context, std::move(command), FillSelection(response));
}

grpc::ServerUnaryReactor* AdminServiceImpl::Hold(grpc::CallbackServerContext* context,
                                                 const HoldEntries* request,
                                                 SelectionResult* response) {
  Command command;
  *command.mutable_hold() = *request;
  return Propose(context, std::move(command), FillSelection(response));
}

grpc::ServerUnaryReactor* AdminServiceImpl::Release(grpc::CallbackServerContext* context,
                                                    const ReleaseEntries* request,
                                                    SelectionResult* response) {
  Command command;
  *command.mutable_release() = *request;
  return Propose(context, std::move(command), FillSelection(response));
}

grpc::ServerUnaryReactor* AdminServiceImpl::Delete(grpc::CallbackServerContext* context,
                                                   const DeleteEntries* request,
                                                   SelectionResult* response) {
  Command command;
  *command.mutable_delete_() = *request;
  return Propose(context, std::move(command), FillSelection(response));
}

grpc::ServerUnaryReactor* AdminServiceImpl::Bounce(grpc::CallbackServerContext* context,
                                                   const BounceEntries* request,
                                                   SelectionResult* response) {
  Command command;
  *command.mutable_bounce() = *request;
  return Propose(context, std::move(command), FillSelection(response));
}

grpc::ServerUnaryReactor* AdminServiceImpl::CreateDomain(grpc::CallbackServerContext* context,
                                                         const queue::CreateDomain* request,
                                                         DomainResult* response) {
  Command command;
  *command.mutable_create_domain() = *request;
  return Propose(context, std::move(command), FillDomain(response));
}

grpc::ServerUnaryReactor* AdminServiceImpl::GetDomain(grpc::CallbackServerContext* context,
                                                      const admin::GetDomainRequest* request,
                                                      DomainRecord* response) {
  absl::StatusOr<DomainRecord> record = node_->state_machine().GetDomain(request->name());
  if (record.ok()) {
    response->Swap(&*record);
  }
  return Reply(context, record.status());
}

grpc::ServerUnaryReactor* AdminServiceImpl::UpdateDomain(grpc::CallbackServerContext* context,
                                                         const queue::UpdateDomain* request,
                                                         DomainResult* response) {
  Command command;
  *command.mutable_update_domain() = *request;
  return Propose(context, std::move(command), FillDomain(response));
}

grpc::ServerUnaryReactor* AdminServiceImpl::DeleteDomain(grpc::CallbackServerContext* context,
                                                         const queue::DeleteDomain* request,
                                                         DomainResult* response) {
  Command command;
  *command.mutable_delete_domain() = *request;
  return Propose(context, std::move(command), FillDomain(response));
}

grpc::ServerUnaryReactor* AdminServiceImpl::ListDomains(
    grpc::CallbackServerContext* context, const admin::ListDomainsRequest* /*request*/,
    admin::ListDomainsResponse* response) {
  // Every domain the queue knows has a record (Summaries lists them all, by name); the
  // configured relay domains are those with a spec.
  absl::StatusOr<std::vector<DomainSummary>> summaries = node_->state_machine().Summaries();
  if (!summaries.ok()) {
    return Reply(context, summaries.status());
  }
  for (const DomainSummary& summary : *summaries) {
    if (!summary.configured()) {
      continue;
    }
    absl::StatusOr<DomainRecord> record = node_->state_machine().GetDomain(summary.domain());
    if (!record.ok()) {
      return Reply(context, record.status());
    }
    response->add_domains()->Swap(&*record);
  }
  return Reply(context, absl::OkStatus());
}

}  // namespace backstop::queue
