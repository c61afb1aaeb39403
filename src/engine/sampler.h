// Picks the next token from a row of logits: greedy (temperature 0) or sampling with
// temperature, top-k, top-p and min-p, from a per-request random generator so that a seeded
// request gives the same tokens whatever else is in the batch.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "common/result.h"

namespace baton {

struct SamplingParams {
  float temperature = 1.0f;  // 0: greedy
  int top_k = 0;             // 0 or -1: off
  float top_p = 1.0f;
  float min_p = 0.0f;
  std::optional<uint64_t> seed;
  int max_tokens = 16;
  bool ignore_eos = false;
  std::vector<int> stop_token_ids;
  std::vector<std::string> stop;          // stop strings, matched on the output text
  bool include_stop_str_in_output = false;
  float repetition_penalty = 1.0f;        // HF style: prompt and output tokens
  float presence_penalty = 0.0f;          // OpenAI style: output tokens
  float frequency_penalty = 0.0f;         // OpenAI style: output tokens, per occurrence
  int logprobs = -1;                      // -1: none; N >= 0: chosen token + top N
  bool skip_special_tokens = true;

  // One-line errors for out-of-range values ("temperature must be >= 0").
  Status validate() const;
};

class Sampler {
 public:
  // Index of the chosen token. Greedy picks the first maximum, as torch.argmax does.
  int sample(std::span<const float> logits, const SamplingParams& params, std::mt19937_64& rng);

 private:
  std::vector<std::pair<float, int>> candidates_;  // reused between calls
};

int argmax(std::span<const float> v);

// Applies repetition, presence and frequency penalties in place (vLLM's semantics).
void apply_penalties(std::span<float> logits, std::span<const int> prompt, std::span<const int> output,
                     const SamplingParams& params);

struct TokenLogprob {
  int token = 0;
  float logprob = 0;
  std::vector<std::pair<int, float>> top;  // best first
};
// log-softmax of `logits` for `token` and the top_n best tokens.
TokenLogprob compute_logprobs(std::span<const float> logits, int token, int top_n);

}  // namespace baton
