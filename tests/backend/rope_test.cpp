// RoPE's inverse frequencies: transformers' own (fp32) by default; rounded to bf16 for a bf16
// checkpoint only with BackendOptions::rope_bf16_frequencies, which reproduces the goldens.
#include <gtest/gtest.h>

#include <vector>

#include "backend/weight_prep.h"
#include "common/float16.h"
#include "model/config.h"
#include "test_util.h"

namespace baton {
namespace {

float bf16_round(float f) {
  return bf16_to_f32(f32_to_bf16(f));
}

// tiny-llama3 (bf16, llama3 scaling: factor 8, original 256 positions, theta 500000, head_dim 16):
// transformers 5.17's model.model.rotary_emb.inv_freq after from_pretrained(dir, dtype=float32).
const std::vector<float> kTransformersTinyLlama3 = {1.0f,
                                                    0.193922758102417f,
                                                    0.010538230650126934f,
                                                    0.0009115831344388425f,
                                                    0.00017677668074611574f,
                                                    3.428102354519069e-05f,
                                                    6.647869668086059e-06f,
                                                    1.289173155782919e-06f};

TEST(RopeFrequenciesTest, DefaultAreTransformersFp32Ones) {
  BATON_REQUIRE_MODELS();
  auto c = ModelConfig::load(testing::models_dir() + "/tiny-llama3");
  ASSERT_TRUE(c.ok()) << c.error();
  ASSERT_EQ(c->dtype, "bfloat16");
  const std::vector<float> inv = rope_inv_freq(*c, false);
  ASSERT_EQ(inv.size(), kTransformersTinyLlama3.size());
  int not_bf16 = 0;
  for (size_t i = 0; i < inv.size(); ++i) {
    // transformers computes in float32 arithmetic, we in double: at most an ulp or two apart.
    EXPECT_NEAR(inv[i], kTransformersTinyLlama3[i], 3e-7f * kTransformersTinyLlama3[i]) << "frequency " << i;
    not_bf16 += inv[i] != bf16_round(inv[i]);
  }
  EXPECT_GT(not_bf16, 4) << "fp32 frequencies should not all be bf16 values";
}

TEST(RopeFrequenciesTest, Bf16OptionRoundsOnlyBf16Checkpoints) {
  BATON_REQUIRE_MODELS();
  auto c = ModelConfig::load(testing::models_dir() + "/tiny-llama3");
  ASSERT_TRUE(c.ok()) << c.error();
  const std::vector<float> exact = rope_inv_freq(*c, false), rounded = rope_inv_freq(*c, true);
  ASSERT_EQ(exact.size(), rounded.size());
  for (size_t i = 0; i < exact.size(); ++i) EXPECT_EQ(rounded[i], bf16_round(exact[i])) << "frequency " << i;
  EXPECT_NE(exact, rounded);
  // An fp32 checkpoint (stories260k) keeps fp32 frequencies either way.
  auto fp32 = ModelConfig::load(testing::models_dir() + "/stories260k");
  ASSERT_TRUE(fp32.ok()) << fp32.error();
  ASSERT_NE(fp32->dtype, "bfloat16");
  EXPECT_EQ(rope_inv_freq(*fp32, true), rope_inv_freq(*fp32, false));
}

}  // namespace
}  // namespace baton
