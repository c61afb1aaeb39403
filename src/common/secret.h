// Comparing secrets (API keys, deployment tokens, transfer capabilities) without telling an
// attacker, through the time it takes, how much of a guess was right.
#pragma once

#include <string_view>

namespace baton {

// a == b in time that depends only on the lengths.
inline bool secrets_equal(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace baton
