// baton-generate: run one prompt through a model and print the continuation.
//   baton-generate --model DIR --prompt "Once upon a time" --max-tokens 32
//   baton-generate --model DIR --prompt-ids 1,2,3 --max-tokens 8 --temperature 0 --output json
//   baton-generate --model DIR --prompts-file prompts.jsonl --device cuda   # a batch: one JSON
//       array of token ids per line in; one JSON line per prompt out, in the same order
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>
#include <sstream>

#include "backend/backend.h"
#include "common/cli.h"
#include "common/json.h"
#include "common/log.h"
#include "common/mapped_file.h"
#include "engine/engine.h"
#include "model/tokenizer.h"

namespace {

struct Options {
  std::string model;
  baton::BackendOptions backend;
  std::string prompt;
  std::string prompt_ids;
  std::string prompts_file;
  int max_tokens = 32;
  float temperature = 0.0f;
  int top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  int64_t seed = -1;
  bool ignore_eos = false;
  std::string output = "text";
  std::string log_level = "warning";
};

baton::Result<std::vector<int>> parse_ids(const std::string& text) {
  std::vector<int> ids;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t used = 0;
      int v = std::stoi(item, &used);
      if (used != item.size()) throw std::invalid_argument(item);
      ids.push_back(v);
    } catch (const std::exception&) {
      return baton::make_error("--prompt-ids: '", item, "' is not an integer");
    }
  }
  return ids;
}

// --prompts-file: every prompt in one engine run (continuous batching), results in input order.
baton::Status run_batch(const Options& o, const baton::SamplingParams& sp) {
  using namespace baton;
  BATON_ASSIGN_OR_RETURN(std::string text, read_file(o.prompts_file));
  std::vector<std::vector<int>> prompts;
  std::stringstream lines(text);
  std::string line;
  for (int n = 1; std::getline(lines, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto j = parse_json(line, o.prompts_file);
    if (!j.ok() || !j->is_array()) return make_error(o.prompts_file, ":", n, ": not a JSON array of token ids");
    std::vector<int> ids;
    for (const Json& v : *j) {
      if (!v.is_number_integer()) return make_error(o.prompts_file, ":", n, ": not a JSON array of token ids");
      ids.push_back(v.get<int>());
    }
    prompts.push_back(std::move(ids));
  }
  if (prompts.empty()) return make_error(o.prompts_file, ": no prompts");
  BATON_ASSIGN_OR_RETURN(auto backend, create_backend(o.model, o.backend));
  BATON_ASSIGN_OR_RETURN(auto engine, Engine::create(std::move(backend), nullptr, EngineConfig{}));
  std::vector<std::vector<int>> outputs(prompts.size());
  std::vector<std::string> reasons(prompts.size()), errors(prompts.size());
  const auto t0 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < prompts.size(); ++i) {
    Request req;
    req.prompt = prompts[i];
    req.params = sp;
    BATON_RETURN_IF_ERROR(engine->add_request(std::move(req), [&, i](RequestOutput&& out) {
      outputs[i].insert(outputs[i].end(), out.token_ids.begin(), out.token_ids.end());
      if (out.finished) reasons[i] = out.finish_reason, errors[i] = out.error;
    }));
  }
  engine->run_until_idle();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  size_t n_out = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (reasons[i] == "error") return make_error("prompt ", i + 1, ": ", errors[i]);
    n_out += outputs[i].size();
    std::puts(Json({{"token_ids", outputs[i]}, {"finish_reason", reasons[i]}}).dump().c_str());
  }
  std::fprintf(stderr, "%zu prompts, %zu generated tokens in %.1f ms (%.0f tok/s)\n", prompts.size(), n_out, s * 1e3,
               n_out / std::max(s, 1e-9));
  return {};
}

