// Paged attention over the KV cache layout [blocks][2 (K, V)][kv_heads][block_size][head_dim].
//
// Decode: one CTA per (query heads of one KV group, token, split): groups of 8-32 lanes each walk
// their own keys (one key per group at a time, its lanes sharing the head dimension, the group's
// next key already loading) keeping an online softmax per query head, so every K/V row is read
// once for all the query heads of its KV group (up to 4 in a CTA); the groups merge in shared
// memory and the splits through a workspace, merged by whichever split finishes last. Steps of
// many tokens (32+) take decode_mma_kernel instead: a CTA per (KV group, token, split), the
// group's query heads as the rows of tensor-core tiles (bound by instructions, the CUDA-core
// kernel lost there).
// Prefill: one CTA per (tile of up to 64 query rows, query head); K and V of a chunk of keys at a
// time go through shared memory and every row of the tile uses them. For head sizes 64 and 128 it
// is a flash-attention kernel on tensor cores (mma.sync, bf16 in, fp32 accumulate; see
// prefill_fa_kernel); other sizes take a CUDA-core kernel.
#include <algorithm>
#include <climits>
#include <type_traits>

#include "backend/cuda/common.cuh"
#include "backend/cuda/kernels.h"
#include "backend/cuda/stamps.cuh"

namespace baton::cuda {
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
// per decode step at batch 1 (bench/RESULTS.md, session 21); the cause was last_split's flag (see
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
// session 24); the instructions differ by a few, so why is not known.
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

// One CTA per (kG-or-fewer query heads of one KV group, token, split) with groups of kLanes
// lanes; each group walks its own keys (one key per group at a time, its lanes sharing the head
// dimension, the group's next key already loading) keeping an online softmax per query head: a
// key and value are loaded once for every query head that reads them (GQA), not once per head.
// At least 4 resident CTAs per SM (64 registers) for a head of up to 64 per CTA, 2 up to 128.
template <int D, class Kv, bool kFused, int kG>
__global__ void __launch_bounds__(kDecodeThreads, kG == 1 && D <= 64 ? 4 : (D <= 128 ? 2 : 1))
    decode_kernel(AttnArgs a, QkvArgs p, int n_splits, float* ws, int* arrivals) {
  BATON_STAMP_BEGIN();
  pdl_trigger();
  // The fused kernel reads nothing an earlier kernel of the step writes until prepare_qkv (the
  // QKV GEMM's rows): the step's positions and block tables were copied before its first kernel,
  // and the cached keys before the new token were written by earlier steps (the new token's, which
  // this kernel writes, is read from shared memory instead). So its first keys' loads go out
  // before the wait, while the QKV GEMM is still running.
  const bool early = kFused && a.early_loads;
  if (!early) pdl_wait();
  constexpr int kLanes = decode_lanes(kG, D), kE = D / kLanes, kGroups = kDecodeThreads / kLanes;
  const int per_kv = a.H / a.KVH, hp = a.heads_per_cta, ctas_per_kv = (per_kv + hp - 1) / hp;
  const int g = blockIdx.x / ctas_per_kv, h0 = g * per_kv + blockIdx.x % ctas_per_kv * hp;
  const int nh = min(hp, g * per_kv + per_kv - h0);  // this CTA's query heads: h0 .. h0 + nh - 1
  const int t = blockIdx.y, split = blockIdx.z;
  const int gid = threadIdx.x / kLanes, sub = threadIdx.x % kLanes;
  const KeyRange r = keys_of(a.positions[t], a.window);
  const int n_keys = r.last - r.first + 1;
  // A graph fixes n_splits for every context length; a short context uses fewer of them (at
  // least a key per group each), and the CTAs beyond leave at once.
  const int splits = max(1, min(n_splits, (n_keys + kGroups - 1) / kGroups));
  if (split >= splits) {
    BATON_STAMP_END(1);
    return;
  }
  const int chunk = n_keys > 0 ? (n_keys + splits - 1) / splits : 0;
  const int begin = r.first + split * chunk, end = min(begin + chunk, r.last + 1);
  const int32_t* table = a.tables + static_cast<int64_t>(a.seq_of[t]) * *a.table_stride;

  const float qs = a.scale * a.k_scale * kLog2e;
  __shared__ float qv[kFused ? kG * D : 1], kn[kFused ? D : 1], vn[kFused ? D : 1];
  const bool has_new =
      kFused && r.last >= 0 && begin <= r.last && r.last < end;  // this CTA's keys end at the new token

  float k[kE], v[kE];  // the key being scored
  // The next key of this group, in flight while the current one is scored (one round trip per key
  // otherwise: a long range was a chain of them). A key past the range re-reads the last one (its
  // score is not used); the new token's key comes from shared memory (after prepare_qkv).
  RawRow<Kv, kE> next_k, next_v;
  auto fetch = [&](int j) {
    const int jj = min(j, end - 1);
    next_k.load(kv_row<Kv>(a, table, jj, 0, g) + sub * kE);
    next_v.load(kv_row<Kv>(a, table, jj, 1, g) + sub * kE);
  };
  auto take = [&](int j) {
    next_k.to_f32(k);
    next_v.to_f32(v);
    if (kFused && has_new && j == r.last)
#pragma unroll
      for (int i = 0; i < kE; ++i) k[i] = kn[sub * kE + i], v[i] = vn[sub * kE + i];
  };
  // The first keys' loads go out before the queries are prepared: independent round trips.
  if (begin < end) fetch(begin + gid);
  BATON_STAMP();
  if (early) pdl_wait();
  BATON_STAMP();
  if constexpr (kFused) {
    if (r.last >= 0)
      prepare_qkv<D, Kv>(p, t, h0, nh, g, has_new, has_new && h0 % per_kv == 0, qv, kn, vn);
  }
  BATON_STAMP();
  float q[kG][kE], acc[kG][kE], m[kG], l[kG];
#pragma unroll
  for (int hd = 0; hd < kG; ++hd) {
    const float* qrow =
        kFused ? qv + hd * D + sub * kE : a.q + static_cast<int64_t>(t) * a.q_row_stride + (h0 + hd) * D + sub * kE;
#pragma unroll
    for (int i = 0; i < kE; ++i) q[hd][i] = hd < nh ? qrow[i] * qs : 0.f, acc[hd][i] = 0.f;
    m[hd] = -INFINITY, l[hd] = 0.f;
  }
  // The trip count is the same for every group, so the shuffles see full warps.
  for (int j0 = begin; j0 < end; j0 += kGroups) {
    const int j = j0 + gid;
    const bool ok = j < end;
    take(j);
    if (j0 + kGroups < end) fetch(j + kGroups);  // the same for every group: the loop bound's test
    attend_key<kG, kE, kLanes>(q, k, v, ok, m, l, acc);
  }

  BATON_STAMP();
  // The groups' partial softmaxes meet in shared memory, every head at once.
  __shared__ float sm_m[kG][kGroups], sm_l[kG][kGroups], sm_acc[kG][kGroups][D], sm_max[kG];
#pragma unroll
  for (int hd = 0; hd < kG; ++hd) {
    if (sub == 0) sm_m[hd][gid] = m[hd], sm_l[hd][gid] = l[hd];
#pragma unroll
    for (int i = 0; i < kE; ++i) sm_acc[hd][gid][sub * kE + i] = acc[hd][i];
  }
  __syncthreads();
  float weight = 0.f;  // thread hd * kGroups + i: group i's weight in head hd
  if (threadIdx.x < kG * kGroups) {
    const int hd = threadIdx.x / kGroups;
    float M = -INFINITY;
#pragma unroll
    for (int i = 0; i < kGroups; ++i) M = fmaxf(M, sm_m[hd][i]);
    weight = M == -INFINITY ? 0.f : exp2f(sm_m[hd][threadIdx.x % kGroups] - M);
    if (threadIdx.x % kGroups == 0) sm_max[hd] = M;
  }
  __syncthreads();
  if (threadIdx.x < kG * kGroups) sm_m[threadIdx.x / kGroups][threadIdx.x % kGroups] = weight;
  __syncthreads();
  for (int e = threadIdx.x; e < nh * D; e += blockDim.x) {
    const int hd = e / D, d = e % D, h = h0 + hd;
    float L = 0.f, A = 0.f;
#pragma unroll
    for (int i = 0; i < kGroups; ++i) L += sm_l[hd][i] * sm_m[hd][i];
#pragma unroll 8
    for (int i = 0; i < kGroups; ++i) A += sm_acc[hd][i][d] * sm_m[hd][i];
    if (splits == 1) {
      out_bf16(a)[static_cast<int64_t>(t) * a.H * D + h * D + d] = __float2bfloat16(L > 0.f ? A / L * a.v_scale : 0.f);
    } else {
      float* w = ws + ((static_cast<int64_t>(t) * a.H + h) * n_splits + split) * (D + 2);
      w[d] = A;
      if (d == 0) w[D] = sm_max[hd], w[D + 1] = L;
    }
  }
  if (splits == 1) {
    BATON_STAMP_END(1);
    return;
  }
  BATON_STAMP();
  // The last split of (token, heads) to finish merges them all (no merge kernel to launch).
  const bool last = last_split(arrivals, static_cast<int64_t>(t) * a.H + h0, splits);
  BATON_STAMP();
  if (!last) {
    BATON_STAMP_END(1);
    return;
  }
  merge_splits<(kG * D + kDecodeThreads - 1) / kDecodeThreads>(a, n_splits, splits, ws, t, h0, nh);
  BATON_STAMP_END(2);  // the merging split
}

// 256 threads: 64 rows x 4 parts; part p owns the float4 chunks p, p + 4, p + 8, ... of a row.
template <int D, class Kv>
__global__ void __launch_bounds__(256) prefill_kernel(AttnArgs a, const int2* tiles) {
  pdl_trigger();
  pdl_wait();
  constexpr int kParts = 4, kChunks = D / 16;  // float4 chunks per part
  static_assert(kPrefillTileRows * kParts == 256);
  constexpr int kKeys = D > 128 ? 16 : 32;
  static_assert(D % 16 == 0);
  __shared__ float4 ks[kKeys][D / 4], vs[kKeys][D / 4];

  const int2 tile = tiles[blockIdx.x];
  const int h = blockIdx.y, g = h / (a.H / a.KVH);
  const int r = threadIdx.x / kParts, part = threadIdx.x % kParts;
  const bool valid = r < tile.y;
  const int t = tile.x + (valid ? r : 0);
  const int32_t* table = a.tables + static_cast<int64_t>(a.seq_of[tile.x]) * *a.table_stride;
  const KeyRange mine = keys_of(a.positions[t], a.window);
  const KeyRange first_row = keys_of(a.positions[tile.x], a.window);
  const int hi = a.positions[tile.x + tile.y - 1];  // the tile's last (largest) position

  float4 q[kChunks], acc[kChunks];
  const float qs = a.scale * a.k_scale * kLog2e;
  const float4* qrow = reinterpret_cast<const float4*>(a.q + static_cast<int64_t>(t) * a.q_row_stride + h * D);
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
    float4 v = qrow[part + kParts * c];
    q[c] = make_float4(v.x * qs, v.y * qs, v.z * qs, v.w * qs);
    acc[c] = make_float4(0.f, 0.f, 0.f, 0.f);
  }
  float m = -INFINITY, l = 0.f;

