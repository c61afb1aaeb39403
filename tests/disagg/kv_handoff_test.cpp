// The P/D KV handoff, in one process with real transfers: a prefill engine computes a prompt and
// holds its blocks; a decode engine reads them block by block from the prefill's KV pool through
// the transfer engine (both pools allocated by transfer agents), then decodes. The output must
// equal colocated serving token for token, and every block must come back to both pools.
#include <gtest/gtest.h>

#include <random>

#include "engine/engine_test_util.h"
#include "xfer/agent.h"

namespace baton {
namespace {

using testing::EngineHarness;
using testing::greedy;

struct Instance {
  std::unique_ptr<xfer::Agent> agent;
  xfer::MemoryDesc kv_region;
  std::unique_ptr<EngineHarness> engine;
};

Instance make_instance(const std::string& name, const std::string& model, const std::string& transport,
                       const std::string& kv_dtype) {
  Instance in;
  xfer::Agent::Config c;
  c.name = name;
  c.token = "handoff-test";  // the agents trust each other (the connector's capabilities are tested elsewhere)
  c.transports =
      transport == "tcp" ? std::vector<std::string>{"tcp"} : std::vector<std::string>{"ucx", "cuda_ipc", "tcp"};
  auto agent = xfer::Agent::create(c);
  EXPECT_TRUE(agent.ok());
  in.agent = std::move(*agent);
  BackendOptions bo;
  bo.kv_dtype = kv_dtype;
  bo.kv_cache_bytes = 8 << 20;
  bo.kv_allocator = [&in](int, size_t n) -> Result<void*> {
    BATON_ASSIGN_OR_RETURN(auto mem, in.agent->allocate_memory(n));
    in.kv_region = mem.second;
    return mem.first;
  };
  in.engine = EngineHarness::make(model, EngineConfig{}, bo);
  return in;
}

struct Param {
  std::string model, transport, kv_dtype;
};

class KvHandoffTest : public ::testing::TestWithParam<Param> {};

TEST_P(KvHandoffTest, DecodeFromTransferredKvEqualsColocated) {
  BATON_REQUIRE_MODELS();
  const Param p = GetParam();
  Instance prefill = make_instance("prefill", p.model, p.transport, p.kv_dtype);
  Instance decode = make_instance("decode", p.model, p.transport, p.kv_dtype);
  Instance colocated = make_instance("colocated", p.model, p.transport, p.kv_dtype);
  ASSERT_TRUE(prefill.engine && decode.engine && colocated.engine);
  auto session = decode.agent->connect(prefill.agent->describe());
  ASSERT_TRUE(session.ok()) << session.error();

  std::mt19937 rng(3);
  for (int prompt_len : {1, 16, 37, 150}) {
    SCOPED_TRACE("prompt " + std::to_string(prompt_len));
    std::vector<int> prompt(prompt_len);
    for (int& t : prompt) t = static_cast<int>(rng() % prefill.engine->engine->model_config().vocab_size);
    const int max_tokens = 20;
    uint64_t ref = colocated.engine->add(prompt, greedy(max_tokens));
    colocated.engine->engine->run_until_idle();

    // 1. Prefill: one token, blocks held.
    uint64_t pid = prefill.engine->add(prompt, greedy(1), /*hold_kv=*/true);
    prefill.engine->engine->run_until_idle();
    const auto& pout = prefill.engine->results[pid];
    ASSERT_EQ(pout.tokens.size(), 1u);
    const std::vector<int32_t> src_blocks = pout.kv_block_ids;
    ASSERT_EQ(src_blocks.size(), static_cast<size_t>((prompt_len + 15) / 16));
    EXPECT_EQ(prefill.engine->engine->num_held(), 1u);

    // 2. Decode: destination blocks for the prompt, then every layer's block is read.
    uint64_t did = decode.engine->add(prompt, greedy(max_tokens), false, /*remote_kv=*/true);
    decode.engine->engine->step();
    const std::vector<int32_t> dst_blocks = decode.engine->engine->block_table_of(did);
    ASSERT_EQ(dst_blocks.size(), src_blocks.size());
    const KvMemory src_mem = prefill.engine->engine->kv_memory(0);
    const KvMemory dst_mem = decode.engine->engine->kv_memory(0);
    ASSERT_EQ(src_mem.block_bytes, dst_mem.block_bytes);
    std::vector<xfer::TransferOp> ops;
    const int layers = prefill.engine->engine->model_config().num_layers;
    for (int l = 0; l < layers; ++l)
      for (size_t i = 0; i < src_blocks.size(); ++i)
        ops.push_back({decode.kv_region.region, l * dst_mem.layer_bytes + dst_blocks[i] * dst_mem.block_bytes,
                       prefill.kv_region.region, l * src_mem.layer_bytes + src_blocks[i] * src_mem.block_bytes,
                       src_mem.block_bytes});
    auto id = (*session)->read(ops);
    ASSERT_TRUE(id.ok()) << id.error();
    ASSERT_TRUE((*session)->wait(*id).ok());
    prefill.engine->engine->release_held(pid);  // what the decode side's notify triggers in P/D
    decode.engine->engine->remote_kv_ready(did, true, pout.tokens[0]);
    decode.engine->engine->run_until_idle();
    prefill.engine->engine->run_until_idle();

    EXPECT_EQ(decode.engine->results[did].tokens, colocated.engine->results[ref].tokens);
    EXPECT_EQ(decode.engine->results[did].finish_reason, "length");
    for (auto* in : {&prefill, &decode}) {
      auto s = in->engine->engine->stats();
      EXPECT_EQ(s.blocks_free, s.blocks_total) << "leaked blocks";
    }
    EXPECT_EQ(prefill.engine->engine->num_held(), 0u);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, KvHandoffTest,
    ::testing::Values(Param{"tiny-qwen3", "ucx", "auto"}, Param{"tiny-qwen3", "tcp", "bf16"},
                      Param{"tiny-llama3", "ucx", "fp8"}, Param{"tiny-llama3", "tcp", "auto"}),
    [](const auto& info) {
      std::string n = info.param.model + "_" + info.param.transport + "_" + info.param.kv_dtype;
      for (char& ch : n)
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
      return n;
    });

}  // namespace
}  // namespace baton
