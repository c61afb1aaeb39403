// The byte pattern test peers serve, so that a reader can check what it received without
// shipping the data twice: xorshift64 words from a seed.
#pragma once

#include <cstdint>
#include <vector>

namespace baton::xfer::testing {

inline std::vector<uint64_t> pattern(size_t bytes, int64_t seed) {
  std::vector<uint64_t> buf(bytes / 8);
  uint64_t x = static_cast<uint64_t>(seed) * 0x9E3779B97F4A7C15ull;
  for (auto& v : buf) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    v = x;
  }
  return buf;
}

}  // namespace baton::xfer::testing
