#include "common/tls.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "gtest/gtest.h"
#include "tests/unit/support/test_pki.h"

extern char** environ;

namespace backstop::tls {
namespace {

using test::CertPem;
using test::Credentials;
using test::Issue;
using test::KeyPem;
using test::Kind;
using test::WriteFile;

constexpr char kHostname[] = "mx.example.test";
constexpr int64_t kDay = 24 * 3600;

// The test PKI, made once: a CA with a server certificate for kHostname, and an unrelated CA
// with its own certificate for the same name.
class TlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char pattern[] = "/tmp/backstop_tls_test.XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    dir_ = new std::filesystem::path(pattern);
    not_after_ = time(nullptr) + 30 * kDay;
    Credentials ca = Issue(Kind::kCa, "Backstop Test CA", nullptr, not_after_ + kDay);
    Credentials server = Issue(Kind::kServer, kHostname, &ca, not_after_);
    Credentials other_ca = Issue(Kind::kCa, "Other CA", nullptr, not_after_ + kDay);
    WriteFile(Path("ca.pem"), CertPem(ca));
    WriteFile(Path("server.pem"), CertPem(server));
    WriteFile(Path("server.key"), KeyPem(server));
    WriteFile(Path("other_ca.pem"), CertPem(other_ca));
    WriteFile(Path("other.key"), KeyPem(other_ca));
  }

  static void TearDownTestSuite() {
    std::filesystem::remove_all(*dir_);
    delete dir_;
    dir_ = nullptr;
  }

  static std::string Path(const std::string& name) { return (*dir_ / name).string(); }

  static ServerContextOptions ServerOptions() {
    return {.cert_file = Path("server.pem"), .key_file = Path("server.key")};
  }

  static std::shared_ptr<const Context> ServerContext() {
    absl::StatusOr<std::shared_ptr<const Context>> context = Context::Server(ServerOptions());
    EXPECT_TRUE(context.ok()) << context.status();
    return context.ok() ? *context : nullptr;
  }

  static std::shared_ptr<const Context> ClientContext(ClientContextOptions options) {
    absl::StatusOr<std::shared_ptr<const Context>> context = Context::Client(options);
    EXPECT_TRUE(context.ok()) << context.status();
    return context.ok() ? *context : nullptr;
  }

  // A client of a fresh server context, and the server session.
  void Connect(const ClientContextOptions& options, const std::string& server_name) {
    absl::StatusOr<std::unique_ptr<Session>> server = Session::Server(ServerContext());
    ASSERT_TRUE(server.ok()) << server.status();
    absl::StatusOr<std::unique_ptr<Session>> client =
        Session::Client(ClientContext(options), server_name);
    ASSERT_TRUE(client.ok()) << client.status();
    server_ = *std::move(server);
    client_ = *std::move(client);
  }

  static void Transfer(Session& from, Session& to) { to.FeedCiphertext(from.TakeCiphertext()); }

  // Runs both handshakes, flight by flight; the first error is returned.
  absl::Status Handshake() {
    for (int flight = 0; flight < 8; ++flight) {
      RETURN_IF_ERROR(client_->Handshake());
      Transfer(*client_, *server_);
      RETURN_IF_ERROR(server_->Handshake());
      Transfer(*server_, *client_);
      if (client_->handshake_done() && server_->handshake_done()) {
        return absl::OkStatus();
      }
    }
    return absl::DeadlineExceededError("the handshake did not finish");
  }

  // Sends `bytes` from `from` to `to` and returns what `to` decrypted.
  static std::string Send(Session& from, Session& to, const std::string& bytes) {
    EXPECT_TRUE(from.WritePlaintext(bytes).ok());
    Transfer(from, to);
    std::string received;
    bool closed = false;
    absl::Status status = to.ReadPlaintext(&received, &closed);
    EXPECT_TRUE(status.ok()) << status;
    EXPECT_FALSE(closed);
    return received;
  }

  static inline std::filesystem::path* dir_ = nullptr;
  static inline int64_t not_after_ = 0;
  std::unique_ptr<Session> server_;
  std::unique_ptr<Session> client_;
};

TEST_F(TlsTest, NegotiatesTls13ByDefault) {
  Connect({.ca_file = Path("ca.pem")}, kHostname);
  ASSERT_TRUE(Handshake().ok());
  EXPECT_EQ(server_->protocol(), "TLSv1.3");
  EXPECT_EQ(client_->protocol(), "TLSv1.3");
  EXPECT_EQ(server_->cipher(), client_->cipher());
  EXPECT_EQ(server_->cipher().rfind("TLS_", 0), 0u) << server_->cipher();
}

