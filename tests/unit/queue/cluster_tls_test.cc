#include "queue/cluster_tls.h"

#include <stdlib.h>

#include <chrono>
#include <ctime>
#include <filesystem>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/admin.grpc.pb.h"
#include "queue/queue_client.h"
#include "tests/unit/support/test_pki.h"

namespace backstop::queue {
namespace {

using test::CertPem;
using test::Credentials;
using test::Issue;
using test::KeyPem;
using test::Kind;
using test::WriteFile;
using ::testing::HasSubstr;

constexpr int64_t kDay = 24 * 3600;

// Reads are open; Delete is an admin mutation (what AdminServiceImpl does, without a node).
class FakeAdmin final : public admin::AdminService::CallbackService {
 public:
  explicit FakeAdmin(bool mutual_tls) : mutual_tls_(mutual_tls) {}
  grpc::ServerUnaryReactor* GetClusterStatus(grpc::CallbackServerContext* context,
                                             const admin::GetClusterStatusRequest* /*request*/,
                                             admin::ClusterStatus* response) override {
    response->set_node_id(7);
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  grpc::ServerUnaryReactor* Delete(grpc::CallbackServerContext* context,
                                   const DeleteEntries* /*request*/,
                                   SelectionResult* /*response*/) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(AuthorizeAdmin(*context, mutual_tls_));
    return reactor;
  }

 private:
  const bool mutual_tls_;
};

class ClusterTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/backstop_cluster_tls_test.XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    dir_ = pattern;
    const int64_t now = time(nullptr);
    ca_ = Issue(Kind::kCa, "Cluster CA", nullptr, now + 400 * kDay);
    other_ca_ = Issue(Kind::kCa, "Some other CA", nullptr, now + 400 * kDay);
    WriteFile(dir_ / "ca.pem", CertPem(ca_));
    WriteFile(dir_ / "other_ca.pem", CertPem(other_ca_));
    node_ = Files("node", Kind::kNode, &ca_, now + 90 * kDay);
  }
  void TearDown() override {
    if (server_ != nullptr) {
      server_->Shutdown(std::chrono::system_clock::now());
    }
    std::filesystem::remove_all(dir_);
  }

  // Writes a key and certificate for `name` and returns the [cluster_tls] naming them.
  ClusterTlsConfig Files(const std::string& name, Kind kind, const Credentials* issuer,
                         int64_t not_after = 0, const char* organizational_unit = nullptr,
                         const std::string& ca_file = "ca.pem") {
    Credentials made = Issue(kind, name, issuer, not_after, organizational_unit);
    WriteFile(dir_ / (name + ".pem"), CertPem(made));
    WriteFile(dir_ / (name + ".key"), KeyPem(made));
    return ClusterTlsConfig{.ca = (dir_ / ca_file).string(),
                            .cert = (dir_ / (name + ".pem")).string(),
                            .key = (dir_ / (name + ".key")).string()};
  }

  std::unique_ptr<ClusterCredentials> MustLoad(const ClusterTlsConfig& config) {
    absl::StatusOr<std::unique_ptr<ClusterCredentials>> loaded = ClusterCredentials::Load(config);
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    return loaded.ok() ? *std::move(loaded) : nullptr;
  }

  void StartServer(const ClusterCredentials& credentials) {
    service_ = std::make_unique<FakeAdmin>(credentials.mutual_tls());
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", credentials.server(), &port_);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_NE(port_, 0);
  }

  // One call on a fresh channel (a fresh handshake).
  grpc::Status CallStatus(std::shared_ptr<grpc::ChannelCredentials> channel_credentials) {
    auto stub = admin::AdminService::NewStub(
        grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port_),
                                  std::move(channel_credentials), QueueChannelArguments()));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    admin::GetClusterStatusRequest request;
    admin::ClusterStatus response;
    return stub->GetClusterStatus(&context, request, &response);
  }
  grpc::Status CallDelete(std::shared_ptr<grpc::ChannelCredentials> channel_credentials) {
    auto stub = admin::AdminService::NewStub(
        grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port_),
                                  std::move(channel_credentials), QueueChannelArguments()));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    DeleteEntries request;
    SelectionResult response;
    return stub->Delete(&context, request, &response);
  }

  // Retries fresh calls until one succeeds or `deadline` passes: a reload reaches gRPC within
  // its one-second refresh.
  bool EventuallyAccepted(const std::shared_ptr<grpc::ChannelCredentials>& credentials) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline) {
      if (CallStatus(credentials).ok()) {
        return true;
      }
    }
    return false;
  }

  std::filesystem::path dir_;
  Credentials ca_;
  Credentials other_ca_;
  ClusterTlsConfig node_;
  std::unique_ptr<FakeAdmin> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

