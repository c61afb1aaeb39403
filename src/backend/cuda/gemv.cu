// Skinny GEMMs (kernels.h: gemv): y[m, n] = sum_k in[m, k] * W[n, k] for M <= 8 rows.
//
// At decode a layer's GEMMs read every weight once for a handful of tokens: the time is the
// weight bytes over the memory bandwidth, plus whatever the kernel cannot hide. So each warp
// owns whole weight rows (rows n, n + stride, ...), its lanes load 16-byte chunks of a row eight
// at a time (all loads of a short row in flight at once), and every CTA stages the M input rows
// in shared memory once (the tensor-core kernel: only inputs it normalises). Before waiting for
// the previous kernel (programmatic dependent launch) a warp issues its first weight loads, which
// depend on nothing: the weight stream starts while the kernel before is still finishing. That takes up to kGemvDotRows (4) input rows: with more,
// the shared-memory reads of the inputs (one per row and chunk) outrun the weight stream, so 5 to 8
// run on tensor cores (gemv_mma_kernel below).
#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>

#include "backend/cuda/common.cuh"
#include "backend/cuda/kernels.h"

namespace baton::cuda {
namespace {

constexpr int kWarps = 8;   // per CTA
constexpr int kUnroll = 8;  // 16-byte chunks in flight per lane and weight row: a row of 2048 at once

__device__ __forceinline__ void prefetch_l1(const void* p) {
  asm volatile("prefetch.global.L1 [%0];" ::"l"(p));
}

// Chunks c0, c0 + 32, ... (kUnroll of them) of weight row n (and, for R = 2, of row N + n).
template <int R>
__device__ __forceinline__ void load_batch(uint4 (&wv)[R][kUnroll], const uint4* w, int N, int chunks, int n, int c0,
                                           uint64_t pol) {
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int c = c0 + 32 * u;
#pragma unroll
    for (int r = 0; r < R; ++r)
      wv[r][u] = c < chunks ? ldg_policy(w + (static_cast<int64_t>(r) * N + n) * chunks + c, pol) : make_uint4(0, 0, 0, 0);
  }
}

// Stages the M input rows into dst (bf16, rows `stride` elements apart; rows M .. rows - 1 zero):
// bf16 rows as they are, or rmsnorm(x) * norm_w rounded to bf16 (as the rmsnorm kernel writes
// them for cuBLAS). All M rows' loads are in flight together. Ends with __syncthreads().
template <int M, bool kNorm>
__device__ __forceinline__ void stage_inputs(const GemvArgs& a, __nv_bfloat16* dst, int stride, int rows,
                                             float (&partial)[M][kWarps]) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if constexpr (kNorm) {
    const int k4 = a.K >> 2;
    const float4* x4[M];
#pragma unroll
    for (int m = 0; m < M; ++m)
      x4[m] = reinterpret_cast<const float4*>(a.x + static_cast<int64_t>(a.rows ? a.rows[m] : m) * a.K);
    float ss[M];
#pragma unroll
    for (int m = 0; m < M; ++m) ss[m] = 0.f;
    for (int i = threadIdx.x; i < k4; i += blockDim.x)
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const float4 v = x4[m][i];
        ss[m] += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
      }
#pragma unroll
    for (int m = 0; m < M; ++m) {
      ss[m] = warp_sum(ss[m]);
      if (lane == 0) partial[m][warp] = ss[m];
    }
    __syncthreads();
    float inv[M];
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float t = 0.f;
#pragma unroll
      for (int i = 0; i < kWarps; ++i) t += partial[m][i];
      inv[m] = rsqrtf(t / a.K + a.eps);
    }
    const float4* nw = reinterpret_cast<const float4*>(a.norm_w);
    for (int i = threadIdx.x; i < k4; i += blockDim.x) {
      const float4 g = nw[i];
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const float4 v = x4[m][i];
        __nv_bfloat162* d = reinterpret_cast<__nv_bfloat162*>(dst + static_cast<int64_t>(m) * stride + 4 * i);
        d[0] = __floats2bfloat162_rn(v.x * inv[m] * g.x, v.y * inv[m] * g.y);
        d[1] = __floats2bfloat162_rn(v.z * inv[m] * g.z, v.w * inv[m] * g.w);
      }
    }
  } else {
    const int chunks = a.K >> 3, in_chunks = (a.in_stride ? a.in_stride : a.K) >> 3;
    const uint4* in = reinterpret_cast<const uint4*>(a.in);
    for (int i = threadIdx.x; i < M * chunks; i += blockDim.x)
      *reinterpret_cast<uint4*>(dst + static_cast<int64_t>(i / chunks) * stride + 8 * (i % chunks)) =
          in[static_cast<int64_t>(i / chunks) * in_chunks + i % chunks];
  }
  for (int i = threadIdx.x; i < (rows - M) * (a.K >> 3); i += blockDim.x)
    *reinterpret_cast<uint4*>(dst + static_cast<int64_t>(M + i / (a.K >> 3)) * stride + 8 * (i % (a.K >> 3))) =
        make_uint4(0, 0, 0, 0);
  __syncthreads();
}

