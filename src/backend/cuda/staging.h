// A step's inputs (tokens, positions, cache slots, block tables, prefill tiles, logits rows,
// sampling parameters): written into pinned host memory and copied up in one transfer into device
// buffers at fixed addresses, where the kernels and the captured decode graphs read them. The
// block tables come last so that a step copies only the prefix it uses. Nothing is allocated per
// step.
#pragma once

#include <cstddef>
#include <memory>
#include <span>

#include "backend/backend.h"
#include "backend/cuda/device.h"

namespace baton::cuda {

// What kind of step a batch is.
struct StepShape {
  int T = 0, S = 0;                  // tokens, sequences
  int stride = 1;                    // block-table entries per sequence (the longest table used)
  int max_keys = 0;                  // the longest sequence, in tokens, after the step
  bool decode = true;                // every sequence adds one token
  bool all_logits = true;            // every sequence wants logits
  static StepShape of(const Batch& b, int block_size);
};

// The staged inputs' device addresses.
struct StepInputs {
  int32_t *tokens, *positions, *slots, *seq_of, *logit_rows, *table_stride, *tables;
  int2* tiles;
  SampleParams* params;
};

class StepStaging {
 public:
  // Capacities: tokens of a pass, sequences (rows) of a step, prefill tiles, block-table entries.
  static Result<std::unique_ptr<StepStaging>> create(int cap_tokens, int cap_rows, int cap_tiles,
                                                     size_t cap_table_entries, DeviceArena& mem);
  StepStaging(const StepStaging&) = delete;
  StepStaging& operator=(const StepStaging&) = delete;
  ~StepStaging();

  // Writes b's inputs, padded with inert rows (position -1: no cache write, zero output) up to
  // `rows` tokens for a graph of that size, and the sampling parameters of its logits rows; then
  // enqueues the copy on `stream`. Returns the number of logits rows; n_tiles gets the prefill tiles.
  Result<int> stage(const Batch& b, const StepShape& shape, int rows, int block_size,
                    std::span<const DeviceSampling> params, cudaStream_t stream, int* n_tiles);
  const StepInputs& device() const { return dev_; }
  int32_t* host_sampled() const { return host_sampled_; }  // pinned, a row each: sampled tokens come down here

 private:
  StepStaging() = default;
  struct Layout {  // offsets into the staging buffer (the same on host and device)
    size_t tokens, positions, slots, seq_of, logit_rows, table_stride, tiles, params, tables, tables_cap, bytes;
  };
  Layout at_{};
  std::byte* host_ = nullptr;  // pinned
  std::byte* dev_base_ = nullptr;
  StepInputs dev_{};
  int32_t* host_sampled_ = nullptr;  // pinned
};

}  // namespace baton::cuda