  for (int base = first_row.first; base <= hi; base += kKeys) {
    // Stage keys [base, base + kKeys) as fp32, 8 elements per load.
    __syncthreads();
    for (int i = threadIdx.x; i < kKeys * D / 8; i += blockDim.x) {
      const int kk = i / (D / 8), e = (i % (D / 8)) * 8, j = base + kk;
      float kf[8], vf[8];
      load_kv8<Kv>(a, table, j, hi, e, g, kf, vf);
      ks[kk][e / 4] = make_float4(kf[0], kf[1], kf[2], kf[3]);
      ks[kk][e / 4 + 1] = make_float4(kf[4], kf[5], kf[6], kf[7]);
      vs[kk][e / 4] = make_float4(vf[0], vf[1], vf[2], vf[3]);
      vs[kk][e / 4 + 1] = make_float4(vf[4], vf[5], vf[6], vf[7]);
    }
    __syncthreads();

    float s[kKeys];
    float chunk_max = -INFINITY;
#pragma unroll
    for (int kk = 0; kk < kKeys; ++kk) {
      float d = 0.f;
#pragma unroll
      for (int c = 0; c < kChunks; ++c) {
        const float4 k = ks[kk][part + kParts * c];
        d += q[c].x * k.x + q[c].y * k.y + q[c].z * k.z + q[c].w * k.w;
      }
      d += __shfl_xor_sync(0xffffffffu, d, 1);
      d += __shfl_xor_sync(0xffffffffu, d, 2);
      const int j = base + kk;
      s[kk] = (j >= mine.first && j <= mine.last) ? d : -INFINITY;
      chunk_max = fmaxf(chunk_max, s[kk]);
    }
    if (chunk_max == -INFINITY) continue;  // no visible key for this row in this chunk
    const float m_new = fmaxf(m, chunk_max);
    const float corr = exp2f(m - m_new);
    l *= corr;
#pragma unroll
    for (int c = 0; c < kChunks; ++c) acc[c].x *= corr, acc[c].y *= corr, acc[c].z *= corr, acc[c].w *= corr;
#pragma unroll
    for (int kk = 0; kk < kKeys; ++kk) {
      const float p = exp2f(s[kk] - m_new);
      l += p;
#pragma unroll
      for (int c = 0; c < kChunks; ++c) {
        const float4 v = vs[kk][part + kParts * c];
        acc[c].x += p * v.x, acc[c].y += p * v.y, acc[c].z += p * v.z, acc[c].w += p * v.w;
      }
    }
    m = m_new;
  }
  if (!valid) return;
  const float f = l > 0.f ? a.v_scale / l : 0.f;
  __nv_bfloat16* out = out_bf16(a) + static_cast<int64_t>(t) * a.H * D + h * D;
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
    const int e = (part + kParts * c) * 4;
    __nv_bfloat162 lo = __floats2bfloat162_rn(acc[c].x * f, acc[c].y * f);
    __nv_bfloat162 hi2 = __floats2bfloat162_rn(acc[c].z * f, acc[c].w * f);
    *reinterpret_cast<__nv_bfloat162*>(out + e) = lo;
    *reinterpret_cast<__nv_bfloat162*>(out + e + 2) = hi2;
  }
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

