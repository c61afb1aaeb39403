// Staging a step's inputs (staging.h).
#include "backend/cuda/staging.h"

#include <algorithm>

namespace baton::cuda {

StepShape StepShape::of(const Batch& b, int block_size) {
  StepShape s;
  s.T = int(b.tokens.size()), s.S = int(b.seqs.size());
  for (const SeqBatch& q : b.seqs) {
    s.decode = s.decode && q.n_tokens == 1;
    s.all_logits = s.all_logits && q.need_logits;
    s.stride = std::max(s.stride, (q.n_past + q.n_tokens + block_size - 1) / block_size);
    s.max_keys = std::max(s.max_keys, q.n_past + q.n_tokens);
  }
  return s;
}

Result<std::unique_ptr<StepStaging>> StepStaging::create(int cap_tokens, int cap_rows, int cap_tiles,
                                                         size_t cap_table_entries, DeviceArena& mem) {
  std::unique_ptr<StepStaging> st(new StepStaging());
  Layout& L = st->at_;
  size_t o = 0;
  auto take = [&o](size_t n) {
    size_t at = o;
    o += (n + 255) / 256 * 256;
    return at;
  };
  L.tokens = take(4 * size_t(cap_tokens));
  L.positions = take(4 * size_t(cap_tokens));
  L.slots = take(4 * size_t(cap_tokens));
  L.seq_of = take(4 * size_t(cap_tokens));
  L.logit_rows = take(4 * size_t(cap_rows));
  L.table_stride = take(4);
  L.tiles = take(8 * size_t(cap_tiles));
  L.params = take(sizeof(SampleParams) * size_t(cap_rows));
  L.tables = o;
  L.tables_cap = cap_table_entries;
  L.bytes = L.tables + 4 * cap_table_entries;
  BATON_CU(cudaMallocHost(&st->host_, L.bytes));
  BATON_CU(cudaMallocHost(&st->host_sampled_, sizeof(int32_t) * cap_rows));
  BATON_ASSIGN_OR_RETURN(st->dev_base_, mem.alloc<std::byte>(L.bytes));
  auto dev = [&](size_t off) { return reinterpret_cast<int32_t*>(st->dev_base_ + off); };
  st->dev_ = {dev(L.tokens), dev(L.positions), dev(L.slots), dev(L.seq_of), dev(L.logit_rows), dev(L.table_stride),
              dev(L.tables), reinterpret_cast<int2*>(st->dev_base_ + L.tiles),
              reinterpret_cast<SampleParams*>(st->dev_base_ + L.params)};
  return st;
}

StepStaging::~StepStaging() {
  if (host_) cudaFreeHost(host_);
  if (host_sampled_) cudaFreeHost(host_sampled_);
}

Result<int> StepStaging::stage(const Batch& b, const StepShape& shape, int rows, int bs,
                               std::span<const DeviceSampling> params, cudaStream_t stream, int* n_tiles_out) {
  const Layout& L = at_;
  const int T = shape.T, S = shape.S, stride = shape.stride;
  if (size_t(std::max(rows, S)) * stride > L.tables_cap)
    return make_error("batch of ", S, " sequences x ", stride, " blocks exceeds the block-table buffer");
  auto host = [this](size_t off) { return reinterpret_cast<int32_t*>(host_ + off); };
  int32_t *tokens = host(L.tokens), *positions = host(L.positions), *slots = host(L.slots), *seq_of = host(L.seq_of),
          *logit_rows = host(L.logit_rows), *tables = host(L.tables);
  int2* tiles = reinterpret_cast<int2*>(host_ + L.tiles);
  int n_rows = 0, n_tiles = 0;
  for (int si = 0, t = 0; si < S; ++si) {
    const SeqBatch& s = b.seqs[si];
    const int used = (s.n_past + s.n_tokens + bs - 1) / bs;
    std::copy_n(s.block_table.begin(), used, tables + size_t(si) * stride);
    for (int j = 0; j < s.n_tokens; ++j, ++t) {
      const int pos = s.n_past + j;
      tokens[t] = b.tokens[t];
      positions[t] = pos;
      slots[t] = s.block_table[pos / bs] * bs + pos % bs;
      seq_of[t] = si;
    }
    for (int j = 0; j < s.n_tokens; j += kPrefillTileRows)
      tiles[n_tiles++] = {t - s.n_tokens + j, std::min(kPrefillTileRows, s.n_tokens - j)};
    if (s.need_logits) logit_rows[n_rows++] = t - 1;
  }
  for (int t = T; t < rows; ++t) tokens[t] = 0, positions[t] = -1, slots[t] = -1, seq_of[t] = 0;  // graph padding
  *host(L.table_stride) = stride;
  if (!params.empty()) {
    SampleParams* sp = reinterpret_cast<SampleParams*>(host_ + L.params);
    for (int r = 0; r < n_rows; ++r) {
      const DeviceSampling& d = params[r];
      sp[r] = {d.temperature, d.top_k, d.top_p, 0, d.seed, d.offset};
    }
  }
  const size_t bytes = L.tables + sizeof(int32_t) * size_t(S) * stride;
  BATON_CU(cudaMemcpyAsync(dev_base_, host_, bytes, cudaMemcpyHostToDevice, stream));
  *n_tiles_out = n_tiles;
  return n_rows;
}

}  // namespace baton::cuda
