#pragma once

// The DNS-based filters of DESIGN §3.3: the client's reverse DNS (PTR or forward-confirmed),
// DNS block and allow lists (RFC 5782), and the sender domain (MX or address records, no null
// MX, RFC 7505).
//
// rDNS and DNSBL look the client up at connect, before the banner (the chain waits; each lookup
// is bounded by the resolver's timeout), and keep their verdict in the ConnectionState: a
// refusal is given at MAIL, where RFC 5321 allows a 5xx that is not the end of the session, and
// is counted there, once per transaction. DNS errors are never a reason to refuse for good:
// rDNS and sender checks answer 4xx, block lists fail open (counted).
//
// All lookups go through FilterInput::dns on the connection's loop thread
// (FilterInput::executor; inline when there is no executor, as in tests with a fake client).

#include <memory>
#include <string_view>
#include <vector>

#include "common/config.h"
#include "ingest/filter.h"

namespace backstop::ingest {

// "rdns" (connect, mail). Connect: the client's PTR names; with kFcrdns, the addresses of the
// first kMaxConfirmedNames of them, one of which must be the client's. The name found (in ptr
// mode the first PTR name, unconfirmed) becomes ConnectionState::rdns_name. MAIL: 550 5.7.25
// (no PTR: "no_ptr"; no name resolves back: "not_confirmed") or 450 4.7.25 ("dns_error").
// Stateless; any loop thread.
class RdnsFilter : public Filter {
 public:
  // Bounds the forward lookups one client can cause with many PTR records.
  static constexpr size_t kMaxConfirmedNames = 10;

  explicit RdnsFilter(RdnsRequirement require) : require_(require) {}
  std::string_view name() const override { return "rdns"; }
  bool Handles(Stage stage) const override {
    return stage == Stage::kConnect || stage == Stage::kMail;
  }
  void Check(std::shared_ptr<const FilterInput> input, FilterDone done) override;

 private:
  const RdnsRequirement require_;
};

// "dnsbl" (connect, mail). Connect: the client's A records in every block and allow zone, in
// parallel. A hit in an allow zone sets ConnectionState::dnswl_listed and skips the block
// verdict ("allowlisted"); else a hit in a block zone (the first in configuration order) is
// refused at MAIL with 554 5.7.1 and the zone's TXT reason ("listed"). Answers outside
// 127.0.0.2–127.0.0.255 that are not configured codes ("bad_answer", e.g. 127.255.255.254) and
// failed lookups ("dns_error") fail open. Immutable; any loop thread.
class DnsblFilter : public Filter {
 public:
  explicit DnsblFilter(const DnsblConfig& config)
      : zones_(config.zones), allow_zones_(config.allow_zones) {}
  std::string_view name() const override { return "dnsbl"; }
  bool Handles(Stage stage) const override {
    return stage == Stage::kConnect || stage == Stage::kMail;
  }
  void Check(std::shared_ptr<const FilterInput> input, FilterDone done) override;

 private:
  const std::vector<DnsblZone> zones_;
  const std::vector<DnsblZone> allow_zones_;
};

// "sender" (mail). The reverse-path's domain must accept mail: MX records that are not a null
// MX, or, without MX records, A/AAAA records (RFC 5321 §5.1); else 550 5.1.8 ("null_mx",
// "nxdomain", "no_address"); 451 4.1.8 on DNS errors ("dns_error"). <> and address literals
// pass without a lookup; so do internationalised domains ("unchecked_idn": we hold no IDNA
// converter, and their U-labels cannot be queried as they are). Stateless; any loop thread.
class SenderFilter : public Filter {
 public:
  std::string_view name() const override { return "sender"; }
  bool Handles(Stage stage) const override { return stage == Stage::kMail; }
  void Check(std::shared_ptr<const FilterInput> input, FilterDone done) override;
};

}  // namespace backstop::ingest
