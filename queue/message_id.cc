#include "queue/message_id.h"

#include <cstring>

#include "absl/status/status.h"

namespace backstop::queue {
namespace {

void PutBigEndian(uint64_t value, int width, uint8_t* out) {
  for (int i = width - 1; i >= 0; --i) {
    out[i] = static_cast<uint8_t>(value & 0xff);
    value >>= 8;
  }
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  if (c >= 'A' && c <= 'F') {
    return c - 'A' + 10;
  }
  return -1;
}

}  // namespace

MessageId MessageId::Make(absl::Time time, uint64_t node_id, uint64_t sequence) {
  MessageId id;
  const uint64_t millis = static_cast<uint64_t>(absl::ToUnixMillis(time)) & ((1ULL << 48) - 1);
  PutBigEndian(millis, 6, id.bytes_.data());
  PutBigEndian(node_id & 0xffff, 2, id.bytes_.data() + 6);
  PutBigEndian(sequence, 8, id.bytes_.data() + 8);
  return id;
}

absl::StatusOr<MessageId> MessageId::FromBytes(std::string_view bytes) {
  if (bytes.size() != kSize) {
    return absl::InvalidArgumentError("a message id is 16 bytes, got " +
                                      std::to_string(bytes.size()));
  }
  MessageId id;
  std::memcpy(id.bytes_.data(), bytes.data(), kSize);
  return id;
}

absl::StatusOr<MessageId> MessageId::FromString(std::string_view hex) {
  if (hex.size() != 2 * kSize) {
    return absl::InvalidArgumentError("a message id is 32 hexadecimal digits");
  }
  MessageId id;
  for (size_t i = 0; i < kSize; ++i) {
    const int high = HexValue(hex[2 * i]);
    const int low = HexValue(hex[2 * i + 1]);
    if (high < 0 || low < 0) {
      return absl::InvalidArgumentError("a message id is 32 hexadecimal digits");
    }
    id.bytes_[i] = static_cast<uint8_t>(high * 16 + low);
  }
  return id;
}

std::string MessageId::ToString() const {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * kSize);
  for (uint8_t byte : bytes_) {
    out.push_back(kDigits[byte >> 4]);
    out.push_back(kDigits[byte & 0xf]);
  }
  return out;
}

absl::Time MessageId::time() const {
  uint64_t millis = 0;
  for (int i = 0; i < 6; ++i) {
    millis = (millis << 8) | bytes_[i];
  }
  return absl::FromUnixMillis(static_cast<int64_t>(millis));
}

}  // namespace backstop::queue
