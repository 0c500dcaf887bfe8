#include "common/tls.h"

#include <arpa/inet.h>

#include <ctime>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "common/status.h"

namespace backstop::tls {
namespace {

// TLS 1.2 suites for the server: forward secrecy and AEAD only (TLS 1.3 suites are all fine and
// keep OpenSSL's defaults). Senders' MTAs are of every age, but all of them speak one of these.
constexpr char kServerTls12Ciphers[] =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305";

// Drains this thread's OpenSSL error queue into one line ("; "-separated), so that the reason
// ends up in the Status and a stale entry cannot confuse the next SSL_get_error().
std::string DrainErrors() {
  std::string text;
  const char* data = nullptr;
  int flags = 0;
  while (const unsigned long code = ERR_get_error_all(nullptr, nullptr, nullptr, &data, &flags)) {
    char buffer[256];
    ERR_error_string_n(code, buffer, sizeof(buffer));
    if (!text.empty()) {
      text += "; ";
    }
    text += buffer;
    if ((flags & ERR_TXT_STRING) != 0 && data != nullptr && *data != '\0') {
      text += " (";
      text += data;
      text += ")";
    }
  }
  return text.empty() ? "no OpenSSL error reported" : text;
}

absl::Status ContextError(const std::string& what) {
  return absl::InvalidArgumentError(what + ": " + DrainErrors());
}

// Creates `*ctx` with the settings common to both roles.
absl::Status NewSslContext(const SSL_METHOD* method, int max_version, SSL_CTX** ctx) {
  ERR_clear_error();
  *ctx = SSL_CTX_new(method);
  if (*ctx == nullptr) {
    return ContextError("creating the TLS context");
  }
  if (SSL_CTX_set_min_proto_version(*ctx, TLS1_2_VERSION) != 1 ||
      SSL_CTX_set_max_proto_version(*ctx, max_version) != 1) {
    return ContextError("setting the TLS versions");
  }
  SSL_CTX_set_options(*ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
  // Idle SMTP connections are many; their 2 x 16 KiB record buffers are not needed between
  // reads.
  SSL_CTX_set_mode(*ctx, SSL_MODE_RELEASE_BUFFERS);
  return absl::OkStatus();
}

bool IsIpLiteral(const std::string& name) {
  unsigned char address[16];
  return inet_pton(AF_INET, name.c_str(), address) == 1 ||
         inet_pton(AF_INET6, name.c_str(), address) == 1;
}

}  // namespace

absl::StatusOr<int64_t> NotAfter(const X509* certificate) {
  struct tm tm {};
  if (ASN1_TIME_to_tm(X509_get0_notAfter(certificate), &tm) != 1) {
    return ContextError("reading the certificate's notAfter");
  }
  return static_cast<int64_t>(timegm(&tm));
}

Context::~Context() {
  SSL_CTX_free(ctx_);
}

absl::StatusOr<std::shared_ptr<const Context>> Context::Server(
    const ServerContextOptions& options) {
  std::shared_ptr<Context> context(new Context(Role::kServer));
  RETURN_IF_ERROR(NewSslContext(TLS_server_method(), TLS1_3_VERSION, &context->ctx_));
  SSL_CTX* ctx = context->ctx_;
  if (SSL_CTX_set_cipher_list(ctx, kServerTls12Ciphers) != 1) {
    return ContextError("setting the TLS 1.2 ciphers");
  }
  SSL_CTX_set_dh_auto(ctx, 1);
  // Resumption, if a sender uses it at all, works through stateless tickets; a server-side
  // cache would only hold memory for connections that never come back to this replica.
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);

