#include "ingest/greylist_filter.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include <fmt/format.h>

#include "absl/strings/ascii.h"

namespace backstop::ingest {
namespace {

std::string Ipv4Network(in_addr address) {
  reinterpret_cast<unsigned char*>(&address.s_addr)[3] = 0;
  char text[INET_ADDRSTRLEN] = {};
  inet_ntop(AF_INET, &address, text, sizeof(text));
  return std::string(text) + "/24";
}

// Lower-cased, without a trailing dot.
std::string CanonicalDomain(std::string_view domain) {
  std::string canonical = absl::AsciiStrToLower(std::string(domain));
  if (!canonical.empty() && canonical.back() == '.') {
    canonical.pop_back();
  }
  return canonical;
}

// The canonical domain part of an address; empty when there is none.
std::string DomainOf(std::string_view address) {
  const size_t at = address.rfind('@');
  return at == std::string_view::npos ? "" : CanonicalDomain(address.substr(at + 1));
}

}  // namespace

std::optional<std::string> GreylistNetwork(std::string_view ip) {
  const std::string text(ip);
  in_addr v4{};
  if (inet_pton(AF_INET, text.c_str(), &v4) == 1) {
    return Ipv4Network(v4);
  }
  in6_addr v6{};
  if (inet_pton(AF_INET6, text.c_str(), &v6) != 1) {
    return std::nullopt;
  }
  if (IN6_IS_ADDR_V4MAPPED(&v6)) {
    std::memcpy(&v4.s_addr, v6.s6_addr + 12, sizeof(v4.s_addr));
    return Ipv4Network(v4);
  }
  std::memset(v6.s6_addr + 8, 0, 8);
  char network[INET6_ADDRSTRLEN] = {};
  inet_ntop(AF_INET6, &v6, network, sizeof(network));
  return std::string(network) + "/64";
}

std::string NormalizeGreylistAddress(std::string_view address) {
  const size_t at = address.rfind('@');
  if (at == std::string_view::npos) {
    return std::string(address);
  }
  return std::string(address.substr(0, at + 1)) + DomainOf(address);
}

GreylistFilter::GreylistFilter(GreylistFilterOptions options) : options_(std::move(options)) {
  std::vector<std::string> clients;
  for (const std::string& entry : options_.config.allow) {
    // The configuration accepted each entry as a CIDR, an address or a domain name; one that
    // parses as an address is one (a domain name's last label is never all digits).
    if (CidrSet::Parse({entry}).ok()) {
      clients.push_back(entry);
    } else {
      allowed_domains_.push_back(CanonicalDomain(entry));
    }
  }
  absl::StatusOr<CidrSet> parsed = CidrSet::Parse(clients);
  if (parsed.ok()) {
    allowed_clients_ = *std::move(parsed);
  }
}

bool GreylistFilter::SenderAllowed(std::string_view reverse_path) const {
  const std::string domain = DomainOf(reverse_path);
  if (domain.empty()) {
    return false;
  }
  return std::any_of(
      allowed_domains_.begin(), allowed_domains_.end(), [&domain](const std::string& allowed) {
        return domain == allowed || (domain.size() > allowed.size() && domain.ends_with(allowed) &&
                                     domain[domain.size() - allowed.size() - 1] == '.');
      });
}

void GreylistFilter::Check(std::shared_ptr<const FilterInput> input, FilterDone done) {
  bool dnswl_listed = false;
  {
    std::lock_guard lock(input->state->mutex);
    dnswl_listed = input->state->dnswl_listed;
  }
  if (dnswl_listed) {
    done(FilterResult::Continue("dnswl"));
    return;
  }
  if (allowed_clients_.Contains(input->client.ip)) {
    done(FilterResult::Continue("allowed_client"));
    return;
  }
  if (SenderAllowed(input->mail.reverse_path)) {
    done(FilterResult::Continue("allowed_sender"));
    return;
  }
  const std::optional<std::string> network = GreylistNetwork(input->client.ip);
  if (!network.has_value()) {
    done(FilterResult::Continue("no_network"));
    return;
  }

  queue::GreylistCheck check;
  check.set_client_network(*network);
  check.set_sender(NormalizeGreylistAddress(input->mail.reverse_path));
  check.set_recipient(NormalizeGreylistAddress(input->rcpt.recipient.address()));
  check.set_delay_duration_ms(absl::ToInt64Milliseconds(options_.config.delay));
  check.set_retry_window_duration_ms(absl::ToInt64Milliseconds(options_.config.retry_window));
  check.set_pass_lifetime_duration_ms(absl::ToInt64Milliseconds(kGreylistPassLifetime));
  check.set_auto_allow_after(options_.config.auto_allow_after);
  options_.check(
      check, [input, done = std::move(done), clock = options_.clock,
              delay = options_.config.delay](absl::StatusOr<queue::GreylistResult> result) mutable {
        if (!result.ok()) {
          DoneOnLoop(*input, std::move(done), FilterResult::Continue("queue_error"));
          return;
        }
        if (result->verdict() == queue::GreylistResult::PASS) {
          DoneOnLoop(*input, std::move(done),
                     FilterResult::Continue(result->client_allowed() ? "auto_allowed" : "passed"));
          return;
        }
        // The queue's clock decided; ours only phrases the hint, so it is clamped to the delay.
        absl::Duration wait = absl::FromUnixMillis(result->retry_after_ms()) - clock->Now();
        wait = std::clamp(wait, absl::Seconds(1), std::max(delay, absl::Seconds(1)));
        const int64_t seconds = absl::ToInt64Seconds(absl::Ceil(wait, absl::Seconds(1)));
        DoneOnLoop(
            *input, std::move(done),
            FilterResult::Reject(
                Reply{451, "4.7.1", {fmt::format("Greylisted, try again in {} seconds", seconds)}},
                "greylisted"));
      });
}

}  // namespace backstop::ingest
