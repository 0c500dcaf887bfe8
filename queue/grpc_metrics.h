#pragma once

// Prometheus' usual gRPC server series (grpc_server_started_total, grpc_server_handled_total,
// grpc_server_handling_seconds) for the queue's gRPC server, counted by a server interceptor:
// every RPC of the peers, of ingest and delivery (in process too) and of backstopctl.

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include <grpcpp/support/server_interceptor.h>

#include "common/metrics.h"

namespace backstop::queue {

// Owns the counts; the interceptors it makes (one per RPC, on gRPC's threads) add to them.
// Thread-safe.
class GrpcServerMetrics {
 public:
  // For grpc::ServerBuilder::experimental().SetInterceptorCreators(). The factory must not
  // outlive this object.
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> MakeInterceptorFactory();

  struct Method {
    std::string type;     // "unary", "client_stream", "server_stream", "bidi_stream"
    std::string service;  // "backstop.queue.QueueService"
    std::string method;   // "Append"
    friend bool operator<(const Method& a, const Method& b) {
      return std::tie(a.type, a.service, a.method) < std::tie(b.type, b.service, b.method);
    }
  };
  struct MethodCounts {
    uint64_t started = 0;
    std::map<std::string, uint64_t> handled;  // by status code name ("OK", "UNAVAILABLE", ...)
    // Stable address for the scrape's mirror: entries are never removed.
    std::shared_ptr<metrics::Histogram> seconds;
  };
  // A copy of the counts (histograms shared).
  std::map<Method, MethodCounts> Snapshot() const;

  void Started(const Method& method);
  void Handled(const Method& method, const std::string& code, double seconds);

 private:
  MethodCounts& At(const Method& method);  // requires mutex_

  mutable std::mutex mutex_;
  std::map<Method, MethodCounts> methods_;  // guarded by mutex_
};

}  // namespace backstop::queue
