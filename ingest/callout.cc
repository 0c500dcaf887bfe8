#include "ingest/callout.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <iterator>
#include <utility>

#include <fmt/format.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "common/log.h"
#include "common/socket.h"

namespace backstop::ingest {
namespace {

const log::Logger& Log() {
  static const log::Logger logger("callout");
  return logger;
}

// A reply of a peer that wants to send us more than this is not an SMTP server we can use.
constexpr size_t kMaxReplyBytes = 64 * 1024;

struct SmtpReply {
  int code = 0;
  std::string text;  // the last line's text, after the code and separator
};

// One blocking SMTP client dialog on a non-blocking socket with one deadline for all of it.
// Lives on the probing thread's stack.
class Dialog {
 public:
  Dialog(UniqueFd fd, absl::Time deadline) : fd_(std::move(fd)), deadline_(deadline) {}

  // Waits for a connect in progress to finish.
  bool Connected() {
    if (!Wait(POLLOUT)) {
      return false;
    }
    int error = 0;
    socklen_t length = sizeof(error);
    return getsockopt(fd_.get(), SOL_SOCKET, SO_ERROR, &error, &length) == 0 && error == 0;
  }

  bool Send(std::string_view line) {
    std::string data = fmt::format("{}\r\n", line);
    std::string_view rest = data;
    while (!rest.empty()) {
      const ssize_t n = send(fd_.get(), rest.data(), rest.size(), MSG_NOSIGNAL);
      if (n > 0) {
        rest.remove_prefix(static_cast<size_t>(n));
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (!Wait(POLLOUT)) {
          return false;
        }
      } else {
        return false;
      }
    }
    return true;
  }

