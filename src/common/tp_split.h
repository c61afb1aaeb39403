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

// TP-invariant arithmetic (--tp-invariant): the row-parallel GEMMs (attention output, MLP down)
// are cut into this many slices of their inner dimension at every tp, each slice's product is
// computed alone and the slices are summed in a fixed pairwise tree, so a rank's share is a whole
// subtree and the sum cannot depend on how many ranks there are. The largest power of two up to 8
// that divides the heads, the KV heads and the MLP width; -tp must divide it.
inline int tp_invariant_slices(int num_heads, int num_kv_heads, int intermediate_size) {
  int s = 8;
  while (s > 1 && (num_heads % s || num_kv_heads % s || intermediate_size % s)) s /= 2;
  return s;
}

// Sums n values in the pairwise tree of tp_invariant_slices ((v0 + v1) + (v2 + v3)) + ...; n a
// power of two.
template <class T>
inline T tree_sum(T* v, int n) {
  for (; n > 1; n /= 2)
    for (int i = 0; i < n / 2; ++i) v[i] = v[2 * i] + v[2 * i + 1];
  return v[0];
}

}  // namespace baton
