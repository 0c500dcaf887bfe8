#include "ingest/proxy_protocol.h"

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace backstop::ingest {
namespace {

const std::string kSignature("\r\n\r\n\0\r\nQUIT\n", 12);

// GCC 12 at -O3 warns (-Wrestrict, a false positive) about appending single chars to a
// std::string here; building from a whole buffer avoids it.
std::string Bytes(std::initializer_list<int> values) {
  std::string bytes(values.size(), '\0');
  std::transform(values.begin(), values.end(), bytes.begin(),
                 [](int value) { return static_cast<char>(value); });
  return bytes;
}

// A v2 header: signature, version/command byte, family/protocol byte, length, then `block`.
std::string V2(int version_command, int family, std::string_view block) {
  const int size = static_cast<int>(block.size());
  return kSignature + Bytes({version_command, family, size >> 8, size & 0xFF}) + std::string(block);
}

// 192.0.2.1:56324 → 198.51.100.7:25
const std::string kInet4Block = Bytes({192, 0, 2, 1, 198, 51, 100, 7, 0xDC, 0x04, 0, 25});

// 2001:db8::1:443 → 2001:db8::2:25
const std::string kInet6Block =
    Bytes({0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,    1,    0x20, 0x01,
           0x0d, 0xb8, 0,    0,    0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0x01, 0xBB, 0,    25});

ProxyHeader ParseComplete(std::string_view bytes) {
  absl::StatusOr<ProxyParseResult> result = ParseProxyHeader(bytes);
  EXPECT_TRUE(result.ok()) << result.status();
  if (!result.ok()) {
    return {};
  }
  EXPECT_EQ(result->state, ProxyParse::kDone);
  return result->header;
}

void ExpectInvalid(std::string_view bytes) {
  absl::StatusOr<ProxyParseResult> result = ParseProxyHeader(bytes);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument)
      << "input: \"" << absl::CEscape(absl::string_view(bytes.data(), bytes.size())) << "\"";
}

// Feeds `stream` one byte more each time: every strict prefix shorter than `header_size` must
// ask for more, and the first complete one must end exactly at `header_size`.
void ExpectNeedsMoreUntil(std::string_view stream, size_t header_size) {
  for (size_t n = 0; n < header_size; ++n) {
    absl::StatusOr<ProxyParseResult> result = ParseProxyHeader(stream.substr(0, n));
    ASSERT_TRUE(result.ok()) << "prefix of " << n << " bytes: " << result.status();
    ASSERT_EQ(result->state, ProxyParse::kNeedMore) << "prefix of " << n << " bytes";
  }
  for (size_t n = header_size; n <= stream.size(); ++n) {
    absl::StatusOr<ProxyParseResult> result = ParseProxyHeader(stream.substr(0, n));
    ASSERT_TRUE(result.ok()) << result.status();
    ASSERT_EQ(result->state, ProxyParse::kDone);
    EXPECT_EQ(result->header.header_size, header_size);
  }
}

TEST(ProxyProtocolV1Test, ParsesTcp4) {
  ProxyHeader header = ParseComplete("PROXY TCP4 192.0.2.1 198.51.100.7 56324 25\r\n");
  EXPECT_TRUE(header.has_addresses);
  EXPECT_EQ(header.source_ip, "192.0.2.1");
  EXPECT_EQ(header.source_port, 56324);
  EXPECT_EQ(header.destination_ip, "198.51.100.7");
  EXPECT_EQ(header.destination_port, 25);
  EXPECT_EQ(header.header_size, 44u);
}

TEST(ProxyProtocolV1Test, ParsesTcp6AndNormalisesTheAddresses) {
  ProxyHeader header =
      ParseComplete("PROXY TCP6 2001:DB8:0:0::1 ::ffff:192.0.2.9 65535 0\r\nEHLO x\r\n");
  EXPECT_TRUE(header.has_addresses);
  EXPECT_EQ(header.source_ip, "2001:db8::1");
  EXPECT_EQ(header.destination_ip, "::ffff:192.0.2.9");
  EXPECT_EQ(header.source_port, 65535);
  EXPECT_EQ(header.destination_port, 0);
  EXPECT_EQ(header.header_size, 53u);
}

TEST(ProxyProtocolV1Test, ParsesUnknownWithoutAddresses) {
  ProxyHeader bare = ParseComplete("PROXY UNKNOWN\r\n");
  EXPECT_FALSE(bare.has_addresses);
  EXPECT_EQ(bare.header_size, 15u);
  // The spec says to ignore whatever follows UNKNOWN on the line.
  ProxyHeader with_rest = ParseComplete("PROXY UNKNOWN ffff:f...f:ffff 1.2.3.4 x y\r\n");
  EXPECT_FALSE(with_rest.has_addresses);
  EXPECT_EQ(with_rest.header_size, 43u);
}

TEST(ProxyProtocolV1Test, AcceptsTheLongestLegalLine) {
  const std::string address = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
  const std::string line = "PROXY TCP6 " + address + " " + address + " 65535 65535\r\n";
  ASSERT_EQ(line.size(), 104u);
  ProxyHeader header = ParseComplete(line);
  EXPECT_EQ(header.header_size, 104u);
  const std::string unknown = "PROXY UNKNOWN " + std::string(91, 'x') + "\r\n";
  ASSERT_EQ(unknown.size(), 107u);
  EXPECT_EQ(ParseComplete(unknown).header_size, 107u);
}

TEST(ProxyProtocolV1Test, NeedsMoreByteByByteAndLeavesSmtpBytesAlone) {
  const std::string header = "PROXY TCP4 192.0.2.1 198.51.100.7 56324 25\r\n";
  ExpectNeedsMoreUntil(header + "EHLO client.example\r\n", header.size());
}

TEST(ProxyProtocolV1Test, RejectsMalformedLines) {
  for (const char* line : {
           "PROXY TCP4 192.0.2.1 198.51.100.7 56324 25\n",     // bare LF
           "PROXY TCP4 192.0.2.1 198.51.100.7 56324 25\rX",    // bare CR
           "PROXY  TCP4 192.0.2.1 198.51.100.7 56324 25\r\n",  // double space
           "PROXY TCP4 192.0.2.1  198.51.100.7 56324 25\r\n",
           "PROXY TCP4 192.0.2.1 198.51.100.7 56324 25 \r\n",  // trailing space
           "PROXY TCP4 192.0.2.1 198.51.100.7 56324\r\n",      // missing port
           "PROXY TCP4 192.0.2.1 198.51.100.7 56324 25 7\r\n",
           "PROXY TCP4 192.0.2.01 198.51.100.7 56324 25\r\n",  // leading zero
           "PROXY TCP4 192.0.2 198.51.100.7 56324 25\r\n",
           "PROXY TCP4 192.0.2.256 198.51.100.7 56324 25\r\n",
           "PROXY TCP4 2001:db8::1 198.51.100.7 56324 25\r\n",  // family mismatch
           "PROXY TCP6 192.0.2.1 2001:db8::2 56324 25\r\n",
           "PROXY TCP4 192.0.2.1 198.51.100.7 65536 25\r\n",  // port range
           "PROXY TCP4 192.0.2.1 198.51.100.7 025 25\r\n",    // leading zero
           "PROXY TCP4 192.0.2.1 198.51.100.7 +25 25\r\n",
           "PROXY TCP4 192.0.2.1 198.51.100.7 -1 25\r\n",
           "PROXY TCP4 192.0.2.1 198.51.100.7 25 \r\n",
           "PROXY TCP5 192.0.2.1 198.51.100.7 56324 25\r\n",
           "PROXY tcp4 192.0.2.1 198.51.100.7 56324 25\r\n",
           "PROXY UNKNOWNX\r\n",
           "PROXY \r\n",
           "PROXYTCP4 192.0.2.1 198.51.100.7 56324 25\r\n",
           "proxy TCP4 192.0.2.1 198.51.100.7 56324 25\r\n",
       }) {
    ExpectInvalid(line);
  }
}

TEST(ProxyProtocolV1Test, RejectsALineLongerThan107Bytes) {
  const std::string too_long = "PROXY UNKNOWN " + std::string(92, 'x') + "\r\n";
  ASSERT_EQ(too_long.size(), 108u);
  ExpectInvalid(too_long);
  // Without any CRLF: an error as soon as 107 bytes have arrived, not a wait for ever.
  const std::string endless = "PROXY UNKNOWN " + std::string(200, 'x');
  absl::StatusOr<ProxyParseResult> at_106 = ParseProxyHeader(endless.substr(0, 106));
  ASSERT_TRUE(at_106.ok()) << at_106.status();
  EXPECT_EQ(at_106->state, ProxyParse::kNeedMore);
  ExpectInvalid(endless.substr(0, 107));
  // The CR as the 107th byte cannot be followed by its LF within the limit.
  ExpectInvalid("PROXY UNKNOWN " + std::string(92, 'x') + "\r");
}

TEST(ProxyProtocolTest, RejectsAClientThatSentNoHeader) {
  ExpectInvalid("EHLO client.example\r\n");
  ExpectInvalid("E");
  ExpectInvalid("HELO");
  ExpectInvalid("\r\nQUIT\r\n");
  ExpectInvalid("PROXX");
}

TEST(ProxyProtocolTest, NeedsMoreForAnEmptyStream) {
  absl::StatusOr<ProxyParseResult> result = ParseProxyHeader("");
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->state, ProxyParse::kNeedMore);
}