  if (SSL_CTX_use_certificate_chain_file(ctx, options.cert_file.c_str()) != 1) {
    return ContextError("loading the certificate chain \"" + options.cert_file + "\"");
  }
  // The key is read here rather than by SSL_CTX_use_PrivateKey_file() so that an unreadable
  // key and a key of another certificate get different messages, and so that an encrypted key
  // fails instead of prompting for a passphrase on the terminal.
  BIO* key_bio = BIO_new_file(options.key_file.c_str(), "r");
  if (key_bio == nullptr) {
    return ContextError("opening the private key \"" + options.key_file + "\"");
  }
  EVP_PKEY* key = PEM_read_bio_PrivateKey(
      key_bio, nullptr, [](char*, int, int, void*) { return 0; }, nullptr);
  BIO_free(key_bio);
  if (key == nullptr) {
    return ContextError("reading the private key \"" + options.key_file + "\"");
  }
  const bool key_matches =
      SSL_CTX_use_PrivateKey(ctx, key) == 1 && SSL_CTX_check_private_key(ctx) == 1;
  EVP_PKEY_free(key);
  if (!key_matches) {
    return ContextError("the private key \"" + options.key_file +
                        "\" does not match the certificate \"" + options.cert_file + "\"");
  }
  const X509* leaf = SSL_CTX_get0_certificate(ctx);
  if (leaf == nullptr) {
    return absl::InvalidArgumentError("no certificate in \"" + options.cert_file + "\"");
  }
  absl::StatusOr<int64_t> not_after = NotAfter(leaf);
  if (!not_after.ok()) {
    return absl::InvalidArgumentError("\"" + options.cert_file +
                                      "\": " + std::string(not_after.status().message()));
  }
  context->not_after_ = *not_after;
  return context;
}

absl::StatusOr<std::shared_ptr<const Context>> Context::Client(
    const ClientContextOptions& options) {
  std::shared_ptr<Context> context(new Context(Role::kClient));
  const int max_version = options.max_version == TlsVersion::k1_2 ? TLS1_2_VERSION : TLS1_3_VERSION;
  RETURN_IF_ERROR(NewSslContext(TLS_client_method(), max_version, &context->ctx_));
  SSL_CTX* ctx = context->ctx_;
  // The trust store is loaded even for opportunistic TLS, so that peer_verified() can say
  // whether the peer would have passed.
  if (!options.ca_file.empty()) {
    if (SSL_CTX_load_verify_locations(ctx, options.ca_file.c_str(), nullptr) != 1) {
      return ContextError("loading the CA file \"" + options.ca_file + "\"");
    }
  } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
    return ContextError("loading the system CA store");
  }
  SSL_CTX_set_verify(ctx, options.verify_peer ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, nullptr);
  return context;
}

absl::Status ReloadableContext::Reload() {
  absl::StatusOr<std::shared_ptr<const Context>> context = Context::Server(options_);
  if (!context.ok()) {
    return context.status();
  }
  std::shared_ptr<const Context> previous;
  {
    std::lock_guard lock(mutex_);
    previous = std::exchange(current_, *std::move(context));
  }
  // `previous` is freed here, outside the lock, unless a connection still holds it.
  return absl::OkStatus();
}

std::shared_ptr<const Context> ReloadableContext::Current() const {
  std::lock_guard lock(mutex_);
  return current_;
}

absl::StatusOr<std::unique_ptr<Session>> Session::Server(std::shared_ptr<const Context> context) {
  if (context == nullptr || context->role_ != Context::Role::kServer) {
    return absl::InvalidArgumentError("a TLS server session needs a server context");
  }
  ERR_clear_error();
  std::unique_ptr<Session> session(new Session());
  RETURN_IF_ERROR(session->Attach(std::move(context)));
  SSL_set_accept_state(session->ssl_);
  return session;
}

absl::StatusOr<std::unique_ptr<Session>> Session::Client(std::shared_ptr<const Context> context,
                                                         const std::string& server_name) {
  if (context == nullptr || context->role_ != Context::Role::kClient) {
    return absl::InvalidArgumentError("a TLS client session needs a client context");
  }
  ERR_clear_error();
  std::unique_ptr<Session> session(new Session());
  RETURN_IF_ERROR(session->Attach(std::move(context)));
  SSL* ssl = session->ssl_;
  SSL_set_connect_state(ssl);
  if (IsIpLiteral(server_name)) {
    // No SNI for an address (RFC 6066 §3); the certificate must name the address instead.
    if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), server_name.c_str()) != 1) {
      return ContextError("setting the expected address \"" + server_name + "\"");
    }
  } else if (!server_name.empty()) {
    SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    if (SSL_set_tlsext_host_name(ssl, server_name.c_str()) != 1 ||
        SSL_set1_host(ssl, server_name.c_str()) != 1) {
      return ContextError("setting the server name \"" + server_name + "\"");
    }
  } else if (SSL_get_verify_mode(ssl) != SSL_VERIFY_NONE) {
    return absl::InvalidArgumentError("verifying the peer needs a server name");
  }
  return session;
}

absl::Status Session::Attach(std::shared_ptr<const Context> context) {
  ssl_ = SSL_new(context->ctx_);
  if (ssl_ == nullptr) {
    return ContextError("creating a TLS session");
  }
  BIO* in = BIO_new(BIO_s_mem());
  BIO* out = BIO_new(BIO_s_mem());
  if (in == nullptr || out == nullptr) {
    BIO_free(in);
    BIO_free(out);
    return ContextError("creating the TLS session's buffers");
  }
  // An empty input reads as "retry later", never as end of stream: the connection, not
  // OpenSSL, knows when the socket is closed.
  BIO_set_mem_eof_return(in, -1);
  SSL_set_bio(ssl_, in, out);
  network_in_ = in;
  network_out_ = out;
  context_ = std::move(context);
  return absl::OkStatus();
}

Session::~Session() {
  SSL_free(ssl_);
}

void Session::FeedCiphertext(std::string_view bytes) {
  if (!bytes.empty()) {
    // A memory BIO grows as needed; it fails only when malloc does.
    BIO_write(network_in_, bytes.data(), static_cast<int>(bytes.size()));
  }
}

