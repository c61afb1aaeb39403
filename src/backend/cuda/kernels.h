// The CUDA backend's kernels, as plain launch functions (the .cu files hold the kernels; the
// backend's host code is ordinary C++). All pointers are device pointers; every launch goes on
// `stream` and returns at once. Shapes follow the CPU backend (backend/cpu): row-major,
// tokens outer.
//
// Dtypes: weights and GEMM inputs bf16; the residual stream, GEMM outputs and logits fp32;
// the KV cache bf16 or fp8 e4m3 (value / per-layer scale).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

namespace baton::cuda {

using bf16_t = uint16_t;  // __nv_bfloat16's bits; the host code never does arithmetic on it

// x[t, :] = embed[tokens[t], :] (bf16 -> fp32).
void embed(const int32_t* tokens, const bf16_t* table, float* x, int T, int hidden, cudaStream_t s);

// out[r, :] = rmsnorm(x[rows ? rows[r] : r, :]) * w, as bf16. rows selects which rows of x.
void rmsnorm(const float* x, const int32_t* rows, const float* w, bf16_t* out, int n_rows, int hidden, float eps,
             cudaStream_t s);

// Per token, for the rows of qkv[T, (H + 2 KVH) * D] (fp32, the QKV GEMM's output):
// + bias, QK-norm (when q_norm), RoPE at positions[t] (rotate-half, inv_freq[D/2]); q is written
// back in place; k and v go to the paged cache at slot slots[t] (block * block_size + offset;
// -1 skips the token) in layer_kv [blocks][2][KVH][block_size][D].
struct QkvArgs {
  float* qkv;
  const float* bias;    // [(H + 2 KVH) * D] or null
  const float* q_norm;  // [D] or null
  const float* k_norm;  // [D]
  const float* inv_freq;
  const int32_t* positions;
  const int32_t* slots;
  void* layer_kv;
  int T, H, KVH, D, block_size;
  float eps;
  bool fp8;                        // cache dtype: fp8 e4m3, else bf16
  float k_inv_scale, v_inv_scale;  // fp8: 1 / scale
};
void qkv_rope_cache(const QkvArgs& a, cudaStream_t s);

// Paged attention. Token t (a query row of q) belongs to a sequence whose block table is
// tables[seq_of[t] * (*table_stride) ...] and sits at position positions[t]: it attends to
// positions [max(0, pos - window + 1), pos] of that sequence (window 0: all).
struct AttnArgs {
  const float* q;  // [T, row_stride], heads first, pre-RoPE'd
  int q_row_stride;
  const void* layer_kv;
  const int32_t* tables;
  const int32_t* table_stride;  // device scalar, so that captured graphs follow the step's width
  const int32_t* seq_of;        // [T]
  const int32_t* positions;     // [T]; a negative position marks a padding row (output zeros)
  bf16_t* out;                  // [T, H * D]
  int T, H, KVH, D, block_size, window;
  bool fp8;
  float scale;             // 1 / sqrt(D)
  float k_scale, v_scale;  // KV dequantization (1 for bf16)
  int heads_per_cta = 1;   // attention_decode: query heads (of one KV group) a CTA takes
  bool mma = false;         // fused decode: the tensor-core kernel (decode_mma_supported), a CTA per KV group
};
// The tensor-core decode kernel's splits take at least this many keys each: 256 measured 1-4%
// faster than 64 at batch 32 and 64 (fewer partials to merge).
constexpr int kMmaSplitKeys = 256;
// Decode-shaped (any T, best when each sequence adds one token): one CTA per (a.heads_per_cta
// query heads of one KV group, token, split), which reads each K/V row once for all of them; the
// keys of a row are cut into n_splits ranges whose partial softmaxes are merged through
// `workspace` (T * H * n_splits * (D + 2) floats) by the last split to finish, counted in
// `arrivals` (T * H ints, zero before the first call; each call leaves them zero). Both are
// unused when n_splits == 1. fuse (steps where every sequence adds one token): q, k and v are
// a.q's raw rows, and the kernel does qkv_rope_cache(*fuse)'s work itself; null: a.q is ready.
void attention_decode(const AttnArgs& a, int n_splits, float* workspace, int* arrivals, const QkvArgs* fuse,
                      cudaStream_t s);
// How many CTAs of the fused decode kernel for head size D and that many heads per CTA fit on
// one SM of the current device at once (at least 1).
int decode_ctas_per_sm(int D, bool fp8, int heads_per_cta);
// Whether the tensor-core decode kernel (AttnArgs::mma: one CTA per (KV group, token, split), the
// group's query heads as the rows of bf16 mma.sync; for steps of many tokens, where the CUDA-core
// kernel is bound by its instructions) serves this shape: head size 64 or 128, at most 16 query
// heads per KV head. Its CTAs per SM, as decode_ctas_per_sm (also allows its shared memory on the
// current device: call before launching it there).
bool decode_mma_supported(int H, int KVH, int D);
int decode_mma_ctas_per_sm(int D, bool fp8);
// The query heads per decode CTA for a model of H query heads over KVH KV heads of size D: a KV
// group's heads in as few CTAs as take at most max_heads (<= 4) each (1 for head sizes other than
// 64 and 128).
int decode_heads_per_cta(int H, int KVH, int D, int max_heads);
// Prefill-shaped: a CTA takes up to 64 consecutive query rows of one sequence (a tile) and one
// head, and streams that sequence's keys through shared memory once for all of them.
// tiles[i] = {first row, number of rows} (rows of one sequence, consecutive positions).
// Head sizes 64 and 128 use tensor cores (bf16 mma.sync: S = QK^T and O += PV, fp32 accumulate,
// online softmax in fp32); 16, 32 and 256 a CUDA-core kernel. attention_decode serves every size.
constexpr int kPrefillTileRows = 64;
void attention_prefill(const AttnArgs& a, const int2* tiles, int n_tiles, cudaStream_t s);
bool prefill_kernel_supports(int head_dim);

// Skinny GEMMs for steps of at most kGemvMaxRows tokens (small-batch decode), where a GEMM is a
// pass over the weights: up to kGemvDotRows rows each warp streams whole weight rows (16-byte
// loads, several in flight) against the step's few input rows, staged once per CTA in shared
// memory as bf16; above, tensor cores (mma) take 16 weight rows at a time. The input is
// either bf16 rows or rows of the fp32 residual stream that the kernel RMS-normalises itself (so
// the norm costs no launch of its own), and the output is fp32 (stored, or added into: the residual
// add) or, for the MLP's gate/up weight, silu(gate) * up as bf16 (so SiLU-and-mul costs none
// either). Numerics as rmsnorm + cuBLAS: bf16 products, fp32 sums.
constexpr int kGemvMaxRows = 8;
constexpr int kGemvDotRows = 4;  // up to this many rows: CUDA-core dot products; above: tensor cores
enum class GemvKind {
  kNormStore,    // out = rmsnorm(x) W^T
  kNormSiluMul,  // act = silu(rmsnorm(x) Wg^T) * (rmsnorm(x) Wu^T); W = [Wg; Wu], each [N, K]
  kAccumulate,   // out = beta * out + in W^T (beta 0: out is not read)
};
struct GemvArgs {
  GemvKind kind;
  const bf16_t* w;  // [N, K] row-major (kNormSiluMul: [2N, K])
  int M, N, K;
  const bf16_t* in;     // kAccumulate: [M, K]
  const float* x;       // the norm kinds: the residual stream, rows of K
  const int32_t* rows;  // which rows of x (null: 0 .. M-1)
  const float* norm_w;  // [K]
  float eps;
  float* out;  // [M, N] fp32
  float beta;
  bf16_t* act;  // kNormSiluMul: [M, N] bf16
  int in_stride;  // kAccumulate: elements between rows of `in` (0: K)
};
// Whether gemv() takes M rows of K inputs (K a multiple of 8, of 32 above kGemvDotRows rows; the
// rows fit in shared memory).
bool gemv_supported(int M, int K);
void gemv(const GemvArgs& a, cudaStream_t s);
// Once per device, before the first gemv() on it (allows the shared memory large inputs need).
void gemv_init();

// Whether our kernels launched from this thread use programmatic dependent launch (common.cuh);
// off until set.
void set_pdl(bool on);

// out[i] = (add ? out[i] : 0) + the pairwise tree sum ((p0 + p1) + (p2 + p3)) + ... of
// parts[p * stride + i], p < n (n a power of two <= 8): --tp-invariant's sum of GEMM slices.
void tree_sum(const float* parts, int n, size_t stride, float* out, size_t count, bool add, cudaStream_t s);

// act[t, i] = silu(gu[t, i]) * gu[t, I + i], as bf16.
void silu_mul(const float* gate_up, bf16_t* act, int T, int I, cudaStream_t s);

// Sampling on the device, one row of logits [rows, V] each. temperature 0: argmax (first
// maximum). Else softmax(logits / temperature) limited to the top_k best (0: all) and then to
// the smallest best set holding top_p of the mass, sampled with Philox(seed, offset).
struct SampleParams {
  float temperature;
  int top_k;
  float top_p;
  uint32_t pad;
  uint64_t seed;
  uint64_t offset;
};
// Greedy rows are reduced by `splits` CTAs each: best holds rows * splits (value, index) pairs,
// arrivals a counter per row (zero before the first call; each call leaves them zero).
constexpr int kGreedySplits = 16;
struct SampleScratch {
  float2* best;
  int* arrivals;
  int sms = 0;  // the device's multiprocessors: CTAs per greedy row follow from them and the rows
};
void sample(const float* logits, const SampleParams* params, int32_t* out, int rows, int V, SampleScratch ws,
            cudaStream_t s);

}  // namespace baton::cuda
