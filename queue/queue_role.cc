#include "queue/queue_role.h"

#include <algorithm>
#include <chrono>
#include <future>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "common/log.h"
#include "common/status.h"
#include "queue/queue_client.h"

namespace backstop::queue {

absl::StatusOr<std::unique_ptr<QueueRole>> QueueRole::Start(const Config& config,
                                                            const ClusterCredentials& credentials) {
  auto role = std::unique_ptr<QueueRole>(new QueueRole());
  const raft::NodeId self(config.node.id);
  std::vector<VoterAddress> voters;
  for (const QueuePeer& peer : config.queue.peers) {
    voters.push_back(VoterAddress{raft::NodeId(peer.id), peer.address.ToString()});
  }

  RaftTransportOptions transport_options;
  transport_options.self = self;
  transport_options.credentials = credentials.channel();
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
  node_options.start_mode =
      config.queue.join ? StartMode::kJoinExisting : StartMode::kFoundingMember;
  node_options.snapshot_entries = config.queue.snapshot_entries;
  // Never more than the interval: a small interval (tests) still compacts.
  node_options.snapshot_keep_entries =
      std::min(node_options.snapshot_keep_entries, config.queue.snapshot_entries / 2);
  node_options.state_machine = StateMachineOptions::FromConfig(config.delivery);
  {
    std::lock_guard lock(role->node_mutex_);
    ASSIGN_OR_RETURN(role->node_, QueueNode::Start(node_options, role->transport_.get()));
  }
  QueueNode* node = role->node_.get();
  StorageReserveOptions reserve_options;
  reserve_options.min_free_bytes = config.queue.min_free_space;
  reserve_options.probe = FreeSpaceProbeFromEnvironment(config.node.data_dir);
  role->reserve_ = std::make_unique<StorageReserve>(std::move(reserve_options));
  role->service_ = std::make_unique<QueueServiceImpl>(
      node, [node](raft::NodeId id) { return node->PeerAddress(id); }, role->reserve_.get());
  role->admin_service_ = std::make_unique<AdminServiceImpl>(
      node, credentials.mutual_tls() ? AdminAccess::kAdminCertificate : AdminAccess::kOpen,
      config.node.hostname);

  grpc::ServerBuilder builder;
  int port = 0;
  const std::string listen = config.queue.listen.ToString();
  builder.AddListeningPort(listen, credentials.server(), &port);
  builder.SetMaxReceiveMessageSize(kMaxGrpcMessageBytes);
  builder.SetMaxSendMessageSize(kMaxGrpcMessageBytes);
  builder.RegisterService(role->transport_->service());
  builder.RegisterService(role->service_.get());
  builder.RegisterService(role->admin_service_.get());
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(role->grpc_metrics_.MakeInterceptorFactory());
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  role->server_ = builder.BuildAndStart();
  if (role->server_ == nullptr || port == 0) {
    return absl::UnavailableError(fmt::format("queue gRPC server cannot listen on {}", listen));
  }
  HostPort bound = config.queue.listen;
  bound.port = static_cast<uint16_t>(port);
  role->listen_address_ = bound.ToString();

  std::vector<DomainSpec> domains;
  for (const DomainConfig& domain : config.domains) {
    domains.push_back(DomainSpecFromConfig(domain));
  }
  role->seeder_ = std::thread(
      [raw = role.get(), domains = std::move(domains)]() mutable { raw->SeedDomains(domains); });
  return role;
}

DomainSpec DomainSpecFromConfig(const DomainConfig& domain) {
  DomainSpec spec;
  spec.set_name(domain.name);
  for (const HostPort& primary : domain.primary) {
    spec.add_primary(primary.ToString());
  }
  spec.set_tls(domain.tls == DomainTls::kRequired ? TLS_REQUIRED : TLS_OPPORTUNISTIC);
  for (const std::string& recipient : domain.recipients) {
    spec.add_recipients(recipient);
  }
  spec.set_recipient_callout(domain.recipient_callout);
  spec.set_max_queued_messages(domain.max_queued_messages);
  spec.set_max_queued_bytes(domain.max_queued_bytes);
  spec.set_max_monthly_bytes(domain.max_monthly_bytes);
  spec.set_max_daily_connections(domain.max_daily_connections);
  return spec;
}

absl::StatusOr<raft::NodeId> QueueRole::StepDown(absl::Duration timeout) {
  const QueueNodeStatus status = node_->status();
  if (!status.is_leader || status.members.voters.size() < 2) {
    return raft::NodeId();
  }
  const absl::Time give_up = absl::Now() + timeout;
  auto done = std::make_shared<std::promise<absl::Status>>();
  std::future<absl::Status> result = done->get_future();
  node_->TransferLeadership(raft::NodeId(), [done](absl::Status s) { done->set_value(s); });
  if (result.wait_for(absl::ToChronoNanoseconds(timeout)) != std::future_status::ready) {
    return absl::DeadlineExceededError("leadership transfer did not finish in time");
  }
  RETURN_IF_ERROR(result.get());
  // This node may hear of the new term before it hears from the new leader.
  while (absl::Now() < give_up) {
    const raft::NodeId leader = node_->status().leader;
    if (!leader.IsNone() && leader != status.id) {
      return leader;
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  return absl::DeadlineExceededError("no new leader heard of in time");
}

void QueueRole::SeedDomains(std::vector<DomainSpec> domains) {
  const log::Logger logger("queue");
  size_t next = 0;
  size_t created = 0;
  while (next < domains.size()) {
    {
      std::unique_lock lock(seeder_mutex_);
      seeder_wake_.wait_for(lock, std::chrono::milliseconds(200), [this] { return stopping_; });
      if (stopping_) {
        return;
      }
    }
    if (!node_->status().is_leader) {
      continue;  // the leader seeds; a follower only steps in if it becomes leader
    }
    while (next < domains.size()) {
      // A record without a spec is only the usage of mail that arrived before the seeding:
      // the domain still needs its configuration (and so its limits).
      if (const absl::StatusOr<DomainRecord> existing =
              node_->state_machine().GetDomain(domains[next].name());
          existing.ok() && existing->has_spec()) {
        ++next;  // already configured (seeded before, or managed through the admin API)
        continue;
      }
      Command command;
      *command.mutable_create_domain()->mutable_spec() = domains[next];
      // Shared with the callback: a proposal that never resolves (no quorum) must not keep the
      // seeder, and so shutdown, waiting.
      auto done = std::make_shared<std::promise<absl::StatusOr<CommandResult>>>();
      std::future<absl::StatusOr<CommandResult>> result = done->get_future();
      node_->Propose(std::move(command),
                     [done](absl::StatusOr<CommandResult> r) { done->set_value(std::move(r)); });
      while (result.wait_for(std::chrono::milliseconds(100)) != std::future_status::ready) {
        std::lock_guard lock(seeder_mutex_);
        if (stopping_) {
          return;
        }
      }
      const absl::StatusOr<CommandResult> outcome = result.get();
      if (!outcome.ok()) {
        break;  // lost leadership; wait and see who seeds
      }
      if (outcome->code() == OK) {
        ++created;
        logger.Info("domain seeded from the configuration", {{"domain", domains[next].name()}});
      } else if (outcome->code() != ALREADY_EXISTS) {
        logger.Error("cannot seed domain from the configuration",
                     {{"domain", domains[next].name()}, {"error", outcome->error()}});
      }
      ++next;
    }
  }
  logger.Info("configured domains are in the queue",
              {{"configured", domains.size()}, {"created", created}});
}

QueueRole::~QueueRole() {
  {
    std::lock_guard lock(seeder_mutex_);
    stopping_ = true;
  }
  seeder_wake_.notify_all();
  if (seeder_.joinable()) {
    seeder_.join();  // before the node goes: the seeder proposes through it
  }
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
  return server_->InProcessChannel(QueueChannelArguments());
}

}  // namespace backstop::queue
