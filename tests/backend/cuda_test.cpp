// The CUDA backend (bf16 compute) against transformers' goldens and against the CPU backend
// (fp32 compute, the same paged-KV semantics). Skipped where no GPU is visible; bench/gpu/cuda.sh
// runs it on the lent GPU machine.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>

#include "backend/backend.h"
#include "backend/backend_test_util.h"
#include "engine/engine_test_util.h"
#include "engine/sampler.h"
#include "model/random_model.h"

namespace baton {
namespace {

using testing::next_token_logits;
using testing::prompt_logits;

#define BATON_REQUIRE_GPU()                                                 \
  do {                                                                      \
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible"; \
  } while (0)

BackendOptions cuda_options(const std::string& kv_dtype = "auto") {
  BackendOptions o;
  o.device = "cuda";
  o.kv_dtype = kv_dtype;
  o.kv_cache_bytes = size_t{64} << 20;
  o.cuda_paths = CudaPaths{};  // the default paths, whatever BATON_CUDA_* the environment has
  return o;
}

std::unique_ptr<Backend> make(const std::string& dir, const BackendOptions& o) {
  auto b = create_backend(dir, o);
  EXPECT_TRUE(b.ok()) << (b.ok() ? "" : b.error());
  return b.ok() ? std::move(*b) : nullptr;
}

// max |a - b| over max |b|: the error relative to the scale of the logits.
double max_rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double worst = 0, scale = 1e-6;
  for (size_t i = 0; i < a.size(); ++i) {
    worst = std::max(worst, std::abs(double(a[i]) - b[i]));
    scale = std::max(scale, std::abs(double(b[i])));
  }
  return worst / scale;
}

struct GoldenParam {
  std::string model;
  std::string kv_dtype;
};
void PrintTo(const GoldenParam& p, std::ostream* os) {
  *os << p.model << " " << p.kv_dtype;
}
class CudaGoldensTest : public ::testing::TestWithParam<GoldenParam> {};

// How far bf16 compute may move logits, relative to their scale (max(1, max |logit|)): 2e-2 for
// bf16 checkpoints. stories260k is an fp32 checkpoint: rounding its weights to bf16 alone moves
// its logits by up to 0.1, and transformers itself, run in bf16, lands 0.18 relative from its
// fp32 goldens (bench/RESULTS.md), so it gets 0.1.
double bf16_tolerance(const Backend& b) {
  return b.config().dtype == "float32" ? 1e-1 : 2e-2;
}

double scale_of(const std::vector<float>& logits) {
  double s = 1;
  for (float v : logits) s = std::max(s, double(std::abs(v)));
  return s;
}

// An fp8 cache with unit scales moves stories260k's logits by up to half their scale on the CPU
// too (a trained fp32 checkpoint without KV scales): nothing to compare there.
bool fp8_meaningless(const GoldenParam& p) {
  return p.kv_dtype == "fp8" && p.model == "stories260k";
}

// Teacher forcing through the backend: the prompt as one prefill pass, then `tokens` one decode
// step at a time (single-sequence decode steps run as CUDA graphs). At every step the logit of
// tokens[i] must be within tol * scale of the maximum: the argmax, or a near-tie that bf16
// compute may break either way. Returns how many steps picked exactly the argmax.
int check_decisions(Backend& b, const std::vector<int>& prompt, const std::vector<int>& tokens, double tol) {
  const int bs = b.kv_spec().block_size;
  const int n = int(prompt.size() + tokens.size());
  std::vector<int32_t> table;
  for (int i = 0; i * bs < n; ++i) table.push_back(i);
  std::vector<float> logits = prompt_logits(b, prompt);
  int exact = 0;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int best = argmax(logits);
    const double gap = double(logits[best]) - logits[tokens[i]];
    EXPECT_LE(gap, tol * scale_of(logits))
        << "step " << i << ": token " << tokens[i] << " is " << gap << " below the best (" << best << ")";
    exact += best == tokens[i] ? 1 : 0;
    std::vector<int32_t> tok{tokens[i]};
    SeqBatch s{1, int(prompt.size() + i), table, true};
    Status st = b.forward({tok, std::span<const SeqBatch>(&s, 1)}, logits);
    EXPECT_TRUE(st.ok()) << st.message();
  }
  return exact;
}

// Logits after each golden prompt. With a bf16 KV cache they are compared with transformers'
// fp32 outputs. An fp8 cache quantizes K and V (the goldens do not): there the reference is the
// CPU backend with the same fp8 cache (fp32 compute; tests/backend/fp8_kv_test.cpp checks it),
// and the GPU may differ from it by the bf16 budget plus what fp8 itself does to these logits
// (measured here against the CPU without fp8): a K or V value that rounds to the other fp8
// neighbour moves the logits by that much.
TEST_P(CudaGoldensTest, LastLogitsMatchReference) {
  BATON_REQUIRE_GPU();
  BATON_REQUIRE_MODELS();
  if (fp8_meaningless(GetParam())) GTEST_SKIP() << "fp8 KV without scales on an fp32 checkpoint";
  const std::string model = GetParam().model, dir = testing::models_dir() + "/" + model;
  const bool fp8 = GetParam().kv_dtype == "fp8";
  Json goldens = testing::load_goldens();
  auto b = make(dir, testing::goldens_options(cuda_options(GetParam().kv_dtype)));
  ASSERT_TRUE(b);
  BackendOptions cpu_o = testing::goldens_options();
  auto cpu32 = fp8 ? make(dir, cpu_o) : nullptr;
  cpu_o.kv_dtype = "fp8";
  auto cpu8 = fp8 ? make(dir, cpu_o) : nullptr;
  const double tol = bf16_tolerance(*b);
  int case_no = 0;
  for (const auto& c : goldens[model]) {
    SCOPED_TRACE("case " + std::to_string(case_no++));
    const auto prompt = c["prompt_ids"].get<std::vector<int>>();
    auto logits = prompt_logits(*b, prompt);
    if (fp8) {
      const auto want = prompt_logits(*cpu8, prompt);
      const double fp8_effect = max_rel_diff(want, prompt_logits(*cpu32, prompt));
      const double err = max_rel_diff(logits, want);
      std::printf(
          "fp8 KV, %s case %d: |gpu - cpu| = %.4f of the logits' scale; fp8 itself moves them "
          "%.4f\n",
          model.c_str(), case_no - 1, err, fp8_effect);
      EXPECT_LT(err, tol + fp8_effect);
      continue;
    }
    auto top_ids = c["last_logits_top5_ids"].get<std::vector<int>>();
    auto top_vals = c["last_logits_top5"].get<std::vector<double>>();
    for (size_t k = 0; k < top_ids.size(); ++k)
      EXPECT_NEAR(logits[top_ids[k]], top_vals[k], tol * std::max(1.0, std::abs(top_vals[k])))
          << "logit of id " << top_ids[k];
    auto first8 = c["logits_first8_of_last"].get<std::vector<double>>();
    for (size_t k = 0; k < first8.size(); ++k)
      EXPECT_NEAR(logits[k], first8[k], tol * std::max(1.0, std::abs(first8[k]))) << "logit " << k;
  }
}

// transformers' greedy continuations, decision by decision (teacher forcing, so that one broken
// near-tie does not derail the rest): every golden token is the GPU's argmax or within the
// tolerance of it.
TEST_P(CudaGoldensTest, GreedyDecisionsMatchTransformers) {
  BATON_REQUIRE_GPU();
  BATON_REQUIRE_MODELS();
  if (fp8_meaningless(GetParam())) GTEST_SKIP() << "fp8 KV without scales on an fp32 checkpoint";
  const std::string model = GetParam().model;
  Json goldens = testing::load_goldens();
  auto b = make(testing::models_dir() + "/" + model, testing::goldens_options(cuda_options(GetParam().kv_dtype)));
  ASSERT_TRUE(b);
  const double tol = bf16_tolerance(*b) * (GetParam().kv_dtype == "fp8" ? 5 : 1);  // fp8: up to 8% (see above)
  int exact = 0, total = 0, case_no = 0;
  for (const auto& c : goldens[model]) {
    SCOPED_TRACE("case " + std::to_string(case_no++));
    const auto ids = c["greedy_ids"].get<std::vector<int>>();
    exact += check_decisions(*b, c["prompt_ids"].get<std::vector<int>>(), ids, tol);
    total += int(ids.size());
  }
  std::printf("%s, %s KV: %d of %d golden greedy decisions are exactly the GPU's argmax\n", model.c_str(),
              GetParam().kv_dtype.c_str(), exact, total);
}

// The engine on the GPU (device sampling, decode steps as CUDA graphs or not, all prompts in one
// batch or each alone): every token it emits is the argmax of a fresh backend's teacher-forced
// logits, up to near-ties.
TEST_P(CudaGoldensTest, EngineGreedyIsArgmax) {
  BATON_REQUIRE_GPU();
  BATON_REQUIRE_MODELS();
  if (fp8_meaningless(GetParam())) GTEST_SKIP() << "fp8 KV without scales on an fp32 checkpoint";
  const std::string model = GetParam().model;
  Json goldens = testing::load_goldens();
  auto checker = make(testing::models_dir() + "/" + model, cuda_options(GetParam().kv_dtype));
  ASSERT_TRUE(checker);
  const double tol = bf16_tolerance(*checker) * (GetParam().kv_dtype == "fp8" ? 5 : 1);
  for (int graphs : {256, 0})
    for (bool batched : {true, false}) {
      SCOPED_TRACE(std::string(batched ? "batched" : "alone") + ", graphs " + std::to_string(graphs));
      BackendOptions o = cuda_options(GetParam().kv_dtype);
      o.max_graph_batch = graphs;
      auto h = testing::EngineHarness::make(model, EngineConfig{}, o);
      ASSERT_TRUE(h);
      std::vector<std::pair<uint64_t, std::vector<int>>> runs;
      for (const auto& c : goldens[model]) {
        auto prompt = c["prompt_ids"].get<std::vector<int>>();
        runs.emplace_back(h->add(prompt, testing::greedy(24)), prompt);
        if (!batched) h->engine->run_until_idle();
      }
      h->engine->run_until_idle();
      for (const auto& [id, prompt] : runs) {
        ASSERT_EQ(h->results[id].tokens.size(), 24u);
        check_decisions(*checker, prompt, h->results[id].tokens, tol);
      }
      EXPECT_EQ(h->engine->stats().blocks_free, h->engine->stats().blocks_total);
    }
}

INSTANTIATE_TEST_SUITE_P(Models, CudaGoldensTest,
                         ::testing::Values(GoldenParam{"stories260k", "bf16"}, GoldenParam{"tiny-qwen2", "bf16"},
                                           GoldenParam{"tiny-qwen3", "bf16"}, GoldenParam{"tiny-llama3", "bf16"},
                                           GoldenParam{"stories260k", "fp8"}, GoldenParam{"tiny-qwen2", "fp8"},
                                           GoldenParam{"tiny-qwen3", "fp8"}, GoldenParam{"tiny-llama3", "fp8"}),
                         [](const auto& info) {
                           std::string n = info.param.model + "_" + info.param.kv_dtype;
                           for (char& ch : n)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

// A random Qwen2 model of hidden size 512, MLP width 1024 and two layers, with these heads (of
// 512 / num_heads unless head_dim is given).
Status write_qwen2_model(const std::string& dir, int num_heads, int num_kv_heads, int head_dim = 0) {
  RandomModelOptions m;
  m.architecture = "Qwen2ForCausalLM";
  m.hidden_size = 512;
  m.num_heads = num_heads;
  m.num_kv_heads = num_kv_heads;
  m.head_dim = head_dim;
  m.intermediate_size = 1024;
  m.num_layers = 2;
  return write_random_model(dir, m);
}

// A bigger random model (head_dim 64 and 128, GQA) so that prompts span many blocks, prefill
// tiles and split-K decode ranges. The KV groups of 2, 4, 7 and 10 query heads take the decode
// attention's CTAs of 2, 4, 8 (7 used, as Qwen2.5-0.5B) and 8 (two CTAs of 5) heads.
struct HeadShape {
  int head_dim, heads, kv_heads;
};
class CudaVsCpuTest : public ::testing::TestWithParam<HeadShape> {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible";
    const HeadShape& h = GetParam();
    ASSERT_TRUE(write_qwen2_model(dir_.path(), h.heads, h.kv_heads, h.head_dim).ok());
  }
  testing::TempDir dir_;
};

std::vector<int> some_prompt(int n, int salt) {
  std::vector<int> p(n);
  for (int i = 0; i < n; ++i) p[i] = (i * 37 + salt * 101 + 11) % 400;  // the random model's vocabulary: 406
  return p;
}

TEST_P(CudaVsCpuTest, PrefillAndDecodeLogitsMatchCpu) {
  BackendOptions cpu_o;
  cpu_o.kv_cache_bytes = 64 << 20;
  auto cpu = make(dir_.path(), cpu_o);
  ASSERT_TRUE(cpu);
  for (const std::string kv : {"bf16", "fp8"}) {
    SCOPED_TRACE(kv);
    cpu_o.kv_dtype = kv;
    auto cpu_kv = make(dir_.path(), cpu_o);
    // The decode step below is one token: its attention takes the KV group's query heads
    // together, as every step does by default, or (attn_group_heads 1) one head per CTA, as
    // models whose groups the grouped kernel does not take do, or (attn_mma_tokens 1) runs on
    // tensor cores, as steps of many tokens do.
    for (const std::string mode : {"a head per CTA", "grouped", "tensor cores"}) {
      for (int max_batch_tokens : {2048, 64}) {  // 64: the prompt runs as several passes
        BackendOptions o = cuda_options(kv);
        o.max_batch_tokens = max_batch_tokens;
        if (mode == "a head per CTA") o.cuda_paths->attn_group_heads = 1;
        if (mode == "tensor cores") o.cuda_paths->attn_mma_tokens = 1;
        auto gpu = make(dir_.path(), o);
        ASSERT_TRUE(gpu && cpu_kv);
        for (int len : {1, 17, 300, 700}) {
          SCOPED_TRACE("prompt of " + std::to_string(len) + ", passes of " + std::to_string(max_batch_tokens) +
                       ", decode attention: " + mode);
          auto prompt = some_prompt(len, len);
          auto want = prompt_logits(*cpu_kv, prompt);
          auto got = prompt_logits(*gpu, prompt);
          // fp8: plus what fp8 itself does to these logits (see LastLogitsMatchReference).
          const double tol = 2e-2 + (kv == "fp8" ? max_rel_diff(want, prompt_logits(*cpu, prompt)) : 0.0);
          EXPECT_LT(max_rel_diff(got, want), tol);
          // One more token through the decode kernel (split-K over the 300+ cached keys).
          const auto got2 = next_token_logits(*gpu, len, prompt[0]), want2 = next_token_logits(*cpu_kv, len, prompt[0]);
          EXPECT_LT(max_rel_diff(got2, want2), tol);
        }
      }
    }
  }
}

// Mixed steps (a prompt chunk beside decode tokens) and many sequences through the engine on the
// GPU: every token it emits is the CPU backend's argmax (fp32 compute, teacher-forced), up to
// near-ties within bf16 noise. The engine warms up first (Engine::warm_up: a decode step of each
// graph size up to 24 sequences, into a borrowed block), so the steps replay those graphs.
TEST_P(CudaVsCpuTest, EngineGreedyIsCpuArgmax) {
  BackendOptions cpu_o;
  cpu_o.kv_dtype = "bf16";
  cpu_o.kv_cache_bytes = 64 << 20;
  auto cpu = make(dir_.path(), cpu_o);
  ASSERT_TRUE(cpu);
  EngineConfig ec;
  ec.max_num_batched_tokens = 256;  // long prompts are chunked and share steps with decodes
  ec.max_num_seqs = 24;
  auto h = testing::EngineHarness::make(dir_.path(), ec, cuda_options("bf16"));
  ASSERT_TRUE(h);
  auto warmed = h->engine->warm_up();
  ASSERT_TRUE(warmed.ok()) << warmed.error();
  EXPECT_EQ(*warmed, 6);  // 1, 2, 4, 8, 16, 24
  EXPECT_EQ(h->engine->stats().blocks_free, h->engine->stats().blocks_total);
  std::map<int, uint64_t> ids;
  for (int i = 0; i < 24; ++i) ids[i] = h->add(some_prompt(5 + i * 29, i), testing::greedy(12));
  h->engine->run_until_idle();
  int exact = 0;
  for (auto& [i, id] : ids) {
    SCOPED_TRACE("request " + std::to_string(i));
    ASSERT_EQ(h->results[id].tokens.size(), 12u);
    exact += check_decisions(*cpu, some_prompt(5 + i * 29, i), h->results[id].tokens, 2e-2);
  }
  std::printf("%d of %d GPU engine tokens are exactly the CPU's argmax\n", exact, 24 * 12);
}

INSTANTIATE_TEST_SUITE_P(Heads, CudaVsCpuTest,
                         ::testing::Values(HeadShape{64, 8, 2}, HeadShape{128, 4, 2}, HeadShape{64, 14, 2},
                                           HeadShape{128, 10, 1}),
                         [](const auto& info) {
                           const HeadShape& h = info.param;
                           return "d" + std::to_string(h.head_dim) + "_h" + std::to_string(h.heads) + "_kv" +
                                  std::to_string(h.kv_heads);
                         });

// --tp-invariant on the GPU: its sliced GEMMs and tree sums stay within bf16 noise of the plain
// path on one GPU, and where two or more GPUs are visible, tp=2 (and 4) give tp=1's logits bit
// for bit, prompts through the prefill kernels (in one pass and in several) and a decode step
// through split-K attention, and the engine's greedy outputs over mixed steps are the same.
class CudaTpInvariantTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible";
    // 4 slices: 8 heads, 4 KV heads and the MLP width all split 4 ways.
    ASSERT_TRUE(write_qwen2_model(dir_.path(), 8, 4).ok());
  }
  BackendOptions options(int tp, int max_batch_tokens = 2048) {
    BackendOptions o = cuda_options("bf16");
    o.tp_size = tp;
    o.tp_invariant = true;
    o.max_batch_tokens = max_batch_tokens;
    return o;
  }
  // Prompt logits, then one decode token's.
  std::vector<std::vector<float>> run(Backend& b, int len) {
    auto prompt = some_prompt(len, len);
    auto first = prompt_logits(b, prompt);
    return {first, next_token_logits(b, len, prompt[0])};
  }
  testing::TempDir dir_;
};