baton::Status run(int argc, char** argv) {
  using namespace baton;
  Options o;
  ArgParser args("baton-generate", "Generate a continuation of one prompt with a Hugging Face model directory.");
  add_backend_flags(args, o.backend);
  args.add({"--model"}, &o.model, "model directory (config.json, *.safetensors, tokenizer.json)");
  args.add({"--prompt"}, &o.prompt, "prompt text");
  args.add({"--prompt-ids"}, &o.prompt_ids, "prompt as comma-separated token ids");
  args.add({"--prompts-file"}, &o.prompts_file, "JSON lines, each an array of token ids: run them all as one batch");
  args.add({"--max-tokens"}, &o.max_tokens, "tokens to generate");
  args.add({"--temperature"}, &o.temperature, "0 = greedy");
  args.add({"--top-k"}, &o.top_k, "top-k (0 = off)");
  args.add({"--top-p"}, &o.top_p, "top-p");
  args.add({"--min-p"}, &o.min_p, "min-p");
  args.add({"--seed"}, &o.seed, "sampling seed (-1 = random)");
  args.add_flag({"--ignore-eos"}, &o.ignore_eos, "keep generating after an end-of-sequence token");
  args.add({"--output"}, &o.output, "text (streamed) or json (one line: token_ids, text)");
  args.add({"--log-level"}, &o.log_level, "debug, info, warning, error");
  BATON_RETURN_IF_ERROR(args.parse(argc, argv));
  if (args.help_requested()) return {};
  BATON_ASSIGN_OR_RETURN(log::Level level, log::parse_level(o.log_level));
  log::set_level(level);
  if (o.model.empty()) return make_error("--model is required (a Hugging Face model directory)");
  if (int(!o.prompt.empty()) + int(!o.prompt_ids.empty()) + int(!o.prompts_file.empty()) != 1)
    return make_error("give exactly one of --prompt, --prompt-ids and --prompts-file");
  if (o.output != "text" && o.output != "json") return make_error("--output must be text or json");

  std::optional<Tokenizer> tokenizer;
  if (std::filesystem::exists(std::filesystem::path(o.model) / "tokenizer.json")) {
    BATON_ASSIGN_OR_RETURN(Tokenizer t, Tokenizer::load(o.model));
    tokenizer.emplace(std::move(t));
  }
  SamplingParams sp;
  sp.max_tokens = o.max_tokens;
  sp.temperature = o.temperature;
  sp.top_k = o.top_k;
  sp.top_p = o.top_p;
  sp.min_p = o.min_p;
  sp.ignore_eos = o.ignore_eos;
  if (o.seed >= 0) sp.seed = static_cast<uint64_t>(o.seed);
  if (!o.prompts_file.empty()) return run_batch(o, sp);

  std::vector<int> prompt;
  if (!o.prompt_ids.empty()) {
    BATON_ASSIGN_OR_RETURN(prompt, parse_ids(o.prompt_ids));
  } else {
    if (!tokenizer) return make_error(o.model, ": no tokenizer.json; pass --prompt-ids instead of --prompt");
    BATON_ASSIGN_OR_RETURN(prompt, tokenizer->encode(o.prompt));
  }

  BATON_ASSIGN_OR_RETURN(auto backend, create_backend(o.model, o.backend));

  std::shared_ptr<const Tokenizer> tok_ptr;
  if (tokenizer) tok_ptr = std::make_shared<const Tokenizer>(std::move(*tokenizer));
  BATON_ASSIGN_OR_RETURN(auto engine, Engine::create(std::move(backend), tok_ptr, EngineConfig{}));

  using Clock = std::chrono::steady_clock;
  auto t0 = Clock::now();
  std::optional<Clock::time_point> t_first;
  std::vector<int> token_ids;
  std::string text, finish_reason, error;
  Request req;
  req.prompt = prompt;
  req.params = sp;
  BATON_RETURN_IF_ERROR(engine->add_request(std::move(req), [&](RequestOutput&& out) {
    if (!t_first) t_first = Clock::now();
    token_ids.insert(token_ids.end(), out.token_ids.begin(), out.token_ids.end());
    text += out.text;
    if (o.output == "text") {
      if (tok_ptr) {
        std::fputs(out.text.c_str(), stdout);
      } else {
        for (int t : out.token_ids) std::printf("%d ", t);
      }
      std::fflush(stdout);
    }
    if (out.finished) {
      finish_reason = out.finish_reason;
      error = out.error;
    }
  }));
  engine->run_until_idle();
  auto t1 = Clock::now();
  if (finish_reason == "error") return make_error(error);

  if (o.output == "json") {
    Json j = {{"token_ids", token_ids}, {"finish_reason", finish_reason}, {"text", text}};
    std::puts(j.dump().c_str());
  } else {
    std::puts("");
  }
  double prefill_s = std::chrono::duration<double>(*t_first - t0).count();
  double decode_s = std::chrono::duration<double>(t1 - *t_first).count();
  size_t n_decode = token_ids.size() - 1;
  std::fprintf(stderr, "prompt %zu tokens: %.1f ms (%.0f tok/s) | decode %zu tokens: %.1f ms (%.1f tok/s) | finish: %s\n",
               prompt.size(), prefill_s * 1e3, prompt.size() / std::max(prefill_s, 1e-9), n_decode, decode_s * 1e3,
               n_decode / std::max(decode_s, 1e-9), finish_reason.c_str());
  return {};
}

}  // namespace

int main(int argc, char** argv) { return baton::run_main("baton-generate", argc, argv, run); }
