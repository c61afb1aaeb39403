#include "backend/weight_prep.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "common/float16.h"

namespace baton {

std::vector<float> to_f32(const TensorView* t) {
  std::vector<float> v(static_cast<size_t>(t->numel()));
  convert_to_f32(*t, v);
  return v;
}

void append_rows(std::vector<float>& dst, const TensorView* t, int64_t row0, int64_t n) {
  std::vector<float> v = to_f32(t);
  const int64_t cols = t->shape.size() > 1 ? t->shape[1] : 1;
  dst.insert(dst.end(), v.begin() + row0 * cols, v.begin() + (row0 + n) * cols);
}

std::vector<float> slice_cols(const TensorView* t, int64_t col0, int64_t n) {
  std::vector<float> v = to_f32(t);
  const int64_t rows = t->shape[0], cols = t->shape[1];
  std::vector<float> out(static_cast<size_t>(rows * n));
  for (int64_t r = 0; r < rows; ++r) std::copy_n(v.begin() + r * cols + col0, n, out.begin() + r * n);
  return out;
}

std::vector<float> slices_major(const std::vector<float>& w, int64_t rows, int64_t cols, int slices) {
  const int64_t per = cols / slices;
  std::vector<float> out(w.size());
  for (int j = 0; j < slices; ++j)
    for (int64_t r = 0; r < rows; ++r)
      std::copy_n(w.begin() + r * cols + j * per, per, out.begin() + (j * rows + r) * per);
  return out;
}

std::vector<float> rope_inv_freq(const ModelConfig& c, bool bf16_frequencies) {
  const int half = c.head_dim / 2;
  std::vector<float> inv(half);
  for (int i = 0; i < half; ++i)
    inv[i] = static_cast<float>(1.0 / std::pow(c.rope.theta, (2.0 * i) / c.head_dim));
  const RopeConfig& r = c.rope;
  if (r.type == RopeConfig::Type::kLinear) {
    for (float& f : inv) f = static_cast<float>(f / r.factor);
  } else if (r.type == RopeConfig::Type::kLlama3) {
    const double low_wavelen = r.original_max_position / r.low_freq_factor;
    const double high_wavelen = r.original_max_position / r.high_freq_factor;
    for (float& f : inv) {
      double wavelen = 2 * std::numbers::pi / f;
      if (wavelen > low_wavelen) {
        f = static_cast<float>(f / r.factor);
      } else if (wavelen >= high_wavelen) {
        double smooth = (r.original_max_position / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
        f = static_cast<float>((1 - smooth) * f / r.factor + smooth * f);
      }
    }
  }
  if (bf16_frequencies && c.dtype == "bfloat16")
    for (float& f : inv) f = bf16_to_f32(f32_to_bf16(f));
  return inv;
}

}  // namespace baton
