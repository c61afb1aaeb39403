// One kernel for all the layers of a one-token decode step (kernels.h: decode_mega). Off by
// default (BATON_CUDA_MEGA; `auto` keeps it where it is faster and its logits agree): correct
// (tests/backend/cuda_test.cpp), but slower than the kernels per layer so far; see "Status" below.
//
// Why: at batch 1 a layer's five kernels each pay a fixed chain (the PDL wait after the previous
// kernel's last CTA, staging the input, the last rows, the exit) in which the memory bus idles;
// on the H200 that is two thirds of a Qwen2.5-0.5B step (bench/RESULTS.md, sessions 22 and 24).
// Here the weights never wait for the activations: a producer warp in every CTA keeps a ring of
// shared-memory stages filled with bulk copies (cp.async.bulk; per stage a "full" mbarrier counting
// the bytes and an "empty" one the consumer warps that have read it) of its next weight rows,
// whichever phase or layer they belong to, so the bus streams while the 7 consumer warps meet at
// grid-wide barriers between phases.
//
// A step: for each layer, five phases separated by grid barriers:
//   QKV    stage rmsnorm(x) * attn_norm (bf16), qkv = W_qkv . it
//   attn   a CTA per (KV group, split of the keys): bias, QK-norm, RoPE (qkv_row_warp, as the
//          other kernels), the new K/V into the cache, online softmax over its keys (staged in
//          shared memory by cp.async when the layer starts: they were written by earlier steps),
//          partials to ws; the group's last split to arrive merges them into attn
//   O      stage attn, x += W_o . it
//   gate/up stage rmsnorm(x) * mlp_norm, act = silu(W_g . it) * (W_u . it)
//   down   x += W_down . act
// A GEMV phase gives each CTA a contiguous range of output rows (balanced), so its weights are one
// contiguous range (two for gate/up) cut into chunks of whole rows, one chunk per ring stage. The
// sums of a chunk run on the tensor cores (mma_sum: every (row, segment) unit a diagonal element
// of an m16n8k16 product; the consumer warps split the inputs) and leave per-(warp, row, segment) sums in
// shared memory, added in a fixed order: the result does not depend on timing.
//
// Ordering: data another CTA wrote in this kernel (x, qkv, act, attn) is read after a grid barrier
// (a release-add, then a spin on ld.acquire, which also drops the SM's stale L1 lines), with
// __ldcg where this file reads it itself.
//
// Status (H200, bench/RESULTS.md sessions 27-28; bench/gpu/mega_ab.sh, mega_times.py): the ring
// with the sums and nothing else (BATON_CUDA_MEGA_PROBE=2) streams a Llama-3.2-1B step at 0.98 of
// the roofline. The whole step takes 0.91 ms against 0.89 for the kernels per layer (Qwen2.5-0.5B
// shape: 0.80 against 0.67). A 1B layer (50 us): ~27 us of GEMV phases, bus-bound in gate/up and
// down, and ~23 us of input staging (5.7), grid barriers (9.8: each passes 1.2-2.2 us after the
// last CTA arrives) and the attention chain (7.2), in which the 5-stage ring (160 KB, ~5 us of an
// SM's share of the bus) fills once and the bus idles. Ways to fill that idle time tried and
// removed: see Producer.
#include <algorithm>
#include <string>

#include "backend/cuda/common.cuh"
#include "backend/cuda/kernels.h"

namespace baton::cuda {
namespace {

// 7 consumer warps and a producer warp: 256 threads (512 spilled 300 bytes a thread and measured
// 1.59 against 1.34 ms a Llama-3.2-1B step, session 26; 288 would cap registers at 168: spills).
constexpr int kThreads = 224, kWarps = kThreads / 32;  // the consumers
constexpr int kBlock = kThreads + 32;                   // and the producer warp
constexpr int kMaxHidden = 8192;
constexpr int kNormPer = (kMaxHidden + 4 * kThreads - 1) / (4 * kThreads);  // float4s a thread in stage_norm
constexpr int kAttnThreads = kThreads;  // the key loop's threads (the merge buffer grows with them)
constexpr int kMaxStages = 16;
constexpr int kMaxG = 8;        // query heads per KV group
constexpr int kMaxSplits = 32;  // attention splits per KV group
constexpr int kStageMin = 32 << 10;
constexpr int kPartsCap = 4096;  // floats of per-(warp, row, segment) sums in shared memory
constexpr int kTableCap = 1024;  // block table entries in shared memory (longer contexts: global)
constexpr float kLog2e = 1.4426950408889634f;
// Spins before a barrier or stage wait gives up and traps (seconds): a bug shows as an error, not
// a hung GPU.
constexpr long long kSpinLimit = 1ll << 24;

template <int D>
constexpr int keys_per_batch() {
  // Keys staged per split at a time (64 for D = 64, 32 for D = 128): the most keys a split takes
  // in one batch (split_of gives each 32 by default).
  return 4096 / D;
}
template <int D, int G>
constexpr size_t attn_scratch_bytes() {
  constexpr int kLanes = decode_lanes(G, D), kGroups = kAttnThreads / kLanes;
  // qv[G][D], kn[D], vn[D], sm_m/sm_l[G][kGroups], sm_acc[G][kGroups][D], sm_max[G]
  return sizeof(float) * (G * D + 2 * D + 2 * G * kGroups + G * kGroups * D + G);
}
// The attention's query heads per KV group (a template parameter of the kernel: the key loop's
// registers and shuffles scale with it): 4 where a group has at most 4 (Llama-3.2-1B/8B), else
// kMaxG; a.group_heads = 8 forces kMaxG (A/B runs).
inline int group_heads(const MegaArgs& a) {
  return a.NH / a.KVH <= 4 && a.group_heads != kMaxG ? 4 : kMaxG;
}

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void trap_if(bool stuck) {
  if (stuck) __trap();
}

// mbarrier and bulk copies (sm_90).
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(uint64_t* bar, uint32_t parity) {
  uint32_t ok;
  asm volatile(
      "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}"
      : "=r"(ok)
      : "r"(smem_u32(bar)), "r"(parity)
      : "memory");
  return ok != 0;
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  long long spins = 0;
  while (!mbar_try_wait(bar, parity)) trap_if(++spins > kSpinLimit);
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_u32(bar)) : "memory");
}
// The consumer warps' barrier (named barrier 1; the producer warp never joins it).
__device__ __forceinline__ void consumers_sync() {
  asm volatile("bar.sync 1, %0;" ::"n"(kThreads) : "memory");
}
// A bulk copy under an L2 cache policy (weight_l2_policy), completing on bar.
__device__ __forceinline__ void bulk_load(void* dst, const void* src, uint32_t bytes, uint64_t* bar,
                                          uint64_t policy) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;" ::"r"(
          smem_u32(dst)),
      "l"(src), "r"(bytes), "r"(smem_u32(bar)), "l"(policy)
      : "memory");
}
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_u32(dst)), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_all;" ::: "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;" ::: "memory");
}
// Every CTA of the grid arrives; returns when all have (the target grows by gridDim.x per call).
// The CTA's writes reach thread 0 through the first consumer barrier and the other CTAs through its
// release-add; the acquire load (which also drops the SM's L1 lines: CCTL.IVALL in SASS) and the
// second barrier order what the CTA reads next after every CTA's writes.
__device__ __forceinline__ void grid_sync(unsigned* counter, unsigned target) {
  consumers_sync();
  if (threadIdx.x == 0) {
    asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(counter) : "memory");
    unsigned seen = 0;
    long long spins = 0;
    for (;;) {
      asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(counter) : "memory");
      if (seen >= target) break;
      trap_if(++spins > kSpinLimit);
    }
  }
  consumers_sync();
}

