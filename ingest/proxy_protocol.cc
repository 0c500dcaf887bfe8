#include "ingest/proxy_protocol.h"

#include <arpa/inet.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>

#include "common/status.h"

namespace backstop::ingest {
namespace {

constexpr std::string_view kV1Prefix = "PROXY ";
constexpr size_t kV1MaxSize = 107;  // including CRLF
constexpr std::string_view kV2Signature("\r\n\r\n\0\r\nQUIT\n", 12);
constexpr size_t kV2FixedSize = 16;

absl::Status Invalid(const std::string& why) {
  return absl::InvalidArgumentError("invalid PROXY protocol header: " + why);
}

ProxyParseResult NeedMore() {
  return ProxyParseResult{};
}

// True when `bytes` is a (possibly incomplete) start of `prefix`.
bool StartsLike(std::string_view bytes, std::string_view prefix) {
  const size_t n = std::min(bytes.size(), prefix.size());
  return bytes.substr(0, n) == prefix.substr(0, n);
}

std::string IpToString(int family, const void* address) {
  char text[INET6_ADDRSTRLEN];
  return inet_ntop(family, address, text, sizeof(text)) != nullptr ? text : "";
}

// Decimal 0..65535 without sign, leading zero or anything else.
bool ParsePort(std::string_view text, uint16_t* port) {
  if (text.empty() || text.size() > 5 || (text.size() > 1 && text[0] == '0')) {
    return false;
  }
  uint32_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') {
      return false;
    }
    value = value * 10 + static_cast<uint32_t>(c - '0');
  }
  if (value > 65535) {
    return false;
  }
  *port = static_cast<uint16_t>(value);
  return true;
}

// inet_pton is strict enough for IPv4 (exactly four decimal parts, no leading zeros in glibc);
// the text is returned normalised by inet_ntop.
bool ParseIp(int family, std::string_view text, std::string* normalized) {
  if (text.empty() || text.size() >= INET6_ADDRSTRLEN) {
    return false;
  }
  const std::string copy(text);
  unsigned char address[16];
  if (inet_pton(family, copy.c_str(), address) != 1) {
    return false;
  }
  *normalized = IpToString(family, address);
  return true;
}

std::vector<std::string_view> SplitOnSpaces(std::string_view text) {
  std::vector<std::string_view> fields;
  size_t start = 0;
  for (;;) {
    const size_t space = text.find(' ', start);
    fields.push_back(text.substr(start, space - start));
    if (space == std::string_view::npos) {
      return fields;
    }
    start = space + 1;
  }
}

absl::StatusOr<ProxyParseResult> ParseV1(std::string_view bytes) {
  const size_t window = std::min(bytes.size(), kV1MaxSize);
  const size_t cr = bytes.substr(0, window).find('\r');
  const size_t lf = bytes.substr(0, window).find('\n');
  if (lf != std::string_view::npos && (cr == std::string_view::npos || lf < cr)) {
    return Invalid("v1 line ends with a bare LF");
  }
  if (cr == std::string_view::npos) {
    if (bytes.size() >= kV1MaxSize) {
      return Invalid("v1 line longer than 107 bytes");
    }
    return NeedMore();
  }
  if (cr + 2 > kV1MaxSize) {
    return Invalid("v1 line longer than 107 bytes");
  }
  if (cr + 1 == bytes.size()) {
    return NeedMore();
  }
  if (bytes[cr + 1] != '\n') {
    return Invalid("v1 line has a bare CR");
  }
  const std::string_view line = bytes.substr(kV1Prefix.size(), cr - kV1Prefix.size());
  ProxyParseResult result;
  result.state = ProxyParse::kDone;
  result.header.header_size = cr + 2;
  // "UNKNOWN" may be followed by anything, which the receiver must ignore.
  if (line == "UNKNOWN" || line.starts_with("UNKNOWN ")) {
    return result;
  }
  const std::vector<std::string_view> fields = SplitOnSpaces(line);
  if (fields.size() != 5) {
    return Invalid("v1 line needs a protocol, two addresses and two ports, single-spaced");
  }
  int family = 0;
  if (fields[0] == "TCP4") {
    family = AF_INET;
  } else if (fields[0] == "TCP6") {
    family = AF_INET6;
  } else {
    return Invalid("v1 protocol is neither TCP4, TCP6 nor UNKNOWN");
  }
  ProxyHeader& header = result.header;
  if (!ParseIp(family, fields[1], &header.source_ip) ||
      !ParseIp(family, fields[2], &header.destination_ip)) {
    return Invalid("v1 address is not a valid " + std::string(fields[0]) + " address");
  }
  if (!ParsePort(fields[3], &header.source_port) ||
      !ParsePort(fields[4], &header.destination_port)) {
    return Invalid("v1 port is not a decimal number in 0..65535");
  }
  header.has_addresses = true;
  return result;
}