TEST_F(CudaTpInvariantTest, CloseToThePlainPathOnOneGpu) {
  auto plain = make(dir_.path(), cuda_options("bf16"));
  auto sliced = make(dir_.path(), options(1));
  ASSERT_TRUE(plain && sliced);
  for (int len : {1, 17, 300}) {
    SCOPED_TRACE("prompt of " + std::to_string(len));
    auto a = run(*plain, len), b = run(*sliced, len);
    EXPECT_LT(max_rel_diff(b[0], a[0]), 2e-2);
    EXPECT_LT(max_rel_diff(b[1], a[1]), 2e-2);
  }
}

TEST_F(CudaTpInvariantTest, LogitsAreBitForBitThoseOfOneGpu) {
  const int gpus = cuda_device_count();
  if (gpus < 2) GTEST_SKIP() << "needs 2 GPUs (" << gpus << " visible)";
  for (int max_batch_tokens : {2048, 64}) {
    auto one = make(dir_.path(), options(1, max_batch_tokens));
    ASSERT_TRUE(one);
    std::map<int, std::vector<std::vector<float>>> want;
    for (int len : {1, 17, 300, 700}) want[len] = run(*one, len);
    one.reset();
    for (int tp : {2, 4}) {
      if (tp > gpus) continue;
      auto many = make(dir_.path(), options(tp, max_batch_tokens));
      ASSERT_TRUE(many);
      for (auto& [len, w] : want) {
        SCOPED_TRACE("tp " + std::to_string(tp) + ", prompt of " + std::to_string(len) + ", passes of " +
                     std::to_string(max_batch_tokens));
        auto got = run(*many, len);
        for (int step = 0; step < 2; ++step) {
          size_t differ = 0;
          for (size_t i = 0; i < w[step].size(); ++i) differ += std::memcmp(&w[step][i], &got[step][i], 4) != 0;
          EXPECT_EQ(differ, 0u) << (step == 0 ? "prompt" : "decode") << " logits of " << w[step].size();
        }
      }
    }
  }
}

