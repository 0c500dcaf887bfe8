#pragma once

// Message ids (DESIGN §3.2): 128 bits, time-ordered, assigned by ingest. Layout, big-endian so
// that byte order is time order: 48 bits of Unix milliseconds, 16 bits of the ingest node id,
// 64 bits of a per-node sequence. Ids from one node are strictly increasing as long as its
// sequence is; ids from different nodes never collide while node ids are unique (mod 2^16).

#include <array>
#include <compare>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace backstop::queue {

class MessageId {
 public:
  static constexpr size_t kSize = 16;

  MessageId() = default;  // all zero; never assigned to a message

  static MessageId Make(absl::Time time, uint64_t node_id, uint64_t sequence);
  // InvalidArgument unless `bytes` is exactly 16 bytes long.
  static absl::StatusOr<MessageId> FromBytes(std::string_view bytes);
  // Reads 32 hexadecimal digits (either case), as ToString writes them.
  static absl::StatusOr<MessageId> FromString(std::string_view hex);

  std::string_view bytes() const {
    return {reinterpret_cast<const char*>(bytes_.data()), bytes_.size()};
  }
  // 32 lower-case hexadecimal digits: the id in logs and in backstopctl.
  std::string ToString() const;
  absl::Time time() const;

  friend auto operator<=>(const MessageId&, const MessageId&) = default;

 private:
  std::array<uint8_t, kSize> bytes_{};
};

}  // namespace backstop::queue
