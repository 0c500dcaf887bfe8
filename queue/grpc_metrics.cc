#include "queue/grpc_metrics.h"

#include <chrono>
#include <string_view>
#include <utility>

namespace backstop::queue {
namespace {

std::string TypeName(grpc::experimental::ServerRpcInfo::Type type) {
  using Type = grpc::experimental::ServerRpcInfo::Type;
  switch (type) {
    case Type::UNARY:
      return "unary";
    case Type::CLIENT_STREAMING:
      return "client_stream";
    case Type::SERVER_STREAMING:
      return "server_stream";
    case Type::BIDI_STREAMING:
      return "bidi_stream";
  }
  return "unknown";
}

std::string CodeName(grpc::StatusCode code) {
  static const char* const kNames[] = {"OK",
                                       "CANCELLED",
                                       "UNKNOWN",
                                       "INVALID_ARGUMENT",
                                       "DEADLINE_EXCEEDED",
                                       "NOT_FOUND",
                                       "ALREADY_EXISTS",
                                       "PERMISSION_DENIED",
                                       "RESOURCE_EXHAUSTED",
                                       "FAILED_PRECONDITION",
                                       "ABORTED",
                                       "OUT_OF_RANGE",
                                       "UNIMPLEMENTED",
                                       "INTERNAL",
                                       "UNAVAILABLE",
                                       "DATA_LOSS",
                                       "UNAUTHENTICATED"};
  const auto index = static_cast<size_t>(code);
  return index < std::size(kNames) ? kNames[index] : "UNKNOWN";
}

// "/backstop.queue.QueueService/Append" → service and method.
GrpcServerMetrics::Method ParseMethod(const grpc::experimental::ServerRpcInfo& info) {
  GrpcServerMetrics::Method method;
  method.type = TypeName(info.type());
  std::string_view full = info.method() != nullptr ? info.method() : "";
  if (!full.empty() && full.front() == '/') {
    full.remove_prefix(1);
  }
  const size_t slash = full.find('/');
  method.service = std::string(full.substr(0, slash));
  method.method = slash == std::string_view::npos ? "" : std::string(full.substr(slash + 1));
  return method;
}

// One per RPC: counts its start, and its status and duration when the status is sent.
class MetricsInterceptor : public grpc::experimental::Interceptor {
 public:
  MetricsInterceptor(GrpcServerMetrics* metrics, GrpcServerMetrics::Method method)
      : metrics_(metrics), method_(std::move(method)), start_(std::chrono::steady_clock::now()) {
    metrics_->Started(method_);
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start_;
      metrics_->Handled(method_, CodeName(methods->GetSendStatus().error_code()), elapsed.count());
    }
    methods->Proceed();
  }

 private:
  GrpcServerMetrics* const metrics_;
  const GrpcServerMetrics::Method method_;
  const std::chrono::steady_clock::time_point start_;
};

class MetricsInterceptorFactory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit MetricsInterceptorFactory(GrpcServerMetrics* metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new MetricsInterceptor(metrics_, ParseMethod(*info));
  }

 private:
  GrpcServerMetrics* const metrics_;
};

}  // namespace

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
GrpcServerMetrics::MakeInterceptorFactory() {
  return std::make_unique<MetricsInterceptorFactory>(this);
}

GrpcServerMetrics::MethodCounts& GrpcServerMetrics::At(const Method& method) {
  MethodCounts& counts = methods_[method];
  if (!counts.seconds) {
    counts.seconds = std::make_shared<metrics::Histogram>(metrics::LatencyBounds());
  }
  return counts;
}

void GrpcServerMetrics::Started(const Method& method) {
  std::lock_guard lock(mutex_);
  ++At(method).started;
}

void GrpcServerMetrics::Handled(const Method& method, const std::string& code, double seconds) {
  std::shared_ptr<metrics::Histogram> histogram;
  {
    std::lock_guard lock(mutex_);
    MethodCounts& counts = At(method);
    ++counts.handled[code];
    histogram = counts.seconds;
  }
  histogram->Observe(seconds);
}

std::map<GrpcServerMetrics::Method, GrpcServerMetrics::MethodCounts> GrpcServerMetrics::Snapshot()
    const {
  std::lock_guard lock(mutex_);
  return methods_;
}

}  // namespace backstop::queue
