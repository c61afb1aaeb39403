#include "engine/generator.h"

#include <algorithm>

namespace baton {

Generator::Generator(Backend& backend, int max_prefill_chunk)
    : backend_(backend),
      blocks_(backend.kv_spec().num_blocks, backend.kv_spec().block_size),
      max_prefill_chunk_(max_prefill_chunk) {}

Result<GenerationOutput> Generator::generate(std::span<const int> prompt, const SamplingParams& params,
                                             const std::function<void(int)>& on_token) {
  BATON_RETURN_IF_ERROR(params.validate());
  const ModelConfig& c = backend_.config();
  if (prompt.empty()) return make_error("the prompt is empty");
  if (static_cast<int>(prompt.size()) >= c.max_position_embeddings)
    return make_error("the prompt has ", prompt.size(), " tokens; the model's context is ", c.max_position_embeddings);
  for (int id : prompt)
    if (id < 0 || id >= c.vocab_size) return make_error("prompt token id ", id, " is outside the vocabulary (", c.vocab_size, ")");

  std::mt19937_64 rng(params.seed.value_or(std::random_device{}()));
  std::vector<int32_t> table;
  struct Release {  // every exit path returns the blocks
    BlockManager& b;
    std::vector<int32_t>& t;
    ~Release() { b.release(t); }
  } release{blocks_, table};

  GenerationOutput out;
  std::vector<float> logits(c.vocab_size);
  std::vector<int32_t> tokens;
  int n_past = 0;
  auto step = [&](std::span<const int> new_tokens, bool need_logits) -> Status {
    if (!blocks_.ensure_capacity(table, n_past + static_cast<int>(new_tokens.size())))
      return make_error("KV cache too small: ", n_past + new_tokens.size(), " tokens need ",
                        blocks_.blocks_for(n_past + static_cast<int>(new_tokens.size())), " blocks, the pool has ",
                        blocks_.num_total());
    tokens.assign(new_tokens.begin(), new_tokens.end());
    SeqBatch seq{static_cast<int>(tokens.size()), n_past, table, need_logits};
    Batch batch{tokens, std::span<const SeqBatch>(&seq, 1)};
    BATON_RETURN_IF_ERROR(backend_.forward(batch, need_logits ? std::span<float>(logits) : std::span<float>()));
    n_past += static_cast<int>(tokens.size());
    return {};
  };

  for (size_t i = 0; i < prompt.size(); i += max_prefill_chunk_) {
    size_t n = std::min(prompt.size() - i, static_cast<size_t>(max_prefill_chunk_));
    BATON_RETURN_IF_ERROR(step(prompt.subspan(i, n), i + n == prompt.size()));
  }
  out.last_prompt_logits = logits;

  for (;;) {
    int tok = sampler_.sample(logits, params, rng);
    out.token_ids.push_back(tok);
    if (on_token) on_token(tok);
    bool is_eos = !params.ignore_eos && std::count(c.eos_token_ids.begin(), c.eos_token_ids.end(), tok) > 0;
    bool is_stop = std::count(params.stop_token_ids.begin(), params.stop_token_ids.end(), tok) > 0;
    if (is_eos || is_stop) {
      out.finish_reason = "stop";
      break;
    }
    if (static_cast<int>(out.token_ids.size()) >= params.max_tokens || n_past + 1 >= c.max_position_embeddings) {
      out.finish_reason = "length";
      break;
    }
    int next[1] = {tok};
    BATON_RETURN_IF_ERROR(step(next, true));
  }
  return out;
}

}  // namespace baton
