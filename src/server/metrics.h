// Prometheus text-format metrics: counters, gauges (read at scrape time) and histograms.
// Thread-safe; observe() is a few atomic adds.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace baton {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double v);
  void render(const std::string& name, const std::string& help, std::string& out) const;

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;  // one per bound + the +Inf bucket
  std::atomic<uint64_t> n_{0};
  std::atomic<uint64_t> sum_micros_{0};
};

class Metrics {
 public:
  Metrics();
  Histogram ttft_s, tpot_s, e2e_s;
  std::atomic<uint64_t> requests_ok{0}, requests_length{0}, requests_aborted{0}, requests_error{0},
      requests_rejected{0};

  // Gauges and counters owned elsewhere are read when /metrics is scraped. `reveals_prompts`:
  // the value moves with the prefix-cache hits of a given prompt (hit blocks, prompt tokens
  // computed), so reading it around a request of one's own tells whether anyone sent that prompt
  // before. Such values are rendered only to API users (see server/access.h).
  void add_gauge(std::string name, std::string help, std::function<double()> read, bool counter = false,
                 bool reveals_prompts = false);
  // `for_api_user`: false leaves out the values that reveal prompts.
  std::string render(bool for_api_user) const;

 private:
  struct Gauge {
    std::string name, help;
    std::function<double()> read;
    bool counter;
    bool reveals_prompts;
  };
  std::vector<Gauge> gauges_;
};

}  // namespace baton
