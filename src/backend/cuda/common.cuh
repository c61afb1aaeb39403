// Device helpers shared by the CUDA backend's kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/kernels.h"

namespace baton::cuda {

// Programmatic dependent launch (sm_90). A kernel launched with launch() may start while the
// kernel before it on the stream is still running, so that its launch and its prologue overlap
// that kernel's tail. Every kernel launched that way calls pdl_wait() before it reads anything
// the earlier kernels write or writes anything they read (the wait returns once they have all
// completed and their writes are visible), and pdl_trigger() as early as it likes to let the next
// kernel be launched. Both are no-ops without the launch attribute or below sm_90.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Whether launch() asks for programmatic dependent launch (set_pdl in kernels.h: per thread).
bool pdl_enabled();

// kernel<<<grid, block, smem, s>>>(args...), with programmatic dependent launch when enabled.
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, Args... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_enabled() ? 1 : 0;
  cudaLaunchKernelEx(&cfg, kernel, static_cast<Params>(args)...);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum (or max) over the first n_warps warps of the block, which meet at sync() (a named barrier
// where only they take part); each of their threads gets the result. `scratch` holds 32 floats.
template <bool kMax, class Sync>
__device__ float block_reduce(float v, float* scratch, int n_warps, Sync sync) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = kMax ? warp_max(v) : warp_sum(v);
  sync();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  sync();
  v = lane < n_warps ? scratch[lane] : (kMax ? -INFINITY : 0.f);
  return kMax ? warp_max(v) : warp_sum(v);
}
// The same over the whole block.
template <bool kMax>
__device__ float block_reduce(float v, float* scratch) {
  return block_reduce<kMax>(v, scratch, (blockDim.x + 31) >> 5, [] { __syncthreads(); });
}

__device__ __forceinline__ float silu(float x) {
  return x / (1.f + __expf(-x));
}

// Tensor cores, warp-wide (sm_80+). c += A B for A 16x16 bf16 (row-major), B 16x8 bf16 (column-
// major), c 16x8 fp32. With g = lane / 4 and q = lane % 4, a lane holds a0 = A[g][2q, 2q+1],
// a1 = A[g+8][2q, 2q+1], a2 = A[g][2q+8, 2q+9], a3 = A[g+8][2q+8, 2q+9]; b0 = B[2q, 2q+1][g],
// b1 = B[2q+8, 2q+9][g]; c = C[g][2q, 2q+1], C[g+8][2q, 2q+1]. Pairs pack the lower index in the
// low half.
__device__ __forceinline__ void mma_bf16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Four 8x8 bf16 matrices from shared memory: lane l gives the address of row l % 8 of matrix
// l / 8 (16 bytes, 16-byte aligned) and receives r[m] = matrix m's [l / 4][2 (l % 4), +1], or with
// kTrans its [2 (l % 4), +1][l / 4], i.e. the fragments mma_bf16 takes.
template <bool kTrans>
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  const auto at = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  if constexpr (kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(at)
                 : "memory");
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(at)
                 : "memory");
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

// The L2 cache policy (createpolicy, sm_80+) for weights, which a decode step reads once: marked
// evict-first they leave L2 to what is read again (the KV cache, activations; 1B shape batch 1
// 0.927 -> 0.912 ms, batch 8 1.121 -> 1.092 on the H200).
__device__ __forceinline__ uint64_t weight_l2_policy() {
  uint64_t p;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(p));
  return p;
}
// __ldg of 16 bytes under an L2 cache policy.
__device__ __forceinline__ uint4 ldg_policy(const void* p, uint64_t policy) {
  uint4 v;
  asm("ld.global.nc.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p), "l"(policy));
  return v;
}

// The keys a query at position pos attends to: [max(0, pos - window + 1), pos] (window 0: all),
// none for a padding row (pos < 0).
struct KeyRange {
  int first, last;  // inclusive; empty when last < first
};
__device__ __forceinline__ KeyRange keys_of(int pos, int window) {
  if (pos < 0) return {0, -1};
  return {window > 0 ? max(0, pos - window + 1) : 0, pos};
}

// Element offset of row `off` of cache block `block`, K (kv 0) or V (kv 1), KV head g, in a layer's
// paged cache [blocks][2][KVH][block_size][D].
__device__ __forceinline__ int64_t kv_offset(int64_t block, int kv, int KVH, int g, int block_size, int64_t off,
                                             int D) {
  return (((block * 2 + kv) * KVH + g) * block_size + off) * D;
}

// Lanes that share one key in a decode CTA of kG query heads: enough that a lane keeps at most 32
// of its heads' q and accumulator elements each (at least 8 lanes, at most a warp).
constexpr int decode_lanes(int kG, int D) {
  return kG * D / 32 < 8 ? 8 : (kG * D / 32 > 32 ? 32 : kG * D / 32);
}

// acc + dot(w, x) over 8 bf16 pairs, in fp32.
__device__ __forceinline__ float dot8(const uint4& w, const uint4& x, float acc) {
  const __nv_bfloat162* wp = reinterpret_cast<const __nv_bfloat162*>(&w);
  const __nv_bfloat162* xp = reinterpret_cast<const __nv_bfloat162*>(&x);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 wf = __bfloat1622float2(wp[i]), xf = __bfloat1622float2(xp[i]);
    acc = fmaf(wf.x, xf.x, acc);
    acc = fmaf(wf.y, xf.y, acc);
  }
  return acc;
}