// Flash-attention prefill for head sizes 64 and 128: 4 warps x 16 query rows, 64 keys per chunk
// through shared memory (rows padded by 16 bytes so that ldmatrix is free of bank conflicts).
// S = Q K^T, the online softmax and O += P V stay in registers: the S accumulators of two key
// n-tiles are, packed to bf16, the A fragment of P V (mma_bf16's layout), so P never leaves the
// lane that computed it. A lane (gq = lane / 4, tq = lane % 4) holds rows gq and gq + 8 of its
// warp's 16 and keys 2 tq, 2 tq + 1 of every 8; a row's max and sum are reduced over the 4 lanes
// of a quad.
template <int D>
struct FaLayout {
  static constexpr int kKeys = 64, kRows = 64, kStride = D + 8;  // bf16 elements per shared row
  static constexpr size_t q = 0;
  static constexpr size_t k = q + kRows * kStride * 2;
  static constexpr size_t v = k + kKeys * kStride * 2;
  static constexpr size_t bytes = v + kKeys * kStride * 2;
};

template <int D, class Kv>
__global__ void __launch_bounds__(128) prefill_fa_kernel(AttnArgs a, const int2* tiles) {
  pdl_trigger();
  pdl_wait();
  using L = FaLayout<D>;
  constexpr int kKeys = L::kKeys, S = L::kStride, kPieces = kKeys * D / 8 / 128;  // 16-byte pieces per thread
  static_assert(L::kRows == kPrefillTileRows && kPieces * 128 * 8 == kKeys * D);
  extern __shared__ __align__(128) unsigned char smem[];
  __nv_bfloat16* qs = reinterpret_cast<__nv_bfloat16*>(smem + L::q);
  __nv_bfloat16* ks = reinterpret_cast<__nv_bfloat16*>(smem + L::k);
  __nv_bfloat16* vs = reinterpret_cast<__nv_bfloat16*>(smem + L::v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;

  const int2 tile = tiles[blockIdx.x];
  const int h = blockIdx.y, g = h / (a.H / a.KVH);
  const int32_t* table = a.tables + static_cast<int64_t>(a.seq_of[tile.x]) * *a.table_stride;
  const int lo = keys_of(a.positions[tile.x], a.window).first;
  const int hi = a.positions[tile.x + tile.y - 1];

  // Q (scaled for the exp2 softmax) as bf16; rows past the tile are zero.
  const float qscale = a.scale * a.k_scale * kLog2e;
  for (int i = threadIdx.x; i < L::kRows * D / 2; i += blockDim.x) {
    const int r = i / (D / 2), d = (i % (D / 2)) * 2;
    float2 v = make_float2(0.f, 0.f);
    if (r < tile.y)
      v = *reinterpret_cast<const float2*>(a.q + static_cast<int64_t>(tile.x + r) * a.q_row_stride + h * D + d);
    *reinterpret_cast<uint32_t*>(qs + r * S + d) = pack_bf16(v.x * qscale, v.y * qscale);
  }

  // This lane's rows (gq and gq + 8 of the warp's 16) and the keys the warp needs at all.
  KeyRange rows[2];
  int warp_lo = INT_MAX, warp_hi = -1;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int row = warp * 16 + gq + 8 * i;
    rows[i] = row < tile.y ? keys_of(a.positions[tile.x + row], a.window) : KeyRange{0, -1};
    if (rows[i].last >= rows[i].first) warp_lo = min(warp_lo, rows[i].first), warp_hi = max(warp_hi, rows[i].last);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    warp_lo = min(warp_lo, __shfl_xor_sync(0xffffffffu, warp_lo, o));
    warp_hi = max(warp_hi, __shfl_xor_sync(0xffffffffu, warp_hi, o));
  }

  __syncthreads();
  uint32_t qf[D / 16][4];
#pragma unroll
  for (int dk = 0; dk < D / 16; ++dk)
    ldmatrix_x4<false>(qf[dk], qs + (warp * 16 + (lane & 15)) * S + dk * 16 + (lane >> 4) * 8);

  float o[D / 8][4];
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // l: this lane's share of the row sum

  for (int base = lo; base <= hi; base += kKeys) {
    // Stage keys [base, base + 64) as bf16; keys past hi are zero (P is 0 there, and 0 * garbage
    // could be NaN). All loads are issued before the first store.
    uint4 kr[kPieces], vr[kPieces];
#pragma unroll
    for (int i = 0; i < kPieces; ++i) {
      const int piece = threadIdx.x + i * 128, kk = piece / (D / 8), e = (piece % (D / 8)) * 8, j = base + kk;
      if (j <= hi) {
        kr[i] = load_bf16x8<Kv>(kv_row<Kv>(a, table, j, 0, g) + e);
        vr[i] = load_bf16x8<Kv>(kv_row<Kv>(a, table, j, 1, g) + e);
      } else {
        kr[i] = vr[i] = make_uint4(0, 0, 0, 0);
      }
    }
    __syncthreads();  // the previous chunk's K and V are no longer read
#pragma unroll
    for (int i = 0; i < kPieces; ++i) {
      const int piece = threadIdx.x + i * 128, kk = piece / (D / 8), e = (piece % (D / 8)) * 8;
      *reinterpret_cast<uint4*>(ks + kk * S + e) = kr[i];
      *reinterpret_cast<uint4*>(vs + kk * S + e) = vr[i];
    }
    __syncthreads();
    if (base > warp_hi || base + kKeys - 1 < warp_lo) continue;  // uniform over the warp

    // S = Q K^T: key n-tiles nt and nt + 1 per ldmatrix (B[k = d][n = key] = K[key][d]).
    float sc[kKeys / 8][4];
#pragma unroll
    for (int nt = 0; nt < kKeys / 8; ++nt) sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.f;
#pragma unroll
    for (int nt = 0; nt < kKeys / 8; nt += 2) {
      if (base + nt * 8 > warp_hi) break;  // keys no row of the warp sees: masked below
#pragma unroll
      for (int dk = 0; dk < D / 16; ++dk) {
        uint32_t kb[4];
        ldmatrix_x4<false>(kb, ks + ((nt + (lane >> 4)) * 8 + (lane & 7)) * S + dk * 16 + ((lane >> 3) & 1) * 8);
        mma_bf16(sc[nt], qf[dk][0], qf[dk][1], qf[dk][2], qf[dk][3], kb[0], kb[1]);
        mma_bf16(sc[nt + 1], qf[dk][0], qf[dk][1], qf[dk][2], qf[dk][3], kb[2], kb[3]);
      }
    }

    // Online softmax for rows gq (i = 0) and gq + 8 (i = 1).
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < kKeys / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int j = base + nt * 8 + 2 * tq + e;
          float& v = sc[nt][2 * i + e];
          if (j < rows[i].first || j > rows[i].last) v = -INFINITY;
          mx = fmaxf(mx, v);
        }
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[i], mx);
      // A row with no visible key yet keeps m = -inf; its P is all zero.
      const float corr = m_new == -INFINITY ? 1.f : exp2f(m[i] - m_new);
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < kKeys / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& v = sc[nt][2 * i + e];
          v = m_new == -INFINITY ? 0.f : exp2f(v - m_new);
          sum += v;
        }
      }
      l[i] = l[i] * corr + sum;
      m[i] = m_new;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) o[dt][2 * i] *= corr, o[dt][2 * i + 1] *= corr;
    }

    // O += P V: keys kt*16 .. +15 are the A operand's k; V via ldmatrix.trans (B[k = key][n = d]).
