// One request as the engine sees it: its tokens (prompt then output), how many of them have
// KV in the cache, its blocks, its sampler state and its text so far.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "engine/sampler.h"
#include "model/tokenizer.h"

namespace baton {

// What a caller submits.
struct Request {
  std::string request_id;  // caller's id, used in logs
  std::vector<int> prompt;
  SamplingParams params;
  // P/D decode side: the prompt's KV arrives from elsewhere (see Engine::remote_kv_ready).
  bool wait_for_remote_kv = false;
  // P/D prefill side: when the request finishes, keep its KV blocks (listed in the final
  // event's kv_block_ids) until Engine::release_held() is called for it.
  bool hold_kv = false;
  // P/D decode side (wait_for_remote_kv): called on the engine loop with the blocks the prompt's
  // KV must be read into, once they are allocated; or with none when the pool had no room (the
  // engine then computes the prompt itself). Every call with blocks is answered by exactly one
  // Engine::remote_kv_ready() for the sequence, which keeps the blocks until then, even if the
  // request is aborted meanwhile. Must not block.
  std::function<void(uint64_t seq_id, const std::vector<int32_t>& blocks)> on_remote_blocks;
};

// One event of a request's output stream. The last event has finished = true.
struct RequestOutput {
  uint64_t seq_id = 0;
  std::vector<int> token_ids;  // new tokens since the last event
  std::string text;            // new text; held back while it could be the start of a stop string
  std::vector<TokenLogprob> logprobs;  // one per new token when requested
  bool finished = false;
  std::string finish_reason;  // "stop", "length", "abort", "error"
  std::string error;          // for "error"
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int cached_tokens = 0;  // prompt tokens served from the prefix cache
  std::vector<int32_t> kv_block_ids;  // final event of a hold_kv request: its blocks, in order
};
using OutputCallback = std::function<void(RequestOutput&&)>;

enum class SeqState { kWaiting, kRemoteKv, kRunning, kFinished };

struct Sequence {
  uint64_t id = 0;
  std::string request_id;
  std::vector<int> tokens;  // prompt, then generated tokens
  int prompt_len = 0;
  int num_computed = 0;     // tokens whose K/V are in the cache
  int num_cached_tokens = 0;
  bool cached_counted = false;  // num_cached_tokens is fixed at the first admission
  std::vector<int32_t> block_table;
  std::vector<uint64_t> block_hashes;  // chain hashes of published full blocks
  SamplingParams params;
  std::mt19937_64 rng;
  OutputCallback on_output;
  std::function<void(uint64_t, const std::vector<int32_t>&)> on_remote_blocks;
  SeqState state = SeqState::kWaiting;
  bool hold_kv = false;
  bool remote_reading = false;  // blocks were handed to on_remote_blocks; remote_kv_ready pending
  int num_preemptions = 0;

  // Text state (when the engine has a tokenizer).
  std::optional<IncrementalDecoder> detok;
  std::string text;
  size_t text_emitted = 0;
  bool text_final = false;  // cut at a stop string: nothing more is added

  int num_output() const { return static_cast<int>(tokens.size()) - prompt_len; }
  int num_uncomputed() const { return static_cast<int>(tokens.size()) - num_computed; }
};

}  // namespace baton
