#include "queue/queue_client.h"

#include <algorithm>
#include <thread>
#include <utility>

#include <fmt/format.h>

#include "queue/leader_metadata.h"

namespace backstop::queue {
namespace {

absl::Status FromGrpc(const grpc::Status& status) {
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

}  // namespace

grpc::ChannelArguments QueueChannelArguments() {
  grpc::ChannelArguments arguments;
  arguments.SetMaxReceiveMessageSize(kMaxGrpcMessageBytes);
  arguments.SetMaxSendMessageSize(kMaxGrpcMessageBytes);
  return arguments;
}

QueueClient::QueueClient(std::shared_ptr<grpc::ChannelCredentials> credentials,
                         absl::Duration deadline)
    : credentials_(credentials ? std::move(credentials) : grpc::InsecureChannelCredentials()),
      call_deadline_(deadline) {}

absl::StatusOr<std::unique_ptr<QueueClient>> QueueClient::Create(
    const QueueClientOptions& options) {
  if (options.endpoints.empty()) {
    return absl::InvalidArgumentError("queue client: no endpoints");
  }
  auto client =
      std::unique_ptr<QueueClient>(new QueueClient(options.credentials, options.call_deadline));
  for (const std::string& address : options.endpoints) {
    client->EndpointFor(address);
  }
  return client;
}

std::unique_ptr<QueueClient> QueueClient::ForChannel(std::shared_ptr<grpc::Channel> channel,
                                                     absl::Duration call_deadline) {
  auto client = std::unique_ptr<QueueClient>(new QueueClient(nullptr, call_deadline));
  client->endpoints_.push_back(std::make_unique<Endpoint>(
      Endpoint{"in-process", QueueService::NewStub(std::move(channel))}));
  return client;
}

absl::StatusOr<std::unique_ptr<QueueClient>> ConnectToQueue(const Config& config,
                                                            const QueueConnection& connection,
                                                            absl::Duration call_deadline) {
  if (connection.in_process != nullptr) {
    return QueueClient::ForChannel(connection.in_process, call_deadline);
  }
  QueueClientOptions options;
  options.credentials = connection.credentials;
  options.call_deadline = call_deadline;
  for (const HostPort& endpoint : config.queue.endpoints) {
    options.endpoints.push_back(endpoint.ToString());
  }
  if (options.endpoints.empty()) {
    for (const QueuePeer& peer : config.queue.peers) {
      options.endpoints.push_back(peer.address.ToString());
    }
  }
  return QueueClient::Create(options);
}

size_t QueueClient::EndpointFor(const std::string& address) {
  std::lock_guard lock(endpoints_mutex_);
  for (size_t i = 0; i < endpoints_.size(); ++i) {
    if (endpoints_[i]->address == address) {
      return i;
    }
  }
  endpoints_.push_back(std::make_unique<Endpoint>(
      Endpoint{address, QueueService::NewStub(grpc::CreateCustomChannel(
                            address, credentials_, QueueChannelArguments()))}));
  return endpoints_.size() - 1;
}

template <typename Request, typename Response>
absl::StatusOr<Response> QueueClient::Call(
    grpc::Status (QueueService::Stub::*method)(grpc::ClientContext*, const Request&, Response*),
    const Request& request) {
  const auto deadline =
      std::chrono::system_clock::now() + absl::ToChronoNanoseconds(call_deadline_);
  auto backoff = std::chrono::milliseconds(10);
  grpc::Status last;
  for (int attempt = 0; std::chrono::system_clock::now() < deadline; ++attempt) {
    const size_t index = current_.load(std::memory_order_relaxed);
    QueueService::Stub* stub;
    size_t endpoint_count;
    {
      std::lock_guard lock(endpoints_mutex_);
      stub = endpoints_[index % endpoints_.size()]->stub.get();
      endpoint_count = endpoints_.size();
    }
    grpc::ClientContext context;
    context.set_deadline(deadline);
    Response response;
    last = (stub->*method)(&context, request, &response);
    if (last.ok()) {
      return response;
    }
    if (last.error_code() != grpc::StatusCode::UNAVAILABLE) {
      return FromGrpc(last);
    }
    // Follow the leader the voter named, else try the next voter.
    const auto& trailers = context.GetServerTrailingMetadata();
    if (auto it = trailers.find(kLeaderAddressKey); it != trailers.end()) {
      const size_t leader = EndpointFor(std::string(it->second.data(), it->second.size()));
      current_.store(leader, std::memory_order_relaxed);
      if (leader != index % endpoint_count) {
        continue;  // a redirect costs no back-off
      }
    } else {
      size_t expected = index;  // unless another call already moved on
      current_.compare_exchange_strong(expected, (index + 1) % endpoint_count);
    }
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(500));
  }
  return absl::UnavailableError(
      fmt::format("queue unavailable until the deadline: {}", last.error_message()));
}

absl::StatusOr<AppendResult> QueueClient::Append(const AppendMessages& request) {
  return Call(&QueueService::Stub::Append, request);
}
absl::StatusOr<LeaseResult> QueueClient::Lease(const LeaseEntries& request) {
  return Call(&QueueService::Stub::Lease, request);
}
absl::StatusOr<CompleteResult> QueueClient::Complete(const CompleteEntries& request) {
  return Call(&QueueService::Stub::Complete, request);
}
absl::StatusOr<ExtendResult> QueueClient::Extend(const ExtendLeases& request) {
  return Call(&QueueService::Stub::Extend, request);
}
absl::StatusOr<SelectionResult> QueueClient::Flush(const FlushDomain& request) {
  return Call(&QueueService::Stub::Flush, request);
}

absl::StatusOr<GreylistResult> QueueClient::CheckGreylist(const GreylistCheck& request) {
  return Call(&QueueService::Stub::CheckGreylist, request);
}
absl::StatusOr<ReadMessageResponse> QueueClient::ReadMessage(const ReadMessageRequest& request) {
  return Call(&QueueService::Stub::ReadMessage, request);
}

}  // namespace backstop::queue