TEST_F(ClusterTlsTest, IsPlaintextWhenNothingIsConfigured) {
  std::unique_ptr<ClusterCredentials> credentials = MustLoad(ClusterTlsConfig{});
  ASSERT_NE(credentials, nullptr);
  EXPECT_FALSE(credentials->mutual_tls());
  EXPECT_EQ(credentials->certificate_not_after(), 0);
  StartServer(*credentials);
  EXPECT_TRUE(CallStatus(credentials->channel()).ok());
  EXPECT_TRUE(CallDelete(credentials->channel()).ok()) << "plaintext has no admin identities";
}

TEST_F(ClusterTlsTest, NamesAMissingFile) {
  ClusterTlsConfig config = node_;
  config.key = (dir_ / "missing.key").string();
  absl::StatusOr<std::unique_ptr<ClusterCredentials>> loaded = ClusterCredentials::Load(config);
  ASSERT_FALSE(loaded.ok());
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("missing.key"));
}

TEST_F(ClusterTlsTest, RefusesAKeyThatDoesNotMatchTheCertificate) {
  ClusterTlsConfig other = Files("other", Kind::kNode, &ca_);
  ClusterTlsConfig config = node_;
  config.key = other.key;
  absl::StatusOr<std::unique_ptr<ClusterCredentials>> loaded = ClusterCredentials::Load(config);
  ASSERT_FALSE(loaded.ok());
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("does not match"));
}

TEST_F(ClusterTlsTest, RefusesACertificateFromAnotherCa) {
  ClusterTlsConfig stranger = Files("stranger", Kind::kNode, &other_ca_);
  absl::StatusOr<std::unique_ptr<ClusterCredentials>> loaded = ClusterCredentials::Load(stranger);
  ASSERT_FALSE(loaded.ok());
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("does not verify against the CA"));
}

TEST_F(ClusterTlsTest, RefusesAnExpiredCertificate) {
  ClusterTlsConfig expired = Files("expired", Kind::kNode, &ca_, time(nullptr) - 60);
  absl::StatusOr<std::unique_ptr<ClusterCredentials>> loaded = ClusterCredentials::Load(expired);
  ASSERT_FALSE(loaded.ok());
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("expired"));
}

TEST_F(ClusterTlsTest, MembersOfTheClusterCaTalkBothWays) {
  std::unique_ptr<ClusterCredentials> server = MustLoad(node_);
  ASSERT_NE(server, nullptr);
  EXPECT_TRUE(server->mutual_tls());
  StartServer(*server);
  std::unique_ptr<ClusterCredentials> client = MustLoad(Files("client", Kind::kNode, &ca_));
  ASSERT_NE(client, nullptr);
  EXPECT_TRUE(CallStatus(client->channel()).ok());
}

TEST_F(ClusterTlsTest, RefusesAClientWithACertificateFromAnotherCa) {
  std::unique_ptr<ClusterCredentials> server = MustLoad(node_);
  ASSERT_NE(server, nullptr);
  StartServer(*server);
  // A self-consistent set from another CA (it trusts our server's CA, so only our check of its
  // certificate can fail the handshake).
  ClusterTlsConfig stranger = Files("stranger", Kind::kNode, &other_ca_);
  WriteFile(dir_ / "both.pem", CertPem(ca_) + CertPem(other_ca_));
  stranger.ca = (dir_ / "both.pem").string();
  std::unique_ptr<ClusterCredentials> client = MustLoad(stranger);
  ASSERT_NE(client, nullptr);
  const grpc::Status status = CallStatus(client->channel());
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
}

TEST_F(ClusterTlsTest, RefusesAClientWithoutACertificate) {
  std::unique_ptr<ClusterCredentials> server = MustLoad(node_);
  ASSERT_NE(server, nullptr);
  StartServer(*server);
  EXPECT_FALSE(CallStatus(grpc::InsecureChannelCredentials()).ok());
  // TLS that trusts the cluster CA but presents no certificate.
  grpc::experimental::TlsChannelCredentialsOptions anonymous;
  anonymous.set_certificate_provider(
      std::make_shared<grpc::experimental::StaticDataCertificateProvider>(CertPem(ca_)));
  anonymous.watch_root_certs();
  anonymous.set_check_call_host(false);
  anonymous.set_certificate_verifier(
      std::make_shared<grpc::experimental::NoOpCertificateVerifier>());
  const grpc::Status status = CallStatus(grpc::experimental::TlsCredentials(anonymous));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
}

