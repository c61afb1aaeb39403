// Host-side preparation of a checkpoint's tensors that every backend needs: fp32 copies, the
// row and column slices of a tensor-parallel rank, and the RoPE inverse frequencies.
#pragma once

#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/safetensors.h"

namespace baton {

std::vector<float> to_f32(const TensorView* t);
// Rows [row0, row0 + n) of a [rows, cols] weight (or entries of a bias), appended to dst.
void append_rows(std::vector<float>& dst, const TensorView* t, int64_t row0, int64_t n);
// Columns [col0, col0 + n) of a [rows, cols] weight.
std::vector<float> slice_cols(const TensorView* t, int64_t col0, int64_t n);
// A [rows, cols] matrix as `slices` matrices [rows, cols / slices] one after the other (slice j:
// columns [j * cols / slices, (j + 1) * cols / slices)), for --tp-invariant's sliced GEMMs.
std::vector<float> slices_major(const std::vector<float>& w, int64_t rows, int64_t cols, int slices);
// [head_dim / 2] inverse frequencies with the config's rope scaling (default, linear, llama3), in
// fp32; for a bf16 checkpoint with bf16_frequencies, rounded to bf16
// (BackendOptions::rope_bf16_frequencies).
std::vector<float> rope_inv_freq(const ModelConfig& c, bool bf16_frequencies);

}  // namespace baton
