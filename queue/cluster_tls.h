#pragma once

// Cluster mTLS ([cluster_tls]): every gRPC connection between Backstop processes, and from
// backstopctl, runs TLS with certificates from one dedicated cluster CA, checked both ways. A
// peer or client without a certificate from that CA fails the handshake. Any certificate from
// the CA makes its holder a cluster member; the admin calls that change the queue or the cluster
// additionally need a certificate marked for admin use (AuthorizeAdmin below).
//
// Server names are not checked: the CA is the cluster's own, so its signature is the identity,
// and nodes are addressed by whatever name or IP the configuration or Kubernetes gives them.
//
// Reload (SIGHUP): the files are read and checked first — the key matches the certificate, the
// certificate chains to the CA, nothing has expired — and only a good set is published to gRPC,
// which reads the published material at its next handshake (within a second); connections
// already up keep going. A bad set is refused with the reason and the set in force stays.
// Published material lives in anonymous memory files (memfd), never on disk.

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include <grpcpp/grpcpp.h>
#include <grpcpp/security/tls_certificate_provider.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/config.h"

namespace backstop::queue {

// The subject organizational unit (OU) that marks a certificate for admin use.
inline constexpr std::string_view kAdminOrganizationalUnit = "backstop-admin";

// Owns the published certificate material and the gRPC credentials built on it, for the whole
// process. Reload() runs on the main thread (signals); the accessors on any thread.
class ClusterCredentials {
 public:
  // Plaintext credentials when `config` is all empty; else checks and publishes the files.
  static absl::StatusOr<std::unique_ptr<ClusterCredentials>> Load(const ClusterTlsConfig& config);
  ~ClusterCredentials();
  ClusterCredentials(const ClusterCredentials&) = delete;
  ClusterCredentials& operator=(const ClusterCredentials&) = delete;

  bool mutual_tls() const { return provider_ != nullptr; }
  std::shared_ptr<grpc::ServerCredentials> server() const;
  std::shared_ptr<grpc::ChannelCredentials> channel() const;
  // Checks the files `config` names and publishes them. Switching between plaintext and mTLS
  // needs a restart and is refused.
  absl::Status Reload(const ClusterTlsConfig& config);
  // Not-after of this process's certificate (seconds since the epoch); 0 in plaintext.
  int64_t certificate_not_after() const;

 private:
  ClusterCredentials() = default;

  // Two memfds whose /proc/self/fd paths gRPC's file watcher reads: the CA bundle, and the
  // certificate chain followed by its key (one file, so a swap never pairs a key with another
  // certificate).
  int ca_fd_ = -1;
  int identity_fd_ = -1;
  std::shared_ptr<grpc::experimental::CertificateProviderInterface> provider_;
  std::atomic<int64_t> not_after_{0};
};

// Whether the caller of a mutating admin RPC may make it: with plaintext credentials every
// caller may (plaintext is for loopback and tests); with mTLS only a client certificate whose
// subject carries OU=backstop-admin. PERMISSION_DENIED otherwise, saying what is needed.
grpc::Status AuthorizeAdmin(const grpc::ServerContextBase& context, bool mutual_tls);

}  // namespace backstop::queue
