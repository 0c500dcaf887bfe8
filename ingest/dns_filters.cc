#include "ingest/dns_filters.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"

namespace backstop::ingest {
namespace {

// Runs `task` where input.dns may be called: its loop thread.
void OnDnsThread(const FilterInput& input, std::function<void()> task) {
  if (input.executor) {
    input.executor->Run(std::move(task));
  } else {
    task();
  }
}

// Whether `status` is a definite answer (no such name or record, or a name that cannot exist)
// rather than a failure to get one.
bool IsDefinite(const absl::Status& status) {
  return absl::IsNotFound(status) || absl::IsInvalidArgument(status);
}

// Keeps a refusal decided at connect for the MAIL stage; the first one decided wins.
void DeferRefusal(ConnectionState& state, std::string_view filter, Reply reply,
                  std::string_view reason) {
  std::lock_guard lock(state.mutex);
  if (state.deferred_refusal.has_value()) {
    return;
  }
  state.deferred_refusal = std::move(reply);
  state.deferred_refusal_filter = std::string(filter);
  state.deferred_refusal_reason = std::string(reason);
}

// MAIL: the refusal `filter` decided at connect, if it decided one.
FilterResult DeferredRefusal(const FilterInput& input, std::string_view filter) {
  std::lock_guard lock(input.state->mutex);
  if (input.state->deferred_refusal.has_value() && input.state->deferred_refusal_filter == filter) {
    return FilterResult::Reject(*input.state->deferred_refusal,
                                input.state->deferred_refusal_reason);
  }
  return FilterResult::Continue();
}

// An IP's 16 bytes (IPv4 as IPv4-mapped IPv6), so that textual forms that differ ("::ffff:
// 192.0.2.1", "2001:DB8::1") compare equal.
std::optional<std::array<uint8_t, 16>> IpBytes(const std::string& ip) {
  std::array<uint8_t, 16> bytes{};
  in_addr v4{};
  if (inet_pton(AF_INET, ip.c_str(), &v4) == 1) {
    bytes[10] = 0xff;
    bytes[11] = 0xff;
    std::memcpy(bytes.data() + 12, &v4, sizeof(v4));
    return bytes;
  }
  in6_addr v6{};
  if (inet_pton(AF_INET6, ip.c_str(), &v6) == 1) {
    std::memcpy(bytes.data(), &v6, sizeof(v6));
    return bytes;
  }
  return std::nullopt;
}

// --- rDNS ---

Reply RdnsRefusal(const std::string& ip, std::string_view why) {
  return Reply{550, "5.7.25", {fmt::format("Client host [{}] {}", ip, why)}};
}

Reply RdnsTempfail(const std::string& ip) {
  return Reply{450,
               "4.7.25",
               {fmt::format("Client host [{}]: reverse DNS lookup failed, try again later", ip)}};
}

void RdnsFailed(const FilterInput& input, const FilterDone& done, const absl::Status& status) {
  if (IsDefinite(status)) {
    DeferRefusal(*input.state, "rdns", RdnsRefusal(input.client.ip, "has no PTR record"), "no_ptr");
  } else {
    DeferRefusal(*input.state, "rdns", RdnsTempfail(input.client.ip), "dns_error");
  }
  done(FilterResult::Continue());
}

void SetRdnsName(const FilterInput& input, std::string name) {
  std::lock_guard lock(input.state->mutex);
  input.state->rdns_name = std::move(name);
}

// The forward lookups of the client's PTR names, in flight; shared by their callbacks.
struct Confirmation {
  std::shared_ptr<const FilterInput> input;
  FilterDone done;
  std::array<uint8_t, 16> client{};
  std::mutex mutex;
  std::vector<std::string> names;
  std::vector<AddressResult> results;  // by index of `names`; guarded by mutex
  size_t pending = 0;                  // guarded by mutex