// Writes output element `at` from its sums: silu(acc) * up as bf16 (kNormSiluMul: acc from the
// gate rows, up from the up rows), beta * resid + acc (kAccumulate; resid is out[at], read by the
// caller only when beta != 0), or acc.
template <GemvKind kKind>
__device__ __forceinline__ void store_output(const GemvArgs& a, int64_t at, float acc, float up, float resid) {
  if constexpr (kKind == GemvKind::kNormSiluMul) {
    reinterpret_cast<__nv_bfloat16*>(a.act)[at] = __float2bfloat16(silu(acc) * up);
  } else if constexpr (kKind == GemvKind::kAccumulate) {
    a.out[at] = a.beta == 0.f ? acc : a.beta * resid + acc;
  } else {
    a.out[at] = acc;
  }
}

template <int M, GemvKind kKind>
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(GemvArgs a) {
  constexpr bool kNorm = kKind != GemvKind::kAccumulate;
  constexpr int R = kKind == GemvKind::kNormSiluMul ? 2 : 1;  // weight rows per output column
  extern __shared__ uint4 xs[];                               // [M][K / 8] chunks of bf16 inputs
  __shared__ float partial[M][kWarps];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int chunks = a.K >> 3;
  const uint4* w = reinterpret_cast<const uint4*>(a.w);
  const int stride = gridDim.x * kWarps;
  int n = blockIdx.x * kWarps + warp;
  const uint64_t pol = weight_l2_policy();

  // The weights depend on no earlier kernel: this warp's first loads go out before the wait (and
  // its second row is asked of L2), so they overlap the previous kernel's tail and the staging.
  pdl_trigger();
  uint4 wv[R][kUnroll];
  if (n < a.N) load_batch<R>(wv, w, a.N, chunks, n, lane, pol);
  if (n + stride < a.N)
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const char* row = reinterpret_cast<const char*>(w + (static_cast<int64_t>(r) * a.N + n + stride) * chunks);
      for (int off = lane * 128; off < a.K * 2; off += 32 * 128) prefetch_l2(row + off);
    }
  if constexpr (kNorm)  // the norm's weights too: constant, and read right after the wait
    for (int off = threadIdx.x * 128; off < a.K * 4; off += blockDim.x * 128)
      prefetch_l1(reinterpret_cast<const char*>(a.norm_w) + off);
  pdl_wait();

  stage_inputs<M, kNorm>(a, reinterpret_cast<__nv_bfloat16*>(xs), a.K, M, partial);

  for (; n < a.N; n += stride) {
    // The residual this row adds to, read now rather than after the sums (lane m: row m's).
    float resid = 0.f;
    if constexpr (kKind == GemvKind::kAccumulate)
      if (lane < M && a.beta != 0.f) resid = a.out[static_cast<int64_t>(lane) * a.N + n];
    float acc[R][M];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int m = 0; m < M; ++m) acc[r][m] = 0.f;
    for (int c0 = lane;;) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int c = c0 + 32 * u;
        if (c >= chunks) break;
