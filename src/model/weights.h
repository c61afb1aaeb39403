// The tensors of a Llama / Mistral / Qwen2 / Qwen3 checkpoint, found by their Hugging Face names
// and checked against the config's shapes. Backends convert these views into their own layout
// (fp32 on the CPU, bf16 on the GPU); nothing here copies.
#pragma once

#include <vector>

#include "model/config.h"
#include "model/safetensors.h"

namespace baton {

struct LayerTensors {
  const TensorView* attn_norm = nullptr;  // [hidden]
  const TensorView* wq = nullptr;         // [q_dim, hidden]
  const TensorView* wk = nullptr;         // [kv_dim, hidden]
  const TensorView* wv = nullptr;         // [kv_dim, hidden]
  const TensorView* wo = nullptr;         // [hidden, q_dim]
  const TensorView* bq = nullptr;         // [q_dim]   (qkv_bias)
  const TensorView* bk = nullptr;         // [kv_dim]  (qkv_bias)
  const TensorView* bv = nullptr;         // [kv_dim]  (qkv_bias)
  const TensorView* q_norm = nullptr;     // [head_dim] (qk_norm)
  const TensorView* k_norm = nullptr;     // [head_dim] (qk_norm)
  const TensorView* mlp_norm = nullptr;   // [hidden]
  const TensorView* w_gate = nullptr;     // [intermediate, hidden]
  const TensorView* w_up = nullptr;       // [intermediate, hidden]
  const TensorView* w_down = nullptr;     // [hidden, intermediate]
  const TensorView* k_scale = nullptr;    // fp8 KV scale, a scalar; optional
  const TensorView* v_scale = nullptr;    // fp8 KV scale, a scalar; optional
};

struct ModelTensors {
  const TensorView* embed = nullptr;       // [vocab, hidden]
  const TensorView* final_norm = nullptr;  // [hidden]
  const TensorView* lm_head = nullptr;     // [vocab, hidden]; the embedding when tied
  std::vector<LayerTensors> layers;

  static Result<ModelTensors> find(const ModelConfig& config, const WeightStore& store);
};

}  // namespace baton