  bool Resolves(const AddressResult& result) const {
    return result.status.ok() &&
           std::any_of(result.addresses.begin(), result.addresses.end(),
                       [this](const std::string& address) { return IpBytes(address) == client; });
  }

  // After the last answer: the first name (in PTR order) that resolves to the client.
  void Finish() {
    bool temporary_error = false;
    for (size_t i = 0; i < names.size(); ++i) {
      if (Resolves(results[i])) {
        SetRdnsName(*input, names[i]);
        done(FilterResult::Continue());
        return;
      }
      const absl::Status& status = results[i].status;
      temporary_error = temporary_error || (!status.ok() && !IsDefinite(status));
    }
    if (temporary_error) {
      DeferRefusal(*input->state, "rdns", RdnsTempfail(input->client.ip), "dns_error");
    } else {
      DeferRefusal(*input->state, "rdns",
                   RdnsRefusal(input->client.ip, "has no PTR name that resolves back to it"),
                   "not_confirmed");
    }
    done(FilterResult::Continue());
  }
};

void Confirm(std::shared_ptr<const FilterInput> input, FilterDone done,
             std::vector<std::string> names) {
  auto confirmation = std::make_shared<Confirmation>();
  confirmation->input = input;
  confirmation->done = std::move(done);
  confirmation->client = *IpBytes(input->client.ip);
  names.resize(std::min(names.size(), RdnsFilter::kMaxConfirmedNames));
  confirmation->names = names;
  confirmation->results.resize(names.size());
  confirmation->pending = names.size();
  for (size_t i = 0; i < names.size(); ++i) {
    input->dns->LookupAddresses(names[i], [confirmation, i](AddressResult result) {
      {
        std::lock_guard lock(confirmation->mutex);
        confirmation->results[i] = std::move(result);
        if (--confirmation->pending > 0) {
          return;
        }
      }
      confirmation->Finish();
    });
  }
}

// --- DNSBL ---

enum class ZoneAnswer : uint8_t { kNotListed, kListed, kBadAnswer, kDnsError };

// RFC 5782 §2.1: 127.0.0.2 to 127.0.0.255 is the range of "listed" answers.
bool InListedRange(const std::string& address) {
  in_addr addr{};
  if (inet_pton(AF_INET, address.c_str(), &addr) != 1) {
    return false;
  }
  const uint32_t host = ntohl(addr.s_addr);
  return (host >> 8) == 0x7f0000 && (host & 0xff) >= 2;
}

ZoneAnswer Classify(const DnsblZone& zone, const AddressResult& result) {
  if (!result.status.ok()) {
    return absl::IsNotFound(result.status) ? ZoneAnswer::kNotListed : ZoneAnswer::kDnsError;
  }
  bool bad = false;
  for (const std::string& address : result.addresses) {
    const bool is_code =
        std::find(zone.codes.begin(), zone.codes.end(), address) != zone.codes.end();
    if (zone.codes.empty() ? InListedRange(address) : is_code) {
      return ZoneAnswer::kListed;
    }
    // A configured list of codes leaves out others of the range on purpose; anything outside
    // it is an error code of the list (127.255.255.x) or a resolver that makes answers up.
    bad = bad || (!is_code && !InListedRange(address));
  }
  return bad ? ZoneAnswer::kBadAnswer : ZoneAnswer::kNotListed;
}

// The list's own explanation, as far as it is fit for a reply line.
std::string ReplyText(const TxtResult& txt) {
  constexpr size_t kMaxText = 200;
  std::string text;
  if (txt.status.ok() && !txt.texts.empty()) {
    for (char c : txt.texts.front()) {
      if (c >= 0x20 && c < 0x7f && text.size() < kMaxText) {
        text.push_back(c);
      }
    }
  }
  return std::string(absl::StripAsciiWhitespace(text));
}

// The zone queries of one connection, in flight; shared by their callbacks.
struct Listing {
  struct Query {
    DnsblZone zone;
    bool allow = false;  // an allow (DNSWL) zone
    std::string name;    // the query name; empty when the client's IP cannot be queried
    ZoneAnswer answer = ZoneAnswer::kDnsError;
  };

