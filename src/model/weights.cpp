#include "model/weights.h"

namespace baton {

Result<ModelTensors> ModelTensors::find(const ModelConfig& c, const WeightStore& store) {
  const int64_t H = c.hidden_size, I = c.intermediate_size, Q = c.q_dim(), KV = c.kv_dim(), D = c.head_dim;
  ModelTensors t;
  BATON_ASSIGN_OR_RETURN(t.embed, store.get("model.embed_tokens.weight", {c.vocab_size, H}));
  BATON_ASSIGN_OR_RETURN(t.final_norm, store.get("model.norm.weight", {H}));
  if (c.tie_word_embeddings) {
    t.lm_head = t.embed;
  } else {
    BATON_ASSIGN_OR_RETURN(t.lm_head, store.get("lm_head.weight", {c.vocab_size, H}));
  }
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerTensors l;
    BATON_ASSIGN_OR_RETURN(l.attn_norm, store.get(p + "input_layernorm.weight", {H}));
    BATON_ASSIGN_OR_RETURN(l.wq, store.get(p + "self_attn.q_proj.weight", {Q, H}));
    BATON_ASSIGN_OR_RETURN(l.wk, store.get(p + "self_attn.k_proj.weight", {KV, H}));
    BATON_ASSIGN_OR_RETURN(l.wv, store.get(p + "self_attn.v_proj.weight", {KV, H}));
    BATON_ASSIGN_OR_RETURN(l.wo, store.get(p + "self_attn.o_proj.weight", {H, Q}));
    if (c.qkv_bias) {
      BATON_ASSIGN_OR_RETURN(l.bq, store.get(p + "self_attn.q_proj.bias", {Q}));
      BATON_ASSIGN_OR_RETURN(l.bk, store.get(p + "self_attn.k_proj.bias", {KV}));
      BATON_ASSIGN_OR_RETURN(l.bv, store.get(p + "self_attn.v_proj.bias", {KV}));
    }
    if (c.qk_norm) {
      BATON_ASSIGN_OR_RETURN(l.q_norm, store.get(p + "self_attn.q_norm.weight", {D}));
      BATON_ASSIGN_OR_RETURN(l.k_norm, store.get(p + "self_attn.k_norm.weight", {D}));
    }
    BATON_ASSIGN_OR_RETURN(l.mlp_norm, store.get(p + "post_attention_layernorm.weight", {H}));
    BATON_ASSIGN_OR_RETURN(l.w_gate, store.get(p + "mlp.gate_proj.weight", {I, H}));
    BATON_ASSIGN_OR_RETURN(l.w_up, store.get(p + "mlp.up_proj.weight", {I, H}));
    BATON_ASSIGN_OR_RETURN(l.w_down, store.get(p + "mlp.down_proj.weight", {H, I}));
    // fp8 KV scales, where quantization tools put them (the names vLLM reads).
    const std::pair<const char*, const char*> scale_names[] = {
        {"self_attn.k_scale", "self_attn.v_scale"},
        {"self_attn.attn.k_scale", "self_attn.attn.v_scale"},
        {"self_attn.k_proj.k_scale", "self_attn.v_proj.v_scale"}};
    for (auto [k_name, v_name] : scale_names) {
      const TensorView* k = store.find(p + k_name);
      const TensorView* v = store.find(p + v_name);
      if (!k || !v) continue;
      if (k->numel() != 1 || v->numel() != 1) return make_error("layer ", i, ": k_scale and v_scale must be scalars");
      l.k_scale = k;
      l.v_scale = v;
      break;
    }
    t.layers.push_back(l);
  }
  return t;
}

}  // namespace baton
