// libFuzzer target for the PROXY protocol parser: it reads bytes straight from the network of a
// trusted proxy, and a bug there is reachable before any SMTP command.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "ingest/proxy_protocol.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<backstop::ingest::ProxyParseResult> result =
      backstop::ingest::ParseProxyHeader(bytes);
  if (!result.ok() || result->state != backstop::ingest::ProxyParse::kDone) {
    return 0;
  }
  const backstop::ingest::ProxyHeader& header = result->header;
  // A complete header never claims more bytes than it was given, and its prefix alone parses
  // to the same header (what the connection relies on when it strips the header).
  if (header.header_size == 0 || header.header_size > size) {
    abort();
  }
  absl::StatusOr<backstop::ingest::ProxyParseResult> again =
      backstop::ingest::ParseProxyHeader(bytes.substr(0, header.header_size));
  if (!again.ok() || again->state != backstop::ingest::ProxyParse::kDone ||
      again->header.header_size != header.header_size ||
      again->header.source_ip != header.source_ip ||
      again->header.source_port != header.source_port) {
    abort();
  }
  if (header.has_addresses) {
    // The addresses it reports are ones the CIDR matcher understands.
    absl::StatusOr<backstop::ingest::CidrSet> any =
        backstop::ingest::CidrSet::Parse({header.source_ip, header.destination_ip});
    if (!any.ok() || !any->Contains(header.source_ip)) {
      abort();
    }
  }
  return 0;
}
