#include "backend/cuda/gemm_tune.h"

#include <algorithm>
#include <limits>

#include "backend/cuda/timing.h"
#include "common/log.h"

namespace baton::cuda {
namespace {

constexpr int kCandidates = 8;  // of the heuristic's list, best first
// A candidate replaces cublasGemmEx only when this much faster: closer is within the timing noise
// of a few dozen calls.
constexpr float kMargin = 0.97f;
constexpr int kMinCalls = 8;  // timed calls per candidate

}  // namespace

TunedGemms::~TunedGemms() {
  for (auto& [key, ch] : chosen_) {
    if (ch.w) cublasLtMatrixLayoutDestroy(ch.w);
    if (ch.a) cublasLtMatrixLayoutDestroy(ch.a);
    if (ch.c) cublasLtMatrixLayoutDestroy(ch.c);
    if (ch.op) cublasLtMatmulDescDestroy(ch.op);
  }
  if (lt_) cublasLtDestroy(lt_);
}

Status TunedGemms::init(cudaStream_t stream, void* ws, size_t ws_bytes, float* scratch, size_t scratch_floats,
                        bool always) {
  const cublasStatus_t st = cublasLtCreate(&lt_);
  if (st != CUBLAS_STATUS_SUCCESS) return make_error("cuBLASLt: ", cublasGetStatusString(st), " (cublasLtCreate)");
  stream_ = stream, ws_ = ws, ws_bytes_ = ws_bytes, scratch_ = scratch, scratch_floats_ = scratch_floats;
  always_ = always;
  return {};
}

void TunedGemms::note(const bf16_t* a, const bf16_t* w, float* c, int m, int n, int k, float beta) {
  const Key key{m, n, k, beta != 0.f};
  if (chosen_.count(key)) return;
  Seen& s = seen_[key];
  s.a = a, s.c = c;
  if (std::find(s.weights.begin(), s.weights.end(), w) == s.weights.end()) s.weights.push_back(w);
}

Result<float> TunedGemms::time_us(const Seen& s, const std::function<Status(const bf16_t*)>& call) {
  for (const bf16_t* w : s.weights) BATON_RETURN_IF_ERROR(call(w));  // warm-up: every weight once
  // At least kMinCalls timed calls (a shape with one weight, the LM head, repeats it).
  const int n = int(s.weights.size()), rounds = (kMinCalls + n - 1) / n;
  BATON_ASSIGN_OR_RETURN(const float ms, time_ms(stream_, [&]() -> Status {
                           for (int r = 0; r < rounds; ++r)
                             for (const bf16_t* w : s.weights) BATON_RETURN_IF_ERROR(call(w));
                           return {};
                         }));
  return ms * 1e3f / float(rounds * n);
}

Status TunedGemms::tune(const Gemm& gemm_ex) {
  const std::map<Key, Seen> seen = std::move(seen_);  // noted since the last call, tuned once
  seen_.clear();
  for (const auto& [key, s] : seen) {
    const auto [m, n, k, acc] = key;
    const float alpha = 1.f, beta = acc ? 1.f : 0.f;
    Choice& ch = chosen_[key];
    float* out = s.c;
    if (acc) {  // timed into the scratch, not into the residual it adds to
      if (size_t(m) * n > scratch_floats_) continue;
      out = scratch_;
    }
    BATON_ASSIGN_OR_RETURN(const float ex_us,
                           time_us(s, [&](const bf16_t* w) { return gemm_ex(s.a, w, out, m, n, k, beta); }));

    // Column-major, as cublasGemmEx sees it: C^T[n, m] = op(W)[n, k] A^T[k, m], W stored k x n.
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasLtMatmulPreference_t pref = nullptr;
    bool ok =
        cublasLtMatmulDescCreate(&ch.op, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS &&
        cublasLtMatmulDescSetAttribute(ch.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)) == CUBLAS_STATUS_SUCCESS &&
        cublasLtMatmulDescSetAttribute(ch.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)) == CUBLAS_STATUS_SUCCESS &&
        cublasLtMatrixLayoutCreate(&ch.w, CUDA_R_16BF, k, n, k) == CUBLAS_STATUS_SUCCESS &&
        cublasLtMatrixLayoutCreate(&ch.a, CUDA_R_16BF, k, m, k) == CUBLAS_STATUS_SUCCESS &&
        cublasLtMatrixLayoutCreate(&ch.c, CUDA_R_32F, n, m, n) == CUBLAS_STATUS_SUCCESS &&
        cublasLtMatmulPreferenceCreate(&pref) == CUBLAS_STATUS_SUCCESS &&
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes_,
                                             sizeof(ws_bytes_)) == CUBLAS_STATUS_SUCCESS;
    cublasLtMatmulHeuristicResult_t found[kCandidates] = {};
    int n_found = 0;
    ok = ok && cublasLtMatmulAlgoGetHeuristic(lt_, ch.op, ch.w, ch.a, ch.c, ch.c, pref, kCandidates, found, &n_found) ==
                   CUBLAS_STATUS_SUCCESS;
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (!ok) {
      log::info("cuda backend: GEMM ", m, "x", n, "x", k, ": no cuBLASLt candidates; cublasGemmEx");
      continue;
    }
    float best_us = always_ ? std::numeric_limits<float>::infinity() : ex_us;
    int best = -1;
    for (int i = 0; i < n_found; ++i) {
      if (found[i].state != CUBLAS_STATUS_SUCCESS) continue;
      Result<float> t = time_us(s, [&](const bf16_t* w) -> Status {
        const cublasStatus_t r = cublasLtMatmul(lt_, ch.op, &alpha, w, ch.w, s.a, ch.a, &beta, out, ch.c, out, ch.c,
                                                &found[i].algo, ws_, ws_bytes_, stream_);
        if (r != CUBLAS_STATUS_SUCCESS) return make_error("cuBLASLt: ", cublasGetStatusString(r));
        return {};
      });
      if (!t.ok()) {  // this algorithm does not run here: the next one
        cudaGetLastError();
        continue;
      }
      if (*t < best_us * (best < 0 && !always_ ? kMargin : 1.f)) best_us = *t, best = i;
    }
    ch.use = best >= 0;
    if (ch.use) ch.algo = found[best].algo;
    if (ch.use)
      log::info("cuda backend: GEMM ", m, "x", n, "x", k, acc ? " (adding)" : "", ": cublasGemmEx ", ex_us,
                " us, cuBLASLt candidate ", best, " of ", n_found, " ", best_us, " us");
    else
      log::info("cuda backend: GEMM ", m, "x", n, "x", k, acc ? " (adding)" : "", ": cublasGemmEx ", ex_us,
                " us, none of ", n_found, " cuBLASLt candidates faster");
  }
  return {};
}

Result<bool> TunedGemms::run(const bf16_t* a, const bf16_t* w, float* c, int m, int n, int k, float beta) {
  const auto it = chosen_.find(Key{m, n, k, beta != 0.f});
  if (it == chosen_.end() || !it->second.use) return false;
  const Choice& ch = it->second;
  const float alpha = 1.f;
  const cublasStatus_t r =
      cublasLtMatmul(lt_, ch.op, &alpha, w, ch.w, a, ch.a, &beta, c, ch.c, c, ch.c, &ch.algo, ws_, ws_bytes_, stream_);
  if (r != CUBLAS_STATUS_SUCCESS) return make_error("cuBLASLt: ", cublasGetStatusString(r), " (cublasLtMatmul)");
  return true;
}

}  // namespace baton::cuda
