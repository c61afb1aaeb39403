#include "engine/sampler.h"

#include <gtest/gtest.h>

#include <map>


namespace baton {
namespace {

TEST(SamplerTest, GreedyPicksFirstMaximum) {
  Sampler s;
  std::mt19937_64 rng(1);
  SamplingParams p;
  p.temperature = 0;
  std::vector<float> logits = {0.1f, 3.0f, -1.0f, 3.0f};
  EXPECT_EQ(s.sample(logits, p, rng), 1);
}

TEST(SamplerTest, SeededSamplingIsReproducible) {
  std::vector<float> logits(100);
  for (int i = 0; i < 100; ++i) logits[i] = static_cast<float>((i * 37) % 11) * 0.3f;
  SamplingParams p;
  p.temperature = 0.9f;
  p.top_p = 0.95f;
  auto draw = [&](uint64_t seed) {
    Sampler s;
    std::mt19937_64 rng(seed);
    std::vector<int> out;
    for (int i = 0; i < 50; ++i) out.push_back(s.sample(logits, p, rng));
    return out;
  };
  EXPECT_EQ(draw(42), draw(42));
  EXPECT_NE(draw(42), draw(43));
}

TEST(SamplerTest, TopKOneIsGreedyAndTopKLimitsTheSupport) {
  std::vector<float> logits = {1.0f, 2.0f, 5.0f, 4.9f, 0.0f};
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 1;
  Sampler s;
  std::mt19937_64 rng(3);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(s.sample(logits, p, rng), 2);
  p.top_k = 2;
  std::map<int, int> seen;
  for (int i = 0; i < 400; ++i) ++seen[s.sample(logits, p, rng)];
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_GT(seen[2], 100);
  EXPECT_GT(seen[3], 100);
}

TEST(SamplerTest, TopPAndMinPCutTheTail) {
  std::vector<float> logits = {10.0f, 9.0f, 0.0f, 0.0f, 0.0f};
  Sampler s;
  std::mt19937_64 rng(5);
  SamplingParams p;
  p.top_p = 0.5f;  // the first token alone holds ~73%
  for (int i = 0; i < 50; ++i) EXPECT_EQ(s.sample(logits, p, rng), 0);
  p.top_p = 1.0f;
  p.min_p = 0.2f;  // token 1 has ~37% of token 0's probability; the zeros have ~0.005%
  for (int i = 0; i < 200; ++i) EXPECT_LE(s.sample(logits, p, rng), 1);
}

TEST(SamplerTest, ValidateRejectsOutOfRange) {
  SamplingParams p;
  p.temperature = -1;
  EXPECT_EQ(p.validate().message(), "temperature must be >= 0");
  p = {};
  p.top_p = 0;
  EXPECT_FALSE(p.validate().ok());
  p = {};
  p.max_tokens = 0;
  EXPECT_FALSE(p.validate().ok());
}

}  // namespace
}  // namespace baton
