// The CPU backend against transformers' own outputs (../shared/models/goldens.json): greedy
// continuations must be identical and last-position logits within 1e-3 relative, with one rank
// and with tensor parallelism (ranks as threads, weights split Megatron-style, KV heads split or
// replicated).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "backend/backend.h"
#include "backend/backend_test_util.h"
#include "engine/engine_test_util.h"
#include "engine/sampler.h"

namespace baton {
namespace {

struct Param {
  std::string model;
  int tp;
};
class GoldensTest : public ::testing::TestWithParam<Param> {};

using testing::prompt_logits;

TEST_P(GoldensTest, LastLogitsMatchTransformers) {
  BATON_REQUIRE_MODELS();
  const std::string model = GetParam().model;
  Json goldens = testing::load_goldens();
  ASSERT_TRUE(goldens.contains(model));
  BackendOptions opts = testing::goldens_options();
  opts.kv_cache_bytes = 32 << 20;
  opts.tp_size = GetParam().tp;
  auto backend = create_cpu_backend(testing::models_dir() + "/" + model, opts);
  ASSERT_TRUE(backend.ok()) << backend.error();
  int case_no = 0;
  for (const auto& c : goldens[model]) {
    SCOPED_TRACE("case " + std::to_string(case_no++));
    auto logits = prompt_logits(**backend, c["prompt_ids"].get<std::vector<int>>());
    auto top_ids = c["last_logits_top5_ids"].get<std::vector<int>>();
    auto top_vals = c["last_logits_top5"].get<std::vector<double>>();
    for (size_t k = 0; k < top_ids.size(); ++k)
      EXPECT_NEAR(logits[top_ids[k]], top_vals[k], 1e-3 * std::max(1.0, std::abs(top_vals[k])))
          << "logit of id " << top_ids[k];
    EXPECT_EQ(argmax(logits), top_ids[0]);
    auto first8 = c["logits_first8_of_last"].get<std::vector<double>>();
    for (size_t k = 0; k < first8.size(); ++k)
      EXPECT_NEAR(logits[k], first8[k], 1e-3 * std::max(1.0, std::abs(first8[k]))) << "logit " << k;
  }
}

// Greedy continuations through the engine, all prompts in one batch and each alone.
TEST_P(GoldensTest, GreedyIdsMatchTransformers) {
  BATON_REQUIRE_MODELS();
  const std::string model = GetParam().model;
  Json goldens = testing::load_goldens();
  BackendOptions opts = testing::goldens_options();
  opts.tp_size = GetParam().tp;
  for (bool batched : {true, false}) {
    auto h = testing::EngineHarness::make(model, EngineConfig{}, opts);
    ASSERT_TRUE(h);
    std::vector<std::pair<uint64_t, std::vector<int>>> want;
    for (const auto& c : goldens[model]) {
      auto greedy_ids = c["greedy_ids"].get<std::vector<int>>();
      uint64_t id = h->add(c["prompt_ids"].get<std::vector<int>>(), testing::greedy(static_cast<int>(greedy_ids.size())));
      want.emplace_back(id, greedy_ids);
      if (!batched) h->engine->run_until_idle();
    }
    h->engine->run_until_idle();
    for (const auto& [id, ids] : want) {
      EXPECT_EQ(h->results[id].tokens, ids) << (batched ? "batched" : "alone");
      EXPECT_EQ(h->results[id].finish_reason, "length");
    }
    EXPECT_EQ(h->engine->stats().blocks_free, h->engine->stats().blocks_total);
  }
}

INSTANTIATE_TEST_SUITE_P(Models, GoldensTest,
                         ::testing::Values(Param{"stories260k", 1}, Param{"tiny-qwen2", 1}, Param{"tiny-qwen3", 1},
                                           Param{"tiny-llama3", 1}, Param{"stories260k", 2}, Param{"tiny-qwen2", 2},
                                           Param{"tiny-qwen3", 2}, Param{"tiny-llama3", 4}),
                         [](const auto& info) {
                           std::string n = info.param.model + "_tp" + std::to_string(info.param.tp);
                           for (char& ch : n)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

// --tp-invariant (common/tp_split.h): the row-parallel GEMMs run in the same slices at every tp and
// their sums follow one pairwise tree, so tp=N's logits are tp=1's bit for bit, and the model is
// still the model (transformers' logits within the goldens' tolerance).
class TpInvariantTest : public ::testing::TestWithParam<Param> {};

TEST_P(TpInvariantTest, LogitsAreBitForBitThoseOfOneRank) {
  BATON_REQUIRE_MODELS();
  const std::string model = GetParam().model;
  Json goldens = testing::load_goldens();
  auto make = [&](int tp) {
    BackendOptions o = testing::goldens_options();
    o.kv_cache_bytes = 32 << 20;
    o.tp_size = tp;
    o.tp_invariant = true;
    return create_cpu_backend(testing::models_dir() + "/" + model, o);
  };
  auto one = make(1), many = make(GetParam().tp);
  ASSERT_TRUE(one.ok()) << one.error();
  ASSERT_TRUE(many.ok()) << many.error();
  int case_no = 0;
  for (const auto& c : goldens[model]) {
    SCOPED_TRACE("case " + std::to_string(case_no++));
    const auto ids = c["prompt_ids"].get<std::vector<int>>();
    const std::vector<float> a = prompt_logits(**one, ids), b = prompt_logits(**many, ids);
    ASSERT_EQ(a.size(), b.size());
    size_t differ = 0;
    for (size_t i = 0; i < a.size(); ++i) differ += std::memcmp(&a[i], &b[i], sizeof(float)) != 0;
    EXPECT_EQ(differ, 0u) << "of " << a.size() << " logits";
    auto top_ids = c["last_logits_top5_ids"].get<std::vector<int>>();
    auto top_vals = c["last_logits_top5"].get<std::vector<double>>();
    for (size_t k = 0; k < top_ids.size(); ++k)
      EXPECT_NEAR(b[top_ids[k]], top_vals[k], 1e-3 * std::max(1.0, std::abs(top_vals[k]))) << "logit of id " << top_ids[k];
  }
}

TEST_P(TpInvariantTest, GreedyContinuationsEqualOneRanks) {
  BATON_REQUIRE_MODELS();
  const std::string model = GetParam().model;
  Json goldens = testing::load_goldens();
  std::vector<std::vector<int>> outputs[2];
  for (int which = 0; which < 2; ++which) {
    BackendOptions opts = testing::goldens_options();
    opts.tp_size = which == 0 ? 1 : GetParam().tp;
    opts.tp_invariant = true;
    auto h = testing::EngineHarness::make(model, EngineConfig{}, opts);
    ASSERT_TRUE(h);
    std::vector<uint64_t> ids;
    for (const auto& c : goldens[model]) ids.push_back(h->add(c["prompt_ids"].get<std::vector<int>>(), testing::greedy(40)));
    h->engine->run_until_idle();
    for (uint64_t id : ids) {
      EXPECT_EQ(h->results[id].tokens.size(), 40u);
      outputs[which].push_back(h->results[id].tokens);
    }
  }
  EXPECT_EQ(outputs[0], outputs[1]);
}

INSTANTIATE_TEST_SUITE_P(Models, TpInvariantTest,
                         ::testing::Values(Param{"stories260k", 2}, Param{"stories260k", 4}, Param{"tiny-qwen3", 2},
                                           Param{"tiny-llama3", 2}),
                         [](const auto& info) {
                           std::string n = info.param.model + "_tp" + std::to_string(info.param.tp);
                           for (char& ch : n)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

TEST(TpInvariantOptionTest, ATpThatDoesNotDivideTheSlicesIsAnError) {
  BATON_REQUIRE_MODELS();
  BackendOptions o;
  o.kv_cache_bytes = 32 << 20;
  o.tp_size = 4;  // tiny-qwen3: 8 heads, 2 KV heads: 2 slices
  o.tp_invariant = true;
  auto b = create_cpu_backend(testing::models_dir() + "/tiny-qwen3", o);
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.error().find("does not divide this model's 2 slices"), std::string::npos) << b.error();
  o.tp_invariant = false;  // plain TP replicates the KV heads
  EXPECT_TRUE(create_cpu_backend(testing::models_dir() + "/tiny-qwen3", o).ok());
}

}  // namespace
}  // namespace baton
