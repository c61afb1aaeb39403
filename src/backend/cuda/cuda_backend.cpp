// The CUDA backend: bf16 weights on the GPU, cuBLAS GEMMs (bf16 in, fp32 accumulate and out),
// our kernels (backend/cuda/*.cu) for the rest, the paged KV cache in device memory (bf16 or fp8
// e4m3), sampling on the device, and decode steps replayed as CUDA graphs.
//
// Data flow of one layer, T tokens (x: fp32 residual stream [T, hidden]):
//   h = rmsnorm(x) (bf16) -> qkv = h Wqkv^T (fp32) -> bias, QK-norm, RoPE, K/V into the cache
//   -> attention (bf16 out) -> x += attn Wo^T (the GEMM adds into x: beta = 1, so the residual add
//   costs nothing) -> h = rmsnorm(x) -> gate_up = h Wgu^T -> act = silu(gate) * up (bf16)
//   -> x += act Wdown^T.
// With tensor parallelism every rank holds its heads and its slice of the MLP; rank 0's GEMMs
// add into x and the others' overwrite their x with their partial sum, so one NCCL all-reduce
// of x (sum) leaves the same x + sum of partials on every rank.
//
// --tp-invariant: the attention output and MLP down GEMMs run as S slices of their inner dimension
// (S from tp_invariant_slices, S / tp per rank), each into its own fp32 buffer; a rank sums its
// slices in the pairwise tree, the ranks all-gather those sums and every rank adds the tree of
// them to x. That is the same tree at every tp, so x, and the logits, are bit for bit the same.
// The column-parallel GEMMs (QKV, gate/up) run per slice too on cuBLAS (the same shapes at every
// tp, so cuBLAS picks the same kernel); the skinny GEMMs compute each output from its whole row
// whatever N is, so they need no slicing. Decode attention picks its splits from the model's
// head count, not the rank's, and decode graphs do not choose between kernels by timing.
//
// Steps of at most kGemvMaxRows tokens (small-batch decode) take a shorter path: our skinny GEMMs
// (gemv.cu) compute the RMSNorm in their prologue and SiLU-and-mul in their epilogue, so a layer
// is norm+QKV, attention, O, norm+gate/up+SiLU, down; their kernels use programmatic dependent
// launch. Up to kGemvDotRows tokens that path is always faster; for more (the tensor-core kernel)
// it depends on the model's width, so those decode graphs are captured both ways, timed, and the
// faster one is kept. In decode steps (one new token per sequence) the attention kernel also does
// the bias, QK-norm, RoPE and cache write. The cuBLAS decode graphs (9+ rows) are captured a
// second time on cuBLASLt algorithms timed per GEMM shape (gemm_tune.h), and the faster kept.
//
// A step's inputs (tokens, positions, cache slots, block tables) go up in one copy from pinned
// memory into device buffers at fixed addresses; a decode step of a batch size seen before is
// one graph launch. Nothing is allocated inside a step.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/gemm_tune.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/timing.h"
#include "backend/tp_backend.h"
#include "backend/weight_prep.h"
#include "common/float16.h"
#include "common/log.h"
#include "common/tp_split.h"
#include "model/weights.h"

#ifdef BATON_HAS_NCCL
#include <nccl.h>
#endif

