// baton-bench: measurements.
//   baton-bench xfer [--transport auto|ucx|cuda_ipc|tcp] [--cuda] [--sizes 4096,...] [--batches 1,16,...]
//                    [--kv-tokens 1024,8192 --kv-dtype fp8|bf16] [--json FILE]
//     Bandwidth and latency of transfer-engine reads between two processes on this host: this
//     process forks a peer that registers host (or GPU) memory, then reads batches of non-adjacent
//     ranges from it, or one request's KV blocks. Prints a table and, with --json, writes the rows.
//   baton-bench model --model DIR [--device cuda] ...   (apps/bench_model.cpp)
//     Prefill, decode and generation speed of a model against the device's copy and GEMM rates.
//   baton-bench serve --base-url URL ... / baton-bench report FILES   (apps/bench_serve.cpp)
//     Serving benchmark (TTFT, TPOT, ITL, E2E, throughput, goodput) and sweep comparisons.
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <vector>

#include "apps/bench_commands.h"
#include "common/cli.h"
#include "common/json.h"
#include "xfer/agent.h"
#if BATON_HAS_CUDA
#include <cuda_runtime.h>
#endif

namespace baton {
namespace {

using Clock = std::chrono::steady_clock;

// Host memory for a registered region, every byte set to `fill`: aligned to 2 MiB and, unless
// `small_pages`, backed by transparent huge pages where the kernel allows (MADV_HUGEPAGE), as
// numpy's large arrays are. Reads of ordinary registered memory on one host go through CMA, whose
// cost is mostly pinning pages: 4 KiB pages halve its bandwidth at 1 MiB.
struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
using HostRegion = std::unique_ptr<uint8_t, FreeDeleter>;
Result<HostRegion> host_region(size_t bytes, bool small_pages, int fill) {
  constexpr size_t kHuge = size_t{2} << 20;
  void* p = nullptr;
  if (posix_memalign(&p, kHuge, (bytes + kHuge - 1) / kHuge * kHuge) != 0)
    return make_error("cannot allocate ", bytes, " bytes of host memory");
  if (!small_pages) (void)madvise(p, bytes, MADV_HUGEPAGE);  // a hint: ignored where THP is off
  std::memset(p, fill, bytes);
  return HostRegion(static_cast<uint8_t*>(p));
}

// Calls `once` (returning Status) once to warm up, then for at least `seconds` and 3 times;
// returns how many timed calls ran and the seconds they took. For sub-microsecond calls the clock
// is read every 16th call only, as ucx_perftest does not read it per iteration either.
template <class F>
Result<std::pair<int, double>> time_repeated(double seconds, F once) {
  BATON_RETURN_IF_ERROR(once());  // warm-up (wireup, first touch)
  int n = 0, check_every = 1;
  const auto t0 = Clock::now();
  double elapsed = 0;
  while (elapsed < seconds || n < 3) {
    BATON_RETURN_IF_ERROR(once());
    if (++n % check_every != 0) continue;
    elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
    if (n == 3 && elapsed / n < 2e-6) check_every = 16;
  }
  return std::make_pair(n, elapsed);
}

Status xfer_bench(int argc, char** argv) {
  std::string transport = "auto", kv_tokens_s, kv_dtype = "fp8", sizes_s = "4096,16384,65536,262144,1048576,4194304,16777216,67108864",
              batches_s = "1,16,128,1024", json_path;
  size_t region_bytes = size_t{1} << 30;
  double seconds = 0.5;
  bool shared = false, small_pages = false, memcpy_baseline = false;
  bool cuda = false;
  int owner_gpu = 0, reader_gpu = 0;
  int kv_layers = 32, kv_heads = 8, head_dim = 128, block_tokens = 16;  // Llama-3.1-8B's KV
  ArgParser args("baton-bench xfer", "Transfer engine read bandwidth and latency between two local processes.");
  args.add({"--transport"}, &transport,
           "auto (UCX, cuda_ipc for GPU memory on one host, TCP where neither serves), ucx (UCX alone, GPU memory "
           "too), cuda_ipc (GPU memory; host memory over TCP) or tcp (GPU memory staged through host buffers)");
  args.add({"--kv-tokens"}, &kv_tokens_s,
           "instead of --sizes/--batches: read one request's KV of each of these token counts, as a decode does, "
           "from a pool laid out as the backends lay it out (per layer [blocks][K,V][heads][block][head_dim]); "
           "contiguous blocks (one get per layer) and every other block (one get per block)");
  args.add({"--kv-layers"}, &kv_layers, "--kv-tokens: layers");
  args.add({"--kv-heads"}, &kv_heads, "--kv-tokens: KV heads");
  args.add({"--head-dim"}, &head_dim, "--kv-tokens: head dimension");
  args.add({"--block-tokens"}, &block_tokens, "--kv-tokens: tokens per KV block");
  args.add({"--kv-dtype"}, &kv_dtype, "--kv-tokens: fp8 or bf16");
  args.add({"--sizes"}, &sizes_s, "range sizes in bytes");
  args.add({"--batches"}, &batches_s, "ranges per batch");
  args.add({"--region-bytes"}, &region_bytes, "bytes the peer registers");
  args.add({"--seconds"}, &seconds, "time per measurement");
  args.add({"--json"}, &json_path, "write results here");
  args.add_flag({"--cuda"}, &cuda,
                "GPU memory on both sides (moved as --transport says), with an in-process cudaMemcpy baseline");
  args.add({"--owner-gpu"}, &owner_gpu, "--cuda: the GPU of the peer's (owner's) memory");
  args.add({"--reader-gpu"}, &reader_gpu, "--cuda: the GPU of this (reading) process's memory");
  args.add_flag({"--shared"}, &shared, "regions from Agent::allocate_memory (UCX shared memory), as a KV pool uses");
  args.add_flag({"--memcpy-baseline"}, &memcpy_baseline,
                "host memory: also time a plain memcpy of the same ranges inside this process (the ceiling of a "
                "same-host read)");
  args.add_flag({"--small-pages"}, &small_pages,
                "registered host regions on 4 KiB pages (default: transparent huge pages asked for, as numpy does)");
  BATON_RETURN_IF_ERROR(args.parse(argc, argv));
  if (args.help_requested()) return {};
  auto named = xfer::Agent::Config::transports_named(transport);
  if (!named.ok()) return make_error("--transport: ", named.error());
  const std::vector<std::string> transports = std::move(*named);
  if (kv_dtype != "fp8" && kv_dtype != "bf16") return make_error("--kv-dtype must be fp8 or bf16");
  BATON_ASSIGN_OR_RETURN(auto kv_tokens, parse_uint_list(kv_tokens_s.empty() ? "0" : kv_tokens_s, "--kv-tokens"));
  if (kv_tokens_s.empty()) kv_tokens.clear();
  // One block of one layer (K and V), and the pool that holds twice the largest request's blocks
  // (room for every other block).
  const uint64_t kv_block_bytes =
      uint64_t{2} * kv_heads * block_tokens * head_dim * (kv_dtype == "fp8" ? 1 : 2);
  uint64_t kv_pool_blocks = 0;
  for (uint64_t t : kv_tokens) kv_pool_blocks = std::max<uint64_t>(kv_pool_blocks, 2 * ((t + block_tokens - 1) / block_tokens));
  if (!kv_tokens.empty()) region_bytes = kv_pool_blocks * kv_block_bytes * kv_layers;

  // The two processes are one deployment: a token of their own admits the reader to every
  // region, as in a fleet with a deployment token.
  const std::string token = xfer::new_capability();
  int pipefd[2];
  if (pipe(pipefd) != 0) return make_error("pipe failed");
  pid_t child = fork();
  if (child == 0) {  // the owner
    close(pipefd[0]);
    xfer::Agent::Config c;
    c.name = "bench-owner";
    c.token = token;
    c.transports = transports;
    auto agent = xfer::Agent::create(c);
    HostRegion mem;
    Result<xfer::MemoryDesc> d = Error{"no agent"};
    if (agent.ok() && cuda) {
#if BATON_HAS_CUDA
      void* g = nullptr;
      if (cudaSetDevice(owner_gpu) == cudaSuccess && cudaMalloc(&g, region_bytes) == cudaSuccess)
        d = (*agent)->register_memory(g, region_bytes, xfer::MemoryKind::kCuda);
#endif
    } else if (agent.ok() && shared) {
      auto a = (*agent)->allocate_memory(region_bytes);
      if (a.ok()) {
        std::memset(a->first, 1, region_bytes);
        d = a->second;
      } else {
        d = Error{a.error()};
      }
    } else if (agent.ok()) {
      auto m = host_region(region_bytes, small_pages, 1);
      if (m.ok()) {
        mem = std::move(*m);
        d = (*agent)->register_memory(mem.get(), region_bytes);
      } else {
        d = Error{m.error()};
      }
    }
    std::string line = d.ok() ? Json({{"agent", (*agent)->describe().to_json()}, {"region", d->to_json()}}).dump() : "{}";
    line += "\n";
    (void)!write(pipefd[1], line.data(), line.size());
    close(pipefd[1]);
    if (agent.ok()) (*agent)->next_notification(std::chrono::hours(1));
    _exit(0);
  }
  close(pipefd[1]);
  std::string line;
  char ch;
  while (read(pipefd[0], &ch, 1) == 1 && ch != '\n') line += ch;
  close(pipefd[0]);
  struct Reap {
    pid_t pid;
    ~Reap() {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  } reap{child};
  BATON_ASSIGN_OR_RETURN(Json peer, parse_json(line, "peer"));
  if (!peer.contains("agent")) return make_error("the peer process could not start an agent");
  BATON_ASSIGN_OR_RETURN(xfer::AgentDesc peer_agent, xfer::AgentDesc::from_json(peer["agent"]));
  BATON_ASSIGN_OR_RETURN(xfer::MemoryDesc peer_region, xfer::MemoryDesc::from_json(peer["region"]));

  xfer::Agent::Config c;
  c.name = "bench-reader";
  c.token = token;
  c.transports = transports;
  BATON_ASSIGN_OR_RETURN(auto agent, xfer::Agent::create(c));
  HostRegion local;
  xfer::MemoryDesc mine;
  void* local_gpu = nullptr;
  if (cuda) {
#if BATON_HAS_CUDA
    if (cudaSetDevice(reader_gpu) != cudaSuccess) return make_error("--reader-gpu ", reader_gpu, ": no such GPU");
    if (cudaMalloc(&local_gpu, region_bytes) != cudaSuccess) return make_error("cudaMalloc failed");
    BATON_ASSIGN_OR_RETURN(mine, agent->register_memory(local_gpu, region_bytes, xfer::MemoryKind::kCuda));
#else
    return make_error("--cuda needs a CUDA build");
#endif
  } else if (shared) {
    BATON_ASSIGN_OR_RETURN(auto a, agent->allocate_memory(region_bytes));
    std::memset(a.first, 0, region_bytes);
    mine = a.second;
  } else {
    BATON_ASSIGN_OR_RETURN(local, host_region(region_bytes, small_pages, 0));
    BATON_ASSIGN_OR_RETURN(mine, agent->register_memory(local.get(), region_bytes));
  }
  BATON_ASSIGN_OR_RETURN(auto session, agent->connect(peer_agent));

  Json rows = Json::array();
  // GPU memory moves by cuda_ipc on one host unless --transport says otherwise.
  const std::string moved_by = !cuda                 ? session->transport()
                               : transport == "tcp"  ? "tcp (staged)"
                               : transport == "ucx"  ? "ucx"
                                                     : "cuda_ipc";
  const char* tls = std::getenv("UCX_TLS");
  std::printf("transport: %s%s%s%s\n", moved_by.c_str(), shared ? " (shared regions)" : "",
              tls && moved_by == "ucx" ? ", UCX_TLS=" : "", tls && moved_by == "ucx" ? tls : "");
  if (!kv_tokens.empty()) {
    std::printf("| tokens | KV dtype | blocks | gets | bytes/get | MB | ms/request | GB/s | requests | %s |\n"
                "|---|---|---|---|---|---|---|---|---|---|\n",
                cuda ? "ratio to one in-process d2d copy of the bytes" : "");
    for (uint64_t tokens : kv_tokens) {
      const uint64_t blocks = (tokens + block_tokens - 1) / block_tokens;
      const uint64_t bytes = blocks * kv_block_bytes * kv_layers;
      // The device-to-device copy rate: one cudaMemcpy of the request's bytes on this GPU.
      double d2d = 0;
#if BATON_HAS_CUDA
      if (cuda) {
        const uint64_t copied = std::min(bytes, region_bytes / 2);
        auto copy_once = [&] {
          cudaMemcpyAsync(static_cast<char*>(local_gpu) + region_bytes / 2, local_gpu, copied, cudaMemcpyDeviceToDevice,
                          nullptr);
          cudaStreamSynchronize(nullptr);
          return Status{};
        };
        BATON_ASSIGN_OR_RETURN(auto copies, time_repeated(seconds, copy_once));
        d2d = static_cast<double>(copied) * copies.first / copies.second / 1e9;
      }
#endif
      const uint64_t layer_bytes = kv_pool_blocks * kv_block_bytes;
      for (uint64_t stride : {1, 2}) {  // contiguous blocks, every other block
        std::vector<xfer::TransferOp> ops;
        for (int l = 0; l < kv_layers; ++l)
          for (uint64_t b = 0; b < blocks; ++b) {
            const uint64_t at = l * layer_bytes + stride * b * kv_block_bytes;
            ops.push_back({mine.region, at, peer_region.region, at, kv_block_bytes});
          }
        const size_t gets = xfer::coalesce(ops).size();
        auto run_once = [&]() -> Status {
          BATON_ASSIGN_OR_RETURN(xfer::TransferId id, session->read(ops));
          return session->wait(id);
        };
        BATON_ASSIGN_OR_RETURN(auto timed, time_repeated(seconds, run_once));
        const auto [n, elapsed] = timed;
        const double gbps = static_cast<double>(bytes) * n / elapsed / 1e9, ms = elapsed / n * 1e3;
        char ratio[64] = "";
        if (d2d > 0) std::snprintf(ratio, sizeof ratio, "%.2f (d2d %.0f GB/s)", gbps / d2d, d2d);
        std::printf("| %llu | %s | %s | %zu | %llu | %.1f | %.3f | %.2f | %d | %s |\n", static_cast<unsigned long long>(tokens),
                    kv_dtype.c_str(), stride == 1 ? "contiguous" : "every other", gets,
                    static_cast<unsigned long long>(bytes / gets), bytes / 1e6, ms, gbps, n, ratio);
        std::fflush(stdout);
        rows.push_back({{"transport", moved_by}, {"tokens", tokens}, {"kv_dtype", kv_dtype},
                        {"contiguous", stride == 1}, {"gets", gets}, {"bytes", bytes}, {"ms_per_request", ms},
                        {"gb_per_s", gbps}, {"requests", n}, {"d2d_gb_per_s", d2d}});
      }
    }
  } else {
    std::printf("| size | batch | GB/s | us/batch | batches |\n|---|---|---|---|---|\n");
  }
  BATON_ASSIGN_OR_RETURN(auto sizes, parse_uint_list(sizes_s, "--sizes"));
  if (!kv_tokens.empty()) sizes.clear();
  BATON_ASSIGN_OR_RETURN(auto batches, parse_uint_list(batches_s, "--batches"));
  for (uint64_t size : sizes) {
    for (uint64_t batch : batches) {
      // Ranges 2*size apart so that none coalesce; skip what does not fit the region.
      if (2 * size * batch > region_bytes) continue;
      std::vector<xfer::TransferOp> ops;
      for (uint64_t i = 0; i < batch; ++i) ops.push_back({mine.region, 2 * i * size, peer_region.region, 2 * i * size, size});
      auto run_once = [&]() -> Status {
        BATON_ASSIGN_OR_RETURN(xfer::TransferId id, session->read(ops));
        return session->wait(id);
      };
      BATON_ASSIGN_OR_RETURN(auto timed, time_repeated(seconds, run_once));
      const auto [n, elapsed] = timed;
      const double gbps = static_cast<double>(size * batch * n) / elapsed / 1e9;
      const double us = elapsed / n * 1e6;
      std::printf("| %llu | %llu | %.2f | %.1f | %d |\n", static_cast<unsigned long long>(size),
                  static_cast<unsigned long long>(batch), gbps, us, n);
      std::fflush(stdout);
      Json row = {{"transport", moved_by}, {"size", size}, {"batch", batch},
                  {"gb_per_s", gbps}, {"us_per_batch", us}, {"batches", n}};
#if BATON_HAS_CUDA
      if (cuda) {  // the same copies inside one process: the ceiling cuda_ipc is measured against
        void* peer_like = nullptr;
        cudaSetDevice(owner_gpu);
        cudaMalloc(&peer_like, 2 * size * batch);
        cudaSetDevice(reader_gpu);
        // As cuda_ipc does (cudaIpcMemLazyEnablePeerAccess): without peer access a copy between
        // two GPUs is staged through the host.
        if (owner_gpu != reader_gpu && cudaDeviceEnablePeerAccess(owner_gpu, 0) != cudaSuccess) cudaGetLastError();
        cudaStream_t st;
        cudaStreamCreate(&st);
        auto copy_once = [&] {
          for (uint64_t i = 0; i < batch; ++i)
            cudaMemcpyPeerAsync(static_cast<char*>(local_gpu) + 2 * i * size, reader_gpu,
                                static_cast<char*>(peer_like) + 2 * i * size, owner_gpu, size, st);
          cudaStreamSynchronize(st);
          return Status{};
        };
        BATON_ASSIGN_OR_RETURN(auto copies, time_repeated(seconds, copy_once));
        const double base = static_cast<double>(size * batch * copies.first) / copies.second / 1e9;
        std::printf("|   in-process cudaMemcpyPeer (GPU %d -> %d) | | %.2f | ratio %.2f | |\n", owner_gpu, reader_gpu, base,
                    gbps / base);
        row["memcpy_gb_per_s"] = base;
        row["owner_gpu"] = owner_gpu;
        row["reader_gpu"] = reader_gpu;
        row["ratio"] = gbps / base;
        cudaStreamDestroy(st);
        cudaFree(peer_like);
      }
#endif
      if (memcpy_baseline && !cuda) {
        // The same ranges copied by memcpy between two buffers of this process, timed the same way.
        BATON_ASSIGN_OR_RETURN(HostRegion from, host_region(2 * size * batch, small_pages, 1));
        BATON_ASSIGN_OR_RETURN(HostRegion to, host_region(2 * size * batch, small_pages, 0));
        auto copy_once = [&] {
          for (uint64_t i = 0; i < batch; ++i) std::memcpy(to.get() + 2 * i * size, from.get() + 2 * i * size, size);
          asm volatile("" ::: "memory");  // the copies are the point: keep them
          return Status{};
        };
        BATON_ASSIGN_OR_RETURN(auto copies, time_repeated(seconds, copy_once));
        const double base = static_cast<double>(size * batch * copies.first) / copies.second / 1e9;
        std::printf("|   in-process memcpy | | %.2f | ratio %.2f | |\n", base, gbps / base);
        row["memcpy_gb_per_s"] = base;
        row["ratio"] = gbps / base;
      }
      rows.push_back(row);
    }
  }
  (void)session->notify("exit");
  if (!json_path.empty()) {
    std::ofstream f(json_path);
    f << rows.dump(2) << "\n";
    if (!f) return make_error(json_path, ": write failed");
  }
  return {};
}

}  // namespace
}  // namespace baton

baton::Status run(int argc, char** argv) {
  const std::string sub = argc >= 2 ? argv[1] : "";
  if (sub == "xfer") return baton::xfer_bench(argc - 1, argv + 1);
#if BATON_BENCH_MODEL
  if (sub == "model") return baton::model_bench(argc - 1, argv + 1);
#endif
#if BATON_BENCH_SERVE
  if (sub == "serve") return baton::serve_bench(argc - 1, argv + 1);
  if (sub == "report") return baton::report_bench(argc - 1, argv + 1);
#endif
  std::string subs = "xfer";
#if BATON_BENCH_MODEL
  subs += "|model";
#endif
#if BATON_BENCH_SERVE
  subs += "|serve|report";
#endif
  return baton::make_error("usage: baton-bench ", subs, " [options] (see baton-bench SUBCOMMAND --help)");
}

int main(int argc, char** argv) { return baton::run_main("baton-bench", argc, argv, run); }