TEST_F(CudaTpInvariantTest, EngineGreedyIsTheSameAtTp2) {
  if (cuda_device_count() < 2) GTEST_SKIP() << "needs 2 GPUs";
  EngineConfig ec;
  ec.max_num_batched_tokens = 256;  // chunked prompts beside decodes, decode graphs of 1..32 rows
  std::vector<std::vector<int>> outputs[2];
  for (int which = 0; which < 2; ++which) {
    auto h = testing::EngineHarness::make(dir_.path(), ec, options(which + 1));
    ASSERT_TRUE(h);
    std::vector<uint64_t> ids;
    for (int i = 0; i < 24; ++i) ids.push_back(h->add(some_prompt(5 + i * 29, i), testing::greedy(24)));
    h->engine->run_until_idle();
    for (uint64_t id : ids) outputs[which].push_back(h->results[id].tokens);
  }
  EXPECT_EQ(outputs[0], outputs[1]);
}

// Sampling on the device: top-k 1 and a tiny top-p are greedy; a seed fixes the draw; the
// empirical distribution of many draws follows softmax(logits / T) within top-k.
TEST(CudaSamplingTest, FollowsTheDistribution) {
  BATON_REQUIRE_GPU();
  BATON_REQUIRE_MODELS();
  auto b = make(testing::models_dir() + "/tiny-qwen3", cuda_options());
  ASSERT_TRUE(b);
  const std::vector<int> prompt{1, 2, 3, 4, 5, 6, 7};
  auto logits = prompt_logits(*b, prompt);
  std::vector<int32_t> table{0};
  std::vector<int32_t> toks(prompt.begin(), prompt.end());
  SeqBatch s{int(toks.size()), 0, table, true};
  auto draw = [&](DeviceSampling p) {
    int32_t out = -1;
    Status st = b->forward_sample({toks, std::span<const SeqBatch>(&s, 1)}, std::span(&p, 1), std::span(&out, 1));
    EXPECT_TRUE(st.ok()) << st.message();
    return out;
  };
  const int best = argmax(logits);
  EXPECT_EQ(draw({0.f, 0, 1.f, 1, 0}), best);
  EXPECT_EQ(draw({1.f, 1, 1.f, 2, 0}), best);
  EXPECT_EQ(draw({1.f, 0, 1e-6f, 3, 0}), best);
  EXPECT_EQ(draw({0.8f, 0, 0.9f, 42, 0}), draw({0.8f, 0, 0.9f, 42, 0}));
  {
    // Greedy rows (reduced by several CTAs each) beside a sampled row in one step: the prompt as
    // three sequences with their own blocks.
    std::vector<int32_t> t3, tables3[3] = {{1}, {2}, {3}};
    std::vector<SeqBatch> seqs;
    for (int i = 0; i < 3; ++i) {
      t3.insert(t3.end(), prompt.begin(), prompt.end());
      seqs.push_back({int(prompt.size()), 0, tables3[i], true});
    }
    const DeviceSampling ps[3] = {{0.f, 0, 1.f, 7, 0}, {1.f, 1, 1.f, 8, 0}, {0.f, 0, 1.f, 9, 0}};
    int32_t out3[3] = {-1, -1, -1};
    ASSERT_TRUE(b->forward_sample({t3, seqs}, ps, out3).ok());
    EXPECT_EQ(out3[0], best);
    EXPECT_EQ(out3[1], best);
    EXPECT_EQ(out3[2], best);
  }

  // Temperature 2, top-k 5: every draw is one of the 5 best; frequencies follow the softmax.
  const float temp = 2.f;
  std::vector<std::pair<float, int>> order;
  for (int i = 0; i < int(logits.size()); ++i) order.push_back({logits[i], i});
  std::sort(order.rbegin(), order.rend());
  std::map<int, double> want;
  double z = 0;
  for (int k = 0; k < 5; ++k) z += std::exp((order[k].first - order[0].first) / temp);
  for (int k = 0; k < 5; ++k) want[order[k].second] = std::exp((order[k].first - order[0].first) / temp) / z;
  std::map<int, int> seen;
  const int n = 2000;
  for (int i = 0; i < n; ++i) ++seen[draw({temp, 5, 1.f, 1000 + uint64_t(i), 0})];
  for (const auto& [tok, count] : seen) EXPECT_TRUE(want.count(tok)) << "token " << tok << " is not in the top 5";
  for (const auto& [tok, p] : want) {
    const double sd = std::sqrt(p * (1 - p) / n);
    EXPECT_NEAR(seen[tok] / double(n), p, 5 * sd + 1e-3) << "token " << tok;
  }
  // top-p 0.5 over the same distribution keeps the smallest best set reaching half the mass.
  double all = 0;
  for (const auto& o : order) all += std::exp((o.first - order[0].first) / temp);
  double cum = 0;
  size_t keep = 0;
  while (cum < 0.5 * all) cum += std::exp((order[keep++].first - order[0].first) / temp);
  for (int i = 0; i < 300; ++i) {
    const int tok = draw({temp, 0, 0.5f, 5000 + uint64_t(i), 0});
    bool kept = false;
    for (size_t k = 0; k < keep; ++k) kept = kept || order[k].second == tok;
    EXPECT_TRUE(kept) << "token " << tok << " is outside the top-p 0.5 set of " << keep;
  }
}

