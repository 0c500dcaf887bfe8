#pragma once

// Relay control at RCPT time (DESIGN §3.3): which recipients this backup MX accepts. Only
// addresses in a configured relay domain, and, when the domain lists its recipients, only
// those (plus postmaster) — never an open relay, never mail for users that do not exist
// (which would turn into backscatter days later).

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "absl/status/statusor.h"
#include "common/config.h"
#include "ingest/filter.h"
#include "ingest/smtp_session.h"

namespace backstop::ingest {

// Immutable once built; shared read-only by every ingest thread and replaced as a whole on
// SIGHUP (IngestRole holds the current one).
class RelayPolicy {
 public:
  // From the configuration alone: the domains' `recipients_file`s are not read (a domain that
  // names one refuses its recipients with 451 until a policy is Load()ed). For tests.
  explicit RelayPolicy(const std::vector<DomainConfig>& domains);

  // With every domain's `recipients_file` read (ReadRecipientsFile). At startup (`previous`
  // null) a file that cannot be read or parsed is an error. On reload, such a file keeps the
  // entries `previous` had from the same path (and the problem is logged): a typo in a file an
  // operator is editing must not open the domain to every local part, nor close it. A file
  // with no previous entries leaves its domain answering 451 4.3.0 until a reload reads it.
  static absl::StatusOr<std::shared_ptr<const RelayPolicy>> Load(
      const std::vector<DomainConfig>& domains, const RelayPolicy* previous);

  // kAccept, or kReject with the reply to send:
  //   554 5.7.1 for a domain we do not relay for, an address literal, or source routing
  //             through the local part ('%' or '!'), whatever the client's address;
  //   550 5.1.1 for a local part the domain's recipients (list and file) do not name;
  //   550 5.1.1 for a bare <postmaster>: we are no mailbox host;
  //   451 4.3.0 for a domain whose recipients file has never been read.
  Verdict Check(const RcptRequest& rcpt) const;

  bool IsRelayDomain(std::string_view domain) const;

 private:
  struct Domain {
    // Lower-cased local parts from `recipients` and the file; empty (and no file) = any
    // local part.
    std::unordered_set<std::string> local_parts;
    std::string file;  // the recipients_file, empty = none
    // The file's own entries (lower-cased local parts), nullopt = never read successfully.
    std::optional<std::unordered_set<std::string>> file_local_parts;
  };
  std::unordered_map<std::string, Domain> domains_;  // by lower-case name
};

// The relay policy as the first filter of the RCPT stage ("relay").
class RelayFilter : public Filter {
 public:
  explicit RelayFilter(std::shared_ptr<const RelayPolicy> policy) : policy_(std::move(policy)) {}
  std::string_view name() const override { return "relay"; }
  bool Handles(Stage stage) const override { return stage == Stage::kRcpt; }
  void Check(std::shared_ptr<const FilterInput> input, FilterDone done) override;

 private:
  const std::shared_ptr<const RelayPolicy> policy_;
};

}  // namespace backstop::ingest