uint16_t ReadBigEndian16(const unsigned char* p) {
  return static_cast<uint16_t>((p[0] << 8) | p[1]);
}

// Checks that the TLVs after the addresses tile the rest of the header exactly. Their content
// (ALPN, authority, SSL, ...) is not used.
absl::Status CheckTlvs(const unsigned char* p, size_t size) {
  while (size > 0) {
    if (size < 3) {
      return Invalid("v2 TLV header truncated");
    }
    const size_t length = ReadBigEndian16(p + 1);
    if (length > size - 3) {
      return Invalid("v2 TLV longer than the header");
    }
    p += 3 + length;
    size -= 3 + length;
  }
  return absl::OkStatus();
}

// Reads the address block of `family` (source and destination addresses, then for IP their
// ports) from a v2 header's `length` bytes at `block`, and checks the TLVs after it.
absl::Status ReadAddressBlock(int family, const unsigned char* block, size_t length,
                              ProxyHeader* header) {
  const size_t address_size = family == AF_INET ? 4 : family == AF_INET6 ? 16 : 108;
  const size_t block_size = family == AF_UNIX ? 2 * address_size : 2 * address_size + 4;
  if (length < block_size) {
    return Invalid("v2 length " + std::to_string(length) + " shorter than its address block");
  }
  if (family != AF_UNIX) {
    header->source_ip = IpToString(family, block);
    header->destination_ip = IpToString(family, block + address_size);
    header->source_port = ReadBigEndian16(block + 2 * address_size);
    header->destination_port = ReadBigEndian16(block + 2 * address_size + 2);
    header->has_addresses = true;
  }
  return CheckTlvs(block + block_size, length - block_size);
}

absl::StatusOr<ProxyParseResult> ParseV2(std::string_view bytes) {
  if (bytes.size() < kV2FixedSize) {
    return NeedMore();
  }
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const int version = p[12] >> 4;
  const int command = p[12] & 0x0F;
  if (version != 2) {
    return Invalid("v2 signature with version " + std::to_string(version));
  }
  if (command > 1) {
    return Invalid("v2 command " + std::to_string(command) + " is neither LOCAL nor PROXY");
  }
  const size_t length = ReadBigEndian16(p + 14);
  if (bytes.size() < kV2FixedSize + length) {
    return NeedMore();
  }
  ProxyParseResult result;
  result.state = ProxyParse::kDone;
  result.header.header_size = kV2FixedSize + length;
  if (command == 0) {
    // LOCAL: the proxy's own connection (a health check); the family must be ignored.
    return result;
  }
  const unsigned char* block = p + kV2FixedSize;
  ProxyHeader& header = result.header;
  switch (p[13]) {
    case 0x00:  // UNSPEC: addresses unknown, the rest of the block is opaque.
      return result;
    case 0x11:  // TCP over IPv4
      RETURN_IF_ERROR(ReadAddressBlock(AF_INET, block, length, &header));
      return result;
    case 0x21:  // TCP over IPv6
      RETURN_IF_ERROR(ReadAddressBlock(AF_INET6, block, length, &header));
      return result;
    case 0x31:  // UNIX stream: no IP to report; keep the socket's addresses.
      RETURN_IF_ERROR(ReadAddressBlock(AF_UNIX, block, length, &header));
      return result;
    case 0x12:
    case 0x22:
    case 0x32:
      return Invalid("v2 header for a datagram connection");
    default:
      return Invalid("v2 address family/protocol byte " + std::to_string(p[13]));
  }
}

}  // namespace

