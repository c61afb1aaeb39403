#include "model/config.h"

#include <filesystem>

#include "common/mapped_file.h"

namespace baton {
namespace {

Result<std::vector<int>> read_token_ids(const Json& j, const char* key, const std::string& what) {
  std::vector<int> ids;
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return ids;
  if (it->is_number_integer()) {
    auto id = json_detail::exact_integer<int>(*it);
    if (!id) return make_error(what, ": '", key, "' is out of range");
    ids.push_back(*id);
  } else if (it->is_array()) {
    for (const auto& v : *it) {
      auto id = v.is_number_integer() ? json_detail::exact_integer<int>(v) : std::nullopt;
      if (!id) return make_error(what, ": '", key, "' must hold integers in range");
      ids.push_back(*id);
    }
  } else {
    return make_error(what, ": '", key, "' must be an integer or a list of integers");
  }
  return ids;
}

Result<RopeConfig> read_rope(const Json& j, const std::string& what) {
  RopeConfig rope;
  // transformers 5: rope_parameters {rope_theta, rope_type, ...}; earlier: rope_theta + rope_scaling.
  const Json* params = nullptr;
  if (auto it = j.find("rope_parameters"); it != j.end() && it->is_object()) params = &*it;
  if (auto it = j.find("rope_scaling"); !params && it != j.end() && it->is_object()) params = &*it;

  BATON_ASSIGN_OR_RETURN(rope.theta, json_get_or<double>(j, "rope_theta", 10000.0, what));
  if (!params) return rope;
  BATON_ASSIGN_OR_RETURN(rope.theta, json_get_or<double>(*params, "rope_theta", rope.theta, what));
  std::string type;
  BATON_ASSIGN_OR_RETURN(type, json_get_or<std::string>(*params, "rope_type", "", what));
  if (type.empty()) {
    BATON_ASSIGN_OR_RETURN(type, json_get_or<std::string>(*params, "type", "default", what));
  }
  if (type == "default") {
    rope.type = RopeConfig::Type::kDefault;
  } else if (type == "linear") {
    rope.type = RopeConfig::Type::kLinear;
    BATON_ASSIGN_OR_RETURN(rope.factor, json_get<double>(*params, "factor", what));
  } else if (type == "llama3") {
    rope.type = RopeConfig::Type::kLlama3;
    BATON_ASSIGN_OR_RETURN(rope.factor, json_get<double>(*params, "factor", what));
    BATON_ASSIGN_OR_RETURN(rope.low_freq_factor, json_get<double>(*params, "low_freq_factor", what));
    BATON_ASSIGN_OR_RETURN(rope.high_freq_factor, json_get<double>(*params, "high_freq_factor", what));
    BATON_ASSIGN_OR_RETURN(rope.original_max_position,
                           json_get<int>(*params, "original_max_position_embeddings", what));
  } else {
    return make_error(what, ": rope type '", type, "' is not supported (default, linear, llama3 are)");
  }
  if (rope.factor <= 0) return make_error(what, ": rope factor must be positive");
  return rope;
}

}  // namespace

Result<ModelConfig> ModelConfig::from_json(const Json& j, const std::string& what) {
  if (!j.is_object()) return make_error(what, ": expected a JSON object");
  ModelConfig c;
  std::vector<std::string> archs;
  BATON_ASSIGN_OR_RETURN(archs, json_get<std::vector<std::string>>(j, "architectures", what));
  if (archs.empty()) return make_error(what, ": 'architectures' is empty");
  c.architecture_name = archs[0];
  if (c.architecture_name == "LlamaForCausalLM") {
    c.arch = Architecture::kLlama;
  } else if (c.architecture_name == "MistralForCausalLM") {
    c.arch = Architecture::kMistral;
  } else if (c.architecture_name == "Qwen2ForCausalLM") {
    c.arch = Architecture::kQwen2;
  } else if (c.architecture_name == "Qwen3ForCausalLM") {
    c.arch = Architecture::kQwen3;
  } else {
    return make_error(what, ": architecture '", c.architecture_name,
                      "' is not supported (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, "
                      "Qwen3ForCausalLM are)");
  }

  BATON_ASSIGN_OR_RETURN(c.dtype, json_get_or<std::string>(j, "torch_dtype", "", what));
  BATON_ASSIGN_OR_RETURN(c.dtype, json_get_or<std::string>(j, "dtype", c.dtype, what));
  BATON_ASSIGN_OR_RETURN(c.hidden_size, json_get<int>(j, "hidden_size", what));
  BATON_ASSIGN_OR_RETURN(c.intermediate_size, json_get<int>(j, "intermediate_size", what));
  BATON_ASSIGN_OR_RETURN(c.num_layers, json_get<int>(j, "num_hidden_layers", what));
  BATON_ASSIGN_OR_RETURN(c.num_heads, json_get<int>(j, "num_attention_heads", what));
  BATON_ASSIGN_OR_RETURN(c.num_kv_heads, json_get_or<int>(j, "num_key_value_heads", c.num_heads, what));
  BATON_ASSIGN_OR_RETURN(c.vocab_size, json_get<int>(j, "vocab_size", what));
  BATON_ASSIGN_OR_RETURN(c.max_position_embeddings, json_get_or<int>(j, "max_position_embeddings", 2048, what));
  double eps;
  BATON_ASSIGN_OR_RETURN(eps, json_get_or<double>(j, "rms_norm_eps", 1e-6, what));
  c.rms_norm_eps = static_cast<float>(eps);

  auto positive = [&](int v, const char* key) -> Status {
    if (v <= 0) return make_error(what, ": '", key, "' must be positive (got ", v, ")");
    return {};
  };
  BATON_RETURN_IF_ERROR(positive(c.hidden_size, "hidden_size"));
  BATON_RETURN_IF_ERROR(positive(c.intermediate_size, "intermediate_size"));
  BATON_RETURN_IF_ERROR(positive(c.num_layers, "num_hidden_layers"));
  BATON_RETURN_IF_ERROR(positive(c.num_heads, "num_attention_heads"));
  BATON_RETURN_IF_ERROR(positive(c.num_kv_heads, "num_key_value_heads"));
  BATON_RETURN_IF_ERROR(positive(c.vocab_size, "vocab_size"));
  if (c.num_heads % c.num_kv_heads != 0)
    return make_error(what, ": num_key_value_heads (", c.num_kv_heads, ") does not divide num_attention_heads (",
                      c.num_heads, ")");
  int default_head_dim = c.hidden_size / c.num_heads;
  BATON_ASSIGN_OR_RETURN(c.head_dim, json_get_or<int>(j, "head_dim", default_head_dim, what));
  BATON_RETURN_IF_ERROR(positive(c.head_dim, "head_dim"));
  if (c.head_dim % 2 != 0) return make_error(what, ": head_dim (", c.head_dim, ") must be even for RoPE");

  std::string act;
  BATON_ASSIGN_OR_RETURN(act, json_get_or<std::string>(j, "hidden_act", "silu", what));
  if (act != "silu") return make_error(what, ": hidden_act '", act, "' is not supported (silu is)");

  BATON_ASSIGN_OR_RETURN(c.rope, read_rope(j, what));
  BATON_ASSIGN_OR_RETURN(c.tie_word_embeddings, json_get_or<bool>(j, "tie_word_embeddings", false, what));
  switch (c.arch) {
    case Architecture::kQwen2:
      c.qkv_bias = true;
      break;
    case Architecture::kQwen3:
      c.qk_norm = true;
      [[fallthrough]];
    case Architecture::kLlama:
    case Architecture::kMistral:
      BATON_ASSIGN_OR_RETURN(c.qkv_bias, json_get_or<bool>(j, "attention_bias", false, what));
      break;
  }
  bool use_sliding = c.arch == Architecture::kMistral;
  if (c.arch == Architecture::kQwen2 || c.arch == Architecture::kQwen3) {
    BATON_ASSIGN_OR_RETURN(use_sliding, json_get_or<bool>(j, "use_sliding_window", false, what));
  }
  if (use_sliding) {
    BATON_ASSIGN_OR_RETURN(c.sliding_window, json_get_or<int>(j, "sliding_window", 0, what));
  }

  BATON_ASSIGN_OR_RETURN(c.eos_token_ids, read_token_ids(j, "eos_token_id", what));
  std::vector<int> bos;
  BATON_ASSIGN_OR_RETURN(bos, read_token_ids(j, "bos_token_id", what));
  if (!bos.empty()) c.bos_token_id = bos[0];
  return c;
}

Result<ModelConfig> ModelConfig::load(const std::string& dir) {
  namespace fs = std::filesystem;
  std::string path = (fs::path(dir) / "config.json").string();
  BATON_ASSIGN_OR_RETURN(std::string text, read_file(path));
  BATON_ASSIGN_OR_RETURN(Json j, parse_json(text, path));
  BATON_ASSIGN_OR_RETURN(ModelConfig c, from_json(j, path));

  std::string gen_path = (fs::path(dir) / "generation_config.json").string();
  if (fs::exists(gen_path)) {
    BATON_ASSIGN_OR_RETURN(std::string gen_text, read_file(gen_path));
    BATON_ASSIGN_OR_RETURN(Json g, parse_json(gen_text, gen_path));
    BATON_ASSIGN_OR_RETURN(std::vector<int> extra, read_token_ids(g, "eos_token_id", gen_path));
    for (int id : extra)
      if (std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), id) == c.eos_token_ids.end())
        c.eos_token_ids.push_back(id);
  }
  for (int id : c.eos_token_ids)
    if (id < 0 || id >= c.vocab_size) return make_error(path, ": eos_token_id ", id, " is outside the vocabulary");
  return c;
}

}  // namespace baton
