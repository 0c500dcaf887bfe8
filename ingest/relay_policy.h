#pragma once

// Relay control at RCPT time (DESIGN §3.3): which recipients this backup MX accepts. Only
// addresses in a configured relay domain, and, when the domain lists its recipients, only
// those (plus postmaster) — never an open relay, never mail for users that do not exist
// (which would turn into backscatter days later).

#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/config.h"
#include "ingest/filter.h"
#include "ingest/smtp_session.h"

namespace backstop::ingest {

// Immutable once built; shared read-only by every ingest thread and replaced as a whole on
// SIGHUP (IngestRole holds the current one).
class RelayPolicy {
 public:
  explicit RelayPolicy(const std::vector<DomainConfig>& domains);

  // kAccept, or kReject with the reply to send:
  //   554 5.7.1 for a domain we do not relay for, an address literal, or source routing
  //             through the local part ('%' or '!'), whatever the client's address;
  //   550 5.1.1 for a local part the domain's recipient list does not name;
  //   550 5.1.1 for a bare <postmaster>: we are no mailbox host.
  Verdict Check(const RcptRequest& rcpt) const;

  bool IsRelayDomain(std::string_view domain) const;

 private:
  struct Domain {
    // Lower-cased local parts; empty = any local part.
    std::unordered_set<std::string> local_parts;
  };
  std::unordered_map<std::string, Domain> domains_;  // by lower-case name
};

// The relay policy as the first filter of the RCPT stage ("relay").
class RelayFilter : public Filter {
 public:
  explicit RelayFilter(const std::vector<DomainConfig>& domains) : policy_(domains) {}
  std::string_view name() const override { return "relay"; }
  bool Handles(Stage stage) const override { return stage == Stage::kRcpt; }
  void Check(std::shared_ptr<const FilterInput> input, FilterDone done) override;

 private:
  const RelayPolicy policy_;
};

}  // namespace backstop::ingest
