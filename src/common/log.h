// One logging call for the whole project (STYLE.md 11): one line per event, to stderr,
// with a timestamp and level. Thread-safe; lines from different threads never interleave.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
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

// At most one line per interval for an event that may recur without bound (a flood of forged
// registrations, a descriptor limit that stays reached): the line written says how many were
// held back since the previous one. It keeps one counter, nothing per source, so a flood costs no
// memory and at most one line a second of log. Thread-safe.
class Throttle {
 public:
  explicit Throttle(std::chrono::milliseconds interval = std::chrono::seconds(1)) : interval_(interval) {}

  // nullopt: hold this line back. Otherwise write it: the value is how many were held back.
  std::optional<uint64_t> admit(std::chrono::steady_clock::time_point now = std::chrono::steady_clock::now());

  template <class... Args>
  void warn(const Args&... args) {
    if (level() > Level::kWarn) return;
    if (auto held = admit()) write(Level::kWarn, concat(args..., held_back_note(*held)));
  }
  template <class... Args>
  void info(const Args&... args) {
    if (level() > Level::kInfo) return;
    if (auto held = admit()) write(Level::kInfo, concat(args..., held_back_note(*held)));
  }

 private:
  static std::string held_back_note(uint64_t n);

  const std::chrono::milliseconds interval_;
  std::mutex mutex_;
  std::optional<std::chrono::steady_clock::time_point> last_;
  uint64_t held_ = 0;
};

}  // namespace baton::log