__device__ __forceinline__ void mark(const MegaArgs& a, int layer, int k) {
  if (a.times && threadIdx.x == 0) {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    a.times[(static_cast<size_t>(blockIdx.x) * a.n_layers + layer) * kMegaMarks + k] = t;
  }
}

// Where a CTA's chunk loop spends its SM cycles in a layer (BATON_CUDA_MEGA_TIMES): waiting for a
// stage and the sums; threads 0 and 32 each record theirs, thread 0 also clock64 at the layer's
// start.
struct ChunkClock {
  long long t = 0, wait = 0, sums = 0;
  __device__ __forceinline__ void lap(bool on, long long& into) {
    if (!on) return;
    const long long now = clock64();
    into += now - t, t = now;
  }
  __device__ void store(const MegaArgs& a, int layer, long long start) {
    if (!a.times || (threadIdx.x != 0 && threadIdx.x != 32)) return;
    unsigned long long* m = a.times + (static_cast<size_t>(blockIdx.x) * a.n_layers + layer) * kMegaMarks;
    int k = threadIdx.x == 0 ? kMegaMarks - 5 : kMegaMarks - 2;  // 17..19 thread 0, 20..21 thread 32
    if (threadIdx.x == 0) m[k++] = start;
    m[k] = wait, m[k + 1] = sums;
    wait = sums = 0;
  }
};

// A GEMV phase of a layer: N output rows of K inputs, R weight rows per output (gate/up: 2, the
// up rows N after the gate rows).
enum Phase { kQkv = 0, kO = 1, kGateUp = 2, kDown = 3, kPhases = 4 };
struct PhaseShape {
  int N, K, R;
};
// The kernel's geometry and mega_prepare's shared-memory plan both start here.
__host__ __device__ inline PhaseShape phase_shape(const MegaArgs& a, int phase) {
  const int q_dim = a.NH * a.D;
  switch (phase) {
    case kQkv: return {q_dim + 2 * a.KVH * a.D, a.H, 1};
    case kO: return {a.H, q_dim, 1};
    case kGateUp: return {a.I, a.H, 2};
    default: return {a.H, a.I, 1};
  }
}
// Output rows per chunk (one ring stage; at least one: a stage holds a row of every phase).
__host__ __device__ inline int rows_per_chunk(const MegaArgs& a, const PhaseShape& s) {
  const int rc = a.stage_bytes / (s.R * s.K * 2);
  return rc > 1 ? rc : 1;
}
struct Gemv {
  const bf16_t* w;
  int N, K, R;
  int n0, n1;   // this CTA's output rows
  int rc;       // rows per chunk (per stage)
  int chunks;   // chunks of this CTA
  int S, logS;  // segments per weight row (a power of two)
  int T;        // 32-input blocks per segment
};

// Segments per weight row for a chunk of `pieces` row pieces (rows x R): mma_sum takes 8 units
// (piece, segment) at a time, so few pieces are cut into up to 8 segments.
__host__ __device__ constexpr int segments_of(int pieces) {
  int s = 1;
  while (s < 8 && pieces * s * 2 <= 8) s *= 2;
  return s;
}
// 32-input blocks per segment of a K-input row cut into S segments; a lane of mma_sum takes every
// kWarps-th of them, at most kXBlocks (its inputs stay in registers for the whole phase).
__host__ __device__ constexpr int blocks_per_segment(int K, int S) {
  return ((K + 31) / 32 + S - 1) / S;
}
constexpr int kXBlocks = 12;

// A phase's geometry (everything but the weights: the same in every layer), computed once per
// kernel into shared memory so that neither the producer nor the consumer divides per chunk.
__device__ Gemv geometry(const MegaArgs& a, int phase) {
  Gemv g{};
  const PhaseShape shape = phase_shape(a, phase);
  g.N = shape.N, g.K = shape.K, g.R = shape.R;
  g.n0 = static_cast<int>(static_cast<int64_t>(g.N) * blockIdx.x / gridDim.x);
  g.n1 = static_cast<int>(static_cast<int64_t>(g.N) * (blockIdx.x + 1) / gridDim.x);
  g.rc = rows_per_chunk(a, shape);
  g.chunks = (g.n1 - g.n0 + g.rc - 1) / g.rc;
  g.S = segments_of(g.R * min(g.rc, g.n1 - g.n0));
  g.logS = __ffs(g.S) - 1;
  g.T = blocks_per_segment(g.K, g.S);
  return g;
}

__device__ __forceinline__ Gemv gemv_of(const Gemv* geo, const MegaLayer& L, int phase) {
  Gemv g = geo[phase];
  g.w = phase == kQkv ? L.w_qkv : phase == kO ? L.wo : phase == kGateUp ? L.w_gate_up : L.w_down;
  return g;
}

// D += A . B on the tensor cores (m16n8k16, bf16 in, fp32 accumulate) with A's rows 8-15 zero:
// a0/a2 are the lane's A elements (row lane / 4; k 2q, 2q + 1 and 2q + 8, 2q + 9 for q = lane % 4),
// b0/b1 its B elements (column lane / 4, the same k).
__device__ __forceinline__ void mma_16816(float (&d)[4], uint32_t a0, uint32_t a2, uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
}

