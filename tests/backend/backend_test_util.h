// Helpers for driving a Backend directly in tests.
#pragma once

#include <gtest/gtest.h>

#include <vector>

#include "backend/backend.h"

namespace baton::testing {

// Options for a backend checked against ../shared/models/goldens.json: a bf16 checkpoint's RoPE
// frequencies rounded to bf16, as transformers had them when it computed the goldens
// (BackendOptions::rope_bf16_frequencies).
inline BackendOptions goldens_options(BackendOptions o = {}) {
  o.rope_bf16_frequencies = true;
  return o;
}

// Logits after the prompt's last token, from one forward pass over blocks 0..n.
inline std::vector<float> prompt_logits(Backend& b, const std::vector<int>& prompt) {
  std::vector<int32_t> table;
  for (int i = 0; i * b.kv_spec().block_size < static_cast<int>(prompt.size()); ++i) table.push_back(i);
  std::vector<int32_t> toks(prompt.begin(), prompt.end());
  SeqBatch s{static_cast<int>(toks.size()), 0, table, true};
  std::vector<float> logits(b.config().vocab_size);
  Status st = b.forward({toks, std::span<const SeqBatch>(&s, 1)}, logits);
  EXPECT_TRUE(st.ok()) << st.message();
  return logits;
}

// Logits of one more token, `next`, after a prompt that prompt_logits left in blocks 0..: a decode
// step over the prompt's cached keys.
inline std::vector<float> next_token_logits(Backend& b, int prompt_len, int32_t next) {
  std::vector<int32_t> table;
  for (int i = 0; i * b.kv_spec().block_size < prompt_len + 1; ++i) table.push_back(i);
  std::vector<int32_t> toks{next};
  SeqBatch s{1, prompt_len, table, true};
  std::vector<float> logits(b.config().vocab_size);
  Status st = b.forward({toks, std::span<const SeqBatch>(&s, 1)}, logits);
  EXPECT_TRUE(st.ok()) << st.message();
  return logits;
}

}  // namespace baton::testing
