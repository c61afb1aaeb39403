// The cuda_ipc transport: GPU memory of another process on the same host, opened through CUDA
// IPC handles and copied with cudaMemcpyAsync on a side stream. The newest batch on the stream is
// complete when the stream is idle; a batch gets an event only once another is queued behind it
// (recording an event per batch costs a single-range read about a tenth of its time).
#include <cuda.h>
#include <cuda_runtime.h>

#include <cstring>
#include <fstream>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "xfer/topology.h"
#include "xfer/transport.h"

namespace baton::xfer {
namespace {

std::string cuda_error(cudaError_t e) { return cudaGetErrorString(e); }

std::string host_identity() {
  std::ifstream f("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(f, id);
  return id;
}

class CudaIpcEndpoint : public RmaEndpoint {
 public:
  CudaIpcEndpoint() { cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking); }
  ~CudaIpcEndpoint() override {
    std::lock_guard lock(m_);
    if (stream_) cudaStreamSynchronize(stream_);
    for (auto& [id, b] : batches_)
      if (b.event) cudaEventDestroy(b.event);
    for (cudaEvent_t ev : spare_) cudaEventDestroy(ev);
    for (auto& [key, base] : opened_) cudaIpcCloseMemHandle(base);
    if (stream_) cudaStreamDestroy(stream_);
  }

  Status add_region(const MemoryDesc& remote) override {
    auto it = remote.keys.find("cuda_ipc");
    if (it == remote.keys.end() || !it->is_string()) return make_error("region ", remote.region, " has no CUDA IPC key");
    auto key = parse_json(it->get<std::string>(), "CUDA IPC key");
    if (!key.ok() || !key->is_object()) return make_error("region ", remote.region, ": bad CUDA IPC key");
    Remote r;
    r.handle_hex = key->value("handle", "");
    r.offset = key->value("offset", uint64_t{0});
    r.address = remote.address;
    r.length = remote.length;
    if (r.handle_hex.size() != 2 * sizeof(cudaIpcMemHandle_t)) return make_error("region ", remote.region, ": bad CUDA IPC key");
    std::lock_guard lock(m_);
    regions_[remote.region] = r;
    return {};
  }

  void remove_region(uint64_t region) override {
    std::lock_guard lock(m_);
    regions_.erase(region);
  }

  Result<uint64_t> start(const std::vector<RmaOp>& ops, bool write) override {
    std::lock_guard lock(m_);
    // The stream's newest batch is about to have company: mark where it ends.
    if (auto it = batches_.find(newest_); it != batches_.end() && !it->second.done && !it->second.event)
      BATON_RETURN_IF_ERROR(record_event(it->second));
    newest_ = 0;
    for (const RmaOp& op : ops) {
      auto it = regions_.find(op.remote_region);
      if (it == regions_.end()) return make_error("no CUDA IPC key for remote region ", op.remote_region);
      Remote& r = it->second;
      if (!r.base) {
        BATON_ASSIGN_OR_RETURN(r.base, open(r));
      }
      char* remote = r.base + r.offset + (op.remote_address - r.address);
      cudaError_t e = write ? cudaMemcpyAsync(remote, op.local, op.length, cudaMemcpyDefault, stream_)
                            : cudaMemcpyAsync(op.local, remote, op.length, cudaMemcpyDefault, stream_);
      if (e != cudaSuccess) return make_error("cudaMemcpyAsync: ", cuda_error(e));
    }
    const uint64_t handle = next_++;
    batches_[handle] = {};
    newest_ = handle;
    return handle;
  }

  TransferState poll(uint64_t handle, std::string* error) override {
    std::lock_guard lock(m_);
    auto it = batches_.find(handle);
    if (it == batches_.end()) {
      if (error) *error = "unknown transfer";
      return TransferState::kFailed;
    }
    Batch& b = it->second;
    if (b.done) return TransferState::kDone;
    // Without an event the batch is the newest on the stream: done when the stream is.
    cudaError_t e = b.event ? cudaEventQuery(b.event) : cudaStreamQuery(stream_);
    if (e == cudaErrorNotReady) return TransferState::kPending;
    if (e == cudaSuccess) {
      b.done = true;
      return TransferState::kDone;
    }
    if (error) *error = "CUDA copy failed: " + cuda_error(e);
    return TransferState::kFailed;
  }

  void release(uint64_t handle) override {
    std::lock_guard lock(m_);
    auto it = batches_.find(handle);
    if (it == batches_.end()) return;
    Batch& b = it->second;
    if (!b.done) {  // the copy may still read or write local memory
      if (b.event) {
        cudaEventSynchronize(b.event);
      } else {
        cudaStreamSynchronize(stream_);  // nothing is queued behind the newest batch
      }
    }
    if (b.event) spare_.push_back(b.event);
    if (newest_ == handle) newest_ = 0;
    batches_.erase(it);
  }

 private:
  struct Remote {
    std::string handle_hex;
    uint64_t offset = 0;   // of the region inside the exported allocation
    uint64_t address = 0;  // owner's address of the region
    uint64_t length = 0;
    char* base = nullptr;  // the opened allocation, once a transfer needed it
  };
  struct Batch {
    cudaEvent_t event = nullptr;  // recorded once a later batch was queued behind this one
    bool done = false;
  };

  Status record_event(Batch& b) {
    cudaError_t e = cudaSuccess;
    if (!spare_.empty()) {  // events are reused: creating one costs microseconds
      b.event = spare_.back();
      spare_.pop_back();
    } else {
      e = cudaEventCreateWithFlags(&b.event, cudaEventDisableTiming);
      if (e != cudaSuccess) b.event = nullptr;
    }
    if (e == cudaSuccess) e = cudaEventRecord(b.event, stream_);
    if (e != cudaSuccess) return make_error("cudaEventRecord: ", cuda_error(e));
    return {};
  }
  // Opens an exported allocation once per handle (CUDA refuses to open one twice).
  Result<char*> open(const Remote& r) {
    if (auto it = opened_.find(r.handle_hex); it != opened_.end()) return static_cast<char*>(it->second);
    BATON_ASSIGN_OR_RETURN(std::string raw, from_hex(r.handle_hex));
    cudaIpcMemHandle_t h;
    std::memcpy(&h, raw.data(), sizeof h);
    void* base = nullptr;
    cudaError_t e = cudaIpcOpenMemHandle(&base, h, cudaIpcMemLazyEnablePeerAccess);
    if (e != cudaSuccess) return make_error("cudaIpcOpenMemHandle: ", cuda_error(e));
    opened_[r.handle_hex] = base;
    return static_cast<char*>(base);
  }

  std::mutex m_;
  cudaStream_t stream_ = nullptr;
  std::unordered_map<uint64_t, Remote> regions_;
  std::unordered_map<std::string, void*> opened_;
  std::unordered_map<uint64_t, Batch> batches_;
  uint64_t newest_ = 0;  // the batch last queued on the stream, while it has no event (0: none)
  std::vector<cudaEvent_t> spare_;
  uint64_t next_ = 1;
};

class CudaIpcTransport : public RmaTransport {
 public:
  const char* name() const override { return "cuda_ipc"; }
  std::string address() const override { return host_identity(); }

