#include "backend/cpu/kernels.h"

#include <cmath>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define BATON_AVX2 1
#endif

namespace baton::cpu {

#if BATON_AVX2
namespace {
inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v);
  __m128 hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  __m128 shuf = _mm_movehdup_ps(lo);
  __m128 sums = _mm_add_ps(lo, shuf);
  shuf = _mm_movehl_ps(shuf, sums);
  sums = _mm_add_ss(sums, shuf);
  return _mm_cvtss_f32(sums);
}
}  // namespace
#endif

float dot(const float* a, const float* b, int n) {
  int i = 0;
  float sum = 0.f;
#if BATON_AVX2
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), acc2);
    acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), acc3);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  sum = hsum(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
#endif
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

void axpy(float a, const float* x, float* y, int n) {
  int i = 0;
#if BATON_AVX2
  __m256 va = _mm256_set1_ps(a);
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
#endif
  for (; i < n; ++i) y[i] += a * x[i];
}

void matmul(ThreadPool& pool, const float* x, int T, int K, const float* w, int N, float* y, bool accumulate,
            const float* bias) {
  // Each task owns a range of output columns, so writes never overlap. A row of w stays in L1
  // while it meets every row of x.
  size_t min_chunk = std::max<size_t>(16, (size_t{1} << 16) / std::max(1, K * std::max(1, T)));
  pool.parallel_for(static_cast<size_t>(N), min_chunk, [&](size_t n0, size_t n1) {
    for (size_t n = n0; n < n1; ++n) {
      const float* wr = w + n * static_cast<size_t>(K);
      float b = bias ? bias[n] : 0.f;
      for (int t = 0; t < T; ++t) {
        float v = dot(x + static_cast<size_t>(t) * K, wr, K) + b;
        float& out = y[static_cast<size_t>(t) * N + n];
        out = accumulate ? out + v : v;
      }
    }
  });
}

void rmsnorm(const float* x, const float* w, float* out, int n, float eps) {
  float ss = dot(x, x, n);
  float scale = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
  for (int i = 0; i < n; ++i) out[i] = (x[i] * scale) * w[i];
}

void rope(float* x, const float* cos, const float* sin, int head_dim) {
  int half = head_dim / 2;
  for (int i = 0; i < half; ++i) {
    float a = x[i], b = x[i + half];
    x[i] = a * cos[i] - b * sin[i];
    x[i + half] = b * cos[i] + a * sin[i];
  }
}

void silu_mul(const float* gate, const float* up, float* out, int n) {
  for (int i = 0; i < n; ++i) {
    float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

}  // namespace baton::cpu
