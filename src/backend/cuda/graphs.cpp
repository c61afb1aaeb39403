// Decode graphs: capture, choice by timing, cache (graphs.h).
#include "backend/cuda/graphs.h"

#include <algorithm>

#include "backend/cuda/timing.h"
#include "common/log.h"

namespace baton::cuda {

DecodeGraphs::DecodeGraphs(cudaStream_t stream, Forward& forward, Linear& linear, int max_batch, bool time_skinny)
    : stream_(stream), forward_(forward), linear_(linear), time_skinny_(time_skinny) {
  for (int b = 1; b <= max_batch; b = b < 8 ? b * 2 : b + 8) sizes_.push_back(b);
  if (max_batch > 0 && sizes_.back() != max_batch) sizes_.push_back(max_batch);
}

DecodeGraphs::~DecodeGraphs() {
  for (auto& [rows, g] : graphs_) cudaGraphExecDestroy(g);
}

int DecodeGraphs::rows_for(int S) const { return *std::lower_bound(sizes_.begin(), sizes_.end(), S); }

Result<cudaGraphExec_t> DecodeGraphs::get(int rows) {
  auto it = graphs_.find(rows);
  if (it == graphs_.end()) {
    BATON_ASSIGN_OR_RETURN(cudaGraphExec_t exec, build(rows));
    it = graphs_.emplace(rows, exec).first;
  }
  return it->second;
}

Result<cudaGraphExec_t> DecodeGraphs::capture(int rows) {
  cudaGraph_t g = nullptr;
  BATON_CU(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  Status st = forward_.enqueue(rows, rows, true, true, forward_.splits_for(rows, 0), 0);
  const cudaError_t end = cudaStreamEndCapture(stream_, &g);
  BATON_RETURN_IF_ERROR(st);
  BATON_CU(end);
  cudaGraphExec_t exec = nullptr;
  const cudaError_t inst = cudaGraphInstantiate(&exec, g, 0);
  cudaGraphDestroy(g);
  BATON_CU(inst);
  return exec;
}

// A decode graph replayed on the same staged inputs recomputes the same values (it writes the same
// K/V into the same slots), so this is harmless; every TP rank replays the same number of times, so
// their all-reduces pair up.
Result<float> DecodeGraphs::time(cudaGraphExec_t g) {
  constexpr int kReplays = 5;
  BATON_CU(cudaGraphLaunch(g, stream_));
  BATON_ASSIGN_OR_RETURN(const float ms, time_ms(stream_, [&]() -> Status {
                           for (int i = 0; i < kReplays; ++i) BATON_CU(cudaGraphLaunch(g, stream_));
                           return {};
                         }));
  return ms / kReplays;
}

Result<cudaGraphExec_t> DecodeGraphs::keep_faster(const std::string& what, cudaGraphExec_t a, const char* a_name,
                                                  Result<cudaGraphExec_t> b, const char* b_name) {
  if (!b.ok()) {
    cudaGraphExecDestroy(a);
    return Error{b.error()};
  }
  Result<float> t_a = time(a), t_b = time(*b);
  if (!t_a.ok() || !t_b.ok()) {
    cudaGraphExecDestroy(a);
    cudaGraphExecDestroy(*b);
    return Error{!t_a.ok() ? t_a.error() : t_b.error()};
  }
  const bool keep_a = *t_a <= *t_b;
  log::info("cuda backend: decode graph for ", what, ": ", a_name, " ", *t_a, " ms, ", b_name, " ", *t_b,
            " ms: keeping ", keep_a ? a_name : b_name);
  cudaGraphExecDestroy(keep_a ? *b : a);
  return keep_a ? a : *b;
}

Result<cudaGraphExec_t> DecodeGraphs::build(int rows) {
  const bool both = time_skinny_ && rows > kGemvDotRows && forward_.use_skinny(rows);
  const bool tuned = linear_.tuning() != CudaPaths::GemmTune::kOff && !forward_.use_skinny(rows);  // on cuBLAS
  linear_.note_shapes(tuned);  // its GEMMs' shapes, to tune
  Result<cudaGraphExec_t> first = capture(rows);
  linear_.note_shapes(false);
  BATON_ASSIGN_OR_RETURN(cudaGraphExec_t skinny, std::move(first));
  if (tuned) return with_tuned_gemms(rows, skinny);
  if (!both) return skinny;
  forward_.set_skinny_rows(kGemvDotRows);  // the same step on cuBLAS
  Result<cudaGraphExec_t> cublas = capture(rows);
  forward_.set_skinny_rows(kGemvMaxRows);
  return keep_faster(std::to_string(rows) + " rows", skinny, "skinny GEMMs", std::move(cublas), "cuBLAS");
}

Result<cudaGraphExec_t> DecodeGraphs::with_tuned_gemms(int rows, cudaGraphExec_t plain) {
  const std::string what = std::to_string(rows) + " rows";
  const bool require = linear_.tuning() == CudaPaths::GemmTune::kRequire;
  // Not capturing here: the shapes noted during the plain capture are timed.
  Status st = linear_.tune();
  Result<cudaGraphExec_t> tuned = Error{st.message()};
  if (st.ok()) {
    linear_.run_tuned(true);
    tuned = capture(rows);
    linear_.run_tuned(false);
  }
  const int tuned_runs = linear_.tuned_runs();
  if (tuned.ok() && require && tuned_runs == 0) {
    cudaGraphExecDestroy(*tuned);
    tuned = make_error("no GEMM has a cuBLASLt algorithm");
  }
  if (!tuned.ok() && require) {
    cudaGraphExecDestroy(plain);
    return make_error("BATON_CUDA_GEMM_TUNE=require: decode graph for ", what, ": ", tuned.error());
  }
  if (!tuned.ok()) {
    log::warn("cuda backend: decode graph for ", what, " on tuned cuBLASLt GEMMs: ", tuned.error(),
              "; keeping cublasGemmEx");
    cudaGetLastError();
    return plain;
  }
  log::info("cuda backend: decode graph for ", what, ": ", tuned_runs, " GEMMs on tuned cuBLASLt algorithms");
  if (require) {
    cudaGraphExecDestroy(plain);
    return *tuned;
  }
  return keep_faster(what, plain, "cublasGemmEx", std::move(tuned), "tuned cuBLASLt GEMMs");
}

}  // namespace baton::cuda
