#include "cmd/backstopctl/admin_client.h"

#include <cstdlib>
#include <iostream>

#include <fmt/format.h>
#include <google/protobuf/util/json_util.h>

#include "common/log.h"
#include "common/units.h"
#include "queue/leader_metadata.h"
#include "queue/message_id.h"
#include "queue/queue_client.h"

namespace backstop::ctl {
std::string Endpoint(const Options& options) {
  if (!options.endpoint.empty()) {
    return options.endpoint;
  }
  if (const char* env = std::getenv("BACKSTOP_ENDPOINT"); env != nullptr && *env != '\0') {
    return env;
  }
  return "127.0.0.1:7025";
}

ClusterTlsConfig TlsFiles(const Options& options) {
  auto pick = [](const std::string& flag, const char* variable) -> std::string {
    if (!flag.empty()) {
      return flag;
    }
    const char* env = std::getenv(variable);
    return env != nullptr ? env : "";
  };
  return ClusterTlsConfig{.ca = pick(options.tls_ca, "BACKSTOP_TLS_CA"),
                          .cert = pick(options.tls_cert, "BACKSTOP_TLS_CERT"),
                          .key = pick(options.tls_key, "BACKSTOP_TLS_KEY")};
}

void PrintError(std::string_view message) {
  std::cerr << "backstopctl: " << message << "\n";
}

AdminClient::AdminClient(const Options& options) : credentials_(options.credentials) {
  // main validated the timeout already; the fallback only guards a caller that did not.
  absl::StatusOr<absl::Duration> timeout = ParseDuration(options.timeout);
  timeout_ = timeout.ok() ? *timeout : absl::Seconds(10);
  Connect(Endpoint(options));
}

void AdminClient::Connect(const std::string& endpoint) {
  endpoint_ = endpoint;
  stub_ = admin::AdminService::NewStub(grpc::CreateCustomChannel(
      endpoint, credentials_ != nullptr ? credentials_ : grpc::InsecureChannelCredentials(),
      queue::QueueChannelArguments()));
}

std::string AdminClient::LeaderNamed(const grpc::ClientContext& context) {
  const auto& trailers = context.GetServerTrailingMetadata();
  const auto it = trailers.find(queue::kLeaderAddressKey);
  return it == trailers.end() ? "" : std::string(it->second.data(), it->second.size());
}

bool AdminClient::FollowLeader() {
  if (last_status_.error_code() != grpc::StatusCode::UNAVAILABLE || last_leader_.empty() ||
      last_leader_ == endpoint_) {
    return false;
  }
  Connect(last_leader_);
  return true;
}

void AdminClient::ReportLast() const {
  const std::string leader =
      last_leader_.empty() ? "" : fmt::format(" (the leader is {})", last_leader_);
  PrintError(fmt::format("{}: {}{}", endpoint_, last_status_.error_message(), leader));
}

std::string ProtoJson(const google::protobuf::Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions print;
  print.preserve_proto_field_names = true;
  print.always_print_primitive_fields = true;
  (void)google::protobuf::util::MessageToJsonString(message, &json, print);
  return json;
}

std::string IdText(const std::string& bytes) {
  absl::StatusOr<queue::MessageId> id = queue::MessageId::FromBytes(bytes);
  return id.ok() ? id->ToString() : "?";
}

std::string Millis(int64_t ms) {
  if (ms == 0) {
    return "-";
  }
  return absl::FormatTime("%Y-%m-%d %H:%M:%S", absl::FromUnixMillis(ms), absl::UTCTimeZone());
}

void AppendJson(std::string& out, std::string_view text) {
  log::AppendJsonString(out, text);
}

}  // namespace backstop::ctl