  std::shared_ptr<const FilterInput> input;
  FilterDone done;
  std::mutex mutex;
  std::vector<Query> queries;  // block zones first, then allow zones; answers guarded by mutex
  size_t pending = 0;          // guarded by mutex

  bool Any(bool allow, ZoneAnswer answer) const {
    return std::any_of(queries.begin(), queries.end(), [&](const Query& query) {
      return query.allow == allow && query.answer == answer;
    });
  }

  // After the last answer: an allow zone's hit outweighs any block zone's.
  void Finish() {
    if (Any(true, ZoneAnswer::kListed)) {
      {
        std::lock_guard lock(input->state->mutex);
        input->state->dnswl_listed = true;
      }
      done(FilterResult::Continue("allowlisted"));
      return;
    }
    for (const Query& query : queries) {
      if (!query.allow && query.answer == ZoneAnswer::kListed) {
        Refuse(query);
        return;
      }
    }
    const bool bad = Any(false, ZoneAnswer::kBadAnswer) || Any(true, ZoneAnswer::kBadAnswer);
    const bool error = Any(false, ZoneAnswer::kDnsError) || Any(true, ZoneAnswer::kDnsError);
    done(FilterResult::Continue(bad ? "bad_answer" : error ? "dns_error" : ""));
  }

  void Refuse(const Query& query) {
    input->dns->LookupTxt(query.name, [listed = input, finish = done,
                                       zone = query.zone.name](TxtResult txt) {
      const std::string text = ReplyText(txt);
      const std::string& ip = listed->client.ip;
      Reply reply{554, "5.7.1", {}};
      if (text.empty()) {
        reply.lines.push_back(fmt::format("Client host [{}] listed in {}", ip, zone));
      } else {
        reply.lines.push_back(fmt::format("Client host [{}] blocked using {}: {}", ip, zone, text));
      }
      DeferRefusal(*listed->state, "dnsbl", std::move(reply), "listed");
      finish(FilterResult::Continue());
    });
  }
};

void Lookup(std::shared_ptr<Listing> listing) {
  std::vector<size_t> started;
  for (size_t i = 0; i < listing->queries.size(); ++i) {
    if (!listing->queries[i].name.empty()) {
      started.push_back(i);
    }
  }
  listing->pending = started.size();
  if (started.empty()) {
    listing->Finish();
    return;
  }
  for (size_t i : started) {
    listing->input->dns->LookupA(listing->queries[i].name, [listing, i](AddressResult result) {
      {
        std::lock_guard lock(listing->mutex);
        Listing::Query& query = listing->queries[i];
        query.answer = Classify(query.zone, result);
        if (--listing->pending > 0) {
          return;
        }
      }
      listing->Finish();
    });
  }
}

// --- sender ---

Reply SenderRefusal(const std::string& domain, std::string_view why) {
  return Reply{550, "5.1.8", {fmt::format("Sender address rejected: domain {} {}", domain, why)}};
}

FilterResult SenderTempfail(const std::string& domain) {
  return FilterResult::Reject(
      Reply{451,
            "4.1.8",
            {fmt::format("Sender address rejected: cannot resolve domain {} now, try again later",
                         domain)}},
      "dns_error");
}

// RFC 5321 §5.1: without MX records, the domain's own addresses are its mail server.
void CheckSenderAddresses(std::shared_ptr<const FilterInput> input, FilterDone done,
                          const std::string& domain) {
  input->dns->LookupAddresses(domain, [done = std::move(done), domain](AddressResult result) {
    if (result.status.ok()) {
      done(FilterResult::Continue());
    } else if (IsNxDomain(result.status)) {
      done(FilterResult::Reject(SenderRefusal(domain, "does not exist"), "nxdomain"));
    } else if (IsDefinite(result.status)) {
      done(FilterResult::Reject(SenderRefusal(domain, "has no MX or address records"),
                                "no_address"));
    } else {
      done(SenderTempfail(domain));
    }
  });
}

}  // namespace

void RdnsFilter::Check(std::shared_ptr<const FilterInput> input, FilterDone done) {
  if (input->stage == Stage::kMail) {
    done(DeferredRefusal(*input, name()));
    return;
  }
  if (input->dns == nullptr || !IpBytes(input->client.ip).has_value()) {
    RdnsFailed(*input, done, absl::UnavailableError("no resolver or no client address"));
    return;
  }
  OnDnsThread(*input, [input, done = std::move(done), require = require_]() mutable {
    input->dns->LookupPtr(input->client.ip,
                          [input, done = std::move(done), require](NamesResult ptr) mutable {
                            if (ptr.status.ok() && ptr.names.empty()) {
                              ptr.status = absl::NotFoundError("no PTR names");
                            }
                            if (!ptr.status.ok()) {
                              RdnsFailed(*input, done, ptr.status);
                              return;
                            }
                            if (require == RdnsRequirement::kPtr) {
                              SetRdnsName(*input, ptr.names.front());
                              done(FilterResult::Continue());
                              return;
                            }
                            Confirm(std::move(input), std::move(done), std::move(ptr.names));
                          });
  });
}

void DnsblFilter::Check(std::shared_ptr<const FilterInput> input, FilterDone done) {
  if (input->stage == Stage::kMail) {
    done(DeferredRefusal(*input, name()));
    return;
  }
  if (input->dns == nullptr) {
    done(FilterResult::Continue("dns_error"));
    return;
  }
  auto listing = std::make_shared<Listing>();
  listing->input = input;
  listing->done = std::move(done);
  for (const auto& [zones, allow] : {std::pair{&zones_, false}, std::pair{&allow_zones_, true}}) {
    for (const DnsblZone& zone : *zones) {
      absl::StatusOr<std::string> query = DnsblQueryName(input->client.ip, zone.name);
      listing->queries.push_back(
          {zone, allow, query.ok() ? *std::move(query) : "", ZoneAnswer::kDnsError});
    }
  }
  OnDnsThread(*input, [listing] { Lookup(listing); });
}

void SenderFilter::Check(std::shared_ptr<const FilterInput> input, FilterDone done) {
  const std::string& path = input->mail.reverse_path;
  const size_t at = path.rfind('@');
  if (path.empty() || at == std::string::npos) {
    done(FilterResult::Continue());
    return;
  }
  std::string domain = absl::AsciiStrToLower(path.substr(at + 1));
  if (!domain.empty() && domain.back() == '.') {
    domain.pop_back();
  }
  if (domain.empty() || domain.front() == '[') {
    done(FilterResult::Continue());
    return;
  }
  if (std::any_of(domain.begin(), domain.end(),
                  [](char c) { return static_cast<unsigned char>(c) >= 0x80; })) {
    done(FilterResult::Continue("unchecked_idn"));
    return;
  }
  if (input->dns == nullptr) {
    done(SenderTempfail(domain));
    return;
  }
  OnDnsThread(*input, [input, done = std::move(done), domain]() mutable {
    input->dns->LookupMx(domain, [input, done = std::move(done), domain](MxResult mx) mutable {
      if (mx.status.ok()) {
        if (mx.null_mx) {
          done(FilterResult::Reject(SenderRefusal(domain, "accepts no mail (null MX)"), "null_mx"));
        } else {
          done(FilterResult::Continue());
        }
      } else if (IsDefinite(mx.status)) {
        CheckSenderAddresses(std::move(input), std::move(done), domain);
      } else {
        done(SenderTempfail(domain));
      }
    });
  });
}

}  // namespace backstop::ingest
