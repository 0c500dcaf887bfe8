#pragma once

// Durations and sizes as operators write them in the configuration and on the command line
// (DESIGN §4), and back again for human output.
//
// Durations: one or more groups of <decimal digits><unit>, units "d", "h", "m", "s", "ms", in
// strictly decreasing order and each at most once, with nothing in between: "30s", "15m",
// "5d", "500ms", "1h30m", "0s". No sign, no fractions, no spaces: the value is honoured
// exactly, so we accept only forms with one obvious meaning. A bare number is refused because
// "30" could mean seconds or minutes.
//
// Sizes: <decimal digits>[unit] with binary units "B", "KiB", "MiB", "GiB", "TiB" and decimal
// units "kB", "MB", "GB", "TB"; no unit means bytes. Units are case-sensitive ("KB" and "mb"
// are refused as ambiguous).

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace backstop {

// InvalidArgument for malformed text (empty, negative, missing or unknown unit, units out of
// order), OutOfRange when the value does not fit in 2^63-1 milliseconds.
absl::StatusOr<absl::Duration> ParseDuration(std::string_view text);

// InvalidArgument for malformed text, OutOfRange when the value does not fit in 64 bits.
absl::StatusOr<uint64_t> ParseSize(std::string_view text);

// Call it as backstop::FormatDuration: absl::FormatDuration is found too by argument-dependent
// lookup. The canonical compound form ParseDuration reads back: 90 minutes → "1h30m", 0 → "0s",
// 1.5 s → "1s500ms". Sub-millisecond parts are dropped (nothing we parse has them); negative
// durations get a leading "-" and infinite ones print as "inf" / "-inf", which ParseDuration
// refuses.
std::string FormatDuration(absl::Duration duration);

// The largest binary unit that represents the size exactly, so ParseSize reads it back:
// 52428800 → "50MiB", 1000 → "1000B", 0 → "0B".
std::string FormatSize(uint64_t bytes);

}  // namespace backstop
