// engine-bench: in-process measurements of the engine on the CPU backend.
//   engine-bench throughput --model DIR [--batch 1,8,32] [--prompt-len 64] [--gen-len 128]
//   engine-bench chunked-itl --model DIR [--long-prompt 1500] [--budgets 128,256,4096]
//   engine-bench kv-agreement --model DIR [--goldens FILE] [--a bf16] [--b fp8]
// Prints markdown tables for bench/RESULTS.md.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <sstream>

#include "backend/backend.h"
#include "common/cli.h"
#include "common/json.h"
#include "common/mapped_file.h"
#include "engine/engine.h"
#include "engine/sampler.h"

namespace baton {
namespace {

using Clock = std::chrono::steady_clock;

std::vector<int> random_tokens(int n, int vocab, std::mt19937& rng) {
  std::vector<int> v(n);
  for (int& t : v) t = static_cast<int>(rng() % vocab);
  return v;
}

Result<std::unique_ptr<Engine>> make_engine(const std::string& model, EngineConfig ec, const std::string& kv_dtype,
                                            int threads) {
  BackendOptions bo;
  bo.kv_dtype = kv_dtype;
  bo.num_threads = threads;
  bo.kv_cache_bytes = size_t{512} << 20;
  BATON_ASSIGN_OR_RETURN(auto backend, create_cpu_backend(model, bo));
  return Engine::create(std::move(backend), nullptr, ec);
}

SamplingParams greedy(int n) {
  SamplingParams p;
  p.temperature = 0;
  p.max_tokens = n;
  p.ignore_eos = true;
  return p;
}

Status throughput(const std::string& model, const std::string& batches, int prompt_len, int gen_len, int threads) {
  std::printf("| batch | prompt | generated | wall s | output tok/s | total tok/s | mean TPOT ms |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  BATON_ASSIGN_OR_RETURN(auto batch_list, parse_uint_list(batches, "--batch"));
  for (int batch : batch_list) {
    BATON_ASSIGN_OR_RETURN(auto engine, make_engine(model, EngineConfig{.max_num_seqs = batch}, "auto", threads));
    std::mt19937 rng(batch);
    const int V = engine->model_config().vocab_size;
    std::vector<Clock::time_point> first(batch), last(batch);
    std::vector<int> counts(batch, 0);
    auto t0 = Clock::now();
    for (int i = 0; i < batch; ++i) {
      Request r;
      r.prompt = random_tokens(prompt_len, V, rng);
      r.params = greedy(gen_len);
      BATON_RETURN_IF_ERROR(engine->add_request(std::move(r), [&, i](RequestOutput&& o) {
        auto now = Clock::now();
        if (counts[i] == 0) first[i] = now;
        last[i] = now;
        counts[i] += static_cast<int>(o.token_ids.size());
      }));
    }
    engine->run_until_idle();
    double wall = std::chrono::duration<double>(Clock::now() - t0).count();
    double tpot = 0;
    for (int i = 0; i < batch; ++i) tpot += std::chrono::duration<double>(last[i] - first[i]).count() / (counts[i] - 1);
    tpot /= batch;
    double out_tokens = static_cast<double>(batch) * gen_len;
    std::printf("| %d | %d | %d | %.3f | %.0f | %.0f | %.3f |\n", batch, prompt_len, gen_len, wall, out_tokens / wall,
                (out_tokens + double(batch) * prompt_len) / wall, tpot * 1e3);
  }
  return {};
}

// Eight requests decode; a long prompt arrives; how long do the decoders' tokens take meanwhile?
Status chunked_itl(const std::string& model, int long_prompt, const std::string& budgets, int threads) {
  std::printf("| max-num-batched-tokens | long prompt | decoders' max ITL ms | decoders' p99 ITL ms | mean ITL ms | long prompt TTFT ms |\n");
  std::printf("|---|---|---|---|---|---|\n");
  BATON_ASSIGN_OR_RETURN(auto budget_list, parse_uint_list(budgets, "--budgets"));
  for (int budget : budget_list) {
    BATON_ASSIGN_OR_RETURN(auto engine,
                           make_engine(model, EngineConfig{.max_num_batched_tokens = budget}, "auto", threads));
    std::mt19937 rng(1);
    const int V = engine->model_config().vocab_size;
    std::vector<double> itl;
    std::vector<Clock::time_point> prev(8);
    for (int i = 0; i < 8; ++i) {
      Request r;
      r.prompt = random_tokens(32, V, rng);
      r.params = greedy(200);
      BATON_RETURN_IF_ERROR(engine->add_request(std::move(r), [&, i](RequestOutput&& o) {
        auto now = Clock::now();
        if (prev[i] != Clock::time_point{} && !o.token_ids.empty())
          itl.push_back(std::chrono::duration<double, std::milli>(now - prev[i]).count());
        prev[i] = now;
      }));
    }
    for (int s = 0; s < 20; ++s) engine->step();  // decoders are in steady state
    itl.clear();
    Request big;
    big.prompt = random_tokens(long_prompt, V, rng);
    big.params = greedy(1);
    auto t_add = Clock::now();
    double ttft = 0;
    BATON_RETURN_IF_ERROR(engine->add_request(std::move(big), [&](RequestOutput&&) {
      ttft = std::chrono::duration<double, std::milli>(Clock::now() - t_add).count();
    }));
    for (int s = 0; s < 60; ++s) engine->step();
    engine->run_until_idle();
    std::sort(itl.begin(), itl.end());
    double mean = 0;
    for (double v : itl) mean += v;
    mean /= std::max<size_t>(1, itl.size());
    std::printf("| %d | %d | %.2f | %.2f | %.2f | %.1f |\n", budget, long_prompt, itl.back(),
                itl[std::min(itl.size() - 1, itl.size() * 99 / 100)], mean, ttft);
  }
  return {};
}

// Teacher-forced top-1 agreement between two KV dtypes over the goldens' prompts and greedy ids.
Status kv_agreement(const std::string& model, const std::string& goldens_path, const std::string& model_key,
                    const std::string& a, const std::string& b) {
  BATON_ASSIGN_OR_RETURN(std::string text, read_file(goldens_path));
  BATON_ASSIGN_OR_RETURN(Json goldens, parse_json(text, goldens_path));
  if (!goldens.contains(model_key)) return make_error(goldens_path, ": no entry '", model_key, "'");
  BackendOptions oa, ob;
  oa.kv_dtype = a;
  ob.kv_dtype = b;
  oa.kv_cache_bytes = ob.kv_cache_bytes = 16 << 20;
  BATON_ASSIGN_OR_RETURN(auto ba, create_cpu_backend(model, oa));
  BATON_ASSIGN_OR_RETURN(auto bb, create_cpu_backend(model, ob));
  const int V = ba->config().vocab_size;
  int positions = 0, agree = 0;
  double max_diff = 0;
  for (const auto& c : goldens[model_key]) {
    std::vector<int> seq = c["prompt_ids"].get<std::vector<int>>();
    const int prompt_len = static_cast<int>(seq.size());
    auto greedy_ids = c["greedy_ids"].get<std::vector<int>>();
    seq.insert(seq.end(), greedy_ids.begin(), greedy_ids.end());
    std::vector<int32_t> table;
    for (int i = 0; i * 16 < static_cast<int>(seq.size()); ++i) table.push_back(i);
    std::vector<float> la(V), lb(V);
    // Prefill the prompt, then feed the golden continuation one token at a time.
    for (int pos = 0; pos < static_cast<int>(seq.size()) - 1;) {
      int n = pos == 0 ? prompt_len : 1;
      std::vector<int32_t> toks(seq.begin() + pos, seq.begin() + pos + n);
      SeqBatch s{n, pos, table, true};
      BATON_RETURN_IF_ERROR(ba->forward({toks, std::span<const SeqBatch>(&s, 1)}, la));
      BATON_RETURN_IF_ERROR(bb->forward({toks, std::span<const SeqBatch>(&s, 1)}, lb));
      pos += n;
      ++positions;
      agree += argmax(la) == argmax(lb);
      for (int i = 0; i < V; ++i) max_diff = std::max(max_diff, double(std::abs(la[i] - lb[i])));
    }
  }
  std::printf("| %s | %s vs %s | %d | %.1f%% | %.4f |\n", model_key.c_str(), b.c_str(), a.c_str(), positions,
              100.0 * agree / positions, max_diff);
  return {};
}

Status run(int argc, char** argv) {
  if (argc < 2) return make_error("usage: engine-bench throughput|chunked-itl|kv-agreement --model DIR ...");
  std::string mode = argv[1];
  std::string model, batches = "1,8,32", budgets = "128,512,4096", goldens, key, a = "bf16", b = "fp8";
  int prompt_len = 64, gen_len = 128, long_prompt = 1500, threads = 0;
  ArgParser args("engine-bench " + mode, "Engine measurements on the CPU backend.");
  args.add({"--model"}, &model, "model directory");
  args.add({"--batch"}, &batches, "comma-separated batch sizes (throughput)");
  args.add({"--prompt-len"}, &prompt_len, "prompt tokens per request (throughput)");
  args.add({"--gen-len"}, &gen_len, "generated tokens per request (throughput)");
  args.add({"--long-prompt"}, &long_prompt, "tokens of the arriving long prompt (chunked-itl)");
  args.add({"--budgets"}, &budgets, "max-num-batched-tokens values (chunked-itl)");
  args.add({"--goldens"}, &goldens, "goldens.json (kv-agreement)");
  args.add({"--key"}, &key, "model key in goldens.json (kv-agreement)");
  args.add({"--a"}, &a, "reference KV dtype (kv-agreement)");
  args.add({"--b"}, &b, "compared KV dtype (kv-agreement)");
  args.add({"--threads"}, &threads, "compute threads (0 = all)");
  BATON_RETURN_IF_ERROR(args.parse(argc - 1, argv + 1));
  if (args.help_requested()) return {};
  if (model.empty()) return make_error("--model is required");
  if (mode == "throughput") return throughput(model, batches, prompt_len, gen_len, threads);
  if (mode == "chunked-itl") return chunked_itl(model, long_prompt, budgets, threads);
  if (mode == "kv-agreement") return kv_agreement(model, goldens, key, a, b);
  return make_error("unknown mode '", mode, "'");
}

}  // namespace
}  // namespace baton

int main(int argc, char** argv) {
  baton::Status s = baton::run(argc, argv);
  if (!s.ok()) {
    std::fprintf(stderr, "engine-bench: %s\n", s.message().c_str());
    return 1;
  }
  return 0;
}