namespace baton {
namespace cuda {
namespace {

// Decode attention reads each K/V row once for up to kAttnGroupHeads query heads of its KV group
// (more measured slower), at every batch size since its splits fill one wave of the kernel
// (bench/RESULTS.md, "GQA-grouped decode attention" and "one wave").
constexpr int kAttnGroupHeads = 4;
// Decode steps of at least this many tokens run attention on tensor cores (decode_mma_supported
// shapes): there the CUDA-core kernel's instructions, not the KV bytes, set its time. Measured
// faster from 32 tokens on, slower at 8 and mixed at 16 (bench/RESULTS.md, session 21).
constexpr int kAttnMmaTokens = 32;
// BATON_CUDA_MEGA=auto keeps the one-kernel decode step only if its logits are within this much
// (relative to the largest) of the kernels per layer's: the goldens' tolerance.
constexpr float kMegaMaxGap = 2e-2f;

#define BATON_CU(expr)                                                                            \
  do {                                                                                            \
    cudaError_t e_ = (expr);                                                                      \
    if (e_ != cudaSuccess) return make_error("CUDA: ", cudaGetErrorString(e_), " (", #expr, ")"); \
  } while (0)
#define BATON_CUBLAS(expr)                                                                                       \
  do {                                                                                                           \
    cublasStatus_t s_ = (expr);                                                                                  \
    if (s_ != CUBLAS_STATUS_SUCCESS) return make_error("cuBLAS: ", cublasGetStatusString(s_), " (", #expr, ")"); \
  } while (0)
#ifdef BATON_HAS_NCCL
#define BATON_NCCL(expr)                                                                          \
  do {                                                                                            \
    ncclResult_t r_ = (expr);                                                                     \
    if (r_ != ncclSuccess) return make_error("NCCL: ", ncclGetErrorString(r_), " (", #expr, ")"); \
  } while (0)
#endif

struct Rank {
  int rank = 0, size = 1, device = 0;
  void* nccl = nullptr;  // ncclComm_t when size > 1
};

// Where each input of a step lives inside the one staging buffer (same offsets on host and
// device). The block tables come last so that a step copies only the prefix it uses.
struct StagingLayout {
  size_t tokens, positions, slots, seq_of, logit_rows, table_stride, tiles, params, tables, tables_cap, bytes;
  StagingLayout(int cap_tokens, int cap_rows, int cap_tiles, size_t cap_table_entries) {
    size_t o = 0;
    auto take = [&o](size_t n) {
      size_t at = o;
      o += (n + 255) / 256 * 256;
      return at;
    };
    tokens = take(4 * size_t(cap_tokens));
    positions = take(4 * size_t(cap_tokens));
    slots = take(4 * size_t(cap_tokens));
    seq_of = take(4 * size_t(cap_tokens));
    logit_rows = take(4 * size_t(cap_rows));
    table_stride = take(4);
    tiles = take(8 * size_t(cap_tiles));
    params = take(sizeof(SampleParams) * size_t(cap_rows));
    tables = o;
    tables_cap = cap_table_entries;
    bytes = tables + 4 * cap_table_entries;
  }
};

// BATON_CUDA_PROFILE=1: steps run eagerly (no graphs) with an event after every launch; the time
// between events is summed per kernel kind and printed when the backend goes away. For finding
// where a step's time goes on machines without nsys.
class StepProfiler {
 public:
  void begin(cudaStream_t s) {
    stream_ = s;
    used_ = 0;
    mark("start");
  }
  void mark(const char* what) {
    if (used_ == events_.size()) {
      cudaEvent_t e;
      cudaEventCreate(&e);
      events_.push_back(e);
    }
    cudaEventRecord(events_[used_], stream_);
    labels_.resize(std::max(labels_.size(), used_ + 1));
    labels_[used_++] = what;
  }
  void end() {  // after the stream was synchronized
    for (size_t i = 1; i < used_; ++i) {
      float ms = 0;
      cudaEventElapsedTime(&ms, events_[i - 1], events_[i]);
      auto& [total, n] = totals_[labels_[i]];
      total += ms, n += 1;
    }
    steps_ += 1;
  }
  ~StepProfiler() {
    if (steps_ == 0) return;
    std::vector<std::pair<double, std::string>> rows;
    double all = 0;
    for (const auto& [what, tn] : totals_) rows.push_back({tn.first, what}), all += tn.first;
    std::sort(rows.rbegin(), rows.rend());
    std::fprintf(stderr, "cuda profile: %llu steps, %.3f ms per step\n", (unsigned long long)steps_, all / steps_);
    for (const auto& [ms, what] : rows)
      std::fprintf(stderr, "  %-14s %8.3f ms per step  %5.1f%%\n", what.c_str(), ms / steps_, 100 * ms / all);
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
  }

 private:
  cudaStream_t stream_ = nullptr;
  std::vector<cudaEvent_t> events_;
  std::vector<std::string> labels_;
  size_t used_ = 0;
  uint64_t steps_ = 0;
  std::map<std::string, std::pair<double, uint64_t>> totals_;
};

class CudaBackend : public Backend {
 public:
  static Result<std::unique_ptr<CudaBackend>> create(const ModelConfig& full, const ModelTensors& t,
                                                     const BackendOptions& options, Rank rank);
  ~CudaBackend() override;

  const ModelConfig& config() const override { return full_; }
  const KvCacheSpec& kv_spec() const override { return kv_spec_; }
  KvMemory kv_memory(int) override {
    return {static_cast<std::byte*>(kv_base_), kv_layer_bytes_ * size_t(cfg_.num_layers), kv_layer_bytes_,
            kv_layer_bytes_ / size_t(kv_spec_.num_blocks), rank_.device};
  }
  Status forward(const Batch& batch, std::span<float> logits) override;
  bool samples_on_device() const override { return true; }
  Status forward_sample(const Batch& batch, std::span<const DeviceSampling> params, std::span<int32_t> tokens) override;
  // The decode graphs' sizes (none while profiling: those steps run eagerly).
  std::vector<int> decode_graph_batches() const override { return prof_ ? std::vector<int>{} : graph_sizes_; }

 private:
  struct Layer {
    float *attn_norm = nullptr, *mlp_norm = nullptr, *b_qkv = nullptr, *q_norm = nullptr, *k_norm = nullptr;
    bf16_t *w_qkv = nullptr, *wo = nullptr, *w_gate_up = nullptr, *w_down = nullptr;
    float k_scale = 1.f, v_scale = 1.f;
  };
  // What a step returns: logits rows to the host, or sampled tokens.
  struct Output {
    std::span<float> logits;
    std::span<const DeviceSampling> params;
    std::span<int32_t> tokens;
  };

  CudaBackend(const ModelConfig& full, const ModelConfig& local, Rank rank) : full_(full), cfg_(local), rank_(rank) {}
  template <class T>
  Result<T*> alloc(size_t n);
  template <class T>
  Result<T*> upload(const std::vector<T>& host);
  Result<bf16_t*> upload_bf16(const std::vector<float>& host);
  Status init(const ModelTensors& t, const BackendOptions& options);
  Status init_mega();  // mega_: the plan, its buffers and the layers' pointers on the device
  Status run(const Batch& batch, Output out);
  Status run_piece(const Batch& piece, Output out);
  // Enqueues the model for `T` staged tokens; logits for `n_rows` rows (rows == null: rows 0..).
  // one_kernel: a one-token decode step's layers as decode_mega (where mega_why_ is empty).
  Status enqueue(int T, int n_rows, bool identity_rows, bool decode, int n_splits, int n_tiles,
                 bool one_kernel = false);
  Status gemm(const bf16_t* a, const bf16_t* w, float* c, int m, int n, int k, float beta);
  // C[m, n] (row stride ldc) = beta C + A[m, k] (row stride lda) W[n, k]^T (row stride ldw).
  Status gemm_ld(const bf16_t* a, int lda, const bf16_t* w, int ldw, float* c, int ldc, int m, int n, int k,
                 float beta);
  // x += in[T, k_rank] W^T summed over the ranks (the O and down projections): one GEMM adding
  // into x (rank 0; the others write their partial) and an all-reduce, or with --tp-invariant
  // slices_ GEMMs summed in the tree (w: the rank's slices one after the other, [H, k_rank / slices_]).
  Status row_parallel(const bf16_t* in, const bf16_t* w, int T, int k_rank, bool skinny, const char* what);
  // --tp-invariant: out[T, ldc] (columns col0 + ...) = h W^T for slices_ slices of `n_rank` rows
  // of w starting at row0, each written at column col0 + its offset.
  Status column_parallel_sliced(const bf16_t* h, const bf16_t* w, int64_t row0, int n_rank, float* out, int ldc,
                                int col0, int T, int k);
  // Whether a step of T tokens runs its GEMMs as skinny GEMMs (gemv.cu).
  bool use_skinny(int T) const;
  // BATON_CUDA_GEMM_TUNE: of a decode graph captured on cublasGemmEx (`plain`), the tuned GEMMs'
  // capture of the same step if it replays faster (or always, with require).
  Result<cudaGraphExec_t> with_tuned_gemms(int rows, cudaGraphExec_t plain);
  // The decode graph for `rows` rows: captured, or captured both ways and the faster kept.
  Result<cudaGraphExec_t> decode_graph(int rows);
  Result<cudaGraphExec_t> capture(int rows, bool one_kernel = false);
  // Of two captures of the same step (b may have failed), the faster by time_graph, the other
  // destroyed; logged as "decode graph for <what>: <a_name> ms, <b_name> ms: keeping ...".
  Result<cudaGraphExec_t> keep_faster(const std::string& what, cudaGraphExec_t a, const char* a_name,
                                      Result<cudaGraphExec_t> b, const char* b_name);
  Result<float> time_graph(cudaGraphExec_t g);
  Result<float> logits_gap(cudaGraphExec_t a, cudaGraphExec_t b);
  Status all_reduce(float* x, size_t n);
  int splits_for(int T, int max_keys) const;
  template <class T>
  T* dev(size_t offset) const {
    return reinterpret_cast<T*>(dev_staging_ + offset);
  }
  template <class T>
  T* host(size_t offset) const {
    return reinterpret_cast<T*>(host_staging_ + offset);
  }

  ModelConfig full_, cfg_;
  Rank rank_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  std::vector<void*> allocations_;
  int num_sms_ = 0;
  bool gemv_ = true;  // skinny GEMMs for steps of <= gemv_rows_ tokens
  int gemv_rows_ = kGemvMaxRows;
  // Decode graphs of kGemvDotRows + 1 .. gemv_rows_ rows are captured with skinny GEMMs and with
  // cuBLAS, and the faster kept: the skinny path's fused kernels win on narrow models, cuBLAS's
  // streaming on wide ones (bench/RESULTS.md).
  bool tune_graphs_ = true;
  // Decode graphs whose GEMMs are cuBLAS's (9+ rows) are captured a second time on cuBLASLt
  // algorithms chosen by timing each shape (gemm_tune.h), and the faster graph is kept (1B shape
  // batch 64 1.597 -> 1.581 ms, batch 128 2.077 -> 2.018; bench/RESULTS.md, session 30).
  // BATON_CUDA_GEMM_TUNE=0: off (A/B runs); require (tests): the tuned graph whenever it captures,
  // on each shape's fastest cuBLASLt algorithm even where cublasGemmEx was faster. tp = 1 only (a
  // rank whose tuning failed would replay fewer all-reduces than the others).
  enum class GemmTune { kOff, kOn, kRequire } gemm_tune_ = GemmTune::kOn;
  TunedGemms tuned_;
  bool gemm_note_ = false, gemm_tuned_ = false;  // gemm(): note shapes for tuned_; run its choices
  int gemm_tuned_runs_ = 0;  // GEMMs gemm() ran on cuBLASLt since set to 0
  bool pdl_ = true;   // programmatic dependent launch in those steps
  // Weights evict-first in L2, in the GEMV kernels and the one-kernel step's ring (read once a
  // step, they leave L2 to the KV cache and activations: 1B shape batch 1 0.927 -> 0.912 ms,
  // batch 8 1.121 -> 1.092, session 28); BATON_CUDA_EVICT=0: the normal policy (A/B).
  bool evict_first_ = true;
  int slices_ = 0;    // --tp-invariant: this rank's GEMM slices (0: off)
  float *parts_ = nullptr, *gather_ = nullptr;  // [slices_][cap_tokens_ * H]; [tp][cap_tokens_ * H]

  bf16_t *embed_ = nullptr, *lm_head_ = nullptr;
  float *final_norm_ = nullptr, *inv_freq_ = nullptr;
  std::vector<Layer> layers_;

  KvCacheSpec kv_spec_;
  void* kv_base_ = nullptr;
  size_t kv_layer_bytes_ = 0;

  int cap_tokens_ = 0, cap_rows_ = 0, cap_tiles_ = 0, max_graph_batch_ = 0, max_blocks_per_seq_ = 0;
  float *x_ = nullptr, *qkv_ = nullptr, *gate_up_ = nullptr, *logits_ = nullptr, *attn_ws_ = nullptr;
  bf16_t *h_ = nullptr, *attn_ = nullptr, *act_ = nullptr;
  int32_t* sampled_ = nullptr;
  SampleScratch sample_ws_{};  // greedy rows' per-slice maxima and arrival counters
  int* attn_arrivals_ = nullptr;  // split-K decode attention: splits finished per (token, head)
  size_t attn_ws_rows_ = 0;
  // Decode attention: query heads of a KV group per CTA in steps of at least attn_group_tokens_
  // tokens (every step unless BATON_CUDA_ATTN_GROUP_TOKENS says otherwise).
  int attn_heads_per_cta_ = 1, attn_group_tokens_ = 1;
  int attn_max_splits_ = 0;  // BATON_CUDA_ATTN_SPLITS=N caps a step's splits (A/B runs; 0: no cap)
  int attn_resident_[3] = {1, 1, 1};  // fused decode CTAs that fit at once: a head per CTA, grouped, tensor cores
#ifdef BATON_STAMPS
  StampRec* stamp_ring_ = nullptr;  // kStampRing records, dumped to $BATON_STAMPS_OUT at exit
  uint32_t* stamp_count_ = nullptr;
#endif
  // BATON_CUDA_ATTN_MMA_TOKENS=N; 0: never (also for shapes the kernel does not take)
  int attn_mma_tokens_ = kAttnMmaTokens;
  // Its splits take at least this many keys (BATON_CUDA_ATTN_MMA_SPLIT_KEYS for A/B runs): 256
  // measured 1-4% faster than 64 at batch 32 and 64 (fewer partials to merge).
  int attn_mma_split_keys_ = 256;
  bool attn_early_ = true;         // BATON_CUDA_ATTN_EARLY=0: no cache loads before the PDL wait (A/B)
  // One kernel for a one-token decode step's layers (mega.cu), off by default: on the H200 it
  // measured slower than the kernels per layer (bench/RESULTS.md, session 26). BATON_CUDA_MEGA=1:
  // every one-token step where it takes the model; auto: the batch-1 decode graph is captured both
  // ways and the faster kept, the one kernel only if its logits agree (kMegaMaxGap); require
  // (tests): as 1, and a model it does not take is an error.
  // mega_why_ says why the model is not taken ("" when it is).
  enum class MegaMode { kOff, kOn, kAuto, kRequire } mega_mode_ = MegaMode::kOff;
  bool mega_on() const { return mega_mode_ == MegaMode::kOn || mega_mode_ == MegaMode::kRequire; }
  std::string mega_why_ = "not prepared";
  MegaArgs mega_{};
  // The same at every tp (--tp-invariant): a rank holds whole KV groups.
  int heads_per_cta(int T) const { return T >= attn_group_tokens_ ? attn_heads_per_cta_ : 1; }
  bool attn_mma(int T) const { return attn_mma_tokens_ > 0 && T >= attn_mma_tokens_; }
  std::unique_ptr<StagingLayout> layout_;
  std::byte* host_staging_ = nullptr;  // pinned
  std::byte* dev_staging_ = nullptr;
  int32_t* host_sampled_ = nullptr;        // pinned
  std::map<int, cudaGraphExec_t> graphs_;  // decode batch size -> graph
  std::unique_ptr<StepProfiler> prof_;     // BATON_CUDA_PROFILE=1
  std::vector<int> graph_sizes_;
  // Reused between steps.
  std::vector<int32_t> piece_tokens_;
  std::vector<SeqBatch> piece_seqs_;
};

template <class T>
Result<T*> CudaBackend::alloc(size_t n) {
  void* p = nullptr;
  BATON_CU(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)));
  allocations_.push_back(p);
  return static_cast<T*>(p);
}

template <class T>
Result<T*> CudaBackend::upload(const std::vector<T>& host) {
  BATON_ASSIGN_OR_RETURN(T * p, alloc<T>(host.size()));
  BATON_CU(cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return p;
}

Result<bf16_t*> CudaBackend::upload_bf16(const std::vector<float>& host) {
  std::vector<bf16_t> b(host.size());
  for (size_t i = 0; i < host.size(); ++i) b[i] = f32_to_bf16(host[i]);
  return upload(b);
}

CudaBackend::~CudaBackend() {
  cudaSetDevice(rank_.device);
  if (stream_) cudaStreamSynchronize(stream_);
  for (auto& [size, g] : graphs_) cudaGraphExecDestroy(g);
  // The last one-kernel step's timeline (BATON_CUDA_MEGA_TIMES=path; bench/gpu/mega_times.py).
  if (const char* path = std::getenv("BATON_CUDA_MEGA_TIMES"); path && mega_.times) {
    std::vector<unsigned long long> t(size_t(mega_.grid) * mega_.n_layers * kMegaMarks);
    cudaMemcpy(t.data(), mega_.times, sizeof(t[0]) * t.size(), cudaMemcpyDeviceToHost);
    if (FILE* f = std::fopen(path, "wb")) {
      const int32_t head[3] = {mega_.grid, mega_.n_layers, kMegaMarks};
      std::fwrite(head, sizeof(head), 1, f);
      std::fwrite(t.data(), sizeof(t[0]), t.size(), f);
      std::fclose(f);
    }
  }
#ifdef BATON_STAMPS
  if (const char* path = std::getenv("BATON_STAMPS_OUT"); path && stamp_ring_ && rank_.rank == 0) {
    uint32_t count = 0;
    cudaMemcpy(&count, stamp_count_, sizeof(count), cudaMemcpyDeviceToHost);
    std::vector<StampRec> recs(std::min(count, kStampRing));
    cudaMemcpy(recs.data(), stamp_ring_, recs.size() * sizeof(StampRec), cudaMemcpyDeviceToHost);
    if (FILE* f = std::fopen(path, "wb")) {
      std::fwrite(recs.data(), sizeof(StampRec), recs.size(), f);
      std::fclose(f);
    }
  }
  cudaFree(stamp_ring_);
  cudaFree(stamp_count_);
#endif
  if (cublas_) cublasDestroy(cublas_);
  for (void* p : allocations_) cudaFree(p);
  if (host_staging_) cudaFreeHost(host_staging_);
  if (host_sampled_) cudaFreeHost(host_sampled_);
#ifdef BATON_HAS_NCCL
  if (rank_.nccl) ncclCommDestroy(static_cast<ncclComm_t>(rank_.nccl));
#endif
  if (stream_) cudaStreamDestroy(stream_);
}

Result<std::unique_ptr<CudaBackend>> CudaBackend::create(const ModelConfig& full, const ModelTensors& t,
                                                         const BackendOptions& options, Rank rank) {
  const int n = rank.size;
  const auto [kv_begin, kv_end] = kv_heads_of_rank(full.num_kv_heads, n, rank.rank);
  ModelConfig c = full;
  c.num_heads = full.num_heads / n;
  c.num_kv_heads = kv_end - kv_begin;
  c.intermediate_size = full.intermediate_size / n;
  std::unique_ptr<CudaBackend> b(new CudaBackend(full, c, rank));
  BATON_RETURN_IF_ERROR(b->init(t, options));
  return b;
}

Status CudaBackend::init(const ModelTensors& t, const BackendOptions& options) {
  const ModelConfig& c = cfg_;
  const int D = c.head_dim;
  if (D != 8 && D != 16 && D != 32 && D != 64 && D != 128 && D != 256)
    return make_error("CUDA backend: head_dim ", D, " is not supported (8, 16, 32, 64, 128, 256)");
  if (options.block_size <= 0 || options.block_size > 1024)
    return make_error("--block-size must be in 1..1024 (got ", options.block_size, ")");
  BATON_ASSIGN_OR_RETURN(KvDtype kv_dtype, parse_kv_dtype(options.kv_dtype, KvDtype::kBF16));
  if (kv_dtype == KvDtype::kF32) return make_error("CUDA backend: the KV cache is bf16 or fp8, not fp32");
  if (options.kv_allocator)
    return make_error(
        "CUDA backend: the KV pool lives on the GPU; register kv_memory() with the transfer engine "
        "instead of passing a host allocator");
  if (options.max_batch_tokens < 16) return make_error("--max-batch-tokens must be at least 16");
  if (!(options.gpu_memory_utilization > 0 && options.gpu_memory_utilization <= 1))
    return make_error("--gpu-memory-utilization must be in (0, 1]");

  if (const char* p = std::getenv("BATON_CUDA_PROFILE"); p && std::string(p) == "1")
    prof_ = std::make_unique<StepProfiler>();
  // For A/B measurements: BATON_CUDA_GEMV=0 runs decode GEMMs on cuBLAS, BATON_CUDA_PDL=0 launches
  // every kernel only after the one before it has finished.
  if (const char* p = std::getenv("BATON_CUDA_GEMV")) gemv_ = std::string(p) != "0";
  // BATON_CUDA_GEMV_ROWS=N: skinny GEMMs for steps of at most N tokens; BATON_CUDA_TUNE=0: for
  // every step they support, without timing them against cuBLAS.
  if (const char* p = std::getenv("BATON_CUDA_GEMV_ROWS")) gemv_rows_ = std::clamp(std::atoi(p), 1, kGemvMaxRows);
  if (const char* p = std::getenv("BATON_CUDA_TUNE")) tune_graphs_ = std::string(p) != "0";
  if (const char* p = std::getenv("BATON_CUDA_GEMM_TUNE")) {
    const std::string v = p;
    gemm_tune_ = v == "0" ? GemmTune::kOff : v == "require" ? GemmTune::kRequire : GemmTune::kOn;
  }
  // BATON_CUDA_SAMPLE_SPLITS=N: N CTAs per greedy row, whatever the batch (A/B runs).
  if (const char* p = std::getenv("BATON_CUDA_SAMPLE_SPLITS")) sample_ws_.splits = std::atoi(p);
  if (const char* p = std::getenv("BATON_CUDA_PDL")) pdl_ = std::string(p) != "0";
  // For A/B runs: decode attention CTAs take up to BATON_CUDA_ATTN_GROUP query heads of a KV group
  // (1: one head each), in steps of at least BATON_CUDA_ATTN_GROUP_TOKENS tokens.
  int group_max = kAttnGroupHeads;
  if (const char* p = std::getenv("BATON_CUDA_ATTN_GROUP")) group_max = std::max(1, std::atoi(p));
  if (const char* p = std::getenv("BATON_CUDA_ATTN_GROUP_TOKENS")) attn_group_tokens_ = std::max(1, std::atoi(p));
  if (const char* p = std::getenv("BATON_CUDA_ATTN_SPLITS")) attn_max_splits_ = std::max(1, std::atoi(p));
  if (const char* p = std::getenv("BATON_CUDA_ATTN_EARLY")) attn_early_ = std::string(p) != "0";
  if (const char* p = std::getenv("BATON_CUDA_MEGA")) {
    const std::string v = p;
    mega_mode_ = v == "1"         ? MegaMode::kOn
                 : v == "auto"    ? MegaMode::kAuto
                 : v == "require" ? MegaMode::kRequire
                                  : MegaMode::kOff;
  }
  if (const char* p = std::getenv("BATON_CUDA_MEGA_STAGES")) mega_.max_stages = std::atoi(p);  // A/B runs
  if (const char* p = std::getenv("BATON_CUDA_MEGA_PROBE")) mega_.probe = std::atoi(p);
  if (const char* p = std::getenv("BATON_CUDA_EVICT")) evict_first_ = std::string(p) != "0";
  mega_.evict_first = evict_first_;
  if (const char* p = std::getenv("BATON_CUDA_MEGA_SPLIT_KEYS")) mega_.split_keys = std::max(0, std::atoi(p));
  if (const char* p = std::getenv("BATON_CUDA_MEGA_GROUP")) mega_.group_heads = std::atoi(p);
  if (const char* p = std::getenv("BATON_CUDA_ATTN_MMA_TOKENS")) attn_mma_tokens_ = std::max(0, std::atoi(p));
  if (!decode_mma_supported(cfg_.num_heads, cfg_.num_kv_heads, cfg_.head_dim)) attn_mma_tokens_ = 0;
  if (const char* p = std::getenv("BATON_CUDA_ATTN_MMA_SPLIT_KEYS"))
    attn_mma_split_keys_ = std::max(64, std::atoi(p));
  attn_heads_per_cta_ = decode_heads_per_cta(cfg_.num_heads, cfg_.num_kv_heads, cfg_.head_dim, group_max);
  if (options.tp_invariant) {
    slices_ = tp_invariant_slices(full_.num_heads, full_.num_kv_heads, full_.intermediate_size) / rank_.size;
    if (slices_ < 1) return make_error("--tp-invariant: -tp ", rank_.size, " does not divide the model's slice count");
    tune_graphs_ = false;  // the kernels of a step must not depend on timings
    gemm_tune_ = GemmTune::kOff;
  }
  if (rank_.size > 1) gemm_tune_ = GemmTune::kOff;
  BATON_CU(cudaSetDevice(rank_.device));
  gemv_init();
#ifdef BATON_STAMPS
  BATON_CU(cudaMalloc(&stamp_ring_, sizeof(StampRec) * kStampRing));
  BATON_CU(cudaMalloc(&stamp_count_, sizeof(uint32_t)));
  BATON_CU(cudaMemset(stamp_count_, 0, sizeof(uint32_t)));
  stamps_attach_gemv(stamp_ring_, stamp_count_);
  stamps_attach_attention(stamp_ring_, stamp_count_);
#endif
  BATON_CU(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  BATON_CU(cudaDeviceGetAttribute(&num_sms_, cudaDevAttrMultiProcessorCount, rank_.device));
  sample_ws_.sms = num_sms_;
  attn_resident_[0] = num_sms_ * decode_ctas_per_sm(D, kv_dtype == KvDtype::kFP8, 1);
  attn_resident_[1] = num_sms_ * decode_ctas_per_sm(D, kv_dtype == KvDtype::kFP8, attn_heads_per_cta_);
  attn_resident_[2] = num_sms_ * decode_mma_ctas_per_sm(D, kv_dtype == KvDtype::kFP8);
  BATON_CUBLAS(cublasCreate(&cublas_));
  BATON_CUBLAS(cublasSetStream(cublas_, stream_));
  const size_t ws_bytes = size_t{32} << 20;  // cuBLAS workspace: set once, so graph capture never allocates
  BATON_ASSIGN_OR_RETURN(std::byte * ws, alloc<std::byte>(ws_bytes));
  BATON_CUBLAS(cublasSetWorkspace(cublas_, ws, ws_bytes));

  // Weights: this rank's share, bf16 (norms, biases and scales fp32).
  const int64_t q0 = int64_t(rank_.rank) * c.num_heads, i0 = int64_t(rank_.rank) * c.intermediate_size;
  const int64_t kv0 = kv_heads_of_rank(full_.num_kv_heads, rank_.size, rank_.rank).first;
  BATON_ASSIGN_OR_RETURN(embed_, upload_bf16(to_f32(t.embed)));
  lm_head_ = embed_;
  if (t.lm_head != t.embed && rank_.rank == 0) {
    BATON_ASSIGN_OR_RETURN(lm_head_, upload_bf16(to_f32(t.lm_head)));
  }
  BATON_ASSIGN_OR_RETURN(final_norm_, upload(to_f32(t.final_norm)));
  BATON_ASSIGN_OR_RETURN(inv_freq_, upload(rope_inv_freq(c, options.rope_bf16_frequencies)));
  for (const LayerTensors& lt : t.layers) {
    Layer l;
    BATON_ASSIGN_OR_RETURN(l.attn_norm, upload(to_f32(lt.attn_norm)));
    BATON_ASSIGN_OR_RETURN(l.mlp_norm, upload(to_f32(lt.mlp_norm)));
    // This rank's q, k and v rows (heads), one after the other: the fused QKV weight and bias.
    auto qkv_rows = [&](const TensorView* q, const TensorView* k, const TensorView* v) {
      std::vector<float> rows;
      append_rows(rows, q, q0 * D, int64_t(c.num_heads) * D);
      append_rows(rows, k, kv0 * D, int64_t(c.num_kv_heads) * D);
      append_rows(rows, v, kv0 * D, int64_t(c.num_kv_heads) * D);
      return rows;
    };
    std::vector<float> w = qkv_rows(lt.wq, lt.wk, lt.wv);
    BATON_ASSIGN_OR_RETURN(l.w_qkv, upload_bf16(w));
    if (lt.bq) {
      BATON_ASSIGN_OR_RETURN(l.b_qkv, upload(qkv_rows(lt.bq, lt.bk, lt.bv)));
    }
    if (lt.q_norm) {
      BATON_ASSIGN_OR_RETURN(l.q_norm, upload(to_f32(lt.q_norm)));
      BATON_ASSIGN_OR_RETURN(l.k_norm, upload(to_f32(lt.k_norm)));
    }
    // Sliced (--tp-invariant): each slice's columns one matrix after the other.
    auto sliced = [&](std::vector<float> m, int64_t cols) {
      return slices_ ? slices_major(m, c.hidden_size, cols, slices_) : m;
    };
    BATON_ASSIGN_OR_RETURN(
        l.wo, upload_bf16(sliced(slice_cols(lt.wo, q0 * D, int64_t(c.num_heads) * D), int64_t(c.num_heads) * D)));
    w.clear();
    append_rows(w, lt.w_gate, i0, c.intermediate_size);
    append_rows(w, lt.w_up, i0, c.intermediate_size);
    BATON_ASSIGN_OR_RETURN(l.w_gate_up, upload_bf16(w));
    BATON_ASSIGN_OR_RETURN(
        l.w_down, upload_bf16(sliced(slice_cols(lt.w_down, i0, c.intermediate_size), c.intermediate_size)));
    if (lt.k_scale) {
      l.k_scale = to_f32(lt.k_scale)[0];
      l.v_scale = to_f32(lt.v_scale)[0];
      if (!(l.k_scale > 0 && l.v_scale > 0))
        return make_error("layer ", layers_.size(), ": KV scales must be positive");
    }
    layers_.push_back(l);
  }

  // Activations, sized for the largest pass.
  const int H = c.hidden_size, qkv_n = c.q_dim() + 2 * c.kv_dim(), I = c.intermediate_size;
  cap_tokens_ = options.max_batch_tokens;
  max_graph_batch_ = std::min(std::max(options.max_graph_batch, 0), cap_tokens_);
  cap_rows_ = std::max(256, max_graph_batch_);
  cap_tiles_ = cap_tokens_;  // at most one tile per token
  BATON_ASSIGN_OR_RETURN(x_, alloc<float>(size_t(cap_tokens_) * H));
  BATON_ASSIGN_OR_RETURN(h_, alloc<bf16_t>(size_t(cap_tokens_) * H));
  BATON_ASSIGN_OR_RETURN(qkv_, alloc<float>(size_t(cap_tokens_) * qkv_n));
  BATON_ASSIGN_OR_RETURN(attn_, alloc<bf16_t>(size_t(cap_tokens_) * c.q_dim()));
  BATON_ASSIGN_OR_RETURN(gate_up_, alloc<float>(size_t(cap_tokens_) * 2 * I));
  BATON_ASSIGN_OR_RETURN(act_, alloc<bf16_t>(size_t(cap_tokens_) * I));
  BATON_ASSIGN_OR_RETURN(logits_, alloc<float>(size_t(cap_rows_) * c.vocab_size));
  BATON_ASSIGN_OR_RETURN(sampled_, alloc<int32_t>(cap_rows_));
  BATON_ASSIGN_OR_RETURN(sample_ws_.best, alloc<float2>(size_t(cap_rows_) * kGreedySplits));
  BATON_ASSIGN_OR_RETURN(sample_ws_.arrivals, alloc<int>(cap_rows_));
  BATON_CU(cudaMemsetAsync(sample_ws_.arrivals, 0, sizeof(int) * cap_rows_, stream_));  // waited for below
  // (token, head, split) rows: splits_for fills one wave of at most 4 CTAs per SM, each of up to 4
  // heads, and takes fewer splits where a step's rows would not fit.
  attn_ws_rows_ = size_t(40) * num_sms_;
  BATON_ASSIGN_OR_RETURN(attn_ws_, alloc<float>(attn_ws_rows_ * (D + 2)));
  BATON_ASSIGN_OR_RETURN(attn_arrivals_, alloc<int>(attn_ws_rows_));
  BATON_CU(cudaMemsetAsync(attn_arrivals_, 0, sizeof(int) * attn_ws_rows_,
                           stream_));  // waited for below
  BATON_CU(cudaMallocHost(&host_sampled_, sizeof(int32_t) * cap_rows_));
  if (gemm_tune_ != GemmTune::kOff) {  // the adding GEMMs (x += ...) are timed into a scratch
    BATON_ASSIGN_OR_RETURN(float* scratch, alloc<float>(size_t(cap_rows_) * H));
    BATON_RETURN_IF_ERROR(
        tuned_.init(stream_, ws, ws_bytes, scratch, size_t(cap_rows_) * H, gemm_tune_ == GemmTune::kRequire));
  }
  if (slices_) {
    BATON_ASSIGN_OR_RETURN(parts_, alloc<float>(size_t(slices_) * cap_tokens_ * H));
    if (rank_.size > 1) {
      BATON_ASSIGN_OR_RETURN(gather_, alloc<float>(size_t(rank_.size) * cap_tokens_ * H));
    }
  }

  // The KV pool: what the memory budget leaves, or the size asked for.
  KvCacheSpec& kv = kv_spec_;
  kv.block_size = options.block_size;
  kv.dtype = kv_dtype;
  if (kv_dtype == KvDtype::kFP8)
    for (const Layer& l : layers_) kv.k_scales.push_back(l.k_scale), kv.v_scales.push_back(l.v_scale);
  const size_t layer_block_bytes = 2 * size_t(c.num_kv_heads) * options.block_size * D * kv_dtype_size(kv_dtype);
  kv.bytes_per_block = layer_block_bytes * c.num_layers;
  max_blocks_per_seq_ = (full_.max_position_embeddings + kv.block_size - 1) / kv.block_size;
  // The block tables of a full batch: cap_rows_ sequences of the longest length.
  layout_ = std::make_unique<StagingLayout>(cap_tokens_, cap_rows_, cap_tiles_,
                                            size_t(std::max(cap_rows_, 1)) * max_blocks_per_seq_);
  BATON_CU(cudaMallocHost(&host_staging_, layout_->bytes));
  BATON_ASSIGN_OR_RETURN(dev_staging_, alloc<std::byte>(layout_->bytes));

  size_t free_b = 0, total_b = 0;
  BATON_CU(cudaMemGetInfo(&free_b, &total_b));
  size_t budget = options.kv_cache_bytes;
  if (budget == 0) {
    const size_t reserve = size_t{512} << 20;  // cuBLAS, graphs, NCCL, the CUDA context's growth
    const double allowed =
        options.gpu_memory_utilization * double(total_b) - double(total_b - free_b) - double(reserve);
    if (allowed < double(kv.bytes_per_block))
      return make_error("GPU ", rank_.device, ": no memory left for the KV cache (", free_b >> 20, " MiB free of ",
                        total_b >> 20, " MiB; raise --gpu-memory-utilization)");
    budget = static_cast<size_t>(allowed);
  } else if (budget > free_b) {
    return make_error("--kv-cache-memory ", budget, " exceeds the GPU's free memory (", free_b, " bytes)");
  }
  kv.num_blocks = static_cast<int>(std::min<size_t>(budget / kv.bytes_per_block, 1 << 30));
  if (kv.num_blocks < 1)
    return make_error("KV cache budget of ", budget, " bytes holds no block (one block needs ", kv.bytes_per_block,
                      " bytes)");
  kv_layer_bytes_ = layer_block_bytes * kv.num_blocks;
  BATON_ASSIGN_OR_RETURN(std::byte * pool, alloc<std::byte>(kv_layer_bytes_ * c.num_layers));
  kv_base_ = pool;
  // On our stream, and waited for: a memset on the legacy stream is not ordered with the
  // non-blocking stream the steps run on, and could land after the first step's K/V writes.
  BATON_CU(cudaMemsetAsync(kv_base_, 0, kv_layer_bytes_ * c.num_layers, stream_));
  BATON_CU(cudaStreamSynchronize(stream_));

  if (rank_.size > 1 || slices_)
    mega_why_ = "tensor parallelism (tp = 1 only, without --tp-invariant)";
  else if (mega_mode_ != MegaMode::kOff)
    BATON_RETURN_IF_ERROR(init_mega());
  if (mega_mode_ == MegaMode::kRequire && !mega_why_.empty())
    return make_error("BATON_CUDA_MEGA=require: no one-kernel decode step: ", mega_why_);
  for (int b = 1; b <= max_graph_batch_; b = b < 8 ? b * 2 : b + 8) graph_sizes_.push_back(b);
  if (max_graph_batch_ > 0 && graph_sizes_.back() != max_graph_batch_) graph_sizes_.push_back(max_graph_batch_);

  if (rank_.rank == 0) {
    cudaDeviceProp prop{};
    cudaGetDeviceProperties(&prop, rank_.device);
    log::info("cuda backend: ", prop.name, ", ", c.architecture_name,
              rank_.size > 1 ? " (tp " + std::to_string(rank_.size) + ", per rank)" : "", ", ", c.num_layers,
              " layers, KV cache ", kv.num_blocks, " blocks x ", kv.block_size, " tokens (", kv_dtype_name(kv.dtype),
              ", ", (kv_layer_bytes_ * c.num_layers) >> 20, " MiB), graphs up to batch ", max_graph_batch_);
  }
  return {};
}

Status CudaBackend::init_mega() {
  const ModelConfig& c = cfg_;
  const StagingLayout& L = *layout_;
  MegaArgs& m = mega_;
  m.n_layers = c.num_layers, m.H = c.hidden_size, m.NH = c.num_heads, m.KVH = c.num_kv_heads, m.D = c.head_dim;
  m.I = c.intermediate_size, m.block_size = kv_spec_.block_size, m.window = c.sliding_window;
  m.eps = c.rms_norm_eps, m.fp8 = kv_spec_.dtype == KvDtype::kFP8;
  m.inv_freq = inv_freq_, m.kv_base = kv_base_, m.kv_layer_bytes = kv_layer_bytes_;
  m.x = x_, m.qkv = qkv_, m.act = act_;
  m.positions = dev<int32_t>(L.positions), m.slots = dev<int32_t>(L.slots), m.tables = dev<int32_t>(L.tables);
  mega_why_ = mega_prepare(m);
  if (!mega_why_.empty()) {
    if (rank_.rank == 0) log::info("cuda backend: no one-kernel decode step for this model: ", mega_why_);
    return {};
  }
  std::vector<MegaLayer> host;
  for (const Layer& l : layers_)
    host.push_back({l.w_qkv, l.wo, l.w_gate_up, l.w_down, l.attn_norm, l.mlp_norm, l.b_qkv, l.q_norm, l.k_norm,
                    l.k_scale, l.v_scale});
  BATON_ASSIGN_OR_RETURN(MegaLayer * layers, alloc<MegaLayer>(host.size()));
  BATON_CU(cudaMemcpy(layers, host.data(), sizeof(MegaLayer) * host.size(), cudaMemcpyHostToDevice));
  m.layers = layers;
  BATON_ASSIGN_OR_RETURN(m.ws, alloc<float>(size_t(m.NH) * m.s_max * (m.D + 2)));
  BATON_ASSIGN_OR_RETURN(m.attn, alloc<bf16_t>(size_t(m.NH) * m.D));
  BATON_ASSIGN_OR_RETURN(m.barrier, alloc<unsigned>(1 + size_t(m.KVH)));
  if (std::getenv("BATON_CUDA_MEGA_TIMES") && rank_.rank == 0) {
    BATON_ASSIGN_OR_RETURN(m.times, alloc<unsigned long long>(size_t(m.grid) * m.n_layers * kMegaMarks));
    BATON_CU(cudaMemset(m.times, 0, sizeof(unsigned long long) * m.grid * m.n_layers * kMegaMarks));
  }
  log::info("cuda backend: one-kernel decode step: ", m.grid, " CTAs, ", m.stages, " weight stages of ",
            m.stage_bytes >> 10, " KiB, ", m.smem_bytes >> 10, " KiB of shared memory each, attention for ",
            m.group_heads, " query heads a group", m.evict_first ? ", ring copies evict-first in L2" : "");
  return {};
}

Status CudaBackend::gemm(const bf16_t* a, const bf16_t* w, float* c, int m, int n, int k, float beta) {
  if (gemm_note_) tuned_.note(a, w, c, m, n, k, beta);
  if (gemm_tuned_) {
    BATON_ASSIGN_OR_RETURN(const bool ran, tuned_.run(a, w, c, m, n, k, beta));
    if (ran) {
      ++gemm_tuned_runs_;
      return {};
    }
  }
  // Row-major C[m, n] = A[m, k] W[n, k]^T is column-major C^T = W A^T: W is the transposed operand.
  const float alpha = 1.f;
  BATON_CUBLAS(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w, CUDA_R_16BF, k, a, CUDA_R_16BF, k,
                            &beta, c, CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return {};
}

Status CudaBackend::gemm_ld(const bf16_t* a, int lda, const bf16_t* w, int ldw, float* c, int ldc, int m, int n,
                            int k, float beta) {
  const float alpha = 1.f;
  BATON_CUBLAS(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w, CUDA_R_16BF, ldw, a, CUDA_R_16BF,
                            lda, &beta, c, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return {};
}

Status CudaBackend::row_parallel(const bf16_t* in, const bf16_t* w, int T, int k_rank, bool skinny,
                                 const char* what) {
  const int H = cfg_.hidden_size;
  if (!slices_) {
    const float own = rank_.rank == 0 ? 1.f : 0.f;  // rank 0 adds into x; the others write partials
    if (skinny) {
      gemv({GemvKind::kAccumulate, w, T, H, k_rank, in, nullptr, nullptr, nullptr, 0.f, x_, own, nullptr, 0}, stream_);
    } else {
      BATON_RETURN_IF_ERROR(gemm(in, w, x_, T, H, k_rank, own));
    }
    if (prof_) prof_->mark(what);
    BATON_RETURN_IF_ERROR(all_reduce(x_, size_t(T) * H));
    if (prof_) prof_->mark("all-reduce");
    return {};
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
  if (prof_) prof_->mark(what);
  if (rank_.size == 1) {
    tree_sum(parts_, slices_, part, x_, n, true, stream_);
    if (prof_) prof_->mark("slice sums");
    return {};
  }
#ifdef BATON_HAS_NCCL
  tree_sum(parts_, slices_, part, parts_, n, false, stream_);  // this rank's subtree, in place
  BATON_NCCL(ncclAllGather(parts_, gather_, n, ncclFloat, static_cast<ncclComm_t>(rank_.nccl), stream_));
  tree_sum(gather_, rank_.size, n, x_, n, true, stream_);
  if (prof_) prof_->mark("slice sums + all-gather");
  return {};
#else
  return make_error("tensor parallelism on CUDA needs NCCL (not found at build time)");
#endif
}

Status CudaBackend::column_parallel_sliced(const bf16_t* h, const bf16_t* w, int64_t row0, int n_rank, float* out,
                                           int ldc, int col0, int T, int k) {
  const int nc = n_rank / slices_;
  for (int j = 0; j < slices_; ++j)
    BATON_RETURN_IF_ERROR(gemm_ld(h, k, w + (row0 + int64_t(j) * nc) * k, k, out + col0 + j * nc, ldc, T, nc, k, 0.f));
  return {};
}

Status CudaBackend::all_reduce(float* x, size_t n) {
  if (rank_.size == 1) return {};
#ifdef BATON_HAS_NCCL
  BATON_NCCL(ncclAllReduce(x, x, n, ncclFloat, ncclSum, static_cast<ncclComm_t>(rank_.nccl), stream_));
  return {};
#else
  (void)x, (void)n;
  return make_error("tensor parallelism on CUDA needs NCCL (not found at build time)");
#endif
}

int CudaBackend::splits_for(int T, int max_keys) const {
  // --tp-invariant: from the model's heads, so that every tp splits a head's keys alike.
  const int heads = slices_ ? full_.num_heads : cfg_.num_heads;
  const int kv_heads = slices_ ? full_.num_kv_heads : cfg_.num_kv_heads, per_kv = heads / kv_heads;
  const bool mma = attn_mma(T);
  const int hp = mma ? per_kv : heads_per_cta(T), ctas = T * kv_heads * ((per_kv + hp - 1) / hp);  // per split
  // One wave: as many CTAs as fit on the GPU at once, at most 4 per SM (a split more, rounding up,
  // left a second wave of a few CTAs that doubled the kernel's time at batch 1).
  const int target = std::min(4 * num_sms_, attn_resident_[mma ? 2 : hp > 1]);
  int s = std::clamp(target / ctas, 1, 32);
  const int split_keys = mma ? attn_mma_split_keys_ : 32;  // a key per group of lanes, a tile of 16 per warp
  if (max_keys > 0) s = std::min(s, std::max(1, (max_keys + split_keys - 1) / split_keys));
  if (attn_max_splits_ > 0) s = std::min(s, attn_max_splits_);
  while (s > 1 && size_t(T) * heads * s > attn_ws_rows_) --s;
  return s;
}

Status CudaBackend::enqueue(int T, int n_rows, bool identity_rows, bool decode, int n_splits, int n_tiles,
                            bool one_kernel) {
  const ModelConfig& c = cfg_;
  const StagingLayout& L = *layout_;
  const int H = c.hidden_size, D = c.head_dim, I = c.intermediate_size, qkv_n = c.q_dim() + 2 * c.kv_dim();
  auto mark = [this](const char* what) {
    if (prof_) prof_->mark(what);
  };
  // Steps of a few tokens (decode) run their GEMMs as skinny GEMMs with the norms and SiLU fused
  // in.
  const bool skinny = use_skinny(T);
  // Only there does it pay: its kernels are a few microseconds each and the skinny GEMMs start
  // their weight loads before the wait. Beside cuBLAS at batch 64 it measured slower.
  set_pdl(pdl_ && skinny);
  set_weights_evict_first(evict_first_);
  embed(dev<int32_t>(L.tokens), embed_, x_, T, H, stream_);
  mark("embed");
  const bool mega = one_kernel && T == 1 && decode && mega_why_.empty();
  if (mega) {
    decode_mega(mega_, stream_);
    mark("layers (one kernel)");
  }
  for (size_t li = 0; !mega && li < layers_.size(); ++li) {
    const Layer& w = layers_[li];
    std::byte* layer_kv = static_cast<std::byte*>(kv_base_) + li * kv_layer_bytes_;
    if (skinny) {
      gemv({GemvKind::kNormStore, w.w_qkv, T, qkv_n, H, nullptr, x_, nullptr, w.attn_norm, c.rms_norm_eps, qkv_, 0.f,
            nullptr, 0},
           stream_);
      mark("gemv norm+qkv");
    } else {
      rmsnorm(x_, nullptr, w.attn_norm, h_, T, H, c.rms_norm_eps, stream_);
      mark("rmsnorm");
      if (slices_) {  // q, k and v rows per slice
        BATON_RETURN_IF_ERROR(column_parallel_sliced(h_, w.w_qkv, 0, c.q_dim(), qkv_, qkv_n, 0, T, H));
        BATON_RETURN_IF_ERROR(column_parallel_sliced(h_, w.w_qkv, c.q_dim(), c.kv_dim(), qkv_, qkv_n, c.q_dim(), T, H));
        BATON_RETURN_IF_ERROR(column_parallel_sliced(h_, w.w_qkv, c.q_dim() + c.kv_dim(), c.kv_dim(), qkv_, qkv_n,
                                                     c.q_dim() + c.kv_dim(), T, H));
      } else {
        BATON_RETURN_IF_ERROR(gemm(h_, w.w_qkv, qkv_, T, qkv_n, H, 0.f));
      }
      mark("gemm qkv");
    }
    const bool fp8 = kv_spec_.dtype == KvDtype::kFP8;
    QkvArgs q{qkv_,
              w.b_qkv,
              w.q_norm,
              w.k_norm,
              inv_freq_,
              dev<int32_t>(L.positions),
              dev<int32_t>(L.slots),
              layer_kv,
              T,
              c.num_heads,
              c.num_kv_heads,
              D,
              kv_spec_.block_size,
              c.rms_norm_eps,
              fp8,
              fp8 ? 1.f / w.k_scale : 1.f,
              fp8 ? 1.f / w.v_scale : 1.f};
    if (!decode) {  // decode steps: the attention kernel does this itself
      qkv_rope_cache(q, stream_);
      mark("qkv rope/cache");
    }
    AttnArgs a{qkv_,
               qkv_n,
               layer_kv,
               dev<int32_t>(L.tables),
               dev<int32_t>(L.table_stride),
               dev<int32_t>(L.seq_of),
               dev<int32_t>(L.positions),
               attn_,
               T,
               c.num_heads,
               c.num_kv_heads,
               D,
               kv_spec_.block_size,
               c.sliding_window,
               fp8,
               1.f / std::sqrt(float(D)),
               fp8 ? w.k_scale : 1.f,
               fp8 ? w.v_scale : 1.f,
               heads_per_cta(T),
               attn_early_,
               decode && attn_mma(T),
               attn_mma_split_keys_};
    if (decode || !prefill_kernel_supports(D))
      attention_decode(a, n_splits, attn_ws_, attn_arrivals_, decode ? &q : nullptr, stream_);
    else
      attention_prefill(a, dev<int2>(L.tiles), n_tiles, stream_);
    mark("attention");
    BATON_RETURN_IF_ERROR(row_parallel(attn_, w.wo, T, c.q_dim(), skinny, skinny ? "gemv o" : "gemm o"));
    if (skinny) {
      gemv({GemvKind::kNormSiluMul, w.w_gate_up, T, I, H, nullptr, x_, nullptr, w.mlp_norm, c.rms_norm_eps, nullptr,
            0.f, act_, 0},
           stream_);
      mark("gemv norm+gate/up+silu");
    } else {
      rmsnorm(x_, nullptr, w.mlp_norm, h_, T, H, c.rms_norm_eps, stream_);
      mark("rmsnorm");
      if (slices_) {  // gate rows and up rows per slice
        BATON_RETURN_IF_ERROR(column_parallel_sliced(h_, w.w_gate_up, 0, I, gate_up_, 2 * I, 0, T, H));
        BATON_RETURN_IF_ERROR(column_parallel_sliced(h_, w.w_gate_up, I, I, gate_up_, 2 * I, I, T, H));
      } else {
        BATON_RETURN_IF_ERROR(gemm(h_, w.w_gate_up, gate_up_, T, 2 * I, H, 0.f));
      }
      mark("gemm gate/up");
      silu_mul(gate_up_, act_, T, I, stream_);
      mark("silu*mul");
    }
    BATON_RETURN_IF_ERROR(row_parallel(act_, w.w_down, T, I, skinny, skinny ? "gemv down" : "gemm down"));
  }
  if (rank_.rank != 0 || n_rows == 0) return {};
  const int32_t* rows = identity_rows ? nullptr : dev<int32_t>(L.logit_rows);
  if (gemv_ && n_rows <= gemv_rows_ && gemv_supported(n_rows, H)) {
    gemv({GemvKind::kNormStore, lm_head_, n_rows, c.vocab_size, H, nullptr, x_, rows, final_norm_, c.rms_norm_eps,
          logits_, 0.f, nullptr, 0},
         stream_);
    mark("gemv norm+lm head");
    return {};
  }
  rmsnorm(x_, rows, final_norm_, h_, n_rows, H, c.rms_norm_eps, stream_);
  mark("rmsnorm");
  BATON_RETURN_IF_ERROR(gemm(h_, lm_head_, logits_, n_rows, c.vocab_size, H, 0.f));
  mark("lm head");
  return {};
}

Status CudaBackend::forward(const Batch& batch, std::span<float> logits) {
  BATON_RETURN_IF_ERROR(validate_batch(batch, kv_spec_, full_.max_position_embeddings));
  size_t n_logits = 0;
  for (const SeqBatch& s : batch.seqs) n_logits += s.need_logits ? 1 : 0;
  if (rank_.rank == 0 && logits.size() != n_logits * size_t(full_.vocab_size))
    return make_error("forward: logits buffer holds ", logits.size(), " floats, needs ", n_logits * full_.vocab_size);
  return run(batch, {logits, {}, {}});
}

Status CudaBackend::forward_sample(const Batch& batch, std::span<const DeviceSampling> params,
                                   std::span<int32_t> tokens) {
  BATON_RETURN_IF_ERROR(validate_batch(batch, kv_spec_, full_.max_position_embeddings));
  size_t n_logits = 0;
  for (const SeqBatch& s : batch.seqs) n_logits += s.need_logits ? 1 : 0;
  if (rank_.rank == 0 && (params.size() != n_logits || tokens.size() != n_logits))
    return make_error("forward_sample: ", params.size(), " sampling params and ", tokens.size(), " token slots for ",
                      n_logits, " rows");
  return run(batch, {{}, params, tokens});
}

// Cuts a batch into passes of at most cap_tokens_ tokens (a long prompt chunk becomes several
// consecutive pieces; only a sequence's last piece asks for logits) and runs them in order.
Status CudaBackend::run(const Batch& batch, Output out) {
  for (int32_t tok : batch.tokens)
    if (tok < 0 || tok >= full_.vocab_size)
      return make_error("token id ", tok, " is outside the vocabulary (", full_.vocab_size, ")");
  BATON_CU(cudaSetDevice(rank_.device));
  if (batch.tokens.size() <= size_t(cap_tokens_) && batch.seqs.size() <= size_t(cap_rows_))
    return run_piece(batch, out);
  size_t tok = 0, rows_done = 0;
  size_t si = 0;
  int done_in_seq = 0;  // tokens of batch.seqs[si] already run
  while (si < batch.seqs.size()) {
    piece_tokens_.clear();
    piece_seqs_.clear();
    size_t n_rows = 0;
    while (si < batch.seqs.size() && piece_tokens_.size() < size_t(cap_tokens_) &&
           piece_seqs_.size() < size_t(cap_rows_)) {
      const SeqBatch& s = batch.seqs[si];
      const int take = std::min(s.n_tokens - done_in_seq, cap_tokens_ - int(piece_tokens_.size()));
      const bool last = done_in_seq + take == s.n_tokens;
      piece_tokens_.insert(piece_tokens_.end(), batch.tokens.begin() + tok, batch.tokens.begin() + tok + take);
      piece_seqs_.push_back({take, s.n_past + done_in_seq, s.block_table, last && s.need_logits});
      n_rows += last && s.need_logits ? 1 : 0;
      tok += take;
      done_in_seq += take;
      if (last) ++si, done_in_seq = 0;
    }
    Output o = out;
    const size_t V = size_t(full_.vocab_size);
    if (!out.logits.empty()) o.logits = out.logits.subspan(rows_done * V, n_rows * V);
    if (!out.params.empty()) o.params = out.params.subspan(rows_done, n_rows);
    if (!out.tokens.empty()) o.tokens = out.tokens.subspan(rows_done, n_rows);
    BATON_RETURN_IF_ERROR(run_piece({piece_tokens_, piece_seqs_}, o));
    rows_done += n_rows;
  }
  return {};
}

bool CudaBackend::use_skinny(int T) const {
  const ModelConfig& c = cfg_;
  const int slices = std::max(slices_, 1);  // the O and down GEMMs' K per call
  return gemv_ && T <= gemv_rows_ && gemv_supported(T, c.hidden_size) &&
         gemv_supported(T, c.intermediate_size / slices) && gemv_supported(T, c.q_dim() / slices);
}

Result<cudaGraphExec_t> CudaBackend::capture(int rows, bool one_kernel) {
  cudaGraph_t g = nullptr;
  BATON_CU(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  Status st = enqueue(rows, rows, true, true, splits_for(rows, 0), 0, one_kernel);
  const cudaError_t end = cudaStreamEndCapture(stream_, &g);
  BATON_RETURN_IF_ERROR(st);
  BATON_CU(end);
  cudaGraphExec_t exec = nullptr;
  const cudaError_t inst = cudaGraphInstantiate(&exec, g, 0);
  cudaGraphDestroy(g);
  BATON_CU(inst);
  return exec;
}

// Mean time of a replay, after one to warm up. A decode graph replayed on the same staged inputs
// recomputes the same values (it writes the same K/V into the same slots), so this is harmless;
// every TP rank replays the same number of times, so their all-reduces pair up.
Result<float> CudaBackend::time_graph(cudaGraphExec_t g) {
  constexpr int kReplays = 5;
  BATON_CU(cudaGraphLaunch(g, stream_));
  BATON_ASSIGN_OR_RETURN(const float ms, time_ms(stream_, [&]() -> Status {
                           for (int i = 0; i < kReplays; ++i) BATON_CU(cudaGraphLaunch(g, stream_));
                           return {};
                         }));
  return ms / kReplays;
}

// How far one graph's logits (one row) are from another's, relative to the largest of the second:
// each replayed once on the same inputs (both write the step's K/V to the same slots).
Result<float> CudaBackend::logits_gap(cudaGraphExec_t a, cudaGraphExec_t b) {
  const size_t n = size_t(cfg_.vocab_size);
  std::vector<float> la(n), lb(n);
  BATON_CU(cudaGraphLaunch(a, stream_));
  BATON_CU(cudaMemcpyAsync(la.data(), logits_, sizeof(float) * n, cudaMemcpyDeviceToHost, stream_));
  BATON_CU(cudaGraphLaunch(b, stream_));
  BATON_CU(cudaMemcpyAsync(lb.data(), logits_, sizeof(float) * n, cudaMemcpyDeviceToHost, stream_));
  BATON_CU(cudaStreamSynchronize(stream_));
  float gap = 0.f, scale = 0.f;
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(la[i])) return std::numeric_limits<float>::infinity();
    gap = std::max(gap, std::fabs(la[i] - lb[i])), scale = std::max(scale, std::fabs(lb[i]));
  }
  return gap / std::max(scale, 1e-6f);
}

Result<cudaGraphExec_t> CudaBackend::keep_faster(const std::string& what, cudaGraphExec_t a, const char* a_name,
                                                 Result<cudaGraphExec_t> b, const char* b_name) {
  if (!b.ok()) {
    cudaGraphExecDestroy(a);
    return Error{b.error()};
  }
  Result<float> t_a = time_graph(a), t_b = time_graph(*b);
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

Result<cudaGraphExec_t> CudaBackend::decode_graph(int rows) {
  if (rows == 1 && mega_why_.empty() && mega_mode_ != MegaMode::kOff) {
    Result<cudaGraphExec_t> mega = capture(1, true);
    if (!mega.ok()) {
      log::warn("cuda backend: the one-kernel decode step could not be captured (", mega.error(),
                "): kernels per layer instead");
      cudaGetLastError();
    } else if (mega_on()) {
      return *mega;
    } else {  // auto: the faster of the two, if the one kernel's logits agree with the other's
      Result<cudaGraphExec_t> plain = capture(1);
      if (plain.ok()) {
        Result<float> gap = logits_gap(*mega, *plain);
        if (!gap.ok() || !(*gap <= kMegaMaxGap)) {
          log::warn("cuda backend: the one-kernel decode step's logits differ from the kernels per layer's (",
                    gap.ok() ? std::to_string(*gap) + " of the largest" : gap.error(), "): not used");
          cudaGraphExecDestroy(*mega);
          return plain;
        }
        log::info("cuda backend: one-kernel decode step: logits within ", *gap,
                  " of the kernels per layer's (relative to the largest)");
      }
      return keep_faster("1 row", *mega, "one kernel", std::move(plain), "kernels per layer");
    }
  }
  const bool both = tune_graphs_ && rows > kGemvDotRows && use_skinny(rows);
  const bool tuned = gemm_tune_ != GemmTune::kOff && !use_skinny(rows);  // a step on cuBLAS
  gemm_note_ = tuned;  // its GEMMs' shapes, for tuned_
  Result<cudaGraphExec_t> first = capture(rows);
  gemm_note_ = false;
  BATON_ASSIGN_OR_RETURN(cudaGraphExec_t skinny, std::move(first));
  if (tuned) return with_tuned_gemms(rows, skinny);
  if (!both) return skinny;
  const int saved = gemv_rows_;
  gemv_rows_ = kGemvDotRows;  // the same step on cuBLAS
  Result<cudaGraphExec_t> cublas = capture(rows);
  gemv_rows_ = saved;
  return keep_faster(std::to_string(rows) + " rows", skinny, "skinny GEMMs", std::move(cublas), "cuBLAS");
}

Result<cudaGraphExec_t> CudaBackend::with_tuned_gemms(int rows, cudaGraphExec_t plain) {
  const std::string what = std::to_string(rows) + " rows";
  // Not capturing here: tuned_ times the shapes gemm() noted during the plain capture.
  Status st = tuned_.tune([this](const bf16_t* a, const bf16_t* w, float* c, int m, int n, int k, float beta) {
    return gemm(a, w, c, m, n, k, beta);  // cublasGemmEx: gemm_note_ and gemm_tuned_ are off
  });
  Result<cudaGraphExec_t> tuned = Error{st.message()};
  if (st.ok()) {
    gemm_tuned_ = true, gemm_tuned_runs_ = 0;
    tuned = capture(rows);
    gemm_tuned_ = false;
  }
  if (tuned.ok() && gemm_tune_ == GemmTune::kRequire && gemm_tuned_runs_ == 0) {
    cudaGraphExecDestroy(*tuned);
    tuned = make_error("no GEMM has a cuBLASLt algorithm");
  }
  if (!tuned.ok() && gemm_tune_ == GemmTune::kRequire) {
    cudaGraphExecDestroy(plain);
    return make_error("BATON_CUDA_GEMM_TUNE=require: decode graph for ", what, ": ", tuned.error());
  }
  if (!tuned.ok()) {
    log::warn("cuda backend: decode graph for ", what, " on tuned cuBLASLt GEMMs: ", tuned.error(),
              "; keeping cublasGemmEx");
    cudaGetLastError();
    return plain;
  }
  log::info("cuda backend: decode graph for ", what, ": ", gemm_tuned_runs_, " GEMMs on tuned cuBLASLt algorithms");
  if (gemm_tune_ == GemmTune::kRequire) {
    cudaGraphExecDestroy(plain);
    return *tuned;
  }
  return keep_faster(what, plain, "cublasGemmEx", std::move(tuned), "tuned cuBLASLt GEMMs");
}

Status CudaBackend::run_piece(const Batch& b, Output out) {
  const StagingLayout& L = *layout_;
  const int T = int(b.tokens.size()), S = int(b.seqs.size()), bs = kv_spec_.block_size;
  bool decode = true, all_logits = true;
  int stride = 1, max_keys = 0;
  for (const SeqBatch& s : b.seqs) {
    decode = decode && s.n_tokens == 1;
    all_logits = all_logits && s.need_logits;
    stride = std::max(stride, (s.n_past + s.n_tokens + bs - 1) / bs);
    max_keys = std::max(max_keys, s.n_past + s.n_tokens);
  }
  const bool graph = decode && all_logits && S <= max_graph_batch_ && !prof_;
  const int rows = graph ? *std::lower_bound(graph_sizes_.begin(), graph_sizes_.end(), S) : T;
  if (size_t(std::max(rows, S)) * stride > L.tables_cap)
    return make_error("batch of ", S, " sequences x ", stride, " blocks exceeds the block-table buffer");

  // Stage the inputs.
  int32_t *tokens = host<int32_t>(L.tokens), *positions = host<int32_t>(L.positions), *slots = host<int32_t>(L.slots),
          *seq_of = host<int32_t>(L.seq_of), *logit_rows = host<int32_t>(L.logit_rows),
          *tables = host<int32_t>(L.tables);
  int2* tiles = host<int2>(L.tiles);
  int n_rows = 0, n_tiles = 0;
  for (int si = 0, t = 0; si < S; ++si) {
    const SeqBatch& s = b.seqs[si];
    const int used = (s.n_past + s.n_tokens + bs - 1) / bs;
    std::copy_n(s.block_table.begin(), used, tables + size_t(si) * stride);
    for (int j = 0; j < s.n_tokens; ++j, ++t) {
      const int pos = s.n_past + j;
      tokens[t] = b.tokens[t];
      positions[t] = pos;
      slots[t] = s.block_table[pos / bs] * bs + pos % bs;
      seq_of[t] = si;
    }
    for (int j = 0; j < s.n_tokens; j += kPrefillTileRows)
      tiles[n_tiles++] = {t - s.n_tokens + j, std::min(kPrefillTileRows, s.n_tokens - j)};
    if (s.need_logits) logit_rows[n_rows++] = t - 1;
  }
  for (int t = T; t < rows; ++t) tokens[t] = 0, positions[t] = -1, slots[t] = -1, seq_of[t] = 0;  // graph padding
  *host<int32_t>(L.table_stride) = stride;
  if (rank_.rank == 0 && !out.params.empty()) {
    SampleParams* sp = host<SampleParams>(L.params);
    for (int r = 0; r < n_rows; ++r) {
      const DeviceSampling& d = out.params[r];
      sp[r] = {d.temperature, d.top_k, d.top_p, 0, d.seed, d.offset};
    }
  }
  const size_t bytes = L.tables + sizeof(int32_t) * size_t(S) * stride;
  if (prof_) prof_->begin(stream_);
  BATON_CU(cudaMemcpyAsync(dev_staging_, host_staging_, bytes, cudaMemcpyHostToDevice, stream_));
  if (prof_) prof_->mark("inputs h2d");

  if (graph) {
    auto it = graphs_.find(rows);
    if (it == graphs_.end()) {
      BATON_ASSIGN_OR_RETURN(cudaGraphExec_t exec, decode_graph(rows));
      it = graphs_.emplace(rows, exec).first;
    }
    BATON_CU(cudaGraphLaunch(it->second, stream_));
  } else {
    BATON_RETURN_IF_ERROR(enqueue(T, n_rows, false, decode, splits_for(T, max_keys), n_tiles, mega_on()));
  }

  if (rank_.rank != 0 || n_rows == 0) {
    BATON_CU(cudaStreamSynchronize(stream_));
    if (prof_) prof_->end();
    return {};
  }
  if (!out.params.empty()) {
    sample(logits_, dev<SampleParams>(L.params), sampled_, n_rows, full_.vocab_size, sample_ws_, stream_);
    if (prof_) prof_->mark("sample");
    BATON_CU(cudaMemcpyAsync(host_sampled_, sampled_, sizeof(int32_t) * n_rows, cudaMemcpyDeviceToHost, stream_));
    BATON_CU(cudaStreamSynchronize(stream_));
    std::copy_n(host_sampled_, n_rows, out.tokens.begin());
  } else {
    BATON_CU(cudaMemcpyAsync(out.logits.data(), logits_, sizeof(float) * size_t(n_rows) * full_.vocab_size,
                             cudaMemcpyDeviceToHost, stream_));
    if (prof_) prof_->mark("logits d2h");
    BATON_CU(cudaStreamSynchronize(stream_));
  }
  if (prof_) prof_->end();
  BATON_CU(cudaGetLastError());
  return {};
}

}  // namespace

Result<std::unique_ptr<Backend>> create_backend_from(const ModelConfig& config, const ModelTensors& tensors,
                                                     const BackendOptions& options, int first_gpu) {
  int n_devices = 0;
  if (cudaGetDeviceCount(&n_devices) != cudaSuccess || n_devices == 0)
    return make_error("--device cuda: no CUDA device is visible");
  const int n = options.tp_size, first = first_gpu;
  if (n < 1) return make_error("-tp must be at least 1");
  if (first < 0 || first + n > n_devices)
    return make_error("-tp ", n, " from GPU ", first, " needs GPUs ", first, "..", first + n - 1, "; ", n_devices,
                      " visible");
  if (config.num_heads % n != 0 || config.intermediate_size % n != 0 || !tp_splits_kv_heads(config.num_kv_heads, n))
    return make_error("-tp ", n, " does not divide the model's ", config.num_heads, " heads, ", config.num_kv_heads,
                      " KV heads and intermediate size ", config.intermediate_size, " evenly");
  if (options.tp_invariant) {
    const int s = tp_invariant_slices(config.num_heads, config.num_kv_heads, config.intermediate_size);
    if (s % n != 0)
      return make_error("--tp-invariant: -tp ", n, " does not divide this model's ", s,
                        " slices (the largest power of two up to 8 dividing its heads, KV heads and MLP width)");
  }
  if (n == 1) {
    BATON_ASSIGN_OR_RETURN(auto b, CudaBackend::create(config, tensors, options, Rank{0, 1, first, nullptr}));
    return std::unique_ptr<Backend>(std::move(b));
  }
#ifdef BATON_HAS_NCCL
  std::vector<ncclComm_t> comms(n);
  std::vector<int> devs(n);
  for (int r = 0; r < n; ++r) devs[r] = first + r;
  // NCCL connects peers lazily, at a collective's first use, by default; a first use inside a
  // decode graph's capture fails (peer access cannot be enabled while a stream captures). Connect
  // everything at init instead, unless the user chose otherwise.
  setenv("NCCL_RUNTIME_CONNECT", "0", 0);
  BATON_NCCL(ncclCommInitAll(comms.data(), n, devs.data()));
  std::vector<std::unique_ptr<Backend>> ranks;
  // Block ids index every rank's pool, so all ranks get rank 0's number of blocks: rank 0 sizes
  // its pool first (it alone holds the LM head, so the others have at least as much room).
  BackendOptions rank_options = options;
  if (rank_options.kv_cache_bytes > 0) rank_options.kv_cache_bytes /= size_t(n);
  for (int r = 0; r < n; ++r) {
    if (r == 1)
      rank_options.kv_cache_bytes = size_t(ranks[0]->kv_spec().num_blocks) * ranks[0]->kv_spec().bytes_per_block;
    auto b = CudaBackend::create(config, tensors, rank_options, Rank{r, n, first + r, comms[r]});
    if (!b.ok()) {  // ranks 0..r own (and have destroyed) their communicators
      for (int k = r + 1; k < n; ++k) ncclCommDestroy(comms[k]);
      return Error{b.error()};
    }
    ranks.push_back(std::move(*b));
  }
  return TpBackend::create(std::move(ranks));
#else
  return make_error("-tp ", n, " on CUDA needs NCCL, which this build did not find");
#endif
}

}  // namespace cuda

int cuda_device_count() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

Result<std::unique_ptr<Backend>> create_cuda_backend(const std::string& model_dir, const BackendOptions& options,
                                                     int first_gpu) {
  BATON_ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::load(model_dir));
  BATON_ASSIGN_OR_RETURN(WeightStore store, WeightStore::open_dir(model_dir));
  auto tensors = ModelTensors::find(config, store);
  if (!tensors.ok()) return make_error(model_dir, ": ", tensors.error());
  return cuda::create_backend_from(config, *tensors, options, first_gpu);
}

}  // namespace baton
