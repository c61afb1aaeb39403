// The decode step's cuBLAS GEMMs at 9+ rows, against every algorithm cuBLASLt's heuristic offers for
// the same shape: is a tuned choice worth building (bench/RESULTS.md: yes, tuned cuBLASLt GEMMs)? Standalone, on the
// lent GPU machine:
//   nvcc -O2 -std=c++17 bench/gpu/gemm_algos.cpp -lcublasLt -lcublas -o /tmp/gemm_algos && /tmp/gemm_algos [M,...]
// Row-major C[m, n] (fp32) = A[m, k] (bf16) W[n, k]^T (bf16), as CudaBackend::gemm calls cublasGemmEx
// (CUBLAS_GEMM_DEFAULT, fp32 compute); beta 1 where the backend accumulates into the residual. The
// weights rotate over enough copies (>= 256 MB) that every call reads them from HBM, as a decode
// step does. Prints, per shape: cublasGemmEx, the heuristic's first algorithm, and the fastest
// of up to 16, in us per call and the weight bytes' rate.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}
void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) {
    std::fprintf(stderr, "%s: cuBLAS status %d\n", what, int(s));
    std::exit(1);
  }
}

struct Shape {
  const char* name;
  int n, k;
  float beta;
};

constexpr int kReps = 30;
constexpr size_t kWorkspace = 32u << 20;

// Mean us per call of `call(i)` over kReps calls after 3 warm-ups; i picks the weight copy.
template <class F>
float time_us(cudaStream_t s, F&& call) {
  cudaEvent_t a, b;
  cudaEventCreate(&a), cudaEventCreate(&b);
  for (int i = 0; i < 3; ++i) call(i);
  cudaEventRecord(a, s);
  for (int i = 0; i < kReps; ++i) call(i + 3);
  cudaEventRecord(b, s);
  check(cudaEventSynchronize(b), "timing");
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  cudaEventDestroy(a), cudaEventDestroy(b);
  return ms * 1e3f / kReps;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> ms;
  for (std::string s = argc > 1 ? argv[1] : "16,32,64,128,256"; !s.empty();) {
    const size_t c = s.find(',');
    ms.push_back(std::atoi(s.substr(0, c).c_str()));
    s = c == std::string::npos ? "" : s.substr(c + 1);
  }
  const Shape shapes[] = {
      {"1B qkv", 3072, 2048, 0.f},    {"1B o", 2048, 2048, 1.f},     {"1B gate/up", 16384, 2048, 0.f},
      {"1B down", 2048, 8192, 1.f},   {"1B lm_head", 128256, 2048, 0.f}, {"0.5B qkv", 1152, 896, 0.f},
      {"0.5B o", 896, 896, 1.f},      {"0.5B gate/up", 9728, 896, 0.f}, {"0.5B down", 896, 4864, 1.f},
      {"0.5B lm_head", 151936, 896, 0.f},
  };
  const int max_m = *std::max_element(ms.begin(), ms.end());
  size_t max_w = 0, max_c = 0, max_a = 0;
  for (const Shape& s : shapes) {
    max_w = std::max(max_w, size_t(s.n) * s.k);
    max_c = std::max(max_c, size_t(s.n) * max_m);
    max_a = std::max(max_a, size_t(s.k) * max_m);
  }
  // Weight copies: at least 256 MB in all, so no call finds its weights in L2 (50 MB on the H200).
  const int copies = int(std::max<size_t>(2, ((256u << 20) + max_w * 2 - 1) / (max_w * 2)));
  __nv_bfloat16 *w = nullptr, *a = nullptr;
  float* c = nullptr;
  void* ws = nullptr;
  check(cudaMalloc(&w, max_w * 2 * copies), "cudaMalloc weights");
  check(cudaMalloc(&a, max_a * 2), "cudaMalloc inputs");
  check(cudaMalloc(&c, max_c * 4), "cudaMalloc outputs");
  check(cudaMalloc(&ws, kWorkspace), "cudaMalloc workspace");
  cudaMemset(w, 0, max_w * 2 * copies), cudaMemset(a, 0, max_a * 2), cudaMemset(c, 0, max_c * 4);
  cudaStream_t stream;
  cudaStreamCreate(&stream);
  cublasHandle_t blas;
  cublasLtHandle_t lt;
  check(cublasCreate(&blas), "cublasCreate");
  check(cublasSetStream(blas, stream), "cublasSetStream");
  check(cublasSetWorkspace(blas, ws, kWorkspace), "cublasSetWorkspace");
  check(cublasLtCreate(&lt), "cublasLtCreate");
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("%s, %d SMs; weights rotate over %d copies; %d calls timed per algorithm\n", prop.name,
              prop.multiProcessorCount, copies, kReps);
  std::printf("%-14s %5s  %10s  %18s  %26s  %s\n", "shape", "M", "GemmEx us", "Lt heuristic[0] us", "fastest Lt us (index)",
              "fastest / GemmEx");

  for (const Shape& s : shapes) {
    for (int m : ms) {
      const float alpha = 1.f, beta = s.beta;
      const size_t wsz = size_t(s.n) * s.k;
      auto wi = [&](int i) { return w + (i % copies) * wsz; };
      const float ex = time_us(stream, [&](int i) {
        check(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, s.n, m, s.k, &alpha, wi(i), CUDA_R_16BF, s.k, a, CUDA_R_16BF,
                           s.k, &beta, c, CUDA_R_32F, s.n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              "cublasGemmEx");
      });
      cublasLtMatmulDesc_t op;
      check(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "MatmulDescCreate");
      const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta));
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb));
      cublasLtMatrixLayout_t la, lb, lc;
      check(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, s.k, s.n, s.k), "layout W");
      check(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, s.k, m, s.k), "layout A");
      check(cublasLtMatrixLayoutCreate(&lc, CUDA_R_32F, s.n, m, s.n), "layout C");
      cublasLtMatmulPreference_t pref;
      cublasLtMatmulPreferenceCreate(&pref);
      const size_t wsb = kWorkspace;
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof(wsb));
      cublasLtMatmulHeuristicResult_t res[16];
      int found = 0;
      check(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 16, res, &found), "heuristic");
      float first = -1, best = -1;
      int best_i = -1;
      for (int r = 0; r < found; ++r) {
        if (res[r].state != CUBLAS_STATUS_SUCCESS) continue;
        bool ok = true;
        const float t = time_us(stream, [&](int i) {
          ok = ok && cublasLtMatmul(lt, op, &alpha, wi(i), la, a, lb, &beta, c, lc, c, lc, &res[r].algo, ws, kWorkspace,
                                    stream) == CUBLAS_STATUS_SUCCESS;
        });
        if (!ok) continue;
        if (r == 0) first = t;
        if (best < 0 || t < best) best = t, best_i = r;
      }
      const double gbps = wsz * 2 / (best > 0 ? best : ex) / 1e3;
      std::printf("%-14s %5d  %10.2f  %18.2f  %20.2f (%2d)  %.2f  (%d algorithms; fastest reads %.0f GB/s)\n", s.name, m,
                  ex, first, best, best_i, best > 0 ? best / ex : 0.f, found, gbps);
      std::fflush(stdout);
      cublasLtMatmulPreferenceDestroy(pref);
      cublasLtMatrixLayoutDestroy(la), cublasLtMatrixLayoutDestroy(lb), cublasLtMatrixLayoutDestroy(lc);
      cublasLtMatmulDescDestroy(op);
    }
  }
  check(cudaGetLastError(), "last error");
  return 0;
}
