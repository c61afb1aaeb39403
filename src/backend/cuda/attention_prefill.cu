// Prefill attention: one CTA per (tile of up to 64 query rows, query head); K and V of a chunk of
// keys at a time go through shared memory and every row of the tile uses them. For head sizes 64
// and 128 it is a flash-attention kernel on tensor cores (mma.sync, bf16 in, fp32 accumulate; see
// prefill_fa_kernel); other sizes take a CUDA-core kernel.
#include "backend/cuda/attention.cuh"

namespace baton::cuda {
namespace {

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

template <int D, class Kv>
void launch_prefill_fa(const AttnArgs& a, const int2* tiles, int n_tiles, cudaStream_t s) {
  constexpr size_t bytes = FaLayout<D>::bytes;
  cudaFuncSetAttribute(prefill_fa_kernel<D, Kv>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
  launch(prefill_fa_kernel<D, Kv>, dim3(n_tiles, a.H), 128, bytes, s, a, tiles);
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

bool prefill_kernel_supports(int d) {
  return d == 16 || d == 32 || d == 64 || d == 128 || d == 256;
}

void attention_prefill(const AttnArgs& a, const int2* tiles, int n_tiles, cudaStream_t s) {
  if (n_tiles == 0) return;
  if (a.fp8)
    launch_prefill<Fp8Kv>(a, tiles, n_tiles, s);
  else
    launch_prefill<Bf16Kv>(a, tiles, n_tiles, s);
}

}  // namespace baton::cuda
