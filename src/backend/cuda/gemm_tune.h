// Decode graphs' cuBLAS GEMMs on cuBLASLt algorithms chosen by timing (on by default at tp = 1,
// CudaPaths::gemm_tune, BATON_CUDA_GEMM_TUNE=0, turns it off; 1B shape batch 64 1.597 -> 1.581 ms,
// batch 128 2.077 -> 2.018 on the H200).
//
// Why: cublasGemmEx picks one kernel per shape by heuristic. In the Llama-3.2-1B shape's batch-64
// decode step on the H200 the small GEMMs ran at 0.25-0.5 of the copy rate (QKV 7.8 us for 12.6 MB,
// O 6.8 for 8.4, down 15.8 for 33.5 with its split-K reduction). cuBLASLt offers several algorithms
// per shape (tile sizes, split-K); which is fastest for a weight-streaming GEMM of a few dozen rows
// is an empirical question, so each shape's candidates are timed once, on the step's own buffers
// with the weights of every layer in turn (cold in L2, as in a step).
//
// Use (DecodeGraphs, graphs.h): while a decode graph is captured on cublasGemmEx, note() each
// GEMM; after the capture, tune() times the noted shapes not tuned before; while the tuned variant
// is captured, run() enqueues a shape's chosen algorithm (false: cublasGemmEx was as fast, and the
// caller runs that). The backend keeps whichever of the two graphs replays faster.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <functional>
#include <map>
#include <tuple>
#include <vector>

#include "backend/cuda/kernels.h"
#include "common/result.h"

namespace baton::cuda {

class TunedGemms {
 public:
  TunedGemms() = default;
  TunedGemms(const TunedGemms&) = delete;
  TunedGemms& operator=(const TunedGemms&) = delete;
  ~TunedGemms();

  // ws: the workspace cublasLtMatmul may use (shared with cuBLAS: the stream orders them);
  // scratch: floats enough for the largest accumulating output timed (beta != 0 GEMMs are timed
  // into it, not into the residual they add to). always: the fastest cuBLASLt candidate even where
  // cublasGemmEx was faster (tests: the tuned path runs whatever the timings say).
  Status init(cudaStream_t stream, void* ws, size_t ws_bytes, float* scratch, size_t scratch_floats, bool always);

  // Row-major C[m, n] (fp32) = beta C + A[m, k] W[n, k]^T (bf16, contiguous rows), as
  // Linear::gemm calls cublasGemmEx.
  using Gemm = std::function<Status(const bf16_t* a, const bf16_t* w, float* c, int m, int n, int k, float beta)>;
  void note(const bf16_t* a, const bf16_t* w, float* c, int m, int n, int k, float beta);
  // Times the noted shapes not tuned before: `gemm_ex` (the cublasGemmEx call, the baseline)
  // against each cuBLASLt candidate. Not while the stream is being captured.
  Status tune(const Gemm& gemm_ex);
  // Enqueues the chosen algorithm for this shape; false when there is none (not tuned, or
  // cublasGemmEx was as fast).
  Result<bool> run(const bf16_t* a, const bf16_t* w, float* c, int m, int n, int k, float beta);

 private:
  using Key = std::tuple<int, int, int, bool>;  // m, n, k, accumulating (beta != 0)
  struct Seen {
    const bf16_t* a = nullptr;
    float* c = nullptr;
    std::vector<const bf16_t*> weights;  // every distinct W of the shape (a layer each)
  };
  struct Choice {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t w = nullptr, a = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool use = false;  // false: cublasGemmEx
  };
  // Mean us of `call(weight)` over the noted weights (at least 8 calls), after one warm-up each.
  Result<float> time_us(const Seen& s, const std::function<Status(const bf16_t*)>& call);

  cudaStream_t stream_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  void* ws_ = nullptr;
  size_t ws_bytes_ = 0;
  float* scratch_ = nullptr;
  size_t scratch_floats_ = 0;
  bool always_ = false;
  std::map<Key, Seen> seen_;
  std::map<Key, Choice> chosen_;
};

}  // namespace baton::cuda
