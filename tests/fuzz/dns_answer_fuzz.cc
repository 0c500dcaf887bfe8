// libFuzzer target for DNS answer handling (common/dns_resolver.h): raw answers, as any server
// on the path (or a spoofer) can send them, go through c-ares' parsers and then through our
// conversion into MX, address, PTR and TXT results (dns_internal::*FromAnswer run the same code
// as the Resolver's lookups).
//
// Input layout: one byte picks the lookup (low two bits) and, for A+AAAA, where the two
// answers split (the next two bytes, big-endian, give the A answer's length); the rest is the
// answer. Aborts when a result breaks a promise of dns_resolver.h:
// - OK means at least one record (or RFC 7505's null MX, which has none); errors have none;
// - MX records are sorted by preference, names have no trailing dot and are never empty;
// - addresses are IP literals, every IPv4 one before every IPv6 one.

#include <arpa/inet.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "common/dns_resolver.h"

namespace {

namespace dns = backstop::dns_internal;

void Check(bool condition) {
  if (!condition) {
    std::abort();
  }
}

void CheckName(const std::string& name) {
  Check(!name.empty());
  Check(name == "." || !name.ends_with('.'));
}

void CheckMx(std::string_view answer) {
  const backstop::MxResult result = dns::MxFromAnswer("fuzz.example", answer);
  if (!result.status.ok()) {
    Check(result.records.empty() && !result.null_mx);
    return;
  }
  Check(result.null_mx ? result.records.empty() : !result.records.empty());
  Check(std::is_sorted(result.records.begin(), result.records.end(),
                       [](const backstop::MxRecord& a, const backstop::MxRecord& b) {
                         return a.preference < b.preference;
                       }));
  for (const backstop::MxRecord& record : result.records) {
    CheckName(record.exchange);
  }
}

void CheckAddresses(std::string_view a_answer, std::string_view aaaa_answer) {
  const backstop::AddressResult result =
      dns::AddressesFromAnswers("fuzz.example", a_answer, aaaa_answer);
  Check(result.status.ok() != result.addresses.empty());
  bool seen_ipv6 = false;
  for (const std::string& address : result.addresses) {
    unsigned char bytes[16];
    const bool ipv4 = inet_pton(AF_INET, address.c_str(), bytes) == 1;
    Check(ipv4 || inet_pton(AF_INET6, address.c_str(), bytes) == 1);
    Check(!(ipv4 && seen_ipv6));
    seen_ipv6 = seen_ipv6 || !ipv4;
  }
}

void CheckPtr(std::string_view answer) {
  for (const char* ip : {"192.0.2.1", "2001:db8::1"}) {
    const backstop::NamesResult result = dns::PtrFromAnswer(ip, answer);
    Check(result.status.ok() != result.names.empty());
    for (const std::string& name : result.names) {
      CheckName(name);
    }
  }
}

void CheckTxt(std::string_view answer) {
  const backstop::TxtResult result = dns::TxtFromAnswer("fuzz.example", answer);
  Check(result.status.ok() != result.texts.empty());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) {
    return 0;
  }
  const uint8_t selector = data[0];
  std::string_view answer(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (selector & 3) {
    case 0:
      CheckMx(answer);
      break;
    case 1: {
      if (answer.size() < 2) {
        return 0;
      }
      const size_t split =
          std::min<size_t>((static_cast<size_t>(static_cast<uint8_t>(answer[0])) << 8) |
                               static_cast<uint8_t>(answer[1]),
                           answer.size() - 2);
      answer.remove_prefix(2);
      CheckAddresses(answer.substr(0, split), answer.substr(split));
      break;
    }
    case 2:
      CheckPtr(answer);
      break;
    default:
      CheckTxt(answer);
      break;
  }
  return 0;
}
