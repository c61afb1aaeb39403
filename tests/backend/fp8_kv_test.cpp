// The fp8 KV path against an independent reference: a plain, unpaged fp32 forward pass written
// here from the Hugging Face model definition, which rounds K and V through e4m3 with the same
// scales. The backend may add no error beyond the format itself.
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <random>

#include "backend/backend.h"
#include "common/float16.h"
#include "common/float8.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "test_util.h"

namespace baton {
namespace {

std::vector<float> f32(const TensorView* t) {
  std::vector<float> v(static_cast<size_t>(t->numel()));
  convert_to_f32(*t, v);
  return v;
}

void rms(const float* x, const std::vector<float>& w, float* out, int n, float eps) {
  double ss = 0;
  for (int i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  float s = 1.0f / std::sqrt(static_cast<float>(ss / n) + eps);
  for (int i = 0; i < n; ++i) out[i] = x[i] * s * w[i];
}

// y[T][N] = x[T][K] W[N][K]^T (+ b)
std::vector<float> linear(const std::vector<float>& x, int T, int K, const std::vector<float>& w, int N,
                          const std::vector<float>* b = nullptr) {
  std::vector<float> y(static_cast<size_t>(T) * N);
  for (int t = 0; t < T; ++t)
    for (int n = 0; n < N; ++n) {
      double acc = b ? (*b)[n] : 0.0;
      for (int k = 0; k < K; ++k) acc += static_cast<double>(x[size_t(t) * K + k]) * w[size_t(n) * K + k];
      y[size_t(t) * N + n] = static_cast<float>(acc);
    }
  return y;
}

struct KvRounding {
  bool fp8 = false;
  std::vector<float> k_scale, v_scale;  // per layer
};

// Logits of the last position, after running `prompt` through the model.
std::vector<float> reference_logits(const std::string& dir, const std::vector<int>& prompt, const KvRounding& kv) {
  auto cfg = ModelConfig::load(dir);
  auto store = WeightStore::open_dir(dir);
  EXPECT_TRUE(cfg.ok() && store.ok());
  const ModelConfig& c = *cfg;
  auto tensors = ModelTensors::find(c, *store);
  EXPECT_TRUE(tensors.ok()) << (tensors.ok() ? "" : tensors.error());
  const int T = static_cast<int>(prompt.size()), H = c.hidden_size, D = c.head_dim, NH = c.num_heads,
            KVH = c.num_kv_heads, I = c.intermediate_size;
  auto embed = f32(tensors->embed);
  std::vector<float> x(size_t(T) * H);
  for (int t = 0; t < T; ++t) std::copy_n(&embed[size_t(prompt[t]) * H], H, &x[size_t(t) * H]);

  std::vector<double> inv(D / 2);
  for (int i = 0; i < D / 2; ++i) {
    double f = 1.0 / std::pow(c.rope.theta, 2.0 * i / D);
    if (c.rope.type == RopeConfig::Type::kLlama3) {
      const RopeConfig& r = c.rope;
      double wavelen = 2 * std::numbers::pi / f, lo = r.original_max_position / r.low_freq_factor,
             hi = r.original_max_position / r.high_freq_factor;
      if (wavelen > lo) {
        f /= r.factor;
      } else if (wavelen >= hi) {
        double s = (r.original_max_position / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
        f = (1 - s) * f / r.factor + s * f;
      }
    }
    inv[i] = static_cast<float>(f);
  }
  auto rope = [&](float* v, int pos) {
    for (int i = 0; i < D / 2; ++i) {
      float ang = static_cast<float>(pos) * static_cast<float>(inv[i]);
      float cs = std::cos(ang), sn = std::sin(ang), a = v[i], b = v[i + D / 2];
      v[i] = a * cs - b * sn;
      v[i + D / 2] = b * cs + a * sn;
    }
  };
  auto round_kv = [&](float* v, float scale) {
    for (int i = 0; i < D; ++i) v[i] = fp8_e4m3_to_f32(f32_to_fp8_e4m3(v[i] / scale)) * scale;
  };

  for (int l = 0; l < c.num_layers; ++l) {
    const LayerTensors& L = tensors->layers[l];
    std::vector<float> h(x.size());
    auto w_norm = f32(L.attn_norm);
    for (int t = 0; t < T; ++t) rms(&x[size_t(t) * H], w_norm, &h[size_t(t) * H], H, c.rms_norm_eps);
    std::vector<float> bq, bk, bv;
    if (L.bq) bq = f32(L.bq), bk = f32(L.bk), bv = f32(L.bv);
    auto q = linear(h, T, H, f32(L.wq), NH * D, L.bq ? &bq : nullptr);
    auto k = linear(h, T, H, f32(L.wk), KVH * D, L.bk ? &bk : nullptr);
    auto v = linear(h, T, H, f32(L.wv), KVH * D, L.bv ? &bv : nullptr);
    for (int t = 0; t < T; ++t) {
      for (int hh = 0; hh < NH; ++hh) {
        float* qh = &q[size_t(t) * NH * D + hh * D];
        if (L.q_norm) rms(qh, f32(L.q_norm), qh, D, c.rms_norm_eps);
        rope(qh, t);
      }
      for (int g = 0; g < KVH; ++g) {
        float* kh = &k[size_t(t) * KVH * D + g * D];
        float* vh = &v[size_t(t) * KVH * D + g * D];
        if (L.k_norm) rms(kh, f32(L.k_norm), kh, D, c.rms_norm_eps);
        rope(kh, t);
        if (kv.fp8) {
          round_kv(kh, kv.k_scale[l]);
          round_kv(vh, kv.v_scale[l]);
        }
      }
    }
    std::vector<float> attn(size_t(T) * NH * D, 0.0f);
    for (int t = 0; t < T; ++t)
      for (int hh = 0; hh < NH; ++hh) {
        const int g = hh / (NH / KVH);
        const float* qh = &q[size_t(t) * NH * D + hh * D];
        std::vector<double> s(t + 1);
        double mx = -1e30;
        for (int j = 0; j <= t; ++j) {
          double d = 0;
          for (int i = 0; i < D; ++i) d += double(qh[i]) * k[size_t(j) * KVH * D + g * D + i];
          s[j] = d / std::sqrt(double(D));
          mx = std::max(mx, s[j]);
        }
        double z = 0;
        for (double& e : s) z += (e = std::exp(e - mx));
        for (int j = 0; j <= t; ++j)
          for (int i = 0; i < D; ++i)
            attn[size_t(t) * NH * D + hh * D + i] += static_cast<float>(s[j] / z * v[size_t(j) * KVH * D + g * D + i]);
      }
    auto o = linear(attn, T, NH * D, f32(L.wo), H);
    for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
    auto w_mlp = f32(L.mlp_norm);
    for (int t = 0; t < T; ++t) rms(&x[size_t(t) * H], w_mlp, &h[size_t(t) * H], H, c.rms_norm_eps);
    auto gate = linear(h, T, H, f32(L.w_gate), I);
    auto up = linear(h, T, H, f32(L.w_up), I);
    for (size_t i = 0; i < gate.size(); ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
    auto down = linear(gate, T, I, f32(L.w_down), H);
    for (size_t i = 0; i < x.size(); ++i) x[i] += down[i];
  }
  std::vector<float> last(H);
  rms(&x[size_t(T - 1) * H], f32(tensors->final_norm), last.data(), H, c.rms_norm_eps);
  return linear(last, 1, H, f32(tensors->lm_head), c.vocab_size);
}

std::vector<float> backend_logits(const std::string& dir, const std::vector<int>& prompt, const std::string& kv_dtype,
                                  int* num_blocks = nullptr) {
  BackendOptions o;
  o.kv_dtype = kv_dtype;
  o.kv_cache_bytes = 8 << 20;
  auto b = create_cpu_backend(dir, o);
  EXPECT_TRUE(b.ok()) << (b.ok() ? "" : b.error());
  if (num_blocks) *num_blocks = (*b)->kv_spec().num_blocks;
  std::vector<int32_t> table;
  for (int i = 0; i * 16 < static_cast<int>(prompt.size()); ++i) table.push_back(i * 3 + 1);  // scattered
  std::vector<int32_t> toks(prompt.begin(), prompt.end());
  std::vector<float> logits((*b)->config().vocab_size);
  // Prefill in two chunks: the second chunk reads the first's K/V back from the fp8 cache.
  int half = static_cast<int>(toks.size()) / 2;
  SeqBatch s1{half, 0, table, false};
  SeqBatch s2{static_cast<int>(toks.size()) - half, half, table, true};
  EXPECT_TRUE((*b)->forward({std::span(toks).first(half), std::span<const SeqBatch>(&s1, 1)}, {}).ok());
  EXPECT_TRUE((*b)->forward({std::span(toks).subspan(half), std::span<const SeqBatch>(&s2, 1)}, logits).ok());
  return logits;
}

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  float m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

std::vector<int> random_prompt(int n, int vocab) {
  std::mt19937 rng(n);
  std::vector<int> p(n);
  for (int& t : p) t = static_cast<int>(rng() % vocab);
  return p;
}

TEST(Fp8FormatTest, EveryCodeRoundTripsAndRoundingIsToNearestEven) {
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7F) == 0x7F) {
      EXPECT_TRUE(std::isnan(fp8_e4m3_to_f32(static_cast<uint8_t>(c))));
      continue;
    }
    float v = fp8_e4m3_to_f32(static_cast<uint8_t>(c));
    uint8_t back = f32_to_fp8_e4m3(v);
    if (c == 0x80) continue;  // -0 encodes as 0x80, fine either way
    EXPECT_EQ(back, c) << "code " << c << " value " << v;
  }
  EXPECT_EQ(fp8_e4m3_to_f32(0x7E), 448.0f);
  EXPECT_EQ(f32_to_fp8_e4m3(1e6f), 0x7E);        // saturates
  EXPECT_EQ(f32_to_fp8_e4m3(-1e6f), 0xFE);
  EXPECT_EQ(fp8_e4m3_to_f32(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  // 1.0625 is halfway between 1.0 (mantissa 0) and 1.125 (mantissa 1): ties to even -> 1.0.
  EXPECT_EQ(fp8_e4m3_to_f32(f32_to_fp8_e4m3(1.0625f)), 1.0f);
  EXPECT_EQ(fp8_e4m3_to_f32(f32_to_fp8_e4m3(1.1875f)), 1.25f);  // halfway 1.125/1.25 -> even 1.25
}

class Fp8KvTest : public ::testing::TestWithParam<std::string> {};

TEST_P(Fp8KvTest, BackendEqualsRoundedReference) {
  BATON_REQUIRE_MODELS();
  const std::string dir = testing::models_dir() + "/" + GetParam();
  auto cfg = ModelConfig::load(dir);
  ASSERT_TRUE(cfg.ok());
  auto prompt = random_prompt(40, cfg->vocab_size);

  // The reference itself agrees with the fp32 backend (independent check of the paged path).
  auto ref32 = reference_logits(dir, prompt, {});
  EXPECT_LT(max_abs_diff(ref32, backend_logits(dir, prompt, "fp32")), 2e-4f);

  KvRounding kv{true, std::vector<float>(cfg->num_layers, 1.0f), std::vector<float>(cfg->num_layers, 1.0f)};
  auto ref8 = reference_logits(dir, prompt, kv);
  auto got8 = backend_logits(dir, prompt, "fp8");
  EXPECT_LT(max_abs_diff(ref8, got8), 2e-4f);
  // And fp8 really is a different computation (the test can fail).
  EXPECT_GT(max_abs_diff(ref8, ref32), 1e-3f);
}

INSTANTIATE_TEST_SUITE_P(Models, Fp8KvTest, ::testing::Values("tiny-qwen3", "tiny-llama3"),
                         [](const auto& info) { return info.param == "tiny-qwen3" ? "qwen3" : "llama3"; });

TEST(Fp8KvTest, CheckpointScalesAreReadAndUsed) {
  BATON_REQUIRE_MODELS();
  const std::string src = testing::models_dir() + "/tiny-qwen2";
  testing::TempDir dir;
  for (const char* f : {"config.json", "generation_config.json"})
    std::filesystem::copy_file(src + "/" + f, dir.file(f));
  auto whole = SafetensorsFile::open(src + "/model.safetensors");
  ASSERT_TRUE(whole.ok());
  std::vector<TensorData> tensors;
  for (const auto& [name, view] : whole->tensors())
    tensors.push_back({name, view.dtype, view.shape, std::vector<std::byte>(view.data.begin(), view.data.end())});
  auto cfg = ModelConfig::load(src);
  KvRounding kv{true, {}, {}};
  for (int l = 0; l < cfg->num_layers; ++l) {
    float ks = 0.05f * (l + 1), vs = 0.02f * (l + 1);
    kv.k_scale.push_back(ks);
    kv.v_scale.push_back(vs);
    for (auto [name, val] : {std::pair{"k_scale", ks}, std::pair{"v_scale", vs}}) {
      TensorData t{"model.layers." + std::to_string(l) + ".self_attn." + name, DType::kF32, {}, std::vector<std::byte>(4)};
      std::memcpy(t.bytes.data(), &val, 4);
      tensors.push_back(std::move(t));
    }
  }
  ASSERT_TRUE(write_safetensors(dir.file("model.safetensors"), tensors).ok());
  auto prompt = random_prompt(37, cfg->vocab_size);
  auto ref = reference_logits(dir.path(), prompt, kv);
  EXPECT_LT(max_abs_diff(ref, backend_logits(dir.path(), prompt, "fp8")), 2e-4f);
  // With unit scales the result differs: the scales were used.
  KvRounding unit{true, std::vector<float>(cfg->num_layers, 1.0f), std::vector<float>(cfg->num_layers, 1.0f)};
  EXPECT_GT(max_abs_diff(ref, reference_logits(dir.path(), prompt, unit)), 1e-4f);
}

TEST(Fp8KvTest, PoolHoldsTwiceTheTokensOfBf16) {
  BATON_REQUIRE_MODELS();
  const std::string dir = testing::models_dir() + "/tiny-llama3";
  int bf16_blocks = 0, fp8_blocks = 0;
  backend_logits(dir, {1, 2, 3}, "bf16", &bf16_blocks);
  backend_logits(dir, {1, 2, 3}, "fp8", &fp8_blocks);
  EXPECT_EQ(fp8_blocks, 2 * bf16_blocks);
}

}  // namespace
}  // namespace baton
