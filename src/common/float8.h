// fp8 e4m3 ("e4m3fn": no infinities, max 448, NaN = 0x7F/0xFF), the format of fp8 KV caches.
// Encoding rounds to nearest even and saturates to +-448, as vLLM's scaled conversion does.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>

namespace baton {

inline float fp8_e4m3_decode_slow(uint8_t c) {
  const int exp = (c >> 3) & 0xF, mant = c & 7;
  const float sign = (c & 0x80) ? -1.0f : 1.0f;
  if (exp == 0xF && mant == 7) return NAN;
  if (exp == 0) return sign * std::ldexp(static_cast<float>(mant), -9);
  return sign * std::ldexp(1.0f + mant / 8.0f, exp - 7);
}

// Decoding through a table: the attention inner loop calls this per element.
inline float fp8_e4m3_to_f32(uint8_t c) {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int i = 0; i < 256; ++i) t[i] = fp8_e4m3_decode_slow(static_cast<uint8_t>(i));
    return t;
  }();
  return table[c];
}

inline uint8_t f32_to_fp8_e4m3(float x) {
  if (std::isnan(x)) return 0x7F;
  const uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  const float a = std::fabs(x);
  if (a >= 448.0f) return sign | 0x7E;
  if (a < std::ldexp(1.0f, -6)) {  // subnormal range: steps of 2^-9; 8 steps reach the first normal
    return sign | static_cast<uint8_t>(std::nearbyint(std::ldexp(a, 9)));
  }
  int e;
  const float m = std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
  int exponent = e - 1;                // a = (2m) * 2^(e-1), 2m in [1, 2)
  int q = static_cast<int>(std::nearbyint((2.0f * m - 1.0f) * 8.0f));
  if (q == 8) {
    q = 0;
    ++exponent;
  }
  const int biased = exponent + 7;
  if (biased > 15 || (biased == 15 && q == 7)) return sign | 0x7E;
  return sign | static_cast<uint8_t>((biased << 3) | q);
}

}  // namespace baton
