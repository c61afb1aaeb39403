#include "backend/cpu/cpu_backend.h"

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstring>
#include <numbers>
#include <thread>

#include "backend/cpu/kernels.h"
#include "backend/tp_backend.h"
#include "backend/weight_prep.h"
#include "common/float16.h"
#include "common/float8.h"
#include "common/tp_split.h"
#include "common/log.h"
#include "model/safetensors.h"

namespace baton {

Result<std::unique_ptr<Backend>> create_cpu_backend(const std::string& model_dir, const BackendOptions& given) {
  BackendOptions options = given;
  if (options.kv_cache_bytes == 0) options.kv_cache_bytes = size_t{256} << 20;
  BATON_ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::load(model_dir));
  BATON_ASSIGN_OR_RETURN(WeightStore store, WeightStore::open_dir(model_dir));
  auto tensors = ModelTensors::find(config, store);
  if (!tensors.ok()) return make_error(model_dir, ": ", tensors.error());
  if (options.tp_size > 1) return cpu::create_tp_backend(config, *tensors, options);
  if (options.tp_size < 1) return make_error("-tp must be at least 1");
  BATON_ASSIGN_OR_RETURN(auto backend, cpu::CpuBackend::create(config, *tensors, options));
  return std::unique_ptr<Backend>(std::move(backend));
}

