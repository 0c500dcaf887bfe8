#pragma once

// The queue role of a backstop process: one voter (QueueNode) with its gRPC server on
// [queue] listen, serving the Raft peer transport, the QueueService and the AdminService. Also
// the in-process channel through which the process's other roles reach this voter (DESIGN §2:
// one code path).

#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "common/config.h"
#include "queue/admin_service.h"
#include "queue/cluster_tls.h"
#include "queue/grpc_metrics.h"
#include "queue/queue_node.h"
#include "queue/queue_service.h"
#include "queue/raft_transport.h"
#include "queue/storage_reserve.h"

namespace backstop::queue {

// Owns the transport, the node, the service and the server. Start/destruction on one thread
// (main); status() and the accessors from any thread.
//
// The domain table is seeded from the configuration's [[domain]] blocks: whichever voter leads
// creates the configured domains that the table does not hold yet (CreateDomain through the
// log, so every replica agrees). Domains changed at runtime through the admin API keep their
// changes across restarts.
class QueueRole {
 public:
  // The server and the peer channels use `credentials` (which must outlive the role): mTLS
  // from [cluster_tls], or plaintext.
  static absl::StatusOr<std::unique_ptr<QueueRole>> Start(const Config& config,
                                                          const ClusterCredentials& credentials);
  // Stops the server (cancelling peer streams) and then the node.
  ~QueueRole();
  QueueRole(const QueueRole&) = delete;
  QueueRole& operator=(const QueueRole&) = delete;

  QueueNodeStatus status() const { return node_->status(); }
  const QueueNode& node() const { return *node_; }
  // SIGTERM: a leader hands leadership to its most caught-up follower (so the cluster does
  // not wait an election timeout for a new one) and waits up to `timeout` for it to lead;
  // returns the new leader. A follower, or the only voter, returns none at once. Errors are
  // for the log only.
  absl::StatusOr<raft::NodeId> StepDown(absl::Duration timeout);
  const GrpcServerMetrics& grpc_metrics() const { return grpc_metrics_; }
  const std::string& listen_address() const { return listen_address_; }
  // For the other roles of this process.
  std::shared_ptr<grpc::Channel> InProcessChannel();

 private:
  QueueRole() = default;
  // Runs on seeder_: waits until this voter leads, then creates the missing configured domains.
  void SeedDomains(std::vector<DomainSpec> domains);

  GrpcServerMetrics grpc_metrics_;  // before server_: its interceptors point here
  std::unique_ptr<RaftTransport> transport_;
  std::mutex node_mutex_;  // orders the transport's first deliveries after the node exists
  std::unique_ptr<QueueNode> node_;
  std::unique_ptr<StorageReserve> reserve_;  // before service_, which borrows it
  std::unique_ptr<QueueServiceImpl> service_;
  std::unique_ptr<AdminServiceImpl> admin_service_;
  std::unique_ptr<grpc::Server> server_;
  std::string listen_address_;

  std::mutex seeder_mutex_;
  std::condition_variable seeder_wake_;
  bool stopping_ = false;  // guarded by seeder_mutex_
  std::thread seeder_;
};

// The queue's record of a configured [[domain]].
DomainSpec DomainSpecFromConfig(const DomainConfig& domain);

}  // namespace backstop::queue