// The inputs a lane of mma_sum multiplies in a phase, loaded once from the staged input (the
// same for every chunk of the phase): its 8 inputs (16 bytes) of each of its blocks, zeros past
// the row's end. The fixed assignment (below) makes them a lane's own: the shared-memory loads of
// a chunk are its weights' alone.
struct LaneX {
  uint4 v[kXBlocks];
  int steps;  // this lane's blocks that hold inputs
};

// A lane's place in the phase's units: lanes 4n .. 4n + 3 take unit n of every 8 (segment n % S),
// lane 4n + q the inputs 8q .. 8q + 7 of each 32-input block; warp w the blocks (w + n) % W + W i
// of the unit's segment (W warps).
struct LaneSlot {
  int n, q, seg, start;
  size_t first, stride;  // the lane's first block's byte offset in a row, and from one to the next
  __device__ __forceinline__ explicit LaneSlot(const Gemv& g) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    n = lane >> 2, q = lane & 3, seg = n & (g.S - 1), start = (warp + n) % kWarps;
    first = (static_cast<size_t>(seg) + static_cast<size_t>(g.S) * start) * 64 + q * 16;
    stride = static_cast<size_t>(g.S) * kWarps * 64;
  }
};

__device__ __forceinline__ void load_lane_x(const Gemv& g, const unsigned char* xsb, LaneX& x) {
  const LaneSlot ls(g);
  const int nbq = (g.K - 8 * ls.q + 31) >> 5;                       // blocks that hold the lane's 8 inputs
  const int lim = min(g.T, (nbq - ls.seg + g.S - 1) >> g.logS);  // of them, its segment's blocks t < lim
  x.steps = lim > ls.start ? (lim - ls.start + kWarps - 1) / kWarps : 0;
#pragma unroll
  for (int i = 0; i < kXBlocks; ++i)
    x.v[i] = i < x.steps ? *reinterpret_cast<const uint4*>(xsb + ls.first + i * ls.stride) : make_uint4(0, 0, 0, 0);
}

// The sums of one ring stage: its R x rows row pieces (K bf16 each, in shared memory at wst)
// against the phase's input (x, in registers), each piece cut into g.S segments. The units
// (piece, segment) go 8 at a time through the tensor cores, unit n as the diagonal element D[n][n]
// of m16n8k16 products: lanes 4n .. 4n + 3 put the same 16 inputs into A's row n and B's column
// n, the input in A and the weights in B, so D[n][n] is unit n's dot product over them (the other
// products are thrown away; the tensor cores have time to spare, the issue slots and the shared
// memory do not: the fp32 version, 3 instructions a weight, kept 2 warps a scheduler busy, Nsight
// Compute, session 26). A lane's one 16-byte load (8 weights) feeds two products. A segment is T
// blocks of 32 inputs (block t at inputs 32 (seg + S t)); LaneSlot says which a lane takes: the
// two units of a quarter warp read different halves of the banks, and a lane's loads step by a
// constant stride. Partial sums go to parts[warp][piece][segment], P pieces a warp, piece =
// (row0 + row) * R + half.
__device__ __forceinline__ void mma_sum(const Gemv& g, const LaneX& x, const unsigned char* wst, int rows, int row0,
                                        int P, float* parts) {
  const LaneSlot ls(g);
  const int warp = threadIdx.x >> 5, n = ls.n, q = ls.q;
  const int nu = (g.R * rows) << g.logS;
  const int iters = (g.T + kWarps - 1) / kWarps;  // the same for every lane
  for (int u0 = 0; u0 < nu; u0 += 8) {
    const int u = u0 + n;
    const bool valid = u < nu;
    const int jj = valid ? u >> g.logS : 0;  // the piece in the stage
    const int steps = valid ? x.steps : 0;
    const unsigned char* wp = wst + static_cast<size_t>(jj) * g.K * 2 + ls.first;
    float acc[4][4] = {};
#pragma unroll
    for (int i = 0; i < kXBlocks; i += 4) {
      if (i >= iters) break;
      uint4 w[4];
#pragma unroll
      for (int k = 0; k < 4; ++k)
        w[k] = i + k < steps ? *reinterpret_cast<const uint4*>(wp + (i + k) * ls.stride) : make_uint4(0, 0, 0, 0);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        mma_16816(acc[k], x.v[i + k].x, x.v[i + k].y, w[k].x, w[k].y);
        mma_16816(acc[k], x.v[i + k].z, x.v[i + k].w, w[k].z, w[k].w);
      }
    }
    // D[n][n]: row n, column 2q (c0) or 2q + 1 (c1), in lane 4n + n / 2.
    if (valid && q == (n >> 1)) {
      const int r = jj >= rows ? 1 : 0, o = jj - r * rows, seg = ls.seg;
      const float d0 = (acc[0][0] + acc[1][0]) + (acc[2][0] + acc[3][0]);
      const float d1 = (acc[0][1] + acc[1][1]) + (acc[2][1] + acc[3][1]);
      parts[(warp * P + (row0 + o) * g.R + r) * g.S + seg] = n & 1 ? d1 : d0;
    }
  }
}

// A position in a CTA's weight stream (layer, phase, chunk), in the order the CTA consumes it.
struct Cursor {
  int layer = 0, phase = 0, chunk = 0;
  // The next chunk (its phase's geometry, first output row and rows); false past the last layer.
  __device__ bool next(const MegaArgs& a, const MegaLayer* layers, const Gemv* geo, Gemv& g, int& row, int& rows) {
    while (layer < a.n_layers) {
      g = gemv_of(geo, layers[layer], phase);
      if (chunk < g.chunks) {
        row = g.n0 + chunk++ * g.rc, rows = min(g.rc, g.n1 - row);
        return true;
      }
      chunk = 0;
      if (++phase == kPhases) phase = 0, ++layer;
    }
    return false;
  }
};

// A chunk's weight rows: R ranges of rows * K bf16 (gate/up: the up rows N after the gate rows).
__device__ __forceinline__ const bf16_t* chunk_rows(const Gemv& g, int r, int row) {
  return g.w + (static_cast<int64_t>(r) * g.N + row) * g.K;
}

