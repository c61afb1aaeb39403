// Writes a complete Hugging Face model directory with random weights: config.json,
// model.safetensors, generation_config.json, tokenizer.json (a byte-level BPE trained on a small
// built-in English text) and tokenizer_config.json with a ChatML chat template. The demo runs on
// it when no --model is given, and tests use it to make models of any shape. Its text is noise.
#pragma once

#include <cstdint>
#include <string>

#include "common/result.h"

namespace baton {

struct RandomModelOptions {
  std::string architecture = "LlamaForCausalLM";  // or Qwen2ForCausalLM, Qwen3ForCausalLM, MistralForCausalLM
  int hidden_size = 256;
  int intermediate_size = 688;
  int num_layers = 4;
  int num_heads = 8;
  int num_kv_heads = 2;
  int head_dim = 0;  // 0: hidden_size / num_heads
  int max_position_embeddings = 4096;
  int num_merges = 1000;  // BPE merges learned from the built-in text (fewer if it runs out)
  bool tie_word_embeddings = false;  // untied: tied random weights just repeat the last token
  std::string dtype = "bfloat16";  // or float32
  uint64_t seed = 1234;
};

Status write_random_model(const std::string& dir, const RandomModelOptions& options);

}  // namespace baton
