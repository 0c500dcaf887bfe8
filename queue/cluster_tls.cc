#include "queue/cluster_tls.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <sstream>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <grpc/grpc_security_constants.h>
#include <grpcpp/security/tls_certificate_verifier.h>
#include <grpcpp/security/tls_credentials_options.h>

#include "common/status.h"
#include "common/tls.h"

namespace backstop::queue {
namespace {

// How often gRPC's watcher reads the published files: the delay between a reload and the first
// handshake that uses it.
constexpr unsigned kRefreshSeconds = 1;

struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
struct BioFree {
  void operator()(BIO* bio) const { BIO_free(bio); }
};
struct StoreFree {
  void operator()(X509_STORE* store) const { X509_STORE_free(store); }
};
struct StoreCtxFree {
  void operator()(X509_STORE_CTX* ctx) const { X509_STORE_CTX_free(ctx); }
};
struct StackFree {
  void operator()(STACK_OF(X509) * stack) const { sk_X509_pop_free(stack, X509_free); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;

std::string OpenSslReason() {
  const unsigned long code = ERR_get_error();
  ERR_clear_error();
  if (code == 0) {
    return "no PEM data";
  }
  char text[256];
  ERR_error_string_n(code, text, sizeof(text));
  return text;
}

absl::StatusOr<std::string> ReadPemFile(std::string_view what, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        fmt::format("cluster_tls: cannot read the {} \"{}\": {}", what, path, strerror(errno)));
  }
  std::ostringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

// Every certificate in `pem`, in order; an error when there is none.
absl::StatusOr<std::vector<X509Ptr>> ParseCertificates(std::string_view what,
                                                       const std::string& path,
                                                       const std::string& pem) {
  std::unique_ptr<BIO, BioFree> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  std::vector<X509Ptr> certificates;
  ERR_clear_error();
  while (X509* certificate = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
    certificates.emplace_back(certificate);
  }
  ERR_clear_error();  // the read that ends the loop always fails
  if (certificates.empty()) {
    return absl::InvalidArgumentError(
        fmt::format("cluster_tls: the {} \"{}\" holds no PEM certificate", what, path));
  }
  return certificates;
}

// What a publishable set is made of, after every check passed.
struct CheckedSet {
  std::string ca_pem;
  std::string identity_pem;  // certificate chain, then the key
  int64_t not_after = 0;
};

absl::StatusOr<CheckedSet> CheckFiles(const ClusterTlsConfig& config) {
  CheckedSet set;
  ASSIGN_OR_RETURN(set.ca_pem, ReadPemFile("CA bundle (ca)", config.ca));
  ASSIGN_OR_RETURN(std::string chain_pem, ReadPemFile("certificate (cert)", config.cert));
  ASSIGN_OR_RETURN(std::string key_pem, ReadPemFile("key (key)", config.key));
  ASSIGN_OR_RETURN(std::vector<X509Ptr> cas, ParseCertificates("CA bundle", config.ca, set.ca_pem));
  ASSIGN_OR_RETURN(std::vector<X509Ptr> chain,
                   ParseCertificates("certificate", config.cert, chain_pem));

  std::unique_ptr<BIO, BioFree> key_bio(
      BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size())));
  ERR_clear_error();
  std::unique_ptr<EVP_PKEY, PkeyFree> key(
      PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr));
  if (key == nullptr) {
    return absl::InvalidArgumentError(
        fmt::format("cluster_tls: the key \"{}\" is unreadable: {}", config.key, OpenSslReason()));
  }
  X509* leaf = chain.front().get();
  if (X509_check_private_key(leaf, key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        fmt::format("cluster_tls: the key \"{}\" does not match the certificate \"{}\"", config.key,
                    config.cert));
  }

  std::unique_ptr<X509_STORE, StoreFree> store(X509_STORE_new());
  for (const X509Ptr& ca : cas) {
    X509_STORE_add_cert(store.get(), ca.get());
  }
  std::unique_ptr<STACK_OF(X509), StackFree> intermediates(sk_X509_new_null());
  for (size_t i = 1; i < chain.size(); ++i) {
    X509_up_ref(chain[i].get());
    sk_X509_push(intermediates.get(), chain[i].get());
  }
  std::unique_ptr<X509_STORE_CTX, StoreCtxFree> verify(X509_STORE_CTX_new());
  X509_STORE_CTX_init(verify.get(), store.get(), leaf, intermediates.get());
  if (X509_verify_cert(verify.get()) != 1) {
    const int error = X509_STORE_CTX_get_error(verify.get());
    ERR_clear_error();
    return absl::InvalidArgumentError(
        fmt::format("cluster_tls: the certificate \"{}\" does not verify against the CA \"{}\": {}",
                    config.cert, config.ca, X509_verify_cert_error_string(error)));
  }
  ASSIGN_OR_RETURN(set.not_after, tls::NotAfter(leaf));
  set.identity_pem = chain_pem;
  if (!set.identity_pem.empty() && set.identity_pem.back() != '\n') {
    set.identity_pem.push_back('\n');
  }
  set.identity_pem.append(key_pem);
  return set;
}

