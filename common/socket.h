#pragma once

// TCP socket helpers: "host:port" parsing, listening and connecting sockets. Plain functions
// with no shared state; callable from any thread.

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace backstop {

// Owns one file descriptor and closes it on destruction. Movable, not copyable.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { Reset(); }
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.Release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  // Gives up ownership without closing.
  int Release();
  void Reset();

 private:
  int fd_ = -1;
};

// An IPv4 or IPv6 socket address.
class SocketAddress {
 public:
  // Parses "1.2.3.4:25", "0.0.0.0:25", "[::1]:25", "[::]:25". Hosts must be numeric: names
  // are resolved elsewhere (DNS through c-ares), never by a blocking call here.
  static absl::StatusOr<SocketAddress> Parse(std::string_view text);
  // The address a socket is bound to (getsockname) or connected to (getpeername).
  static absl::StatusOr<SocketAddress> LocalOf(int fd);
  static absl::StatusOr<SocketAddress> PeerOf(int fd);

  int family() const { return storage_.ss_family; }
  uint16_t port() const;
  // "1.2.3.4:25" or "[::1]:25"; Parse(ToString()) gives the same address back.
  std::string ToString() const;

  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage_); }
  socklen_t length() const { return length_; }

 private:
  sockaddr_storage storage_{};
  socklen_t length_ = 0;
};

enum class ReusePort { kNo, kYes };

struct ListenOptions {
  // kYes lets several sockets (one per event-loop thread) share the port, the kernel
  // spreading connections among them.
  ReusePort reuse_port = ReusePort::kNo;
  int backlog = 4096;
};

// A non-blocking, close-on-exec listening TCP socket with SO_REUSEADDR.
absl::StatusOr<UniqueFd> Listen(const SocketAddress& address, const ListenOptions& options = {});

enum class Blocking { kNo, kYes };

// Turns off Nagle's algorithm. SMTP is small writes each awaited by the peer (replies,
// pipelined command groups, the last segment of a message): with Nagle a write waits for the
// ACK of the previous one, which the peer delays up to 40 ms because it is only waiting.
absl::Status SetNoDelay(int fd);

// A TCP socket connected to `address`, without Nagle (SetNoDelay). With Blocking::kNo the
// socket is non-blocking and the connection may still be in progress (EINPROGRESS is not an
// error).
absl::StatusOr<UniqueFd> Connect(const SocketAddress& address, Blocking blocking);

}  // namespace backstop