TEST(ProxyProtocolV2Test, ParsesTcp4) {
  ProxyHeader header = ParseComplete(V2(0x21, 0x11, kInet4Block));
  EXPECT_TRUE(header.has_addresses);
  EXPECT_EQ(header.source_ip, "192.0.2.1");
  EXPECT_EQ(header.source_port, 56324);
  EXPECT_EQ(header.destination_ip, "198.51.100.7");
  EXPECT_EQ(header.destination_port, 25);
  EXPECT_EQ(header.header_size, 28u);
}

TEST(ProxyProtocolV2Test, ParsesTcp6) {
  ProxyHeader header = ParseComplete(V2(0x21, 0x21, kInet6Block));
  EXPECT_TRUE(header.has_addresses);
  EXPECT_EQ(header.source_ip, "2001:db8::1");
  EXPECT_EQ(header.source_port, 443);
  EXPECT_EQ(header.destination_ip, "2001:db8::2");
  EXPECT_EQ(header.destination_port, 25);
  EXPECT_EQ(header.header_size, 52u);
}

TEST(ProxyProtocolV2Test, LocalKeepsTheSocketAddressesWhateverTheFamily) {
  ProxyHeader empty = ParseComplete(V2(0x20, 0x00, ""));
  EXPECT_FALSE(empty.has_addresses);
  EXPECT_EQ(empty.header_size, 16u);
  ProxyHeader with_block = ParseComplete(V2(0x20, 0x11, kInet4Block));
  EXPECT_FALSE(with_block.has_addresses);
  EXPECT_EQ(with_block.header_size, 28u);
}

