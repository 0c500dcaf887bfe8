#include "cmd/backstopctl/domain_check.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <future>

#include <fmt/format.h>

#include "absl/strings/ascii.h"

namespace backstop::ctl {
namespace {

std::string CanonicalHost(std::string_view name) {
  std::string host = absl::AsciiStrToLower(std::string(name));
  while (!host.empty() && host.back() == '.') {
    host.pop_back();
  }
  return host;
}

// Milliseconds left until `deadline`, at least 0, for poll().
int MillisLeft(absl::Time deadline) {
  return static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(deadline - absl::Now())));
}

// Closes the descriptor when it goes out of scope.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) {
      close(fd_);
    }
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// Connects without blocking past `deadline`; "" on success, else why not.
std::string ConnectBefore(int fd, const sockaddr* address, socklen_t length, absl::Time deadline) {
  if (connect(fd, address, length) == 0) {
    return "";
  }
  if (errno != EINPROGRESS) {
    return std::strerror(errno);
  }
  pollfd waiting{fd, POLLOUT, 0};
  const int ready = poll(&waiting, 1, MillisLeft(deadline));
  if (ready == 0) {
    return "connection timed out";
  }
  int error = 0;
  socklen_t error_length = sizeof(error);
  if (ready < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &error_length) != 0) {
    return std::strerror(errno);
  }
  return error == 0 ? "" : std::strerror(error);
}

// Reads the greeting's first line (up to CRLF) before `deadline`.
std::string ReadLine(int fd, absl::Time deadline, std::string* error) {
  std::string line;
  char buffer[512];
  while (line.find("\r\n") == std::string::npos && line.size() < 4096) {
    pollfd waiting{fd, POLLIN, 0};
    const int ready = poll(&waiting, 1, MillisLeft(deadline));
    if (ready <= 0) {
      *error = ready == 0 ? "no greeting before the timeout" : std::strerror(errno);
      return line;
    }
    const ssize_t got = recv(fd, buffer, sizeof(buffer), 0);
    if (got <= 0) {
      *error = got == 0 ? "closed before greeting" : std::strerror(errno);
      return line;
    }
    line.append(buffer, static_cast<size_t>(got));
  }
  return line.substr(0, line.find("\r\n"));
}

// One connection attempt to `ip`:`port`.
BannerProbe ProbeOne(const std::string& ip, uint16_t port, absl::Duration timeout) {
  BannerProbe probe;
  sockaddr_storage storage{};
  socklen_t length = 0;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&storage);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&storage);
  if (inet_pton(AF_INET, ip.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    length = sizeof(*v4);
    probe.address = fmt::format("{}:{}", ip, port);
  } else if (inet_pton(AF_INET6, ip.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    length = sizeof(*v6);
    probe.address = fmt::format("[{}]:{}", ip, port);
  } else {
    probe.error = fmt::format("{}: not an IP address", ip);
    return probe;
  }
  Fd fd(socket(storage.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) {
    probe.error = std::strerror(errno);
    return probe;
  }
  const absl::Time deadline = absl::Now() + timeout;
  probe.error = ConnectBefore(fd.get(), reinterpret_cast<sockaddr*>(&storage), length, deadline);
  if (!probe.error.empty()) {
    return probe;
  }
  probe.banner = ReadLine(fd.get(), deadline, &probe.error);
  if (!probe.error.empty()) {
    return probe;
  }
  if (probe.banner.rfind("220", 0) != 0) {
    probe.error = fmt::format("greeting is not 220: {}", probe.banner);
    return probe;
  }
  probe.reachable = true;
  constexpr std::string_view kQuit = "QUIT\r\n";
  (void)send(fd.get(), kQuit.data(), kQuit.size(), MSG_NOSIGNAL);
  return probe;
}

}  // namespace

MxJudgement JudgeMx(std::string_view domain, const std::vector<MxRecord>& records,
                    std::string_view hostname) {
  MxJudgement judgement;
  const std::string us = CanonicalHost(hostname);
  for (const MxRecord& record : records) {
    if (CanonicalHost(record.exchange) == us) {
      judgement.listed = true;
      judgement.our_preference = record.preference;
      break;  // sorted: the first is our best preference
    }
  }
  if (!judgement.listed) {
    judgement.primaries = records;
    judgement.problems.push_back(
        fmt::format("{} is not among the MX records of {}: mail will not come to us", us, domain));
    return judgement;
  }
  std::vector<std::string> peers;  // at our own preference: senders pick among us at random
  for (const MxRecord& record : records) {
    if (record.preference < judgement.our_preference) {
      judgement.primaries.push_back(record);
    } else if (record.preference == judgement.our_preference &&
               CanonicalHost(record.exchange) != us) {
      peers.push_back(record.exchange);
    }
  }
  if (judgement.primaries.empty()) {
    judgement.problems.push_back(fmt::format(
        "{} is listed at preference {} but no MX record of {} has a lower preference: we are "
        "not below the primary, so mail comes to the backup first",
        us, judgement.our_preference, domain));
  }
  for (const std::string& peer : peers) {
    judgement.problems.push_back(
        fmt::format("{} shares preference {} with us: senders may pick us before it", peer,
                    judgement.our_preference));
  }
  return judgement;
}

BannerProbe ProbeSmtp(const std::vector<std::string>& addresses, uint16_t port,
                      absl::Duration timeout) {
  BannerProbe probe;
  probe.error = "no address";
  for (const std::string& address : addresses) {
    probe = ProbeOne(address, port, timeout);
    if (probe.reachable) {
      break;
    }
  }
  return probe;
}

absl::StatusOr<std::unique_ptr<BlockingDns>> BlockingDns::Create(std::vector<HostPort> servers) {
  std::unique_ptr<BlockingDns> dns(new BlockingDns());
  absl::StatusOr<std::unique_ptr<EventLoop>> loop = EventLoop::Create();
  if (!loop.ok()) {
    return loop.status();
  }
  dns->loop_ = *std::move(loop);
  dns->loop_->HandOff();
  dns->thread_ = std::thread([raw = dns.get()] { raw->loop_->Run(); });
  std::promise<absl::Status> created;
  dns->loop_->Post([raw = dns.get(), &created, &servers] {
    ResolverOptions options;
    options.servers = servers;
    absl::StatusOr<std::unique_ptr<Resolver>> resolver = Resolver::Create(*raw->loop_, options);
    if (resolver.ok()) {
      raw->resolver_ = *std::move(resolver);
    }
    created.set_value(resolver.status());
  });
  if (absl::Status status = created.get_future().get(); !status.ok()) {
    return status;  // the destructor stops the loop
  }
  return dns;
}

BlockingDns::~BlockingDns() {
  if (loop_ != nullptr) {
    loop_->Post([this] { resolver_.reset(); });
    loop_->Stop();
  }
  if (thread_.joinable()) {
    thread_.join();
  }
}

MxResult BlockingDns::Mx(const std::string& name) {
  std::promise<MxResult> answer;
  loop_->Post([this, &name, &answer] {
    resolver_->LookupMx(name, [&answer](MxResult result) { answer.set_value(std::move(result)); });
  });
  return answer.get_future().get();
}

AddressResult BlockingDns::Addresses(const std::string& name) {
  std::promise<AddressResult> answer;
  loop_->Post([this, &name, &answer] {
    resolver_->LookupAddresses(
        name, [&answer](AddressResult result) { answer.set_value(std::move(result)); });
  });
  return answer.get_future().get();
}

}  // namespace backstop::ctl
