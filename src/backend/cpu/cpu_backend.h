// The CPU backend: fp32 compute over fp32 copies of the weights, paged KV cache in host memory
// (fp32, bf16 or fp8 e4m3), the engine's thread pool for every kernel. Runs everywhere; CI tests it.
//
// Not thread-safe: one engine loop calls forward() at a time.
#pragma once

#include <memory>
#include <vector>

#include "backend/backend.h"
#include "common/thread_pool.h"
#include "model/weights.h"

namespace baton::cpu {

class CpuBackend : public Backend {
 public:
  static Result<std::unique_ptr<CpuBackend>> create(const ModelConfig& config, const ModelTensors& tensors,
                                                    const BackendOptions& options);

  const ModelConfig& config() const override { return config_; }
  const KvCacheSpec& kv_spec() const override { return kv_spec_; }
  Status forward(const Batch& batch, std::span<float> logits) override;
  KvMemory kv_memory(int rank) override;

 private:
  struct Layer {
    std::vector<float> attn_norm, w_qkv, b_qkv, q_norm, k_norm, wo, mlp_norm, w_gate_up, w_down;
    float k_scale = 1.0f, v_scale = 1.0f;  // fp8 KV cache scales (from the checkpoint, else 1)
  };

  CpuBackend(const ModelConfig& config, int num_threads) : config_(config), pool_(num_threads) {}
  void compute_rope_tables(std::span<const int> positions);
  void write_kv(int layer, const float* qkv, const std::vector<int>& tok_seq, const std::vector<int>& tok_pos,
                const Batch& batch);
  void attention(int layer, const float* qkv, float* out, const std::vector<int>& tok_seq,
                 const std::vector<int>& tok_pos, const Batch& batch);
  std::byte* kv_layer(int layer) { return kv_base_ + static_cast<size_t>(layer) * kv_layer_bytes_; }

  ModelConfig config_;
  ThreadPool pool_;
  KvCacheSpec kv_spec_;
  size_t kv_layer_bytes_ = 0;
  std::vector<std::byte> kv_;  // the pool, unless an allocator gave kv_base_
  std::byte* kv_base_ = nullptr;

  std::vector<float> embed_, final_norm_, lm_head_;  // lm_head_ empty when tied to embed_
  std::vector<Layer> layers_;
  std::vector<float> inv_freq_;  // [head_dim / 2]

  // Scratch, grown to the largest batch seen; no allocation in a step of a size seen before.
  std::vector<float> x_, h_, qkv_, attn_, gate_up_, act_, cos_, sin_, last_;
};

}  // namespace baton::cpu
