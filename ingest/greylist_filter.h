#pragma once

// Greylisting at RCPT (DESIGN §3.3): a triplet (client network, sender, recipient) seen for the
// first time is told to come back later (451 4.7.1); a retry after `delay` and within
// `retry_window` passes. Spamware rarely retries; real MTAs always do. The state lives in the
// replicated queue (queue::QueueClient::CheckGreylist), so every ingest replica gives the same
// answer, and the queue's state machine decides: an early retry does not restart the delay, a
// passed triplet is remembered kGreylistPassLifetime after its last pass, and a client network
// whose `auto_allow_after` triplets passed is allowed outright.

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"
#include "common/clock.h"
#include "common/config.h"
#include "ingest/filter.h"
#include "ingest/limit_filters.h"
#include "ingest/proxy_protocol.h"
#include "proto/queue.pb.h"

namespace backstop::ingest {

// How long a passed triplet (and an auto-allowed network) is remembered after its last pass:
// postgrey's 35 days plus one, so that a correspondent who writes once a month is never
// greylisted again.
inline constexpr absl::Duration kGreylistPassLifetime = absl::Hours(24 * 36);

// The client network of a triplet: the /24 of an IPv4 address ("192.0.2.0/24"; an IPv4-mapped
// IPv6 address counts as IPv4), the /64 of an IPv6 one ("2001:db8:1:2::/64") — the retries of a
// sending pool come from neighbouring addresses. nullopt for text that is no address.
std::optional<std::string> GreylistNetwork(std::string_view ip);

// An address with its domain part lower-cased (local parts are case-sensitive, RFC 5321
// §2.4); empty stays empty (the null reverse-path <>).
std::string NormalizeGreylistAddress(std::string_view address);

using CheckGreylistCall = AsyncQueueCall<queue::GreylistCheck, queue::GreylistResult>;

struct GreylistFilterOptions {
  GreylistConfig config;
  CheckGreylistCall check;
  const Clock* clock = &RealClock::Get();  // for the "try again in" hint
};

// "greylist", the last RCPT filter (a check is a queue commit: everything cheaper refuses
// first). Skipped (and counted) for clients on the allow list (addresses and CIDRs), senders in
// an allowed domain or its subdomains, and clients a DNSWL zone lists (ConnectionState::
// dnswl_listed). A queue error lets the recipient through and is counted ("queue_error"), as
// postgrey does: greylisting is a heuristic, not worth refusing good mail over. Immutable;
// thread-safe.
class GreylistFilter : public Filter {
 public:
  explicit GreylistFilter(GreylistFilterOptions options);
  std::string_view name() const override { return "greylist"; }
  bool Handles(Stage stage) const override { return stage == Stage::kRcpt; }
  void Check(std::shared_ptr<const FilterInput> input, FilterDone done) override;

 private:
  bool SenderAllowed(std::string_view reverse_path) const;

  const GreylistFilterOptions options_;
  CidrSet allowed_clients_;
  std::vector<std::string> allowed_domains_;  // lower-case, no trailing dot
};

}  // namespace backstop::ingest
