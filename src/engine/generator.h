// Runs one request at a time through a backend: chunked prefill, then decode until a stop
// condition. The serving engine (scheduler, continuous batching) builds on the same pieces;
// this is what baton-generate and the correctness tests use.
#pragma once

#include <functional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "engine/block_manager.h"
#include "engine/sampler.h"

namespace baton {

struct GenerationOutput {
  std::vector<int> token_ids;  // generated tokens only
  std::string finish_reason;   // "stop" (eos / stop token) or "length"
  std::vector<float> last_prompt_logits;  // logits after the prompt's last token
};

class Generator {
 public:
  explicit Generator(Backend& backend, int max_prefill_chunk = 512);

  // on_token is called with each generated token as soon as it is sampled.
  Result<GenerationOutput> generate(std::span<const int> prompt, const SamplingParams& params,
                                    const std::function<void(int)>& on_token = {});

  const BlockManager& blocks() const { return blocks_; }

 private:
  Backend& backend_;
  BlockManager blocks_;
  Sampler sampler_;
  int max_prefill_chunk_;
};

}  // namespace baton