// The ring's producer, lane 0 of the CTA's last warp (which takes no other part): the chunks in the
// order the consumers take them, each into the next stage once the 7 consumer warps have arrived
// on its "empty" mbarrier, with one cp.async.bulk per weight range completing on its "full" one.
// The copies are marked evict-first in L2 (a.evict_first, on unless BATON_CUDA_EVICT=0; then the
// normal policy): read once, they leave L2 to the KV cache and the activations (1B shape 0.940 ->
// 0.920 ms, session 28).
//
// Tried here and removed (bench/RESULTS.md sessions 26-28; the code is in 242ae0e): chunks kept on
// their way into L2 ahead of the ring (cp.async.bulk.prefetch.L2; slower at every depth), or sent
// there only while the ring is full and the consumers hold it (the GEMV phases shrink, the inputs'
// staging grows as much), and a cap on the stages in flight (the staging and barrier times do not
// move: their round trips do not wait behind this SM's queued copies).
struct Producer {
  __device__ static void run(const MegaArgs& a, const MegaLayer* layers, const Gemv* geo, unsigned char* mem,
                             uint64_t* full, uint64_t* empty) {
    Cursor ring;
    int slot = 0;
    uint32_t parity = 0;  // of the stage's current fill: its first wait (parity 1) passes at once
    const uint64_t policy = weight_l2_policy(a.evict_first);
    Gemv g;
    int row, rows;
    while (ring.next(a, layers, geo, g, row, rows)) {
      mbar_wait(empty + slot, parity ^ 1);
      const uint32_t bytes = static_cast<uint32_t>(rows) * g.K * 2;
      unsigned char* dst = mem + static_cast<size_t>(slot) * a.stage_bytes;
      mbar_expect_tx(full + slot, bytes * g.R);
      for (int r = 0; r < g.R; ++r)
        bulk_load(dst + static_cast<size_t>(r) * bytes, chunk_rows(g, r, row), bytes, full + slot, policy);
      if (++slot == a.stages) slot = 0, parity ^= 1;
    }
  }
};

// xs = bf16(rmsnorm(x) * w) for H <= kMaxHidden (x read through L2: other CTAs wrote it).
__device__ void stage_norm(const float* x, const float* w, int H, float eps, __nv_bfloat16* xs, float* red) {
  constexpr int kPer = kNormPer;
  const int n4 = H / 4;
  float4 v[kPer], g[kPer];
  float ss = 0.f;
#pragma unroll
  for (int j = 0; j < kPer; ++j) {  // x and the norm's weights in one round trip
    const int i = threadIdx.x + j * kThreads;
    if (i < n4) v[j] = __ldcg(reinterpret_cast<const float4*>(x) + i), g[j] = __ldg(reinterpret_cast<const float4*>(w) + i);
  }
#pragma unroll
  for (int j = 0; j < kPer; ++j)
    if (threadIdx.x + j * kThreads < n4) ss += v[j].x * v[j].x + v[j].y * v[j].y + v[j].z * v[j].z + v[j].w * v[j].w;
  ss = block_reduce<false>(ss, red, kWarps, [] { consumers_sync(); });  // the consumer warps
  const float inv = rsqrtf(ss / H + eps);
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int i = threadIdx.x + j * kThreads;
    if (i < n4) {
      const float4 gw = g[j];
      __nv_bfloat162* d = reinterpret_cast<__nv_bfloat162*>(xs + 4 * i);
      d[0] = __floats2bfloat162_rn(v[j].x * inv * gw.x, v[j].y * inv * gw.y);
      d[1] = __floats2bfloat162_rn(v[j].z * inv * gw.z, v[j].w * inv * gw.w);
    }
  }
}

// bytes at p (may be null) into L2, the CTA's threads sharing the lines.
__device__ __forceinline__ void prefetch_l2_range(const void* p, size_t bytes) {
  if (!p) return;
  for (size_t off = threadIdx.x * size_t(128); off < bytes; off += kThreads * size_t(128))
    prefetch_l2(static_cast<const char*>(p) + off);
}

// A layer's constants (norms, bias) into L2: read on the critical path right after a barrier, they
// would otherwise come from HBM behind the weight stream.
__device__ void prefetch_layer(const MegaArgs& a, const MegaLayer& L) {
  const size_t rows = static_cast<size_t>(a.NH + 2 * a.KVH) * a.D;
  prefetch_l2_range(L.attn_norm, sizeof(float) * a.H);
  prefetch_l2_range(L.mlp_norm, sizeof(float) * a.H);
  prefetch_l2_range(L.b_qkv, sizeof(float) * rows);
  prefetch_l2_range(L.q_norm, sizeof(float) * a.D);
  prefetch_l2_range(L.k_norm, sizeof(float) * a.D);
}

// xs = n bf16 values another CTA wrote.
__device__ void stage_copy(const bf16_t* src, int n, __nv_bfloat16* xs) {
  const uint4* s = reinterpret_cast<const uint4*>(src);
  uint4* d = reinterpret_cast<uint4*>(xs);
  for (int i = threadIdx.x; i < n / 8; i += kThreads) d[i] = __ldcg(s + i);
}

// The keys of one split this CTA attends to in a layer.
struct Split {
  int g, s, S;           // KV group, split, splits
  int first, last;       // the step's keys (inclusive); last = the new token
  int begin, end;        // this split's keys
  bool active, has_new;  // whether this CTA has a split; whether its keys end at the new token
  bool any;              // whether the step has keys at all
};

template <int D>
__device__ __forceinline__ Split split_of(const MegaArgs& a) {
  Split p{};
  const int pos = a.positions[0];
  const KeyRange r = keys_of(pos, a.window);
  p.first = r.first, p.last = r.last;
  const int n_keys = r.last - r.first + 1;
  // A split's keys in one batch where the splits allow: 32, or a.split_keys (64 at head_dim 64
  // made a Qwen2.5-0.5B-shape step 2.5 % slower and a Llama-3.2-1B one no faster, session 28:
  // the longer key loop costs more than merging more splits).
  const int kB = min(a.split_keys > 0 ? a.split_keys : 32, keys_per_batch<D>());
  const int want = max(1, min(a.s_max, (n_keys + kB - 1) / kB));
  const int chunk = max(1, (n_keys + want - 1) / want);
  // Splits of `chunk` keys, none empty (the group's last split merges S partials: every split must
  // arrive; `want` capped by s_max can leave its last splits without keys, e.g. 513 keys in 32).
  p.S = max(1, (n_keys + chunk - 1) / chunk);
  p.g = blockIdx.x / p.S, p.s = blockIdx.x % p.S;
  p.any = n_keys > 0;
  p.active = p.any && p.g < a.KVH;
  p.begin = p.first + p.s * chunk;
  p.end = min(p.begin + chunk, p.last + 1);
  p.active = p.active && p.begin < p.end;
  p.has_new = p.active && p.begin <= p.last && p.last < p.end;
  return p;
}

template <int D, class Kv>
__device__ __forceinline__ const typename Kv::T* cache_row(const MegaArgs& a, const void* layer_kv,
                                                           const int32_t* table, int j, int kv, int g) {
  return static_cast<const typename Kv::T*>(layer_kv) +
         kv_offset(table[j / a.block_size], kv, a.KVH, g, a.block_size, j % a.block_size, D);
}

