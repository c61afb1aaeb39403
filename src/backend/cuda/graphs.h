// Decode steps replayed as CUDA graphs: one per batch size (1, 2, 4, 8, then every 8 up to the
// largest), captured the first time a step of that size runs (Engine::warm_up does them all before
// serving), a step of S sequences running on the first size >= S with padding rows.
//
// Where two ways of running the same step compete, both are captured, timed on the step's own
// buffers and the faster kept (logged): 5-8 rows on the skinny GEMMs or on cuBLAS (the skinny
// path's fused kernels win on narrow models, cuBLAS's streaming on wide ones), and graphs on cuBLAS
// (9+ rows) on cublasGemmEx or on cuBLASLt algorithms timed per GEMM shape (gemm_tune.h). With
// --tp-invariant nothing is chosen by timing: a step's kernels must not depend on it.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "backend/cuda/forward.h"
#include "backend/cuda/linear.h"

namespace baton::cuda {

class DecodeGraphs {
 public:
  // max_batch: the largest decode batch run as a graph (0: none). time_skinny: choose between
  // skinny GEMMs and cuBLAS by timing (off: skinny wherever they take the step).
  DecodeGraphs(cudaStream_t stream, Forward& forward, Linear& linear, int max_batch, bool time_skinny);
  DecodeGraphs(const DecodeGraphs&) = delete;
  DecodeGraphs& operator=(const DecodeGraphs&) = delete;
  ~DecodeGraphs();

  const std::vector<int>& sizes() const { return sizes_; }
  int max_batch() const { return sizes_.empty() ? 0 : sizes_.back(); }
  // The graph size a decode step of S <= max_batch() sequences runs on.
  int rows_for(int S) const;
  // The graph for `rows` rows (a size of sizes()), captured the first time.
  Result<cudaGraphExec_t> get(int rows);

 private:
  Result<cudaGraphExec_t> build(int rows);
  Result<cudaGraphExec_t> capture(int rows);
  // Of a decode graph captured on cublasGemmEx (`plain`), the tuned GEMMs' capture of the same step
  // if it replays faster (or always, with GemmTune::kRequire).
  Result<cudaGraphExec_t> with_tuned_gemms(int rows, cudaGraphExec_t plain);
  // Mean time of a replay, after one to warm up.
  Result<float> time(cudaGraphExec_t g);
  // Of two captures of the same step (b may have failed), the faster, the other destroyed; logged
  // as "decode graph for <what>: <a_name> ms, <b_name> ms: keeping ...".
  Result<cudaGraphExec_t> keep_faster(const std::string& what, cudaGraphExec_t a, const char* a_name,
                                      Result<cudaGraphExec_t> b, const char* b_name);

  cudaStream_t stream_;
  Forward& forward_;
  Linear& linear_;
  bool time_skinny_;
  std::vector<int> sizes_;
  std::map<int, cudaGraphExec_t> graphs_;
};

}  // namespace baton::cuda
