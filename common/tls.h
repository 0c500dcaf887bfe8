#pragma once

// TLS over memory BIOs (DESIGN §3.3: "TLS via OpenSSL memory BIOs over the ring"): OpenSSL
// never touches a socket. The connection feeds received ciphertext in, takes ciphertext to send
// out, and moves plaintext through the same object, so TLS runs on the connection's io_uring
// thread with the connection's own buffers and deadlines. Used by ingest (server side,
// STARTTLS) and delivery (client side, STARTTLS toward the primary).

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// OpenSSL's types, declared at global scope so that the members below name them (and not new
// types in backstop::tls) without including OpenSSL's headers everywhere.
struct bio_st;
struct ssl_ctx_st;
struct ssl_st;
struct x509_st;

namespace backstop::tls {

// Not-after of `certificate`, in seconds since the epoch.
absl::StatusOr<int64_t> NotAfter(const struct x509_st* certificate);

struct ServerContextOptions {
  std::string cert_file;  // PEM chain, leaf first
  std::string key_file;   // PEM private key
};

enum class TlsVersion : uint8_t { k1_2, k1_3 };

struct ClientContextOptions {
  // Verify the peer's certificate against this CA bundle (PEM); empty = the system store.
  std::string ca_file;
  // Opportunistic STARTTLS toward MX hosts (RFC 7435): encrypt without authenticating.
  bool verify_peer = false;
  // The highest version offered (TLS 1.2 is always the lowest): a way around a peer whose
  // TLS 1.3 is broken, and how tests cover both versions.
  TlsVersion max_version = TlsVersion::k1_3;
};

// An SSL_CTX: TLS 1.2 and 1.3 only, no compression, no renegotiation. Immutable once built and
// shared read-only by every connection of every thread (OpenSSL's SSL_CTX is thread-safe for
// SSL_new).
class Context {
 public:
  static absl::StatusOr<std::shared_ptr<const Context>> Server(const ServerContextOptions& options);
  static absl::StatusOr<std::shared_ptr<const Context>> Client(const ClientContextOptions& options);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  // Not-after of the server certificate (seconds since the epoch), 0 for a client context.
  int64_t certificate_not_after() const { return not_after_; }

 private:
  friend class Session;
  enum class Role : uint8_t { kServer, kClient };
  explicit Context(Role role) : role_(role) {}
  const Role role_;
  struct ssl_ctx_st* ctx_ = nullptr;
  int64_t not_after_ = 0;
};

// The server context currently in force, swapped on SIGHUP. A failed reload keeps the previous
// context (and says why); connections keep the context they started their handshake with.
// Thread-safe.
class ReloadableContext {
 public:
  explicit ReloadableContext(ServerContextOptions options) : options_(std::move(options)) {}
  // Loads the files again; on success the next handshakes use the new certificate.
  absl::Status Reload();
  // Null before the first successful Reload().
  std::shared_ptr<const Context> Current() const;

 private:
  const ServerContextOptions options_;
  mutable std::mutex mutex_;
  std::shared_ptr<const Context> current_;  // guarded by mutex_
};

// One TLS connection over memory BIOs. Owned by the connection that drives it; one thread.
//
// Usage: after creating, call Handshake() (and for the client side, it produces the
// ClientHello); loop { send TakeCiphertext(); on receiving, FeedCiphertext(bytes) then
// Handshake() until handshake_done(); afterwards ReadPlaintext()/WritePlaintext() }.
// Any returned error is fatal for the connection (close it; for SMTP after a failed
// handshake there is no way back to plaintext).
class Session {
 public:
  static absl::StatusOr<std::unique_ptr<Session>> Server(std::shared_ptr<const Context> context);
  // `server_name` is sent as SNI and, with verify_peer, checked against the certificate (an
  // IP address is checked against the certificate's IP entries and not sent as SNI).
  static absl::StatusOr<std::unique_ptr<Session>> Client(std::shared_ptr<const Context> context,
                                                         const std::string& server_name);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Ciphertext received from the peer.
  void FeedCiphertext(std::string_view bytes);
  // Advances the handshake with what has been fed. Ok while it is in progress or done.
  absl::Status Handshake();
  bool handshake_done() const;
  // Appends every plaintext byte decryptable from what has been fed to *out. Ok with nothing
  // appended when more ciphertext is needed. `*peer_closed` becomes true on close_notify.
  // Check has_ciphertext() afterwards too: a failed read leaves an alert for the peer.
  absl::Status ReadPlaintext(std::string* out, bool* peer_closed);
  // Encrypts `bytes`; the records appear in TakeCiphertext().
  absl::Status WritePlaintext(std::string_view bytes);
  // Sends close_notify (into the ciphertext output).
  void Close();
  // Ciphertext to send to the peer (handshake messages, records, alerts), in order.
  std::string TakeCiphertext();
  bool has_ciphertext() const;

  // After the handshake: "TLSv1.3", the cipher name, and (client side) whether the peer's
  // certificate verified, chain and name, even when verify_peer is off (for logs and
  // Received: headers).
  std::string protocol() const;
  std::string cipher() const;
  bool peer_verified() const;

 private:
  Session() = default;
  absl::Status Attach(std::shared_ptr<const Context> context);
  absl::Status Failed(std::string_view operation, int ssl_error);
  std::shared_ptr<const Context> context_;
  struct ssl_st* ssl_ = nullptr;
  struct bio_st* network_in_ = nullptr;   // ciphertext from the peer (owned by ssl_)
  struct bio_st* network_out_ = nullptr;  // ciphertext to the peer (owned by ssl_)
  // After a fatal error OpenSSL forbids any further use of ssl_, even SSL_shutdown().
  bool failed_ = false;
};

}  // namespace backstop::tls
