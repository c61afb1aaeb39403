// Uploads one rank's share of the checkpoint (weights.h).
#include "backend/cuda/weights.h"

#include "backend/weight_prep.h"
#include "common/tp_split.h"

namespace baton::cuda {

Result<ModelWeights> upload_weights(const ModelTensors& t, const ModelConfig& full, const ModelConfig& c,
                                    const Rank& rank, int slices, bool rope_bf16_frequencies, DeviceArena& mem) {
  const int D = c.head_dim;
  ModelWeights m;
  const int64_t q0 = int64_t(rank.rank) * c.num_heads, i0 = int64_t(rank.rank) * c.intermediate_size;
  const int64_t kv0 = kv_heads_of_rank(full.num_kv_heads, rank.size, rank.rank).first;
  BATON_ASSIGN_OR_RETURN(m.embed, mem.upload_bf16(to_f32(t.embed)));
  m.lm_head = m.embed;
  if (t.lm_head != t.embed && rank.rank == 0) {
    BATON_ASSIGN_OR_RETURN(m.lm_head, mem.upload_bf16(to_f32(t.lm_head)));
  }
  BATON_ASSIGN_OR_RETURN(m.final_norm, mem.upload(to_f32(t.final_norm)));
  BATON_ASSIGN_OR_RETURN(m.inv_freq, mem.upload(rope_inv_freq(c, rope_bf16_frequencies)));
  for (const LayerTensors& lt : t.layers) {
    LayerWeights l;
    BATON_ASSIGN_OR_RETURN(l.attn_norm, mem.upload(to_f32(lt.attn_norm)));
    BATON_ASSIGN_OR_RETURN(l.mlp_norm, mem.upload(to_f32(lt.mlp_norm)));
    // This rank's q, k and v rows (heads), one after the other: the fused QKV weight and bias.
    auto qkv_rows = [&](const TensorView* q, const TensorView* k, const TensorView* v) {
      std::vector<float> rows;
      append_rows(rows, q, q0 * D, int64_t(c.num_heads) * D);
      append_rows(rows, k, kv0 * D, int64_t(c.num_kv_heads) * D);
      append_rows(rows, v, kv0 * D, int64_t(c.num_kv_heads) * D);
      return rows;
    };
    std::vector<float> w = qkv_rows(lt.wq, lt.wk, lt.wv);
    BATON_ASSIGN_OR_RETURN(l.w_qkv, mem.upload_bf16(w));
    if (lt.bq) {
      BATON_ASSIGN_OR_RETURN(l.b_qkv, mem.upload(qkv_rows(lt.bq, lt.bk, lt.bv)));
    }
    if (lt.q_norm) {
      BATON_ASSIGN_OR_RETURN(l.q_norm, mem.upload(to_f32(lt.q_norm)));
      BATON_ASSIGN_OR_RETURN(l.k_norm, mem.upload(to_f32(lt.k_norm)));
    }
    // Sliced (--tp-invariant): each slice's columns one matrix after the other.
    auto sliced = [&](std::vector<float> cols_of_rank, int64_t cols) {
      return slices ? slices_major(cols_of_rank, c.hidden_size, cols, slices) : cols_of_rank;
    };
    BATON_ASSIGN_OR_RETURN(l.wo, mem.upload_bf16(sliced(slice_cols(lt.wo, q0 * D, int64_t(c.num_heads) * D),
                                                        int64_t(c.num_heads) * D)));
    w.clear();
    append_rows(w, lt.w_gate, i0, c.intermediate_size);
    append_rows(w, lt.w_up, i0, c.intermediate_size);
    BATON_ASSIGN_OR_RETURN(l.w_gate_up, mem.upload_bf16(w));
    BATON_ASSIGN_OR_RETURN(
        l.w_down, mem.upload_bf16(sliced(slice_cols(lt.w_down, i0, c.intermediate_size), c.intermediate_size)));
    if (lt.k_scale) {
      l.k_scale = to_f32(lt.k_scale)[0];
      l.v_scale = to_f32(lt.v_scale)[0];
      if (!(l.k_scale > 0 && l.v_scale > 0))
        return make_error("layer ", m.layers.size(), ": KV scales must be positive");
    }
    m.layers.push_back(l);
  }
  return m;
}

}  // namespace baton::cuda