// One key for a decode CTA's group of kLanes lanes (each holding kE elements of the head): the
// scores of its kG query heads (q pre-scaled, in log2 units), summed over the group by shuffles in
// which every lane takes part; then, where ok (a key of the range), the online softmax's update of
// the running max m, sum l and weighted values acc.
template <int kG, int kE, int kLanes>
__device__ __forceinline__ void attend_key(const float (&q)[kG][kE], const float (&k)[kE], const float (&v)[kE],
                                           bool ok, float (&m)[kG], float (&l)[kG], float (&acc)[kG][kE]) {
  float s[kG];
#pragma unroll
  for (int hd = 0; hd < kG; ++hd) {
    s[hd] = 0.f;
#pragma unroll
    for (int i = 0; i < kE; ++i) s[hd] += q[hd][i] * k[i];
#pragma unroll
    for (int o = 1; o < kLanes; o <<= 1) s[hd] += __shfl_xor_sync(0xffffffffu, s[hd], o);
  }
  if (!ok) return;
#pragma unroll
  for (int hd = 0; hd < kG; ++hd) {
    const float m_new = fmaxf(m[hd], s[hd]);
    const float corr = exp2f(m[hd] - m_new), pr = exp2f(s[hd] - m_new);
    l[hd] = l[hd] * corr + pr;
#pragma unroll
    for (int i = 0; i < kE; ++i) acc[hd][i] = acc[hd][i] * corr + pr * v[i];
    m[hd] = m_new;
  }
}

// KV cache element types: load N consecutive values as fp32, store one value.
struct Bf16Kv {
  using T = __nv_bfloat16;
  static __device__ __forceinline__ float to_f32(T v) { return __bfloat162float(v); }
  static __device__ __forceinline__ T from_f32(float v) { return __float2bfloat16(v); }
};
struct Fp8Kv {
  using T = __nv_fp8_e4m3;
  static __device__ __forceinline__ float to_f32(T v) { return static_cast<float>(v); }
  static __device__ __forceinline__ T from_f32(float v) { return T(v); }  // round to nearest, saturating
};

// Loads N elements (N * sizeof(T) bytes, aligned to that size up to 16) with vector loads.
template <class Kv, int N>
__device__ __forceinline__ void load_f32(const typename Kv::T* p, float* out) {
  using T = typename Kv::T;
  constexpr int kBytes = N * static_cast<int>(sizeof(T));
  if constexpr (kBytes >= 16) {
    static_assert(kBytes % 16 == 0);
#pragma unroll
    for (int c = 0; c < kBytes / 16; ++c) {
      uint4 raw = reinterpret_cast<const uint4*>(p)[c];
      const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int i = 0; i < 16 / static_cast<int>(sizeof(T)); ++i) out[c * (16 / sizeof(T)) + i] = Kv::to_f32(v[i]);
    }
  } else if constexpr (kBytes == 8) {
    uint2 raw = *reinterpret_cast<const uint2*>(p);
    const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = Kv::to_f32(v[i]);
  } else if constexpr (kBytes == 4) {
    uint32_t raw = *reinterpret_cast<const uint32_t*>(p);
    const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = Kv::to_f32(v[i]);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = Kv::to_f32(p[i]);
  }
}

