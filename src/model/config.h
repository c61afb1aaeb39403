// What a Hugging Face config.json says about a decoder-only transformer, validated once.
//
// Supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM. RoPE
// parameters are read from transformers 5's `rope_parameters` or the older `rope_theta` +
// `rope_scaling` keys.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "common/json.h"
#include "common/result.h"

namespace baton {

enum class Architecture { kLlama, kMistral, kQwen2, kQwen3 };

struct RopeConfig {
  enum class Type { kDefault, kLinear, kLlama3 };
  Type type = Type::kDefault;
  double theta = 10000.0;
  double factor = 1.0;            // linear, llama3
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  int original_max_position = 8192;  // llama3
};

struct ModelConfig {
  Architecture arch = Architecture::kLlama;
  std::string architecture_name;  // as written in config.json
  std::string dtype;              // checkpoint dtype: "dtype" or "torch_dtype" ("bfloat16", ...)
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int vocab_size = 0;
  int max_position_embeddings = 0;
  float rms_norm_eps = 1e-6f;
  RopeConfig rope;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // Qwen2, or Llama's attention_bias
  bool qk_norm = false;   // Qwen3
  int sliding_window = 0;  // 0 = full attention
  std::vector<int> eos_token_ids;
  std::optional<int> bos_token_id;

  int q_dim() const { return num_heads * head_dim; }
  int kv_dim() const { return num_kv_heads * head_dim; }

  static Result<ModelConfig> from_json(const Json& j, const std::string& what = "config.json");
  // Reads DIR/config.json and, when present, DIR/generation_config.json (extra eos ids).
  static Result<ModelConfig> load(const std::string& dir);
};

}  // namespace baton