#pragma unroll
    for (int kt = 0; kt < kKeys / 16; ++kt) {
      if (base + kt * 16 > warp_hi) break;  // P is zero there
      const uint32_t p0 = pack_bf16(sc[2 * kt][0], sc[2 * kt][1]), p1 = pack_bf16(sc[2 * kt][2], sc[2 * kt][3]);
      const uint32_t p2 = pack_bf16(sc[2 * kt + 1][0], sc[2 * kt + 1][1]);
      const uint32_t p3 = pack_bf16(sc[2 * kt + 1][2], sc[2 * kt + 1][3]);
#pragma unroll
      for (int dt = 0; dt < D / 8; dt += 2) {
        uint32_t vb[4];
        ldmatrix_x4<true>(vb, vs + (kt * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * S + (dt + (lane >> 4)) * 8);
        mma_bf16(o[dt], p0, p1, p2, p3, vb[0], vb[1]);
        mma_bf16(o[dt + 1], p0, p1, p2, p3, vb[2], vb[3]);
      }
    }
  }

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    float sum = l[i];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int row = warp * 16 + gq + 8 * i;
    if (row >= tile.y) continue;
    const float f = sum > 0.f ? a.v_scale / sum : 0.f;
    __nv_bfloat16* out = out_bf16(a) + static_cast<int64_t>(tile.x + row) * a.H * D + h * D + 2 * tq;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
      *reinterpret_cast<uint32_t*>(out + dt * 8) = pack_bf16(o[dt][2 * i] * f, o[dt][2 * i + 1] * f);
  }
}

