// The one interface between the engine and the hardware that runs the model (STYLE.md 2).
//
// A backend owns the model's weights and the paged KV cache. The engine owns everything else:
// which blocks belong to which sequence (block tables) and what runs in each step. A step is a
// batch of sequences, each contributing some new tokens (a prompt chunk, or one decode token);
// the backend writes their K/V into the cache at the slots the block tables name and returns
// logits for the last new token of each sequence that asks for them.
//
// KV layout per layer (DESIGN.md section 2): [num_blocks][2 (K,V)][kv_heads][block_size][head_dim],
// so one TP rank's head slice of a block is one contiguous range.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/result.h"
#include "model/config.h"

namespace baton {

enum class KvDtype { kF32, kBF16, kFP8 };  // kFP8: e4m3 with per-layer K and V scales
const char* kv_dtype_name(KvDtype t);
size_t kv_dtype_size(KvDtype t);
// "auto" picks the backend's compute dtype (fp32 on the CPU); "fp8" is e4m3.
Result<KvDtype> parse_kv_dtype(const std::string& name, KvDtype auto_dtype);

struct KvCacheSpec {
  int num_blocks = 0;
  int block_size = 16;
  KvDtype dtype = KvDtype::kF32;
  size_t bytes_per_block = 0;  // all layers, K and V, all ranks
  std::vector<float> k_scales, v_scales;  // fp8: per layer (the bytes mean value / scale)
};

// One sequence's part of a step.
struct SeqBatch {
  int n_tokens = 0;                      // new tokens in this step
  int n_past = 0;                        // tokens already in the cache; new positions start here
  std::span<const int32_t> block_table;  // covers n_past + n_tokens slots
  bool need_logits = true;               // return logits for the last new token
};

struct Batch {
  std::span<const int32_t> tokens;  // new tokens of all sequences, sequence after sequence
  std::span<const SeqBatch> seqs;
};

// Where the KV pool lives: the transfer engine allocates it (Agent::allocate_memory) so that
// peers can read blocks directly. Called once per tensor-parallel rank; returns n_bytes of
// writable host memory that outlives the backend, or an error.
using KvAllocator = std::function<Result<void*>(int rank, size_t n_bytes)>;

// The KV pool as one byte range: layer l's [num_blocks][2][kv_heads][block_size][head_dim]
// array starts at l * layer_bytes. One block of one layer is block_bytes long, at
// l * layer_bytes + block * block_bytes.
struct KvMemory {
  std::byte* base = nullptr;  // host memory, or device memory of GPU `device` when device >= 0
  size_t total_bytes = 0;
  size_t layer_bytes = 0;
  size_t block_bytes = 0;
  int device = -1;
};

// The CUDA backend's alternate paths: kept because tests check them against the default path
// and benchmarks A/B them (bench/gpu/cuda.sh ab). Every other choice of the backend is settled
// and has no switch (bench/RESULTS.md says what measured it).
struct CudaPaths {
  bool skinny_gemms = true;  // BATON_CUDA_GEMV=0: decode steps' GEMMs on cuBLAS, not gemv.cu's
  // BATON_CUDA_TUNE=0: skinny GEMMs for every decode graph they take, without timing the 5-8 row
  // graphs against cuBLAS (the faster is kept by default).
  bool time_skinny_graphs = true;
  // BATON_CUDA_GEMM_TUNE=0 | 1 | require: decode graphs on cuBLAS captured a second time on
  // cuBLASLt algorithms timed per GEMM shape, the faster kept (1); require (tests): the tuned
  // graph whenever it captures, on each shape's fastest cuBLASLt algorithm.
  enum class GemmTune { kOff, kOn, kRequire } gemm_tune = GemmTune::kOn;
  int attn_group_heads = 4;  // BATON_CUDA_ATTN_GROUP=N: query heads of a KV group per decode CTA (1-4)
  int attn_mma_tokens = 32;  // BATON_CUDA_ATTN_MMA_TOKENS=N: decode steps of >= N tokens on tensor cores (0: never)
  // The switches that differ from the defaults, as "BATON_CUDA_GEMV=0 ..." ("" for none).
  std::string describe() const;
};
// CudaPaths from the environment's BATON_CUDA_* variables; an unknown BATON_CUDA_* name or a bad
// value is an error naming it.
Result<CudaPaths> cuda_paths_from_env();

struct BackendOptions {
  std::string device = "cpu";  // cpu | cuda | cuda:N (ranks on GPUs N, N+1, ...); see parse_device
  KvAllocator kv_allocator;  // host pools only; empty: the backend allocates the pool itself
  int block_size = 16;
  // The KV pool; blocks = bytes / bytes_per_block. 0: 256 MiB on the CPU; on a GPU what
  // gpu_memory_utilization leaves after weights and activations.
  size_t kv_cache_bytes = 0;
  double gpu_memory_utilization = 0.9;  // CUDA: share of the GPU's memory baton may take
  int max_batch_tokens = 2048;          // CUDA: tokens per model pass (longer batches run in pieces)
  int max_graph_batch = 256;            // CUDA: decode steps up to this batch run as CUDA graphs
  std::string kv_dtype = "auto";
  int num_threads = 0;  // 0: one per hardware thread
  int tp_size = 1;      // tensor-parallel ranks
  // Arithmetic that does not depend on tp_size (common/tp_split.h: tp_invariant_slices): the same
  // logits, bit for bit, at every tp that divides the model's slice count. Slower.
  bool tp_invariant = false;
  // For a bf16 checkpoint, RoPE's inverse frequencies rounded to bf16, as transformers had them
  // when it computed ../shared/models/goldens.json (its inv_freq buffer cast to bf16 with the
  // weights). Off: fp32 frequencies, as transformers computes them when it loads a model with an
  // explicit dtype and as vLLM uses them. Rounded frequencies are off by up to 2^-9 relative: a
  // rotation error of position x frequency x 2^-9 radians, 1.3 rad at 1000 tokens for frequency 0.66.
  bool rope_bf16_frequencies = false;
  // CUDA: unset reads them from the environment once, when the backend is made (cuda_paths_from_env).
  std::optional<CudaPaths> cuda_paths;
};

// Sampling on the device for one row: greedy when temperature is 0, else top-k (0: off) then
// top-p over softmax(logits / temperature), drawn with Philox(seed, offset).
struct DeviceSampling {
  float temperature = 0.f;
  int top_k = 0;
  float top_p = 1.f;
  uint64_t seed = 0;
  uint64_t offset = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const ModelConfig& config() const = 0;
  virtual const KvCacheSpec& kv_spec() const = 0;
  // logits: one row of vocab_size floats per sequence with need_logits, in batch order.
  // Errors on an inconsistent batch (a block id out of range, a table too short); never crashes.
  virtual Status forward(const Batch& batch, std::span<float> logits) = 0;
  // Tensor-parallel ranks; each holds its slice of the KV heads in a pool of its own.
  virtual int tp_size() const { return 1; }
  // Rank `rank`'s KV pool, for transfers of blocks between instances (P/D).
  virtual KvMemory kv_memory(int rank) = 0;
  // Backends that sample on their device (CUDA) return only token ids for the rows that want
  // logits (params: one per such row), so logits never cross to the host.
  virtual bool samples_on_device() const { return false; }
  virtual Status forward_sample(const Batch& batch, std::span<const DeviceSampling> params, std::span<int32_t> tokens);
  // Decode batch sizes the backend prepares the first time a step of that size runs, ascending;
  // a decode step of S sequences runs on the first size >= S. CUDA: a graph captured, timed
  // against its alternatives and its GEMMs tuned, tens of milliseconds each (Engine::warm_up
  // does this before serving). Empty: nothing to prepare.
  virtual std::vector<int> decode_graph_batches() const { return {}; }
};

class ArgParser;
// Binds the backend's command-line flags to `o` (--block-size, --kv-cache-dtype /
// --kv_cache_dtype, --kv-cache-memory, --threads, -tp), shared by every app that runs a model.
void add_backend_flags(ArgParser& args, BackendOptions& o);

// BackendOptions::device, parsed: the CPU, or CUDA with TP rank r on GPU first_gpu + r ("cuda" is
// "cuda:0"). The one place that reads the string.
struct DeviceSpec {
  bool cuda = false;
  int first_gpu = 0;
};
Result<DeviceSpec> parse_device(const std::string& device);

// Loads config.json and the safetensors of `model_dir` and builds the backend options.device names.
// "cuda:N" puts TP rank r on GPU N + r (two instances on one host use different GPUs yet see all,
// as CUDA IPC between them needs).
Result<std::unique_ptr<Backend>> create_backend(const std::string& model_dir, const BackendOptions& options);
Result<std::unique_ptr<Backend>> create_cpu_backend(const std::string& model_dir, const BackendOptions& options);
// Errors with a one-line message when baton was built without CUDA or no GPU is present.
Result<std::unique_ptr<Backend>> create_cuda_backend(const std::string& model_dir, const BackendOptions& options,
                                                     int first_gpu);

// GPUs the CUDA backend can use (0 without a GPU or without the CUDA backend).
int cuda_device_count();

// Checks a batch against a KV spec: token counts, block ids and table lengths.
Status validate_batch(const Batch& batch, const KvCacheSpec& spec, int max_positions);

}  // namespace baton
