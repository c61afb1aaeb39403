// Matrix products and tensor parallelism's reductions of one rank (linear.h).
#include "backend/cuda/linear.h"

namespace baton::cuda {

Result<std::unique_ptr<Linear>> Linear::create(cudaStream_t stream, const Rank& rank, int hidden, int cap_tokens,
                                               int cap_rows, int slices, CudaPaths::GemmTune tune,
                                               DeviceArena& mem) {
  std::unique_ptr<Linear> l(new Linear(stream, rank, hidden, cap_tokens, slices, tune));
  BATON_CUBLAS(cublasCreate(&l->cublas_));
  BATON_CUBLAS(cublasSetStream(l->cublas_, stream));
  const size_t ws_bytes = size_t{32} << 20;  // cuBLAS workspace: set once, so graph capture never allocates
  BATON_ASSIGN_OR_RETURN(std::byte * ws, mem.alloc<std::byte>(ws_bytes));
  BATON_CUBLAS(cublasSetWorkspace(l->cublas_, ws, ws_bytes));
  if (tune != CudaPaths::GemmTune::kOff) {  // the adding GEMMs (x += ...) are timed into a scratch
    BATON_ASSIGN_OR_RETURN(float* scratch, mem.alloc<float>(size_t(cap_rows) * hidden));
    BATON_RETURN_IF_ERROR(l->tuned_.init(stream, ws, ws_bytes, scratch, size_t(cap_rows) * hidden,
                                         tune == CudaPaths::GemmTune::kRequire));
  }
  if (slices) {
    BATON_ASSIGN_OR_RETURN(l->parts_, mem.alloc<float>(size_t(slices) * cap_tokens * hidden));
    if (rank.size > 1) {
      BATON_ASSIGN_OR_RETURN(l->gather_, mem.alloc<float>(size_t(rank.size) * cap_tokens * hidden));
    }
  }
  return l;
}

Linear::~Linear() {
  if (cublas_) cublasDestroy(cublas_);
}

Status Linear::tune() {
  return tuned_.tune([this](const bf16_t* a, const bf16_t* w, float* c, int m, int n, int k, float beta) {
    return gemm(a, w, c, m, n, k, beta);  // cublasGemmEx: noting and tuned runs are off
  });
}

Status Linear::gemm(const bf16_t* a, const bf16_t* w, float* c, int m, int n, int k, float beta) {
  if (noting_) tuned_.note(a, w, c, m, n, k, beta);
  if (tuned_on_) {
    BATON_ASSIGN_OR_RETURN(const bool ran, tuned_.run(a, w, c, m, n, k, beta));
    if (ran) {
      ++tuned_runs_;
      return {};
    }
  }
  // Row-major C[m, n] = A[m, k] W[n, k]^T is column-major C^T = W A^T: W is the transposed operand.
  const float alpha = 1.f;
  BATON_CUBLAS(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w, CUDA_R_16BF, k, a, CUDA_R_16BF, k,
                            &beta, c, CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return {};
}

Status Linear::gemm_ld(const bf16_t* a, int lda, const bf16_t* w, int ldw, float* c, int ldc, int m, int n, int k,
                       float beta) {
  const float alpha = 1.f;
  BATON_CUBLAS(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w, CUDA_R_16BF, ldw, a, CUDA_R_16BF,
                            lda, &beta, c, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return {};
}

Status Linear::row_parallel(const bf16_t* in, const bf16_t* w, int T, int k_rank, bool skinny, float* x) {
  const int H = hidden_;
  if (!slices_) {
    const float own = rank_.rank == 0 ? 1.f : 0.f;  // rank 0 adds into x; the others write partials
    if (skinny) {
      gemv({GemvKind::kAccumulate, w, T, H, k_rank, in, nullptr, nullptr, nullptr, 0.f, x, own, nullptr, 0}, stream_);
    } else {
      BATON_RETURN_IF_ERROR(gemm(in, w, x, T, H, k_rank, own));
    }
    return all_reduce(x, size_t(T) * H);
  }
  const int kc = k_rank / slices_;
  const size_t part = size_t(cap_tokens_) * H, n = size_t(T) * H;
  for (int j = 0; j < slices_; ++j) {
    const bf16_t* wj = w + size_t(j) * H * kc;
    float* out = parts_ + j * part;
    if (skinny) {
      gemv({GemvKind::kAccumulate, wj, T, H, kc, in + j * kc, nullptr, nullptr, nullptr, 0.f, out, 0.f, nullptr, k_rank},
           stream_);
    } else {
      BATON_RETURN_IF_ERROR(gemm_ld(in + j * kc, k_rank, wj, kc, out, H, T, H, kc, 0.f));
    }
  }
  if (rank_.size == 1) {
    tree_sum(parts_, slices_, part, x, n, true, stream_);
    return {};
  }
#ifdef BATON_HAS_NCCL
  tree_sum(parts_, slices_, part, parts_, n, false, stream_);  // this rank's subtree, in place
  BATON_NCCL(ncclAllGather(parts_, gather_, n, ncclFloat, static_cast<ncclComm_t>(rank_.nccl), stream_));
  tree_sum(gather_, rank_.size, n, x, n, true, stream_);
  return {};
#else
  return make_error("tensor parallelism on CUDA needs NCCL (not found at build time)");
#endif
}

Status Linear::column_parallel_sliced(const bf16_t* h, const bf16_t* w, int64_t row0, int n_rank, float* out, int ldc,
                                      int col0, int T, int k) {
  const int nc = n_rank / slices_;
  for (int j = 0; j < slices_; ++j)
    BATON_RETURN_IF_ERROR(gemm_ld(h, k, w + (row0 + int64_t(j) * nc) * k, k, out + col0 + j * nc, ldc, T, nc, k, 0.f));
  return {};
}

Status Linear::all_reduce(float* x, size_t n) {
  if (rank_.size == 1) return {};
#ifdef BATON_HAS_NCCL
  BATON_NCCL(ncclAllReduce(x, x, n, ncclFloat, ncclSum, static_cast<ncclComm_t>(rank_.nccl), stream_));
  return {};
#else
  (void)x, (void)n;
  return make_error("tensor parallelism on CUDA needs NCCL (not found at build time)");
#endif
}

}  // namespace baton::cuda
