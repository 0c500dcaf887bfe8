#pragma once

// What every backstopctl command shares: the global options, the AdminService client that
// follows the leader, exit codes, and the JSON / table helpers.

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include <grpcpp/grpcpp.h>

#include "absl/time/time.h"
#include "common/config.h"
#include "proto/admin.grpc.pb.h"

namespace backstop::ctl {

// Exit codes (DESIGN §3.5): 0 ok, 1 error (RPC failure, not found, problems found), 2 usage
// (bad flags, or a bulk or destructive action without --yes).
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

struct Options {
  std::string endpoint;  // empty: $BACKSTOP_ENDPOINT, else 127.0.0.1:7025
  std::string output = "table";
  std::string timeout = "10s";  // per call, as ParseDuration reads it
  // Cluster mTLS files (flags, else $BACKSTOP_TLS_CA / _CERT / _KEY); all empty = plaintext.
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
  // Built by main from the files above before any command runs.
  std::shared_ptr<grpc::ChannelCredentials> credentials;

  bool json() const { return output == "json"; }
};

// The endpoint the options name (flag, then environment, then the default).
std::string Endpoint(const Options& options);

// The cluster TLS files the options name, flags first, then the environment.
ClusterTlsConfig TlsFiles(const Options& options);

// "backstopctl: <message>" on stderr.
void PrintError(std::string_view message);

// An AdminService client on one queue node. Reads are answered by that node. A mutation sent to
// a follower comes back UNAVAILABLE naming the leader (queue/leader_metadata.h): the client then
// repeats the call at the leader, a few hops at most, so any voter's address will do.
//
// Single-threaded: one command uses it from main's thread.
class AdminClient {
 public:
  explicit AdminClient(const Options& options);

  template <typename Request, typename Response>
  using Method = grpc::Status (admin::AdminService::Stub::*)(grpc::ClientContext*, const Request&,
                                                             Response*);

  // Whether a failed call prints its error (kQuiet: the caller looks at last_status()).
  enum class OnError { kReport, kQuiet };

  // Runs one call with the options' timeout (or `timeout` when longer, for calls that wait on
  // the cluster such as adding a voter). On failure prints the gRPC status message to stderr
  // (unless kQuiet) and returns false.
  template <typename Request, typename Response>
  bool Call(Method<Request, Response> method, const Request& request, Response* response,
            absl::Duration timeout = absl::ZeroDuration(), OnError on_error = OnError::kReport) {
    for (int hop = 0;; ++hop) {
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(absl::Now() + std::max(timeout, timeout_)));
      last_status_ = ((*stub_).*method)(&context, request, response);
      if (last_status_.ok()) {
        return true;
      }
      last_leader_ = LeaderNamed(context);
      if (hop < kMaxLeaderHops && FollowLeader()) {
        continue;
      }
      if (on_error == OnError::kReport) {
        ReportLast();
      }
      return false;
    }
  }

  const grpc::Status& last_status() const { return last_status_; }
  // Prints the last failure: endpoint, gRPC status message, and the leader it named.
  void ReportLast() const;

  // The node answering now (the leader after a redirect).
  const std::string& endpoint() const { return endpoint_; }

 private:
  static constexpr int kMaxLeaderHops = 3;

  void Connect(const std::string& endpoint);
  static std::string LeaderNamed(const grpc::ClientContext& context);
  // Switches to the leader the last refusal named; false when it named none (or this node).
  bool FollowLeader();

  const std::shared_ptr<grpc::ChannelCredentials> credentials_;
  absl::Duration timeout_;
  std::string endpoint_;
  std::unique_ptr<admin::AdminService::Stub> stub_;
  grpc::Status last_status_;
  std::string last_leader_;  // the leader's address the last failed call named, "" = none
};

// A protobuf message as one line of JSON: proto field names, default values included (so a
// count of 0 is there to read), 64-bit integers as JSON strings per the proto3 mapping.
std::string ProtoJson(const google::protobuf::Message& message);

// A message id (16 bytes) as the 32 hex digits operators use, "?" when malformed.
std::string IdText(const std::string& bytes);

// UTC "YYYY-MM-DD HH:MM:SS", "-" for 0.
std::string Millis(int64_t ms);

// Appends `text` as a JSON string literal.
void AppendJson(std::string& out, std::string_view text);

}  // namespace backstop::ctl
