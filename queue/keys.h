#pragma once

// The key layout of the queue's RocksDB column families. Keys sort bytewise, so every ordering
// the state machine relies on (oldest entry first, earliest lease expiry first, domains by name)
// is an ordering of these encodings; times are big-endian with the sign bit flipped.
//
//   meta       "applied_index", "cluster_time", "lease_cursor"     → fixed64 / domain name
//   domains    <domain>                                             → DomainRecord
//   entries    <id:16>                                              → StoredEntry
//   bodies     <id:16>                                              → message bytes (blob files)
//   index      'q' <domain> 0 <enqueue_ms:8> <id:16>                → ""  every entry, by domain
//              'r' <kind> <domain> 0 <enqueue_ms:8> <id:16>         → ""  not held, not leased
//                  (kind 'w': also not delay-warned yet, not a bounce, not from <>)
//              'l' <expiry_ms:8> <id:16>                            → ""  leased
//   greylist   't' <client> 0 <sender> 0 <recipient>                → GreylistRecord
//              'c' <client>                                         → GreylistRecord (network)
//              'x' <expiry_ms:8> <greylist key>                     → ""  every record
//
// A domain name never contains a NUL byte (the state machine refuses such names), so
// <domain> 0 is an unambiguous prefix.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace backstop::queue::keys {

inline constexpr std::string_view kAppliedIndex = "applied_index";
inline constexpr std::string_view kClusterTime = "cluster_time";
inline constexpr std::string_view kLeaseCursor = "lease_cursor";

// Which ready set an entry waits in: bounces requested by an operator are leased before
// anything else, whatever the domain's schedule. An entry of the deliver set that may still be
// owed a delayed-delivery DSN is also in the delay-warning set, so that a down domain's backlog
// is found in age order without scanning the entries already warned.
enum class ReadyKind : char { kDeliver = 'd', kBounce = 'b', kDelayWarning = 'w' };

std::string EncodeFixed64(uint64_t value);
std::optional<uint64_t> DecodeFixed64(std::string_view bytes);

// The parts of an index key after its prefix.
struct IndexKey {
  std::string domain;  // empty for lease keys
  int64_t time_ms = 0;
  std::string id;
};

std::string QueueKey(std::string_view domain, int64_t enqueue_ms, std::string_view id);
std::string QueuePrefix(std::string_view domain);
std::optional<IndexKey> ParseQueueKey(std::string_view key);

std::string ReadyKey(ReadyKind kind, std::string_view domain, int64_t enqueue_ms,
                     std::string_view id);
std::string ReadyPrefix(ReadyKind kind);
std::string ReadyPrefix(ReadyKind kind, std::string_view domain);
std::optional<IndexKey> ParseReadyKey(ReadyKind kind, std::string_view key);

std::string LeaseKey(int64_t expiry_ms, std::string_view id);
std::string LeasePrefix();
// Lease keys of leases expiring at or before `time_ms` sort before this key.
std::string LeaseUpperBound(int64_t time_ms);
std::optional<IndexKey> ParseLeaseKey(std::string_view key);

std::string GreylistKey(std::string_view client_network, std::string_view sender,
                        std::string_view recipient);
// A client network's record: how many of its triplets passed (auto_allow_after).
std::string GreylistClientKey(std::string_view client_network);
std::string GreylistExpiryKey(int64_t expiry_ms, std::string_view greylist_key);
std::string GreylistExpiryPrefix();
// Expiry keys of records expiring at or before `time_ms` sort before this key.
std::string GreylistExpiryUpperBound(int64_t time_ms);
// The greylist key an expiry key points at.
std::optional<std::string> ParseGreylistExpiryKey(std::string_view key);

// The smallest key greater than every key that starts with `prefix`.
std::string PrefixEnd(std::string_view prefix);

}  // namespace backstop::queue::keys
