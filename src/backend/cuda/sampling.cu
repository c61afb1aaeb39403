// Sampling on the device, so that only token ids leave the GPU.
//
// Greedy: argmax, first maximum on ties. A row is cut into up to kGreedySplits slices, one CTA
// each, as many as keep the launch near one wave of CTAs (one CTA for a whole vocabulary row of
// 150k logits took ~65 us with scalar loads; a 64-row batch in 16 slices a row, four waves, 25 us
// for the 1B shape, in a trace); each writes its slice's best
// (value, index) and the last slice of the row to finish (an arrival counter) picks the winner in
// slice order. Otherwise one CTA (1024 threads) per row: the top-k and top-p cut-offs are found by
// radix selection over the logits' order-preserving bit patterns: four passes of 8 bits, each a
// 256-bin histogram (of counts for top-k, of probability mass for top-p) walked from the top,
// so the row is never sorted. The token is then drawn by inverse CDF over the kept set in index
// order with one Philox uniform (seed, offset): a seeded request gives the same tokens whatever
// else is in the batch.
#include <curand_kernel.h>

#include <algorithm>

#include "backend/cuda/common.cuh"
#include "backend/cuda/kernels.h"

namespace baton::cuda {
namespace {

constexpr int kThreads = 1024;

__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The largest key K such that the weight of elements with key >= K reaches `target`, among the
// elements with key >= floor. weight(i) is w(x[i]); returns floor when even all of them fall short.
template <class Weight>
__device__ uint32_t radix_select(const float* x, int V, uint32_t floor, float target, Weight w, float* hist,
                                 uint32_t* shared_word) {
  uint32_t prefix = 0, mask = 0;
  float remaining = target;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0.f;
    __syncthreads();
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
      const uint32_t k = order_key(x[i]);
      if (k >= floor && (k & mask) == prefix) atomicAdd(&hist[(k >> shift) & 255u], w(x[i]));
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      // Lane L holds bins 255 - 8L down to 248 - 8L; scan from the top.
      const int lane = threadIdx.x;
      float mine = 0.f;
      for (int b = 0; b < 8; ++b) mine += hist[255 - lane * 8 - b];
      float incl = mine;
      for (int o = 1; o < 32; o <<= 1) {
        const float n = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += n;
      }
      const float excl = incl - mine;
      const unsigned nonempty = __ballot_sync(0xffffffffu, mine > 0.f);
      const unsigned hit = __ballot_sync(0xffffffffu, incl >= remaining && mine > 0.f);
      // The first lane (from the top) whose bins reach the target; when rounding leaves the
      // target just out of reach, the last non-empty lane (keep everything).
      const int src = hit ? __ffs(hit) - 1 : (nonempty ? 31 - __clz(nonempty) : -1);
      if (src < 0) {
        if (lane == 0) shared_word[0] = 0xffffffffu;  // nothing at or above floor
      } else if (lane == src) {
        float cum = excl, before = excl;
        int chosen = -1;
        for (int b = 0; b < 8; ++b) {
          const int bin = 255 - lane * 8 - b;
          if (hist[bin] > 0.f) chosen = bin, before = cum;  // lowest non-empty so far
          if (hist[bin] > 0.f && cum + hist[bin] >= remaining) break;
          cum += hist[bin];
        }
        shared_word[0] = static_cast<uint32_t>(chosen);
        hist[256] = remaining - before;
      }
    }
    __syncthreads();
    if (shared_word[0] == 0xffffffffu) return floor;
    prefix |= shared_word[0] << shift;
    mask |= 255u << shift;
    remaining = hist[256];
    __syncthreads();
  }
  return prefix < floor ? floor : prefix;
}