// Replaces what `*fd` refers to with a new memfd holding `contents`, atomically for any reader
// that opens /proc/self/fd/<fd> (dup3 swaps the descriptor in one step).
absl::Status Publish(const std::string& contents, int* fd) {
  const int fresh = memfd_create("backstop-cluster-tls", MFD_CLOEXEC);
  if (fresh < 0) {
    return ErrnoToStatus(errno, "memfd_create for the cluster TLS material");
  }
  size_t written = 0;
  while (written < contents.size()) {
    const ssize_t n = write(fresh, contents.data() + written, contents.size() - written);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      const int error = errno;
      close(fresh);
      return ErrnoToStatus(error, "writing the cluster TLS material");
    }
    written += static_cast<size_t>(n);
  }
  if (*fd < 0) {
    *fd = fresh;
    return absl::OkStatus();
  }
  const int swapped = dup3(fresh, *fd, O_CLOEXEC);
  const int error = errno;
  close(fresh);
  return swapped < 0 ? ErrnoToStatus(error, "publishing the cluster TLS material")
                     : absl::OkStatus();
}

std::string FdPath(int fd) {
  return fmt::format("/proc/self/fd/{}", fd);
}

bool HasAdminMark(const std::string& pem) {
  std::unique_ptr<BIO, BioFree> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  X509Ptr certificate(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  ERR_clear_error();
  if (certificate == nullptr) {
    return false;
  }
  const X509_NAME* subject = X509_get_subject_name(certificate.get());
  for (int i = X509_NAME_get_index_by_NID(subject, NID_organizationalUnitName, -1); i >= 0;
       i = X509_NAME_get_index_by_NID(subject, NID_organizationalUnitName, i)) {
    const ASN1_STRING* value = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, i));
    const std::string_view text(reinterpret_cast<const char*>(ASN1_STRING_get0_data(value)),
                                static_cast<size_t>(ASN1_STRING_length(value)));
    if (text == kAdminOrganizationalUnit) {
      return true;
    }
  }
  return false;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ClusterCredentials>> ClusterCredentials::Load(
    const ClusterTlsConfig& config) {
  std::unique_ptr<ClusterCredentials> credentials(new ClusterCredentials());
  if (!config.enabled()) {
    return credentials;
  }
  ASSIGN_OR_RETURN(CheckedSet set, CheckFiles(config));
  RETURN_IF_ERROR(Publish(set.ca_pem, &credentials->ca_fd_));
  RETURN_IF_ERROR(Publish(set.identity_pem, &credentials->identity_fd_));
  credentials->not_after_ = set.not_after;
  credentials->provider_ = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      FdPath(credentials->identity_fd_), FdPath(credentials->identity_fd_),
      FdPath(credentials->ca_fd_), kRefreshSeconds);
  return credentials;
}

ClusterCredentials::~ClusterCredentials() {
  provider_.reset();  // its watcher thread reads the files: stop it first
  for (int fd : {ca_fd_, identity_fd_}) {
    if (fd >= 0) {
      close(fd);
    }
  }
}

std::shared_ptr<grpc::ServerCredentials> ClusterCredentials::server() const {
  if (provider_ == nullptr) {
    return grpc::InsecureServerCredentials();
  }
  grpc::experimental::TlsServerCredentialsOptions options(provider_);
  options.watch_root_certs();
  options.watch_identity_key_cert_pairs();
  options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  return grpc::experimental::TlsServerCredentials(options);
}

std::shared_ptr<grpc::ChannelCredentials> ClusterCredentials::channel() const {
  if (provider_ == nullptr) {
    return grpc::InsecureChannelCredentials();
  }
  grpc::experimental::TlsChannelCredentialsOptions options;
  options.set_certificate_provider(provider_);
  options.watch_root_certs();
  options.watch_identity_key_cert_pairs();
  options.set_verify_server_certs(true);  // the chain to the cluster CA
  options.set_check_call_host(false);     // no names: see the file comment
  options.set_certificate_verifier(std::make_shared<grpc::experimental::NoOpCertificateVerifier>());
  return grpc::experimental::TlsCredentials(options);
}

absl::Status ClusterCredentials::Reload(const ClusterTlsConfig& config) {
  if (config.enabled() != mutual_tls()) {
    return absl::FailedPreconditionError(
        "cluster_tls: switching between plaintext and mTLS needs a restart");
  }
  if (!config.enabled()) {
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(CheckedSet set, CheckFiles(config));
  RETURN_IF_ERROR(Publish(set.ca_pem, &ca_fd_));
  RETURN_IF_ERROR(Publish(set.identity_pem, &identity_fd_));
  not_after_ = set.not_after;
  return absl::OkStatus();
}

int64_t ClusterCredentials::certificate_not_after() const {
  return not_after_.load();
}

grpc::Status AuthorizeAdmin(const grpc::ServerContextBase& context, bool mutual_tls) {
  if (!mutual_tls) {
    return grpc::Status::OK;
  }
  const std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth != nullptr) {
    for (const grpc::string_ref& pem : auth->FindPropertyValues(GRPC_X509_PEM_CERT_PROPERTY_NAME)) {
      if (HasAdminMark(std::string(pem.data(), pem.size()))) {
        return grpc::Status::OK;
      }
    }
  }
  return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                      fmt::format("this call changes the queue or the cluster and needs a client "
                                  "certificate marked for admin use (subject OU={})",
                                  kAdminOrganizationalUnit));
}

}  // namespace backstop::queue
