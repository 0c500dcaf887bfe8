#include "delivery/mx_selection.h"

#include <algorithm>
#include <random>

#include "absl/strings/ascii.h"
#include "fmt/format.h"

namespace backstop::delivery {
namespace {

Route Failure(Route::Kind kind, std::string enhanced_status, std::string reason) {
  Route route;
  route.kind = kind;
  route.enhanced_status = std::move(enhanced_status);
  route.reason = std::move(reason);
  return route;
}

// Fisher-Yates with our own index draw: std::shuffle's use of the engine is
// implementation-defined, and the order must be reproducible from the seed alone.
void Shuffle(std::vector<RouteHost>::iterator begin, std::vector<RouteHost>::iterator end,
             std::mt19937_64& rng) {
  for (auto n = end - begin; n > 1; --n) {
    auto j = static_cast<std::ptrdiff_t>(rng() % static_cast<uint64_t>(n));
    std::iter_swap(begin + (n - 1), begin + j);
  }
}

}  // namespace

std::string NormalizeHostName(std::string_view name) {
  if (!name.empty() && name.back() == '.') {
    name.remove_suffix(1);
  }
  return absl::AsciiStrToLower(absl::string_view(name.data(), name.size()));
}

Route RouteToPrimaries(const std::vector<HostPort>& primaries) {
  Route route;
  route.kind = Route::Kind::kDeliver;
  uint16_t position = 0;
  for (const HostPort& primary : primaries) {
    route.hosts.push_back({NormalizeHostName(primary.host), primary.port, position++});
  }
  return route;
}

Route RouteByMx(std::string_view domain, const MxLookup& lookup, const RoutingOptions& options) {
  switch (lookup.status) {
    case MxLookupStatus::kTemporaryFailure:
      return Failure(Route::Kind::kTemporaryFailure, "4.4.3",
                     fmt::format("MX lookup of {} failed: {}", domain, lookup.error));
    case MxLookupStatus::kNoMxNoAddress:
      return Failure(Route::Kind::kPermanentFailure, "5.1.2",
                     fmt::format("{} has no MX and no address records", domain));
    case MxLookupStatus::kNoMxButAddress: {
      std::string host = NormalizeHostName(domain);
      if (host == NormalizeHostName(options.our_hostname)) {
        return Failure(Route::Kind::kWeAreBestMx, "",
                       fmt::format("{} has no MX and its implicit MX is us", domain));
      }
      Route route;
      route.kind = Route::Kind::kDeliver;
      route.hosts.push_back({std::move(host), options.smtp_port, 0});
      return route;
    }
    case MxLookupStatus::kRecords:
      break;
  }

  std::vector<RouteHost> hosts;
  const std::string ourselves = NormalizeHostName(options.our_hostname);
  bool listed = false;
  uint16_t our_preference = 0;
  for (const MxRecord& record : lookup.records) {
    std::string exchange = NormalizeHostName(record.exchange);
    if (exchange.empty()) {
      continue;  // a null MX record
    }
    if (exchange == ourselves) {
      our_preference = listed ? std::min(our_preference, record.preference) : record.preference;
      listed = true;
    }
    hosts.push_back({std::move(exchange), options.smtp_port, record.preference});
  }
  if (hosts.empty()) {
    if (!lookup.records.empty()) {
      return Failure(Route::Kind::kPermanentFailure, "5.1.10",
                     fmt::format("{} has a null MX: it accepts no mail (RFC 7505)", domain));
    }
    // An answer without records is not NODATA: the shell mislabelled it, so never bounce on it.
    return Failure(Route::Kind::kTemporaryFailure, "4.4.3",
                   fmt::format("MX lookup of {} returned no records", domain));
  }
  if (listed) {
    std::erase_if(hosts, [&](const RouteHost& host) { return host.preference >= our_preference; });
    if (hosts.empty()) {
      return Failure(
          Route::Kind::kWeAreBestMx, "",
          fmt::format("we ({}) are the best MX of {}: nothing to deliver to", ourselves, domain));
    }
  }

  std::stable_sort(hosts.begin(), hosts.end(), [](const RouteHost& a, const RouteHost& b) {
    return a.preference < b.preference;
  });
  std::mt19937_64 rng(options.shuffle_seed);
  for (auto group = hosts.begin(); group != hosts.end();) {
    auto group_end = std::find_if(group, hosts.end(), [&](const RouteHost& host) {
      return host.preference != group->preference;
    });
    Shuffle(group, group_end, rng);
    group = group_end;
  }
  Route route;
  route.kind = Route::Kind::kDeliver;
  route.hosts = std::move(hosts);
  return route;
}

}  // namespace backstop::delivery
