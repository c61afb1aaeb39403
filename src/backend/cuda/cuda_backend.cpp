// The CUDA backend: bf16 weights on the GPU, cuBLAS GEMMs (bf16 in, fp32 accumulate and out),
// our kernels (backend/cuda/*.cu) for the rest, the paged KV cache in device memory (bf16 or fp8
// e4m3), sampling on the device, and decode steps replayed as CUDA graphs. Its parts, each in its
// own file: the weights (weights.h), the matrix products and tensor parallelism's reductions
// (linear.h), the forward pass (forward.h), a step's inputs (staging.h) and the decode graphs
// (graphs.h). This file puts them together: the KV pool, a step's pieces, sampling and the
// results coming down, and the factory for -tp ranks.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/device.h"
#include "backend/cuda/forward.h"
#include "backend/cuda/graphs.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/linear.h"
#include "backend/cuda/staging.h"
#include "backend/cuda/weights.h"
#include "backend/tp_backend.h"
#include "common/log.h"
#include "common/tp_split.h"
#include "model/weights.h"

namespace baton {
namespace cuda {
namespace {

class CudaBackend : public Backend {
 public:
  static Result<std::unique_ptr<CudaBackend>> create(const ModelConfig& full, const ModelTensors& t,
                                                     const BackendOptions& options, const CudaPaths& paths,
                                                     Rank rank);
  ~CudaBackend() override;

  const ModelConfig& config() const override { return full_; }
  const KvCacheSpec& kv_spec() const override { return kv_spec_; }
  KvMemory kv_memory(int) override {
    return {static_cast<std::byte*>(kv_.base), kv_.layer_bytes * size_t(cfg_.num_layers), kv_.layer_bytes,
            kv_.layer_bytes / size_t(kv_spec_.num_blocks), rank_.device};
  }
  Status forward(const Batch& batch, std::span<float> logits) override;
  bool samples_on_device() const override { return true; }
  Status forward_sample(const Batch& batch, std::span<const DeviceSampling> params, std::span<int32_t> tokens) override;
  std::vector<int> decode_graph_batches() const override { return graphs_->sizes(); }

 private:
  // What a step returns: logits rows to the host, or sampled tokens.
  struct Output {
    std::span<float> logits;
    std::span<const DeviceSampling> params;
    std::span<int32_t> tokens;
  };

  CudaBackend(const ModelConfig& full, const ModelConfig& local, Rank rank) : full_(full), cfg_(local), rank_(rank) {}
  Status init(const ModelTensors& t, const BackendOptions& options, const CudaPaths& paths);
  // The KV pool: what the memory budget leaves, or the size asked for.
  Status init_kv_pool(const BackendOptions& options, KvDtype dtype);
  Status run(const Batch& batch, Output out);
  Status run_piece(const Batch& piece, Output out);

