#include "common/log.h"

#include <atomic>
#include <cmath>
#include <mutex>

#include <fmt/format.h>
#include <spdlog/logger.h>
#include <spdlog/sinks/stdout_sinks.h>

#include "absl/time/clock.h"

namespace backstop::log {
namespace {

// The process-wide destination. Held in a shared_ptr so a concurrent Configure() cannot free
// the logger under a thread that is writing through it. Never destroyed: threads that are not
// ours (gRPC's, which log through queue/grpc_log.cc) still write after main() returns, while
// static destructors run.
std::mutex destination_mutex;
std::shared_ptr<spdlog::logger>& Destination() {  // guarded by destination_mutex
  static auto* const destination = new std::shared_ptr<spdlog::logger>();
  return *destination;
}
std::atomic<int> min_level{static_cast<int>(Level::kInfo)};

std::shared_ptr<spdlog::logger> MakeDestination(const Options& options) {
  auto sink = options.sink ? options.sink : std::make_shared<spdlog::sinks::stdout_sink_mt>();
  auto logger = std::make_shared<spdlog::logger>("backstop", std::move(sink));
  // We render the whole line ourselves; spdlog only writes it and the newline.
  logger->set_pattern("%v");
  logger->set_level(spdlog::level::trace);
  logger->flush_on(spdlog::level::trace);
  return logger;
}

std::shared_ptr<spdlog::logger> CurrentDestination() {
  std::lock_guard lock(destination_mutex);
  std::shared_ptr<spdlog::logger>& destination = Destination();
  if (destination == nullptr) {
    destination = MakeDestination(Options{});
  }
  return destination;
}

// Length of the valid UTF-8 sequence starting at text[i], or 0 if it is not valid
// (overlongs, surrogates and code points above U+10FFFF are invalid).
size_t Utf8SequenceLength(std::string_view text, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char lead = byte(i);
  size_t length = 0;
  uint32_t min_code_point = 0;
  uint32_t code_point = 0;
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
    min_code_point = 0x80;
    code_point = lead & 0x1F;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    min_code_point = 0x800;
    code_point = lead & 0x0F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    min_code_point = 0x10000;
    code_point = lead & 0x07;
  } else {
    return 0;
  }
  if (i + length > text.size()) {
    return 0;
  }
  for (size_t k = 1; k < length; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) {
      return 0;
    }
    code_point = (code_point << 6) | (byte(i + k) & 0x3F);
  }
  if (code_point < min_code_point || code_point > 0x10FFFF ||
      (code_point >= 0xD800 && code_point <= 0xDFFF)) {
    return 0;
  }
  return length;
}

void AppendValue(std::string& out, const Field::Value& value) {
  std::visit(
      [&out](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::string_view>) {
          AppendJsonString(out, v);
        } else if constexpr (std::is_same_v<T, bool>) {
          out.append(v ? "true" : "false");
        } else if constexpr (std::is_same_v<T, double>) {
          // JSON has no NaN or infinity.
          if (std::isfinite(v)) {
            fmt::format_to(std::back_inserter(out), "{}", v);
          } else {
            out.append("null");
          }
        } else {
          fmt::format_to(std::back_inserter(out), "{}", v);
        }
      },
      value);
}

}  // namespace

bool ParseLevel(std::string_view text, Level* level) {
  static constexpr std::pair<std::string_view, Level> kLevels[] = {{"debug", Level::kDebug},
                                                                   {"info", Level::kInfo},
                                                                   {"warn", Level::kWarn},
                                                                   {"error", Level::kError}};
  for (const auto& [name, value] : kLevels) {
    if (text == name) {
      *level = value;
      return true;
    }
  }
  return false;
}

std::string_view LevelName(Level level) {
  switch (level) {
    case Level::kDebug:
      return "debug";
    case Level::kInfo:
      return "info";
    case Level::kWarn:
      return "warn";
    case Level::kError:
      return "error";
  }
  return "unknown";
}

void AppendJsonString(std::string& out, std::string_view text) {
  out.push_back('"');
  for (size_t i = 0; i < text.size();) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c >= 0x80) {
      const size_t length = Utf8SequenceLength(text, i);
      if (length == 0) {
        out.append("\\ufffd");
        ++i;
      } else {
        out.append(text.substr(i, length));
        i += length;
      }
      continue;
    }
    switch (c) {
      case '"':
        out.append("\\\"");
        break;
      case '\\':
        out.append("\\\\");
        break;
      case '\n':
        out.append("\\n");
        break;
      case '\r':
        out.append("\\r");
        break;
      case '\t':
        out.append("\\t");
        break;
      default:
        if (c < 0x20 || c == 0x7F) {
          fmt::format_to(std::back_inserter(out), "\\u{:04x}", c);
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
    ++i;
  }
  out.push_back('"');
}

std::string FormatLine(absl::Time ts, Level level, std::string_view component, std::string_view msg,
                       Fields fields) {
  std::string line;
  line.reserve(128 + msg.size());
  line.append("{\"ts\":\"");
  line.append(absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", ts, absl::UTCTimeZone()));
  line.append("\",\"level\":\"");
  line.append(LevelName(level));
  line.append("\",\"component\":");
  AppendJsonString(line, component);
  line.append(",\"msg\":");
  AppendJsonString(line, msg);
  for (const Field& field : fields) {
    line.push_back(',');
    AppendJsonString(line, field.key());
    line.push_back(':');
    AppendValue(line, field.value());
  }
  line.push_back('}');
  return line;
}

void Configure(const Options& options) {
  auto fresh = MakeDestination(options);
  std::lock_guard lock(destination_mutex);
  Destination() = std::move(fresh);
  min_level.store(static_cast<int>(options.min_level), std::memory_order_relaxed);
}

void Logger::Log(Level level, std::string_view msg, Fields fields) const {
  if (static_cast<int>(level) < min_level.load(std::memory_order_relaxed)) {
    return;
  }
  const std::string line = FormatLine(absl::Now(), level, component_, msg, fields);
  // The line is passed as a plain string view so that braces in it are never formatted.
  CurrentDestination()->log(spdlog::source_loc{}, spdlog::level::info,
                            spdlog::string_view_t(line.data(), line.size()));
}

}  // namespace backstop::log
