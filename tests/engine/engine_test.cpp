// Engine acceptance: continuous batching, chunked prefill, prefix caching and preemption must not
// change greedy outputs; aborts and finishes return every block; seeded sampling is
// reproducible whatever else is in the batch; stop conditions and remote-KV fallback work.
#include "engine/engine.h"

#include <gtest/gtest.h>

#include <cstdlib>

#include <random>

#include "engine/engine_test_util.h"

namespace baton {
namespace {

using testing::Collected;
using testing::EngineHarness;
using testing::greedy;

struct Job {
  std::vector<int> prompt;
  int max_tokens;
};

std::vector<Job> mixed_jobs(int n, int vocab, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<Job> jobs;
  for (int i = 0; i < n; ++i) {
    int len = 1 + static_cast<int>(rng() % 300);
    Job j;
    for (int k = 0; k < len; ++k) j.prompt.push_back(static_cast<int>(rng() % vocab));
    j.max_tokens = 1 + static_cast<int>(rng() % 40);
    jobs.push_back(std::move(j));
  }
  return jobs;
}

// Each job alone, one after another: the reference.
std::vector<std::vector<int>> run_alone(const std::string& model, const std::vector<Job>& jobs) {
  auto h = EngineHarness::make(model, EngineConfig{.enable_prefix_caching = false});
  std::vector<std::vector<int>> out;
  for (const Job& j : jobs) {
    uint64_t id = h->add(j.prompt, greedy(j.max_tokens));
    h->engine->run_until_idle();
    out.push_back(h->results[id].tokens);
  }
  return out;
}

class BatchingTest : public ::testing::TestWithParam<std::string> {};

TEST_P(BatchingTest, SixtyFourMixedRequestsEqualRunningEachAlone) {
  BATON_REQUIRE_MODELS();
  const std::string model = GetParam();
  auto probe = EngineHarness::make(model);
  ASSERT_TRUE(probe);
  // Sanitizer runs (5-20x slower) take 24 requests: still more than one step's budget of 128
  // tokens, so prompts are chunked and share steps with decodes.
  const int n_jobs = std::getenv("BATON_SANITIZER_RUN") ? 24 : 64;
  auto jobs = mixed_jobs(n_jobs, probe->engine->model_config().vocab_size, 17);
  auto want = run_alone(model, jobs);

  // All at once, with a small token budget so that long prompts are chunked across steps.
  {
    auto h = EngineHarness::make(model, EngineConfig{.max_num_seqs = 64, .max_num_batched_tokens = 128});
    std::vector<uint64_t> ids;
    for (const Job& j : jobs) ids.push_back(h->add(j.prompt, greedy(j.max_tokens)));
    h->engine->run_until_idle();
    for (size_t i = 0; i < jobs.size(); ++i) {
      const Collected& c = h->results[ids[i]];
      EXPECT_EQ(c.tokens, want[i]) << "request " << i << " (prompt " << jobs[i].prompt.size() << ")";
      EXPECT_EQ(c.final_events, 1);
    }
    auto s = h->engine->stats();
    EXPECT_EQ(s.blocks_free, s.blocks_total);
    EXPECT_GT(s.steps, 0u);
  }
  // Staggered: a new request joins every other step while others are mid-decode.
  {
    auto h = EngineHarness::make(model, EngineConfig{.max_num_seqs = 16, .max_num_batched_tokens = 256});
    std::vector<uint64_t> ids;
    size_t next = 0;
    int step = 0;
    while (next < jobs.size() || h->engine->stats().running + h->engine->stats().waiting > 0) {
      if (next < jobs.size() && step % 2 == 0) {
        ids.push_back(h->add(jobs[next].prompt, greedy(jobs[next].max_tokens)));
        ++next;
      }
      h->engine->step();
      ++step;
      ASSERT_LT(step, 100000);
    }
    for (size_t i = 0; i < jobs.size(); ++i) EXPECT_EQ(h->results[ids[i]].tokens, want[i]) << "request " << i;
    auto s = h->engine->stats();
    EXPECT_EQ(s.blocks_free, s.blocks_total);
  }
}

INSTANTIATE_TEST_SUITE_P(Models, BatchingTest, ::testing::Values("tiny-qwen3", "tiny-llama3"),
                         [](const auto& info) { return info.param == "tiny-qwen3" ? "qwen3" : "llama3"; });

TEST(EngineTest, PrefixCachingReusesBlocksAndKeepsOutput) {
  BATON_REQUIRE_MODELS();
  auto h = EngineHarness::make("tiny-qwen3");
  ASSERT_TRUE(h);
  std::vector<int> prefix;
  for (int i = 0; i < 64; ++i) prefix.push_back((i * 37 + 11) % 2000);
  std::vector<int> a = prefix, b = prefix;
  a.insert(a.end(), {5, 6, 7});
  b.insert(b.end(), {8, 9});

  auto ref = run_alone("tiny-qwen3", {{b, 12}});
  uint64_t ia = h->add(a, greedy(12));
  h->engine->run_until_idle();
  auto before = h->engine->stats();
  uint64_t ib = h->add(b, greedy(12));
  h->engine->run_until_idle();
  auto after = h->engine->stats();

  // The 64-token prefix is 4 full blocks of 16: all four come from the cache.
  EXPECT_EQ(after.prefix_hit_blocks - before.prefix_hit_blocks, 4u);
  EXPECT_EQ(h->results[ib].cached_tokens, 64);
  // New blocks only for the rest: 2 prompt tokens + 12 outputs from position 64 -> 1 block.
  EXPECT_EQ(after.fresh_block_allocations - before.fresh_block_allocations, 1u);
  EXPECT_EQ(after.prompt_tokens - before.prompt_tokens, 2u);
  EXPECT_EQ(h->results[ib].tokens, ref[0]);
  EXPECT_EQ(h->results[ia].cached_tokens, 0);
  EXPECT_EQ(after.blocks_free, after.blocks_total);
}

TEST(EngineTest, PreemptionUnderATinyPoolKeepsOutputs) {
  BATON_REQUIRE_MODELS();
  auto probe = EngineHarness::make("tiny-llama3");
  auto jobs = mixed_jobs(24, probe->engine->model_config().vocab_size, 5);
  for (auto& j : jobs) j.max_tokens = 30;
  auto want = run_alone("tiny-llama3", jobs);

  // 40 blocks of 16 tokens: far less than 24 requests of up to 330 tokens need at once.
  BackendOptions bo;
  bo.kv_cache_bytes = 40 * probe->engine->kv_spec().bytes_per_block;
  auto h = EngineHarness::make("tiny-llama3", EngineConfig{.max_num_seqs = 24, .max_num_batched_tokens = 512}, bo);
  ASSERT_TRUE(h);
  EXPECT_EQ(h->engine->kv_spec().num_blocks, 40);
  std::vector<uint64_t> ids;
  for (const Job& j : jobs) ids.push_back(h->add(j.prompt, greedy(j.max_tokens)));
  h->engine->run_until_idle();
  auto s = h->engine->stats();
  EXPECT_GT(s.preemptions, 0u) << "the pool was meant to force preemption";
  for (size_t i = 0; i < jobs.size(); ++i) EXPECT_EQ(h->results[ids[i]].tokens, want[i]) << "request " << i;
  EXPECT_EQ(s.blocks_free, s.blocks_total);
}

TEST(EngineTest, AbortAtAnyPointFreesEveryBlock) {
  BATON_REQUIRE_MODELS();
  auto h = EngineHarness::make("tiny-qwen3", EngineConfig{.max_num_batched_tokens = 64});
  ASSERT_TRUE(h);
  const int total = h->engine->stats().blocks_total;
  auto jobs = mixed_jobs(12, h->engine->model_config().vocab_size, 9);
  std::vector<uint64_t> ids;
  for (const Job& j : jobs) ids.push_back(h->add(j.prompt, greedy(50)));
  h->engine->abort(ids[0]);  // before it was ever scheduled
  for (int step = 0; step < 6; ++step) h->engine->step();
  for (size_t i = 1; i < ids.size(); i += 2) h->engine->abort(ids[i]);  // mid prefill / decode
  h->engine->step();
  EXPECT_LT(h->engine->stats().blocks_free, total);
  for (uint64_t id : ids) h->engine->abort(id);
  h->engine->run_until_idle();
  auto s = h->engine->stats();
  EXPECT_EQ(s.blocks_free, total);
  EXPECT_EQ(s.running + s.waiting, 0);
  for (uint64_t id : ids) {
    EXPECT_EQ(h->results[id].final_events, 1) << id;
    EXPECT_EQ(h->results[id].finish_reason, "abort");
  }
}

TEST(EngineTest, SeededSamplingIsReproducibleAcrossBatchCompositions) {
  BATON_REQUIRE_MODELS();
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.9f;
  p.top_k = 50;
  p.seed = 1234;
  p.max_tokens = 20;
  p.ignore_eos = true;
  std::vector<int> prompt = {3, 14, 15, 92, 65};

  auto solo = EngineHarness::make("tiny-qwen3");
  uint64_t a = solo->add(prompt, p);
  solo->engine->run_until_idle();

  auto crowd = EngineHarness::make("tiny-qwen3");
  auto others = mixed_jobs(10, crowd->engine->model_config().vocab_size, 3);
  for (size_t i = 0; i < 5; ++i) crowd->add(others[i].prompt, greedy(15));
  uint64_t b = crowd->add(prompt, p);
  for (size_t i = 5; i < others.size(); ++i) {
    SamplingParams q = p;
    q.seed = 99 + i;
    crowd->add(others[i].prompt, q);
  }
  crowd->engine->run_until_idle();
  EXPECT_EQ(solo->results[a].tokens, crowd->results[b].tokens);

  p.seed = 1235;
  uint64_t c = solo->add(prompt, p);
  solo->engine->run_until_idle();
  EXPECT_NE(solo->results[a].tokens, solo->results[c].tokens);
}

TEST(EngineTest, StopStringsCutTheTextAndAreNeverStreamedEarly) {
  BATON_REQUIRE_MODELS();
  auto h = EngineHarness::make("tiny-qwen3");
  ASSERT_TRUE(h);
  std::vector<int> prompt = {1, 20, 76, 421, 485, 129, 161};
  uint64_t free_run = h->add(prompt, greedy(40));
  h->engine->run_until_idle();
  const std::string full = h->results[free_run].text;
  ASSERT_GT(full.size(), 12u);
  // Stop at a piece of text from the middle of the free run (it spans tokens).
  const std::string stop = full.substr(full.size() / 2, 5);
  const size_t at = full.find(stop);
  SamplingParams p = greedy(40);
  p.stop = {stop};
  uint64_t id = h->add(prompt, p);
  std::string streamed;
  h->engine->run_until_idle();
  const Collected& c = h->results[id];
  EXPECT_EQ(c.finish_reason, "stop");
  EXPECT_EQ(c.text, full.substr(0, at));
  EXPECT_EQ(c.text.find(stop), std::string::npos);
  EXPECT_LT(c.tokens.size(), h->results[free_run].tokens.size());

  p.include_stop_str_in_output = true;
  uint64_t id2 = h->add(prompt, p);
  h->engine->run_until_idle();
  EXPECT_EQ(h->results[id2].text, full.substr(0, at + stop.size()));
}

TEST(EngineTest, StopTokenIdsAndEos) {
  BATON_REQUIRE_MODELS();
  auto h = EngineHarness::make("tiny-qwen3");
  std::vector<int> prompt = {1, 20, 76, 421};
  uint64_t free_run = h->add(prompt, greedy(20));
  h->engine->run_until_idle();
  auto toks = h->results[free_run].tokens;
  SamplingParams p = greedy(20);
  p.stop_token_ids = {toks[5]};
  uint64_t id = h->add(prompt, p);
  h->engine->run_until_idle();
  auto first = std::find(toks.begin(), toks.end(), toks[5]) - toks.begin();
  EXPECT_EQ(h->results[id].tokens, std::vector<int>(toks.begin(), toks.begin() + first + 1));
  EXPECT_EQ(h->results[id].finish_reason, "stop");
  EXPECT_EQ(h->results[id].completion_tokens, static_cast<int>(first + 1));
}

TEST(EngineTest, PenaltiesChangeRepetitiveOutput) {
  BATON_REQUIRE_MODELS();
  auto h = EngineHarness::make("stories260k");
  std::vector<int> prompt = {1, 243, 263, 387, 486};  // greedy repeats tokens (see goldens)
  uint64_t plain = h->add(prompt, greedy(24));
  SamplingParams p = greedy(24);
  p.frequency_penalty = 2.0f;
  uint64_t pen = h->add(prompt, p);
  h->engine->run_until_idle();
  auto count_max = [](const std::vector<int>& v) {
    std::map<int, int> n;
    int best = 0;
    for (int t : v) best = std::max(best, ++n[t]);
    return best;
  };
  EXPECT_LT(count_max(h->results[pen].tokens), count_max(h->results[plain].tokens));
}

TEST(EngineTest, LogprobsAreConsistent) {
  BATON_REQUIRE_MODELS();
  auto h = EngineHarness::make("tiny-llama3");
  SamplingParams p = greedy(8);
  p.logprobs = 3;
  uint64_t id = h->add({4, 8, 15, 16, 23, 42}, p);
  h->engine->run_until_idle();
  const Collected& c = h->results[id];
  ASSERT_EQ(c.logprobs.size(), 8u);
  for (size_t i = 0; i < 8; ++i) {
    const TokenLogprob& lp = c.logprobs[i];
    EXPECT_EQ(lp.token, c.tokens[i]);
    ASSERT_EQ(lp.top.size(), 3u);
    EXPECT_EQ(lp.top[0].first, lp.token);  // greedy picks the best
    EXPECT_FLOAT_EQ(lp.top[0].second, lp.logprob);
    EXPECT_GE(lp.top[0].second, lp.top[1].second);
    EXPECT_LT(lp.logprob, 0.0f);
  }
}

TEST(EngineTest, BadRequestsAreRefusedWithReasons) {
  BATON_REQUIRE_MODELS();
  auto h = EngineHarness::make("tiny-qwen3", EngineConfig{.max_model_len = 100});
  ASSERT_TRUE(h);
  auto add = [&](std::vector<int> prompt, SamplingParams p) {
    Request r;
    r.prompt = std::move(prompt);
    r.params = p;
    return h->engine->add_request(std::move(r), nullptr);
  };
  EXPECT_EQ(add({}, greedy(4)).error(), "the prompt is empty");
  EXPECT_NE(add(std::vector<int>(100, 1), greedy(4)).error().find("maximum context length is 100"), std::string::npos);
  EXPECT_NE(add({1, 99999}, greedy(4)).error().find("outside the vocabulary"), std::string::npos);
  SamplingParams p = greedy(4);
  p.top_p = 2;
  EXPECT_EQ(add({1}, p).error(), "top_p must be in (0, 1]");
  // Output stops at the context length.
  uint64_t id = h->add(std::vector<int>(95, 7), greedy(50));
  h->engine->run_until_idle();
  EXPECT_EQ(h->results[id].finish_reason, "length");
  EXPECT_EQ(h->results[id].tokens.size(), 5u);
}

// The decode side of P/D: a request waits for remote KV; if the transfer fails, the engine
// recomputes locally and the output is what colocated serving gives.
TEST(EngineTest, RemoteKvFailureFallsBackToLocalRecompute) {
  BATON_REQUIRE_MODELS();
  auto h = EngineHarness::make("tiny-qwen3");
  std::vector<int> prompt = {1, 20, 76, 421, 485, 129, 161, 445, 218, 142, 424, 133, 211, 330, 282, 46, 7, 7};
  auto want = run_alone("tiny-qwen3", {{prompt, 10}});
  Request r;
  r.prompt = prompt;
  r.params = greedy(10);
  r.wait_for_remote_kv = true;
  std::vector<int> got;
  bool done = false;
  auto id = h->engine->add_request(std::move(r), [&](RequestOutput&& o) {
    got.insert(got.end(), o.token_ids.begin(), o.token_ids.end());
    done = done || o.finished;
  });
  ASSERT_TRUE(id.ok());
  h->engine->step();
  EXPECT_EQ(h->engine->block_table_of(*id).size(), 2u);  // destination blocks for 18 tokens
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(h->engine->step()) << "nothing runs while KV is in flight";
  EXPECT_TRUE(got.empty());
  h->engine->remote_kv_ready(*id, false, -1);
  h->engine->run_until_idle();
  EXPECT_TRUE(done);
  EXPECT_EQ(got, want[0]);
  EXPECT_EQ(h->engine->stats().blocks_free, h->engine->stats().blocks_total);
}

// A CPU backend that says it prepares decode steps of some batch sizes (as the CUDA backend's
// graphs) and records the size of every decode step it runs.
class GraphSizesBackend : public Backend {
 public:
  GraphSizesBackend(std::unique_ptr<Backend> inner, std::vector<int> sizes)
      : inner_(std::move(inner)), sizes_(std::move(sizes)) {}
  const ModelConfig& config() const override { return inner_->config(); }
  const KvCacheSpec& kv_spec() const override { return inner_->kv_spec(); }
  KvMemory kv_memory(int rank) override { return inner_->kv_memory(rank); }
  Status forward(const Batch& batch, std::span<float> logits) override {
    if (std::all_of(batch.seqs.begin(), batch.seqs.end(), [](const SeqBatch& s) { return s.n_tokens == 1; }))
      decode_steps->push_back(static_cast<int>(batch.seqs.size()));
    return inner_->forward(batch, logits);
  }
  std::vector<int> decode_graph_batches() const override { return sizes_; }
  std::shared_ptr<std::vector<int>> decode_steps = std::make_shared<std::vector<int>>();