// Decode on tensor cores (steps of many tokens, where the CUDA-core kernel above is bound by its
// instructions, not by the KV bytes): one CTA per (KV group, token, split); the group's query heads
// (up to 16) are the M rows of mma.m16n8k16, so a K/V row is read once for all of them. Each of the
// 4 warps takes its own tiles of 16 keys (tiles w, w + 4, ... of the split's range) through a
// kStages-deep shared-memory ring filled by cp.async (no registers held while in flight; fp8 tiles
// are widened to bf16 in shared memory, exactly), and keeps its own online softmax as
// prefill_fa_kernel does (S = Q K^T and O += P V in registers; a lane holds heads gq and gq + 8).
// The warps merge in shared memory, the splits as in decode_kernel. Does qkv_rope_cache's work for
// its token (prepare_qkv), like the fused decode_kernel.
constexpr int kMmaDecodeWarps = 4, kMmaDecodeKeys = 16, kMmaDecodeHeads = 16;
constexpr int kTableStage = 256;  // block-table entries a CTA stages (4096 keys of 16); more: read from global

template <int D, class Kv, int kStages>
struct DecodeMmaLayout {
  using T = typename Kv::T;
  static constexpr bool kBf16 = sizeof(T) == 2;
  static constexpr int kStride = kBf16 ? (D + 8) * 2 : D;  // bytes per staged row (bf16: padded for ldmatrix)
  static constexpr int kTile = kMmaDecodeKeys * kStride;   // bytes of a K or V tile
  static constexpr int kWide = (D + 8) * 2;                // fp8: bytes per widened bf16 row
  static constexpr size_t ring = 0;                        // [warp][stage][K, V] tiles
  static constexpr size_t wide = ring + size_t(kMmaDecodeWarps) * kStages * 2 * kTile;  // fp8: [warp][K, V]
  static constexpr size_t q = wide + (kBf16 ? 0 : size_t(kMmaDecodeWarps) * 2 * kMmaDecodeKeys * kWide);
  static constexpr size_t bytes = q + size_t(kMmaDecodeHeads) * D * sizeof(float);  // q: [head][D] fp32
  // After the loop the ring holds the warps' partial sums: [warp][head][D] fp32.
  static_assert(size_t(kMmaDecodeWarps) * kMmaDecodeHeads * D * sizeof(float) <= wide);
};

__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(static_cast<uint32_t>(__cvta_generic_to_shared(dst))),
               "l"(src)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;" ::: "memory");
}
// Until at most kPending of this thread's most recent cp.async groups are in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(kPending) : "memory");
}

template <int D, class Kv, int kStages>
__global__ void __launch_bounds__(kMmaDecodeWarps * 32)
    decode_mma_kernel(AttnArgs a, QkvArgs p, int n_splits, float* ws, int* arrivals) {
  using L = DecodeMmaLayout<D, Kv, kStages>;
  using T = typename Kv::T;
  constexpr int kKeys = kMmaDecodeKeys, kWarps = kMmaDecodeWarps;
  constexpr int kSw = D + 8;  // bf16 elements per row of the tiles ldmatrix reads
  BATON_STAMP_BEGIN();
  pdl_trigger();
  // As decode_kernel: nothing before prepare_qkv reads what an earlier kernel of the step writes.
  if (!a.early_loads) pdl_wait();
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ int32_t sm_table[kTableStage];
  __shared__ float kn[D], vn[D], sm_wm[kWarps][kMmaDecodeHeads], sm_wl[kWarps][kMmaDecodeHeads];
  float* qv = reinterpret_cast<float*>(smem + L::q);
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;
  const int per_kv = a.H / a.KVH, g = blockIdx.x, h0 = g * per_kv, nh = per_kv;
  const int t = blockIdx.y, split = blockIdx.z;
  const KeyRange r = keys_of(a.positions[t], a.window);
  const int n_keys = max(r.last - r.first + 1, 0);
  // Splits of whole tiles, at least a tile per warp (and a.min_split_keys) each; the CTAs beyond
  // leave at once.
  const int split_min = max(kWarps * kKeys, a.min_split_keys);
  const int splits = max(1, min(n_splits, (n_keys + split_min - 1) / split_min));
  if (split >= splits) {
    BATON_STAMP_END(3);
    return;
  }
  const int split_keys = ((n_keys + kKeys - 1) / kKeys + splits - 1) / splits * kKeys;
  const int begin = r.first + split * split_keys, end = min(begin + split_keys, r.last + 1);
  const int n_tiles = begin < end ? (end - begin + kKeys - 1) / kKeys : 0;
  const int32_t* table = a.tables + static_cast<int64_t>(a.seq_of[t]) * *a.table_stride;
  const int b0 = begin / a.block_size, n_blocks = begin < end ? (end - 1) / a.block_size - b0 + 1 : 0;
  for (int i = threadIdx.x; i < min(n_blocks, kTableStage); i += blockDim.x) sm_table[i] = table[b0 + i];
  __syncthreads();

  // Tile ti (keys begin + 16 ti ..) into this warp's ring slot `stage`; keys past the range re-read
  // the last one (finite, and masked).
  const auto* kv_base = static_cast<const T*>(a.layer_kv);
  auto issue = [&](int stage, int ti) {
    unsigned char* dst = smem + L::ring + size_t((warp * kStages + stage) * 2) * L::kTile;
    constexpr int kRowChunks = D * int(sizeof(T)) / 16, kPerLane = kKeys * kRowChunks / 32;
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) {
      const int i = lane + 32 * c, kk = i / kRowChunks, ch = i % kRowChunks;
      const int j = min(begin + ti * kKeys + kk, end - 1), bi = j / a.block_size - b0;
      const int64_t block = bi < kTableStage ? sm_table[bi] : table[b0 + bi];
      const T* k_row = kv_base + ((block * 2 * a.KVH + g) * a.block_size + j % a.block_size) * D + ch * (16 / sizeof(T));
      cp_async16(dst + kk * L::kStride + ch * 16, k_row);
      cp_async16(dst + L::kTile + kk * L::kStride + ch * 16, k_row + static_cast<int64_t>(a.KVH) * a.block_size * D);
    }
  };
