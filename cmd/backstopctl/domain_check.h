#pragma once

// `backstopctl domain check`: is a customer's MX setup sound for us as their backup MX?
// JudgeMx is the pure part (which records matter and what is wrong with them); the probes
// (DNS through c-ares, a TCP connection reading the SMTP banner) are the I/O around it.

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/config.h"
#include "common/dns_resolver.h"
#include "common/event_loop.h"

namespace backstop::ctl {

struct MxJudgement {
  bool listed = false;          // `hostname` is one of the MX exchanges
  uint16_t our_preference = 0;  // its (best) preference, when listed
  // The hosts that should receive the mail before us: preference strictly lower than ours,
  // or every record when we are not listed.
  std::vector<MxRecord> primaries;
  std::vector<std::string> problems;  // empty = the records are sound
};

// `records` sorted by preference; `hostname` compared case-insensitively, trailing dots
// ignored.
MxJudgement JudgeMx(std::string_view domain, const std::vector<MxRecord>& records,
                    std::string_view hostname);

struct BannerProbe {
  bool reachable = false;  // connected and read a 220 greeting
  std::string address;     // the address that answered (or the last one tried)
  std::string banner;      // its first line, without CRLF
  std::string error;       // why not reachable
};

// Connects to each of `addresses` (IP literals) on `port` in turn until one greets with 220;
// each connection and the wait for its greeting are bounded by `timeout`. Says QUIT after.
BannerProbe ProbeSmtp(const std::vector<std::string>& addresses, uint16_t port,
                      absl::Duration timeout);

// Blocking lookups for a command-line tool: a Resolver on its own EventLoop thread.
//
// Thread-compatible: one caller thread; the loop thread is internal.
class BlockingDns {
 public:
  // `servers` empty = /etc/resolv.conf.
  static absl::StatusOr<std::unique_ptr<BlockingDns>> Create(std::vector<HostPort> servers);
  ~BlockingDns();
  BlockingDns(const BlockingDns&) = delete;
  BlockingDns& operator=(const BlockingDns&) = delete;

  MxResult Mx(const std::string& name);
  AddressResult Addresses(const std::string& name);

 private:
  BlockingDns() = default;

  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<Resolver> resolver_;  // created, used and destroyed on the loop thread
  std::thread thread_;
};

}  // namespace backstop::ctl