// Steps of up to 8 tokens run their GEMMs through our skinny GEMM kernels (norm and SiLU fused
// in) instead of cuBLAS; CudaPaths::skinny_gemms (BATON_CUDA_GEMV=0) turns them off. Both paths must give the same logits
// up to summation order, for every step size 1..8, for decode steps (graphs) and for a mixed step
// whose logits rows are a subset (the fused final norm gathers rows). Two shapes with ragged
// ends: hidden 264 / intermediate 776 are not multiples of the 256 elements a warp loads at once
// (1..4 rows; 5..8 need multiples of 32 and fall back to cuBLAS in both), hidden 288 /
// intermediate 800 take the tensor-core kernel for 5..8 rows (9 and 25 slices of 32 over 8
// warps; the vocabulary of 406 rows is not a multiple of its 16-row tiles).
class CudaSkinnyTest : public ::testing::TestWithParam<std::pair<int, int>> {
 protected:
  void SetUp() override {  // a 3-layer Qwen3 (QK-norm) of the parameter's hidden / intermediate sizes
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible";
    RandomModelOptions m;
    m.architecture = "Qwen3ForCausalLM";
    m.hidden_size = GetParam().first;
    m.intermediate_size = GetParam().second;
    m.num_heads = 4;
    m.num_kv_heads = 2;
    m.head_dim = 64;
    m.num_layers = 3;
    ASSERT_TRUE(write_random_model(dir_.path(), m).ok());
  }
  testing::TempDir dir_;
};

