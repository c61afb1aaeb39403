// One logging call for the whole project (STYLE.md 11): one line per event, to stderr,
// with a timestamp and level. Thread-safe; lines from different threads never interleave.
#pragma once

#include <chrono>
#include <mutex>
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

// A recurring event logged at most once per interval (a flood of refused peers or failing
// accepts must not flood the log); the next line says how many were left out. Thread-safe.
class RateLimited {
 public:
  explicit RateLimited(std::chrono::milliseconds interval = std::chrono::seconds(1)) : interval_(interval) {}
  template <class... Args>
  void warn(const Args&... args) {
    if (level() > Level::kWarn) return;
    uint64_t dropped = 0;
    if (!due(&dropped)) return;
    if (dropped)
      write(Level::kWarn, concat(args..., " (and ", dropped, " more like it in the last ", interval_.count(), " ms)"));
    else
      write(Level::kWarn, concat(args...));
  }

 private:
  // True when a line may be written now; *dropped: the lines left out since the last one.
  bool due(uint64_t* dropped);

  const std::chrono::milliseconds interval_;
  std::mutex mutex_;
  std::chrono::steady_clock::time_point next_{};
  uint64_t dropped_ = 0;
};

}  // namespace baton::log
