#pragma once

// The client of the queue's data path (QueueService) for ingest, delivery and tools. It keeps a
// channel per known voter, sends each call to the voter it believes leads, follows the leader
// named in an UNAVAILABLE reply, and retries on another voter when one is unreachable, until
// the call's deadline.
//
// Retries are safe for Append (idempotent by message id; the sessions it counts may be counted
// twice, which errs on the safe side of a limit), Complete (a repeated completion is refused as
// stale), Extend (a repeat only moves the expiry again), Flush (idempotent), CheckGreylist and
// ReadMessage. A
// retried Lease whose first attempt did commit leaves those entries leased to nobody until the
// lease expires — late, never lost.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/config.h"
#include "proto/queue.grpc.pb.h"

namespace backstop::queue {

// gRPC's default 4 MiB would refuse an Append batch of a few large messages (DESIGN §4's
// default message size is 50 MiB), and a ReadMessage reply of one.
inline constexpr int kMaxGrpcMessageBytes = 1 << 30;

// Channel arguments for every channel to the queue (message size limits above).
grpc::ChannelArguments QueueChannelArguments();

struct QueueClientOptions {
  std::vector<std::string> endpoints;  // "host:port" of queue voters
  // null = plaintext (loopback and tests only).
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // Total time a call may take, retries included.
  absl::Duration call_deadline = absl::Seconds(30);
};

// Thread-safe: any number of threads may call concurrently.
class QueueClient {
 public:
  static absl::StatusOr<std::unique_ptr<QueueClient>> Create(const QueueClientOptions& options);
  // A client bound to one in-process channel (the embedded default: the roles in one process
  // reach their own voter without a socket, through the same gRPC code path).
  static std::unique_ptr<QueueClient> ForChannel(std::shared_ptr<grpc::Channel> channel,
                                                 absl::Duration call_deadline);

  absl::StatusOr<AppendResult> Append(const AppendMessages& request);
  absl::StatusOr<LeaseResult> Lease(const LeaseEntries& request);
  absl::StatusOr<CompleteResult> Complete(const CompleteEntries& request);
  absl::StatusOr<ExtendResult> Extend(const ExtendLeases& request);
  absl::StatusOr<GreylistResult> CheckGreylist(const GreylistCheck& request);
  absl::StatusOr<ReadMessageResponse> ReadMessage(const ReadMessageRequest& request);
  absl::StatusOr<SelectionResult> Flush(const FlushDomain& request);

 private:
  struct Endpoint {
    std::string address;
    std::unique_ptr<QueueService::Stub> stub;
  };

  QueueClient(std::shared_ptr<grpc::ChannelCredentials> credentials, absl::Duration deadline);
  // Index of the endpoint for `address`, adding it when new.
  size_t EndpointFor(const std::string& address);

  template <typename Request, typename Response>
  absl::StatusOr<Response> Call(grpc::Status (QueueService::Stub::*method)(grpc::ClientContext*,
                                                                           const Request&,
                                                                           Response*),
                                const Request& request);

  const std::shared_ptr<grpc::ChannelCredentials> credentials_;
  const absl::Duration call_deadline_;
  std::mutex endpoints_mutex_;
  std::vector<std::unique_ptr<Endpoint>> endpoints_;  // guarded by endpoints_mutex_; append-only
  std::atomic<size_t> current_{0};                    // the endpoint believed to lead
};

// How a role of this process reaches the queue.
struct QueueConnection {
  // This process's own voter (the embedded default), or null for the network.
  std::shared_ptr<grpc::Channel> in_process;
  // For the network: mTLS from [cluster_tls], or plaintext.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
};

// A client over the in-process channel when there is one, else over the network to the voters
// of `[queue] endpoints` (or, when that is empty, `[queue] peers`).
absl::StatusOr<std::unique_ptr<QueueClient>> ConnectToQueue(const Config& config,
                                                            const QueueConnection& connection,
                                                            absl::Duration call_deadline);

}  // namespace backstop::queue
