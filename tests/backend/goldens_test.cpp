// The CPU backend against transformers' own outputs (../shared/models/goldens.json): greedy
// continuations must be identical and last-position logits within 1e-3 relative.
#include <gtest/gtest.h>

#include <cmath>

#include "backend/backend.h"
#include "engine/generator.h"
#include "test_util.h"

namespace baton {
namespace {

class GoldensTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldensTest, GreedyIdsAndLogitsMatchTransformers) {
  BATON_REQUIRE_MODELS();
  const std::string model = GetParam();
  Json goldens = testing::load_goldens();
  ASSERT_TRUE(goldens.contains(model));
  BackendOptions opts;
  opts.kv_cache_bytes = 32 << 20;
  auto backend = create_cpu_backend(testing::models_dir() + "/" + model, opts);
  ASSERT_TRUE(backend.ok()) << backend.error();
  Generator gen(**backend);
  int case_no = 0;
  for (const auto& c : goldens[model]) {
    SCOPED_TRACE("case " + std::to_string(case_no++));
    std::vector<int> prompt = c["prompt_ids"].get<std::vector<int>>();
    std::vector<int> want = c["greedy_ids"].get<std::vector<int>>();
    SamplingParams sp;
    sp.temperature = 0;
    sp.max_tokens = static_cast<int>(want.size());
    sp.ignore_eos = true;
    auto out = gen.generate(prompt, sp);
    ASSERT_TRUE(out.ok()) << out.error();
    EXPECT_EQ(out->token_ids, want);

    const auto& logits = out->last_prompt_logits;
    auto top_ids = c["last_logits_top5_ids"].get<std::vector<int>>();
    auto top_vals = c["last_logits_top5"].get<std::vector<double>>();
    for (size_t k = 0; k < top_ids.size(); ++k) {
      double got = logits[top_ids[k]];
      EXPECT_NEAR(got, top_vals[k], 1e-3 * std::max(1.0, std::abs(top_vals[k])))
          << "logit of id " << top_ids[k];
    }
    EXPECT_EQ(argmax(logits), top_ids[0]);
    auto first8 = c["logits_first8_of_last"].get<std::vector<double>>();
    for (size_t k = 0; k < first8.size(); ++k)
      EXPECT_NEAR(logits[k], first8[k], 1e-3 * std::max(1.0, std::abs(first8[k]))) << "logit " << k;
    EXPECT_EQ(gen.blocks().num_free(), gen.blocks().num_total());
  }
}

INSTANTIATE_TEST_SUITE_P(Models, GoldensTest,
                         ::testing::Values("stories260k", "tiny-qwen2", "tiny-qwen3", "tiny-llama3"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& ch : n)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

}  // namespace
}  // namespace baton
