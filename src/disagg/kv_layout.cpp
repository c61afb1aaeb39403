#include "disagg/kv_layout.h"

#include <algorithm>

#include "common/tp_split.h"

namespace baton {

size_t KvLayout::elem_bytes() const { return dtype == "fp32" ? 4 : dtype == "bf16" ? 2 : 1; }

std::pair<int, int> KvLayout::heads_of(int rank) const { return kv_heads_of_rank(num_kv_heads, tp_size, rank); }

size_t KvLayout::block_bytes(int rank) const {
  auto [b, e] = heads_of(rank);
  return 2 * static_cast<size_t>(e - b) * block_size * head_dim * elem_bytes();
}

Json KvLayout::to_json() const {
  return {{"model", model},         {"dtype", dtype},       {"block_size", block_size}, {"num_layers", num_layers},
          {"num_kv_heads", num_kv_heads}, {"head_dim", head_dim}, {"tp_size", tp_size},
          {"k_scales", k_scales},   {"v_scales", v_scales}};
}

Result<KvLayout> KvLayout::from_json(const Json& j) {
  const std::string what = "KV layout";
  KvLayout l;
  BATON_ASSIGN_OR_RETURN(l.model, json_get<std::string>(j, "model", what));
  BATON_ASSIGN_OR_RETURN(l.dtype, json_get<std::string>(j, "dtype", what));
  BATON_ASSIGN_OR_RETURN(l.block_size, json_get<int>(j, "block_size", what));
  BATON_ASSIGN_OR_RETURN(l.num_layers, json_get<int>(j, "num_layers", what));
  BATON_ASSIGN_OR_RETURN(l.num_kv_heads, json_get<int>(j, "num_kv_heads", what));
  BATON_ASSIGN_OR_RETURN(l.head_dim, json_get<int>(j, "head_dim", what));
  BATON_ASSIGN_OR_RETURN(l.tp_size, json_get<int>(j, "tp_size", what));
  BATON_ASSIGN_OR_RETURN(l.k_scales, json_get_or<std::vector<float>>(j, "k_scales", {}, what));
  BATON_ASSIGN_OR_RETURN(l.v_scales, json_get_or<std::vector<float>>(j, "v_scales", {}, what));
  if (l.block_size <= 0 || l.num_layers <= 0 || l.num_kv_heads <= 0 || l.head_dim <= 0 || l.tp_size <= 0)
    return make_error(what, ": sizes must be positive");
  if (!tp_splits_kv_heads(l.num_kv_heads, l.tp_size))
    return make_error(what, ": tp_size ", l.tp_size, " does not split ", l.num_kv_heads, " KV heads evenly");
  return l;
}

Status KvLayout::compatible_with(const KvLayout& r) const {
  auto differ = [](const char* field, const auto& mine, const auto& theirs) {
    return make_error("KV layout mismatch: ", field, " is ", mine, " here but ", theirs, " on the peer");
  };
  if (model != r.model) return differ("model", model, r.model);
  if (dtype != r.dtype) return differ("kv cache dtype", dtype, r.dtype);
  if (block_size != r.block_size) return differ("block size", block_size, r.block_size);
  if (num_layers != r.num_layers) return differ("layer count", num_layers, r.num_layers);
  if (num_kv_heads != r.num_kv_heads) return differ("KV head count", num_kv_heads, r.num_kv_heads);
  if (head_dim != r.head_dim) return differ("head_dim", head_dim, r.head_dim);
  if (k_scales != r.k_scales || v_scales != r.v_scales) return make_error("KV layout mismatch: fp8 KV scales differ");
  return {};
}

std::vector<SliceCopy> plan_head_slices(const KvLayout& src, const KvLayout& dst, int dst_rank) {
  std::vector<SliceCopy> out;
  const size_t head_bytes = static_cast<size_t>(dst.block_size) * dst.head_dim * dst.elem_bytes();
  const auto [db, de] = dst.heads_of(dst_rank);
  const int dst_local = de - db;
  for (int h = db; h < de;) {
    // The first source rank that holds head h (replicas: the lowest rank).
    int s = 0;
    while (s < src.tp_size && !(src.heads_of(s).first <= h && h < src.heads_of(s).second)) ++s;
    const auto [sb, se] = src.heads_of(s);
    const int run = std::min(de, se) - h;
    const int src_local = se - sb;
    for (int kv = 0; kv < 2; ++kv)
      out.push_back({s, (static_cast<size_t>(kv) * src_local + (h - sb)) * head_bytes,
                     (static_cast<size_t>(kv) * dst_local + (h - db)) * head_bytes, static_cast<size_t>(run) * head_bytes});
    h += run;
  }
  return out;
}

}  // namespace baton
