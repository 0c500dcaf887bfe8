#pragma once

// JSON-lines logging: one object per line on stdout, with `ts` (RFC 3339 UTC, microseconds),
// `level`, `component`, `msg`, then the event's own fields. Lines are built here and written
// through spdlog, whose sinks are thread-safe; any thread may log.

#include <concepts>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <variant>

#include "absl/time/time.h"

namespace spdlog::sinks {
class sink;
}  // namespace spdlog::sinks

namespace backstop::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

// Parses "debug", "info", "warn" or "error".
bool ParseLevel(std::string_view text, Level* level);
std::string_view LevelName(Level level);

// One key/value pair of a log line. Strings are copied into the line, never kept.
class Field {
 public:
  using Value = std::variant<std::string_view, int64_t, uint64_t, double, bool>;

  Field(std::string_view key, std::string_view value) : key_(key), value_(value) {}
  Field(std::string_view key, const char* value) : key_(key), value_(std::string_view(value)) {}
  Field(std::string_view key, const std::string& value)
      : key_(key), value_(std::string_view(value)) {}
  Field(std::string_view key, bool value) : key_(key), value_(value) {}
  Field(std::string_view key, double value) : key_(key), value_(value) {}
  template <std::signed_integral T>
    requires(!std::same_as<T, bool>)
  Field(std::string_view key, T value) : key_(key), value_(static_cast<int64_t>(value)) {}
  template <std::unsigned_integral T>
    requires(!std::same_as<T, bool>)
  Field(std::string_view key, T value) : key_(key), value_(static_cast<uint64_t>(value)) {}

  std::string_view key() const { return key_; }
  const Value& value() const { return value_; }

 private:
  std::string_view key_;
  Value value_;
};

using Fields = std::initializer_list<Field>;

// Renders one log line (without the trailing newline). Pure, so tests can check the format.
// Strings are JSON-escaped; bytes that are not valid UTF-8 become U+FFFD, so a peer cannot make
// us emit invalid JSON.
std::string FormatLine(absl::Time ts, Level level, std::string_view component, std::string_view msg,
                       Fields fields);

// Appends `text` to `out` as a quoted JSON string (used by FormatLine and by /status pages).
void AppendJsonString(std::string& out, std::string_view text);

struct Options {
  Level min_level = Level::kInfo;
  // Where lines go; null = stdout. Tests pass an ostream sink to capture output.
  std::shared_ptr<spdlog::sinks::sink> sink;
};

// Replaces the process-wide log destination and level. Call once at start-up (and in tests);
// lines logged concurrently with Configure() may go to either destination.
void Configure(const Options& options);

// A named source of log lines ("ingest", "queue", "config", ...). Cheap to copy; thread-safe.
class Logger {
 public:
  explicit Logger(std::string component) : component_(std::move(component)) {}

  void Debug(std::string_view msg, Fields fields = {}) const { Log(Level::kDebug, msg, fields); }
  void Info(std::string_view msg, Fields fields = {}) const { Log(Level::kInfo, msg, fields); }
  void Warn(std::string_view msg, Fields fields = {}) const { Log(Level::kWarn, msg, fields); }
  void Error(std::string_view msg, Fields fields = {}) const { Log(Level::kError, msg, fields); }
  void Log(Level level, std::string_view msg, Fields fields) const;

 private:
  std::string component_;
};

}  // namespace backstop::log
