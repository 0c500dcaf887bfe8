#include "ingest/relay_policy.h"

#include <utility>

#include <fmt/format.h>

#include "absl/strings/ascii.h"
#include "common/log.h"

namespace backstop::ingest {
namespace {

std::string Lower(std::string_view text) {
  std::string out(text);
  absl::AsciiStrToLower(&out);
  return out;
}

// The domain as matched: lower-case, one trailing dot ignored (RFC 1034 absolute names).
std::string CanonicalDomain(std::string_view domain) {
  if (!domain.empty() && domain.back() == '.') {
    domain.remove_suffix(1);
  }
  return Lower(domain);
}

Verdict Refuse(int code, const char* enhanced, std::string text) {
  return Verdict::Reject(Reply{code, enhanced, {std::move(text)}});
}

// Entries are bare local parts or full addresses of their domain.
std::unordered_set<std::string> LocalParts(const std::vector<std::string>& recipients) {
  std::unordered_set<std::string> local_parts;
  for (const std::string& recipient : recipients) {
    const size_t at = recipient.rfind('@');
    local_parts.insert(Lower(at == std::string::npos ? recipient : recipient.substr(0, at)));
  }
  return local_parts;
}

}  // namespace

RelayPolicy::RelayPolicy(const std::vector<DomainConfig>& domains) {
  for (const DomainConfig& config : domains) {
    Domain& domain = domains_[CanonicalDomain(config.name)];
    domain.local_parts = LocalParts(config.recipients);
    domain.file = config.recipients_file;
  }
}

absl::StatusOr<std::shared_ptr<const RelayPolicy>> RelayPolicy::Load(
    const std::vector<DomainConfig>& domains, const RelayPolicy* previous) {
  static const log::Logger logger("ingest");
  auto policy = std::make_shared<RelayPolicy>(domains);
  for (auto& [name, domain] : policy->domains_) {
    if (domain.file.empty()) {
      continue;
    }
    absl::StatusOr<std::vector<std::string>> entries = ReadRecipientsFile(domain.file, name);
    if (entries.ok()) {
      domain.file_local_parts = LocalParts(*entries);
      continue;
    }
    if (previous == nullptr) {
      return absl::InvalidArgumentError(fmt::format("domain {}: recipients_file: {}", name,
                                                    std::string(entries.status().message())));
    }
    // The entries the previous policy read from the same file, whichever domain named it.
    for (const auto& [unused_name, old] : previous->domains_) {
      if (old.file == domain.file && old.file_local_parts.has_value()) {
        domain.file_local_parts = old.file_local_parts;
        break;
      }
    }
    logger.Error("recipients file not reloaded",
                 {{"domain", name},
                  {"path", domain.file},
                  {"error", std::string(entries.status().message())},
                  {"kept", domain.file_local_parts.has_value() ? "previous entries"
                                                               : "none: recipients get 451"}});
  }
  return policy;
}

bool RelayPolicy::IsRelayDomain(std::string_view domain) const {
  return domains_.contains(CanonicalDomain(domain));
}

Verdict RelayPolicy::Check(const RcptRequest& rcpt) const {
  const std::string& address = rcpt.recipient.address();
  if (rcpt.domain.empty()) {
    return Refuse(550, "5.1.1", "<postmaster>: this host is a backup MX and has no mailboxes");
  }
  if (rcpt.domain.front() == '[') {
    return Refuse(554, "5.7.1", "<" + address + ">: Relay access denied");
  }
  // user%other@relay.example, other!user@relay.example or "user@other"@relay.example (the
  // local part arrives unquoted) would make the primary relay on.
  if (rcpt.local_part.find_first_of("%!@") != std::string::npos) {
    return Refuse(554, "5.7.1", "<" + address + ">: source routing is not allowed");
  }
  const auto it = domains_.find(CanonicalDomain(rcpt.domain));
  if (it == domains_.end()) {
    return Refuse(554, "5.7.1", "<" + address + ">: Relay access denied");
  }
  const Domain& domain = it->second;
  const std::string local_part = Lower(rcpt.local_part);
  if (local_part == "postmaster" || domain.local_parts.contains(local_part)) {
    return Verdict::Accept();
  }
  if (domain.file.empty()) {
    if (domain.local_parts.empty()) {
      return Verdict::Accept();
    }
  } else if (!domain.file_local_parts.has_value()) {
    return Refuse(451, "4.3.0", "<" + address + ">: recipient list unavailable, try again later");
  } else if (domain.file_local_parts->contains(local_part)) {
    return Verdict::Accept();
  }
  return Refuse(550, "5.1.1", "<" + address + ">: Recipient address rejected: User unknown");
}

void RelayFilter::Check(std::shared_ptr<const FilterInput> input, FilterDone done) {
  Verdict verdict = policy_->Check(input->rcpt);
  if (verdict.kind == Verdict::Kind::kAccept) {
    done(FilterResult::Continue());
    return;
  }
  const std::string& enhanced = verdict.reply->enhanced;
  const char* reason = enhanced == "5.1.1"   ? "unknown_recipient"
                       : enhanced == "4.3.0" ? "list_unavailable"
                                             : "relay_denied";
  done(FilterResult::Reject(std::move(*verdict.reply), reason));
}

}  // namespace backstop::ingest