 private:
  std::unique_ptr<Backend> inner_;
  std::vector<int> sizes_;
};

// Engine::warm_up runs a decode step of each prepared size up to max_num_seqs (the first size
// past it with max_num_seqs sequences), gives its borrowed block back, leaves no trace in later
// outputs, and refuses to run beside the loop; a backend with nothing to prepare runs no step.
TEST(EngineTest, WarmUpRunsEachPreparedDecodeSizeOnce) {
  BATON_REQUIRE_MODELS();
  const std::string dir = testing::models_dir() + "/tiny-qwen3";
  BackendOptions bo;
  bo.kv_cache_bytes = 16 << 20;
  auto inner = create_backend(dir, bo);
  ASSERT_TRUE(inner.ok()) << inner.error();
  auto backend = std::make_unique<GraphSizesBackend>(std::move(*inner), std::vector<int>{1, 2, 4, 8, 16, 24, 32});
  std::shared_ptr<std::vector<int>> steps = backend->decode_steps;
  auto engine = Engine::create(std::move(backend), nullptr, EngineConfig{.max_num_seqs = 20});
  ASSERT_TRUE(engine.ok()) << engine.error();
  auto warmed = (*engine)->warm_up();
  ASSERT_TRUE(warmed.ok()) << warmed.error();
  EXPECT_EQ(*warmed, 6);
  EXPECT_EQ(*steps, (std::vector<int>{1, 2, 4, 8, 16, 20}));
  EngineStats st = (*engine)->stats();
  EXPECT_EQ(st.blocks_free, st.blocks_total);

  // A request afterwards decodes as on an engine that never warmed up.
  std::vector<int> prompt;
  for (int i = 0; i < 40; ++i) prompt.push_back((i * 53 + 7) % 2000);
  auto want = run_alone("tiny-qwen3", {{prompt, 16}});
  std::vector<int> got;
  Request r;
  r.prompt = prompt;
  r.params = greedy(16);
  auto on_output = [&](RequestOutput&& o) { got.insert(got.end(), o.token_ids.begin(), o.token_ids.end()); };
  ASSERT_TRUE((*engine)->add_request(std::move(r), on_output).ok());
  (*engine)->run_until_idle();
  EXPECT_EQ(got, want[0]);
  st = (*engine)->stats();
  EXPECT_EQ(st.blocks_free, st.blocks_total);

  (*engine)->start();
  auto late = (*engine)->warm_up();
  EXPECT_FALSE(late.ok());
  (*engine)->stop();

  auto plain = EngineHarness::make("tiny-qwen3");
  ASSERT_TRUE(plain);
  auto none = plain->engine->warm_up();
  ASSERT_TRUE(none.ok()) << none.error();
  EXPECT_EQ(*none, 0);
}

TEST(EngineTest, BackgroundLoopServesConcurrentCallers) {
  BATON_REQUIRE_MODELS();
  auto h = EngineHarness::make("tiny-qwen3");
  // Under a sanitizer (TSan: ~100 s for 16) fewer callers still race each other.
  auto jobs = mixed_jobs(std::getenv("BATON_SANITIZER_RUN") ? 8 : 16, h->engine->model_config().vocab_size, 21);
  auto want = run_alone("tiny-qwen3", jobs);
  std::mutex m;
  std::condition_variable cv;
  std::map<uint64_t, std::vector<int>> got;
  int finished = 0;
  h->engine->start();
  std::vector<std::thread> callers;
  std::vector<uint64_t> ids(jobs.size());
  for (size_t i = 0; i < jobs.size(); ++i)
    callers.emplace_back([&, i] {
      Request r;
      r.prompt = jobs[i].prompt;
      r.params = greedy(jobs[i].max_tokens);
      auto id = h->engine->add_request(std::move(r), [&](RequestOutput&& o) {
        std::lock_guard lock(m);
        auto& v = got[o.seq_id];
        v.insert(v.end(), o.token_ids.begin(), o.token_ids.end());
        if (o.finished) {
          ++finished;
          cv.notify_all();
        }
      });
      ids[i] = id.ok() ? *id : 0;
    });
  for (auto& t : callers) t.join();
  {
    std::unique_lock lock(m);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(120), [&] { return finished == static_cast<int>(jobs.size()); }));
  }
  h->engine->stop();
  for (size_t i = 0; i < jobs.size(); ++i) EXPECT_EQ(got[ids[i]], want[i]) << i;
}

}  // namespace
}  // namespace baton