// Keys [b0, b1) of group g (K and V rows, as stored) into kvs[key - b0][2][D] by cp.async; the new
// token's row (not in the cache yet) is skipped.
template <int D, class Kv>
__device__ void stage_keys(const MegaArgs& a, const void* layer_kv, const int32_t* table, int g, int b0, int b1,
                           int skip, unsigned char* kvs) {
  using T = typename Kv::T;
  constexpr int kPieces = D * static_cast<int>(sizeof(T)) / 16;
  const int n = (b1 - b0) * 2 * kPieces;
  for (int i = threadIdx.x; i < n; i += kThreads) {
    const int key = b0 + i / (2 * kPieces), kv = (i / kPieces) % 2, piece = i % kPieces;
    if (key == skip) continue;
    const T* src = cache_row<D, Kv>(a, layer_kv, table, key, kv, g) + piece * (16 / sizeof(T));
    cp_async16(kvs + ((static_cast<size_t>(key - b0) * 2 + kv) * D) * sizeof(T) + piece * 16, src);
  }
}

template <int D>
__device__ void merge_heads(const MegaArgs& a, float vs, int S, int h_begin, int h_end);

// a.attn[i] = A / Lsum (v's fp8 scale vs applied; 0 where no key has weight). attn holds bf16
// bits (bf16_t is uint16_t): assigned a __nv_bfloat16 directly it would take its value converted
// to an integer.
__device__ __forceinline__ void store_attn(const MegaArgs& a, int i, float A, float Lsum, float vs) {
  reinterpret_cast<__nv_bfloat16*>(a.attn)[i] = __float2bfloat16(Lsum > 0.f ? A / Lsum * vs : 0.f);
}

// The attention phase of one CTA (every thread calls it): its split's partials; the group's last
// split also merges them into a.attn. G: query heads per group the code takes (at least a.NH /
// a.KVH).
template <int D, class Kv, int G>
__device__ void attention(const MegaArgs& a, const MegaLayer& L, const void* layer_kv, const Split& p,
                          const int32_t* table, unsigned char* kvs, float* scratch, int li) {
  using T = typename Kv::T;
  constexpr int kG = G, kLanes = decode_lanes(kG, D), kE = D / kLanes, kGroups = kAttnThreads / kLanes;
  constexpr int kB = keys_per_batch<D>();
  float* qv = scratch;
  float* kn = qv + kG * D;
  float* vn = kn + D;
  float* sm_m = vn + D;               // [kG][kGroups]
  float* sm_l = sm_m + kG * kGroups;  // [kG][kGroups]
  float* sm_acc = sm_l + kG * kGroups;  // [kG][kGroups][D]
  float* sm_max = sm_acc + kG * kGroups * D;
  const int per_kv = a.NH / a.KVH, h0 = p.g * per_kv, nh = per_kv;
  const int warp = threadIdx.x >> 5, tid = threadIdx.x;

  // q (and, for the split ending at the new token, its k and v, which also go to the cache).
  QkvArgs q{a.qkv,     L.b_qkv,    L.q_norm,    L.k_norm,   a.inv_freq,
            a.positions, a.slots,  const_cast<void*>(layer_kv), 1,          a.NH,
            a.KVH,     D,          a.block_size, a.eps,      a.fp8,
            a.fp8 ? 1.f / L.k_scale : 1.f, a.fp8 ? 1.f / L.v_scale : 1.f};
  for (int r = warp; r < nh + (p.has_new ? 2 : 0); r += kWarps) {
    const bool is_q = r < nh, is_k = r == nh;
    const int head = is_q ? h0 + r : a.NH + (is_k ? 0 : a.KVH) + p.g;
    qkv_row_warp<Kv, true, (D + 63) / 64>(q, 0, head, is_q ? qv + r * D : (is_k ? kn : vn), p.has_new);
  }
  cp_async_wait_all();  // the first batch of keys (staged when the layer started)
  consumers_sync();
  mark(a, li, 15);  // q (k, v) and the first keys ready

  const float qs = rsqrtf(static_cast<float>(D)) * (a.fp8 ? L.k_scale : 1.f) * kLog2e;
  const int gid = tid / kLanes, sub = tid % kLanes;
  float qr[kG][kE], acc[kG][kE], m[kG], l[kG];
#pragma unroll
  for (int hd = 0; hd < kG; ++hd) {
#pragma unroll
    for (int i = 0; i < kE; ++i) qr[hd][i] = hd < nh ? qv[hd * D + sub * kE + i] * qs : 0.f, acc[hd][i] = 0.f;
    m[hd] = -INFINITY, l[hd] = 0.f;
  }
  for (int b0 = p.begin; b0 < p.end; b0 += kB) {
    const int b1 = min(b0 + kB, p.end);
    if (b0 != p.begin) {  // later batches (long contexts): staged now (the first one is in: above)
      consumers_sync();
      stage_keys<D, Kv>(a, layer_kv, table, p.g, b0, b1, p.has_new ? p.last : -1, kvs);
      cp_async_wait_all();
      consumers_sync();
    }
    if (tid < kAttnThreads) {
      const T* kt = reinterpret_cast<const T*>(kvs);
      for (int j0 = 0; j0 < b1 - b0; j0 += kGroups) {  // the same trip count for every group
        const int jj = j0 + gid, j = b0 + jj;
        const bool ok = jj < b1 - b0;
        float k[kE], v[kE];
        if (ok && p.has_new && j == p.last) {
#pragma unroll
          for (int i = 0; i < kE; ++i) k[i] = kn[sub * kE + i], v[i] = vn[sub * kE + i];
        } else if (ok) {
          load_f32<Kv, kE>(kt + (static_cast<size_t>(jj) * 2) * D + sub * kE, k);
          load_f32<Kv, kE>(kt + (static_cast<size_t>(jj) * 2 + 1) * D + sub * kE, v);
        } else {
#pragma unroll
          for (int i = 0; i < kE; ++i) k[i] = v[i] = 0.f;
        }
        attend_key<kG, kE, kLanes>(qr, k, v, ok, m, l, acc);
      }
    }
  }

  mark(a, li, 16);  // keys attended (thread 0's groups)
  // The groups' partial softmaxes meet in shared memory.
  if (tid < kAttnThreads) {
#pragma unroll
    for (int hd = 0; hd < kG; ++hd) {
      if (sub == 0) sm_m[hd * kGroups + gid] = m[hd], sm_l[hd * kGroups + gid] = l[hd];
#pragma unroll
      for (int i = 0; i < kE; ++i) sm_acc[(hd * kGroups + gid) * D + sub * kE + i] = acc[hd][i];
    }
  }
  consumers_sync();
  float weight = 0.f;  // thread hd * kGroups + i: group i's weight in head hd
  if (tid < kG * kGroups) {
    const int hd = tid / kGroups;
    float M = -INFINITY;
#pragma unroll
    for (int i = 0; i < kGroups; ++i) M = fmaxf(M, sm_m[hd * kGroups + i]);
    weight = M == -INFINITY ? 0.f : exp2f(sm_m[tid] - M);
    if (tid % kGroups == 0) sm_max[hd] = M;
  }
  consumers_sync();
  if (tid < kG * kGroups) sm_m[tid] = weight;
  consumers_sync();
  // This split's partial per head (sums A[D], max M, sum L; exp2 units) to ws; with one split, the
  // output itself.
  const float vs = a.fp8 ? L.v_scale : 1.f;
  for (int e = tid; e < nh * D; e += kThreads) {
    const int hd = e / D, d = e % D, h = h0 + hd;
    float Lsum = 0.f, A = 0.f;
#pragma unroll
    for (int i = 0; i < kGroups; ++i) Lsum += sm_l[hd * kGroups + i] * sm_m[hd * kGroups + i];
#pragma unroll 8
    for (int i = 0; i < kGroups; ++i) A += sm_acc[(hd * kGroups + i) * D + d] * sm_m[hd * kGroups + i];
    if (p.S == 1) {
      store_attn(a, h * D + d, A, Lsum, vs);
      continue;
    }
    float* w = a.ws + (static_cast<int64_t>(h) * a.s_max + p.s) * (D + 2);
    w[d] = A;
    if (d == 0) w[D] = sm_max[hd], w[D + 1] = Lsum;
  }
  if (p.S == 1) return;
  // The group's last split to arrive merges the group's heads (split_of leaves no split of a group
  // without keys: all S arrive). Its arrival (an acq_rel add on the group's counter, which grows by
  // S a layer) orders the other splits' partials before its reads, as grid_sync does. One CTA a
  // group reading S partials a head costs one L2 round trip more here, against every CTA merging
  // every head while it staged the O phase's input (6.6 us a 1B layer, session 27).
  __shared__ int last;
  consumers_sync();  // this CTA's partials are out
  if (tid == 0) {
    unsigned old;
    asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;" : "=r"(old) : "l"(a.barrier + 1 + p.g) : "memory");
    last = old + 1 == static_cast<unsigned>((li + 1) * p.S);
  }
  consumers_sync();
  if (last) merge_heads<D>(a, vs, p.S, h0, h0 + nh);
}

