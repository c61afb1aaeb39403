#include "backend/tp_backend.h"

namespace baton {

Result<std::unique_ptr<Backend>> TpBackend::create(std::vector<std::unique_ptr<Backend>> ranks) {
  if (ranks.empty()) return make_error("tensor parallelism needs at least one rank");
  return std::unique_ptr<Backend>(new TpBackend(std::move(ranks)));
}

TpBackend::TpBackend(std::vector<std::unique_ptr<Backend>> ranks)
    : ranks_(std::move(ranks)),
      start_(static_cast<std::ptrdiff_t>(ranks_.size())),
      done_(static_cast<std::ptrdiff_t>(ranks_.size())),
      status_(ranks_.size()) {
  spec_ = ranks_[0]->kv_spec();
  spec_.bytes_per_block *= ranks_.size();
  for (int r = 1; r < static_cast<int>(ranks_.size()); ++r)
    threads_.emplace_back([this, r] {
      for (;;) {
        start_.arrive_and_wait();
        if (stopping_) return;
        status_[r] = (*job_)(r);
        done_.arrive_and_wait();
      }
    });
}

TpBackend::~TpBackend() {
  if (threads_.empty()) return;
  stopping_ = true;
  start_.arrive_and_wait();
  for (auto& t : threads_) t.join();
}

Status TpBackend::run_all(const Batch& batch, const std::function<Status(int)>& fn) {
  // Every rank sees the same batch, so all pass or all fail validation before any collective.
  BATON_RETURN_IF_ERROR(validate_batch(batch, ranks_[0]->kv_spec(), config().max_position_embeddings));
  job_ = &fn;
  start_.arrive_and_wait();
  status_[0] = fn(0);
  done_.arrive_and_wait();
  for (const Status& s : status_) BATON_RETURN_IF_ERROR(s);
  return {};
}

Status TpBackend::forward(const Batch& batch, std::span<float> logits) {
  return run_all(batch, [&](int r) { return ranks_[r]->forward(batch, r == 0 ? logits : std::span<float>{}); });
}

Status TpBackend::forward_sample(const Batch& batch, std::span<const DeviceSampling> params,
                                 std::span<int32_t> tokens) {
  return run_all(batch, [&](int r) {
    return ranks_[r]->forward_sample(batch, params, r == 0 ? tokens : std::span<int32_t>{});
  });
}

}  // namespace baton