TEST_F(TlsTest, NegotiatesTls12WhenTheClientCapsTheVersion) {
  Connect({.ca_file = Path("ca.pem"), .max_version = TlsVersion::k1_2}, kHostname);
  ASSERT_TRUE(Handshake().ok());
  EXPECT_EQ(server_->protocol(), "TLSv1.2");
  EXPECT_EQ(client_->protocol(), "TLSv1.2");
  // Only forward-secret AEAD suites are offered by the server.
  EXPECT_EQ(server_->cipher(), "ECDHE-ECDSA-AES256-GCM-SHA384");
  EXPECT_EQ(client_->cipher(), server_->cipher());
}

TEST_F(TlsTest, IsNotDoneBeforeTheHandshake) {
  Connect({}, kHostname);
  EXPECT_FALSE(client_->handshake_done());
  EXPECT_EQ(client_->protocol(), "");
  EXPECT_FALSE(client_->has_ciphertext());
  ASSERT_TRUE(client_->Handshake().ok());
  EXPECT_TRUE(client_->has_ciphertext());  // the ClientHello
  EXPECT_FALSE(client_->handshake_done());
  EXPECT_EQ(client_->WritePlaintext("early").code(), absl::StatusCode::kFailedPrecondition);
}

class TlsVersionTest : public TlsTest, public ::testing::WithParamInterface<TlsVersion> {};

TEST_P(TlsVersionTest, ExchangesOneMebibyteEachWay) {
  Connect({.ca_file = Path("ca.pem"), .max_version = GetParam()}, kHostname);
  ASSERT_TRUE(Handshake().ok());
  std::string upload(1 << 20, '\0');
  for (size_t i = 0; i < upload.size(); ++i) {
    upload[i] = static_cast<char>(i * 7 + i / 4096);
  }
  const std::string download(upload.rbegin(), upload.rend());
  EXPECT_EQ(Send(*client_, *server_, upload), upload);
  EXPECT_EQ(Send(*server_, *client_, download), download);
  EXPECT_EQ(Send(*client_, *server_, "QUIT\r\n"), "QUIT\r\n");
}

TEST_P(TlsVersionTest, ReportsCloseNotifyAsPeerClosedAfterTheLastBytes) {
  Connect({.ca_file = Path("ca.pem"), .max_version = GetParam()}, kHostname);
  ASSERT_TRUE(Handshake().ok());
  ASSERT_TRUE(client_->WritePlaintext("QUIT\r\n").ok());
  client_->Close();
  Transfer(*client_, *server_);
  std::string received;
  bool closed = false;
  ASSERT_TRUE(server_->ReadPlaintext(&received, &closed).ok());
  EXPECT_EQ(received, "QUIT\r\n");
  EXPECT_TRUE(closed);
}

TEST_P(TlsVersionTest, WaitsForTheRestOfARecord) {
  Connect({.ca_file = Path("ca.pem"), .max_version = GetParam()}, kHostname);
  ASSERT_TRUE(Handshake().ok());
  ASSERT_TRUE(client_->WritePlaintext("EHLO client.example\r\n").ok());
  const std::string record = client_->TakeCiphertext();
  std::string received;
  bool closed = false;
  for (size_t i = 0; i + 1 < record.size(); ++i) {
    server_->FeedCiphertext(record.substr(i, 1));
    ASSERT_TRUE(server_->ReadPlaintext(&received, &closed).ok());
    ASSERT_EQ(received, "") << "after " << i + 1 << " bytes";
  }
  server_->FeedCiphertext(record.substr(record.size() - 1));
  ASSERT_TRUE(server_->ReadPlaintext(&received, &closed).ok());
  EXPECT_EQ(received, "EHLO client.example\r\n");
  EXPECT_FALSE(closed);
}

INSTANTIATE_TEST_SUITE_P(Tls, TlsVersionTest, ::testing::Values(TlsVersion::k1_2, TlsVersion::k1_3),
                         [](const ::testing::TestParamInfo<TlsVersion>& param) {
                           return param.param == TlsVersion::k1_2 ? "Tls12" : "Tls13";
                         });