  Result<std::string> register_region(uint64_t, void* addr, size_t len, MemoryKind kind) override {
    if (kind != MemoryKind::kCuda) return make_error("cuda_ipc registers GPU memory only");
    // The driver's cuMemGetAddressRange, looked up through the runtime so that baton does not
    // link libcuda.so (absent on CPU-only machines).
    using GetRange = CUresult (*)(CUdeviceptr*, size_t*, CUdeviceptr);
    static GetRange get_range = [] {
      void* fn = nullptr;
      cudaDriverEntryPointQueryResult q{};
      if (cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &fn, 12000, cudaEnableDefault, &q) != cudaSuccess)
        fn = nullptr;
      return reinterpret_cast<GetRange>(fn);
    }();
    if (!get_range) return make_error("cuda_ipc: the CUDA driver has no cuMemGetAddressRange");
    // The driver answers for the current device's context: switch to the memory's GPU (a process
    // with ranks on several GPUs registers each rank's pool from one thread).
    cudaPointerAttributes attr{};
    if (cudaPointerGetAttributes(&attr, addr) != cudaSuccess || attr.type != cudaMemoryTypeDevice) {
      cudaGetLastError();
      return make_error("cuda_ipc: ", len, " bytes at ", addr, " is not GPU memory");
    }
    int previous = 0;
    cudaGetDevice(&previous);
    cudaSetDevice(attr.device);
    struct Restore {
      int device;
      ~Restore() { cudaSetDevice(device); }
    } restore{previous};
    CUdeviceptr base = 0;
    size_t size = 0;
    if (get_range(&base, &size, reinterpret_cast<CUdeviceptr>(addr)) != CUDA_SUCCESS)
      return make_error("cuda_ipc: ", len, " bytes at ", addr, " is not cudaMalloc'd GPU memory");
    cudaIpcMemHandle_t h;
    cudaError_t e = cudaIpcGetMemHandle(&h, reinterpret_cast<void*>(base));
    if (e != cudaSuccess) return make_error("cudaIpcGetMemHandle: ", cuda_error(e));
    Json key = {{"handle", to_hex(&h, sizeof h)}, {"offset", reinterpret_cast<uint64_t>(addr) - base}};
    return key.dump();
  }
  void deregister_region(uint64_t) override {}