// One warp's share of qkv_rope_cache: row `head` of token t's QKV row (the query heads, then the
// KV heads' K, then their V) + bias, QK-norm and RoPE (q and k), written to dst (which may be the
// row itself); lane i takes the rotation pairs (i, i + D/2), (i + 32, ...). A K or V row goes to
// the paged cache when to_cache and the token has a slot, rounded through the cache's format; with
// kKeepKv it also lands in dst as so rounded (what a later read of the cache returns). The
// prefill path (qkv_kernel) and the fused decode attention both call this, so a token's q, k and v
// are the same whichever prepares them.
// kMaxPairs: rotation pairs per lane, at least D / 64 (4 serves every head size up to 256; a
// caller that knows D asks for no more registers than it needs).
template <class Kv, bool kKeepKv, int kMaxPairs = 4>
__device__ __forceinline__ void qkv_row_warp(const QkvArgs& a, int t, int head, float* dst, bool to_cache) {
  const int lane = threadIdx.x & 31, D = a.D, half = D / 2;
  const float* row = a.qkv + (static_cast<int64_t>(t) * (a.H + 2 * a.KVH) + head) * D;
  const float* bias = a.bias ? a.bias + head * D : nullptr;
  const bool is_q = head < a.H, is_k = !is_q && head < a.H + a.KVH;
  const float* norm = is_q ? a.q_norm : (is_k ? a.k_norm : nullptr);
  // Every load before any arithmetic or store (dst may be the row, and the compiler cannot move a
  // load of the weights past a store through dst): the row, its bias, the norm weights, the
  // frequencies, the position and the slot go out in one round trip.
  const int pos = a.positions[t];
  const int64_t slot = !is_q && to_cache ? a.slots[t] : -1;
  float x1[kMaxPairs], x2[kMaxPairs], w1[kMaxPairs], w2[kMaxPairs], freq[kMaxPairs];
#pragma unroll
  for (int i = 0; i < kMaxPairs; ++i) {
    const int p = lane + 32 * i;
    if (p >= half) break;
    x1[i] = row[p], x2[i] = row[p + half];
    if (bias) x1[i] += bias[p], x2[i] += bias[p + half];
    if (norm) w1[i] = norm[p], w2[i] = norm[p + half];
    if (is_q || is_k) freq[i] = a.inv_freq[p];
  }
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < kMaxPairs; ++i)
    if (lane + 32 * i < half) ss += x1[i] * x1[i] + x2[i] * x2[i];
  float inv = 1.f;
  if (norm) inv = rsqrtf(warp_sum(ss) / D + a.eps);
  typename Kv::T* cache = nullptr;
  if (slot >= 0) {
    const int g = is_k ? head - a.H : head - a.H - a.KVH;
    cache = static_cast<typename Kv::T*>(a.layer_kv) +
            kv_offset(slot / a.block_size, is_k ? 0 : 1, a.KVH, g, a.block_size, slot % a.block_size, D);
  }
  const float kv_inv_scale = is_k ? a.k_inv_scale : a.v_inv_scale;
#pragma unroll
  for (int i = 0; i < kMaxPairs; ++i) {
    const int p = lane + 32 * i;
    if (p >= half) break;
    float y1 = x1[i], y2 = x2[i];
    if (norm) y1 = y1 * inv * w1[i], y2 = y2 * inv * w2[i];
    if (is_q || is_k) {
      float sn, cs;
      sincosf(static_cast<float>(pos) * freq[i], &sn, &cs);
      const float r1 = y1 * cs - y2 * sn, r2 = y2 * cs + y1 * sn;
      y1 = r1, y2 = r2;
    }
    if (is_q) {
      dst[p] = y1, dst[p + half] = y2;
    } else if (cache || kKeepKv) {
      const typename Kv::T c1 = Kv::from_f32(y1 * kv_inv_scale), c2 = Kv::from_f32(y2 * kv_inv_scale);
      if (cache) cache[p] = c1, cache[p + half] = c2;
      if constexpr (kKeepKv) dst[p] = Kv::to_f32(c1), dst[p + half] = Kv::to_f32(c2);
    } else {  // as the row was with its bias (nothing reads it)
      dst[p] = x1[i], dst[p + half] = x2[i];
    }
  }
}

}  // namespace baton::cuda