// a.attn[h * D ..] for heads [h_begin, h_end): their S splits' partials from ws merged (other
// CTAs wrote them; row s: A[D], max, sum). Each warp merges kHB heads at once: lane s reads split
// s's max and sum, every lane its D / 32 values of each split (float2 loads); the maxima, the sums
// and the first 8 splits' values of all kHB heads go out in one round trip.
template <int D>
__device__ void merge_heads(const MegaArgs& a, float vs, int S, int h_begin, int h_end) {
  constexpr int kE = D / 32, kBatch = 8, kHB = D == 64 ? 3 : 2;  // heads a warp merges at once (4 spilled at D = 64)
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int h0 = h_begin + warp; h0 < h_end; h0 += kHB * kWarps) {
    const float* w0[kHB];
    bool on[kHB];  // the same in every lane
#pragma unroll
    for (int hb = 0; hb < kHB; ++hb) {
      const int h = h0 + hb * kWarps;
      on[hb] = h < h_end;
      w0[hb] = a.ws + static_cast<int64_t>(on[hb] ? h : 0) * a.s_max * (D + 2);
    }
    float2 v[kHB][kBatch][kE / 2];
    auto load = [&](int s0) {
#pragma unroll
      for (int hb = 0; hb < kHB; ++hb)
#pragma unroll
        for (int i = 0; i < kBatch; ++i)
#pragma unroll
          for (int j = 0; j < kE / 2; ++j)
            v[hb][i][j] = on[hb] && s0 + i < S
                              ? __ldcg(reinterpret_cast<const float2*>(w0[hb] + (s0 + i) * (D + 2) + lane * kE) + j)
                              : make_float2(0.f, 0.f);
    };
    load(0);
    float m[kHB], l[kHB], sc[kHB], Lsum[kHB], acc[kHB][kE];
#pragma unroll
    for (int hb = 0; hb < kHB; ++hb) {
      m[hb] = -INFINITY, l[hb] = 0.f;
      if (on[hb] && lane < S) m[hb] = __ldcg(w0[hb] + lane * (D + 2) + D), l[hb] = __ldcg(w0[hb] + lane * (D + 2) + D + 1);
    }
#pragma unroll
    for (int hb = 0; hb < kHB; ++hb) {
      const float M = warp_max(m[hb]);
      sc[hb] = M == -INFINITY ? 0.f : exp2f(m[hb] - M);  // split `lane`'s weight
      Lsum[hb] = warp_sum(l[hb] * sc[hb]);
#pragma unroll
      for (int i = 0; i < kE; ++i) acc[hb][i] = 0.f;
    }
    for (int s0 = 0; s0 < S; s0 += kBatch) {
      if (s0) load(s0);
#pragma unroll
      for (int hb = 0; hb < kHB; ++hb)
#pragma unroll
        for (int i = 0; i < kBatch; ++i) {
          const float c = __shfl_sync(0xffffffffu, sc[hb], (s0 + i) & 31);
#pragma unroll
          for (int j = 0; j < kE / 2; ++j) acc[hb][2 * j] += c * v[hb][i][j].x, acc[hb][2 * j + 1] += c * v[hb][i][j].y;
        }
    }
#pragma unroll
    for (int hb = 0; hb < kHB; ++hb)
      if (on[hb])
#pragma unroll
        for (int i = 0; i < kE; ++i)
          store_attn(a, (h0 + hb * kWarps) * D + lane * kE + i, acc[hb][i], Lsum[hb], vs);
  }
}

// xs = the attention's output (the groups' last splits merged it into a.attn); zeros when the step
// has no keys.
__device__ void stage_attention(const MegaArgs& a, const Split& p, __nv_bfloat16* xs) {
  if (p.any) return stage_copy(a.attn, a.NH * a.D, xs);
  for (int i = threadIdx.x; i < a.NH * a.D; i += kThreads) xs[i] = __float2bfloat16(0.f);
}

