// What a KV cache looks like to a peer: enough to refuse a mismatched transfer before any byte
// moves, and to plan which byte ranges each tensor-parallel rank reads.
//
// Per layer and rank the cache is [num_blocks][2 (K,V)][local_kv_heads][block_size][head_dim]
// (DESIGN.md section 2), so a run of heads of one block is contiguous: heterogeneous TP (prefill
// tp=2, decode tp=1 and back) is a choice of ranges, not a copy.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "common/json.h"
#include "common/result.h"

namespace baton {

struct KvLayout {
  std::string model;  // served model name or config identity
  std::string dtype;  // fp32, bf16, fp8_e4m3
  int block_size = 16;
  int num_layers = 0;
  int num_kv_heads = 0;  // of the whole model
  int head_dim = 0;
  int tp_size = 1;
  std::vector<float> k_scales, v_scales;  // fp8: must agree, or the bytes mean different values

  // Bytes of one element and of one layer's block on `rank`.
  size_t elem_bytes() const;
  std::pair<int, int> heads_of(int rank) const;  // [begin, end) of the model's KV heads
  size_t block_bytes(int rank) const;

  Json to_json() const;
  static Result<KvLayout> from_json(const Json& j);
  // Refuses layouts whose bytes cannot be read as ours: every field but tp_size must match.
  Status compatible_with(const KvLayout& remote) const;
};

// One contiguous copy inside a block of one layer: from source rank `src_rank`'s block at
// src_offset to this rank's block at dst_offset.
struct SliceCopy {
  int src_rank = 0;
  size_t src_offset = 0;
  size_t dst_offset = 0;
  size_t bytes = 0;
};

// The copies that fill destination rank `dst_rank`'s part of a block from the source ranks.
std::vector<SliceCopy> plan_head_slices(const KvLayout& src, const KvLayout& dst, int dst_rank);

}  // namespace baton