#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) {
    if (warp + i * kWarps < n_tiles) issue(i, warp + i * kWarps);
    cp_async_commit();  // empty groups too: the waits count groups
  }
  BATON_STAMP();
  if (a.early_loads) pdl_wait();
  BATON_STAMP();
  const bool has_new = r.last >= 0 && begin <= r.last && r.last < end;
  if (r.last >= 0) prepare_qkv<D, Kv>(p, t, h0, nh, g, has_new, has_new, qv, kn, vn);
  BATON_STAMP();

  // Q as the A operand (bf16, scaled for the exp2 softmax); heads past nh are zero rows.
  const float qs = a.scale * a.k_scale * kLog2e;
  uint32_t qf[D / 16][4];
  {
    auto qat = [&](int row, int col) { return row < nh ? qv[row * D + col] * qs : 0.f; };
#pragma unroll
    for (int dk = 0; dk < D / 16; ++dk) {
      const int c = dk * 16 + 2 * tq;
      qf[dk][0] = pack_bf16(qat(gq, c), qat(gq, c + 1));
      qf[dk][1] = pack_bf16(qat(gq + 8, c), qat(gq + 8, c + 1));
      qf[dk][2] = pack_bf16(qat(gq, c + 8), qat(gq, c + 9));
      qf[dk][3] = pack_bf16(qat(gq + 8, c + 8), qat(gq + 8, c + 9));
    }
  }
  float o[D / 8][4];
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // l: this lane's share of the row sum

  for (int i = 0, ti = warp; ti < n_tiles; ++i, ti += kWarps) {
    __syncwarp();  // the slot refilled next was read by every lane in round i - 1
    if (ti + (kStages - 1) * kWarps < n_tiles) issue((i + kStages - 1) % kStages, ti + (kStages - 1) * kWarps);
    cp_async_commit();
    cp_async_wait<kStages - 1>();  // this round's tile has landed (this lane's part)
    __syncwarp();                  // and every lane's
    unsigned char* st = smem + L::ring + size_t((warp * kStages + i % kStages) * 2) * L::kTile;
    __nv_bfloat16 *ks, *vs;
    if constexpr (L::kBf16) {
      ks = reinterpret_cast<__nv_bfloat16*>(st), vs = reinterpret_cast<__nv_bfloat16*>(st + L::kTile);
    } else {  // widen to bf16 (exact for e4m3)
      ks = reinterpret_cast<__nv_bfloat16*>(smem + L::wide + size_t(warp * 2) * kKeys * L::kWide);
      vs = ks + kKeys * kSw;
      for (int pc = lane; pc < 2 * kKeys * D / 8; pc += 32) {
        const int kv = pc / (kKeys * D / 8), kk = pc % (kKeys * D / 8) / (D / 8), e = pc % (D / 8) * 8;
        *reinterpret_cast<uint4*>((kv ? vs : ks) + kk * kSw + e) =
            load_bf16x8<Kv>(reinterpret_cast<const T*>(st + kv * L::kTile + kk * L::kStride) + e);
      }
    }
    const int kb = begin + ti * kKeys;  // the tile's first key
    if (has_new && r.last >= kb && r.last < kb + kKeys) {
      // The new token's key and value as this kernel wrote them (the cache may not have them yet).
      for (int d = lane; d < D; d += 32)
        ks[(r.last - kb) * kSw + d] = __float2bfloat16(kn[d]), vs[(r.last - kb) * kSw + d] = __float2bfloat16(vn[d]);
    }
    if (!L::kBf16 || has_new) __syncwarp();

    // S = Q K^T for keys kb .. kb + 15 (two n-tiles of 8; B[k = d][n = key] = K[key][d]).
    float sc[2][4] = {};
#pragma unroll
    for (int dk = 0; dk < D / 16; ++dk) {
      uint32_t kf[4];
      ldmatrix_x4<false>(kf, ks + ((lane >> 4) * 8 + (lane & 7)) * kSw + dk * 16 + ((lane >> 3) & 1) * 8);
      mma_bf16(sc[0], qf[dk][0], qf[dk][1], qf[dk][2], qf[dk][3], kf[0], kf[1]);
      mma_bf16(sc[1], qf[dk][0], qf[dk][1], qf[dk][2], qf[dk][3], kf[2], kf[3]);
    }
    // Online softmax for heads gq (i = 0) and gq + 8 (i = 1); keys past the range are masked.
#pragma unroll
    for (int i2 = 0; i2 < 2; ++i2) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& v = sc[nt][2 * i2 + e];
          if (kb + nt * 8 + 2 * tq + e >= end) v = -INFINITY;
          mx = fmaxf(mx, v);
        }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[i2], mx);  // finite: every tile has a key in range
      const float corr = exp2f(m[i2] - m_new);
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& v = sc[nt][2 * i2 + e];
          v = exp2f(v - m_new);
          sum += v;
        }
      l[i2] = l[i2] * corr + sum;
      m[i2] = m_new;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) o[dt][2 * i2] *= corr, o[dt][2 * i2 + 1] *= corr;
    }
    // O += P V (the S accumulators, packed to bf16, are the A fragment; V via ldmatrix.trans).
    const uint32_t p0 = pack_bf16(sc[0][0], sc[0][1]), p1 = pack_bf16(sc[0][2], sc[0][3]);
    const uint32_t p2 = pack_bf16(sc[1][0], sc[1][1]), p3 = pack_bf16(sc[1][2], sc[1][3]);
