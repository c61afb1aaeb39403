// fp32 compute kernels of the CPU backend: plain loops over contiguous memory (STYLE.md 8),
// raw pointers and shapes, no allocation. Parallel ones take the engine's thread pool.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/thread_pool.h"

namespace baton::cpu {

float dot(const float* a, const float* b, int n);
// y += a * x
void axpy(float a, const float* x, float* y, int n);

// y[T, N] (+)= x[T, K] * w[N, K]^T (+ bias[N]). Rows of w are split across threads.
void matmul(ThreadPool& pool, const float* x, int T, int K, const float* w, int N, float* y, bool accumulate,
            const float* bias = nullptr);

// out[i] = x[i] / rms(x) * w[i] over rows of n.
void rmsnorm(const float* x, const float* w, float* out, int n, float eps);

// In place: x[0:half) and x[half:n) are the rotate-half pairs (HF's convention).
void rope(float* x, const float* cos, const float* sin, int head_dim);

// out[i] = silu(gate[i]) * up[i]
void silu_mul(const float* gate, const float* up, float* out, int n);

}  // namespace baton::cpu