TEST(ProxyProtocolV2Test, UnspecAndUnixCarryNoAddresses) {
  ProxyHeader unspec = ParseComplete(V2(0x21, 0x00, "opaque"));
  EXPECT_FALSE(unspec.has_addresses);
  EXPECT_EQ(unspec.header_size, 22u);
  ProxyHeader unix_stream = ParseComplete(V2(0x21, 0x31, std::string(216, '\0')));
  EXPECT_FALSE(unix_stream.has_addresses);
  EXPECT_EQ(unix_stream.header_size, 232u);
}

TEST(ProxyProtocolV2Test, SkipsWellFormedTlvs) {
  // PP2_TYPE_ALPN "smtp", PP2_TYPE_NOOP with an empty value, PP2_TYPE_AUTHORITY.
  const std::string tlvs =
      Bytes({0x01, 0, 4}) + "smtp" + Bytes({0x04, 0, 0}) + Bytes({0x02, 0, 14}) + "mx.example.com";
  ProxyHeader header = ParseComplete(V2(0x21, 0x11, kInet4Block + tlvs));
  EXPECT_TRUE(header.has_addresses);
  EXPECT_EQ(header.source_ip, "192.0.2.1");
  EXPECT_EQ(header.header_size, 16 + 12 + tlvs.size());
}