absl::Status Session::Failed(std::string_view operation, int ssl_error) {
  failed_ = true;
  std::string message = "TLS " + std::string(operation) + " failed: ";
  if (ssl_error == SSL_ERROR_SSL) {
    message += DrainErrors();
  } else {
    message += "SSL_get_error " + std::to_string(ssl_error) + " (" + DrainErrors() + ")";
  }
  const long verify_result = SSL_get_verify_result(ssl_);
  if (verify_result != X509_V_OK && SSL_get_verify_mode(ssl_) != SSL_VERIFY_NONE) {
    return absl::PermissionDeniedError(
        message + "; certificate verification: " + X509_verify_cert_error_string(verify_result));
  }
  return absl::UnavailableError(message);
}

absl::Status Session::Handshake() {
  if (failed_) {
    return absl::FailedPreconditionError("TLS session already failed");
  }
  if (SSL_is_init_finished(ssl_)) {
    return absl::OkStatus();
  }
  ERR_clear_error();
  const int rc = SSL_do_handshake(ssl_);
  if (rc == 1) {
    return absl::OkStatus();
  }
  const int error = SSL_get_error(ssl_, rc);
  // Memory BIOs never block on writing: WANT_WRITE cannot happen, and WANT_READ means "feed
  // me". Whatever OpenSSL wrote meanwhile (a ClientHello, an alert) waits in network_out_.
  if (error == SSL_ERROR_WANT_READ) {
    return absl::OkStatus();
  }
  return Failed("handshake", error);
}

bool Session::handshake_done() const {
  return !failed_ && SSL_is_init_finished(ssl_);
}

absl::Status Session::ReadPlaintext(std::string* out, bool* peer_closed) {
  if (failed_) {
    return absl::FailedPreconditionError("TLS session already failed");
  }
  constexpr size_t kChunk = 16 * 1024;  // one maximal record
  for (;;) {
    const size_t old_size = out->size();
    out->resize(old_size + kChunk);
    size_t read = 0;
    ERR_clear_error();
    const int rc = SSL_read_ex(ssl_, out->data() + old_size, kChunk, &read);
    out->resize(old_size + read);
    if (rc == 1) {
      continue;
    }
    // Post-handshake messages (TLS 1.3 tickets, KeyUpdate) are consumed inside SSL_read_ex;
    // a fatal alert it sends is in network_out_, and the KeyUpdate a peer asks for goes out
    // just before our next record.
    const int error = SSL_get_error(ssl_, rc);
    if (error == SSL_ERROR_WANT_READ) {
      return absl::OkStatus();
    }
    if (error == SSL_ERROR_ZERO_RETURN) {
      *peer_closed = true;
      return absl::OkStatus();
    }
    return Failed("read", error);
  }
}

absl::Status Session::WritePlaintext(std::string_view bytes) {
  if (failed_) {
    return absl::FailedPreconditionError("TLS session already failed");
  }
  if (!SSL_is_init_finished(ssl_)) {
    return absl::FailedPreconditionError("TLS write before the handshake is done");
  }
  while (!bytes.empty()) {
    size_t written = 0;
    ERR_clear_error();
    const int rc = SSL_write_ex(ssl_, bytes.data(), bytes.size(), &written);
    if (rc != 1) {
      return Failed("write", SSL_get_error(ssl_, rc));
    }
    bytes.remove_prefix(written);
  }
  return absl::OkStatus();
}

void Session::Close() {
  // No close_notify after a fatal error (OpenSSL forbids it; the alert has been sent) or
  // during the handshake (there is nothing to close yet: the connection just goes).
  if (failed_ || !SSL_is_init_finished(ssl_)) {
    return;
  }
  ERR_clear_error();
  SSL_shutdown(ssl_);
  ERR_clear_error();
}

std::string Session::TakeCiphertext() {
  std::string bytes(BIO_ctrl_pending(network_out_), '\0');
  if (!bytes.empty()) {
    const int read = BIO_read(network_out_, bytes.data(), static_cast<int>(bytes.size()));
    bytes.resize(read > 0 ? static_cast<size_t>(read) : 0);
  }
  return bytes;
}

bool Session::has_ciphertext() const {
  return BIO_ctrl_pending(network_out_) > 0;
}

std::string Session::protocol() const {
  return handshake_done() ? SSL_get_version(ssl_) : "";
}

std::string Session::cipher() const {
  const SSL_CIPHER* cipher = SSL_get_current_cipher(ssl_);
  return cipher != nullptr ? SSL_CIPHER_get_name(cipher) : "";
}

bool Session::peer_verified() const {
  return handshake_done() && SSL_get0_peer_certificate(ssl_) != nullptr &&
         SSL_get_verify_result(ssl_) == X509_V_OK;
}

}  // namespace backstop::tls
