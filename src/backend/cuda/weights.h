// The model's weights on one rank's GPU: this rank's heads and MLP slice as bf16 matrices, norms,
// biases and KV scales in fp32. Loaded once (upload_weights); the forward pass only reads them.
#pragma once

#include <vector>

#include "backend/cuda/device.h"
#include "model/config.h"
#include "model/weights.h"

namespace baton::cuda {

struct LayerWeights {
  float *attn_norm = nullptr, *mlp_norm = nullptr, *b_qkv = nullptr, *q_norm = nullptr, *k_norm = nullptr;
  // w_qkv: this rank's q, k and v rows one after the other; w_gate_up: its gate rows, then its up
  // rows; wo and w_down: its columns (with --tp-invariant each slice's columns one matrix after
  // the other).
  bf16_t *w_qkv = nullptr, *wo = nullptr, *w_gate_up = nullptr, *w_down = nullptr;
  float k_scale = 1.f, v_scale = 1.f;  // fp8 KV: the checkpoint's per-layer scales
};

struct ModelWeights {
  bf16_t *embed = nullptr, *lm_head = nullptr;  // lm_head == embed when tied (or on ranks > 0)
  float *final_norm = nullptr, *inv_freq = nullptr;
  std::vector<LayerWeights> layers;
};

// Rank `rank`'s share of `t` (full: the model's config; local: this rank's heads and MLP width),
// uploaded into `mem`. slices > 0 (--tp-invariant): the O and down weights as that many column
// slices.
Result<ModelWeights> upload_weights(const ModelTensors& t, const ModelConfig& full, const ModelConfig& local,
                                    const Rank& rank, int slices, bool rope_bf16_frequencies, DeviceArena& mem);

}  // namespace baton::cuda
