// The serving engine: owns the backend, the block pool, the scheduler and every live request,
// and turns scheduler decisions into model steps and model outputs into token streams.
//
// Thread-safety: add_request(), abort(), remote_kv_ready() and stats() may be called from any
// thread. Everything else happens on the engine loop: either the thread start() launches, or the
// caller of step() (tests drive it by hand). Output callbacks run on the engine loop and must not
// block; they hand the event to the caller's own thread or queue.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "engine/block_manager.h"
#include "engine/scheduler.h"
#include "engine/sequence.h"
#include "model/tokenizer.h"

namespace baton {

struct EngineConfig {
  int max_num_seqs = 256;
  int max_num_batched_tokens = 2048;
  int max_model_len = 0;  // 0: the model's max_position_embeddings, capped by the KV pool
  bool enable_prefix_caching = true;
};

struct EngineStats {
  int running = 0;
  int waiting = 0;
  int blocks_total = 0;
  int blocks_free = 0;
  uint64_t prompt_tokens = 0;      // computed prompt tokens (prefix-cache hits not included)
  uint64_t generation_tokens = 0;
  uint64_t prefix_hit_blocks = 0;
  uint64_t fresh_block_allocations = 0;
  uint64_t preemptions = 0;
  uint64_t steps = 0;
};

class Engine {
 public:
  // `tokenizer` may be null: then requests carry token ids only and stop strings are refused.
  static Result<std::unique_ptr<Engine>> create(std::unique_ptr<Backend> backend,
                                                std::shared_ptr<const Tokenizer> tokenizer,
                                                const EngineConfig& config);
  ~Engine();

  // Validates and queues a request; its outputs go to on_output. Returns the sequence id.
  Result<uint64_t> add_request(Request request, OutputCallback on_output);
  // Ends a request wherever it is; its stream gets a final event with finish_reason "abort".
  void abort(uint64_t seq_id);
  // P/D decode side: the prompt KV of a wait_for_remote_kv request is in its blocks
  // (ok = true, with the first token the prefill sampled), or could not be read (ok = false:
  // the engine recomputes the prompt locally).
  void remote_kv_ready(uint64_t seq_id, bool ok, int first_token);
  // P/D prefill side: returns the blocks a finished hold_kv request kept (after the decode side
  // read them, or gave up). Unknown ids are ignored.
  void release_held(uint64_t seq_id);
  size_t num_held() const;

  // Runs the loop on its own thread until stop().
  void start();
  void stop();
  // One iteration on the calling thread: takes new requests and aborts, schedules, runs the
  // model, emits outputs. Returns false when there was nothing to do.
  bool step();
  // Steps until no request is left (for tests and batch tools).
  void run_until_idle();
  // Before start(): runs one greedy decode step of each batch size the backend prepares at first
  // use (Backend::decode_graph_batches) up to max_num_seqs, so that no request later waits while
  // its batch size is prepared. The steps write their throwaway K/V into one block borrowed from
  // the pool and given back. Returns how many steps ran.
  Result<int> warm_up();

  EngineStats stats() const;
  const ModelConfig& model_config() const { return backend_->config(); }
  const KvCacheSpec& kv_spec() const { return backend_->kv_spec(); }
  int tp_size() const { return backend_->tp_size(); }
  KvMemory kv_memory(int rank) { return backend_->kv_memory(rank); }
  int max_model_len() const { return max_model_len_; }
  // Blocks of a remote-KV sequence (to read into); empty if unknown. Engine loop only.
  std::vector<int32_t> block_table_of(uint64_t seq_id) const;

 private:
  Engine(std::unique_ptr<Backend> backend, std::shared_ptr<const Tokenizer> tokenizer, const EngineConfig& config,
         int max_model_len);
  void take_inbox();
  // Ends a sequence: releases its blocks and sends its last event (out may carry a last token).
  void finish(Sequence* seq, const std::string& reason, const std::string& error = "", RequestOutput out = {});
  // Emits one token per sequence that wanted logits: sampled here from `logits`, or taken from
  // `tokens` when the backend sampled on its device.
  void after_step(const SchedulerOutput& sched, std::span<const float> logits, std::span<const int32_t> tokens);
  void emit_token(Sequence* seq, int token, const float* raw_logits);
  void publish_stats();

  std::unique_ptr<Backend> backend_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  EngineConfig config_;
  int max_model_len_;
  BlockManager blocks_;
  Scheduler scheduler_;
  Sampler sampler_;
  std::unordered_map<uint64_t, std::unique_ptr<Sequence>> seqs_;

  // Between threads.
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::vector<std::unique_ptr<Sequence>> inbox_;
  std::vector<uint64_t> aborts_;
  struct RemoteDone {
    uint64_t id;
    bool ok;
    int first_token;
  };
  std::vector<RemoteDone> remote_done_;
  std::vector<uint64_t> releases_;
  std::unordered_map<uint64_t, std::vector<int32_t>> held_;     // engine loop only
  std::unordered_map<uint64_t, std::vector<int32_t>> reading_;  // aborted with reads in flight
  std::atomic<size_t> num_held_{0};
  std::atomic<uint64_t> next_id_{1};
  bool stopping_ = false;
  std::thread loop_;
  EngineStats stats_;  // guarded by mutex_, refreshed each step

  // Reused per step.
  std::vector<int32_t> batch_tokens_;
  std::vector<SeqBatch> batch_seqs_;
  std::vector<float> logits_;
  std::vector<float> row_;
  std::vector<DeviceSampling> device_params_;
  std::vector<int32_t> device_tokens_;
};

}  // namespace baton
