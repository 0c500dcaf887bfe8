#pragma once

// Routing of one destination domain (DESIGN §3.4, RFC 5321 §5.1, RFC 7505): which hosts to try,
// in which order, from the domain's configured primaries or from its MX records. Pure: the
// delivery shell does the DNS look-ups (c-ares) and hands the answers in, then resolves each
// host of the result to addresses itself.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/config.h"

namespace backstop::delivery {

struct MxRecord {
  uint16_t preference = 0;
  std::string exchange;  // as in the answer; a trailing dot is allowed
};

// What the MX look-up of the domain found.
enum class MxLookupStatus : uint8_t {
  kRecords,           // at least one MX record (possibly the null MX)
  kNoMxButAddress,    // NODATA or NXDOMAIN for MX, but the domain has A/AAAA records
  kNoMxNoAddress,     // neither MX nor A/AAAA: not a mail domain
  kTemporaryFailure,  // SERVFAIL, timeout, ...: DNS failures are always temporary
};

struct MxLookup {
  MxLookupStatus status = MxLookupStatus::kTemporaryFailure;
  std::vector<MxRecord> records;  // for kRecords
  std::string error;              // for kTemporaryFailure, for the log and last_error
};

// One host to try: a name (or IP literal for configured primaries) and port.
struct RouteHost {
  std::string host;  // lower-case, without a trailing dot
  uint16_t port = 25;
  uint16_t preference = 0;  // the MX preference; the position for configured primaries
  friend bool operator==(const RouteHost&, const RouteHost&) = default;
};

struct Route {
  enum class Kind : uint8_t {
    kDeliver,           // try `hosts` in order
    kWeAreBestMx,       // nothing to deliver to: the entry stays queued (not a failure)
    kPermanentFailure,  // bounce every recipient with `enhanced_status`
    kTemporaryFailure,  // retry later (DNS failure)
  };
  Kind kind = Kind::kTemporaryFailure;
  std::vector<RouteHost> hosts;
  std::string enhanced_status;  // for failures: "5.1.10", "5.1.2", "4.4.3"
  std::string reason;           // human-readable, for DSNs and logs
};

struct RoutingOptions {
  std::string our_hostname;   // [node] hostname: how we recognise ourselves in MX lists
  uint16_t smtp_port = 25;    // [delivery] smtp_port, for MX-routed hosts
  uint64_t shuffle_seed = 0;  // orders hosts of equal preference (RFC 5321 §5.1)
};

// The configured primaries, in configuration order (no DNS, no self check: the operator named
// them).
Route RouteToPrimaries(const std::vector<HostPort>& primaries);

// The route from the MX look-up of `domain`:
// - MX records sorted by preference, ties shuffled with `shuffle_seed` (deterministic for a
//   given seed); every record whose preference is >= the lowest preference of a record naming
//   our hostname (case-insensitive, trailing dot ignored) is dropped, so we never deliver to
//   ourselves or to a peer backup; when that leaves nothing, kWeAreBestMx.
// - The null MX (RFC 7505: a single record whose exchange is ".") → kPermanentFailure 5.1.10.
//   A "." exchange among other records is ignored (RFC 7505 forbids the mix).
// - kNoMxButAddress → the implicit MX: the domain itself at preference 0 (RFC 5321 §5.1), or
//   kWeAreBestMx when the domain is our own hostname.
// - kNoMxNoAddress → kPermanentFailure 5.1.2; kTemporaryFailure → kTemporaryFailure 4.4.3.
Route RouteByMx(std::string_view domain, const MxLookup& lookup, const RoutingOptions& options);

// Host names compare case-insensitively and without a trailing dot.
std::string NormalizeHostName(std::string_view name);

}  // namespace backstop::delivery
