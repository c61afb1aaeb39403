// The model's matrix products on one rank: cuBLAS GEMMs (bf16 in, fp32 accumulate and out), the
// same on cuBLASLt algorithms timed per shape for decode graphs (gemm_tune.h), our skinny GEMMs
// for steps of a few tokens (gemv.cu), and tensor parallelism's reductions.
//
// With tensor parallelism every rank holds its heads and its slice of the MLP; for the row-parallel
// projections (O, down) rank 0's GEMM adds into x and the others' overwrite their x with their
// partial sum, so one NCCL all-reduce of x (sum) leaves the same x + sum of partials on every rank.
// --tp-invariant: those GEMMs run as S slices of their inner dimension (S from
// tp_invariant_slices, S / tp per rank), each into its own fp32 buffer; a rank sums its slices in
// the pairwise tree, the ranks all-gather those sums and every rank adds the tree of them to x:
// the same tree at every tp, so x, and the logits, are bit for bit the same. The column-parallel
// GEMMs (QKV, gate/up) run per slice too on cuBLAS (the same shapes at every tp, so cuBLAS picks
// the same kernel); the skinny GEMMs compute each output from its whole row whatever N is.
#pragma once

#include <memory>

#include "backend/backend.h"
#include "backend/cuda/device.h"
#include "backend/cuda/gemm_tune.h"

namespace baton::cuda {

class Linear {
 public:
  // hidden: the residual stream's width; cap_tokens: the most tokens of a pass; slices: this
  // rank's --tp-invariant slices (0: off); tune: whether decode graphs may run tuned GEMMs.
  static Result<std::unique_ptr<Linear>> create(cudaStream_t stream, const Rank& rank, int hidden, int cap_tokens,
                                                int cap_rows, int slices, CudaPaths::GemmTune tune, DeviceArena& mem);
  Linear(const Linear&) = delete;
  Linear& operator=(const Linear&) = delete;
  ~Linear();

  // Row-major C[m, n] = beta C + A[m, k] W[n, k]^T, all rows contiguous.
  Status gemm(const bf16_t* a, const bf16_t* w, float* c, int m, int n, int k, float beta);
  // The same with row strides lda, ldw, ldc (always cublasGemmEx).
  Status gemm_ld(const bf16_t* a, int lda, const bf16_t* w, int ldw, float* c, int ldc, int m, int n, int k,
                 float beta);
  // x[T, hidden] += in[T, k_rank] W^T summed over the ranks (the O and down projections): one GEMM
  // (skinny: gemv.cu's) adding into x on rank 0, partials elsewhere, and an all-reduce; with
  // --tp-invariant the slices summed in the tree (w: the rank's slices one after the other).
  Status row_parallel(const bf16_t* in, const bf16_t* w, int T, int k_rank, bool skinny, float* x);
  // --tp-invariant: out[T, ldc] (columns col0 + ...) = h W^T for the slices of `n_rank` rows of w
  // starting at row0, each written at column col0 + its offset.
  Status column_parallel_sliced(const bf16_t* h, const bf16_t* w, int64_t row0, int n_rank, float* out, int ldc,
                                int col0, int T, int k);
  int slices() const { return slices_; }

  // Tuned GEMMs for decode graphs: while noting, gemm() records each shape it runs; tune() times
  // the noted shapes' cuBLASLt candidates (not while capturing); while run_tuned(true), gemm()
  // runs a shape's chosen algorithm where there is one and counts it in tuned_runs().
  CudaPaths::GemmTune tuning() const { return tune_; }
  void note_shapes(bool on) { noting_ = on; }
  Status tune();
  void run_tuned(bool on) {
    if (on) tuned_runs_ = 0;
    tuned_on_ = on;
  }
  int tuned_runs() const { return tuned_runs_; }

 private:
  Linear(cudaStream_t stream, const Rank& rank, int hidden, int cap_tokens, int slices, CudaPaths::GemmTune tune)
      : stream_(stream), rank_(rank), hidden_(hidden), cap_tokens_(cap_tokens), slices_(slices), tune_(tune) {}
  Status all_reduce(float* x, size_t n);

  cudaStream_t stream_;
  Rank rank_;
  int hidden_, cap_tokens_, slices_;
  CudaPaths::GemmTune tune_;
  cublasHandle_t cublas_ = nullptr;
  TunedGemms tuned_;
  bool noting_ = false, tuned_on_ = false;
  int tuned_runs_ = 0;
  float *parts_ = nullptr, *gather_ = nullptr;  // --tp-invariant: [slices][cap_tokens * H]; [tp][cap_tokens * H]
};

}  // namespace baton::cuda