TEST_F(TlsTest, VerifiesThePeerWithTheRightCaAndHostname) {
  Connect({.ca_file = Path("ca.pem"), .verify_peer = true}, kHostname);
  ASSERT_TRUE(Handshake().ok());
  EXPECT_TRUE(client_->peer_verified());
  EXPECT_FALSE(server_->peer_verified());  // no client certificates
}

TEST_F(TlsTest, FailsTheHandshakeOnAWrongHostnameWhenVerifying) {
  Connect({.ca_file = Path("ca.pem"), .verify_peer = true}, "other.example.test");
  absl::Status status = Handshake();
  EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << status;
  EXPECT_NE(std::string(status.message()).find("hostname mismatch"), std::string::npos) << status;
  EXPECT_FALSE(client_->handshake_done());
  EXPECT_FALSE(client_->peer_verified());
  // The alert reaches the server, whose handshake fails too.
  Transfer(*client_, *server_);
  EXPECT_FALSE(server_->Handshake().ok());
}

TEST_F(TlsTest, FailsTheHandshakeOnAnUnknownCaWhenVerifying) {
  Connect({.ca_file = Path("other_ca.pem"), .verify_peer = true}, kHostname);
  absl::Status status = Handshake();
  EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << status;
  EXPECT_NE(std::string(status.message()).find("unable to get local issuer certificate"),
            std::string::npos)
      << status;
}

TEST_F(TlsTest, OpportunisticClientAcceptsAnUnverifiablePeer) {
  Connect({.ca_file = Path("ca.pem"), .verify_peer = false}, "other.example.test");
  ASSERT_TRUE(Handshake().ok());
  EXPECT_FALSE(client_->peer_verified());
  EXPECT_EQ(Send(*client_, *server_, "hello"), "hello");
}

TEST_F(TlsTest, OpportunisticClientStillSaysWhenThePeerVerified) {
  Connect({.ca_file = Path("ca.pem"), .verify_peer = false}, kHostname);
  ASSERT_TRUE(Handshake().ok());
  EXPECT_TRUE(client_->peer_verified());
}

TEST_F(TlsTest, RejectsGarbageDuringTheHandshake) {
  Connect({}, kHostname);
  server_->FeedCiphertext("EHLO client.example\r\n");
  absl::Status status = server_->Handshake();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_NE(std::string(status.message()).find("SSL routines"), std::string::npos) << status;
  EXPECT_FALSE(server_->handshake_done());
  // Later calls keep failing instead of touching a dead SSL object.
  EXPECT_FALSE(server_->Handshake().ok());
  server_->Close();
}

