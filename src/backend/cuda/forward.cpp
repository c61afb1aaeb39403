// One rank's forward pass (forward.h).
#include "backend/cuda/forward.h"

#include <algorithm>
#include <cmath>

namespace baton::cuda {

Result<std::unique_ptr<Forward>> Forward::create(const ModelConfig& full, const ModelConfig& c, const Rank& rank,
                                                 const ModelWeights& weights, Linear& linear, const StepInputs& in,
                                                 const KvPool& kv, const CudaPaths& paths, int cap_tokens,
                                                 int cap_rows, cudaStream_t stream, DeviceArena& mem) {
  std::unique_ptr<Forward> f(new Forward(full, c, rank, weights, linear, in, kv, stream));
  const int D = c.head_dim, H = c.hidden_size, qkv_n = c.q_dim() + 2 * c.kv_dim(), I = c.intermediate_size;
  f->skinny_gemms_ = paths.skinny_gemms;
  f->attn_mma_tokens_ = decode_mma_supported(c.num_heads, c.num_kv_heads, D) ? paths.attn_mma_tokens : 0;
  f->attn_heads_per_cta_ = decode_heads_per_cta(c.num_heads, c.num_kv_heads, D, paths.attn_group_heads);
  BATON_CU(cudaDeviceGetAttribute(&f->num_sms_, cudaDevAttrMultiProcessorCount, rank.device));
  f->attn_resident_[0] = f->num_sms_ * decode_ctas_per_sm(D, kv.fp8, 1);
  f->attn_resident_[1] = f->num_sms_ * decode_ctas_per_sm(D, kv.fp8, f->attn_heads_per_cta_);
  f->attn_resident_[2] = f->num_sms_ * decode_mma_ctas_per_sm(D, kv.fp8);
  BATON_ASSIGN_OR_RETURN(f->x_, mem.alloc<float>(size_t(cap_tokens) * H));
  BATON_ASSIGN_OR_RETURN(f->h_, mem.alloc<bf16_t>(size_t(cap_tokens) * H));
  BATON_ASSIGN_OR_RETURN(f->qkv_, mem.alloc<float>(size_t(cap_tokens) * qkv_n));
  BATON_ASSIGN_OR_RETURN(f->attn_, mem.alloc<bf16_t>(size_t(cap_tokens) * c.q_dim()));
  BATON_ASSIGN_OR_RETURN(f->gate_up_, mem.alloc<float>(size_t(cap_tokens) * 2 * I));
  BATON_ASSIGN_OR_RETURN(f->act_, mem.alloc<bf16_t>(size_t(cap_tokens) * I));
  BATON_ASSIGN_OR_RETURN(f->logits_, mem.alloc<float>(size_t(cap_rows) * c.vocab_size));
  // (token, head, split) rows: splits_for fills one wave of at most 4 CTAs per SM, each of up to 4
  // heads, and takes fewer splits where a step's rows would not fit.
  f->attn_ws_rows_ = size_t(40) * f->num_sms_;
  BATON_ASSIGN_OR_RETURN(f->attn_ws_, mem.alloc<float>(f->attn_ws_rows_ * (D + 2)));
  BATON_ASSIGN_OR_RETURN(f->attn_arrivals_, mem.alloc<int>(f->attn_ws_rows_));
  BATON_CU(cudaMemsetAsync(f->attn_arrivals_, 0, sizeof(int) * f->attn_ws_rows_, stream));
  BATON_CU(cudaStreamSynchronize(stream));
  return f;
}

bool Forward::use_skinny(int T) const {
  const ModelConfig& c = cfg_;
  const int slices = std::max(linear_.slices(), 1);  // the O and down GEMMs' K per call
  return skinny_gemms_ && T <= skinny_rows_ && gemv_supported(T, c.hidden_size) &&
         gemv_supported(T, c.intermediate_size / slices) && gemv_supported(T, c.q_dim() / slices);
}

int Forward::splits_for(int T, int max_keys) const {
  // --tp-invariant: from the model's heads, so that every tp splits a head's keys alike.
  const bool invariant = linear_.slices() > 0;
  const int heads = invariant ? full_.num_heads : cfg_.num_heads;
  const int kv_heads = invariant ? full_.num_kv_heads : cfg_.num_kv_heads, per_kv = heads / kv_heads;
  const bool mma = attn_mma(T);
  const int hp = mma ? per_kv : attn_heads_per_cta_, ctas = T * kv_heads * ((per_kv + hp - 1) / hp);  // per split
  // One wave: as many CTAs as fit on the GPU at once, at most 4 per SM (a split more, rounding up,
  // left a second wave of a few CTAs that doubled the kernel's time at batch 1).
  const int target = std::min(4 * num_sms_, attn_resident_[mma ? 2 : hp > 1]);
  int s = std::clamp(target / ctas, 1, 32);
  const int split_keys = mma ? kMmaSplitKeys : 32;  // a key per group of lanes, a tile of 16 per warp
  if (max_keys > 0) s = std::min(s, std::max(1, (max_keys + split_keys - 1) / split_keys));
  while (s > 1 && size_t(T) * heads * s > attn_ws_rows_) --s;
  return s;
}

Status Forward::enqueue(int T, int n_rows, bool identity_rows, bool decode, int n_splits, int n_tiles) {
  const ModelConfig& c = cfg_;
  const int H = c.hidden_size, D = c.head_dim, I = c.intermediate_size, qkv_n = c.q_dim() + 2 * c.kv_dim();
  const bool skinny = use_skinny(T);
  set_pdl(skinny);
  embed(in_.tokens, w_.embed, x_, T, H, stream_);
  for (size_t li = 0; li < w_.layers.size(); ++li) {
    const LayerWeights& w = w_.layers[li];
    std::byte* layer_kv = static_cast<std::byte*>(kv_.base) + li * kv_.layer_bytes;
    if (skinny) {
      gemv({GemvKind::kNormStore, w.w_qkv, T, qkv_n, H, nullptr, x_, nullptr, w.attn_norm, c.rms_norm_eps, qkv_, 0.f,
            nullptr, 0},
           stream_);
    } else {
      rmsnorm(x_, nullptr, w.attn_norm, h_, T, H, c.rms_norm_eps, stream_);
      if (linear_.slices()) {  // q, k and v rows per slice
        BATON_RETURN_IF_ERROR(linear_.column_parallel_sliced(h_, w.w_qkv, 0, c.q_dim(), qkv_, qkv_n, 0, T, H));
        BATON_RETURN_IF_ERROR(
            linear_.column_parallel_sliced(h_, w.w_qkv, c.q_dim(), c.kv_dim(), qkv_, qkv_n, c.q_dim(), T, H));
        BATON_RETURN_IF_ERROR(linear_.column_parallel_sliced(h_, w.w_qkv, c.q_dim() + c.kv_dim(), c.kv_dim(), qkv_,
                                                             qkv_n, c.q_dim() + c.kv_dim(), T, H));
      } else {
        BATON_RETURN_IF_ERROR(linear_.gemm(h_, w.w_qkv, qkv_, T, qkv_n, H, 0.f));
      }
    }
    const bool fp8 = kv_.fp8;
    QkvArgs q{qkv_,
              w.b_qkv,
              w.q_norm,
              w.k_norm,
              w_.inv_freq,
              in_.positions,
              in_.slots,
              layer_kv,
              T,
              c.num_heads,
              c.num_kv_heads,
              D,
              kv_.block_size,
              c.rms_norm_eps,
              fp8,
              fp8 ? 1.f / w.k_scale : 1.f,
              fp8 ? 1.f / w.v_scale : 1.f};
    if (!decode) qkv_rope_cache(q, stream_);  // decode steps: the attention kernel does this itself
    AttnArgs a{qkv_,
               qkv_n,
               layer_kv,
               in_.tables,
               in_.table_stride,
               in_.seq_of,
               in_.positions,
               attn_,
               T,
               c.num_heads,
               c.num_kv_heads,
               D,
               kv_.block_size,
               c.sliding_window,
               fp8,
               1.f / std::sqrt(float(D)),
               fp8 ? w.k_scale : 1.f,
               fp8 ? w.v_scale : 1.f,
               attn_heads_per_cta_,
               decode && attn_mma(T)};
    if (decode || !prefill_kernel_supports(D))
      attention_decode(a, n_splits, attn_ws_, attn_arrivals_, decode ? &q : nullptr, stream_);
    else
      attention_prefill(a, in_.tiles, n_tiles, stream_);
    BATON_RETURN_IF_ERROR(linear_.row_parallel(attn_, w.wo, T, c.q_dim(), skinny, x_));
    if (skinny) {
      gemv({GemvKind::kNormSiluMul, w.w_gate_up, T, I, H, nullptr, x_, nullptr, w.mlp_norm, c.rms_norm_eps, nullptr,
            0.f, act_, 0},
           stream_);
    } else {
      rmsnorm(x_, nullptr, w.mlp_norm, h_, T, H, c.rms_norm_eps, stream_);
      if (linear_.slices()) {  // gate rows and up rows per slice
        BATON_RETURN_IF_ERROR(linear_.column_parallel_sliced(h_, w.w_gate_up, 0, I, gate_up_, 2 * I, 0, T, H));
        BATON_RETURN_IF_ERROR(linear_.column_parallel_sliced(h_, w.w_gate_up, I, I, gate_up_, 2 * I, I, T, H));
      } else {
        BATON_RETURN_IF_ERROR(linear_.gemm(h_, w.w_gate_up, gate_up_, T, 2 * I, H, 0.f));
      }
      silu_mul(gate_up_, act_, T, I, stream_);
    }
    BATON_RETURN_IF_ERROR(linear_.row_parallel(act_, w.w_down, T, I, skinny, x_));
  }
  if (rank_.rank != 0 || n_rows == 0) return {};
  const int32_t* rows = identity_rows ? nullptr : in_.logit_rows;
  if (skinny_gemms_ && n_rows <= skinny_rows_ && gemv_supported(n_rows, H)) {
    gemv({GemvKind::kNormStore, w_.lm_head, n_rows, c.vocab_size, H, nullptr, x_, rows, w_.final_norm, c.rms_norm_eps,
          logits_, 0.f, nullptr, 0},
         stream_);
    return {};
  }
  rmsnorm(x_, rows, w_.final_norm, h_, n_rows, H, c.rms_norm_eps, stream_);
  return linear_.gemm(h_, w_.lm_head, logits_, n_rows, c.vocab_size, H, 0.f);
}

}  // namespace baton::cuda
