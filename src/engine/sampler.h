// Picks the next token from a row of logits: greedy (temperature 0) or sampling with
// temperature, top-k, top-p and min-p, from a per-request random generator so that a seeded
// request gives the same tokens whatever else is in the batch.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <span>
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

}  // namespace baton