TEST_F(TlsTest, RejectsGarbageAfterTheHandshake) {
  Connect({}, kHostname);
  ASSERT_TRUE(Handshake().ok());
  // An application-data record header with a body that does not decrypt.
  server_->FeedCiphertext(std::string("\x17\x03\x03\x00\x20", 5) + std::string(32, 'x'));
  std::string received;
  bool closed = false;
  absl::Status status = server_->ReadPlaintext(&received, &closed);
  EXPECT_FALSE(status.ok());
  EXPECT_FALSE(closed);
  EXPECT_TRUE(server_->has_ciphertext());  // the fatal alert for the peer
  EXPECT_EQ(server_->WritePlaintext("250 OK\r\n").code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(TlsTest, SessionsNeedAContextOfTheirRole) {
  absl::StatusOr<std::shared_ptr<const Context>> client_context = Context::Client({});
  ASSERT_TRUE(client_context.ok()) << client_context.status();
  EXPECT_FALSE(Session::Server(*client_context).ok());
  EXPECT_FALSE(Session::Client(ServerContext(), kHostname).ok());
  EXPECT_FALSE(Session::Server(nullptr).ok());
  EXPECT_FALSE(Session::Client(*Context::Client({.ca_file = "", .verify_peer = true}), "").ok());
}

// A raw OpenSSL client over memory BIOs, for what Session does not expose: asking the server for
// a KeyUpdate.
class RawClient {
 public:
  RawClient() : ctx_(SSL_CTX_new(TLS_client_method())) {
    SSL_CTX_set_min_proto_version(ctx_, TLS1_3_VERSION);
    ssl_ = SSL_new(ctx_);
    in_ = BIO_new(BIO_s_mem());
    out_ = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(in_, -1);
    SSL_set_bio(ssl_, in_, out_);
    SSL_set_connect_state(ssl_);
  }
  ~RawClient() {
    SSL_free(ssl_);
    SSL_CTX_free(ctx_);
  }
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  void Feed(const std::string& bytes) {
    BIO_write(in_, bytes.data(), static_cast<int>(bytes.size()));
  }
  std::string Take() {
    std::string bytes(BIO_ctrl_pending(out_), '\0');
    BIO_read(out_, bytes.data(), static_cast<int>(bytes.size()));
    return bytes;
  }
  SSL* ssl() { return ssl_; }

  // Reads what decrypts; 0-length records and post-handshake messages are consumed.
  std::string Read() {
    std::string text;
    char buffer[4096];
    size_t read = 0;
    while (SSL_read_ex(ssl_, buffer, sizeof(buffer), &read) == 1) {
      text.append(buffer, read);
    }
    return text;
  }

 private:
  SSL_CTX* ctx_;
  SSL* ssl_;
  BIO* in_;
  BIO* out_;
};

// Number of TLS records in `bytes` (a whole number of them).
int CountRecords(std::string_view bytes) {
  int records = 0;
  while (bytes.size() >= 5) {
    const size_t length = (static_cast<uint8_t>(bytes[3]) << 8) | static_cast<uint8_t>(bytes[4]);
    bytes.remove_prefix(std::min(bytes.size(), 5 + length));
    ++records;
  }
  return records;
}

TEST_F(TlsTest, AnswersAKeyUpdateBeforeItsNextRecord) {
  absl::StatusOr<std::unique_ptr<Session>> server = Session::Server(ServerContext());
  ASSERT_TRUE(server.ok()) << server.status();
  RawClient client;
  for (int flight = 0; flight < 4 && !(*server)->handshake_done(); ++flight) {
    SSL_do_handshake(client.ssl());
    (*server)->FeedCiphertext(client.Take());
    ASSERT_TRUE((*server)->Handshake().ok());
    client.Feed((*server)->TakeCiphertext());
  }
  ASSERT_TRUE((*server)->handshake_done());
  ASSERT_EQ(SSL_do_handshake(client.ssl()), 1);
  EXPECT_EQ(client.Read(), "");  // consumes the session tickets

  ASSERT_EQ(SSL_key_update(client.ssl(), SSL_KEY_UPDATE_REQUESTED), 1);
  ASSERT_EQ(SSL_write(client.ssl(), "ping", 4), 4);  // sends the KeyUpdate, then "ping"
  (*server)->FeedCiphertext(client.Take());
  std::string received;
  bool closed = false;
  ASSERT_TRUE((*server)->ReadPlaintext(&received, &closed).ok());
  EXPECT_EQ(received, "ping");
  ASSERT_TRUE((*server)->WritePlaintext("pong").ok());
  const std::string reply = (*server)->TakeCiphertext();
  EXPECT_EQ(CountRecords(reply), 2);  // the server's KeyUpdate, then "pong" under the new key
  client.Feed(reply);
  EXPECT_EQ(client.Read(), "pong");
}

class TlsContextTest : public TlsTest {};

// The error must name `text` (a file), so that the operator knows what to fix.
void ExpectErrorMentions(const absl::Status& status, const std::string& text) {
  EXPECT_FALSE(status.ok());
  EXPECT_NE(std::string(status.message()).find(text), std::string::npos) << status;
}

TEST_F(TlsContextTest, ReportsTheLeafNotAfter) {
  EXPECT_EQ(ServerContext()->certificate_not_after(), not_after_);
  EXPECT_EQ(ClientContext({})->certificate_not_after(), 0);
}

TEST_F(TlsContextTest, NamesAMissingCertificateFile) {
  ExpectErrorMentions(
      Context::Server({.cert_file = Path("missing.pem"), .key_file = Path("server.key")}).status(),
      Path("missing.pem"));
}

TEST_F(TlsContextTest, NamesAMissingKeyFile) {
  ExpectErrorMentions(
      Context::Server({.cert_file = Path("server.pem"), .key_file = Path("missing.key")}).status(),
      Path("missing.key"));
}

TEST_F(TlsContextTest, RejectsAKeyThatDoesNotMatchTheCertificate) {
  const absl::Status status =
      Context::Server({.cert_file = Path("server.pem"), .key_file = Path("other.key")}).status();
  ExpectErrorMentions(status, "does not match");
  ExpectErrorMentions(status, Path("other.key"));
  ExpectErrorMentions(status, Path("server.pem"));
}

TEST_F(TlsContextTest, RejectsAFileThatIsNotPem) {
  WriteFile(Path("garbage.pem"), "not a certificate\n");
  ExpectErrorMentions(
      Context::Server({.cert_file = Path("garbage.pem"), .key_file = Path("server.key")}).status(),
      Path("garbage.pem"));
}

TEST_F(TlsContextTest, NamesAMissingCaFile) {
  ExpectErrorMentions(
      Context::Client({.ca_file = Path("missing_ca.pem"), .verify_peer = true}).status(),
      Path("missing_ca.pem"));
}

class TlsReloadableContextTest : public TlsTest {
 protected:
  void SetUp() override {
    ca_ = Issue(Kind::kCa, "Reload CA", nullptr, now_ + 400 * kDay);
    cert_file_ = Path("reload.pem");
    key_file_ = Path("reload.key");
    reloadable_ = std::make_unique<ReloadableContext>(
        ServerContextOptions{.cert_file = cert_file_, .key_file = key_file_});
  }
  void TearDown() override {
    std::filesystem::remove(cert_file_);
    std::filesystem::remove(key_file_);
  }
  // Installs a new server certificate expiring at `not_after`.
  void WriteCertificate(int64_t not_after) {
    Credentials server = Issue(Kind::kServer, kHostname, &ca_, not_after);
    WriteFile(cert_file_, CertPem(server));
    WriteFile(key_file_, KeyPem(server));
  }
  // Installs a certificate and reloads; returns the context now in force.
  std::shared_ptr<const Context> InstallCertificate(int64_t not_after) {
    WriteCertificate(not_after);
    absl::Status status = reloadable_->Reload();
    EXPECT_TRUE(status.ok()) << status;
    std::shared_ptr<const Context> current = reloadable_->Current();
    EXPECT_NE(current, nullptr);
    return current;
  }

  const int64_t now_ = time(nullptr);
  Credentials ca_;
  std::string cert_file_;
  std::string key_file_;
  std::unique_ptr<ReloadableContext> reloadable_;
};

TEST_F(TlsReloadableContextTest, IsEmptyBeforeTheFirstReload) {
  EXPECT_EQ(reloadable_->Current(), nullptr);
  ExpectErrorMentions(reloadable_->Reload(), cert_file_);
  EXPECT_EQ(reloadable_->Current(), nullptr);
}

TEST_F(TlsReloadableContextTest, PicksUpANewCertificate) {
  std::shared_ptr<const Context> first = InstallCertificate(now_ + 10 * kDay);
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(first->certificate_not_after(), now_ + 10 * kDay);
  std::shared_ptr<const Context> second = InstallCertificate(now_ + 90 * kDay);
  ASSERT_NE(second, nullptr);
  EXPECT_EQ(second->certificate_not_after(), now_ + 90 * kDay);
  // A connection that started with the old context keeps it.
  EXPECT_EQ(first->certificate_not_after(), now_ + 10 * kDay);
  EXPECT_TRUE(Session::Server(first).ok());
}

TEST_F(TlsReloadableContextTest, KeepsTheOldContextWhenAFileIsMissing) {
  std::shared_ptr<const Context> before = InstallCertificate(now_ + 10 * kDay);
  std::filesystem::remove(cert_file_);
  ExpectErrorMentions(reloadable_->Reload(), cert_file_);
  EXPECT_EQ(reloadable_->Current(), before);
}

TEST_F(TlsReloadableContextTest, KeepsTheOldContextWhenTheKeyDoesNotMatch) {
  std::shared_ptr<const Context> before = InstallCertificate(now_ + 10 * kDay);
  // The certificate is renewed but the key is not (yet): a half-finished rotation.
  WriteFile(cert_file_, CertPem(Issue(Kind::kServer, kHostname, &ca_, now_ + 90 * kDay)));
  ExpectErrorMentions(reloadable_->Reload(), key_file_);
  EXPECT_EQ(reloadable_->Current(), before);
}

// Waits up to 10 s for `fd` to become readable; a hung peer fails the test instead of hanging
// it.
bool WaitReadable(int fd) {
  pollfd poll_fd{.fd = fd, .events = POLLIN, .revents = 0};
  return poll(&poll_fd, 1, 10'000) == 1;
}

bool SendAll(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t sent = send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (sent <= 0) {
      return false;
    }
    bytes.remove_prefix(static_cast<size_t>(sent));
  }
  return true;
}

// Reads `fd` until `*out` contains `needle` (true) or the stream ends or stalls (false).
bool ReadUntil(int fd, std::string_view needle, std::string* out) {
  while (out->find(needle) == std::string::npos) {
    char buffer[4096];
    if (!WaitReadable(fd)) {
      return false;
    }
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n <= 0) {
      return false;
    }
    out->append(buffer, static_cast<size_t>(n));
  }
  return true;
}

// `openssl s_client` or `s_server` as a child process: stdin and stdout on pipes, stderr
// into a file; killed if it is still running at the end.
class OpensslProcess {
 public:
  OpensslProcess(const std::vector<std::string>& args, const std::string& stderr_path) {
    int in[2];
    int out[2];
    if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) {
      ADD_FAILURE() << "pipe2 failed";
      return;
    }
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, in[0], 0);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    posix_spawn_file_actions_addopen(&actions, 2, stderr_path.c_str(), O_WRONLY | O_CREAT, 0600);
    std::vector<char*> argv;
    for (const std::string& arg : args) {
      argv.push_back(const_cast<char*>(arg.c_str()));
    }
    argv.push_back(nullptr);
    if (posix_spawnp(&pid_, argv[0], &actions, nullptr, argv.data(), environ) != 0) {
      pid_ = -1;
    }
    posix_spawn_file_actions_destroy(&actions);
    close(in[0]);
    close(out[1]);
    stdin_ = in[1];
    stdout_ = out[0];
  }
  ~OpensslProcess() {
    close(stdin_);
    close(stdout_);
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  OpensslProcess(const OpensslProcess&) = delete;
  OpensslProcess& operator=(const OpensslProcess&) = delete;

  bool started() const { return pid_ > 0; }
  int stdin_fd() const { return stdin_; }
  int stdout_fd() const { return stdout_; }

  // Waits for the process to exit by itself; its exit code, or -1.
  int Wait() {
    int status = 0;
    if (waitpid(pid_, &status, 0) != pid_) {
      return -1;
    }
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

 private:
  pid_t pid_ = -1;
  int stdin_ = -1;
  int stdout_ = -1;
};

struct OpensslCase {
  const char* flag;
  const char* protocol;
};

void PrintTo(const OpensslCase& param, std::ostream* os) {
  *os << param.flag;
}

class TlsOpensslInteropTest : public TlsTest, public ::testing::WithParamInterface<OpensslCase> {};

// A real peer, over a real loopback socket: `openssl s_client` verifies our chain and name,
// sends "ping", and must print our "pong" and exit cleanly on our close_notify.
TEST_P(TlsOpensslInteropTest, OpensslClientTalksToOurServer) {
  const int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(listener, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t address_size = sizeof(address);
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  ASSERT_EQ(listen(listener, 1), 0);
  ASSERT_EQ(getsockname(listener, reinterpret_cast<sockaddr*>(&address), &address_size), 0);

  OpensslProcess client(
      {"openssl", "s_client", "-connect", "127.0.0.1:" + std::to_string(ntohs(address.sin_port)),
       "-servername", kHostname, "-verify_hostname", kHostname, "-CAfile", Path("ca.pem"),
       "-verify_return_error", "-quiet", GetParam().flag},
      Path("s_client.stderr"));
  if (!client.started()) {
    close(listener);
    GTEST_SKIP() << "openssl is not installed";
  }
  // -quiet implies -ign_eof: s_client keeps reading after its stdin ends.
  ASSERT_EQ(write(client.stdin_fd(), "ping\n", 5), 5);
  ASSERT_TRUE(WaitReadable(listener)) << "s_client did not connect";
  const int fd = accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
  close(listener);
  ASSERT_GE(fd, 0);

  absl::StatusOr<std::unique_ptr<Session>> server = Session::Server(ServerContext());
  ASSERT_TRUE(server.ok()) << server.status();
  std::string received;
  bool closed = false;
  while (received.find('\n') == std::string::npos) {
    char buffer[16384];
    ASSERT_TRUE(WaitReadable(fd)) << "waiting for s_client; received \"" << received << "\"";
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    ASSERT_GT(n, 0) << "s_client closed the connection";
    (*server)->FeedCiphertext(std::string_view(buffer, static_cast<size_t>(n)));
    absl::Status status = (*server)->Handshake();
    ASSERT_TRUE(status.ok()) << status;
    if ((*server)->handshake_done()) {
      status = (*server)->ReadPlaintext(&received, &closed);
      ASSERT_TRUE(status.ok()) << status;
      ASSERT_FALSE(closed);
    }
    ASSERT_TRUE(SendAll(fd, (*server)->TakeCiphertext()));
  }
  EXPECT_EQ(received, "ping\n");
  EXPECT_EQ((*server)->protocol(), GetParam().protocol);

  ASSERT_TRUE((*server)->WritePlaintext("pong\n").ok());
  (*server)->Close();
  ASSERT_TRUE(SendAll(fd, (*server)->TakeCiphertext()));
  shutdown(fd, SHUT_WR);

  std::string printed;
  EXPECT_TRUE(ReadUntil(client.stdout_fd(), "pong\n", &printed)) << printed;
  EXPECT_EQ(client.Wait(), 0);  // it saw our close_notify
  close(fd);
}

// Our client against `openssl s_server`: SNI, chain and hostname verification, data both ways.
TEST_P(TlsOpensslInteropTest, OurClientTalksToOpensslServer) {
  OpensslProcess server({"openssl", "s_server", "-accept", "127.0.0.1:0", "-naccept", "1", "-cert",
                         Path("server.pem"), "-key", Path("server.key"), GetParam().flag},
                        Path("s_server.stderr"));
  if (!server.started()) {
    GTEST_SKIP() << "openssl is not installed";
  }
  std::string printed;
  ASSERT_TRUE(ReadUntil(server.stdout_fd(), "\n", &printed)) << printed;
  while (printed.find("ACCEPT ") == std::string::npos) {
    ASSERT_TRUE(ReadUntil(server.stdout_fd(), "ACCEPT ", &printed)) << printed;
  }
  ASSERT_TRUE(ReadUntil(server.stdout_fd(), "\n", &printed)) << printed;
  const size_t colon = printed.rfind(':');
  ASSERT_NE(colon, std::string::npos) << printed;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(static_cast<uint16_t>(std::stoi(printed.substr(colon + 1))));
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);

  absl::StatusOr<std::unique_ptr<Session>> client =
      Session::Client(ClientContext({.ca_file = Path("ca.pem"), .verify_peer = true}), kHostname);
  ASSERT_TRUE(client.ok()) << client.status();
  std::string received;
  bool closed = false;
  // Until the handshake is done and then until "pong" arrives (written to s_server's stdin
  // once it has printed our "ping").
  while (received.find('\n') == std::string::npos) {
    absl::Status status = (*client)->Handshake();
    ASSERT_TRUE(status.ok()) << status;
    if ((*client)->handshake_done() && printed.find("ping\n") == std::string::npos) {
      ASSERT_TRUE((*client)->WritePlaintext("ping\n").ok());
      ASSERT_TRUE(SendAll(fd, (*client)->TakeCiphertext()));
      ASSERT_TRUE(ReadUntil(server.stdout_fd(), "ping\n", &printed)) << printed;
      ASSERT_EQ(write(server.stdin_fd(), "pong\n", 5), 5);
    }
    ASSERT_TRUE(SendAll(fd, (*client)->TakeCiphertext()));
    char buffer[16384];
    ASSERT_TRUE(WaitReadable(fd)) << "waiting for s_server";
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    ASSERT_GT(n, 0) << "s_server closed the connection";
    (*client)->FeedCiphertext(std::string_view(buffer, static_cast<size_t>(n)));
    if ((*client)->handshake_done()) {
      status = (*client)->ReadPlaintext(&received, &closed);
      ASSERT_TRUE(status.ok()) << status;
    }
  }
  EXPECT_EQ(received, "pong\n");
  EXPECT_FALSE(closed);
  EXPECT_TRUE((*client)->peer_verified());
  EXPECT_EQ((*client)->protocol(), GetParam().protocol);
  (*client)->Close();
  EXPECT_TRUE(SendAll(fd, (*client)->TakeCiphertext()));
  close(fd);
}

INSTANTIATE_TEST_SUITE_P(Tls, TlsOpensslInteropTest,
                         ::testing::Values(OpensslCase{"-tls1_2", "TLSv1.2"},
                                           OpensslCase{"-tls1_3", "TLSv1.3"}),
                         [](const ::testing::TestParamInfo<OpensslCase>& param) {
                           return std::string(param.param.flag + 1) == "tls1_2" ? "Tls12" : "Tls13";
                         });

}  // namespace
}  // namespace backstop::tls