  ModelConfig full_, cfg_;
  Rank rank_;
  cudaStream_t stream_ = nullptr;
  DeviceArena mem_;
  ModelWeights weights_;
  std::unique_ptr<Linear> linear_;
  std::unique_ptr<StepStaging> staging_;
  std::unique_ptr<Forward> forward_;
  std::unique_ptr<DecodeGraphs> graphs_;
  KvCacheSpec kv_spec_;
  KvPool kv_;
  int cap_tokens_ = 0, cap_rows_ = 0;
  int32_t* sampled_ = nullptr;
  SampleScratch sample_ws_{};  // greedy rows' per-slice maxima and arrival counters
  // Reused between steps.
  std::vector<int32_t> piece_tokens_;
  std::vector<SeqBatch> piece_seqs_;
};

CudaBackend::~CudaBackend() {
  cudaSetDevice(rank_.device);
  if (stream_) cudaStreamSynchronize(stream_);
  graphs_.reset();
  forward_.reset();
  linear_.reset();  // its cuBLAS handle, before the stream it runs on
  staging_.reset();
  mem_.free_all();
#ifdef BATON_HAS_NCCL
  if (rank_.nccl) ncclCommDestroy(static_cast<ncclComm_t>(rank_.nccl));
#endif
  if (stream_) cudaStreamDestroy(stream_);
}

Result<std::unique_ptr<CudaBackend>> CudaBackend::create(const ModelConfig& full, const ModelTensors& t,
                                                         const BackendOptions& options, const CudaPaths& paths,
                                                         Rank rank) {
  const int n = rank.size;
  const auto [kv_begin, kv_end] = kv_heads_of_rank(full.num_kv_heads, n, rank.rank);
  ModelConfig c = full;
  c.num_heads = full.num_heads / n;
  c.num_kv_heads = kv_end - kv_begin;
  c.intermediate_size = full.intermediate_size / n;
  std::unique_ptr<CudaBackend> b(new CudaBackend(full, c, rank));
  BATON_RETURN_IF_ERROR(b->init(t, options, paths));
  return b;
}

Status CudaBackend::init(const ModelTensors& t, const BackendOptions& options, const CudaPaths& given_paths) {
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

  CudaPaths paths = given_paths;
  int slices = 0;  // --tp-invariant: this rank's GEMM slices
  if (options.tp_invariant) {
    slices = tp_invariant_slices(full_.num_heads, full_.num_kv_heads, full_.intermediate_size) / rank_.size;
    if (slices < 1) return make_error("--tp-invariant: -tp ", rank_.size, " does not divide the model's slice count");
    paths.time_skinny_graphs = false;  // the kernels of a step must not depend on timings
    paths.gemm_tune = CudaPaths::GemmTune::kOff;
  }
  // tp = 1 only: a rank whose tuning failed would replay fewer all-reduces than the others.
  if (rank_.size > 1) paths.gemm_tune = CudaPaths::GemmTune::kOff;
  BATON_CU(cudaSetDevice(rank_.device));
  gemv_init();
  BATON_CU(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  BATON_CU(cudaDeviceGetAttribute(&sample_ws_.sms, cudaDevAttrMultiProcessorCount, rank_.device));

  BATON_ASSIGN_OR_RETURN(weights_, upload_weights(t, full_, c, rank_, slices, options.rope_bf16_frequencies, mem_));
  if (kv_dtype == KvDtype::kFP8)
    for (const LayerWeights& l : weights_.layers)
      kv_spec_.k_scales.push_back(l.k_scale), kv_spec_.v_scales.push_back(l.v_scale);

  // Activations and a step's inputs, sized for the largest pass.
  cap_tokens_ = options.max_batch_tokens;
  const int max_graph_batch = std::min(std::max(options.max_graph_batch, 0), cap_tokens_);
  cap_rows_ = std::max(256, max_graph_batch);
  BATON_ASSIGN_OR_RETURN(linear_, Linear::create(stream_, rank_, c.hidden_size, cap_tokens_, cap_rows_, slices,
                                                 paths.gemm_tune, mem_));
  // The block tables of a full batch: cap_rows_ sequences of the longest length.
  const int max_blocks_per_seq = (full_.max_position_embeddings + options.block_size - 1) / options.block_size;
  BATON_ASSIGN_OR_RETURN(staging_, StepStaging::create(cap_tokens_, cap_rows_, cap_tokens_,  // a tile per token at most
                                                       size_t(cap_rows_) * max_blocks_per_seq, mem_));
  BATON_ASSIGN_OR_RETURN(sampled_, mem_.alloc<int32_t>(cap_rows_));
  BATON_ASSIGN_OR_RETURN(sample_ws_.best, mem_.alloc<float2>(size_t(cap_rows_) * kGreedySplits));
  BATON_ASSIGN_OR_RETURN(sample_ws_.arrivals, mem_.alloc<int>(cap_rows_));
  BATON_CU(cudaMemsetAsync(sample_ws_.arrivals, 0, sizeof(int) * cap_rows_, stream_));  // waited for below
  // The pool takes what the activations leave; the forward pass reads its address when it runs.
  kv_.block_size = options.block_size;
  kv_.fp8 = kv_dtype == KvDtype::kFP8;
  BATON_ASSIGN_OR_RETURN(forward_, Forward::create(full_, cfg_, rank_, weights_, *linear_, staging_->device(), kv_,
                                                   paths, cap_tokens_, cap_rows_, stream_, mem_));
  BATON_RETURN_IF_ERROR(init_kv_pool(options, kv_dtype));
  graphs_ = std::make_unique<DecodeGraphs>(stream_, *forward_, *linear_, max_graph_batch, paths.time_skinny_graphs);

  if (rank_.rank == 0) {
    cudaDeviceProp prop{};
    cudaGetDeviceProperties(&prop, rank_.device);
    const KvCacheSpec& kv = kv_spec_;
    const std::string switches = paths.describe();
    log::info("cuda backend: ", prop.name, ", ", c.architecture_name,
              rank_.size > 1 ? " (tp " + std::to_string(rank_.size) + ", per rank)" : "", ", ", c.num_layers,
              " layers, KV cache ", kv.num_blocks, " blocks x ", kv.block_size, " tokens (", kv_dtype_name(kv.dtype),
              ", ", (kv_.layer_bytes * c.num_layers) >> 20, " MiB), graphs up to batch ", max_graph_batch,
              switches.empty() ? "" : ", " + switches);
  }
  return {};
}

Status CudaBackend::init_kv_pool(const BackendOptions& options, KvDtype dtype) {
  const ModelConfig& c = cfg_;
  KvCacheSpec& kv = kv_spec_;
  kv.block_size = options.block_size;
  kv.dtype = dtype;
  const size_t layer_block_bytes = 2 * size_t(c.num_kv_heads) * options.block_size * c.head_dim * kv_dtype_size(dtype);
  kv.bytes_per_block = layer_block_bytes * c.num_layers;
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
  kv_.layer_bytes = layer_block_bytes * kv.num_blocks;
  BATON_ASSIGN_OR_RETURN(std::byte * pool, mem_.alloc<std::byte>(kv_.layer_bytes * c.num_layers));
  kv_.base = pool;
  // On our stream, and waited for: a memset on the legacy stream is not ordered with the
  // non-blocking stream the steps run on, and could land after the first step's K/V writes.
  BATON_CU(cudaMemsetAsync(kv_.base, 0, kv_.layer_bytes * c.num_layers, stream_));
  BATON_CU(cudaStreamSynchronize(stream_));
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

Status CudaBackend::run_piece(const Batch& b, Output out) {
  const StepShape shape = StepShape::of(b, kv_spec_.block_size);
  const bool graph = shape.decode && shape.all_logits && shape.S <= graphs_->max_batch();
  const int rows = graph ? graphs_->rows_for(shape.S) : shape.T;
  int n_tiles = 0;
  BATON_ASSIGN_OR_RETURN(const int n_rows,
                         staging_->stage(b, shape, rows, kv_spec_.block_size,
                                         rank_.rank == 0 ? out.params : std::span<const DeviceSampling>{}, stream_,
                                         &n_tiles));
  if (graph) {
    BATON_ASSIGN_OR_RETURN(cudaGraphExec_t exec, graphs_->get(rows));
    BATON_CU(cudaGraphLaunch(exec, stream_));
  } else {
    BATON_RETURN_IF_ERROR(forward_->enqueue(shape.T, n_rows, false, shape.decode,
                                            forward_->splits_for(shape.T, shape.max_keys), n_tiles));
  }

  if (rank_.rank != 0 || n_rows == 0) {
    BATON_CU(cudaStreamSynchronize(stream_));
    return {};
  }
  if (!out.params.empty()) {
    sample(forward_->logits(), staging_->device().params, sampled_, n_rows, full_.vocab_size, sample_ws_, stream_);
    int32_t* host_sampled = staging_->host_sampled();
    BATON_CU(cudaMemcpyAsync(host_sampled, sampled_, sizeof(int32_t) * n_rows, cudaMemcpyDeviceToHost, stream_));
    BATON_CU(cudaStreamSynchronize(stream_));
    std::copy_n(host_sampled, n_rows, out.tokens.begin());
  } else {
    BATON_CU(cudaMemcpyAsync(out.logits.data(), forward_->logits(), sizeof(float) * size_t(n_rows) * full_.vocab_size,
                             cudaMemcpyDeviceToHost, stream_));
    BATON_CU(cudaStreamSynchronize(stream_));
  }
  BATON_CU(cudaGetLastError());
  return {};
}

}  // namespace

Result<std::unique_ptr<Backend>> create_backend_from(const ModelConfig& config, const ModelTensors& tensors,
                                                     const BackendOptions& options, int first_gpu) {
  CudaPaths paths;
  if (options.cuda_paths) {
    paths = *options.cuda_paths;
  } else {
    BATON_ASSIGN_OR_RETURN(paths, cuda_paths_from_env());
  }
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
    BATON_ASSIGN_OR_RETURN(auto b, CudaBackend::create(config, tensors, options, paths, Rank{0, 1, first, nullptr}));
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
    auto b = CudaBackend::create(config, tensors, rank_options, paths, Rank{r, n, first + r, comms[r]});
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