// Decode steps of `sizes[j]` sequences each (sequence i's next token at past[i], which advances):
// every step's logits from `gpu` within summation-order noise of `ref`'s.
void expect_decode_steps_match(Backend& ref, Backend& gpu, const std::vector<int>& sizes,
                               const std::vector<std::vector<int32_t>>& tables, std::vector<int>& past) {
  const int V = gpu.config().vocab_size;
  for (int n : sizes) {
    SCOPED_TRACE("decode step of " + std::to_string(n));
    std::vector<int32_t> toks;
    std::vector<SeqBatch> seqs;
    for (int i = 0; i < n; ++i) {
      toks.push_back((n * 31 + i * 7) % 400);
      seqs.push_back({1, past[i], tables[i], true});
    }
    std::vector<float> a(size_t(n) * V), b(size_t(n) * V);
    ASSERT_TRUE(ref.forward({toks, seqs}, a).ok());
    ASSERT_TRUE(gpu.forward({toks, seqs}, b).ok());
    EXPECT_LT(max_rel_diff(b, a), 5e-3);
    for (int i = 0; i < n; ++i) ++past[i];
  }
}

TEST_P(CudaSkinnyTest, MatchesCublas) {
  BackendOptions o = cuda_options("bf16");
  o.max_graph_batch = 8;
  BackendOptions r = o;
  r.cuda_paths->skinny_gemms = false;
  auto ref = make(dir_.path(), r);
  o.cuda_paths->time_skinny_graphs = false;  // the 8-row decode graph on skinny GEMMs even if cuBLAS times faster
  auto gpu = make(dir_.path(), o);
  ASSERT_TRUE(ref && gpu);
  const int V = gpu->config().vocab_size;

  // Eight sequences, prompts of 20 + 3 i tokens (prefill passes of > 8 tokens: cuBLAS in both).
  const int n_seqs = 8, per_seq = 8;  // blocks of 16 per sequence, disjoint
  std::vector<std::vector<int>> prompts;
  std::vector<std::vector<int32_t>> tables(n_seqs);
  for (int i = 0; i < n_seqs; ++i) {
    prompts.push_back(some_prompt(20 + 3 * i, i));
    for (int j = 0; j < per_seq; ++j) tables[i].push_back(i * per_seq + j);
    std::vector<int32_t> toks(prompts[i].begin(), prompts[i].end());
    SeqBatch s{int(toks.size()), 0, tables[i], true};
    std::vector<float> a(V), b(V);
    ASSERT_TRUE(ref->forward({toks, std::span<const SeqBatch>(&s, 1)}, a).ok());
    ASSERT_TRUE(gpu->forward({toks, std::span<const SeqBatch>(&s, 1)}, b).ok());
    EXPECT_LT(max_rel_diff(b, a), 5e-3) << "prompt " << i << " (LM head on one row)";
  }
  std::vector<int> past(n_seqs);
  for (int i = 0; i < n_seqs; ++i) past[i] = int(prompts[i].size());
  ASSERT_NO_FATAL_FAILURE(expect_decode_steps_match(*ref, *gpu, {1, 2, 3, 4, 5, 6, 7, 8}, tables, past));
  // A mixed step of 7 tokens: 3 more of sequence 0 (logits for its last), one each of 1..4, and
  // only sequences 0, 2 and 4 want logits.
  std::vector<int32_t> toks{5, 6, 7, 8, 9, 10, 11};
  std::vector<SeqBatch> seqs{{3, past[0], tables[0], true},
                             {1, past[1], tables[1], false},
                             {1, past[2], tables[2], true},
                             {1, past[3], tables[3], false},
                             {1, past[4], tables[4], true}};
  std::vector<float> a(size_t(3) * V), b(size_t(3) * V);
  ASSERT_TRUE(ref->forward({toks, seqs}, a).ok());
  ASSERT_TRUE(gpu->forward({toks, seqs}, b).ok());
  EXPECT_LT(max_rel_diff(b, a), 5e-3) << "mixed step";
}