TEST(ProxyProtocolV2Test, NeedsMoreByteByByteAndLeavesSmtpBytesAlone) {
  const std::string tlvs = Bytes({0x01, 0, 4}) + "smtp";
  const std::string header = V2(0x21, 0x21, kInet6Block + tlvs);
  ExpectNeedsMoreUntil(header + "EHLO client.example\r\n", header.size());
}

TEST(ProxyProtocolV2Test, WaitsForTheWholeAnnouncedLength) {
  std::string header = V2(0x21, 0x11, kInet4Block);
  header[14] = static_cast<char>(0xFF);  // announces 65292 bytes
  header[15] = static_cast<char>(0x0C);
  absl::StatusOr<ProxyParseResult> result = ParseProxyHeader(header + std::string(1000, '\0'));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->state, ProxyParse::kNeedMore);
}

TEST(ProxyProtocolV2Test, RejectsMalformedHeaders) {
  std::string bad_signature = V2(0x21, 0x11, kInet4Block);
  bad_signature[11] = 'X';
  ExpectInvalid(bad_signature);
  ExpectInvalid(V2(0x11, 0x11, kInet4Block));  // version 1 in a v2 header
  ExpectInvalid(V2(0x31, 0x11, kInet4Block));  // version 3
  ExpectInvalid(V2(0x22, 0x11, kInet4Block));  // command 2
  ExpectInvalid(V2(0x21, 0x41, kInet4Block));  // family 4
  ExpectInvalid(V2(0x21, 0x13, kInet4Block));  // protocol 3
  ExpectInvalid(V2(0x21, 0x12, kInet4Block));  // UDP
  ExpectInvalid(V2(0x21, 0x22, kInet6Block));
  // The announced length is shorter than the family's address block.
  ExpectInvalid(V2(0x21, 0x11, kInet4Block.substr(0, 11)));
  ExpectInvalid(V2(0x21, 0x21, kInet4Block));
  ExpectInvalid(V2(0x21, 0x31, std::string(215, '\0')));
  // TLVs that overrun the header or are cut inside their own header.
  ExpectInvalid(V2(0x21, 0x11, kInet4Block + Bytes({0x01, 0, 5}) + "smtp"));
  ExpectInvalid(V2(0x21, 0x11, kInet4Block + Bytes({0x01, 0})));
  ExpectInvalid(V2(0x21, 0x11, kInet4Block + Bytes({0x01})));
}

TEST(ProxyProtocolV2Test, RejectsAWrongSignatureBeforeItIsComplete) {
  ExpectInvalid(std::string("\r\n\r\n\0\r\nQUIX", 12));
  ExpectInvalid(std::string("\r\n\r\n\x01", 5));
}

TEST(CidrSetTest, MatchesIpv4PrefixBoundaries) {
  absl::StatusOr<CidrSet> set = CidrSet::Parse({"192.0.2.0/24", "10.1.2.3"});
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_TRUE(set->Contains("192.0.2.0"));
  EXPECT_TRUE(set->Contains("192.0.2.255"));
  EXPECT_FALSE(set->Contains("192.0.1.255"));
  EXPECT_FALSE(set->Contains("192.0.3.0"));
  EXPECT_TRUE(set->Contains("10.1.2.3"));  // a single address is a /32
  EXPECT_FALSE(set->Contains("10.1.2.2"));
  EXPECT_FALSE(set->Contains("10.1.2.4"));
  EXPECT_FALSE(set->Contains("2001:db8::1"));
  EXPECT_FALSE(set->Contains("not an address"));
  EXPECT_FALSE(set->Contains(""));
}

TEST(CidrSetTest, MatchesOddPrefixLengths) {
  absl::StatusOr<CidrSet> set = CidrSet::Parse({"172.16.0.0/12", "2001:db8:8000::/33"});
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_TRUE(set->Contains("172.16.0.0"));
  EXPECT_TRUE(set->Contains("172.31.255.255"));
  EXPECT_FALSE(set->Contains("172.32.0.0"));
  EXPECT_FALSE(set->Contains("172.15.255.255"));
  EXPECT_TRUE(set->Contains("2001:db8:8000::1"));
  EXPECT_TRUE(set->Contains("2001:db8:ffff:ffff::"));
  EXPECT_FALSE(set->Contains("2001:db8:7fff:ffff::"));
}

