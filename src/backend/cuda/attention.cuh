// Device code the attention kernels share (attention_decode.cu, attention_decode_mma.cu,
// attention_prefill.cu): cache rows, the splits' merge and the fused decode kernels' QKV
// preparation. Paged KV layout [blocks][2 (K, V)][kv_heads][block_size][head_dim].
#pragma once

#include <algorithm>
#include <climits>
#include <type_traits>

#include "backend/cuda/common.cuh"
#include "backend/cuda/kernels.h"

namespace baton::cuda {

// The signature every decode kernel shares (the CUDA-core and the tensor-core one).
using DecodeKernel = void (*)(AttnArgs, QkvArgs, int, float*, int*);
// attention_decode_mma.cu: launches the tensor-core decode kernel (always fused) on a.KVH x a.T x
// n_splits CTAs; false for head sizes it does not take.
bool launch_decode_mma(const AttnArgs& a, const QkvArgs& p, int n_splits, float* ws, int* arrivals, cudaStream_t s);

namespace {

constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ __nv_bfloat16* out_bf16(const AttnArgs& a) {
  return reinterpret_cast<__nv_bfloat16*>(a.out);
}

template <class Kv>
__device__ __forceinline__ const typename Kv::T* kv_row(const AttnArgs& a, const int32_t* table, int j, int kv, int g) {
  return static_cast<const typename Kv::T*>(a.layer_kv) +
         kv_offset(table[j / a.block_size], kv, a.KVH, g, a.block_size, j % a.block_size, a.D);
}

// Elements [e, e + 8) of key and value j as fp32 (prefill staging), or zeros for a key past the
// tile's last position hi.
template <typename Kv>
__device__ __forceinline__ void load_kv8(const AttnArgs& a, const int32_t* table, int j, int hi, int e, int g,
                                         float (&kf)[8], float (&vf)[8]) {
  if (j <= hi) {
    load_f32<Kv, 8>(kv_row<Kv>(a, table, j, 0, g) + e, kf);
    load_f32<Kv, 8>(kv_row<Kv>(a, table, j, 1, g) + e, vf);
  } else {
#pragma unroll
    for (int x = 0; x < 8; ++x) kf[x] = vf[x] = 0.f;
  }
}

// N elements of a K or V row as loaded, not yet converted: where a load in flight lands, so that
// the loads of a group's next key can go out before the math on its current one.
template <class Kv, int N>
struct RawRow {
  using T = typename Kv::T;
  static constexpr int kBytes = N * static_cast<int>(sizeof(T));
  static constexpr int kVecBytes = kBytes >= 16 ? 16 : kBytes;
  using Vec = std::conditional_t<
      kVecBytes == 16, uint4,
      std::conditional_t<kVecBytes == 8, uint2,
                         std::conditional_t<kVecBytes == 4, uint32_t, std::conditional_t<kVecBytes == 2, uint16_t, uint8_t>>>>;
  Vec v[kBytes / kVecBytes];
  __device__ __forceinline__ void load(const T* p) {
#pragma unroll
    for (int c = 0; c < kBytes / kVecBytes; ++c) v[c] = reinterpret_cast<const Vec*>(p)[c];
  }
  __device__ __forceinline__ void to_f32(float* out) const {
    const T* e = reinterpret_cast<const T*>(v);
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = Kv::to_f32(e[i]);
  }
};

constexpr int kDecodeThreads = 256;
constexpr int kMaxSplits = 32;  // the backend's splits_for never asks for more
constexpr int kMaxCtaHeads = 4;  // more measured slower (bench/RESULTS.md)

// out[t, h0 .. h0 + nh) (nh <= kHeads) from the splits' partials (A[D], M, L each per head) in
// ws. The loads go out together: each split's M and L, and the partial sums of the (kElems) output
// elements a thread writes for the first kBatch splits (one round trip for up to that many splits;
// the kernel's registers bound the batch). The split weights take a thread per (head, split) when
// nh * splits <= blockDim.x (decode_kernel); kAnyBlock (decode_mma_kernel's 16 heads) loops over
// them instead. decode_kernel with that loop and the first last_split below measured 5% slower
// per decode step at batch 1 (bench/RESULTS.md, settled choices); the cause was last_split's flag (see
// there), and whether the loop costs anything is not measured, so decode_kernel keeps this branch.
constexpr int kMergeBatch = 16;
template <int kElems, int kHeads = kMaxCtaHeads, int kBatch = kMergeBatch, bool kAnyBlock = false>
__device__ void merge_splits(const AttnArgs& a, int n_splits, int splits, const float* ws, int t, int h0, int nh) {
  __shared__ float sm_scale[kHeads][kMaxSplits], sm_l[kHeads][kMaxSplits];
  const int D = a.D;
  const float* w0 = ws + (static_cast<int64_t>(t) * a.H + h0) * n_splits * (D + 2);
  float part[kElems][kBatch];
  const auto load_batch = [&](int s0) {
#pragma unroll
    for (int e = 0; e < kElems; ++e) {
      const int i = threadIdx.x + e * blockDim.x;
      const float* w = w0 + (i / D) * n_splits * (D + 2) + i % D;
#pragma unroll
      for (int s = 0; s < kBatch; ++s)
        part[e][s] = i < nh * D && s0 + s < splits ? __ldcg(w + (s0 + s) * (D + 2)) : 0.f;
    }
  };
  load_batch(0);
  if constexpr (kAnyBlock) {
    __shared__ float sm_m[kHeads][kMaxSplits];
    for (int i = threadIdx.x; i < nh * splits; i += blockDim.x) {
      const int hd = i / splits, s = i % splits;
      sm_m[hd][s] = __ldcg(w0 + (hd * n_splits + s) * (D + 2) + D);
      sm_l[hd][s] = __ldcg(w0 + (hd * n_splits + s) * (D + 2) + D + 1);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < nh * splits; i += blockDim.x) {
      const int hd = i / splits;
      float M = -INFINITY;
      for (int s = 0; s < splits; ++s) M = fmaxf(M, sm_m[hd][s]);
      sm_scale[hd][i % splits] = M == -INFINITY ? 0.f : exp2f(sm_m[hd][i % splits] - M);
    }
    __syncthreads();
  } else {
    for (int i = threadIdx.x; i < nh * splits; i += blockDim.x) {
      const int hd = i / splits, s = i % splits;
      sm_scale[hd][s] = __ldcg(w0 + (hd * n_splits + s) * (D + 2) + D);
      sm_l[hd][s] = __ldcg(w0 + (hd * n_splits + s) * (D + 2) + D + 1);
    }
    __syncthreads();
    float scale = 0.f;
    if (threadIdx.x < nh * splits) {
      const int hd = threadIdx.x / splits;
      float M = -INFINITY;
      for (int s = 0; s < splits; ++s) M = fmaxf(M, sm_scale[hd][s]);
      scale = M == -INFINITY ? 0.f : exp2f(sm_scale[hd][threadIdx.x % splits] - M);
    }
    __syncthreads();
    if (threadIdx.x < nh * splits) sm_scale[threadIdx.x / splits][threadIdx.x % splits] = scale;
    __syncthreads();
  }
  float A[kElems];
#pragma unroll
  for (int e = 0; e < kElems; ++e) A[e] = 0.f;
  for (int s0 = 0;;) {
#pragma unroll
    for (int e = 0; e < kElems; ++e) {
      const int hd = min((threadIdx.x + e * blockDim.x) / D, kHeads - 1);
#pragma unroll
      for (int s = 0; s < kBatch; ++s) A[e] += s0 + s < splits ? part[e][s] * sm_scale[hd][s0 + s] : 0.f;
    }
    s0 += kBatch;
    if (s0 >= splits) break;
    load_batch(s0);
  }
#pragma unroll
  for (int e = 0; e < kElems; ++e) {
    const int i = threadIdx.x + e * blockDim.x, hd = i / D, d = i % D;
    if (i >= nh * D) break;
    float L = 0.f;
    for (int s = 0; s < splits; ++s) L += sm_l[hd][s] * sm_scale[hd][s];
    out_bf16(a)[static_cast<int64_t>(t) * a.H * D + (h0 + hd) * D + d] =
        __float2bfloat16(L > 0.f ? A[e] / L * a.v_scale : 0.f);
  }
}

// The decode kernels' end: every split of (token, heads h0 ..) has published its partial in ws; the
// last CTA to count itself in (the caller) merges them all (no merge kernel to launch) and resets
// the counter for the next layer. Returns whether this CTA was the last. Called by every thread.
// The verdict travels by __syncthreads_or, not a function-scope __shared__ flag: with such a flag
// (one symbol for every kernel that inlines this, where a kernel's own flag is demoted into it, as
// the PTX notes) the CUDA-core decode kernel measured 5% slower at batch 1 and 8 (bench/RESULTS.md,
// settled choices); the instructions differ by a few, so why is not known.
__device__ __forceinline__ bool last_split(int* arrivals, int64_t at, int splits) {
  __threadfence();
  __syncthreads();
  int mine = 0;
  if (threadIdx.x == 0) {
    int* arrived = arrivals + at;
    mine = atomicAdd(arrived, 1) == splits - 1;
    if (mine) *arrived = 0;
  }
  const bool last = __syncthreads_or(mine);
  if (last) __threadfence();
  return last;
}

// kFused (decode steps, one new token per sequence): the kernel also does qkv_rope_cache's work
// for its token. Every CTA prepares its query heads [h0, h0 + nh) (bias, QK-norm, RoPE) from the
// raw QKV row into qv (D floats per head); the CTA whose keys end at the new token prepares that
// token's key and value too (with_kv), rounded through the cache's format so that they are exactly
// what a later read of the cache returns, and uses them for the last key instead of reading the
// cache; the CTA holding the KV group's first query head writes them to the cache (write_kv). One
// warp per row (qkv_row_warp, as qkv_kernel), one launch fewer per layer. Ends with __syncthreads().
template <int D, class Kv>
__device__ void prepare_qkv(const QkvArgs& p, int t, int h0, int nh, int g, bool with_kv, bool write_kv, float* qv,
                            float* kn, float* vn) {
  const int warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  for (int r = warp; r < nh + (with_kv ? 2 : 0); r += n_warps) {  // q heads, then k, then v
    const bool is_q = r < nh, is_k = r == nh;
    const int head = is_q ? h0 + r : p.H + (is_k ? 0 : p.KVH) + g;
    qkv_row_warp<Kv, true, (D + 63) / 64>(p, t, head, is_q ? qv + r * D : (is_k ? kn : vn), write_kv);
  }
  __syncthreads();
}

// Eight consecutive cache elements as bf16 (one 16-byte vector).
template <class Kv>
__device__ __forceinline__ uint4 load_bf16x8(const typename Kv::T* p) {
  if constexpr (sizeof(typename Kv::T) == 2) {
    return *reinterpret_cast<const uint4*>(p);
  } else {
    float f[8];
    load_f32<Kv, 8>(p, f);
    return make_uint4(pack_bf16(f[0], f[1]), pack_bf16(f[2], f[3]), pack_bf16(f[4], f[5]), pack_bf16(f[6], f[7]));
  }
}

}  // namespace
}  // namespace baton::cuda
