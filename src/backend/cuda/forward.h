// One rank's forward pass for a staged step: the kernels and GEMMs of every layer, enqueued on the
// stream (eagerly, or into a decode graph being captured), and the choices that depend only on
// the step's shape: skinny GEMMs or cuBLAS, which decode attention kernel, how many key splits.
//
// Data flow of one layer, T tokens (x: fp32 residual stream [T, hidden]):
//   h = rmsnorm(x) (bf16) -> qkv = h Wqkv^T (fp32) -> bias, QK-norm, RoPE, K/V into the cache
//   -> attention (bf16 out) -> x += attn Wo^T (the GEMM adds into x: beta = 1, so the residual add
//   costs nothing) -> h = rmsnorm(x) -> gate_up = h Wgu^T -> act = silu(gate) * up (bf16)
//   -> x += act Wdown^T.
// Steps of at most kGemvMaxRows tokens (small-batch decode) take a shorter path: the skinny GEMMs
// (gemv.cu) compute the RMSNorm in their prologue and SiLU-and-mul in their epilogue, so a layer
// is norm+QKV, attention, O, norm+gate/up+SiLU, down; their kernels use programmatic dependent
// launch (only there does it pay: beside cuBLAS at batch 64 it measured slower). In decode steps
// (one new token per sequence) the attention kernel also does the bias, QK-norm, RoPE and cache
// write.
#pragma once

#include <memory>

#include "backend/backend.h"
#include "backend/cuda/device.h"
#include "backend/cuda/linear.h"
#include "backend/cuda/staging.h"
#include "backend/cuda/weights.h"

namespace baton::cuda {

// This rank's slice of the paged KV pool: layer l at base + l * layer_bytes. Forward keeps a
// reference: the pool is allocated after the activations, from what they leave.
struct KvPool {
  void* base = nullptr;
  size_t layer_bytes = 0;
  int block_size = 16;
  bool fp8 = false;
};

class Forward {
 public:
  // full: the model's config; local: this rank's heads and MLP width. cap_tokens / cap_rows: the
  // most tokens of a pass and logits rows of a step (the activations are sized for them).
  static Result<std::unique_ptr<Forward>> create(const ModelConfig& full, const ModelConfig& local, const Rank& rank,
                                                 const ModelWeights& weights, Linear& linear, const StepInputs& in,
                                                 const KvPool& kv, const CudaPaths& paths, int cap_tokens,
                                                 int cap_rows, cudaStream_t stream, DeviceArena& mem);

  // Enqueues the model for T staged tokens and the logits of n_rows rows (identity_rows: rows
  // 0 .. n_rows - 1, as in decode graphs; else the staged logits rows). decode: every sequence adds
  // one token (the fused attention path). n_splits: splits_for's; n_tiles: the staged prefill tiles.
  Status enqueue(int T, int n_rows, bool identity_rows, bool decode, int n_splits, int n_tiles);
  // Whether a step of T tokens runs its GEMMs as skinny GEMMs.
  bool use_skinny(int T) const;
  // Key splits for decode attention over T tokens whose longest sequence has max_keys keys (0:
  // any, as in graphs): enough CTAs for one wave of the kernel.
  int splits_for(int T, int max_keys) const;
  // Skinny GEMMs for steps of at most this many tokens (kGemvMaxRows; kGemvDotRows captures the
  // same decode graph on cuBLAS beyond the dot-product kernel's rows).
  void set_skinny_rows(int rows) { skinny_rows_ = rows; }
  const float* logits() const { return logits_; }

 private:
  Forward(const ModelConfig& full, const ModelConfig& local, const Rank& rank, const ModelWeights& weights,
          Linear& linear, const StepInputs& in, const KvPool& kv, cudaStream_t stream)
      : full_(full), cfg_(local), rank_(rank), w_(weights), linear_(linear), in_(in), kv_(kv), stream_(stream) {}
  // Decode attention: query heads of a KV group per CTA; tensor cores from attn_mma_tokens_ on.
  bool attn_mma(int T) const { return attn_mma_tokens_ > 0 && T >= attn_mma_tokens_; }

  const ModelConfig &full_, &cfg_;
  Rank rank_;
  const ModelWeights& w_;
  Linear& linear_;
  StepInputs in_;
  const KvPool& kv_;
  cudaStream_t stream_;
  bool skinny_gemms_ = true;
  int skinny_rows_ = kGemvMaxRows;
  int num_sms_ = 0;
  int attn_heads_per_cta_ = 1, attn_mma_tokens_ = 0;
  int attn_resident_[3] = {1, 1, 1};  // fused decode CTAs that fit at once: a head per CTA, grouped, tensor cores
  float *x_ = nullptr, *qkv_ = nullptr, *gate_up_ = nullptr, *logits_ = nullptr, *attn_ws_ = nullptr;
  bf16_t *h_ = nullptr, *attn_ = nullptr, *act_ = nullptr;
  int* attn_arrivals_ = nullptr;  // split-K decode attention: splits finished per (token, head)
  size_t attn_ws_rows_ = 0;
};

}  // namespace baton::cuda
