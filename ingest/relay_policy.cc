#include "ingest/relay_policy.h"

#include "absl/strings/ascii.h"

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

}  // namespace

RelayPolicy::RelayPolicy(const std::vector<DomainConfig>& domains) {
  for (const DomainConfig& config : domains) {
    Domain& domain = domains_[CanonicalDomain(config.name)];
    for (const std::string& recipient : config.recipients) {
      // Entries are bare local parts or full addresses of this domain.
      const size_t at = recipient.rfind('@');
      domain.local_parts.insert(
          Lower(at == std::string::npos ? recipient : recipient.substr(0, at)));
    }
  }
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
  if (domain.local_parts.empty() || local_part == "postmaster" ||
      domain.local_parts.contains(local_part)) {
    return Verdict::Accept();
  }
  return Refuse(550, "5.1.1", "<" + address + ">: Recipient address rejected: User unknown");
}

void RelayFilter::Check(std::shared_ptr<const FilterInput> input, FilterDone done) {
  Verdict verdict = policy_.Check(input->rcpt);
  if (verdict.kind == Verdict::Kind::kAccept) {
    done(FilterResult::Continue());
    return;
  }
  const bool unknown_user = verdict.reply->enhanced == "5.1.1";
  done(FilterResult::Reject(std::move(*verdict.reply),
                            unknown_user ? "unknown_recipient" : "relay_denied"));
}

}  // namespace backstop::ingest