  Result<std::unique_ptr<RmaEndpoint>> connect(const std::string& peer_address) override {
    if (peer_address != host_identity()) return make_error("cuda_ipc needs both agents on one host");
    return std::unique_ptr<RmaEndpoint>(std::make_unique<CudaIpcEndpoint>());
  }

  // Host staging (a peer on another host reads GPU memory over TCP). With unified addressing
  // cudaMemcpyDefault finds each pointer's device; the copy returns once the bytes are there.
  Status copy_to_host(void* host, const void* src, size_t n) override {
    cudaError_t e = cudaMemcpy(host, src, n, cudaMemcpyDefault);
    if (e != cudaSuccess) return make_error("staging copy from the GPU: ", cuda_error(e));
    return {};
  }
  Status copy_from_host(void* dst, const void* host, size_t n) override {
    cudaError_t e = cudaMemcpy(dst, host, n, cudaMemcpyDefault);
    if (e != cudaSuccess) return make_error("staging copy to the GPU: ", cuda_error(e));
    return {};
  }
  Result<StagingBuffer> staging_buffer(size_t n) override {
    void* p = nullptr;
    cudaError_t e = cudaHostAlloc(&p, n, cudaHostAllocPortable);  // pinned: copies run at PCIe speed
    if (e != cudaSuccess) return make_error("cudaHostAlloc of ", n, " staging bytes: ", cuda_error(e));
    return StagingBuffer(static_cast<std::byte*>(p), [](std::byte* q) { cudaFreeHost(q); });
  }
};

}  // namespace

Result<std::unique_ptr<RmaTransport>> create_cuda_ipc_transport() {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) return make_error("no CUDA device (", cuda_error(e), ")");
  return std::unique_ptr<RmaTransport>(std::make_unique<CudaIpcTransport>());
}

}  // namespace baton::xfer

namespace baton::xfer {

Result<std::string> cuda_pci_bus_id(int device) {
  char id[32] = {};
  cudaError_t e = cudaDeviceGetPCIBusId(id, sizeof id, device);
  if (e != cudaSuccess) return make_error("CUDA device ", device, ": ", cudaGetErrorString(e));
  return std::string(id);
}

}  // namespace baton::xfer
