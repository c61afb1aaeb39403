// Element-wise and per-row kernels: embedding, RMSNorm, QKV post-processing (bias, QK-norm,
// RoPE, KV cache write), SiLU-and-mul.
#include <algorithm>
#include <cstdlib>
#include <string>

#include "backend/cuda/common.cuh"
#include "backend/cuda/kernels.h"

namespace baton::cuda {
namespace {

__global__ void embed_kernel(const int32_t* tokens, const __nv_bfloat16* table, float* x, int hidden) {
  pdl_trigger();
  pdl_wait();
  const int t = blockIdx.x;
  const __nv_bfloat16* row = table + static_cast<int64_t>(tokens[t]) * hidden;
  float* dst = x + static_cast<int64_t>(t) * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = __bfloat162float(row[i]);
}

__global__ void rmsnorm_kernel(const float* x, const int32_t* rows, const float* w, __nv_bfloat16* out, int hidden,
                               float eps) {
  __shared__ float scratch[32];
  pdl_trigger();
  pdl_wait();
  const int r = blockIdx.x;
  const float* src = x + static_cast<int64_t>(rows ? rows[r] : r) * hidden;
  float ss = 0.f;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) ss += src[i] * src[i];
  ss = block_reduce<false>(ss, scratch);
  const float inv = rsqrtf(ss / hidden + eps);
  __nv_bfloat16* dst = out + static_cast<int64_t>(r) * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = __float2bfloat16(src[i] * inv * w[i]);
}

// The same for hidden % 4 == 0, in one pass: each thread holds its kVec float4s of the row (and
// of w) in registers from one burst of loads, so the row is read once and the norm's reduction
// waits on a single round trip; bf16 out in 8-byte stores. A decode step of the 1B shape spends
// two of these a layer (one pass measured 4-7% faster at batch 16-128 than two).
template <int kVec>
__global__ void rmsnorm_vec_kernel(const float* x, const int32_t* rows, const float* w, __nv_bfloat16* out, int hidden,
                                   float eps) {
  __shared__ float scratch[32];
  pdl_trigger();
  pdl_wait();
  const int r = blockIdx.x, n4 = hidden >> 2;
  const float4* src = reinterpret_cast<const float4*>(x + static_cast<int64_t>(rows ? rows[r] : r) * hidden);
  const float4* w4 = reinterpret_cast<const float4*>(w);
  float4 v[kVec], g[kVec];
  float ss = 0.f;
#pragma unroll
  for (int j = 0; j < kVec; ++j) {
    const int i = threadIdx.x + j * blockDim.x;
    v[j] = i < n4 ? src[i] : make_float4(0.f, 0.f, 0.f, 0.f);
    g[j] = i < n4 ? w4[i] : make_float4(0.f, 0.f, 0.f, 0.f);
  }
#pragma unroll
  for (int j = 0; j < kVec; ++j) ss += v[j].x * v[j].x + v[j].y * v[j].y + v[j].z * v[j].z + v[j].w * v[j].w;
  ss = block_reduce<false>(ss, scratch);
  const float inv = rsqrtf(ss / hidden + eps);
  uint2* dst = reinterpret_cast<uint2*>(out + static_cast<int64_t>(r) * hidden);
#pragma unroll
  for (int j = 0; j < kVec; ++j) {
    const int i = threadIdx.x + j * blockDim.x;
    if (i >= n4) break;
    const __nv_bfloat162 lo = __floats2bfloat162_rn(v[j].x * inv * g[j].x, v[j].y * inv * g[j].y);
    const __nv_bfloat162 hi = __floats2bfloat162_rn(v[j].z * inv * g[j].z, v[j].w * inv * g[j].w);
    dst[i] = make_uint2(*reinterpret_cast<const uint32_t*>(&lo), *reinterpret_cast<const uint32_t*>(&hi));
  }
}

// One warp per (token, head): qkv_row_warp in place.
template <class Kv>
__global__ void qkv_kernel(QkvArgs a) {
  pdl_trigger();
  pdl_wait();
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int n_heads = a.H + 2 * a.KVH;
  if (warp >= a.T * n_heads) return;
  const int t = warp / n_heads, head = warp % n_heads;
  qkv_row_warp<Kv, false>(a, t, head, a.qkv + (static_cast<int64_t>(t) * n_heads + head) * a.D, true);
}

// grid (columns / 256, tokens): no 64-bit division per element. kVec: four columns per thread
// with 16-byte loads (I % 4 == 0); a prefill-sized step reads the widest activation of the layer
// here.
template <bool kVec>
__global__ void silu_mul_kernel(const float* gu, __nv_bfloat16* act, int I) {
  pdl_trigger();
  pdl_wait();
  const int c = (blockIdx.x * blockDim.x + threadIdx.x) * (kVec ? 4 : 1);
  if (c >= I) return;
  const int64_t t = blockIdx.y;
  if constexpr (kVec) {
    const float4 g = *reinterpret_cast<const float4*>(gu + t * 2 * I + c);
    const float4 u = *reinterpret_cast<const float4*>(gu + t * 2 * I + I + c);
    const __nv_bfloat162 lo = __floats2bfloat162_rn(silu(g.x) * u.x, silu(g.y) * u.y);
    const __nv_bfloat162 hi = __floats2bfloat162_rn(silu(g.z) * u.z, silu(g.w) * u.w);
    *reinterpret_cast<uint2*>(act + t * I + c) =
        make_uint2(*reinterpret_cast<const uint32_t*>(&lo), *reinterpret_cast<const uint32_t*>(&hi));
  } else {
    act[t * I + c] = __float2bfloat16(silu(gu[t * 2 * I + c]) * gu[t * 2 * I + I + c]);
  }
}

__global__ void tree_sum_kernel(const float* parts, int n, size_t stride, float* out, size_t count, bool add) {
  pdl_trigger();
  pdl_wait();
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += size_t(gridDim.x) * blockDim.x) {
    float v[8];
#pragma unroll
    for (int p = 0; p < 8; ++p) v[p] = p < n ? parts[p * stride + i] : 0.f;
    for (int m = n; m > 1; m /= 2)
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (j < m / 2) v[j] = v[2 * j] + v[2 * j + 1];
    out[i] = add ? out[i] + v[0] : v[0];
  }
}