  // The next complete (possibly multi-line) reply; nullopt on timeout, close or garbage.
  std::optional<SmtpReply> Read(std::vector<std::string>* lines = nullptr) {
    size_t taken = 0;
    while (true) {
      const size_t eol = buffer_.find("\r\n", taken);
      if (eol == std::string::npos) {
        if (buffer_.size() > kMaxReplyBytes || !Fill()) {
          return std::nullopt;
        }
        continue;
      }
      const std::string_view line(buffer_.data() + taken, eol - taken);
      taken = eol + 2;
      if (line.size() < 3 || !absl::ascii_isdigit(line[0]) || !absl::ascii_isdigit(line[1]) ||
          !absl::ascii_isdigit(line[2]) || (line.size() > 3 && line[3] != ' ' && line[3] != '-')) {
        return std::nullopt;
      }
      const std::string_view text = line.size() > 4 ? line.substr(4) : std::string_view();
      if (lines != nullptr) {
        lines->emplace_back(text);
      }
      if (line.size() == 3 || line[3] == ' ') {
        SmtpReply reply{(line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0'),
                        std::string(text)};
        buffer_.erase(0, taken);
        return reply;
      }
    }
  }

 private:
  bool Fill() {
    char chunk[4096];
    while (true) {
      const ssize_t n = recv(fd_.get(), chunk, sizeof(chunk), 0);
      if (n > 0) {
        buffer_.append(chunk, static_cast<size_t>(n));
        return true;
      }
      if (n == 0) {
        return false;
      }
      if (errno == EINTR) {
        continue;
      }
      if ((errno != EAGAIN && errno != EWOULDBLOCK) || !Wait(POLLIN)) {
        return false;
      }
    }
  }

  bool Wait(short events) {
    while (true) {
      const absl::Duration left = deadline_ - absl::Now();
      if (left <= absl::ZeroDuration()) {
        return false;
      }
      pollfd pfd{fd_.get(), events, 0};
      const int rc = poll(&pfd, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
      if (rc > 0) {
        return true;
      }
      if (rc < 0 && errno != EINTR) {
        return false;
      }
    }
  }

  UniqueFd fd_;
  const absl::Time deadline_;
  std::string buffer_;
};

// RFC 3463: "5.1.1" etc. at the start of the reply text, if any.
bool IsAddressStatus(std::string_view text) {
  if (text.size() < 4 || !absl::ascii_isdigit(text[0]) || text[1] != '.') {
    // No enhanced code: the basic code alone decides.
    return true;
  }
  return text.substr(0, 4) == "5.1.";
}

CalloutAnswer AskHost(const SocketAddress& address, std::string_view recipient,
                      const ProbeOptions& options, absl::Time deadline) {
  absl::StatusOr<UniqueFd> fd = Connect(address, Blocking::kNo);
  if (!fd.ok()) {
    return CalloutAnswer::kUnreachable;
  }
  Dialog dialog(*std::move(fd), deadline);
  if (!dialog.Connected()) {
    return CalloutAnswer::kUnreachable;
  }
  std::optional<SmtpReply> reply = dialog.Read();
  if (!reply || reply->code != 220) {
    return CalloutAnswer::kUnreachable;
  }
  std::vector<std::string> extensions;
  if (!dialog.Send("EHLO " + options.helo) || !(reply = dialog.Read(&extensions))) {
    return CalloutAnswer::kUnreachable;
  }
  bool smtputf8 = false;
  if (reply->code == 250) {
    for (const std::string& extension : extensions) {
      smtputf8 = smtputf8 || absl::EqualsIgnoreCase(extension, "SMTPUTF8");
    }
  } else if (!dialog.Send("HELO " + options.helo) || !(reply = dialog.Read()) ||
             reply->code != 250) {
    return CalloutAnswer::kUnreachable;
  }
  const bool non_ascii = std::any_of(recipient.begin(), recipient.end(),
                                     [](char c) { return static_cast<unsigned char>(c) >= 0x80; });
  if (non_ascii && !smtputf8) {
    return CalloutAnswer::kUnreachable;
  }
  if (!dialog.Send(non_ascii ? "MAIL FROM:<> SMTPUTF8" : "MAIL FROM:<>") ||
      !(reply = dialog.Read()) || reply->code != 250) {
    return CalloutAnswer::kUnreachable;
  }
  if (!dialog.Send(fmt::format("RCPT TO:<{}>", recipient)) || !(reply = dialog.Read())) {
    return CalloutAnswer::kUnreachable;
  }
  CalloutAnswer answer = CalloutAnswer::kUnreachable;
  if (reply->code >= 200 && reply->code < 300) {
    answer = CalloutAnswer::kExists;
  } else if ((reply->code == 550 || reply->code == 551 || reply->code == 553) &&
             IsAddressStatus(reply->text)) {
    answer = CalloutAnswer::kUnknownUser;
  }
  // Politeness only: the answer is already known.
  if (dialog.Send("QUIT")) {
    dialog.Read();
  }
  return answer;
}

// The addresses of one configured primary: itself when it is an IP literal, else what
// getaddrinfo (blocking, on this pool thread) says.
std::vector<SocketAddress> Resolve(const HostPort& host) {
  if (absl::StatusOr<SocketAddress> literal = SocketAddress::Parse(host.ToString()); literal.ok()) {
    return {*literal};
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  std::vector<SocketAddress> addresses;
  if (getaddrinfo(host.host.c_str(), std::to_string(host.port).c_str(), &hints, &found) != 0) {
    return addresses;
  }
  for (const addrinfo* ai = found; ai != nullptr; ai = ai->ai_next) {
    char text[INET6_ADDRSTRLEN] = {};
    const void* raw = ai->ai_family == AF_INET6
                          ? static_cast<const void*>(
                                &reinterpret_cast<const sockaddr_in6*>(ai->ai_addr)->sin6_addr)
                          : &reinterpret_cast<const sockaddr_in*>(ai->ai_addr)->sin_addr;
    if (inet_ntop(ai->ai_family, raw, text, sizeof(text)) == nullptr) {
      continue;
    }
    if (absl::StatusOr<SocketAddress> address =
            SocketAddress::Parse(HostPort{text, host.port}.ToString());
        address.ok()) {
      addresses.push_back(*address);
    }
  }
  freeaddrinfo(found);
  return addresses;
}

FilterResult Decide(const RcptRequest& rcpt, Callout::Result result) {
  switch (result.answer) {
    case CalloutAnswer::kExists:
      return FilterResult::Continue(result.cached ? "cache_hit" : "verified");
    case CalloutAnswer::kUnknownUser:
      return FilterResult::Reject(
          Reply{550,
                "5.1.1",
                {"<" + rcpt.recipient.address() + ">: Recipient address rejected: User unknown"}},
          result.cached ? "cache_hit" : "callout_unknown_user");
    case CalloutAnswer::kUnreachable:
      break;
  }
  // No definite answer: the backup case, accept.
  return FilterResult::Continue("callout_unreachable");
}

}  // namespace

std::string_view CalloutAnswerName(CalloutAnswer answer) {
  switch (answer) {
    case CalloutAnswer::kExists:
      return "exists";
    case CalloutAnswer::kUnknownUser:
      return "unknown_user";
    case CalloutAnswer::kUnreachable:
      return "unreachable";
  }
  return "unknown";
}

CalloutAnswer ProbeRecipient(const std::vector<HostPort>& hosts, std::string_view address,
                             const ProbeOptions& options) {
  for (const HostPort& host : hosts) {
    const absl::Time deadline = absl::Now() + options.timeout;
    for (const SocketAddress& resolved : Resolve(host)) {
      if (absl::Now() >= deadline) {
        break;
      }
      const CalloutAnswer answer = AskHost(resolved, address, options, deadline);
      if (answer != CalloutAnswer::kUnreachable) {
        return answer;
      }
    }
  }
  return CalloutAnswer::kUnreachable;
}

CalloutCache::CalloutCache(CalloutCacheOptions options, const Clock* clock)
    : options_(options), clock_(clock) {}

std::optional<CalloutAnswer> CalloutCache::Lookup(const std::string& key) {
  std::lock_guard lock(mutex_);
  const auto it = entries_.find(key);
  if (it == entries_.end()) {
    return std::nullopt;
  }
  if (clock_->Monotonic() >= it->second.expires) {
    EraseLocked(it);
    return std::nullopt;
  }
  return it->second.answer;
}

void CalloutCache::Store(const std::string& key, CalloutAnswer answer) {
  if (answer == CalloutAnswer::kUnreachable || options_.max_entries == 0) {
    return;
  }
  const absl::Duration ttl =
      answer == CalloutAnswer::kExists ? options_.positive_ttl : options_.negative_ttl;
  std::lock_guard lock(mutex_);
  if (const auto it = entries_.find(key); it != entries_.end()) {
    EraseLocked(it);
  }
  while (entries_.size() >= options_.max_entries) {
    EraseLocked(entries_.find(order_.front()));
  }
  order_.push_back(key);
  entries_.emplace(key, Entry{answer, clock_->Monotonic() + ttl, std::prev(order_.end())});
}

size_t CalloutCache::size() const {
  std::lock_guard lock(mutex_);
  return entries_.size();
}

void CalloutCache::EraseLocked(std::unordered_map<std::string, Entry>::iterator it) {
  order_.erase(it->second.order);
  entries_.erase(it);
}

Callout::Callout(CalloutOptions options, const Clock* clock)
    : probe_options_(std::move(options.probe)),
      unreachable_ttl_(options.unreachable_ttl),
      clock_(clock),
      cache_(options.cache, clock),
      pool_(options.threads) {}

std::string Callout::HostsKey(const std::vector<HostPort>& hosts) {
  std::string key;
  for (const HostPort& host : hosts) {
    key += host.ToString();
    key += ',';
  }
  return key;
}

void Callout::Verify(const std::vector<HostPort>& hosts, const std::string& address, Done done) {
  // Local parts are matched without case here as in the relay policy: a client cannot make
  // us probe once per spelling.
  const std::string key = absl::AsciiStrToLower(address);
  if (const std::optional<CalloutAnswer> answer = cache_.Lookup(key)) {
    done(Result{*answer, /*cached=*/true});
    return;
  }
  {
    std::unique_lock lock(mutex_);
    if (const auto down = down_until_.find(HostsKey(hosts)); down != down_until_.end()) {
      if (clock_->Monotonic() < down->second) {
        lock.unlock();
        done(Result{CalloutAnswer::kUnreachable, /*cached=*/false});
        return;
      }
      down_until_.erase(down);
    }
    std::vector<Done>& waiting = waiting_[key];
    waiting.push_back(std::move(done));
    if (waiting.size() > 1) {
      return;  // a probe for this address is already on its way
    }
  }
  pool_.Submit(
      [this, hosts, address, key](bool cancelled) { Probe(hosts, address, key, cancelled); });
}

void Callout::Probe(const std::vector<HostPort>& hosts, const std::string& address,
                    const std::string& key, bool cancelled) {
  const CalloutAnswer answer =
      cancelled ? CalloutAnswer::kUnreachable : ProbeRecipient(hosts, address, probe_options_);
  if (!cancelled) {
    cache_.Store(key, answer);
    Log().Info("callout", {{"address", address}, {"answer", CalloutAnswerName(answer)}});
  }
  std::vector<Done> waiting;
  {
    std::lock_guard lock(mutex_);
    if (answer == CalloutAnswer::kUnreachable && !cancelled &&
        unreachable_ttl_ > absl::ZeroDuration()) {
      down_until_[HostsKey(hosts)] = clock_->Monotonic() + unreachable_ttl_;
    }
    const auto it = waiting_.find(key);
    waiting = std::move(it->second);
    waiting_.erase(it);
  }
  for (Done& done : waiting) {
    done(Result{answer, /*cached=*/false});
  }
}

CalloutFilter::CalloutFilter(const std::vector<DomainConfig>& domains, Callout* callout)
    : callout_(callout) {
  for (const DomainConfig& domain : domains) {
    if (domain.recipient_callout) {
      primaries_[absl::AsciiStrToLower(domain.name)] = domain.primary;
    }
  }
}

void CalloutFilter::Check(std::shared_ptr<const FilterInput> input, FilterDone done) {
  const auto it = primaries_.find(input->rcpt.domain);
  if (it == primaries_.end() || absl::EqualsIgnoreCase(input->rcpt.local_part, "postmaster")) {
    done(FilterResult::Continue());
    return;
  }
  callout_->Verify(
      it->second, input->rcpt.recipient.address(),
      [input, done = std::move(done)](Callout::Result result) mutable {
        FilterResult answer = Decide(input->rcpt, result);
        // The chain goes on on the connection's loop thread, not the pool's.
        if (input->executor) {
          input->executor->Run([done = std::move(done), answer = std::move(answer)]() mutable {
            done(std::move(answer));
          });
          return;
        }
        done(std::move(answer));
      });
}

}  // namespace backstop::ingest
