#include "server/metrics.h"

#include <cstdio>

namespace baton {

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i) counts_[i] = 0;
}

void Histogram::observe(double v) {
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  counts_[i].fetch_add(1, std::memory_order_relaxed);
  n_.fetch_add(1, std::memory_order_relaxed);
  sum_micros_.fetch_add(static_cast<uint64_t>(std::max(0.0, v) * 1e6), std::memory_order_relaxed);
}

void Histogram::render(const std::string& name, const std::string& help, std::string& out) const {
  out += "# HELP " + name + " " + help + "\n# TYPE " + name + " histogram\n";
  uint64_t cum = 0;
  char buf[64];
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cum += counts_[i].load(std::memory_order_relaxed);
    if (i < bounds_.size()) {
      std::snprintf(buf, sizeof buf, "%g", bounds_[i]);
      out += name + "_bucket{le=\"" + buf + "\"} " + std::to_string(cum) + "\n";
    } else {
      out += name + "_bucket{le=\"+Inf\"} " + std::to_string(cum) + "\n";
    }
  }
  std::snprintf(buf, sizeof buf, "%.6f", sum_micros_.load() / 1e6);
  out += name + "_sum " + buf + "\n" + name + "_count " + std::to_string(n_.load()) + "\n";
}

Metrics::Metrics()
    : ttft_s({0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80}),
      tpot_s({0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5}),
      e2e_s({0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240}) {}

void Metrics::add_gauge(std::string name, std::string help, std::function<double()> read, bool counter,
                        bool reveals_prompts) {
  gauges_.push_back({std::move(name), std::move(help), std::move(read), counter, reveals_prompts});
}

std::string Metrics::render(bool for_api_user) const {
  std::string out;
  char buf[64];
  for (const auto& g : gauges_) {
    if (g.reveals_prompts && !for_api_user) continue;
    std::snprintf(buf, sizeof buf, "%.17g", g.read());
    out += "# HELP " + g.name + " " + g.help + "\n# TYPE " + g.name + (g.counter ? " counter\n" : " gauge\n") + g.name + " " +
           buf + "\n";
  }
  out += "# HELP baton:request_success_total Finished requests by finish reason.\n# TYPE baton:request_success_total counter\n";
  out += "baton:request_success_total{finished_reason=\"stop\"} " + std::to_string(requests_ok.load()) + "\n";
  out += "baton:request_success_total{finished_reason=\"length\"} " + std::to_string(requests_length.load()) + "\n";
  out += "baton:request_success_total{finished_reason=\"abort\"} " + std::to_string(requests_aborted.load()) + "\n";
  out += "baton:request_success_total{finished_reason=\"error\"} " + std::to_string(requests_error.load()) + "\n";
  out += "# HELP baton:request_rejected_total Requests refused with a 4xx error.\n# TYPE baton:request_rejected_total counter\n";
  out += "baton:request_rejected_total " + std::to_string(requests_rejected.load()) + "\n";
  ttft_s.render("baton:time_to_first_token_seconds", "Time to first token.", out);
  tpot_s.render("baton:time_per_output_token_seconds", "Time per output token after the first.", out);
  e2e_s.render("baton:e2e_request_latency_seconds", "End-to-end request latency.", out);
  return out;
}

}  // namespace baton