#pragma unroll
        for (int m = 0; m < M; ++m) {
          const uint4 xv = xs[m * chunks + c];
#pragma unroll
          for (int r = 0; r < R; ++r) acc[r][m] = dot8(wv[r][u], xv, acc[r][m]);
        }
      }
      c0 += 32 * kUnroll;
      if (c0 < chunks) {
        load_batch<R>(wv, w, a.N, chunks, n, c0, pol);
      } else {
        // The next row's first loads go out before this row's sums are reduced and stored.
        if (n + stride < a.N) load_batch<R>(wv, w, a.N, chunks, n + stride, lane, pol);
        break;
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int m = 0; m < M; ++m) acc[r][m] = warp_sum(acc[r][m]);

        // Lane m writes row m's result.
#pragma unroll
    for (int m = 0; m < M; ++m)
      if (lane == m) store_output<kKind>(a, static_cast<int64_t>(m) * a.N + n, acc[0][m], acc[R - 1][m], resid);
  }
}

// 5 to 8 input rows: the per-row dot products above would spend more instructions on the inputs
// than the weight stream leaves time for, so the products run on tensor cores. A CTA takes tiles
// of 16 output rows (and, for kNormSiluMul, the 16 matching up rows) in turn, having staged the
// normalised inputs once (the grid fills the GPU once; bf16 inputs are loaded where used); its 8
// warps split K, each taking kMmaUnroll adjacent
// slices of 32 at a time (256-byte row segments), and their partial sums meet in shared memory.
// Per slice a lane loads 16 bytes of row g and of row g + 8 (g = lane / 4) and the matching 16
// bytes of input row g, and two mma.m16n8k16 consume them: the k order inside a slice is permuted
// the same way for weights and inputs, which a dot product does not mind, so every load stays one
// 16-byte vector.
constexpr int kMmaRows = 16;
constexpr int kMmaUnroll = 4;  // slices in flight per warp

// c += W[rows g, g + 8][slice] . x[token g][slice] for one 32-wide slice (wa: row g, wb: row g + 8).
__device__ __forceinline__ void mma_slice(float (&c)[4], const uint4& wa, const uint4& wb, const uint4& xv) {
  mma_bf16(c, wa.x, wb.x, wa.y, wb.y, xv.x, xv.y);
  mma_bf16(c, wa.z, wb.z, wa.w, wb.w, xv.z, xv.w);
}