namespace cpu {
namespace {

// How each KV cache dtype stores a row: fp32 as is, bf16 rounded, fp8 e4m3 divided by the
// layer's scale. load() returns the stored value before the scale is applied back.
template <class T>
struct KvCodec;
template <>
struct KvCodec<float> {
  static void store(const float* src, float* dst, int n, float) { std::memcpy(dst, src, sizeof(float) * n); }
  static void load(const float* src, float* dst, int n) { std::memcpy(dst, src, sizeof(float) * n); }
};
template <>
struct KvCodec<uint16_t> {
  static void store(const float* src, uint16_t* dst, int n, float) {
    for (int i = 0; i < n; ++i) dst[i] = f32_to_bf16(src[i]);
  }
  static void load(const uint16_t* src, float* dst, int n) {
    for (int i = 0; i < n; ++i) dst[i] = bf16_to_f32(src[i]);
  }
};
template <>
struct KvCodec<uint8_t> {
  static void store(const float* src, uint8_t* dst, int n, float scale) {
    const float inv = 1.0f / scale;
    for (int i = 0; i < n; ++i) dst[i] = f32_to_fp8_e4m3(src[i] * inv);
  }
  static void load(const uint8_t* src, float* dst, int n) {
    for (int i = 0; i < n; ++i) dst[i] = fp8_e4m3_to_f32(src[i]);
  }
};

struct AttentionShape {
  int kv_heads, block_size, head_dim;
  float scale;            // 1/sqrt(head_dim)
  float k_scale, v_scale;  // KV cache dequantization (1 unless fp8)
};

// One query row against one sequence's cached keys and values of KV head g, positions
// [first, last].
template <class T>
void attend_one(const float* q, float* out, const std::byte* layer_kv, std::span<const int32_t> table, int first,
                int last, int g, const AttentionShape& a, std::vector<float>& scores, std::vector<float>& row) {
  const size_t head_stride = static_cast<size_t>(a.block_size) * a.head_dim;  // elements
  const size_t block_stride = 2 * a.kv_heads * head_stride;
  const T* base = reinterpret_cast<const T*>(layer_kv);
  const int n = last - first + 1;
  scores.resize(n);
  row.resize(a.head_dim);
  const float score_scale = a.scale * a.k_scale;
  float max_s = -INFINITY;
  for (int j = first; j <= last; ++j) {
    const T* k = base + table[j / a.block_size] * block_stride + g * head_stride + (j % a.block_size) * a.head_dim;
    float s;
    if constexpr (std::is_same_v<T, float>) {
      s = dot(q, k, a.head_dim);
    } else {
      KvCodec<T>::load(k, row.data(), a.head_dim);
      s = dot(q, row.data(), a.head_dim);
    }
    s *= score_scale;
    scores[j - first] = s;
    max_s = std::max(max_s, s);
  }
  float sum = 0.f;
  for (float& s : scores) {
    s = std::exp(s - max_s);
    sum += s;
  }
  const float weight = a.v_scale / sum;
  std::memset(out, 0, sizeof(float) * a.head_dim);
  for (int j = first; j <= last; ++j) {
    const T* v = base + table[j / a.block_size] * block_stride + (a.kv_heads + g) * head_stride +
                 (j % a.block_size) * a.head_dim;
    float p = scores[j - first] * weight;
    if constexpr (std::is_same_v<T, float>) {
      axpy(p, v, out, a.head_dim);
    } else {
      KvCodec<T>::load(v, row.data(), a.head_dim);
      axpy(p, row.data(), out, a.head_dim);
    }
  }
}

template <class T>
void store_kv_row(const float* src, std::byte* dst, int n, float scale) {
  KvCodec<T>::store(src, reinterpret_cast<T*>(dst), n, scale);
}

}  // namespace

Result<std::unique_ptr<CpuBackend>> CpuBackend::create(const ModelConfig& full, const ModelTensors& t,
                                                       const BackendOptions& options, TpRank tp) {
  if (options.block_size <= 0 || options.block_size > 1024)
    return make_error("--block-size must be in 1..1024 (got ", options.block_size, ")");
  BATON_ASSIGN_OR_RETURN(KvDtype kv_dtype, parse_kv_dtype(options.kv_dtype, KvDtype::kF32));
  // This rank's share of the heads and of the MLP (all of it when tp.size == 1). KV heads are
  // split when there are at least as many as ranks, else each rank holds one, replicated.
  const int n = tp.size;
  if (full.num_heads % n != 0 || full.intermediate_size % n != 0 || !tp_splits_kv_heads(full.num_kv_heads, n))
    return make_error("-tp ", n, " does not divide the model's ", full.num_heads, " heads, ", full.num_kv_heads,
                      " KV heads and intermediate size ", full.intermediate_size, " evenly");
  const auto [kv_begin, kv_end] = kv_heads_of_rank(full.num_kv_heads, n, tp.rank);
  ModelConfig c = full;
  c.num_heads = full.num_heads / n;
  c.num_kv_heads = kv_end - kv_begin;
  c.intermediate_size = full.intermediate_size / n;
  const int64_t D = full.head_dim;
  const int64_t q0 = static_cast<int64_t>(tp.rank) * c.num_heads;
  const int64_t kv0 = kv_begin;
  const int64_t i0 = static_cast<int64_t>(tp.rank) * c.intermediate_size;
  std::unique_ptr<CpuBackend> b(new CpuBackend(full, c, options.num_threads, tp));
  if (options.tp_invariant) {
    const int s = tp_invariant_slices(full.num_heads, full.num_kv_heads, full.intermediate_size);
    if (s % n != 0)
      return make_error("--tp-invariant: -tp ", n, " does not divide this model's ", s,
                        " slices (the largest power of two up to 8 dividing its heads, KV heads and MLP width)");
    b->slices_ = s / n;
  }
  // Sliced (--tp-invariant): each slice's columns one matrix after the other.
  auto sliced = [&](std::vector<float> m, int64_t cols) {
    return b->slices_ ? slices_major(m, c.hidden_size, cols, b->slices_) : m;
  };

  b->embed_ = to_f32(t.embed);
  b->final_norm_ = to_f32(t.final_norm);
  if (t.lm_head != t.embed && tp.rank == 0) b->lm_head_ = to_f32(t.lm_head);  // logits come from rank 0
  for (const LayerTensors& lt : t.layers) {
    Layer l;
    l.attn_norm = to_f32(lt.attn_norm);
    append_rows(l.w_qkv, lt.wq, q0 * D, c.num_heads * D);
    append_rows(l.w_qkv, lt.wk, kv0 * D, c.num_kv_heads * D);
    append_rows(l.w_qkv, lt.wv, kv0 * D, c.num_kv_heads * D);
    if (lt.bq) {
      append_rows(l.b_qkv, lt.bq, q0 * D, c.num_heads * D);
      append_rows(l.b_qkv, lt.bk, kv0 * D, c.num_kv_heads * D);
      append_rows(l.b_qkv, lt.bv, kv0 * D, c.num_kv_heads * D);
    }
    if (lt.q_norm) {
      l.q_norm = to_f32(lt.q_norm);
      l.k_norm = to_f32(lt.k_norm);
    }
    l.wo = sliced(slice_cols(lt.wo, q0 * D, c.num_heads * D), c.num_heads * D);
    l.mlp_norm = to_f32(lt.mlp_norm);
    append_rows(l.w_gate_up, lt.w_gate, i0, c.intermediate_size);
    append_rows(l.w_gate_up, lt.w_up, i0, c.intermediate_size);
    l.w_down = sliced(slice_cols(lt.w_down, i0, c.intermediate_size), c.intermediate_size);
    if (lt.k_scale) {
      l.k_scale = to_f32(lt.k_scale)[0];
      l.v_scale = to_f32(lt.v_scale)[0];
      if (!(l.k_scale > 0 && l.v_scale > 0)) return make_error("layer ", b->layers_.size(), ": KV scales must be positive");
    }
    b->layers_.push_back(std::move(l));
  }
  b->inv_freq_ = rope_inv_freq(c, options.rope_bf16_frequencies);

  KvCacheSpec& kv = b->kv_spec_;
  kv.block_size = options.block_size;
  kv.dtype = kv_dtype;
  if (kv_dtype == KvDtype::kFP8)
    for (const Layer& l : b->layers_) {
      kv.k_scales.push_back(l.k_scale);
      kv.v_scales.push_back(l.v_scale);
    }
  const size_t layer_block_bytes = 2 * static_cast<size_t>(c.num_kv_heads) * options.block_size * c.head_dim *
                                   kv_dtype_size(kv_dtype);
  kv.bytes_per_block = layer_block_bytes * c.num_layers;
  kv.num_blocks = static_cast<int>(std::min<size_t>(options.kv_cache_bytes / kv.bytes_per_block, 1 << 30));
  if (kv.num_blocks < 1)
    return make_error("KV cache budget of ", options.kv_cache_bytes, " bytes holds no block (one block needs ",
                      kv.bytes_per_block, " bytes)");
  b->kv_layer_bytes_ = layer_block_bytes * kv.num_blocks;
  const size_t pool_bytes = b->kv_layer_bytes_ * c.num_layers;
  if (options.kv_allocator) {
    BATON_ASSIGN_OR_RETURN(void* mem, options.kv_allocator(tp.rank, pool_bytes));
    b->kv_base_ = static_cast<std::byte*>(mem);
    std::memset(b->kv_base_, 0, pool_bytes);
  } else {
    b->kv_.assign(pool_bytes, std::byte{0});
    b->kv_base_ = b->kv_.data();
  }
  if (tp.rank == 0)
    log::info("cpu backend: ", c.architecture_name, n > 1 ? " (tp " + std::to_string(n) + ", per rank)" : "", ", ",
              c.num_layers, " layers, KV cache ", kv.num_blocks, " blocks x ", kv.block_size, " tokens (",
              kv_dtype_name(kv.dtype), ", ", (pool_bytes >> 20), " MiB), ", b->pool_.size(), " threads");
  return b;
}

KvMemory CpuBackend::kv_memory(int /*rank*/) {
  const size_t block_bytes = kv_layer_bytes_ / static_cast<size_t>(kv_spec_.num_blocks);
  return {kv_base_, kv_layer_bytes_ * static_cast<size_t>(config_.num_layers), kv_layer_bytes_, block_bytes};
}

void CpuBackend::project_add(const float* in, int T, int k, const float* w) {
  const int Hd = config_.hidden_size;
  if (slices_) {
    const int kc = k / slices_;
    const size_t n = static_cast<size_t>(T) * Hd;
    parts_.resize(slices_ * n);
    slice_in_.resize(static_cast<size_t>(T) * kc);
    for (int j = 0; j < slices_; ++j) {
      for (int t = 0; t < T; ++t)
        std::copy_n(in + static_cast<size_t>(t) * k + j * kc, kc, slice_in_.begin() + static_cast<size_t>(t) * kc);
      matmul(pool_, slice_in_.data(), T, kc, w + static_cast<size_t>(j) * Hd * kc, Hd, parts_.data() + j * n, false);
    }
    partial_.resize(n);
    float v[8];
    for (size_t i = 0; i < n; ++i) {
      for (int j = 0; j < slices_; ++j) v[j] = parts_[j * n + i];
      partial_[i] = tree_sum(v, slices_);  // this rank's subtree
    }
    if (tp_.size > 1) tp_.comm->tree_sum(tp_.rank, partial_.data(), n);
    for (size_t i = 0; i < n; ++i) x_[i] += partial_[i];
    return;
  }
  if (tp_.size == 1) {
    matmul(pool_, in, T, k, w, Hd, x_.data(), true);
    return;
  }
  partial_.resize(static_cast<size_t>(T) * Hd);
  matmul(pool_, in, T, k, w, Hd, partial_.data(), false);
  tp_.comm->sum(tp_.rank, partial_.data(), partial_.size());
  for (size_t i = 0; i < partial_.size(); ++i) x_[i] += partial_[i];
}

void CpuBackend::compute_rope_tables(std::span<const int> positions) {
  const int half = config_.head_dim / 2;
  cos_.resize(positions.size() * half);
  sin_.resize(positions.size() * half);
  for (size_t t = 0; t < positions.size(); ++t) {
    const float p = static_cast<float>(positions[t]);
    for (int i = 0; i < half; ++i) {
      float angle = p * inv_freq_[i];  // fp32, as transformers computes it
      cos_[t * half + i] = std::cos(angle);
      sin_[t * half + i] = std::sin(angle);
    }
  }
}

void CpuBackend::write_kv(int layer, const float* qkv, const std::vector<int>& tok_seq, const std::vector<int>& tok_pos,
                          const Batch& batch) {
  const ModelConfig& c = config_;
  const int D = c.head_dim, KVH = c.num_kv_heads, bs = kv_spec_.block_size;
  const size_t row = static_cast<size_t>(c.q_dim() + 2 * c.kv_dim());
  const size_t elem = kv_dtype_size(kv_spec_.dtype);
  const size_t head_stride = static_cast<size_t>(bs) * D * elem;
  const size_t block_stride = 2 * KVH * head_stride;
  std::byte* base = kv_layer(layer);
  const Layer& L = layers_[layer];
  for (size_t t = 0; t < tok_seq.size(); ++t) {
    const SeqBatch& s = batch.seqs[tok_seq[t]];
    const int pos = tok_pos[t];
    std::byte* block = base + static_cast<size_t>(s.block_table[pos / bs]) * block_stride;
    const float* k = qkv + t * row + c.q_dim();
    const float* v = k + c.kv_dim();
    for (int g = 0; g < KVH; ++g) {
      std::byte* kd = block + g * head_stride + static_cast<size_t>(pos % bs) * D * elem;
      std::byte* vd = kd + KVH * head_stride;
      switch (kv_spec_.dtype) {
        case KvDtype::kF32:
          store_kv_row<float>(k + g * D, kd, D, L.k_scale);
          store_kv_row<float>(v + g * D, vd, D, L.v_scale);
          break;
        case KvDtype::kBF16:
          store_kv_row<uint16_t>(k + g * D, kd, D, L.k_scale);
          store_kv_row<uint16_t>(v + g * D, vd, D, L.v_scale);
          break;
        case KvDtype::kFP8:
          store_kv_row<uint8_t>(k + g * D, kd, D, L.k_scale);
          store_kv_row<uint8_t>(v + g * D, vd, D, L.v_scale);
          break;
      }
    }
  }
}

void CpuBackend::attention(int layer, const float* qkv, float* out, const std::vector<int>& tok_seq,
                           const std::vector<int>& tok_pos, const Batch& batch) {
  const ModelConfig& c = config_;
  const int D = c.head_dim, H = c.num_heads, KVH = c.num_kv_heads, group = H / KVH;
  const size_t row = static_cast<size_t>(c.q_dim() + 2 * c.kv_dim());
  const AttentionShape shape{KVH, kv_spec_.block_size, D, 1.0f / std::sqrt(static_cast<float>(D)),
                             layers_[layer].k_scale, layers_[layer].v_scale};
  const std::byte* base = kv_layer(layer);
  const size_t n_tasks = tok_seq.size() * H;
  pool_.parallel_for(n_tasks, 1, [&](size_t b, size_t e) {
    thread_local std::vector<float> scores, tmp;
    for (size_t task = b; task < e; ++task) {
      const size_t t = task / H;
      const int h = static_cast<int>(task % H);
      const SeqBatch& s = batch.seqs[tok_seq[t]];
      const int pos = tok_pos[t];
      const int first = c.sliding_window > 0 ? std::max(0, pos - c.sliding_window + 1) : 0;
      const float* q = qkv + t * row + h * D;
      float* o = out + t * c.q_dim() + h * D;
      switch (kv_spec_.dtype) {
        case KvDtype::kF32:
          attend_one<float>(q, o, base, s.block_table, first, pos, h / group, shape, scores, tmp);
          break;
        case KvDtype::kBF16:
          attend_one<uint16_t>(q, o, base, s.block_table, first, pos, h / group, shape, scores, tmp);
          break;
        case KvDtype::kFP8:
          attend_one<uint8_t>(q, o, base, s.block_table, first, pos, h / group, shape, scores, tmp);
          break;
      }
    }
  });
}

Status CpuBackend::forward(const Batch& batch, std::span<float> logits) {
  const ModelConfig& c = config_;
  BATON_RETURN_IF_ERROR(validate_batch(batch, kv_spec_, c.max_position_embeddings));
  size_t n_logits = 0;
  for (const SeqBatch& s : batch.seqs) n_logits += s.need_logits ? 1 : 0;
  if (tp_.rank != 0) n_logits = 0;  // rank 0 computes the logits
  if (logits.size() != n_logits * c.vocab_size)
    return make_error("forward: logits buffer holds ", logits.size(), " floats, needs ", n_logits * c.vocab_size);
  for (int32_t tok : batch.tokens)
    if (tok < 0 || tok >= c.vocab_size) return make_error("token id ", tok, " is outside the vocabulary (", c.vocab_size, ")");

  const int T = static_cast<int>(batch.tokens.size());
  const int Hd = c.hidden_size, D = c.head_dim, I = c.intermediate_size;
  const int qkv_n = c.q_dim() + 2 * c.kv_dim();
  std::vector<int> tok_seq(T), tok_pos(T);
  for (int t = 0, si = 0; si < static_cast<int>(batch.seqs.size()); ++si)
    for (int j = 0; j < batch.seqs[si].n_tokens; ++j, ++t) {
      tok_seq[t] = si;
      tok_pos[t] = batch.seqs[si].n_past + j;
    }

  x_.resize(static_cast<size_t>(T) * Hd);
  h_.resize(static_cast<size_t>(T) * Hd);
  qkv_.resize(static_cast<size_t>(T) * qkv_n);
  attn_.resize(static_cast<size_t>(T) * c.q_dim());
  gate_up_.resize(static_cast<size_t>(T) * 2 * I);
  act_.resize(static_cast<size_t>(T) * I);
  for (int t = 0; t < T; ++t)
    std::memcpy(&x_[static_cast<size_t>(t) * Hd], &embed_[static_cast<size_t>(batch.tokens[t]) * Hd], sizeof(float) * Hd);
  compute_rope_tables(tok_pos);

  const int half = D / 2;
  for (int li = 0; li < c.num_layers; ++li) {
    const Layer& L = layers_[li];
    for (int t = 0; t < T; ++t) rmsnorm(&x_[size_t(t) * Hd], L.attn_norm.data(), &h_[size_t(t) * Hd], Hd, c.rms_norm_eps);
    matmul(pool_, h_.data(), T, Hd, L.w_qkv.data(), qkv_n, qkv_.data(), false, L.b_qkv.empty() ? nullptr : L.b_qkv.data());
    for (int t = 0; t < T; ++t) {
      float* row = &qkv_[size_t(t) * qkv_n];
      const float* cs = &cos_[size_t(t) * half];
      const float* sn = &sin_[size_t(t) * half];
      for (int h = 0; h < c.num_heads + c.num_kv_heads; ++h) {
        float* head = row + h * D;
        if (c.qk_norm) {
          const float* w = h < c.num_heads ? L.q_norm.data() : L.k_norm.data();
          rmsnorm(head, w, head, D, c.rms_norm_eps);
        }
        rope(head, cs, sn, D);
      }
    }
    write_kv(li, qkv_.data(), tok_seq, tok_pos, batch);
    attention(li, qkv_.data(), attn_.data(), tok_seq, tok_pos, batch);
    project_add(attn_.data(), T, c.q_dim(), L.wo.data());

    for (int t = 0; t < T; ++t) rmsnorm(&x_[size_t(t) * Hd], L.mlp_norm.data(), &h_[size_t(t) * Hd], Hd, c.rms_norm_eps);
    matmul(pool_, h_.data(), T, Hd, L.w_gate_up.data(), 2 * I, gate_up_.data(), false);
    for (int t = 0; t < T; ++t) {
      const float* gu = &gate_up_[size_t(t) * 2 * I];
      silu_mul(gu, gu + I, &act_[size_t(t) * I], I);
    }
    project_add(act_.data(), T, I, L.w_down.data());
  }
  if (n_logits == 0) return {};

  // Final norm and lm_head for the last new token of each sequence that wants logits.
  last_.resize(n_logits * Hd);
  size_t r = 0;
  for (int t = 0, si = 0; si < static_cast<int>(batch.seqs.size()); ++si) {
    t += batch.seqs[si].n_tokens;
    if (!batch.seqs[si].need_logits) continue;
    rmsnorm(&x_[size_t(t - 1) * Hd], final_norm_.data(), &last_[r * Hd], Hd, c.rms_norm_eps);
    ++r;
  }
  const float* head = lm_head_.empty() ? embed_.data() : lm_head_.data();
  matmul(pool_, last_.data(), static_cast<int>(n_logits), Hd, head, c.vocab_size, logits.data(), false);
  return {};
}

Result<std::unique_ptr<Backend>> create_tp_backend(const ModelConfig& config, const ModelTensors& tensors,
                                                   const BackendOptions& given) {
  const int n = given.tp_size;
  // One communicator for the process, owned by the group's lifetime through a shared_ptr that
  // every rank's deleter keeps alive.
  auto comm = std::make_shared<AllReduce>(n);
  BackendOptions options = given;
  options.kv_cache_bytes /= static_cast<size_t>(n);
  const int hw = options.num_threads > 0 ? options.num_threads : static_cast<int>(std::thread::hardware_concurrency());
  options.num_threads = std::max(1, hw / n);
  std::vector<std::unique_ptr<Backend>> ranks;
  for (int r = 0; r < n; ++r) {
    BATON_ASSIGN_OR_RETURN(auto rank, CpuBackend::create(config, tensors, options, TpRank{r, n, comm.get()}));
    rank->keep_alive(comm);
    ranks.push_back(std::move(rank));
  }
  return TpBackend::create(std::move(ranks));
}

}  // namespace cpu
}  // namespace baton