// Decode graphs of 9+ rows on cuBLASLt algorithms chosen per GEMM shape by timing
// (CudaPaths::gemm_tune, gemm_tune.h; require: the fastest cuBLASLt candidate of every shape, even
// where cublasGemmEx was faster, so the tuned path runs whatever the timings say) against the same
// steps on cublasGemmEx: decode steps of 9, 16, 17 and 24 sequences (graphs of 16 and 24 rows,
// padded), then the 16-row graph again (replayed, not captured), each within summation-order noise.
TEST_P(CudaSkinnyTest, TunedGemmsMatchCublas) {
  BackendOptions o = cuda_options("bf16");
  o.max_graph_batch = 24;
  BackendOptions r = o;
  r.cuda_paths->gemm_tune = CudaPaths::GemmTune::kOff;  // cublasGemmEx only (tuning is on by default)
  auto ref = make(dir_.path(), r);
  o.cuda_paths->gemm_tune = CudaPaths::GemmTune::kRequire;
  auto gpu = make(dir_.path(), o);
  ASSERT_TRUE(ref && gpu);
  const int V = gpu->config().vocab_size;
  const int n_seqs = 24, per_seq = 8;  // blocks of 16 per sequence, disjoint
  std::vector<std::vector<int32_t>> tables(n_seqs);
  std::vector<int> past(n_seqs);
  for (int i = 0; i < n_seqs; ++i) {
    std::vector<int> prompt = some_prompt(10 + 2 * i, i);
    for (int j = 0; j < per_seq; ++j) tables[i].push_back(i * per_seq + j);
    std::vector<int32_t> toks(prompt.begin(), prompt.end());
    SeqBatch s{int(toks.size()), 0, tables[i], true};
    std::vector<float> a(V), b(V);
    ASSERT_TRUE(ref->forward({toks, std::span<const SeqBatch>(&s, 1)}, a).ok());
    ASSERT_TRUE(gpu->forward({toks, std::span<const SeqBatch>(&s, 1)}, b).ok());
    EXPECT_LT(max_rel_diff(b, a), 5e-3) << "prompt " << i;
    past[i] = int(toks.size());
  }
  ASSERT_NO_FATAL_FAILURE(expect_decode_steps_match(*ref, *gpu, {9, 16, 17, 24, 16}, tables, past));
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaSkinnyTest, ::testing::Values(std::pair{264, 776}, std::pair{288, 800}),
                         [](const auto& info) {
                           return "hidden_" + std::to_string(info.param.first) + "_intermediate_" +
                                  std::to_string(info.param.second);
                         });

TEST(CudaBackendTest, BadOptionsAreOneLineErrors) {
  BATON_REQUIRE_GPU();
  BATON_REQUIRE_MODELS();
  const std::string dir = testing::models_dir() + "/tiny-qwen3";
  BackendOptions o = cuda_options("fp32");
  auto b = create_backend(dir, o);
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.error().find("bf16 or fp8"), std::string::npos) << b.error();
  o = cuda_options();
  o.tp_size = 64;
  b = create_backend(dir, o);
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.error().find("GPUs"), std::string::npos) << b.error();
}

}  // namespace
}  // namespace baton
