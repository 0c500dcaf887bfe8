#pragma once

// A test PKI made in memory with OpenSSL (hermetic: no openssl.cnf, no CLI): CAs, server, node
// and client certificates, and their PEM text. For the TLS tests of common (SMTP STARTTLS) and
// queue (cluster mTLS).

#include <cstdint>
#include <filesystem>
#include <memory>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <string>

namespace backstop::test {

struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};

// A key and its certificate.
struct Credentials {
  std::unique_ptr<EVP_PKEY, PkeyFree> key;
  std::unique_ptr<X509, X509Free> cert;
};

enum class Kind : uint8_t {
  kCa,
  kServer,  // serverAuth, with the common name as its DNS SAN
  kNode,    // serverAuth and clientAuth (a cluster member), the common name as its DNS SAN
  kClient,  // clientAuth only
};

// A P-256 key and a certificate for `common_name`, valid from an hour ago until `not_after`
// (seconds since the epoch; 0 = thirty days from now), signed by `issuer` (null: self-signed),
// with `organizational_unit` in its subject when set.
Credentials Issue(Kind kind, const std::string& common_name, const Credentials* issuer = nullptr,
                  int64_t not_after = 0, const char* organizational_unit = nullptr);

std::string CertPem(const Credentials& credentials);
std::string KeyPem(const Credentials& credentials);
void WriteFile(const std::filesystem::path& path, const std::string& contents);

}  // namespace backstop::test
