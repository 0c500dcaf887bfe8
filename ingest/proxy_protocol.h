#pragma once

// The PROXY protocol header (haproxy's proxy-protocol.txt, versions 1 and 2) that a load
// balancer sends before the SMTP client's first byte, so that the client's real address
// survives a Kubernetes LoadBalancer (DESIGN §3.3). Sans-I/O: bytes in, a result out.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace backstop::ingest {

struct ProxyHeader {
  // False for v1 "UNKNOWN" and v2 LOCAL (a health check from the proxy itself): keep the
  // socket's own addresses.
  bool has_addresses = false;
  std::string source_ip;  // textual
  uint16_t source_port = 0;
  std::string destination_ip;
  uint16_t destination_port = 0;
  size_t header_size = 0;  // bytes consumed from the stream
};

enum class ProxyParse : uint8_t { kNeedMore, kDone };

struct ProxyParseResult {
  ProxyParse state = ProxyParse::kNeedMore;
  ProxyHeader header;  // when kDone
};

// Parses the start of a connection's byte stream. kNeedMore: not enough bytes yet (call again
// with more; a v1 header is at most 107 bytes, v2 at most 16 + 65535). An error
// (InvalidArgument) for anything that is not a valid v1 or v2 header: the connection is closed
// without a banner.
absl::StatusOr<ProxyParseResult> ParseProxyHeader(std::string_view bytes);

// A set of CIDRs ("10.0.0.0/8", "2001:db8::/32", or a single address) for `trusted_proxies`
// and filter allow lists. An IPv4 address matches in either spelling ("1.2.3.4" and
// "::ffff:1.2.3.4" are both in 1.2.3.0/24). Immutable; thread-safe.
class CidrSet {
 public:
  static absl::StatusOr<CidrSet> Parse(const std::vector<std::string>& cidrs);
  bool Contains(std::string_view ip) const;
  bool empty() const { return ranges_.empty(); }

 private:
  // IPv4 ranges are kept as IPv4-mapped IPv6 (::ffff:0:0/96 + the IPv4 prefix).
  struct Range {
    unsigned char bytes[16] = {};  // host bits zero
    int prefix_length = 0;         // 0..128
  };
  std::vector<Range> ranges_;
};

}  // namespace backstop::ingest