thread_local bool t_pdl = false;

}  // namespace

void tree_sum(const float* parts, int n, size_t stride, float* out, size_t count, bool add, cudaStream_t s) {
  if (count == 0) return;
  const int grid = int(std::min<size_t>((count + 255) / 256, 8192));
  launch(tree_sum_kernel, grid, 256, 0, s, parts, n, stride, out, count, add);
}

bool pdl_enabled() {
  return t_pdl;
}
void set_pdl(bool on) {
  t_pdl = on;
}

void embed(const int32_t* tokens, const bf16_t* table, float* x, int T, int hidden, cudaStream_t s) {
  if (T == 0) return;
  // A plain launch: what precedes it is the copy of the step's inputs, not a kernel.
  embed_kernel<<<T, 256, 0, s>>>(tokens, reinterpret_cast<const __nv_bfloat16*>(table), x, hidden);
}

void rmsnorm(const float* x, const int32_t* rows, const float* w, bf16_t* out, int n_rows, int hidden, float eps,
             cudaStream_t s) {
  if (n_rows == 0) return;
  __nv_bfloat16* o = reinterpret_cast<__nv_bfloat16*>(out);
  const int n4 = hidden / 4;
  // 128 threads with up to 8 float4s each, more threads past 4096 (up to 1024 x 8 float4s).
  auto warps32 = [](int n) { return (n + 31) / 32 * 32; };
  const int threads = n4 <= 128 ? warps32(n4) : std::clamp(warps32((n4 + 7) / 8), 128, 1024);
  const int vec = (n4 + threads - 1) / threads;
  if (hidden % 4 != 0 || n4 == 0 || vec > 8)
    launch(rmsnorm_kernel, n_rows, hidden >= 1024 ? 512 : 256, 0, s, x, rows, w, o, hidden, eps);
  else if (vec == 1)
    launch(rmsnorm_vec_kernel<1>, n_rows, threads, 0, s, x, rows, w, o, hidden, eps);
  else if (vec == 2)
    launch(rmsnorm_vec_kernel<2>, n_rows, threads, 0, s, x, rows, w, o, hidden, eps);
  else if (vec <= 4)
    launch(rmsnorm_vec_kernel<4>, n_rows, threads, 0, s, x, rows, w, o, hidden, eps);
  else
    launch(rmsnorm_vec_kernel<8>, n_rows, threads, 0, s, x, rows, w, o, hidden, eps);
}

void qkv_rope_cache(const QkvArgs& a, cudaStream_t s) {
  const int64_t warps = static_cast<int64_t>(a.T) * (a.H + 2 * a.KVH);
  if (warps == 0) return;
  const int blocks = static_cast<int>((warps + 3) / 4);
  if (a.fp8)
    launch(qkv_kernel<Fp8Kv>, blocks, 128, 0, s, a);
  else
    launch(qkv_kernel<Bf16Kv>, blocks, 128, 0, s, a);
}

void silu_mul(const float* gate_up, bf16_t* act, int T, int I, cudaStream_t s) {
  if (T == 0 || I == 0) return;
  if (I % 4 == 0)
    launch(silu_mul_kernel<true>, dim3((I / 4 + 255) / 256, T), 256, 0, s, gate_up,
           reinterpret_cast<__nv_bfloat16*>(act), I);
  else
    launch(silu_mul_kernel<false>, dim3((I + 255) / 256, T), 256, 0, s, gate_up, reinterpret_cast<__nv_bfloat16*>(act),
           I);
}

}  // namespace baton::cuda
