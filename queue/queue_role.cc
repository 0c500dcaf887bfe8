#include "queue/queue_role.h"

#include <chrono>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "common/status.h"

namespace backstop::queue {

absl::StatusOr<std::unique_ptr<QueueRole>> QueueRole::Start(const Config& config) {
  auto role = std::unique_ptr<QueueRole>(new QueueRole());
  const raft::NodeId self(config.node.id);
  std::vector<VoterAddress> voters;
  for (const QueuePeer& peer : config.queue.peers) {
    voters.push_back(VoterAddress{raft::NodeId(peer.id), peer.address.ToString()});
  }

  RaftTransportOptions transport_options;
  transport_options.self = self;
  role->transport_ =
      std::make_unique<RaftTransport>(transport_options, [raw = role.get()](raft::Message message) {
        std::lock_guard lock(raw->node_mutex_);
        if (raw->node_ != nullptr) {
          raw->node_->Receive(std::move(message));
        }
      });

  QueueNodeOptions node_options;
  node_options.id = self;
  node_options.voters = voters;
  node_options.data_dir = config.node.data_dir;
  node_options.state_machine = StateMachineOptions::FromConfig(config.delivery);
  {
    std::lock_guard lock(role->node_mutex_);
    ASSIGN_OR_RETURN(role->node_, QueueNode::Start(node_options, role->transport_.get()));
  }
  QueueNode* node = role->node_.get();
  role->service_ = std::make_unique<QueueServiceImpl>(
      node, [node](raft::NodeId id) { return node->PeerAddress(id); });
  role->admin_service_ = std::make_unique<AdminServiceImpl>(node);

  grpc::ServerBuilder builder;
  int port = 0;
  const std::string listen = config.queue.listen.ToString();
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(role->transport_->service());
  builder.RegisterService(role->service_.get());
  builder.RegisterService(role->admin_service_.get());
  role->server_ = builder.BuildAndStart();
  if (role->server_ == nullptr || port == 0) {
    return absl::UnavailableError(fmt::format("queue gRPC server cannot listen on {}", listen));
  }
  HostPort bound = config.queue.listen;
  bound.port = static_cast<uint16_t>(port);
  role->listen_address_ = bound.ToString();
  return role;
}

QueueRole::~QueueRole() {
  if (server_ != nullptr) {
    // Peer streams never end on their own: give calls a moment, then cancel them.
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
    server_->Wait();
  }
  std::unique_ptr<QueueNode> node;
  {
    std::lock_guard lock(node_mutex_);
    node.swap(node_);
  }
  node.reset();
}

std::shared_ptr<grpc::Channel> QueueRole::InProcessChannel() {
  return server_->InProcessChannel(grpc::ChannelArguments());
}

}  // namespace backstop::queue
