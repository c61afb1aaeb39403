// Runs requests through an Engine on the test's thread and collects each one's stream.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "engine/engine.h"
#include "test_util.h"

namespace baton::testing {

struct Collected {
  std::vector<int> tokens;
  std::string text;
  std::string finish_reason;
  std::string error;
  int events = 0;
  int final_events = 0;
  int completion_tokens = 0;
  int cached_tokens = 0;
  std::vector<TokenLogprob> logprobs;
  std::vector<int32_t> kv_block_ids;
};

class EngineHarness {
 public:
  // An engine for models_dir()/model (or an absolute directory) on options.device (CPU by default).
  static std::unique_ptr<EngineHarness> make(const std::string& model, EngineConfig config = {},
                                             BackendOptions options = {}) {
    std::string dir = model.front() == '/' ? model : models_dir() + "/" + model;
    if (options.kv_cache_bytes == BackendOptions{}.kv_cache_bytes) options.kv_cache_bytes = 16 << 20;
    auto backend = create_backend(dir, options);
    EXPECT_TRUE(backend.ok()) << (backend.ok() ? "" : backend.error());
    if (!backend.ok()) return nullptr;
    std::shared_ptr<const Tokenizer> tok;
    if (auto t = Tokenizer::load(dir); t.ok()) tok = std::make_shared<const Tokenizer>(std::move(*t));
    auto engine = Engine::create(std::move(*backend), tok, config);
    EXPECT_TRUE(engine.ok()) << (engine.ok() ? "" : engine.error());
    if (!engine.ok()) return nullptr;
    auto h = std::make_unique<EngineHarness>();
    h->engine = std::move(*engine);
    h->tokenizer = tok;
    return h;
  }

  // Queues a request; returns its sequence id (0 and a test failure on error).
  uint64_t add(std::vector<int> prompt, SamplingParams params, bool hold_kv = false, bool remote_kv = false) {
    Request r;
    r.prompt = std::move(prompt);
    r.params = std::move(params);
    r.hold_kv = hold_kv;
    r.wait_for_remote_kv = remote_kv;
    auto id = engine->add_request(std::move(r), [this](RequestOutput&& o) {
      Collected& c = results[o.seq_id];
      c.tokens.insert(c.tokens.end(), o.token_ids.begin(), o.token_ids.end());
      c.text += o.text;
      c.logprobs.insert(c.logprobs.end(), o.logprobs.begin(), o.logprobs.end());
      ++c.events;
      if (o.finished) {
        ++c.final_events;
        c.finish_reason = o.finish_reason;
        c.error = o.error;
        c.completion_tokens = o.completion_tokens;
        c.cached_tokens = o.cached_tokens;
        c.kv_block_ids = o.kv_block_ids;
      }
    });
    EXPECT_TRUE(id.ok()) << (id.ok() ? "" : id.error());
    return id.ok() ? *id : 0;
  }

  std::unique_ptr<Engine> engine;
  std::shared_ptr<const Tokenizer> tokenizer;
  std::map<uint64_t, Collected> results;
};

inline SamplingParams greedy(int max_tokens) {
  SamplingParams p;
  p.temperature = 0;
  p.max_tokens = max_tokens;
  p.ignore_eos = true;
  return p;
}

}  // namespace baton::testing
