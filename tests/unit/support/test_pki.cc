#include "tests/unit/support/test_pki.h"

#include <ctime>
#include <fstream>
#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "gtest/gtest.h"

namespace backstop::test {
namespace {

void AddExtension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* extension = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  ASSERT_NE(extension, nullptr) << value;
  ASSERT_EQ(X509_add_ext(cert, extension, -1), 1);
  X509_EXTENSION_free(extension);
}

void AddNameEntry(X509_NAME* name, const char* field, const std::string& value) {
  X509_NAME_add_entry_by_txt(name, field, MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(value.c_str()), -1, -1, 0);
}

template <typename Write>
std::string Pem(Write write) {
  BIO* bio = BIO_new(BIO_s_mem());
  write(bio);
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio, &data);
  std::string pem(data, static_cast<size_t>(size));
  BIO_free(bio);
  return pem;
}

}  // namespace

Credentials Issue(Kind kind, const std::string& common_name, const Credentials* issuer,
                  int64_t not_after, const char* organizational_unit) {
  static long serial = 1;
  Credentials made;
  made.key.reset(EVP_EC_gen("P-256"));
  made.cert.reset(X509_new());
  X509* cert = made.cert.get();
  X509_set_version(cert, X509_VERSION_3);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), serial++);
  X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
  if (not_after == 0) {
    not_after = time(nullptr) + 30 * 24 * 3600;
  }
  ASN1_TIME_set(X509_getm_notAfter(cert), static_cast<time_t>(not_after));
  X509_set_pubkey(cert, made.key.get());
  X509_NAME* name = X509_get_subject_name(cert);
  AddNameEntry(name, "CN", common_name);
  if (organizational_unit != nullptr) {
    AddNameEntry(name, "OU", organizational_unit);
  }
  X509* issuer_cert = issuer != nullptr ? issuer->cert.get() : cert;
  X509_set_issuer_name(cert, X509_get_subject_name(issuer_cert));
  if (kind == Kind::kCa) {
    AddExtension(cert, issuer_cert, NID_basic_constraints, "critical,CA:TRUE");
    AddExtension(cert, issuer_cert, NID_key_usage, "critical,keyCertSign,cRLSign");
    AddExtension(cert, issuer_cert, NID_subject_key_identifier, "hash");
  } else {
    AddExtension(cert, issuer_cert, NID_basic_constraints, "critical,CA:FALSE");
    AddExtension(cert, issuer_cert, NID_key_usage, "critical,digitalSignature");
    const char* usage = kind == Kind::kServer ? "serverAuth"
                        : kind == Kind::kNode ? "serverAuth,clientAuth"
                                              : "clientAuth";
    AddExtension(cert, issuer_cert, NID_ext_key_usage, usage);
    if (kind != Kind::kClient) {
      AddExtension(cert, issuer_cert, NID_subject_alt_name, ("DNS:" + common_name).c_str());
    }
  }
  EVP_PKEY* signing_key = issuer != nullptr ? issuer->key.get() : made.key.get();
  EXPECT_GT(X509_sign(cert, signing_key, EVP_sha256()), 0);
  return made;
}

std::string CertPem(const Credentials& credentials) {
  return Pem([&](BIO* bio) { PEM_write_bio_X509(bio, credentials.cert.get()); });
}

std::string KeyPem(const Credentials& credentials) {
  return Pem([&](BIO* bio) {
    PEM_write_bio_PrivateKey(bio, credentials.key.get(), nullptr, nullptr, 0, nullptr, nullptr);
  });
}

void WriteFile(const std::filesystem::path& path, const std::string& contents) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << contents;
}

}  // namespace backstop::test
