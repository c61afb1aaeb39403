// One logging call for the whole project (STYLE.md 11): one line per event, to stderr,
// with a timestamp and level. Thread-safe; lines from different threads never interleave.
#pragma once

#include <string>
#include <string_view>

#include "common/result.h"

namespace baton::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3, kOff = 4 };

void set_level(Level level);
Level level();
// Parses "debug" | "info" | "warning" | "warn" | "error" | "off".
Result<Level> parse_level(std::string_view name);
void write(Level level, std::string_view line);

template <class... Args>
void debug(const Args&... args) {
  if (level() <= Level::kDebug) write(Level::kDebug, concat(args...));
}
template <class... Args>
void info(const Args&... args) {
  if (level() <= Level::kInfo) write(Level::kInfo, concat(args...));
}
template <class... Args>
void warn(const Args&... args) {
  if (level() <= Level::kWarn) write(Level::kWarn, concat(args...));
}
template <class... Args>
void error(const Args&... args) {
  if (level() <= Level::kError) write(Level::kError, concat(args...));
}

}  // namespace baton::log
