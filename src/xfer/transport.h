// One-sided (RMA) transports behind one interface (DESIGN.md section 2). The agent's control
// channel carries handshakes, descriptors and notifications; an RMA transport moves the bytes
// without the owner's CPU. The built-in TCP path (agent_serve.cpp, session.cpp) serves when no RMA transport can.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/result.h"
#include "xfer/types.h"

namespace baton::xfer {

// Host memory that GPU ranges are staged through; its deleter frees it as it was allocated.
using StagingBuffer = std::unique_ptr<std::byte[], std::function<void(std::byte*)>>;

struct RmaOp {
  void* local = nullptr;
  uint64_t remote_address = 0;
  uint64_t remote_region = 0;
  uint64_t length = 0;
  MemoryKind local_kind = MemoryKind::kHost;  // GPU ranges are never copied by the CPU
};

// A connection to one peer's RMA endpoint. Its owner (a Session) makes every call under the
// session's lock, one at a time, so an implementation needs no lock for its own state; what a
// transport's completion callbacks touch (on its progress thread) must still be safe on its own.
class RmaEndpoint {
 public:
  virtual ~RmaEndpoint() = default;
  // Learns a peer region's key (from its MemoryDesc.keys).
  virtual Status add_region(const MemoryDesc& remote) = 0;
  virtual void remove_region(uint64_t region) = 0;
  // Where the peer's region starts in this process when it is mapped here (plain copies reach
  // it), else nullptr; valid until remove_region(region) or the endpoint's destruction.
  virtual std::byte* mapped(uint64_t region) const {
    (void)region;
    return nullptr;
  }
  // Starts reads (write = false) or writes of every op; returns a handle for poll(), or kDone
  // when they finished inside start() (nothing to poll or release then).
  virtual Result<uint64_t> start(const std::vector<RmaOp>& ops, bool write) = 0;
  static constexpr uint64_t kDone = ~uint64_t{0};
  virtual TransferState poll(uint64_t handle, std::string* error) = 0;
  // Drives the transport from a waiting thread (lower latency than the background progress).
  virtual void progress() {}
  // Forgets a handle (after it finished, or when its waiter gave up).
  virtual void release(uint64_t handle) = 0;
};

class RmaTransport {
 public:
  virtual ~RmaTransport() = default;
  virtual const char* name() const = 0;
  // Makes [addr, addr+len) reachable by peers; returns the key blob (hex) peers need.
  virtual Result<std::string> register_region(uint64_t region, void* addr, size_t len, MemoryKind kind) = 0;
  virtual void deregister_region(uint64_t region) = 0;
  // Allocates n bytes that peers on this host can reach without a system call per transfer
  // (UCX maps it shared); registered as `region`. nullptr when the transport cannot.
  virtual Result<std::pair<void*, std::string>> allocate_region(uint64_t region, size_t n) {
    (void)region;
    (void)n;
    return make_error(name(), " cannot allocate shared regions");
  }
  // Whether register_region takes memory of this kind (UCX: GPU memory where it has CUDA).
  virtual bool registers(MemoryKind kind) const { return kind == MemoryKind::kHost; }
  virtual std::string address() const = 0;  // hex; peers connect with it
  virtual Result<std::unique_ptr<RmaEndpoint>> connect(const std::string& peer_address) = 0;

  // Host staging, for memory this transport registers that a peer can only reach over the
  // agent's TCP path ("transport": "tcp": GPU memory without UCX): copies between such memory
  // and host memory, and host buffers to stage through (pinned where that makes copies faster).
  virtual Status copy_to_host(void* host, const void* src, size_t n) {
    (void)host, (void)src, (void)n;
    return make_error(name(), " cannot copy its memory to the host");
  }
  virtual Status copy_from_host(void* dst, const void* host, size_t n) {
    (void)dst, (void)host, (void)n;
    return make_error(name(), " cannot copy host memory into its memory");
  }
  virtual Result<StagingBuffer> staging_buffer(size_t n) {
    return StagingBuffer(std::make_unique<std::byte[]>(n).release(), std::default_delete<std::byte[]>());
  }
};

// UCX (UCP RMA) on host and GPU memory: shared memory and cuda_ipc on one host, RDMA verbs
// (GPUDirect where the NIC and peer memory allow) where present, TCP (with cuda_copy for GPU
// memory) otherwise; UCX picks per peer and memory type.
struct UcxOptions {
  // False registers memory for remote reads only (UCP_MEM_MAP_PROT_REMOTE_READ): transports
  // that enforce memory protection (RDMA verbs) then refuse peers' puts.
  bool remote_writes = true;
  // UCX_NET_DEVICES for this agent alone ("mlx5_0:1,mlx5_1:1"); empty: UCX's default (all), or
  // the UCX_NET_DEVICES of the environment.
  std::string net_devices;
};
Result<std::unique_ptr<RmaTransport>> create_ucx_transport(const UcxOptions& options = {});
// CUDA IPC: GPU memory of another process on this host (cudaIpc handles, async copies).
Result<std::unique_ptr<RmaTransport>> create_cuda_ipc_transport();

}  // namespace baton::xfer
