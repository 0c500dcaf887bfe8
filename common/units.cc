#include "common/units.h"

#include <array>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace backstop {
namespace {

struct Unit {
  std::string_view name;
  uint64_t factor;
};

// Largest first. A unit name must be followed by a digit or the end, which tells "m" from "ms".
constexpr std::array<Unit, 5> kDurationUnits = {{
    {"d", 86'400'000},
    {"h", 3'600'000},
    {"m", 60'000},
    {"s", 1'000},
    {"ms", 1},
}};

constexpr std::array<Unit, 9> kSizeUnits = {{
    {"B", 1},
    {"KiB", uint64_t{1} << 10},
    {"MiB", uint64_t{1} << 20},
    {"GiB", uint64_t{1} << 30},
    {"TiB", uint64_t{1} << 40},
    {"kB", 1'000},
    {"MB", 1'000'000},
    {"GB", 1'000'000'000},
    {"TB", 1'000'000'000'000},
}};

constexpr uint64_t kMaxDurationMillis = std::numeric_limits<int64_t>::max();

bool IsDigit(char c) {
  return c >= '0' && c <= '9';
}

// Reads a run of decimal digits from the front of `text`. Returns false on overflow of
// `limit`; `*digits` is the number of characters consumed (0 if none).
bool ConsumeNumber(std::string_view& text, uint64_t limit, uint64_t* value, size_t* digits) {
  *value = 0;
  *digits = 0;
  bool overflow = false;
  while (*digits < text.size() && IsDigit(text[*digits])) {
    const uint64_t d = static_cast<uint64_t>(text[*digits] - '0');
    if (*value > (limit - d) / 10) {
      overflow = true;
    } else {
      *value = *value * 10 + d;
    }
    ++*digits;
  }
  text.remove_prefix(*digits);
  return !overflow;
}

std::string Quoted(std::string_view text) {
  return absl::StrCat("\"", std::string(text), "\"");
}

}  // namespace

absl::StatusOr<absl::Duration> ParseDuration(std::string_view text) {
  const std::string quoted = Quoted(text);
  if (text.empty()) {
    return absl::InvalidArgumentError("empty duration");
  }
  if (text.front() == '-') {
    return absl::InvalidArgumentError(absl::StrCat("negative duration ", quoted));
  }
  std::string_view rest = text;
  uint64_t total_ms = 0;
  size_t next_allowed_unit = 0;  // index into kDurationUnits; enforces largest first, once each
  while (!rest.empty()) {
    uint64_t value = 0;
    size_t digits = 0;
    const bool fits = ConsumeNumber(rest, kMaxDurationMillis, &value, &digits);
    if (digits == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("duration ", quoted, ": expected a number at \"", std::string(rest), "\""));
    }
    if (!fits) {
      return absl::OutOfRangeError(absl::StrCat("duration ", quoted, " is too large"));
    }
    size_t unit_index = kDurationUnits.size();
    for (size_t i = 0; i < kDurationUnits.size(); ++i) {
      const std::string_view name = kDurationUnits[i].name;
      if (rest.substr(0, name.size()) == name &&
          (rest.size() == name.size() || IsDigit(rest[name.size()]))) {
        unit_index = i;
        break;
      }
    }
    if (unit_index == kDurationUnits.size()) {
      if (rest.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "duration ", quoted, ": missing unit (one of d, h, m, s, ms) after the number"));
      }
      return absl::InvalidArgumentError(absl::StrCat("duration ", quoted, ": unknown unit at \"",
                                                     std::string(rest),
                                                     "\" (use d, h, m, s or ms)"));
    }
    const Unit& unit = kDurationUnits[unit_index];
    rest.remove_prefix(unit.name.size());
    if (unit_index < next_allowed_unit) {
      return absl::InvalidArgumentError(absl::StrCat(
          "duration ", quoted, ": units must appear once each, largest first (like \"1h30m\")"));
    }
    next_allowed_unit = unit_index + 1;
    if (value > (kMaxDurationMillis - total_ms) / unit.factor) {
      return absl::OutOfRangeError(absl::StrCat("duration ", quoted, " is too large"));
    }
    total_ms += value * unit.factor;
  }
  return absl::Milliseconds(static_cast<int64_t>(total_ms));
}

absl::StatusOr<uint64_t> ParseSize(std::string_view text) {
  const std::string quoted = Quoted(text);
  if (text.empty()) {
    return absl::InvalidArgumentError("empty size");
  }
  if (text.front() == '-') {
    return absl::InvalidArgumentError(absl::StrCat("negative size ", quoted));
  }
  std::string_view rest = text;
  uint64_t value = 0;
  size_t digits = 0;
  const bool fits = ConsumeNumber(rest, std::numeric_limits<uint64_t>::max(), &value, &digits);
  if (digits == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("size ", quoted, ": expected a number followed by a unit like MiB"));
  }
  if (!fits) {
    return absl::OutOfRangeError(absl::StrCat("size ", quoted, " is too large"));
  }
  uint64_t factor = 1;
  if (!rest.empty()) {
    bool known = false;
    for (const Unit& unit : kSizeUnits) {
      if (rest == unit.name) {
        factor = unit.factor;
        known = true;
        break;
      }
    }
    if (!known) {
      return absl::InvalidArgumentError(
          absl::StrCat("size ", quoted, ": unknown unit \"", std::string(rest),
                       "\" (use B, KiB, MiB, GiB, TiB, kB, MB, GB or TB)"));
    }
  }
  if (value > std::numeric_limits<uint64_t>::max() / factor) {
    return absl::OutOfRangeError(absl::StrCat("size ", quoted, " is too large"));
  }
  return value * factor;
}

std::string FormatDuration(absl::Duration duration) {
  if (duration == absl::InfiniteDuration()) {
    return "inf";
  }
  if (duration == -absl::InfiniteDuration()) {
    return "-inf";
  }
  std::string out;
  if (duration < absl::ZeroDuration()) {
    out = "-";
    duration = -duration;
  }
  uint64_t ms = static_cast<uint64_t>(absl::ToInt64Milliseconds(duration));
  if (ms == 0) {
    return out + "0s";
  }
  for (const Unit& unit : kDurationUnits) {
    if (ms >= unit.factor) {
      absl::StrAppend(&out, ms / unit.factor, std::string(unit.name));
      ms %= unit.factor;
    }
  }
  return out;
}

std::string FormatSize(uint64_t bytes) {
  constexpr std::array<Unit, 4> kBinaryLargestFirst = {{
      {"TiB", uint64_t{1} << 40},
      {"GiB", uint64_t{1} << 30},
      {"MiB", uint64_t{1} << 20},
      {"KiB", uint64_t{1} << 10},
  }};
  if (bytes != 0) {
    for (const Unit& unit : kBinaryLargestFirst) {
      if (bytes % unit.factor == 0) {
        return absl::StrCat(bytes / unit.factor, std::string(unit.name));
      }
    }
  }
  return absl::StrCat(bytes, "B");
}

}  // namespace backstop
