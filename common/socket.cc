#include "common/socket.h"

#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>

#include "common/status.h"

namespace backstop {
namespace {

absl::Status BadAddress(std::string_view text, const char* why) {
  return absl::InvalidArgumentError("invalid address \"" + std::string(text) + "\": " + why);
}

absl::StatusOr<UniqueFd> NewTcpSocket(int family, Blocking blocking) {
  const int type = SOCK_STREAM | SOCK_CLOEXEC | (blocking == Blocking::kNo ? SOCK_NONBLOCK : 0);
  const int fd = socket(family, type, IPPROTO_TCP);
  if (fd < 0) {
    return ErrnoToStatus(errno, "socket");
  }
  return UniqueFd(fd);
}

absl::Status SetIntOption(int fd, int level, int name, int value, const char* what) {
  if (setsockopt(fd, level, name, &value, sizeof(value)) != 0) {
    return ErrnoToStatus(errno, what);
  }
  return absl::OkStatus();
}

}  // namespace

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) {
    Reset();
    fd_ = other.Release();
  }
  return *this;
}

int UniqueFd::Release() {
  const int fd = fd_;
  fd_ = -1;
  return fd;
}

void UniqueFd::Reset() {
  if (fd_ >= 0) {
    close(fd_);
    fd_ = -1;
  }
}

absl::StatusOr<SocketAddress> SocketAddress::Parse(std::string_view text) {
  std::string host;
  std::string_view port_text;
  bool bracketed = false;
  if (!text.empty() && text.front() == '[') {
    const size_t close = text.find(']');
    if (close == std::string_view::npos) {
      return BadAddress(text, "missing ']'");
    }
    if (close + 1 >= text.size() || text[close + 1] != ':') {
      return BadAddress(text, "expected \":port\" after ']'");
    }
    host = std::string(text.substr(1, close - 1));
    port_text = text.substr(close + 2);
    bracketed = true;
  } else {
    const size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) {
      return BadAddress(text, "expected host:port");
    }
    host = std::string(text.substr(0, colon));
    if (host.find(':') != std::string::npos) {
      return BadAddress(text, "an IPv6 address must be written in brackets, as [::1]:25");
    }
    port_text = text.substr(colon + 1);
  }
  unsigned port = 0;
  const auto [end, error] =
      std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (port_text.empty() || error != std::errc() || end != port_text.data() + port_text.size() ||
      port > 65535) {
    return BadAddress(text, "the port must be a number from 0 to 65535");
  }

  SocketAddress address;
  if (bracketed) {
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&address.storage_);
    if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) != 1) {
      return BadAddress(text, "not a numeric IPv6 address");
    }
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<uint16_t>(port));
    address.length_ = sizeof(sockaddr_in6);
  } else {
    auto* v4 = reinterpret_cast<sockaddr_in*>(&address.storage_);
    if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) != 1) {
      return BadAddress(text, "the host must be a numeric IPv4 address or a bracketed IPv6 one");
    }
    v4->sin_family = AF_INET;
    v4->sin_port = htons(static_cast<uint16_t>(port));
    address.length_ = sizeof(sockaddr_in);
  }
  return address;
}

absl::StatusOr<SocketAddress> SocketAddress::LocalOf(int fd) {
  SocketAddress address;
  address.length_ = sizeof(address.storage_);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&address.storage_), &address.length_) != 0) {
    return ErrnoToStatus(errno, "getsockname");
  }
  return address;
}

absl::StatusOr<SocketAddress> SocketAddress::PeerOf(int fd) {
  SocketAddress address;
  address.length_ = sizeof(address.storage_);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&address.storage_), &address.length_) != 0) {
    return ErrnoToStatus(errno, "getpeername");
  }
  return address;
}

uint16_t SocketAddress::port() const {
  if (family() == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage_)->sin6_port);
  }
  return ntohs(reinterpret_cast<const sockaddr_in*>(&storage_)->sin_port);
}

std::string SocketAddress::ToString() const {
  char host[INET6_ADDRSTRLEN] = {};
  std::string text;
  if (family() == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&storage_)->sin6_addr, host,
              sizeof(host));
    text.append("[").append(host).append("]");
  } else {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&storage_)->sin_addr, host,
              sizeof(host));
    text.append(host);
  }
  text.append(":").append(std::to_string(port()));
  return text;
}

absl::StatusOr<UniqueFd> Listen(const SocketAddress& address, const ListenOptions& options) {
  ASSIGN_OR_RETURN(UniqueFd fd, NewTcpSocket(address.family(), Blocking::kNo));
  RETURN_IF_ERROR(SetIntOption(fd.get(), SOL_SOCKET, SO_REUSEADDR, 1, "setsockopt(SO_REUSEADDR)"));
  if (options.reuse_port == ReusePort::kYes) {
    RETURN_IF_ERROR(
        SetIntOption(fd.get(), SOL_SOCKET, SO_REUSEPORT, 1, "setsockopt(SO_REUSEPORT)"));
  }
  if (address.family() == AF_INET6) {
    // IPv6 only, so that "0.0.0.0:25" and "[::]:25" can both be listed without clashing.
    RETURN_IF_ERROR(
        SetIntOption(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, 1, "setsockopt(IPV6_V6ONLY)"));
  }
  if (bind(fd.get(), address.get(), address.length()) != 0) {
    return ErrnoToStatus(errno, "bind " + address.ToString());
  }
  if (listen(fd.get(), options.backlog) != 0) {
    return ErrnoToStatus(errno, "listen " + address.ToString());
  }
  return fd;
}

absl::Status SetNoDelay(int fd) {
  return SetIntOption(fd, IPPROTO_TCP, TCP_NODELAY, 1, "setsockopt(TCP_NODELAY)");
}

absl::StatusOr<UniqueFd> Connect(const SocketAddress& address, Blocking blocking) {
  ASSIGN_OR_RETURN(UniqueFd fd, NewTcpSocket(address.family(), blocking));
  RETURN_IF_ERROR(SetNoDelay(fd.get()));
  const int rc = connect(fd.get(), address.get(), address.length());
  if (rc != 0 && !(blocking == Blocking::kNo && errno == EINPROGRESS)) {
    return ErrnoToStatus(errno, "connect " + address.ToString());
  }
  return fd;
}

}  // namespace backstop