__global__ void __launch_bounds__(kThreads) sample_kernel(const float* logits, const SampleParams* params,
                                                          int32_t* out, int V, SampleScratch ws) {
  __shared__ float hist[257];
  __shared__ float scratch[32];
  __shared__ uint32_t word;
  __shared__ int chosen, fallback;
  const int row = blockIdx.x, split = blockIdx.y;
  const float* x = logits + static_cast<int64_t>(row) * V;
  const SampleParams p = params[row];

  if (!(p.temperature > 0.f)) {
    // This CTA's slice [lo, hi): its largest value and the first index holding it.
    const int splits = gridDim.y, per = ((V + splits - 1) / splits + 3) / 4 * 4;
    const int lo = split * per, hi = min(V, lo + per);
    float best = -INFINITY;
    int best_i = V;
    if (V % 4 == 0) {  // then every slice starts and ends on a float4 (per is a multiple of 4)
      // float4s, kBurst of them in flight per thread (a slice of 128256 / 4 logits in one round);
      // a thread's elements come in index order, so strict > keeps the first maximum.
      constexpr int kBurst = 8;
      const float4* x4 = reinterpret_cast<const float4*>(x);
      for (int base = lo / 4 + threadIdx.x; base < hi / 4; base += kBurst * blockDim.x) {
        float4 v[kBurst];
#pragma unroll
        for (int j = 0; j < kBurst; ++j) {
          const int i4 = base + j * blockDim.x;
          v[j] = i4 < hi / 4 ? __ldg(x4 + i4) : make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
        }
#pragma unroll
        for (int j = 0; j < kBurst; ++j) {
          const int i = 4 * (base + j * blockDim.x);
          if (v[j].x > best) best = v[j].x, best_i = i;
          if (v[j].y > best) best = v[j].y, best_i = i + 1;
          if (v[j].z > best) best = v[j].z, best_i = i + 2;
          if (v[j].w > best) best = v[j].w, best_i = i + 3;
        }
      }
    } else {
      for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        const float v = __ldg(x + i);
        if (v > best) best = v, best_i = i;
      }
    }
    const float top = block_reduce<true>(best, scratch);
    if (threadIdx.x == 0) chosen = V;
    __syncthreads();
    if (best == top) atomicMin(&chosen, best_i);
    __syncthreads();
    if (threadIdx.x != 0) return;
    float2* slot = ws.best + static_cast<int64_t>(row) * splits;
    slot[split] = make_float2(top, __int_as_float(chosen));
    __threadfence();
    if (atomicAdd(ws.arrivals + row, 1) != splits - 1) return;
    ws.arrivals[row] = 0;  // for the next call
    __threadfence();
    float win = -INFINITY;
    int win_i = V;
    for (int k = 0; k < splits; ++k) {  // slice order: the first maximum wins ties
      const float2 b = __ldcg(slot + k);
      const int i = __float_as_int(b.y);
      if (b.x > win) win = b.x, win_i = i;
    }
    out[row] = win_i < V ? win_i : 0;
    return;
  }
  if (split != 0) return;  // sampled rows: one CTA

  const float inv_t = 1.f / p.temperature;
  float mx = -INFINITY;
  for (int i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, x[i]);
  mx = block_reduce<true>(mx, scratch) * inv_t;
  auto mass = [=](float v) { return __expf(v * inv_t - mx); };
  if (threadIdx.x == 0) word = 0;
  __syncthreads();

  uint32_t floor = 0;
  if (p.top_k > 0 && p.top_k < V)
    floor = radix_select(x, V, 0u, static_cast<float>(p.top_k), [](float) { return 1.f; }, hist, &word);
  float total = 0.f;
  for (int i = threadIdx.x; i < V; i += blockDim.x)
    if (order_key(x[i]) >= floor) total += mass(x[i]);
  total = block_reduce<false>(total, scratch);
  if (p.top_p < 1.f) {
    if (threadIdx.x == 0) word = 0;
    __syncthreads();
    floor = radix_select(x, V, floor, p.top_p * total, mass, hist, &word);
    total = 0.f;
    for (int i = threadIdx.x; i < V; i += blockDim.x)
      if (order_key(x[i]) >= floor) total += mass(x[i]);
    total = block_reduce<false>(total, scratch);
  }

  curandStatePhilox4_32_10_t rng;
  curand_init(p.seed, p.offset, 0, &rng);
  const float u = (1.f - curand_uniform(&rng)) * total;  // [0, total)

  // Inverse CDF in index order: each thread sums a contiguous slice, then an exclusive scan.
  const int per = (V + kThreads - 1) / kThreads;
  const int lo = threadIdx.x * per, hi = min(lo + per, V);
  float mine = 0.f;
  int last_kept = -1;
  for (int i = lo; i < hi; ++i)
    if (order_key(x[i]) >= floor) mine += mass(x[i]), last_kept = i;
  // Block exclusive scan of `mine`.
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float incl = mine;
  for (int o = 1; o < 32; o <<= 1) {
    const float n = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += n;
  }
  if (threadIdx.x == 0) chosen = -1, fallback = -1;
  __syncthreads();
  if (lane == 31) scratch[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    float w = scratch[lane];
    for (int o = 1; o < 32; o <<= 1) {
      const float n = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += n;
    }
    scratch[lane] = w;
  }
  __syncthreads();
  const float excl = incl - mine + (warp > 0 ? scratch[warp - 1] : 0.f);
  if (last_kept >= 0) atomicMax(&fallback, last_kept);
  if (mine > 0.f && u >= excl && u < excl + mine) {
    float cum = excl;
    int pick = last_kept;
    for (int i = lo; i < hi; ++i)
      if (order_key(x[i]) >= floor) {
        cum += mass(x[i]);
        if (u < cum) {
          pick = i;
          break;
        }
      }
    chosen = pick;
  }
  __syncthreads();
  if (threadIdx.x == 0) out[row] = chosen >= 0 ? chosen : (fallback >= 0 ? fallback : 0);
}

}  // namespace

void sample(const float* logits, const SampleParams* params, int32_t* out, int rows, int V, SampleScratch ws,
            cudaStream_t s) {
  if (rows == 0) return;
  // Enough CTAs for about one wave (two of 1024 threads per SM): a row of a big batch is one slice.
  const int splits = std::clamp(2 * std::max(ws.sms, 1) / rows, 1, kGreedySplits);
  sample_kernel<<<dim3(rows, splits), kThreads, 0, s>>>(logits, params, out, V, ws);
}

}  // namespace baton::cuda
