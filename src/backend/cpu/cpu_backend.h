// The CPU backend: fp32 compute over fp32 copies of the weights, paged KV cache in host memory
// (fp32, bf16 or fp8 e4m3), the engine's thread pool for every kernel. Runs everywhere; CI tests it.
//
// Not thread-safe: one engine loop calls forward() at a time.
#pragma once

#include <memory>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/all_reduce.h"
#include "common/thread_pool.h"
#include "model/weights.h"

namespace baton::cpu {

// One tensor-parallel rank's share (Megatron split): heads of q/k/v and rows of gate/up, the
// matching columns of o_proj and down_proj, whose partial outputs are summed across ranks.
struct TpRank {
  int rank = 0;
  int size = 1;
  AllReduce* comm = nullptr;  // null when size == 1
};

class CpuBackend : public Backend {
 public:
  // With tp.size > 1 this is one rank: it holds its slice of the weights and of the KV heads,
  // and forward() must run on every rank at once (TpCpuBackend does that); rank 0 returns logits.
  static Result<std::unique_ptr<CpuBackend>> create(const ModelConfig& config, const ModelTensors& tensors,
                                                    const BackendOptions& options, TpRank tp = {});

  const ModelConfig& config() const override { return full_config_; }
  const KvCacheSpec& kv_spec() const override { return kv_spec_; }
  Status forward(const Batch& batch, std::span<float> logits) override;
  KvMemory kv_memory(int rank) override;
  // Keeps the ranks' shared communicator alive as long as this rank.
  void keep_alive(std::shared_ptr<AllReduce> comm) { comm_owner_ = std::move(comm); }

 private:
  struct Layer {
    std::vector<float> attn_norm, w_qkv, b_qkv, q_norm, k_norm, wo, mlp_norm, w_gate_up, w_down;
    float k_scale = 1.0f, v_scale = 1.0f;  // fp8 KV cache scales (from the checkpoint, else 1)
  };

  CpuBackend(const ModelConfig& full, const ModelConfig& local, int num_threads, TpRank tp)
      : full_config_(full), config_(local), tp_(tp), pool_(num_threads) {}
  // x += in[T, k] * w^T, summed over ranks (--tp-invariant: w is slices_ matrices [H, k / slices_],
  // their products summed in tp_split.h's tree).
  void project_add(const float* in, int T, int k, const float* w);
  void compute_rope_tables(std::span<const int> positions);
  void write_kv(int layer, const float* qkv, const std::vector<int>& tok_seq, const std::vector<int>& tok_pos,
                const Batch& batch);
  void attention(int layer, const float* qkv, float* out, const std::vector<int>& tok_seq,
                 const std::vector<int>& tok_pos, const Batch& batch);
  std::byte* kv_layer(int layer) { return kv_base_ + static_cast<size_t>(layer) * kv_layer_bytes_; }

  ModelConfig full_config_;
  ModelConfig config_;  // this rank's share: its heads, KV heads and intermediate size
  TpRank tp_;
  std::shared_ptr<AllReduce> comm_owner_;
  ThreadPool pool_;
  KvCacheSpec kv_spec_;
  size_t kv_layer_bytes_ = 0;
  std::vector<std::byte> kv_;  // the pool, unless an allocator gave kv_base_
  std::byte* kv_base_ = nullptr;

  std::vector<float> embed_, final_norm_, lm_head_;  // lm_head_ empty when tied to embed_
  std::vector<Layer> layers_;
  std::vector<float> inv_freq_;  // [head_dim / 2]

  // Scratch, grown to the largest batch seen; no allocation in a step of a size seen before.
  std::vector<float> x_, h_, qkv_, attn_, gate_up_, act_, cos_, sin_, last_, partial_, slice_in_, parts_;
  int slices_ = 0;  // --tp-invariant: this rank's slices of the O and down GEMMs (0: off)
};

// Tensor parallelism on the CPU: `options.tp_size` CpuBackend ranks in a TpBackend, each with
// its own share of the threads and its own KV pool (options.kv_allocator(rank, ...), the KV
// budget split evenly), joined by a shared-memory all-reduce.
Result<std::unique_ptr<Backend>> create_tp_backend(const ModelConfig& config, const ModelTensors& tensors,
                                                   const BackendOptions& options);

}  // namespace baton::cpu
