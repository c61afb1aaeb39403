// Tensor parallelism inside one process: N rank backends (each with its share of the weights
// and of the KV heads) run every step in lockstep, rank 0 on the caller's thread and the others
// on threads of their own, so that their collectives (the CPU's shared-memory all-reduce, NCCL on
// GPUs) meet. Rank 0 returns the logits or the sampled tokens.
#pragma once

#include <atomic>
#include <barrier>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "backend/backend.h"

namespace baton {

class TpBackend : public Backend {
 public:
  // ranks[r] is rank r; their kv_spec() must agree except for the bytes of a block.
  static Result<std::unique_ptr<Backend>> create(std::vector<std::unique_ptr<Backend>> ranks);
  ~TpBackend() override;

  const ModelConfig& config() const override { return ranks_[0]->config(); }
  const KvCacheSpec& kv_spec() const override { return spec_; }
  int tp_size() const override { return static_cast<int>(ranks_.size()); }
  KvMemory kv_memory(int rank) override { return ranks_.at(rank)->kv_memory(0); }
  Status forward(const Batch& batch, std::span<float> logits) override;
  bool samples_on_device() const override { return ranks_[0]->samples_on_device(); }
  Status forward_sample(const Batch& batch, std::span<const DeviceSampling> params, std::span<int32_t> tokens) override;
  std::vector<int> decode_graph_batches() const override { return ranks_[0]->decode_graph_batches(); }

 private:
  explicit TpBackend(std::vector<std::unique_ptr<Backend>> ranks);
  // Runs fn(rank) on every rank at once; the first error wins.
  Status run_all(const Batch& batch, const std::function<Status(int)>& fn);

  std::vector<std::unique_ptr<Backend>> ranks_;
  KvCacheSpec spec_;
  std::barrier<> start_, done_;
  std::vector<Status> status_;
  const std::function<Status(int)>* job_ = nullptr;
  std::atomic<bool> stopping_{false};
  std::vector<std::thread> threads_;
};

}  // namespace baton
