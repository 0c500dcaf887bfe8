#pragma once

// A scripted DnsClient for the DNS-based filters' tests: answers per record type and name,
// NXDOMAIN for anything not scripted. Like the Resolver it never answers inside the Lookup call:
// answers wait until the test calls Deliver(), so a test can see what a filter does before its
// lookups come back. A timeout is scripted as the DeadlineExceeded the Resolver reports.
// Single-threaded (the test's thread).

#include <deque>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "common/dns_resolver.h"

namespace backstop::ingest {

// The statuses of common/dns_resolver.cc, which tells NXDOMAIN from NODATA by this payload.
inline absl::Status FakeAbsence(const char* kind) {
  absl::Status status = absl::NotFoundError(std::string("fake DNS: ") + kind);
  status.SetPayload("type.backstop/dns.absence", absl::Cord(kind));
  return status;
}
inline absl::Status NxDomain() {
  return FakeAbsence("NXDOMAIN");
}
inline absl::Status NoData() {
  return FakeAbsence("NODATA");
}
inline absl::Status ServFail() {
  return absl::UnavailableError("fake DNS: SERVFAIL");
}
inline absl::Status Timeout() {
  return absl::DeadlineExceededError("fake DNS: timeout");
}

class FakeDnsClient : public DnsClient {
 public:
  void SetMx(const std::string& name, MxResult result) { mx_[name] = std::move(result); }
  void SetAddresses(const std::string& name, AddressResult result) {
    addresses_[name] = std::move(result);
  }
  void SetA(const std::string& name, AddressResult result) { a_[name] = std::move(result); }
  void SetPtr(const std::string& ip, NamesResult result) { ptr_[ip] = std::move(result); }
  void SetTxt(const std::string& name, TxtResult result) { txt_[name] = std::move(result); }

  void LookupMx(const std::string& name, MxCallback callback) override {
    Answer("MX " + name, mx_, name, std::move(callback));
  }
  void LookupAddresses(const std::string& name, AddressCallback callback) override {
    Answer("ADDR " + name, addresses_, name, std::move(callback));
  }
  void LookupA(const std::string& name, AddressCallback callback) override {
    Answer("A " + name, a_, name, std::move(callback));
  }
  void LookupPtr(const std::string& ip, NamesCallback callback) override {
    Answer("PTR " + ip, ptr_, ip, std::move(callback));
  }
  void LookupTxt(const std::string& name, TxtCallback callback) override {
    Answer("TXT " + name, txt_, name, std::move(callback));
  }

  // Answers the lookups asked so far and those their callbacks ask, until none is waiting.
  void Deliver() {
    while (!pending_.empty()) {
      std::function<void()> answer = std::move(pending_.front());
      pending_.pop_front();
      answer();
    }
  }
  size_t pending() const { return pending_.size(); }
  // Every lookup asked, in order: "MX example.com", "PTR 192.0.2.1", "A 1.2.0.192.bl.test", ...
  const std::vector<std::string>& queries() const { return queries_; }

 private:
  template <typename Result>
  void Answer(std::string query, const std::map<std::string, Result>& script,
              const std::string& key, std::function<void(Result)> callback) {
    queries_.push_back(std::move(query));
    Result result;
    if (const auto it = script.find(key); it != script.end()) {
      result = it->second;
    } else {
      result.status = NxDomain();
    }
    pending_.push_back(
        [callback = std::move(callback), result = std::move(result)] { callback(result); });
  }

  std::map<std::string, MxResult> mx_;
  std::map<std::string, AddressResult> addresses_;
  std::map<std::string, AddressResult> a_;
  std::map<std::string, NamesResult> ptr_;
  std::map<std::string, TxtResult> txt_;
  std::deque<std::function<void()>> pending_;
  std::vector<std::string> queries_;
};

}  // namespace backstop::ingest