template <int D, class Kv, int G>
__global__ void __launch_bounds__(kBlock, 1) mega_kernel(MegaArgs a) {
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ float red[32];
  __shared__ Gemv geo[kPhases];
  uint64_t* full = reinterpret_cast<uint64_t*>(smem);
  unsigned char* ring = smem + a.ring_off;
  __nv_bfloat16* xs = reinterpret_cast<__nv_bfloat16*>(smem + a.xs_off);
  float* scratch = reinterpret_cast<float*>(smem + a.xs_off);  // the attention's (xs is not in use then)
  float* parts = reinterpret_cast<float*>(smem + a.parts_off);
  unsigned char* kvs = smem + a.kvs_off;
  int32_t* tbl = reinterpret_cast<int32_t*>(smem + a.tbl_off);
  float* own = reinterpret_cast<float*>(smem + a.own_off);
  const int tid = threadIdx.x;
  // The layers' pointers in shared memory: the producer looks them up for every chunk, and a
  // global load there (an L2 round trip behind the weight stream) measured ~2 us per chunk.
  MegaLayer* layers = reinterpret_cast<MegaLayer*>(smem + a.layers_off);
  uint64_t* empty = full + kMaxStages;  // a stage's consumer warps have read it
  for (int i = tid; i < a.n_layers; i += kBlock) layers[i] = a.layers[i];
  if (tid < kPhases) geo[tid] = geometry(a, tid);
  if (tid == 0) {
    for (int i = 0; i < a.stages; ++i) mbar_init(full + i, 1), mbar_init(empty + i, kWarps);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();  // the only barrier the producer warp takes part in
  if (tid >= kThreads) {
    if (tid == kThreads) Producer::run(a, layers, geo, ring, full, empty);
    return;
  }
  prefetch_l2_range(a.inv_freq, sizeof(float) * a.D / 2);
  prefetch_layer(a, layers[0]);

  const Split sp = split_of<D>(a);
  // The step's block table row (sequence 0) in shared memory: stage_keys looks up a block for each
  // 16-byte piece it copies, and from global memory those dependent round trips before each
  // cp.async held the CTAs that attend back ~1.5 us at every layer's start (session 27).
  const int32_t* table = a.tables;
  if (sp.last / a.block_size < kTableCap) {
    for (int i = tid; i <= sp.last / a.block_size; i += kThreads) tbl[i] = a.tables[i];
    table = tbl;
  }
  // This CTA's rows of x: O and down both have H output rows, so the same CTA writes the same rows
  // of x in both, and no other CTA writes them. It keeps them here and adds to them without
  // reading x back (an L2 round trip before every O and down barrier).
  for (int i = tid; i < geo[kO].n1 - geo[kO].n0; i += kThreads) own[i] = a.x[geo[kO].n0 + i];
  consumers_sync();
  unsigned target = 0;
  int slot = 0;
  uint32_t parity = 0;  // of the stage at slot: flips each time the ring wraps
  ChunkClock clk;
  const bool timed = a.times && (tid == 0 || tid == 32);
  for (int li = 0; li < a.n_layers; ++li) {
    const MegaLayer& L = layers[li];
    const void* layer_kv = static_cast<const unsigned char*>(a.kv_base) + li * a.kv_layer_bytes;
    mark(a, li, 0);
    const long long layer_clock = timed ? clock64() : 0;
    if (li + 1 < a.n_layers) prefetch_layer(a, layers[li + 1]);
    // This layer's cached keys depend on nothing of this step: their loads go out now (issued
    // after the QKV phase's input instead, they measured the same: session 28).
    if (sp.active && !a.probe)
      stage_keys<D, Kv>(a, layer_kv, table, sp.g, sp.begin, min(sp.begin + keys_per_batch<D>(), sp.end),
                        sp.has_new ? sp.last : -1, kvs);
    cp_async_commit();
    for (int phase = 0; phase < kPhases; ++phase) {
      const Gemv g = gemv_of(geo, L, phase);
      // The phase's input, in shared memory as bf16.
      if (a.probe)
        ;
      else if (phase == kQkv)
        stage_norm(a.x, L.attn_norm, a.H, a.eps, xs, red);
      else if (phase == kO)
        stage_attention(a, sp, xs);
      else if (phase == kGateUp)
        stage_norm(a.x, L.mlp_norm, a.H, a.eps, xs, red);
      else
        stage_copy(a.act, a.I, xs);
      consumers_sync();
      mark(a, li, 1 + 3 * phase + (phase > kQkv ? 2 : 0));  // staged: 1, 6, 9, 12
      const int P = (g.n1 - g.n0) * g.R;  // pieces of this CTA in the phase
      LaneX lx;
      load_lane_x(g, reinterpret_cast<const unsigned char*>(xs), lx);
      for (int c = 0; c < g.chunks; ++c) {
        if (timed) clk.t = clock64();
        mbar_wait(full + slot, parity);
        clk.lap(timed, clk.wait);
        const int rows = min(g.rc, g.n1 - g.n0 - c * g.rc);
        if (a.probe != 1)
          mma_sum(g, lx, ring + static_cast<size_t>(slot) * a.stage_bytes, rows, c * g.rc, P, parts);
        __syncwarp();
        if ((tid & 31) == 0) mbar_arrive(empty + slot);  // this warp is done with the stage
        clk.lap(timed, clk.sums);
        if (++slot == a.stages) slot = 0, parity ^= 1;
      }
      consumers_sync();  // every warp's partial sums are in
      // This CTA's outputs, the warps' and segments' partial sums added in a fixed order.
      for (int i = tid; !a.probe && i < g.n1 - g.n0; i += kThreads) {
        float v0 = 0.f, v1 = 0.f;
        for (int w = 0; w < kWarps; ++w) {
          const float* pw = parts + (w * P + i * g.R) * g.S;
          for (int seg = 0; seg < g.S; ++seg) v0 += pw[seg];
          if (g.R == 2)
            for (int seg = 0; seg < g.S; ++seg) v1 += pw[g.S + seg];
        }
        const int n = g.n0 + i;
        if (phase == kQkv)
          a.qkv[n] = v0;
        else if (phase == kGateUp)
          reinterpret_cast<__nv_bfloat16*>(a.act)[n] = __float2bfloat16(silu(v0) * v1);
        else
          a.x[n] = own[i] += v0;  // O and down: this CTA's rows of x (own)
      }
      const int m0 = 2 + 3 * phase + (phase > kQkv ? 2 : 0);
      mark(a, li, m0);  // computed: 2, 7, 10, 13
      if (a.probe) continue;
      grid_sync(a.barrier, target += gridDim.x);
      mark(a, li, m0 + 1);  // passed the barrier: 3, 8, 11, 14
      if (phase == kQkv) {
        if (sp.active) attention<D, Kv, G>(a, L, layer_kv, sp, table, kvs, scratch, li);
        mark(a, li, 4);  // attention done
        grid_sync(a.barrier, target += gridDim.x);
        mark(a, li, 5);
      }
    }
    clk.store(a, li, layer_clock);
  }
}

template <int D, class Kv, int G>
void* kernel_of() {
  return reinterpret_cast<void*>(mega_kernel<D, Kv, G>);
}
template <int G>
void* pick_g(const MegaArgs& a) {
  if (a.D == 64) return a.fp8 ? kernel_of<64, Fp8Kv, G>() : kernel_of<64, Bf16Kv, G>();
  return a.fp8 ? kernel_of<128, Fp8Kv, G>() : kernel_of<128, Bf16Kv, G>();
}
void* pick(const MegaArgs& a) {
  return group_heads(a) == 4 ? pick_g<4>(a) : pick_g<kMaxG>(a);
}

size_t align128(size_t n) {
  return (n + 127) / 128 * 128;
}

}  // namespace