template <int M, GemvKind kKind>
__global__ void __launch_bounds__(kWarps * 32) gemv_mma_kernel(GemvArgs a) {
  constexpr bool kNorm = kKind != GemvKind::kAccumulate, kDirect = !kNorm;
  constexpr int R = kKind == GemvKind::kNormSiluMul ? 2 : 1;
  extern __shared__ uint4 xs[];  // [8][K + 8] bf16: the inputs, zero rows past M, padded rows (staged)
  __shared__ float partial[M][kWarps];
  __shared__ float4 sums[kWarps][R][32];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  const int slices = a.K >> 5, stride = a.K + 8, tiles = (a.N + kMmaRows - 1) / kMmaRows;
  const uint64_t pol = weight_l2_policy();
  // This lane's two weight rows (per R) of a tile, clamped into the matrix (rows past N compute
  // garbage that is never stored).
  const __nv_bfloat16* wrow[R][2];
  auto rows_of = [&](int tile) {
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        wrow[r][h] = reinterpret_cast<const __nv_bfloat16*>(a.w) +
                     (static_cast<int64_t>(r) * a.N + min(tile * kMmaRows + g + 8 * h, a.N - 1)) * a.K + 8 * q;
  };
  uint4 wv[R][2][kMmaUnroll];
  auto load = [&](int s0) {
#pragma unroll
    for (int u = 0; u < kMmaUnroll; ++u) {
      const int sl = s0 + u;
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          wv[r][h][u] =
              sl < slices ? ldg_policy(wrow[r][h] + 32 * sl, pol) : make_uint4(0, 0, 0, 0);
    }
  };

  // kDirect (bf16 input rows, nothing to normalise): no staging; a lane loads its 16 bytes of input
  // row g for each slice beside the weights (rows past M are zero and load nothing). A warp reads
  // only its own slices, so there is no CTA-wide copy of M x K inputs to wait for (staging them
  // measured 9-11% slower per decode step of 6-8 tokens, bench/RESULTS.md).
  uint4 xr[kMmaUnroll];
  const __nv_bfloat16* xrow = kDirect && g < M ? reinterpret_cast<const __nv_bfloat16*>(a.in) +
                                                     static_cast<int64_t>(g) * (a.in_stride ? a.in_stride : a.K) + 8 * q
                                               : nullptr;
  auto load_x = [&](int s0) {
#pragma unroll
    for (int u = 0; u < (kDirect ? kMmaUnroll : 0); ++u) {
      const int sl = s0 + u;
      xr[u] = xrow && sl < slices ? *reinterpret_cast<const uint4*>(xrow + 32 * sl) : make_uint4(0, 0, 0, 0);
    }
  };

  pdl_trigger();
  int tile = blockIdx.x;
  rows_of(tile);
  const int first = warp * kMmaUnroll;  // this warp's first slice
  load(first);                          // the weights depend on no earlier kernel
  if constexpr (kNorm)
    for (int off = threadIdx.x * 128; off < a.K * 4; off += blockDim.x * 128)
      prefetch_l1(reinterpret_cast<const char*>(a.norm_w) + off);
  pdl_wait();
  // Staged once per CTA; a CTA takes tile, tile + gridDim.x, ... (the grid fills the GPU once).
  __nv_bfloat16* xb = reinterpret_cast<__nv_bfloat16*>(xs);
  if constexpr (kDirect)
    load_x(first);
  else
    stage_inputs<M, kNorm>(a, xb, stride, 8, partial);

  for (; tile < tiles; tile += gridDim.x) {
    float c[R][4] = {};
    for (int s0 = first;;) {
#pragma unroll
      for (int u = 0; u < kMmaUnroll; ++u) {
        const int sl = s0 + u;
        if (sl >= slices) break;
        uint4 xv;
        if constexpr (kDirect)
          xv = xr[u];
        else
          xv = *reinterpret_cast<const uint4*>(xb + g * stride + 32 * sl + 8 * q);
#pragma unroll
        for (int r = 0; r < R; ++r) mma_slice(c[r], wv[r][0][u], wv[r][1][u], xv);
      }
      s0 += kWarps * kMmaUnroll;
      if (s0 < slices) {
        load(s0), load_x(s0);
      } else {
        // The next tile's first loads go out before this tile's sums are combined.
        if (tile + gridDim.x < tiles) rows_of(tile + gridDim.x), load(first), load_x(first);
        break;
      }
    }
    // c[r] = {row g: tokens 2q, 2q + 1; row g + 8: tokens 2q, 2q + 1}: sum over the warps.
#pragma unroll
    for (int r = 0; r < R; ++r) sums[warp][r][lane] = make_float4(c[r][0], c[r][1], c[r][2], c[r][3]);
    __syncthreads();
    if (warp == 0) {
      float t[R][4] = {};
#pragma unroll
      for (int w = 0; w < kWarps; ++w)
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const float4 v = sums[w][r][lane];
          t[r][0] += v.x, t[r][1] += v.y, t[r][2] += v.z, t[r][3] += v.w;
        }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int n = tile * kMmaRows + g + 8 * (i >> 1), m = 2 * q + (i & 1);
        if (n >= a.N || m >= M) continue;
        const int64_t at = static_cast<int64_t>(m) * a.N + n;
        const float resid = kKind == GemvKind::kAccumulate && a.beta != 0.f ? a.out[at] : 0.f;
        store_output<kKind>(a, at, t[0][i], t[R - 1][i], resid);
      }
    }
    __syncthreads();  // sums is rewritten for the next tile
  }
}