absl::StatusOr<ProxyParseResult> ParseProxyHeader(std::string_view bytes) {
  if (bytes.empty()) {
    return NeedMore();
  }
  if (StartsLike(bytes, kV2Signature)) {
    return bytes.size() < kV2Signature.size() ? NeedMore() : ParseV2(bytes);
  }
  if (StartsLike(bytes, kV1Prefix)) {
    return bytes.size() < kV1Prefix.size() ? NeedMore() : ParseV1(bytes);
  }
  return Invalid("the connection does not start with a PROXY v1 or v2 header");
}

absl::StatusOr<CidrSet> CidrSet::Parse(const std::vector<std::string>& cidrs) {
  CidrSet set;
  for (const std::string& cidr : cidrs) {
    const auto bad = [&cidr](const char* why) {
      return absl::InvalidArgumentError("invalid CIDR \"" + cidr + "\": " + why);
    };
    const size_t slash = cidr.find('/');
    const std::string address = cidr.substr(0, slash);
    Range range;
    int max_prefix = 0;
    if (inet_pton(AF_INET, address.c_str(), range.bytes + 12) == 1) {
      // Stored as IPv4-mapped IPv6, so that one comparison serves both spellings of a client.
      range.bytes[10] = 0xFF;
      range.bytes[11] = 0xFF;
      max_prefix = 32;
    } else if (inet_pton(AF_INET6, address.c_str(), range.bytes) == 1) {
      max_prefix = 128;
    } else {
      return bad("not an IPv4 or IPv6 address");
    }
    int prefix = max_prefix;
    if (slash != std::string::npos) {
      uint16_t parsed = 0;
      if (!ParsePort(std::string_view(cidr).substr(slash + 1), &parsed) || parsed > max_prefix) {
        return bad(max_prefix == 32 ? "prefix length is not in 0..32"
                                    : "prefix length is not in 0..128");
      }
      prefix = parsed;
    }
    range.prefix_length = prefix + (128 - max_prefix);
    // Host bits after the prefix are ignored ("10.1.2.3/8" is 10.0.0.0/8).
    for (int bit = range.prefix_length; bit < 128; ++bit) {
      range.bytes[bit / 8] &= static_cast<unsigned char>(~(0x80 >> (bit % 8)));
    }
    set.ranges_.push_back(range);
  }
  return set;
}

bool CidrSet::Contains(std::string_view ip) const {
  if (ip.empty() || ip.size() >= INET6_ADDRSTRLEN) {
    return false;
  }
  const std::string text(ip);
  unsigned char address[16] = {};
  if (inet_pton(AF_INET, text.c_str(), address + 12) == 1) {
    address[10] = 0xFF;
    address[11] = 0xFF;
  } else if (inet_pton(AF_INET6, text.c_str(), address) != 1) {
    return false;
  }
  return std::any_of(ranges_.begin(), ranges_.end(), [&address](const Range& range) {
    const int full_bytes = range.prefix_length / 8;
    if (std::memcmp(address, range.bytes, full_bytes) != 0) {
      return false;
    }
    const int rest = range.prefix_length % 8;
    if (rest == 0) {
      return true;
    }
    const auto mask = static_cast<unsigned char>(0xFF << (8 - rest));
    return (address[full_bytes] & mask) == range.bytes[full_bytes];
  });
}

}  // namespace backstop::ingest
