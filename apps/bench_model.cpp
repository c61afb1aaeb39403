// baton-bench model: what one model costs on a backend, against what the hardware allows.
//   baton-bench model --model DIR --device cuda [--batches 1,8,64] [--context 512] [--json FILE]
// Measures, in one process on one device:
//   - the device's copy bandwidth (device to device, read + write) and bf16 GEMM rate (cuBLAS),
//   - prefill: tokens/s of one long prompt, and its FLOP rate as a fraction of that GEMM rate,
//   - decode: step time at each batch size with `context` tokens cached per sequence, against the
//     memory roofline (weight bytes + KV bytes read, over the measured bandwidth),
//   - generation: output tokens/s through the engine for batch x (prompt, new tokens), the
//     figure transformers' generate is compared with (bench/gpu/hf_reference.py).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>

#include "apps/bench_commands.h"
#include "backend/backend.h"
#include "common/cli.h"
#include "common/json.h"
#include "engine/engine.h"
#if BATON_BENCH_CUDA
#include <cublas_v2.h>
#include <cuda_runtime.h>
#endif

namespace baton {
namespace {

using Clock = std::chrono::steady_clock;


double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

struct DeviceRates {
  double copy_bytes_per_s = 0;  // read + write
  double gemm_flops = 0;        // bf16 in, fp32 accumulate and out, as the backend's GEMMs
};

#if BATON_BENCH_CUDA
#define BENCH_CU(expr)                                                                   \
  do {                                                                                   \
    if ((expr) != cudaSuccess) return make_error("CUDA: ", #expr, " failed");            \
  } while (0)

Result<DeviceRates> measure_device(int gpu) {
  DeviceRates r;
  BENCH_CU(cudaSetDevice(gpu));
  const size_t bytes = size_t{1} << 30;
  void *a = nullptr, *b = nullptr;
  BENCH_CU(cudaMalloc(&a, bytes));
  BENCH_CU(cudaMalloc(&b, bytes));
  BENCH_CU(cudaMemset(a, 1, bytes));
  BENCH_CU(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
  BENCH_CU(cudaDeviceSynchronize());
  const int reps = 20;
  auto t0 = Clock::now();
  for (int i = 0; i < reps; ++i) BENCH_CU(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
  BENCH_CU(cudaDeviceSynchronize());
  r.copy_bytes_per_s = 2.0 * bytes * reps / seconds_since(t0);
  cudaFree(a);
  cudaFree(b);

  const int n = 8192;
  void *x = nullptr, *w = nullptr, *y = nullptr;
  BENCH_CU(cudaMalloc(&x, size_t(n) * n * 2));
  BENCH_CU(cudaMalloc(&w, size_t(n) * n * 2));
  BENCH_CU(cudaMalloc(&y, size_t(n) * n * 4));
  BENCH_CU(cudaMemset(x, 0, size_t(n) * n * 2));
  BENCH_CU(cudaMemset(w, 0, size_t(n) * n * 2));
  cublasHandle_t h;
  if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) return make_error("cublasCreate failed");
  const float alpha = 1, beta = 0;
  auto gemm = [&] {
    return cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &alpha, w, CUDA_R_16BF, n, x, CUDA_R_16BF, n, &beta, y,
                        CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  };
  for (int i = 0; i < 3; ++i) gemm();
  BENCH_CU(cudaDeviceSynchronize());
  t0 = Clock::now();
  const int greps = 20;
  for (int i = 0; i < greps; ++i) gemm();
  BENCH_CU(cudaDeviceSynchronize());
  r.gemm_flops = 2.0 * n * n * double(n) * greps / seconds_since(t0);
  // The prefill shape of a 1B model's gate/up projection (M 2048, N 16384, K 2048), with the
  // fp32 output the backend uses and with bf16 output, on non-zero data.
  {
    const int M = 2048, N = 16384, K = 2048;
    std::vector<uint16_t> host(size_t(N) * K);
    for (size_t i = 0; i < host.size(); ++i) host[i] = uint16_t(0x3c00 + (i * 2654435761u >> 20) % 512);
    BENCH_CU(cudaMemcpy(w, host.data(), size_t(M) * K * 2, cudaMemcpyHostToDevice));  // x: the first M rows
    BENCH_CU(cudaMemcpy(x, host.data(), size_t(N) * K * 2, cudaMemcpyHostToDevice));
    for (cudaDataType_t out_t : {CUDA_R_32F, CUDA_R_16BF}) {
      auto g2 = [&] {
        return cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &alpha, x, CUDA_R_16BF, K, w, CUDA_R_16BF, K, &beta, y,
                            out_t, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
      };
      g2();
      BENCH_CU(cudaDeviceSynchronize());
      t0 = Clock::now();
      for (int i = 0; i < 10; ++i) g2();
      BENCH_CU(cudaDeviceSynchronize());
      std::printf("GEMM M %d N %d K %d, %s out: %.0f TFLOP/s\n", M, N, K, out_t == CUDA_R_32F ? "fp32" : "bf16",
                  2.0 * M * N * double(K) * 10 / seconds_since(t0) / 1e12);
    }
  }
  cublasDestroy(h);
  cudaFree(x);
  cudaFree(w);
  cudaFree(y);
  return r;
}
#else
Result<DeviceRates> measure_device(int) {
  return DeviceRates{};
}
#endif

// Bytes of weights one decode step reads (bf16): every layer's matrices and the LM head.
double weight_bytes(const ModelConfig& c) {
  const double H = c.hidden_size, qkv = c.q_dim() + 2.0 * c.kv_dim(), I = c.intermediate_size;
  const double per_layer = H * qkv + c.q_dim() * H + 2 * I * H + I * H;
  return 2.0 * (per_layer * c.num_layers + double(c.vocab_size) * H);
}

// FLOPs of one prompt token through the layers' matrices (the LM head runs for the last token
// only), and the attention of a prompt.
double matrix_flops_per_token(const ModelConfig& c) {
  return weight_bytes(c) - 2.0 * double(c.vocab_size) * c.hidden_size;  // 2 bytes = 2 FLOPs per weight
}
double causal_attention_flops(const ModelConfig& c, double T) {
  return 2.0 * T * T * c.num_heads * c.head_dim * c.num_layers;  // QK^T and PV over T^2 / 2 pairs
}

class Runner {
 public:
  explicit Runner(Backend& b) : b_(b) {}

  // Runs one pass; the sequences own consecutive block ranges of `blocks_per_seq` blocks.
  Status step(const std::vector<int32_t>& tokens, const std::vector<int>& n_tokens, const std::vector<int>& n_past,
              int blocks_per_seq, std::vector<int32_t>& out) {
    tables_.assign(n_tokens.size(), {});
    seqs_.clear();
    for (size_t i = 0; i < n_tokens.size(); ++i) {
      for (int k = 0; k < blocks_per_seq; ++k) tables_[i].push_back(int32_t(i * blocks_per_seq + k));
      seqs_.push_back({n_tokens[i], n_past[i], tables_[i], true});
    }
    params_.assign(n_tokens.size(), DeviceSampling{});
    out.resize(n_tokens.size());
    Batch batch{tokens, seqs_};
    if (b_.samples_on_device()) return b_.forward_sample(batch, params_, out);
    logits_.resize(n_tokens.size() * size_t(b_.config().vocab_size));
    BATON_RETURN_IF_ERROR(b_.forward(batch, logits_));
    for (size_t i = 0; i < n_tokens.size(); ++i) {
      const float* row = logits_.data() + i * b_.config().vocab_size;
      out[i] = int32_t(std::max_element(row, row + b_.config().vocab_size) - row);
    }
    return {};
  }

 private:
  Backend& b_;
  std::vector<std::vector<int32_t>> tables_;
  std::vector<SeqBatch> seqs_;
  std::vector<DeviceSampling> params_;
  std::vector<float> logits_;
};

}  // namespace

Status model_bench(int argc, char** argv) {
  std::string model, batches_s = "1,8,64", gen_batches_s = "1,8,64", json_path;
  BackendOptions bo;
  int context = 512, steps = 32, prefill = 2048, gen_prompt = 128, gen_tokens = 128;
  ArgParser args("baton-bench model", "Prefill, decode and generation speed of one model against the device's limits.");
  add_backend_flags(args, bo);
  args.add({"--model"}, &model, "model directory");
  args.add({"--batches"}, &batches_s, "decode batch sizes");
  args.add({"--context"}, &context, "tokens cached per sequence before the timed decode steps");
  args.add({"--steps"}, &steps, "timed decode steps per batch size");
  args.add({"--prefill"}, &prefill, "prompt tokens of the prefill measurement");
  args.add({"--gen-batches"}, &gen_batches_s, "engine generation: batch sizes (empty: skip)");
  args.add({"--gen-prompt"}, &gen_prompt, "engine generation: prompt tokens");
  args.add({"--gen-tokens"}, &gen_tokens, "engine generation: new tokens per request");
  args.add({"--json"}, &json_path, "write results here");
  BATON_RETURN_IF_ERROR(args.parse(argc, argv));
  if (args.help_requested()) return {};
  if (model.empty()) return make_error("--model is required");
  if (context < 1 || steps < 1 || prefill < 1) return make_error("--context, --steps and --prefill must be positive");
  BATON_ASSIGN_OR_RETURN(auto batches, parse_uint_list(batches_s, "--batches"));
  std::vector<uint64_t> gen_batches;
  if (!gen_batches_s.empty()) {
    BATON_ASSIGN_OR_RETURN(gen_batches, parse_uint_list(gen_batches_s, "--gen-batches"));
  }

  Json out;
  DeviceRates rates;
  BATON_ASSIGN_OR_RETURN(DeviceSpec device, parse_device(bo.device));
  if (device.cuda) {  // on the GPU of rank 0
    if (device.first_gpu >= cuda_device_count())
      return make_error("--device ", bo.device, ": ", cuda_device_count(), " GPUs visible");
    BATON_ASSIGN_OR_RETURN(rates, measure_device(device.first_gpu));
  }
  out["device_copy_GBps"] = rates.copy_bytes_per_s / 1e9;
  out["gemm_bf16_TFLOPs"] = rates.gemm_flops / 1e12;
  if (rates.copy_bytes_per_s > 0)
    std::printf("device: copy %.0f GB/s (read + write), bf16 GEMM %.0f TFLOP/s\n", rates.copy_bytes_per_s / 1e9,
                rates.gemm_flops / 1e12);

  BATON_ASSIGN_OR_RETURN(auto backend, create_backend(model, bo));
  const ModelConfig& c = backend->config();
  const KvCacheSpec& kv = backend->kv_spec();
  const double wbytes = weight_bytes(c);
  out["model"] = model;
  out["weight_bytes"] = wbytes;
  out["kv_dtype"] = kv_dtype_name(kv.dtype);
  std::printf("model: %s, %d layers, hidden %d, weights %.2f GB (bf16), KV %s\n", c.architecture_name.c_str(),
              c.num_layers, c.hidden_size, wbytes / 1e9, kv_dtype_name(kv.dtype));
  Runner run(*backend);
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> tok(0, c.vocab_size - 1);
  std::vector<int32_t> sampled;

  // Prefill: one prompt of `prefill` tokens, median of 5 after a warm-up.
  {
    const int bps = (prefill + kv.block_size - 1) / kv.block_size;
    if (bps > kv.num_blocks) return make_error("--prefill ", prefill, " does not fit the KV cache");
    std::vector<int32_t> toks(prefill);
    for (auto& t : toks) t = tok(rng);
    std::vector<double> times;
    for (int i = 0; i < 6; ++i) {
      const auto t0 = Clock::now();
      BATON_RETURN_IF_ERROR(run.step(toks, {prefill}, {0}, bps, sampled));
      if (i > 0) times.push_back(seconds_since(t0));
    }
    const double s = median(times);
    const double flops = matrix_flops_per_token(c) * prefill + causal_attention_flops(c, prefill);
    Json p = {{"tokens", prefill}, {"ms", s * 1e3}, {"tokens_per_s", prefill / s}, {"TFLOPs", flops / s / 1e12}};
    if (rates.gemm_flops > 0) p["fraction_of_gemm_rate"] = flops / s / rates.gemm_flops;
    out["prefill"] = p;
    std::printf("prefill %d tokens: %.2f ms, %.0f tok/s, %.0f TFLOP/s%s\n", prefill, s * 1e3, prefill / s,
                flops / s / 1e12,
                rates.gemm_flops > 0 ? (" = " + std::to_string(flops / s / rates.gemm_flops).substr(0, 4) +
                                        " of the GEMM rate").c_str()
                                     : "");
  }

  // Decode: B sequences with `context` cached tokens, then `steps` timed steps of one token each.
  for (uint64_t B64 : batches) {
    const int B = int(B64);
    const int bps = (context + steps + 4 + kv.block_size - 1) / kv.block_size;
    if (int64_t(B) * bps > kv.num_blocks) {
      std::printf("decode batch %d: skipped (needs %lld KV blocks, %d exist)\n", B, (long long)B * bps, kv.num_blocks);
      continue;
    }
    std::vector<int32_t> toks(size_t(B) * context);
    for (auto& t : toks) t = tok(rng);
    std::vector<int> n_tokens(B, context), n_past(B, 0);
    BATON_RETURN_IF_ERROR(run.step(toks, n_tokens, n_past, bps, sampled));
    std::vector<int32_t> next = sampled;
    std::fill(n_tokens.begin(), n_tokens.end(), 1);
    std::vector<double> times;
    double kv_bytes = 0;
    for (int s = 0; s < steps + 3; ++s) {
      std::fill(n_past.begin(), n_past.end(), context + s);
      const auto t0 = Clock::now();
      BATON_RETURN_IF_ERROR(run.step(next, n_tokens, n_past, bps, sampled));
      const double dt = seconds_since(t0);
      next = sampled;
      if (s < 3) continue;  // warm-up: graph capture
      times.push_back(dt);
      kv_bytes += double(B) * (context + s + 1) * (double(kv.bytes_per_block) / kv.block_size);
    }
    kv_bytes /= steps;
    const double t = median(times);
    Json row = {{"batch", B}, {"context", context}, {"step_ms", t * 1e3}, {"tokens_per_s", B / t},
                {"kv_bytes_per_step", kv_bytes}};
    if (rates.copy_bytes_per_s > 0) {
      // Roofline: every byte read once at the copy rate (a copy reads and writes, so its
      // read + write figure is the rate of plain reads).
      const double roof = (wbytes + kv_bytes) / rates.copy_bytes_per_s;
      row["roofline_ms"] = roof * 1e3;
      row["fraction_of_roofline"] = roof / t;
    }
    out["decode"].push_back(row);
    std::printf("decode batch %3d, context %d: %.3f ms/step, %.0f tok/s%s\n", B, context, t * 1e3, B / t,
                row.contains("fraction_of_roofline")
                    ? (", roofline " + std::to_string(row["roofline_ms"].get<double>()).substr(0, 5) + " ms = " +
                       std::to_string(row["fraction_of_roofline"].get<double>()).substr(0, 4))
                          .c_str()
                    : "");
  }
  backend.reset();

  // Generation through the engine: B requests, gen_prompt random tokens each, gen_tokens out.
  for (uint64_t B64 : gen_batches) {
    const int B = int(B64);
    BATON_ASSIGN_OR_RETURN(auto b2, create_backend(model, bo));
    EngineConfig ec;
    ec.max_num_seqs = std::max(B, 1);
    BATON_ASSIGN_OR_RETURN(auto engine, Engine::create(std::move(b2), nullptr, ec));
    for (int warm = 0; warm < 2; ++warm) {
      size_t produced = 0;
      const auto t0 = Clock::now();
      for (int i = 0; i < B; ++i) {
        Request r;
        for (int k = 0; k < gen_prompt; ++k) r.prompt.push_back(tok(rng));
        r.params.temperature = 0;
        r.params.max_tokens = gen_tokens;
        r.params.ignore_eos = true;
        BATON_RETURN_IF_ERROR(
            engine->add_request(std::move(r), [&](RequestOutput&& o) { produced += o.token_ids.size(); }));
      }
      engine->run_until_idle();
      const double s = seconds_since(t0);
      if (warm == 0) continue;  // the first round captures graphs
      out["generate"].push_back(
          {{"batch", B}, {"prompt", gen_prompt}, {"new_tokens", gen_tokens}, {"s", s}, {"tokens_per_s", produced / s}});
      std::printf("generate batch %3d, prompt %d, %d new tokens: %.3f s, %.0f tok/s\n", B, gen_prompt, gen_tokens, s,
                  produced / s);
    }
  }

  if (!json_path.empty()) {
    std::ofstream f(json_path);
    f << out.dump(2) << "\n";
    if (!f) return make_error(json_path, ": write failed");
  }
  return {};
}

}  // namespace baton
