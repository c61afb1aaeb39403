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
  bool fp8;                  // cache dtype: fp8 e4m3, else bf16
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
};
// Decode-shaped (any T, best when each sequence adds one token): one CTA per (head, token,
// split); the keys of a row are cut into n_splits ranges whose partial softmaxes are merged
// through `workspace` (T * H * n_splits * (D + 2) floats; unused when n_splits == 1).
void attention_decode(const AttnArgs& a, int n_splits, float* workspace, cudaStream_t s);
// Prefill-shaped: a CTA takes up to 64 consecutive query rows of one sequence (a tile) and one
// head, and streams that sequence's keys through shared memory once for all of them.
// tiles[i] = {first row, number of rows} (rows of one sequence, consecutive positions).
// Head sizes 64 and 128 use tensor cores (bf16 WMMA: S = QK^T and O += PV, fp32 accumulate,
// online softmax in fp32); 16, 32 and 256 a CUDA-core kernel. attention_decode serves every size.
constexpr int kPrefillTileRows = 64;
void attention_prefill(const AttnArgs& a, const int2* tiles, int n_tiles, cudaStream_t s);
bool prefill_kernel_supports(int head_dim);

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
void sample(const float* logits, const SampleParams* params, int32_t* out, int rows, int V, cudaStream_t s);

}  // namespace baton::cuda