TEST(CidrSetTest, MatchesIpv6PrefixBoundaries) {
  absl::StatusOr<CidrSet> set = CidrSet::Parse({"2001:db8::/32", "fd00::1/128"});
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_TRUE(set->Contains("2001:db8::"));
  EXPECT_TRUE(set->Contains("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"));
  EXPECT_FALSE(set->Contains("2001:db9::"));
  EXPECT_FALSE(set->Contains("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff"));
  EXPECT_TRUE(set->Contains("fd00::1"));
  EXPECT_TRUE(set->Contains("FD00:0:0::1"));
  EXPECT_FALSE(set->Contains("fd00::2"));
  EXPECT_FALSE(set->Contains("fd00::"));
  EXPECT_FALSE(set->Contains("192.0.2.1"));
}

TEST(CidrSetTest, SlashZeroMatchesItsWholeFamily) {
  absl::StatusOr<CidrSet> v4 = CidrSet::Parse({"0.0.0.0/0"});
  ASSERT_TRUE(v4.ok()) << v4.status();
  EXPECT_TRUE(v4->Contains("0.0.0.0"));
  EXPECT_TRUE(v4->Contains("255.255.255.255"));
  EXPECT_FALSE(v4->Contains("2001:db8::1"));
  absl::StatusOr<CidrSet> v6 = CidrSet::Parse({"::/0"});
  ASSERT_TRUE(v6.ok()) << v6.status();
  EXPECT_TRUE(v6->Contains("::"));
  EXPECT_TRUE(v6->Contains("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
}

TEST(CidrSetTest, MatchesIpv4MappedIpv6BothWays) {
  absl::StatusOr<CidrSet> v4 = CidrSet::Parse({"1.2.3.0/24"});
  ASSERT_TRUE(v4.ok()) << v4.status();
  EXPECT_TRUE(v4->Contains("::ffff:1.2.3.4"));
  EXPECT_TRUE(v4->Contains("::ffff:102:304"));
  EXPECT_FALSE(v4->Contains("::ffff:1.2.4.4"));
  EXPECT_FALSE(v4->Contains("::1.2.3.4"));  // IPv4-compatible, deprecated: not the same host
  absl::StatusOr<CidrSet> mapped = CidrSet::Parse({"::ffff:1.2.3.0/120"});
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  EXPECT_TRUE(mapped->Contains("1.2.3.4"));
  EXPECT_FALSE(mapped->Contains("1.2.4.4"));
}

TEST(CidrSetTest, IgnoresHostBitsAfterThePrefix) {
  absl::StatusOr<CidrSet> set = CidrSet::Parse({"10.1.2.3/8"});
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_TRUE(set->Contains("10.200.0.1"));
  EXPECT_FALSE(set->Contains("11.1.2.3"));
}

TEST(CidrSetTest, EmptyMatchesNothing) {
  absl::StatusOr<CidrSet> set = CidrSet::Parse({});
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_TRUE(set->empty());
  EXPECT_FALSE(set->Contains("127.0.0.1"));
}

TEST(CidrSetTest, RejectsInvalidEntriesNamingThem) {
  for (const char* entry : {"", "10.0.0.0/33", "2001:db8::/129", "10.0.0.0/", "10.0.0.0/-1",
                            "10.0.0.0/08", "10.0.0.0/8/8", "10.0.0/8", "10.0.0.256",
                            "mx.example.com", " 10.0.0.0/8", "10.0.0.0/8 ", "fe80::1%eth0"}) {
    absl::StatusOr<CidrSet> set = CidrSet::Parse({"192.0.2.0/24", entry});
    ASSERT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument) << "\"" << entry << "\"";
    EXPECT_NE(std::string(set.status().message()).find(absl::StrCat("\"", entry, "\"")),
              std::string::npos)
        << set.status();
  }
}

}  // namespace
}  // namespace backstop::ingest
