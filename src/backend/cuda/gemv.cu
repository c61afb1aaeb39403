// Skinny GEMMs (kernels.h: gemv): y[m, n] = sum_k in[m, k] * W[n, k] for M <= 8 rows.
//
// At decode a layer's GEMMs read every weight once for a handful of tokens: the time is the
// weight bytes over the memory bandwidth, plus whatever the kernel cannot hide. So each warp
// owns whole weight rows (rows n, n + stride, ...), its lanes load 16-byte chunks of a row four
// at a time (all loads of a short row in flight at once), and every CTA stages the M input rows
// in shared memory once. Before waiting for the previous kernel (programmatic dependent launch)
// a warp issues its first weight loads, which depend on nothing: the weight stream starts while
// the kernel before is still finishing. Up to 4 rows: at 8, the shared-memory reads of the inputs
// (one per row and chunk) outrun the weight stream and cuBLAS is faster (bench/RESULTS.md).
#include <algorithm>

#include "backend/cuda/common.cuh"
#include "backend/cuda/kernels.h"

namespace baton::cuda {
namespace {

constexpr int kWarps = 8;   // per CTA
constexpr int kUnroll = 8;  // 16-byte chunks in flight per lane and weight row: a row of 2048 at once

__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}
__device__ __forceinline__ void prefetch_l1(const void* p) {
  asm volatile("prefetch.global.L1 [%0];" ::"l"(p));
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

// Chunks c0, c0 + 32, ... (kUnroll of them) of weight row n (and, for R = 2, of row N + n).
template <int R>
__device__ __forceinline__ void load_batch(uint4 (&wv)[R][kUnroll], const uint4* w, int N, int chunks, int n, int c0) {
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int c = c0 + 32 * u;
#pragma unroll
    for (int r = 0; r < R; ++r)
      wv[r][u] = c < chunks ? __ldg(w + (static_cast<int64_t>(r) * N + n) * chunks + c) : make_uint4(0, 0, 0, 0);
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

  // The weights depend on no earlier kernel: this warp's first loads go out before the wait (and
  // its second row is asked of L2), so they overlap the previous kernel's tail and the staging.
  pdl_trigger();
  uint4 wv[R][kUnroll];
  if (n < a.N) load_batch<R>(wv, w, a.N, chunks, n, lane);
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

  // Stage the inputs: bf16 rows as they are, or rmsnorm(x) * norm_w rounded to bf16 (as the
  // rmsnorm kernel writes them for cuBLAS). All M rows' loads are in flight together.
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
    __nv_bfloat162* dst = reinterpret_cast<__nv_bfloat162*>(xs);
    for (int i = threadIdx.x; i < k4; i += blockDim.x) {
      const float4 g = nw[i];
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const float4 v = x4[m][i];
        dst[(m * k4 + i) * 2] = __floats2bfloat162_rn(v.x * inv[m] * g.x, v.y * inv[m] * g.y);
        dst[(m * k4 + i) * 2 + 1] = __floats2bfloat162_rn(v.z * inv[m] * g.z, v.w * inv[m] * g.w);
      }
    }
  } else {
    const uint4* in = reinterpret_cast<const uint4*>(a.in);
    for (int i = threadIdx.x; i < M * chunks; i += blockDim.x) xs[i] = in[i];
  }
  __syncthreads();

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
        load_batch<R>(wv, w, a.N, chunks, n, c0);
      } else {
        // The next row's first loads go out before this row's sums are reduced and stored.
        if (n + stride < a.N) load_batch<R>(wv, w, a.N, chunks, n + stride, lane);
        break;
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int m = 0; m < M; ++m) acc[r][m] = warp_sum(acc[r][m]);

        // Lane m writes row m's result.
#pragma unroll
    for (int m = 0; m < M; ++m) {
      if (lane != m) continue;
      const int64_t at = static_cast<int64_t>(m) * a.N + n;
      if constexpr (kKind == GemvKind::kNormSiluMul) {
        const float g = acc[0][m], u = acc[R - 1][m];
        reinterpret_cast<__nv_bfloat16*>(a.act)[at] = __float2bfloat16(g / (1.f + __expf(-g)) * u);
      } else if constexpr (kKind == GemvKind::kAccumulate) {
        a.out[at] = a.beta == 0.f ? acc[0][m] : a.beta * resid + acc[0][m];
      } else {
        a.out[at] = acc[0][m];
      }
    }
  }
}

size_t smem_bytes(int M, int K) {
  return size_t(M) * K * 2;
}

int g_smem_optin = 48 << 10;  // the device's opt-in shared memory per CTA, from gemv_init

template <int M, GemvKind kKind>
void launch_rows(const GemvArgs& a, cudaStream_t s) {
  auto* kernel = gemv_kernel<M, kKind>;
  const size_t smem = smem_bytes(M, a.K);
  int device = 0, sms = 1, per_sm = 1;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kWarps * 32, smem);
  // Enough CTAs to fill the GPU once, each looping over rows: the inputs are staged once per CTA.
  const int grid = std::max(1, std::min((a.N + kWarps - 1) / kWarps, std::max(per_sm, 1) * sms));
  launch(kernel, grid, kWarps * 32, smem, s, a);
}

template <GemvKind kKind>
void launch_kind(const GemvArgs& a, cudaStream_t s) {
  switch (a.M) {
    case 1:
      launch_rows<1, kKind>(a, s);
      break;
    case 2:
      launch_rows<2, kKind>(a, s);
      break;
    case 3:
      launch_rows<3, kKind>(a, s);
      break;
    case 4:
      launch_rows<4, kKind>(a, s);
      break;
    default:
      break;  // gemv_supported said no
  }
}

template <GemvKind kKind>
void allow_smem(int bytes) {
  cudaFuncSetAttribute(gemv_kernel<1, kKind>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  cudaFuncSetAttribute(gemv_kernel<2, kKind>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  cudaFuncSetAttribute(gemv_kernel<3, kKind>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  cudaFuncSetAttribute(gemv_kernel<4, kKind>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

}  // namespace

void gemv_init() {
  int device = 0, optin = 48 << 10;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  const int bytes = optin - int(sizeof(float) * kGemvMaxRows * kWarps);  // leave room for `partial`
  g_smem_optin = bytes;
  allow_smem<GemvKind::kNormStore>(bytes);
  allow_smem<GemvKind::kNormSiluMul>(bytes);
  allow_smem<GemvKind::kAccumulate>(bytes);
}

bool gemv_supported(int M, int K) {
  return M >= 1 && M <= kGemvMaxRows && K > 0 && K % 8 == 0 && smem_bytes(M, K) <= size_t(g_smem_optin);
}

void gemv(const GemvArgs& a, cudaStream_t s) {
  if (a.M == 0 || a.N == 0) return;
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
