#include "engine/engine.h"

#include <algorithm>

#include "common/log.h"

namespace baton {

Result<std::unique_ptr<Engine>> Engine::create(std::unique_ptr<Backend> backend,
                                               std::shared_ptr<const Tokenizer> tokenizer,
                                               const EngineConfig& config) {
  if (config.max_num_seqs < 1) return make_error("--max-num-seqs must be at least 1");
  if (config.max_num_batched_tokens < 1) return make_error("--max-num-batched-tokens must be at least 1");
  const ModelConfig& mc = backend->config();
  const KvCacheSpec& kv = backend->kv_spec();
  const int64_t pool_tokens = static_cast<int64_t>(kv.num_blocks) * kv.block_size;
  int max_len = config.max_model_len > 0 ? config.max_model_len : mc.max_position_embeddings;
  if (max_len > mc.max_position_embeddings)
    return make_error("--max-model-len ", max_len, " exceeds the model's max_position_embeddings (",
                      mc.max_position_embeddings, ")");
  if (max_len > pool_tokens) {
    if (config.max_model_len > 0)
      return make_error("--max-model-len ", max_len, " does not fit the KV cache (", pool_tokens,
                        " tokens); give the cache more memory or lower --max-model-len");
    log::warn("KV cache holds ", pool_tokens, " tokens, less than the model's context of ", max_len,
              "; max model length set to ", pool_tokens);
    max_len = static_cast<int>(pool_tokens);
  }
  if (max_len < 2) return make_error("the KV cache is too small to serve any request");
  return std::unique_ptr<Engine>(new Engine(std::move(backend), std::move(tokenizer), config, max_len));
}

Engine::Engine(std::unique_ptr<Backend> backend, std::shared_ptr<const Tokenizer> tokenizer, const EngineConfig& config,
               int max_model_len)
    : backend_(std::move(backend)),
      tokenizer_(std::move(tokenizer)),
      config_(config),
      max_model_len_(max_model_len),
      blocks_(backend_->kv_spec().num_blocks, backend_->kv_spec().block_size, config.enable_prefix_caching),
      scheduler_({config.max_num_seqs, config.max_num_batched_tokens}, blocks_) {
  publish_stats();
}

Engine::~Engine() { stop(); }

Result<int> Engine::warm_up() {
  if (loop_.joinable()) return make_error("warm_up() runs before start()");
  const std::vector<int> sizes = backend_->decode_graph_batches();
  if (sizes.empty()) return 0;
  std::vector<int32_t> table;
  if (!blocks_.ensure_capacity(table, 1)) return make_error("warm-up: no free KV block");
  // Every sequence of a warm-up step is the same one-token prompt in the same block slot.
  const int V = backend_->config().vocab_size;
  std::vector<int32_t> tokens, out;
  std::vector<SeqBatch> seqs;
  std::vector<DeviceSampling> params;
  std::vector<float> logits;
  Status st;
  int steps = 0;
  for (int size : sizes) {
    const int n = std::min(size, config_.max_num_seqs);
    tokens.assign(n, 0);
    seqs.assign(n, SeqBatch{1, 0, table, true});
    if (backend_->samples_on_device()) {
      params.assign(n, DeviceSampling{});
      out.resize(n);
      st = backend_->forward_sample({tokens, seqs}, params, out);
    } else {
      logits.resize(static_cast<size_t>(n) * V);
      st = backend_->forward({tokens, seqs}, logits);
    }
    if (!st.ok()) break;
    ++steps;
    if (size >= config_.max_num_seqs) break;  // no step of more sequences is ever scheduled
  }
  blocks_.release(table);
  publish_stats();
  if (!st.ok())
    return make_error("warm-up decode step of ", std::min(sizes[steps], config_.max_num_seqs),
                      " sequences: ", st.message());
  return steps;
}

Result<uint64_t> Engine::add_request(Request r, OutputCallback on_output) {
  BATON_RETURN_IF_ERROR(r.params.validate());
  const ModelConfig& mc = backend_->config();
  if (r.prompt.empty()) return make_error("the prompt is empty");
  if (static_cast<int>(r.prompt.size()) >= max_model_len_)
    return make_error("the prompt has ", r.prompt.size(), " tokens, but the maximum context length is ", max_model_len_,
                      " (prompt and output together)");
  for (int id : r.prompt)
    if (id < 0 || id >= mc.vocab_size)
      return make_error("prompt token id ", id, " is outside the vocabulary (0..", mc.vocab_size - 1, ")");
  if (!r.params.stop.empty() && !tokenizer_) return make_error("stop strings need a model with a tokenizer");

  auto seq = std::make_unique<Sequence>();
  seq->id = next_id_.fetch_add(1);
  seq->request_id = r.request_id.empty() ? std::to_string(seq->id) : r.request_id;
  seq->prompt_len = static_cast<int>(r.prompt.size());
  seq->tokens = std::move(r.prompt);
  seq->rng.seed(r.params.seed.value_or(std::random_device{}()));
  seq->params = std::move(r.params);
  seq->on_output = std::move(on_output);
  if (tokenizer_) seq->detok.emplace(*tokenizer_, seq->params.skip_special_tokens);
  seq->state = r.wait_for_remote_kv ? SeqState::kRemoteKv : SeqState::kWaiting;
  seq->hold_kv = r.hold_kv;
  seq->on_remote_blocks = std::move(r.on_remote_blocks);
  uint64_t id = seq->id;
  {
    std::lock_guard lock(mutex_);
    inbox_.push_back(std::move(seq));
  }
  wake_.notify_one();
  return id;
}

void Engine::abort(uint64_t seq_id) {
  {
    std::lock_guard lock(mutex_);
    aborts_.push_back(seq_id);
  }
  wake_.notify_one();
}

void Engine::release_held(uint64_t seq_id) {
  {
    std::lock_guard lock(mutex_);
    releases_.push_back(seq_id);
  }
  wake_.notify_one();
}

size_t Engine::num_held() const { return num_held_.load(); }

void Engine::remote_kv_ready(uint64_t seq_id, bool ok, int first_token) {
  {
    std::lock_guard lock(mutex_);
    remote_done_.push_back({seq_id, ok, first_token});
  }
  wake_.notify_one();
}

std::vector<int32_t> Engine::block_table_of(uint64_t seq_id) const {
  auto it = seqs_.find(seq_id);
  return it == seqs_.end() ? std::vector<int32_t>{} : it->second->block_table;
}

void Engine::take_inbox() {
  std::vector<std::unique_ptr<Sequence>> inbox;
  std::vector<uint64_t> aborts;
  std::vector<RemoteDone> remote;
  std::vector<uint64_t> releases;
  {
    std::lock_guard lock(mutex_);
    inbox.swap(inbox_);
    aborts.swap(aborts_);
    remote.swap(remote_done_);
    releases.swap(releases_);
  }
  for (uint64_t id : releases) {
    auto it = held_.find(id);
    if (it == held_.end()) continue;
    blocks_.release(it->second);
    held_.erase(it);
    num_held_ = held_.size();
  }
  for (auto& s : inbox) {
    Sequence* seq = s.get();
    seqs_.emplace(seq->id, std::move(s));
    if (seq->state == SeqState::kRemoteKv) {
      // Destination blocks for the prompt's KV, allocated now so the transfer can start.
      if (!blocks_.ensure_capacity(seq->block_table, seq->prompt_len)) {
        log::warn("request ", seq->request_id, ": no free blocks for remote KV; recomputing locally");
        if (seq->on_remote_blocks) seq->on_remote_blocks(seq->id, {});
        scheduler_.add(seq);
        continue;
      }
      seq->num_computed = seq->prompt_len;
      scheduler_.add_remote(seq);
      if (seq->on_remote_blocks) {
        seq->remote_reading = true;
        seq->on_remote_blocks(seq->id, seq->block_table);
      }
    } else {
      scheduler_.add(seq);
    }
  }
  for (const RemoteDone& d : remote) {
    if (auto r = reading_.find(d.id); r != reading_.end()) {  // aborted while its KV was being read
      blocks_.release(r->second);
      reading_.erase(r);
      continue;
    }
    auto it = seqs_.find(d.id);
    if (it == seqs_.end() || it->second->state != SeqState::kRemoteKv) continue;
    Sequence* seq = it->second.get();
    seq->remote_reading = false;
    if (d.ok) {
      if (d.first_token < 0 || d.first_token >= backend_->config().vocab_size) {
        scheduler_.remote_done(seq, false);
        continue;
      }
      scheduler_.remote_done(seq, true);
      emit_token(seq, d.first_token, nullptr);  // the prefill's token starts the stream
    } else {
      log::warn("request ", seq->request_id, ": remote KV unavailable; recomputing the prompt locally");
      scheduler_.remote_done(seq, false);
    }
  }
  for (uint64_t id : aborts) {
    auto it = seqs_.find(id);
    if (it != seqs_.end()) finish(it->second.get(), "abort");
  }
}

void Engine::finish(Sequence* seq, const std::string& reason, const std::string& error, RequestOutput out) {
  if (seq->state == SeqState::kFinished) return;
  if (seq->hold_kv && reason != "abort" && reason != "error") {
    // Keep the blocks (the scheduler then releases an empty table) for the decode side.
    out.kv_block_ids = seq->block_table;
    held_[seq->id] = std::move(seq->block_table);
    seq->block_table.clear();
    num_held_ = held_.size();
  }
  if (seq->remote_reading) {
    // Reads into these blocks may still be landing: keep them until remote_kv_ready().
    reading_[seq->id] = std::move(seq->block_table);
    seq->block_table.clear();
    seq->remote_reading = false;
  }
  scheduler_.remove(seq);
  out.seq_id = seq->id;
  out.finished = true;
  out.finish_reason = reason;
  out.error = error;
  if (seq->detok) {  // whatever text was held back is final now
    if (!seq->text_final) seq->text += seq->detok->flush();
    out.text = seq->text.substr(std::min(seq->text_emitted, seq->text.size()));
    seq->text_emitted = seq->text.size();
  }
  out.prompt_tokens = seq->prompt_len;
  out.completion_tokens = seq->num_output();
  out.cached_tokens = seq->num_cached_tokens;
  const uint64_t id = seq->id;
  if (seq->on_output) seq->on_output(std::move(out));
  seqs_.erase(id);
}

// Appends one sampled token, applies stop conditions and streams the result.
void Engine::emit_token(Sequence* seq, int token, const float* raw_logits) {
  const SamplingParams& p = seq->params;
  const ModelConfig& mc = backend_->config();
  seq->tokens.push_back(token);
  RequestOutput out;
  out.seq_id = seq->id;
  out.token_ids.push_back(token);
  if (p.logprobs >= 0 && raw_logits)
    out.logprobs.push_back(compute_logprobs(std::span<const float>(raw_logits, mc.vocab_size), token, p.logprobs));

  const bool eos = !p.ignore_eos && std::count(mc.eos_token_ids.begin(), mc.eos_token_ids.end(), token) > 0;
  const bool stop_id = std::count(p.stop_token_ids.begin(), p.stop_token_ids.end(), token) > 0;
  if (eos || stop_id) return finish(seq, "stop", "", std::move(out));

  size_t hold_back = 0;
  if (seq->detok) {
    const size_t before = seq->text.size();
    seq->text += seq->detok->add(token);
    size_t max_stop = 0;
    for (const auto& s : p.stop) max_stop = std::max(max_stop, s.size());
    if (max_stop > 0) {
      // A stop string may span tokens: search from where a match could begin.
      const size_t from = before >= max_stop - 1 ? before - (max_stop - 1) : 0;
      size_t best = std::string::npos, best_len = 0;
      for (const auto& s : p.stop) {
        size_t at = seq->text.find(s, from);
        if (at != std::string::npos && at < best) best = at, best_len = s.size();
      }
      if (best != std::string::npos) {
        seq->text.resize(best + (p.include_stop_str_in_output ? best_len : 0));
        seq->text_final = true;
        return finish(seq, "stop", "", std::move(out));
      }
      hold_back = max_stop - 1;  // never stream the start of what may become a stop string
    }
  }
  if (seq->num_output() >= p.max_tokens || static_cast<int>(seq->tokens.size()) >= max_model_len_)
    return finish(seq, "length", "", std::move(out));

  if (seq->detok && seq->text.size() > seq->text_emitted + hold_back) {
    const size_t upto = seq->text.size() - hold_back;
    out.text = seq->text.substr(seq->text_emitted, upto - seq->text_emitted);
    seq->text_emitted = upto;
  }
  if (seq->on_output) seq->on_output(std::move(out));
}

bool Engine::step() {
  take_inbox();
  SchedulerOutput sched = scheduler_.schedule();
  if (sched.seqs.empty()) {
    publish_stats();
    return false;
  }
  const int V = backend_->config().vocab_size;
  batch_tokens_.clear();
  batch_seqs_.clear();
  int n_logits = 0;
  for (const ScheduledSeq& s : sched.seqs) {
    Sequence* seq = s.seq;
    batch_tokens_.insert(batch_tokens_.end(), seq->tokens.begin() + seq->num_computed,
                         seq->tokens.begin() + seq->num_computed + s.n_tokens);
    batch_seqs_.push_back({s.n_tokens, seq->num_computed, seq->block_table, s.need_logits});
    n_logits += s.need_logits ? 1 : 0;
  }
  // Backends that sample on their device get the rows whose sampling they can do there
  // (everything but logprobs, penalties and min-p), and return token ids instead of logits.
  bool on_device = backend_->samples_on_device();
  for (const ScheduledSeq& s : sched.seqs) {
    const SamplingParams& p = s.seq->params;
    if (s.need_logits && (p.logprobs >= 0 || p.min_p > 0.f || p.repetition_penalty != 1.0f ||
                          p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f))
      on_device = false;
  }
  Status st;
  if (on_device) {
    device_params_.clear();
    for (const ScheduledSeq& s : sched.seqs) {
      if (!s.need_logits) continue;
      const SamplingParams& p = s.seq->params;
      // One draw of the request's own generator per token: a seeded request samples the same
      // tokens whatever else is in the batch.
      device_params_.push_back({p.temperature, p.top_k > 0 ? p.top_k : 0, p.top_p, s.seq->rng(), 0});
    }
    device_tokens_.resize(device_params_.size());
    logits_.clear();
    st = backend_->forward_sample({batch_tokens_, batch_seqs_}, device_params_, device_tokens_);
  } else {
    device_tokens_.clear();
    logits_.resize(static_cast<size_t>(n_logits) * V);
    st = backend_->forward({batch_tokens_, batch_seqs_}, logits_);
  }
  {
    std::lock_guard lock(mutex_);
    ++stats_.steps;
    stats_.preemptions += sched.num_preempted;
  }
  if (!st.ok()) {
    log::error("model step failed: ", st.message());
    for (const ScheduledSeq& s : sched.seqs) finish(s.seq, "error", st.message());
    publish_stats();
    return true;
  }
  after_step(sched, logits_, device_tokens_);
  publish_stats();
  return true;
}

void Engine::after_step(const SchedulerOutput& sched, std::span<const float> logits, std::span<const int32_t> tokens) {
  const int V = backend_->config().vocab_size;
  uint64_t prompt_tokens = 0, generated = 0;
  int row = 0;
  for (const ScheduledSeq& s : sched.seqs) {
    Sequence* seq = s.seq;
    const int prompt_part = std::max(0, std::min(seq->num_computed + s.n_tokens, seq->prompt_len) - seq->num_computed);
    prompt_tokens += static_cast<uint64_t>(prompt_part);
    seq->num_computed += s.n_tokens;
    blocks_.publish_full_blocks(seq->tokens, seq->num_computed, seq->block_table, seq->block_hashes);
    if (!s.need_logits) continue;
    if (!tokens.empty()) {  // sampled on the device
      ++generated;
      emit_token(seq, tokens[row++], nullptr);
      continue;
    }
    const float* raw = logits.data() + static_cast<size_t>(row++) * V;
    const SamplingParams& p = seq->params;
    std::span<const float> to_sample(raw, V);
    if (p.repetition_penalty != 1.0f || p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f) {
      row_.assign(raw, raw + V);
      apply_penalties(row_, std::span<const int>(seq->tokens).first(seq->prompt_len),
                      std::span<const int>(seq->tokens).subspan(seq->prompt_len), p);
      to_sample = row_;
    }
    int token = sampler_.sample(to_sample, p, seq->rng);
    ++generated;
    emit_token(seq, token, raw);
  }
  std::lock_guard lock(mutex_);
  stats_.prompt_tokens += prompt_tokens;
  stats_.generation_tokens += generated;
}

void Engine::publish_stats() {
  std::lock_guard lock(mutex_);
  stats_.running = scheduler_.num_running();
  stats_.waiting = scheduler_.num_waiting() + static_cast<int>(inbox_.size());
  stats_.blocks_total = blocks_.num_total();
  stats_.blocks_free = blocks_.num_free();
  stats_.prefix_hit_blocks = blocks_.counters().prefix_hits;
  stats_.fresh_block_allocations = blocks_.counters().fresh_allocations;
}

EngineStats Engine::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

void Engine::run_until_idle() {
  for (;;) {
    bool worked = step();
    bool pending;
    {
      std::lock_guard lock(mutex_);
      pending = !inbox_.empty() || !aborts_.empty() || !remote_done_.empty() || !releases_.empty();
    }
    if (!worked && !pending && !scheduler_.has_work()) {
      // Only remote-KV sequences (or nothing) are left: nothing to compute without news.
      return;
    }
  }
}

void Engine::start() {
  loop_ = std::thread([this] {
    for (;;) {
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [&] {
          return stopping_ || !inbox_.empty() || !aborts_.empty() || !remote_done_.empty() || !releases_.empty() ||
                 scheduler_.has_work();
        });
        if (stopping_) break;
      }
      step();
    }
    // Shutting down: every live request gets a final event, so no caller waits forever.
    take_inbox();
    std::vector<Sequence*> live;
    for (auto& [id, s] : seqs_) live.push_back(s.get());
    for (Sequence* s : live) finish(s, "abort", "the engine is shutting down");
  });
}

void Engine::stop() {
  {
    std::lock_guard lock(mutex_);
    if (stopping_ && !loop_.joinable()) return;
    stopping_ = true;
  }
  wake_.notify_all();
  if (loop_.joinable()) loop_.join();
}

}  // namespace baton
