// baton-bench's subcommands beyond `xfer` (each in its own file).
#pragma once

#include <chrono>

#include "common/result.h"

namespace baton {

// Seconds on the steady clock since t0 (the subcommands' timings).
inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// baton-bench model: prefill, decode and generation speed against the device's limits.
Status model_bench(int argc, char** argv);

// baton-bench serve: a serving benchmark against an OpenAI-compatible server (apps/bench_serve.cpp).
Status serve_bench(int argc, char** argv);
// baton-bench report: a table and a plot from several serve results.
Status report_bench(int argc, char** argv);

}  // namespace baton