TEST_F(ClusterTlsTest, AClientRefusesAServerFromAnotherCa) {
  ClusterTlsConfig stranger = Files("stranger", Kind::kNode, &other_ca_);
  WriteFile(dir_ / "both.pem", CertPem(ca_) + CertPem(other_ca_));
  stranger.ca = (dir_ / "both.pem").string();
  std::unique_ptr<ClusterCredentials> server = MustLoad(stranger);
  ASSERT_NE(server, nullptr);
  StartServer(*server);
  std::unique_ptr<ClusterCredentials> client = MustLoad(node_);
  ASSERT_NE(client, nullptr);
  EXPECT_EQ(CallStatus(client->channel()).error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(ClusterTlsTest, AdminCallsNeedACertificateMarkedForAdminUse) {
  std::unique_ptr<ClusterCredentials> server = MustLoad(node_);
  ASSERT_NE(server, nullptr);
  StartServer(*server);
  std::unique_ptr<ClusterCredentials> viewer =
      MustLoad(Files("viewer", Kind::kClient, &ca_, 0, "ops"));
  std::unique_ptr<ClusterCredentials> admin =
      MustLoad(Files("admin", Kind::kClient, &ca_, 0, "backstop-admin"));
  ASSERT_NE(viewer, nullptr);
  ASSERT_NE(admin, nullptr);

  EXPECT_TRUE(CallStatus(viewer->channel()).ok()) << "reads are open to cluster certificates";
  const grpc::Status refused = CallDelete(viewer->channel());
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(refused.error_message(), HasSubstr("OU=backstop-admin"));
  EXPECT_EQ(CallDelete(server->channel()).error_code(), grpc::StatusCode::PERMISSION_DENIED)
      << "node certificates are not admin certificates";
  EXPECT_TRUE(CallDelete(admin->channel()).ok());
}

TEST_F(ClusterTlsTest, ReloadPublishesANewCertificateAndKeepsServing) {
  std::unique_ptr<ClusterCredentials> server = MustLoad(node_);
  ASSERT_NE(server, nullptr);
  StartServer(*server);
  const int64_t first_not_after = server->certificate_not_after();

  // Rotate to a new CA: the server's new certificate and trust come from it.
  Credentials new_ca = Issue(Kind::kCa, "Next cluster CA");
  WriteFile(dir_ / "new_ca.pem", CertPem(new_ca));
  const int64_t renewed_until = time(nullptr) + 200 * kDay;
  ClusterTlsConfig renewed =
      Files("renewed", Kind::kNode, &new_ca, renewed_until, nullptr, "new_ca.pem");
  std::unique_ptr<ClusterCredentials> new_client =
      MustLoad(Files("new_client", Kind::kNode, &new_ca, 0, nullptr, "new_ca.pem"));
  ASSERT_NE(new_client, nullptr);
  EXPECT_FALSE(CallStatus(new_client->channel()).ok()) << "not trusted before the reload";

  ASSERT_TRUE(server->Reload(renewed).ok());
  EXPECT_NE(server->certificate_not_after(), first_not_after);
  EXPECT_EQ(server->certificate_not_after(), renewed_until);
  EXPECT_TRUE(EventuallyAccepted(new_client->channel()));
}

TEST_F(ClusterTlsTest, AFailedReloadKeepsTheCertificatesInForce) {
  std::unique_ptr<ClusterCredentials> server = MustLoad(node_);
  ASSERT_NE(server, nullptr);
  StartServer(*server);
  const int64_t not_after = server->certificate_not_after();
  ClusterTlsConfig broken = node_;
  broken.key = Files("unrelated", Kind::kNode, &ca_).key;

  const absl::Status status = server->Reload(broken);
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(std::string(status.message()), HasSubstr("does not match"));
  EXPECT_EQ(server->certificate_not_after(), not_after);
  std::unique_ptr<ClusterCredentials> client = MustLoad(Files("client", Kind::kNode, &ca_));
  ASSERT_NE(client, nullptr);
  EXPECT_TRUE(CallStatus(client->channel()).ok());
}

TEST_F(ClusterTlsTest, SwitchingBetweenPlaintextAndTlsNeedsARestart) {
  std::unique_ptr<ClusterCredentials> plaintext = MustLoad(ClusterTlsConfig{});
  ASSERT_NE(plaintext, nullptr);
  EXPECT_THAT(std::string(plaintext->Reload(node_).message()), HasSubstr("restart"));
  std::unique_ptr<ClusterCredentials> tls = MustLoad(node_);
  ASSERT_NE(tls, nullptr);
  EXPECT_THAT(std::string(tls->Reload(ClusterTlsConfig{}).message()), HasSubstr("restart"));
}

}  // namespace
}  // namespace backstop::queue