#pragma unroll
    for (int dt = 0; dt < D / 8; dt += 2) {
      uint32_t vf[4];
      ldmatrix_x4<true>(vf, vs + (((lane >> 3) & 1) * 8 + (lane & 7)) * kSw + (dt + (lane >> 4)) * 8);
      mma_bf16(o[dt], p0, p1, p2, p3, vf[0], vf[1]);
      mma_bf16(o[dt + 1], p0, p1, p2, p3, vf[2], vf[3]);
    }
  }
  BATON_STAMP();
  cp_async_wait<0>();  // the ring's last loads, before its memory holds the partial sums
#pragma unroll
  for (int i2 = 0; i2 < 2; ++i2) {
    l[i2] += __shfl_xor_sync(0xffffffffu, l[i2], 1);
    l[i2] += __shfl_xor_sync(0xffffffffu, l[i2], 2);
  }
  __syncthreads();

  // The warps meet in shared memory: head hd's sum is theirs weighted by exp2(m_w - M).
  float* sm_o = reinterpret_cast<float*>(smem + L::ring);  // [warp][head][D]
  if (tq == 0) sm_wm[warp][gq] = m[0], sm_wm[warp][gq + 8] = m[1], sm_wl[warp][gq] = l[0], sm_wl[warp][gq + 8] = l[1];
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) {
    float* row0 = sm_o + (warp * kMmaDecodeHeads + gq) * D + dt * 8 + 2 * tq;
    row0[0] = o[dt][0], row0[1] = o[dt][1], row0[8 * D] = o[dt][2], row0[8 * D + 1] = o[dt][3];
  }
  __syncthreads();
  for (int e = threadIdx.x; e < nh * D; e += blockDim.x) {
    const int hd = e / D, d = e % D;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm_wm[w][hd]);
    float A = 0.f, Ls = 0.f;
    if (M != -INFINITY)
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float f = exp2f(sm_wm[w][hd] - M);
        A += f * sm_o[(w * kMmaDecodeHeads + hd) * D + d], Ls += f * sm_wl[w][hd];
      }
    if (splits == 1) {
      out_bf16(a)[static_cast<int64_t>(t) * a.H * D + (h0 + hd) * D + d] =
          __float2bfloat16(Ls > 0.f ? A / Ls * a.v_scale : 0.f);
    } else {
      float* w = ws + ((static_cast<int64_t>(t) * a.H + h0 + hd) * n_splits + split) * (D + 2);
      w[d] = A;
      if (d == 0) w[D] = M, w[D + 1] = Ls;
    }
  }
  if (splits == 1) {
    BATON_STAMP_END(3);
    return;
  }
  BATON_STAMP();
  const bool last = last_split(arrivals, static_cast<int64_t>(t) * a.H + h0, splits);
  BATON_STAMP();
  if (!last) {
    BATON_STAMP_END(3);
    return;
  }
  constexpr int kElems = kMmaDecodeHeads * D / (kWarps * 32);
  merge_splits<kElems, kMmaDecodeHeads, (kElems >= 16 ? 2 : 32 / kElems), true>(a, n_splits, splits, ws, t, h0, nh);
  BATON_STAMP_END(4);  // the merging split
}

