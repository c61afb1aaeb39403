// Every supported architecture loads from a directory written the Hugging Face way and generates;
// the architecture-specific tensors (Qwen2's QKV bias, Qwen3's QK norm) are required, not ignored.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "backend/backend.h"
#include "engine/engine_test_util.h"
#include "model/random_model.h"
#include "model/safetensors.h"
#include "test_util.h"

namespace baton {
namespace {

class ArchitectureTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ArchitectureTest, LoadsAndGeneratesDeterministically) {
  testing::TempDir dir;
  ASSERT_TRUE(write_random_model(dir.path(), testing::small_model(GetParam())).ok());
  auto h = testing::EngineHarness::make(dir.path());
  ASSERT_TRUE(h);
  std::vector<int> prompt = {5, 17, 42, 99};
  SamplingParams sp = testing::greedy(10);
  sp.logprobs = 0;
  uint64_t a = h->add(prompt, sp);
  h->engine->run_until_idle();
  uint64_t b = h->add(prompt, sp);
  h->engine->run_until_idle();
  EXPECT_EQ(h->results[a].tokens.size(), 10u);
  EXPECT_EQ(h->results[a].tokens, h->results[b].tokens);
  ASSERT_EQ(h->results[a].logprobs.size(), 10u);
  for (const auto& lp : h->results[a].logprobs) ASSERT_TRUE(std::isfinite(lp.logprob) && lp.logprob <= 0);
}

INSTANTIATE_TEST_SUITE_P(All, ArchitectureTest,
                         ::testing::Values("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                                           "Qwen3ForCausalLM"));

TEST(ArchitectureTest, Qwen2WithoutBiasIsRefused) {
  testing::TempDir dir;
  ASSERT_TRUE(write_random_model(dir.path(), testing::small_model("LlamaForCausalLM")).ok());
  auto text = read_file(dir.file("config.json"));
  Json cfg = Json::parse(*text);
  cfg["architectures"] = {"Qwen2ForCausalLM"};
  std::ofstream(dir.file("config.json")) << cfg.dump();
  auto b = create_cpu_backend(dir.path(), {});
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.error().find("checkpoint has no tensor 'model.layers.0.self_attn.q_proj.bias'"), std::string::npos)
      << b.error();
}

TEST(ArchitectureTest, ShardedCheckpointWithIndexLoads) {
  testing::TempDir dir;
  ASSERT_TRUE(write_random_model(dir.path(), testing::small_model("LlamaForCausalLM")).ok());
  auto whole = SafetensorsFile::open(dir.file("model.safetensors"));
  ASSERT_TRUE(whole.ok());
  std::vector<TensorData> a, b;
  Json weight_map = Json::object();
  for (const auto& [name, view] : whole->tensors()) {
    TensorData t{name, view.dtype, view.shape, std::vector<std::byte>(view.data.begin(), view.data.end())};
    bool first = name.find("layers.1.") == std::string::npos;
    weight_map[name] = first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
    (first ? a : b).push_back(std::move(t));
  }
  ASSERT_TRUE(write_safetensors(dir.file("model-00001-of-00002.safetensors"), a).ok());
  ASSERT_TRUE(write_safetensors(dir.file("model-00002-of-00002.safetensors"), b).ok());
  std::filesystem::remove(dir.file("model.safetensors"));
  std::ofstream(dir.file("model.safetensors.index.json")) << Json({{"weight_map", weight_map}}).dump();
  auto backend = create_cpu_backend(dir.path(), {});
  ASSERT_TRUE(backend.ok()) << backend.error();

  // An index that names a tensor no shard has is an error.
  weight_map["model.extra.weight"] = "model-00003-of-00002.safetensors";
  std::ofstream(dir.file("model.safetensors.index.json")) << Json({{"weight_map", weight_map}}).dump();
  auto bad = create_cpu_backend(dir.path(), {});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().find("model.extra.weight"), std::string::npos);
}

}  // namespace
}  // namespace baton
