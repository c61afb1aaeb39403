// How tensor parallelism splits KV heads across ranks: one rule for the backends (which heads a
// rank computes and caches) and for P/D (which heads a peer's rank holds), so they cannot drift.
#pragma once

#include <utility>

namespace baton {

// Whether `tp` ranks can share `num_kv_heads`: an even split, or (more ranks than heads) each
// head replicated on the same number of ranks.
inline bool tp_splits_kv_heads(int num_kv_heads, int tp) {
  return num_kv_heads >= tp ? num_kv_heads % tp == 0 : tp % num_kv_heads == 0;
}

// The KV heads [begin, end) that `rank` of `tp` holds (for a split tp_splits_kv_heads accepts).
inline std::pair<int, int> kv_heads_of_rank(int num_kv_heads, int tp, int rank) {
  if (num_kv_heads >= tp) {
    const int per = num_kv_heads / tp;
    return {rank * per, (rank + 1) * per};
  }
  const int h = rank * num_kv_heads / tp;  // replicated: one head per rank
  return {h, h + 1};
}

}  // namespace baton