template <int D, class Kv>
void launch_prefill_fa(const AttnArgs& a, const int2* tiles, int n_tiles, cudaStream_t s) {
  constexpr size_t bytes = FaLayout<D>::bytes;
  cudaFuncSetAttribute(prefill_fa_kernel<D, Kv>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
  launch(prefill_fa_kernel<D, Kv>, dim3(n_tiles, a.H), 128, bytes, s, a, tiles);
}

using DecodeKernel = void (*)(AttnArgs, QkvArgs, int, float*, int*);

// The decode kernel for head size D and heads_per_cta query heads per CTA (grouped for the sizes
// decode_heads_per_cta groups, 64 and 128).
template <int D, class Kv, bool kFused>
DecodeKernel decode_kernel_d(int heads_per_cta) {
  if constexpr (D == 64 || D == 128) {
    if (heads_per_cta > 2) return decode_kernel<D, Kv, kFused, 4>;
    if (heads_per_cta > 1) return decode_kernel<D, Kv, kFused, 2>;
  }
  return decode_kernel<D, Kv, kFused, 1>;
}

// The same for a head size known at run time: null for sizes without a kernel (the backend
// refuses them at load).
template <class Kv, bool kFused>
DecodeKernel decode_kernel_for(int D, int heads_per_cta) {
  switch (D) {
    case 8:
      return decode_kernel_d<8, Kv, kFused>(heads_per_cta);
    case 16:
      return decode_kernel_d<16, Kv, kFused>(heads_per_cta);
    case 32:
      return decode_kernel_d<32, Kv, kFused>(heads_per_cta);
    case 64:
      return decode_kernel_d<64, Kv, kFused>(heads_per_cta);
    case 128:
      return decode_kernel_d<128, Kv, kFused>(heads_per_cta);
    case 256:
      return decode_kernel_d<256, Kv, kFused>(heads_per_cta);
    default:
      return nullptr;
  }
}

// The tensor-core decode kernel for head size D (64 or 128; null otherwise) and its shared memory,
// allowed per device by decode_mma_ctas_per_sm before any launch. Its ring is 2 deep: 3 measured
// 2.5% faster on the 1B shape at batch 32 but 6% slower at 64, where 4 CTAs per SM (not 3) make
// one wave (bench/RESULTS.md, session 21).
constexpr int kMmaDecodeStages = 2;
template <class Kv>
DecodeKernel decode_mma_kernel_for(int D, size_t* smem) {
  if (D == 64) {
    *smem = DecodeMmaLayout<64, Kv, kMmaDecodeStages>::bytes;
    return decode_mma_kernel<64, Kv, kMmaDecodeStages>;
  }
  if (D == 128) {
    *smem = DecodeMmaLayout<128, Kv, kMmaDecodeStages>::bytes;
    return decode_mma_kernel<128, Kv, kMmaDecodeStages>;
  }
  return nullptr;
}

template <class Kv, bool kFused>
void launch_decode(const AttnArgs& a, const QkvArgs& p, int n_splits, float* ws, int* arrivals, cudaStream_t s) {
  if constexpr (kFused) {
    size_t smem = 0;
    const DecodeKernel mma = a.mma ? decode_mma_kernel_for<Kv>(a.D, &smem) : nullptr;
    if (mma) return launch(mma, dim3(a.KVH, a.T, n_splits), kMmaDecodeWarps * 32, smem, s, a, p, n_splits, ws, arrivals);
  }
  const DecodeKernel kernel = decode_kernel_for<Kv, kFused>(a.D, a.heads_per_cta);
  if (!kernel) return;
  const dim3 grid(a.KVH * ((a.H / a.KVH + a.heads_per_cta - 1) / a.heads_per_cta), a.T, n_splits);
  launch(kernel, grid, kDecodeThreads, 0, s, a, p, n_splits, ws, arrivals);
}

template <class Kv>
void launch_prefill(const AttnArgs& a, const int2* tiles, int n_tiles, cudaStream_t s) {
  const dim3 grid(n_tiles, a.H);
  switch (a.D) {
    case 16:
      launch(prefill_kernel<16, Kv>, grid, 256, 0, s, a, tiles);
      break;
    case 32:
      launch(prefill_kernel<32, Kv>, grid, 256, 0, s, a, tiles);
      break;
    case 64:
      launch_prefill_fa<64, Kv>(a, tiles, n_tiles, s);
      break;
    case 128:
      launch_prefill_fa<128, Kv>(a, tiles, n_tiles, s);
      break;
    case 256:
      launch(prefill_kernel<256, Kv>, grid, 256, 0, s, a, tiles);
      break;
    default:
      break;
  }
}

}  // namespace

BATON_STAMP_ATTACH(stamps_attach_attention)

bool prefill_kernel_supports(int d) {
  return d == 16 || d == 32 || d == 64 || d == 128 || d == 256;
}

int decode_heads_per_cta(int H, int KVH, int D, int max_heads) {
  if (KVH <= 0 || H % KVH != 0 || (D != 64 && D != 128)) return 1;
  max_heads = std::clamp(max_heads, 1, kMaxCtaHeads);
  const int per_kv = H / KVH, ctas = (per_kv + max_heads - 1) / max_heads;
  return (per_kv + ctas - 1) / ctas;
}

int decode_ctas_per_sm(int D, bool fp8, int heads_per_cta) {
  const DecodeKernel kernel = fp8 ? decode_kernel_for<Fp8Kv, true>(D, heads_per_cta)
                                  : decode_kernel_for<Bf16Kv, true>(D, heads_per_cta);
  int per_sm = 0;
  if (kernel) cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kDecodeThreads, 0);
  return std::max(per_sm, 1);
}

bool decode_mma_supported(int H, int KVH, int D) {
  return KVH > 0 && H % KVH == 0 && H / KVH <= kMmaDecodeHeads && (D == 64 || D == 128);
}

int decode_mma_ctas_per_sm(int D, bool fp8) {
  size_t smem = 0;
  const DecodeKernel kernel = fp8 ? decode_mma_kernel_for<Fp8Kv>(D, &smem) : decode_mma_kernel_for<Bf16Kv>(D, &smem);
  if (!kernel) return 1;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  int per_sm = 0;
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kMmaDecodeWarps * 32, smem);
  return std::max(per_sm, 1);
}

void attention_decode(const AttnArgs& args, int n_splits, float* workspace, int* arrivals, const QkvArgs* fuse,
                      cudaStream_t s) {
  if (args.T == 0) return;
  AttnArgs a = args;
  a.heads_per_cta = std::clamp(a.heads_per_cta, 1, std::min(kMaxCtaHeads, a.H / a.KVH));
  const QkvArgs none{};
  if (fuse && a.fp8)
    launch_decode<Fp8Kv, true>(a, *fuse, n_splits, workspace, arrivals, s);
  else if (fuse)
    launch_decode<Bf16Kv, true>(a, *fuse, n_splits, workspace, arrivals, s);
  else if (a.fp8)
    launch_decode<Fp8Kv, false>(a, none, n_splits, workspace, arrivals, s);
  else
    launch_decode<Bf16Kv, false>(a, none, n_splits, workspace, arrivals, s);
}

void attention_prefill(const AttnArgs& a, const int2* tiles, int n_tiles, cudaStream_t s) {
  if (n_tiles == 0) return;
  if (a.fp8)
    launch_prefill<Fp8Kv>(a, tiles, n_tiles, s);
  else
    launch_prefill<Bf16Kv>(a, tiles, n_tiles, s);
}

}  // namespace baton::cuda