// Dynamic shared memory of the kernel for M rows of K inputs: the staged inputs (none for the
// tensor-core kernel's kAccumulate, which loads them directly).
size_t smem_bytes(int M, int K, GemvKind kind) {
  if (M <= kGemvDotRows) return size_t(M) * K * 2;
  return kind == GemvKind::kAccumulate ? 0 : size_t(8) * (K + 8) * 2;
}

int g_smem_optin = 48 << 10;  // the device's opt-in shared memory per CTA, from gemv_init

// How many CTAs of `kernel` with `smem` bytes fit on the current device at once (looked up
// once per device, kernel and size: steps outside graphs launch these every layer).
int resident_ctas(const void* kernel, size_t smem) {
  static std::mutex m;
  static std::map<std::tuple<int, const void*, size_t>, int> cache;
  int device = 0;
  cudaGetDevice(&device);
  std::lock_guard lock(m);
  auto [it, fresh] = cache.try_emplace({device, kernel, smem}, 0);
  if (fresh) {
    int sms = 1, per_sm = 1;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kWarps * 32, smem);
    it->second = std::max(per_sm, 1) * sms;
  }
  return it->second;
}

// The kernel for M input rows: CUDA-core dot products up to kGemvDotRows, tensor cores above,
// and how many output rows one of its CTAs takes at a time.
template <int M, GemvKind kKind>
constexpr void (*kernel_for())(GemvArgs) {
  if constexpr (M <= kGemvDotRows)
    return gemv_kernel<M, kKind>;
  else
    return gemv_mma_kernel<M, kKind>;
}
template <int M>
constexpr int kRowsPerPass = M <= kGemvDotRows ? kWarps : kMmaRows;

// Launches the kernel for a.M rows (M counts up to it).
template <GemvKind kKind, int M = 1>
void launch_kind(const GemvArgs& a, cudaStream_t s) {
  if constexpr (M <= kGemvMaxRows) {
    if (a.M != M) return launch_kind<kKind, M + 1>(a, s);
    auto* kernel = kernel_for<M, kKind>();
    const size_t smem = smem_bytes(M, a.K, kKind);
    // Enough CTAs to fill the GPU once, each looping over its rows: the inputs are staged once per CTA.
    const int passes = (a.N + kRowsPerPass<M> - 1) / kRowsPerPass<M>;
    const int grid = std::max(1, std::min(passes, resident_ctas(reinterpret_cast<const void*>(kernel), smem)));
    launch(kernel, grid, kWarps * 32, smem, s, a);
  }
}

template <GemvKind kKind, int M = 1>
void allow_smem(int bytes) {
  if constexpr (M <= kGemvMaxRows) {
    cudaFuncSetAttribute(kernel_for<M, kKind>(), cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    allow_smem<kKind, M + 1>(bytes);
  }
}

}  // namespace

void gemv_init() {
  int device = 0, optin = 48 << 10;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  // Leave room for the kernels' static shared memory (`partial`, the mma kernel's `sums`).
  const int bytes = optin - int(sizeof(float) * kGemvMaxRows * kWarps + sizeof(float4) * kWarps * 2 * 32);
  g_smem_optin = bytes;
  allow_smem<GemvKind::kNormStore>(bytes);
  allow_smem<GemvKind::kNormSiluMul>(bytes);
  allow_smem<GemvKind::kAccumulate>(bytes);
}

bool gemv_supported(int M, int K) {
  return M >= 1 && M <= kGemvMaxRows && K > 0 && K % (M <= kGemvDotRows ? 8 : 32) == 0 &&
         smem_bytes(M, K, GemvKind::kNormStore) <= size_t(g_smem_optin);
}

void gemv(const GemvArgs& args, cudaStream_t s) {
  if (args.M == 0 || args.N == 0) return;
  GemvArgs a = args;
  switch (a.kind) {
    case GemvKind::kNormStore:
      launch_kind<GemvKind::kNormStore>(a, s);
      break;
    case GemvKind::kNormSiluMul:
      launch_kind<GemvKind::kNormSiluMul>(a, s);
      break;
    case GemvKind::kAccumulate:
      launch_kind<GemvKind::kAccumulate>(a, s);
      break;
  }
}

}  // namespace baton::cuda
