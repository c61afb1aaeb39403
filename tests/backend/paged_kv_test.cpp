// The paged KV cache must not change results: any block size, any prefill chunking, and blocks
// scattered anywhere in the pool give the same logits as one contiguous pass.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "backend/backend.h"
#include "engine/sampler.h"
#include "test_util.h"

namespace baton {
namespace {

std::unique_ptr<Backend> make_backend(const std::string& model, int block_size, const std::string& kv_dtype = "auto") {
  BackendOptions o;
  o.block_size = block_size;
  o.kv_cache_bytes = 16 << 20;
  o.kv_dtype = kv_dtype;
  auto b = create_cpu_backend(testing::models_dir() + "/" + model, o);
  EXPECT_TRUE(b.ok()) << (b.ok() ? "" : b.error());
  return b.ok() ? std::move(*b) : nullptr;
}

std::vector<int> prompt_of(int n, int vocab) {
  std::mt19937 rng(7);
  std::vector<int> p(n);
  for (int& t : p) t = static_cast<int>(rng() % vocab);
  return p;
}

// Prefills `prompt` in chunks of `chunk` tokens into blocks taken from the pool in a shuffled
// order; returns the last logits.
std::vector<float> prefill(Backend& b, const std::vector<int>& prompt, int chunk, unsigned shuffle_seed) {
  const KvCacheSpec& kv = b.kv_spec();
  std::vector<int32_t> ids(kv.num_blocks);
  for (int i = 0; i < kv.num_blocks; ++i) ids[i] = i;
  std::shuffle(ids.begin(), ids.end(), std::mt19937(shuffle_seed));
  std::vector<int32_t> table(ids.begin(), ids.begin() + (prompt.size() + kv.block_size - 1) / kv.block_size);
  std::vector<float> logits(b.config().vocab_size);
  for (size_t i = 0; i < prompt.size(); i += chunk) {
    size_t n = std::min<size_t>(chunk, prompt.size() - i);
    std::vector<int32_t> toks(prompt.begin() + i, prompt.begin() + i + n);
    bool last = i + n == prompt.size();
    SeqBatch s{static_cast<int>(n), static_cast<int>(i), table, last};
    Status st = b.forward({toks, std::span<const SeqBatch>(&s, 1)}, last ? std::span<float>(logits) : std::span<float>());
    EXPECT_TRUE(st.ok()) << st.message();
  }
  return logits;
}

TEST(PagedKvTest, BlockSizeChunkingAndPlacementDoNotChangeLogits) {
  BATON_REQUIRE_MODELS();
  for (const char* model : {"tiny-qwen3", "tiny-llama3"}) {
    SCOPED_TRACE(model);
    auto ref_backend = make_backend(model, 16);
    ASSERT_TRUE(ref_backend);
    auto prompt = prompt_of(83, ref_backend->config().vocab_size);
    auto ref = prefill(*ref_backend, prompt, 1000, 0);
    for (int bs : {1, 7, 16, 32}) {
      auto b = make_backend(model, bs);
      for (int chunk : {1, 5, 64}) {
        auto got = prefill(*b, prompt, chunk, 11u * bs + chunk);
        float max_diff = 0;
        for (size_t i = 0; i < ref.size(); ++i) max_diff = std::max(max_diff, std::abs(got[i] - ref[i]));
        EXPECT_LT(max_diff, 1e-4f) << "block_size " << bs << " chunk " << chunk;
      }
    }
  }
}

// Two sequences in one batch give the same logits as each alone.
TEST(PagedKvTest, BatchedSequencesMatchSingleRuns) {
  BATON_REQUIRE_MODELS();
  auto b = make_backend("tiny-qwen2", 16);
  ASSERT_TRUE(b);
  auto p1 = prompt_of(21, b->config().vocab_size);
  auto p2 = prompt_of(40, b->config().vocab_size);
  p2[0] = (p2[0] + 1) % b->config().vocab_size;
  auto solo1 = prefill(*b, p1, 1000, 1);
  auto solo2 = prefill(*b, p2, 1000, 2);

  std::vector<int32_t> t1 = {0, 1}, t2 = {5, 3, 9};
  std::vector<int32_t> toks(p1.begin(), p1.end());
  toks.insert(toks.end(), p2.begin(), p2.end());
  SeqBatch seqs[2] = {{21, 0, t1, true}, {40, 0, t2, true}};
  const int V = b->config().vocab_size;
  std::vector<float> logits(2 * V);
  ASSERT_TRUE(b->forward({toks, seqs}, logits).ok());
  for (int i = 0; i < V; ++i) {
    ASSERT_NEAR(logits[i], solo1[i], 1e-4f);
    ASSERT_NEAR(logits[V + i], solo2[i], 1e-4f);
  }
}

TEST(PagedKvTest, Bf16CacheHalvesBytesAndKeepsTopToken) {
  BATON_REQUIRE_MODELS();
  auto f32 = make_backend("tiny-llama3", 16, "fp32");
  auto bf16 = make_backend("tiny-llama3", 16, "bf16");
  ASSERT_TRUE(f32 && bf16);
  EXPECT_EQ(bf16->kv_spec().bytes_per_block * 2, f32->kv_spec().bytes_per_block);
  EXPECT_EQ(bf16->kv_spec().num_blocks, 2 * f32->kv_spec().num_blocks);
  auto prompt = prompt_of(50, f32->config().vocab_size);
  auto a = prefill(*f32, prompt, 1000, 0);
  auto c = prefill(*bf16, prompt, 1000, 0);
  EXPECT_EQ(argmax(a), argmax(c));
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], c[i], 0.05f + 0.02f * std::abs(a[i]));
}

TEST(PagedKvTest, InconsistentBatchIsAnErrorNotACrash) {
  BATON_REQUIRE_MODELS();
  auto b = make_backend("tiny-qwen3", 16);
  ASSERT_TRUE(b);
  std::vector<int32_t> toks = {1, 2, 3};
  std::vector<float> logits(b->config().vocab_size);
  std::vector<int32_t> bad_block = {b->kv_spec().num_blocks};
  SeqBatch s{3, 0, bad_block, true};
  Status st = b->forward({toks, std::span<const SeqBatch>(&s, 1)}, logits);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("out of range"), std::string::npos) << st.message();

  std::vector<int32_t> empty;
  SeqBatch s2{3, 0, empty, true};
  EXPECT_FALSE(b->forward({toks, std::span<const SeqBatch>(&s2, 1)}, logits).ok());

  std::vector<int32_t> ok_table = {0};
  std::vector<int32_t> bad_tok = {1, -5, 3};
  SeqBatch s3{3, 0, ok_table, true};
  Status st3 = b->forward({bad_tok, std::span<const SeqBatch>(&s3, 1)}, logits);
  EXPECT_FALSE(st3.ok());
  EXPECT_NE(st3.message().find("outside the vocabulary"), std::string::npos);
}

}  // namespace
}  // namespace baton
