#include "backend/backend.h"

#include <unistd.h>

#include <string>

#include "common/cli.h"

namespace baton {

const char* kv_dtype_name(KvDtype t) {
  switch (t) {
    case KvDtype::kF32: return "fp32";
    case KvDtype::kBF16: return "bf16";
    case KvDtype::kFP8: return "fp8_e4m3";
  }
  return "?";
}

size_t kv_dtype_size(KvDtype t) {
  switch (t) {
    case KvDtype::kF32: return 4;
    case KvDtype::kBF16: return 2;
    case KvDtype::kFP8: return 1;
  }
  return 0;
}

Result<KvDtype> parse_kv_dtype(const std::string& name, KvDtype auto_dtype) {
  if (name == "auto") return auto_dtype;
  if (name == "fp32" || name == "float32" || name == "float") return KvDtype::kF32;
  if (name == "bf16" || name == "bfloat16") return KvDtype::kBF16;
  if (name == "fp8" || name == "fp8_e4m3") return KvDtype::kFP8;
  return make_error("kv cache dtype '", name, "' is not supported (auto, fp32, bf16, fp8)");
}

void add_backend_flags(ArgParser& args, BackendOptions& o) {
  args.add({"--device"}, &o.device, "cpu, cuda or cuda:N (TP ranks on GPUs N, N+1, ...)");
  args.add({"--block-size"}, &o.block_size, "KV cache block size in tokens");
  args.add({"--kv-cache-dtype", "--kv_cache_dtype"}, &o.kv_dtype, "auto, fp32 (cpu), bf16, fp8 (e4m3)");
  args.add({"--kv-cache-memory"}, &o.kv_cache_bytes,
           "KV cache size in bytes (0: 256 MiB on the CPU, the rest of --gpu-memory-utilization on a GPU)");
  args.add({"--gpu-memory-utilization"}, &o.gpu_memory_utilization, "CUDA: share of the GPU's memory to use");
  args.add({"--max-batch-tokens"}, &o.max_batch_tokens, "CUDA: tokens per model pass");
  args.add({"--max-graph-batch"}, &o.max_graph_batch, "CUDA: largest decode batch run as a CUDA graph (0: none)");
  args.add({"--threads"}, &o.num_threads, "compute threads (0: all cores), shared by the TP ranks");
  args.add({"-tp", "--tensor-parallel-size"}, &o.tp_size,
           "tensor-parallel ranks (CPU: threads of this process; CUDA: one GPU each, NCCL)");
  args.add_flag({"--tp-invariant"}, &o.tp_invariant,
                "numerics independent of -tp: outputs identical at every -tp dividing the model's slice "
                "count (power of two <= 8 dividing heads, KV heads, MLP width); slower");
  args.add_flag({"--rope-bf16-frequencies"}, &o.rope_bf16_frequencies,
                "bf16 checkpoints: RoPE frequencies rounded to bf16, as transformers had them for the "
                "test goldens (default: fp32, as transformers computes them and vLLM uses them)");
}

std::string CudaPaths::describe() const {
  const CudaPaths d;
  std::string out;
  auto add = [&out](const std::string& kv) { out += (out.empty() ? "" : " ") + kv; };
  if (skinny_gemms != d.skinny_gemms) add("BATON_CUDA_GEMV=0");
  if (time_skinny_graphs != d.time_skinny_graphs) add("BATON_CUDA_TUNE=0");
  if (gemm_tune != d.gemm_tune) add(gemm_tune == GemmTune::kOff ? "BATON_CUDA_GEMM_TUNE=0" : "BATON_CUDA_GEMM_TUNE=require");
  if (attn_group_heads != d.attn_group_heads) add("BATON_CUDA_ATTN_GROUP=" + std::to_string(attn_group_heads));
  if (attn_mma_tokens != d.attn_mma_tokens) add("BATON_CUDA_ATTN_MMA_TOKENS=" + std::to_string(attn_mma_tokens));
  return out;
}

Result<CudaPaths> cuda_paths_from_env() {
  CudaPaths p;
  auto number = [](const char* name, const std::string& v, int lo, int hi) -> Result<int> {
    if (v.empty() || v.size() > 6 || v.find_first_not_of("0123456789") != std::string::npos || std::stoi(v) < lo ||
        std::stoi(v) > hi)
      return make_error(name, "=", v, ": expected a number in ", lo, "..", hi);
    return std::stoi(v);
  };
  for (char** e = environ; *e; ++e) {
    const std::string kv = *e;
    if (kv.rfind("BATON_CUDA_", 0) != 0) continue;
    const size_t eq = kv.find('=');
    const std::string name = kv.substr(0, eq), v = eq == std::string::npos ? "" : kv.substr(eq + 1);
    if (name == "BATON_CUDA_GEMV" || name == "BATON_CUDA_TUNE") {
      if (v != "0" && v != "1") return make_error(name, "=", v, ": expected 0 or 1");
      (name == "BATON_CUDA_GEMV" ? p.skinny_gemms : p.time_skinny_graphs) = v == "1";
    } else if (name == "BATON_CUDA_GEMM_TUNE") {
      if (v != "0" && v != "1" && v != "require") return make_error(name, "=", v, ": expected 0, 1 or require");
      p.gemm_tune = v == "0" ? CudaPaths::GemmTune::kOff : v == "1" ? CudaPaths::GemmTune::kOn : CudaPaths::GemmTune::kRequire;
    } else if (name == "BATON_CUDA_ATTN_GROUP") {
      BATON_ASSIGN_OR_RETURN(p.attn_group_heads, number(name.c_str(), v, 1, 4));
    } else if (name == "BATON_CUDA_ATTN_MMA_TOKENS") {
      BATON_ASSIGN_OR_RETURN(p.attn_mma_tokens, number(name.c_str(), v, 0, 1 << 20));
    } else {
      return make_error(name, " is not a switch of this baton (BATON_CUDA_GEMV, BATON_CUDA_TUNE, ",
                        "BATON_CUDA_GEMM_TUNE, BATON_CUDA_ATTN_GROUP, BATON_CUDA_ATTN_MMA_TOKENS)");
    }
  }
  return p;
}

Result<DeviceSpec> parse_device(const std::string& device) {
  if (device == "cpu") return DeviceSpec{false, 0};
  if (device == "cuda") return DeviceSpec{true, 0};
  if (device.rfind("cuda:", 0) == 0) {
    const std::string n = device.substr(5);
    if (n.empty() || n.size() > 3 || n.find_first_not_of("0123456789") != std::string::npos)
      return make_error("--device: '", device, "' is not cuda:N (N a GPU index)");
    return DeviceSpec{true, std::stoi(n)};
  }
  return make_error("--device must be cpu, cuda or cuda:N (got '", device, "')");
}

Result<std::unique_ptr<Backend>> create_backend(const std::string& model_dir, const BackendOptions& options) {
  BATON_ASSIGN_OR_RETURN(DeviceSpec d, parse_device(options.device));
  if (!d.cuda) return create_cpu_backend(model_dir, options);
  return create_cuda_backend(model_dir, options, d.first_gpu);
}

Status Backend::forward_sample(const Batch&, std::span<const DeviceSampling>, std::span<int32_t>) {
  return make_error("this backend does not sample on its device");
}

#ifndef BATON_HAS_CUDA_BACKEND
Result<std::unique_ptr<Backend>> create_cuda_backend(const std::string&, const BackendOptions&, int) {
  return make_error("--device cuda: this baton was built without the CUDA backend (no nvcc at build time)");
}
int cuda_device_count() { return 0; }
#endif

Status validate_batch(const Batch& batch, const KvCacheSpec& spec, int max_positions) {
  size_t total = 0;
  for (size_t i = 0; i < batch.seqs.size(); ++i) {
    const SeqBatch& s = batch.seqs[i];
    if (s.n_tokens <= 0 || s.n_past < 0) return make_error("batch seq ", i, ": bad token counts");
    int64_t len = static_cast<int64_t>(s.n_past) + s.n_tokens;
    if (len > max_positions) return make_error("batch seq ", i, ": ", len, " positions exceed the model's ", max_positions);
    int64_t blocks_needed = (len + spec.block_size - 1) / spec.block_size;
    if (static_cast<int64_t>(s.block_table.size()) < blocks_needed)
      return make_error("batch seq ", i, ": block table has ", s.block_table.size(), " blocks, needs ", blocks_needed);
    for (int64_t b = 0; b < blocks_needed; ++b)
      if (s.block_table[b] < 0 || s.block_table[b] >= spec.num_blocks)
        return make_error("batch seq ", i, ": block id ", s.block_table[b], " out of range");
    total += static_cast<size_t>(s.n_tokens);
  }
  if (total != batch.tokens.size()) return make_error("batch: ", batch.tokens.size(), " tokens but seqs add up to ", total);
  return {};
}

}  // namespace baton
