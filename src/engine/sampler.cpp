#include "engine/sampler.h"

#include <algorithm>
#include <cmath>

namespace baton {

Status SamplingParams::validate() const {
  if (!(temperature >= 0.0f) || !std::isfinite(temperature)) return make_error("temperature must be >= 0");
  if (top_k < -1) return make_error("top_k must be -1, 0 (off) or positive");
  if (!(top_p > 0.0f && top_p <= 1.0f)) return make_error("top_p must be in (0, 1]");
  if (!(min_p >= 0.0f && min_p <= 1.0f)) return make_error("min_p must be in [0, 1]");
  if (max_tokens < 1) return make_error("max_tokens must be at least 1");
  if (!(repetition_penalty > 0.0f) || !std::isfinite(repetition_penalty))
    return make_error("repetition_penalty must be > 0");
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f)) return make_error("presence_penalty must be in [-2, 2]");
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f))
    return make_error("frequency_penalty must be in [-2, 2]");
  if (logprobs > 20) return make_error("logprobs must be at most 20");
  for (const auto& s : stop)
    if (s.empty()) return make_error("stop strings must not be empty");
  return {};
}

int argmax(std::span<const float> v) {
  int best = 0;
  for (int i = 1; i < static_cast<int>(v.size()); ++i)
    if (v[i] > v[best]) best = i;
  return best;
}

void apply_penalties(std::span<float> logits, std::span<const int> prompt, std::span<const int> output,
                     const SamplingParams& p) {
  const int V = static_cast<int>(logits.size());
  if (p.repetition_penalty != 1.0f) {
    std::vector<bool> seen(V, false);
    for (auto list : {prompt, output})
      for (int t : list)
        if (t >= 0 && t < V && !seen[t]) {
          seen[t] = true;
          logits[t] = logits[t] > 0 ? logits[t] / p.repetition_penalty : logits[t] * p.repetition_penalty;
        }
  }
  if (p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f) {
    std::vector<int> counts(V, 0);
    for (int t : output)
      if (t >= 0 && t < V) ++counts[t];
    for (int t = 0; t < V; ++t)
      if (counts[t] > 0) logits[t] -= p.presence_penalty + p.frequency_penalty * static_cast<float>(counts[t]);
  }
}

TokenLogprob compute_logprobs(std::span<const float> logits, int token, int top_n) {
  float max_l = -INFINITY;
  for (float l : logits) max_l = std::max(max_l, l);
  double sum = 0;
  for (float l : logits) sum += std::exp(static_cast<double>(l - max_l));
  const float log_z = max_l + static_cast<float>(std::log(sum));
  TokenLogprob out;
  out.token = token;
  out.logprob = logits[token] - log_z;
  if (top_n > 0) {
    std::vector<int> idx(logits.size());
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<int>(i);
    size_t n = std::min<size_t>(top_n, idx.size());
    std::partial_sort(idx.begin(), idx.begin() + n, idx.end(),
                      [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
    for (size_t i = 0; i < n; ++i) out.top.emplace_back(idx[i], logits[idx[i]] - log_z);
  }
  return out;
}

int Sampler::sample(std::span<const float> logits, const SamplingParams& p, std::mt19937_64& rng) {
  if (p.temperature == 0.0f) return argmax(logits);
  const float inv_t = 1.0f / p.temperature;
  candidates_.clear();
  candidates_.reserve(logits.size());
  for (int i = 0; i < static_cast<int>(logits.size()); ++i) candidates_.emplace_back(logits[i] * inv_t, i);
  auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  size_t keep = candidates_.size();
  if (p.top_k > 0 && static_cast<size_t>(p.top_k) < keep) {
    keep = static_cast<size_t>(p.top_k);
    std::partial_sort(candidates_.begin(), candidates_.begin() + keep, candidates_.end(), by_logit);
    candidates_.resize(keep);
  } else {
    std::sort(candidates_.begin(), candidates_.end(), by_logit);
  }
  // Softmax over the survivors (sorted, largest first).
  const float max_l = candidates_.front().first;
  double sum = 0;
  for (auto& c : candidates_) {
    c.first = std::exp(c.first - max_l);
    sum += c.first;
  }
  for (auto& c : candidates_) c.first = static_cast<float>(c.first / sum);
  if (p.min_p > 0.0f) {
    const float floor = p.min_p * candidates_.front().first;
    size_t n = 1;
    while (n < candidates_.size() && candidates_[n].first >= floor) ++n;
    candidates_.resize(n);
  }
  if (p.top_p < 1.0f) {
    double cum = 0;
    size_t n = 0;
    while (n < candidates_.size()) {
      cum += candidates_[n].first;
      ++n;
      if (cum >= p.top_p) break;
    }
    candidates_.resize(n);
  }
  double total = 0;
  for (const auto& c : candidates_) total += c.first;
  double r = std::uniform_real_distribution<double>(0.0, total)(rng);
  for (const auto& c : candidates_) {
    r -= c.first;
    if (r < 0) return c.second;
  }
  return candidates_.back().second;
}

}  // namespace baton
