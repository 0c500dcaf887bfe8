#include "queue/keys.h"

#include "queue/message_id.h"

namespace backstop::queue::keys {
namespace {

constexpr char kQueueTag = 'q';
constexpr char kReadyTag = 'r';
constexpr char kLeaseTag = 'l';
constexpr char kGreylistTag = 't';
constexpr char kGreylistClientTag = 'c';
constexpr char kGreylistExpiryTag = 'x';
constexpr uint64_t kSignBit = uint64_t{1} << 63;

void AppendTime(int64_t time_ms, std::string& out) {
  out += EncodeFixed64(static_cast<uint64_t>(time_ms) ^ kSignBit);
}

// Parses "<domain> 0 <time:8> <id:16>" (domain present) or "<time:8> <id:16>".
std::optional<IndexKey> ParseSuffix(std::string_view rest, bool with_domain) {
  IndexKey parsed;
  if (with_domain) {
    const size_t nul = rest.find('\0');
    if (nul == std::string_view::npos) {
      return std::nullopt;
    }
    parsed.domain = std::string(rest.substr(0, nul));
    rest.remove_prefix(nul + 1);
  }
  if (rest.size() != 8 + MessageId::kSize) {
    return std::nullopt;
  }
  parsed.time_ms = static_cast<int64_t>(*DecodeFixed64(rest.substr(0, 8)) ^ kSignBit);
  parsed.id = std::string(rest.substr(8));
  return parsed;
}

// "<prefix> <time> <suffix>", the shape of every time-ordered key.
std::string TimeKey(std::string prefix, int64_t time_ms, std::string_view suffix) {
  AppendTime(time_ms, prefix);
  prefix += suffix;
  return prefix;
}

// "<tag> <time+1>" sorts after "<tag> <time> <anything>".
std::string TimeUpperBound(char tag, int64_t time_ms) {
  std::string key(1, tag);
  AppendTime(time_ms + 1, key);
  return key;
}

}  // namespace

std::string EncodeFixed64(uint64_t value) {
  std::string out(8, '\0');
  for (int i = 7; i >= 0; --i) {
    out[i] = static_cast<char>(value & 0xff);
    value >>= 8;
  }
  return out;
}

std::optional<uint64_t> DecodeFixed64(std::string_view bytes) {
  if (bytes.size() != 8) {
    return std::nullopt;
  }
  uint64_t value = 0;
  for (char c : bytes) {
    value = (value << 8) | static_cast<uint8_t>(c);
  }
  return value;
}

std::string QueuePrefix(std::string_view domain) {
  std::string key(1, kQueueTag);
  key += domain;
  key.push_back('\0');
  return key;
}

std::string QueueKey(std::string_view domain, int64_t enqueue_ms, std::string_view id) {
  return TimeKey(QueuePrefix(domain), enqueue_ms, id);
}

std::optional<IndexKey> ParseQueueKey(std::string_view key) {
  if (key.empty() || key[0] != kQueueTag) {
    return std::nullopt;
  }
  return ParseSuffix(key.substr(1), /*with_domain=*/true);
}

std::string ReadyPrefix(ReadyKind kind) {
  return {kReadyTag, static_cast<char>(kind)};
}

std::string ReadyPrefix(ReadyKind kind, std::string_view domain) {
  std::string key = ReadyPrefix(kind);
  key += domain;
  key.push_back('\0');
  return key;
}

std::string ReadyKey(ReadyKind kind, std::string_view domain, int64_t enqueue_ms,
                     std::string_view id) {
  return TimeKey(ReadyPrefix(kind, domain), enqueue_ms, id);
}

std::optional<IndexKey> ParseReadyKey(ReadyKind kind, std::string_view key) {
  const std::string prefix = ReadyPrefix(kind);
  if (!key.starts_with(prefix)) {
    return std::nullopt;
  }
  return ParseSuffix(key.substr(prefix.size()), /*with_domain=*/true);
}

std::string LeasePrefix() {
  return std::string(1, kLeaseTag);
}

std::string LeaseKey(int64_t expiry_ms, std::string_view id) {
  return TimeKey(LeasePrefix(), expiry_ms, id);
}

std::string LeaseUpperBound(int64_t time_ms) {
  return TimeUpperBound(kLeaseTag, time_ms);
}

std::optional<IndexKey> ParseLeaseKey(std::string_view key) {
  if (key.empty() || key[0] != kLeaseTag) {
    return std::nullopt;
  }
  return ParseSuffix(key.substr(1), /*with_domain=*/false);
}

std::string GreylistKey(std::string_view client_network, std::string_view sender,
                        std::string_view recipient) {
  std::string key(1, kGreylistTag);
  key += client_network;
  key.push_back('\0');
  key += sender;
  key.push_back('\0');
  key += recipient;
  return key;
}

std::string GreylistClientKey(std::string_view client_network) {
  std::string key(1, kGreylistClientTag);
  key += client_network;
  return key;
}

std::string GreylistExpiryPrefix() {
  return std::string(1, kGreylistExpiryTag);
}

std::string GreylistExpiryKey(int64_t expiry_ms, std::string_view greylist_key) {
  return TimeKey(GreylistExpiryPrefix(), expiry_ms, greylist_key);
}

std::string GreylistExpiryUpperBound(int64_t time_ms) {
  return TimeUpperBound(kGreylistExpiryTag, time_ms);
}

std::optional<std::string> ParseGreylistExpiryKey(std::string_view key) {
  if (key.size() < 1 + 8 || key[0] != kGreylistExpiryTag) {
    return std::nullopt;
  }
  return std::string(key.substr(1 + 8));
}

std::string PrefixEnd(std::string_view prefix) {
  std::string end(prefix);
  while (!end.empty()) {
    if (static_cast<uint8_t>(end.back()) != 0xff) {
      end.back() = static_cast<char>(static_cast<uint8_t>(end.back()) + 1);
      return end;
    }
    end.pop_back();
  }
  return end;  // the prefix was all 0xff: no finite bound; empty means "to the end"
}

}  // namespace backstop::queue::keys
