// Decode attention on tensor cores, for steps of many tokens (32+), where the CUDA-core kernel
// (attention_decode.cu) is bound by its instructions: one CTA per (KV group, token, split), the
// group's query heads as the M rows of mma.m16n8k16.
#include "backend/cuda/attention.cuh"

namespace baton::cuda {
namespace {

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
  pdl_trigger();
  // As decode_kernel: nothing before prepare_qkv reads what an earlier kernel of the step writes.
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ int32_t sm_table[kTableStage];
  __shared__ float kn[D], vn[D], sm_wm[kWarps][kMmaDecodeHeads], sm_wl[kWarps][kMmaDecodeHeads];
  float* qv = reinterpret_cast<float*>(smem + L::q);
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;
  const int per_kv = a.H / a.KVH, g = blockIdx.x, h0 = g * per_kv, nh = per_kv;
  const int t = blockIdx.y, split = blockIdx.z;
  const KeyRange r = keys_of(a.positions[t], a.window);
  const int n_keys = max(r.last - r.first + 1, 0);
  // Splits of whole tiles, at least a tile per warp (and kMmaSplitKeys) each; the CTAs beyond
  // leave at once.
  const int split_min = max(kWarps * kKeys, kMmaSplitKeys);
  const int splits = max(1, min(n_splits, (n_keys + split_min - 1) / split_min));
  if (split >= splits) {
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
  pdl_wait();
  const bool has_new = r.last >= 0 && begin <= r.last && r.last < end;
  if (r.last >= 0) prepare_qkv<D, Kv>(p, t, h0, nh, g, has_new, has_new, qv, kn, vn);

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
    return;
  }
  const bool last = last_split(arrivals, static_cast<int64_t>(t) * a.H + h0, splits);
  if (!last) {
    return;
  }
  constexpr int kElems = kMmaDecodeHeads * D / (kWarps * 32);
  merge_splits<kElems, kMmaDecodeHeads, (kElems >= 16 ? 2 : 32 / kElems), true>(a, n_splits, splits, ws, t, h0, nh);
}

// The tensor-core decode kernel for head size D (64 or 128; null otherwise) and its shared memory,
// allowed per device by decode_mma_ctas_per_sm before any launch. Its ring is 2 deep: 3 measured
// 2.5% faster on the 1B shape at batch 32 but 6% slower at 64, where 4 CTAs per SM (not 3) make
// one wave (H200).
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

}  // namespace

bool launch_decode_mma(const AttnArgs& a, const QkvArgs& p, int n_splits, float* ws, int* arrivals, cudaStream_t s) {
  size_t smem = 0;
  const DecodeKernel kernel = a.fp8 ? decode_mma_kernel_for<Fp8Kv>(a.D, &smem) : decode_mma_kernel_for<Bf16Kv>(a.D, &smem);
  if (!kernel) return false;
  launch(kernel, dim3(a.KVH, a.T, n_splits), kMmaDecodeWarps * 32, smem, s, a, p, n_splits, ws, arrivals);
  return true;
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

}  // namespace baton::cuda