std::string mega_prepare(MegaArgs& a) {
  if (a.D != 64 && a.D != 128) return "head_dim " + std::to_string(a.D) + " (64 or 128 only)";
  if (a.KVH <= 0 || a.NH % a.KVH != 0 || a.NH / a.KVH > kMaxG)
    return std::to_string(a.NH / std::max(a.KVH, 1)) + " query heads per KV head (at most 8)";
  const int q_dim = a.NH * a.D;
  if (a.H % 8 || q_dim % 8 || a.I % 8 || a.H > kMaxHidden)
    return "hidden " + std::to_string(a.H) + " / intermediate " + std::to_string(a.I) + " (multiples of 8, hidden <= 8192)";
  a.group_heads = group_heads(a);
  int device = 0, sms = 0, optin = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  int coop = 0;
  cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device);
  if (!coop) return "the device has no cooperative launch";
  a.grid = sms;
  a.s_max = std::max(1, std::min(kMaxSplits, sms / a.KVH));
  a.stage_bytes = static_cast<int>(align128(std::max<size_t>({size_t(kStageMin), size_t(4) * a.H, size_t(2) * a.I, size_t(2) * q_dim})));
  // Per-(warp, row, segment) sums: the most any phase leaves (warps x rows per CTA x R x segments).
  size_t parts = 0;
  for (int p = 0; p < kPhases; ++p) {  // every CTA's row count: (N + grid - 1) / grid at most
    const PhaseShape shape = phase_shape(a, p);
    const int most = (shape.N + sms - 1) / sms, rc = rows_per_chunk(a, shape);
    for (int rows = 1; rows <= most; ++rows) {
      const int S = segments_of(shape.R * std::min(rc, rows));
      parts = std::max(parts, size_t(kWarps) * rows * shape.R * S);
      if ((blocks_per_segment(shape.K, S) + kWarps - 1) / kWarps > kXBlocks)
        return "weight rows of " + std::to_string(shape.K) + " inputs (too long for the inputs in registers)";
    }
  }
  if (parts > kPartsCap) return "too many output rows per SM";
  const size_t xs = align128(size_t(2) * std::max({a.H, q_dim, a.I}));
  const size_t attn = align128(a.D == 64 ? std::max(attn_scratch_bytes<64, 4>(), attn_scratch_bytes<64, kMaxG>())
                                         : std::max(attn_scratch_bytes<128, 4>(), attn_scratch_bytes<128, kMaxG>()));
  const size_t kvs = align128(size_t(keys_per_batch<64>()) * 64 / a.D * 2 * a.D * (a.fp8 ? 1 : 2));
  const size_t bars = 2 * kMaxStages * sizeof(uint64_t), layers = align128(sizeof(MegaLayer) * a.n_layers);
  const size_t table = align128(sizeof(int32_t) * kTableCap);
  const size_t own = align128(sizeof(float) * ((a.H + sms - 1) / sms));  // a CTA's rows of x
  const size_t fixed = bars + std::max(xs, attn) + align128(parts * sizeof(float)) + kvs + layers + table + own;
  cudaFuncAttributes attr{};
  cudaFuncGetAttributes(&attr, pick(a));
  const size_t budget = size_t(optin) - attr.sharedSizeBytes;
  if (fixed + 2 * size_t(a.stage_bytes) > budget) return "not enough shared memory for two weight stages";
  a.stages = static_cast<int>(std::min<size_t>(kMaxStages, (budget - fixed) / a.stage_bytes));
  if (a.max_stages >= 2) a.stages = std::min(a.stages, a.max_stages);
  a.ring_off = static_cast<int>(bars);
  a.xs_off = a.ring_off + a.stages * a.stage_bytes;
  a.parts_off = a.xs_off + static_cast<int>(std::max(xs, attn));
  a.kvs_off = a.parts_off + static_cast<int>(align128(parts * sizeof(float)));
  a.layers_off = a.kvs_off + static_cast<int>(kvs);
  a.tbl_off = a.layers_off + static_cast<int>(layers);
  a.own_off = a.tbl_off + static_cast<int>(table);
  a.smem_bytes = a.own_off + static_cast<int>(own);
  if (cudaFuncSetAttribute(pick(a), cudaFuncAttributeMaxDynamicSharedMemorySize, a.smem_bytes) != cudaSuccess)
    return "cannot allow " + std::to_string(a.smem_bytes) + " bytes of shared memory";
  int per_sm = 0;
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, reinterpret_cast<void (*)(MegaArgs)>(pick(a)), kBlock,
                                                a.smem_bytes);
  if (per_sm < 1) return "a CTA of " + std::to_string(kBlock) + " threads and " + std::to_string(a.smem_bytes) + " bytes does not fit on an SM";
  return "";
}

void decode_mega(const MegaArgs& a, cudaStream_t s) {
  cudaMemsetAsync(a.barrier, 0, sizeof(unsigned) * (1 + a.KVH), s);
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeCooperative;
  attr[0].val.cooperative = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(a.grid);
  cfg.blockDim = dim3(kBlock);
  cfg.dynamicSmemBytes = a.smem_bytes;
  cfg.stream = s;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  cudaLaunchKernelEx(&cfg, reinterpret_cast<void (*)(MegaArgs)>(pick(a)), a);
}

}  // namespace baton::cuda
