// Test peer for the transfer engine: registers a buffer filled with a known pattern, prints
// {"agent": AgentDesc, "region": MemoryDesc} on one line, then serves until told "exit" by a
// notification (or killed). With --echo it answers each notification "<msg>" with "ack:<msg>"
// through a session back to the sender given in the message ("name host port").
#include <cstdio>
#include <cstring>
#include <vector>

#include "common/cli.h"
#include "xfer/agent.h"
#include "xfer/pattern.h"
#if BATON_HAS_CUDA
#include <cuda_runtime.h>
#endif

using namespace baton;

int main(int argc, char** argv) {
  size_t bytes = 64 << 20;
  std::string token, transports = "ucx,tcp", name = "peer";
  int64_t seed = 1;
  bool cuda = false;
  ArgParser args("xfer_peer", "transfer engine test peer");
  args.add({"--bytes"}, &bytes, "region size");
  args.add({"--token"}, &token, "deployment token");
  args.add({"--transports"}, &transports, "ucx,tcp, ucx-only or tcp");
  args.add({"--name"}, &name, "agent name");
  args.add({"--seed"}, &seed, "pattern seed");
  args.add_flag({"--cuda"}, &cuda, "register GPU memory holding the pattern (cuda_ipc and UCX)");
  if (auto s = args.parse(argc, argv); !s.ok()) {
    std::fprintf(stderr, "xfer_peer: %s\n", s.message().c_str());
    return 1;
  }
  xfer::Agent::Config c;
  c.name = name;
  c.token = token;
  // "tcp"; "ucx-only" (UCX moves host and GPU memory); otherwise the default set.
  c.transports = *xfer::Agent::Config::transports_named(transports == "tcp"        ? "tcp"
                                                        : transports == "ucx-only" ? "ucx"
                                                                                   : "auto");
  auto agent = xfer::Agent::create(c);
  if (!agent.ok()) {
    std::fprintf(stderr, "xfer_peer: %s\n", agent.error().c_str());
    return 1;
  }
  std::vector<uint64_t> buf = xfer::testing::pattern(bytes, seed);
  Result<xfer::MemoryDesc> desc = Error{"no CUDA in this build"};
  void* gpu = nullptr;
  if (cuda) {
#if BATON_HAS_CUDA
    if (cudaMalloc(&gpu, bytes) == cudaSuccess && cudaMemcpy(gpu, buf.data(), bytes, cudaMemcpyHostToDevice) == cudaSuccess)
      desc = (*agent)->register_memory(gpu, bytes, xfer::MemoryKind::kCuda);
#endif
  } else {
    desc = (*agent)->register_memory(buf.data(), buf.size() * 8);
  }
  if (!desc.ok()) {
    std::fprintf(stderr, "xfer_peer: %s\n", desc.error().c_str());
    return 1;
  }
  Json out = {{"agent", (*agent)->describe().to_json()}, {"region", desc->to_json()}};
  std::printf("%s\n", out.dump().c_str());
  std::fflush(stdout);
  for (;;) {
    auto n = (*agent)->next_notification(std::chrono::seconds(3600));
    if (n && n->second == "exit") return 0;
  }
}
