// The UCX transport: one UCP context and worker per agent, progressed by its own thread, RMA
// get/put with packed rkeys, on host and GPU memory. GPU memory is registered with its memory
// type (CUDA), so its rkey carries what each transport needs: an IPC handle for cuda_ipc on one
// host, a memory key of the NIC for RDMA verbs (GPUDirect where the NIC and peer memory allow),
// nothing for tcp, where UCX pipelines the bytes through its own cuda_copy staging. Gets name
// their local memory type, so that UCX does not look it up per request.
//
// Two same-host shortcuts, for host memory only, skip a UCX request per range:
// - Shared regions (Agent::allocate_memory) are mapped into the reader by their rkey
//   (ucp_rkey_ptr): a batch is a plain copy. The Session makes such copies itself, without its
//   lock, from the mappings mapped() reports (session.cpp, copy_in_place); start() copies the
//   batches it cannot (more regions than its table holds, mixed with CMA ranges).
// - Ordinary registered memory of a peer process on this host is read and written with cross
//   memory attach (process_vm_readv / writev), one system call per IOV_MAX ranges, from the
//   caller's thread. Debian's UCX 1.13 does not use its CMA transport for ucp_get/put here: it
//   emulates them with shared-memory messages served by the owner's progress thread, at a third
//   of the bandwidth (bench/RESULTS.md). The peer publishes its pid and a random cookie in its
//   address; connect() reads the cookie back through CMA before trusting the pid (a pid from
//   another pid namespace must not name some other process), and falls back to UCX when it cannot
//   (no permission to attach: Yama ptrace_scope, containers). BATON_XFER_NO_CMA=1 turns it off.
#include <ucp/api/ucp.h>

#include <poll.h>
#include <sys/uio.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>

#include "common/log.h"
#include "xfer/transport.h"

namespace baton::xfer {

namespace {

struct Batch {
  std::atomic<int> remaining{0};
  std::atomic<bool> failed{false};
  std::mutex m;
  std::string error;
};

// Each request holds its own reference to its batch, so a callback that runs after the
// endpoint is gone (cancelled on close) still finds live memory.
void on_done(void* request, ucs_status_t status, void* user_data) {
  auto* ref = static_cast<std::shared_ptr<Batch>*>(user_data);
  Batch* b = ref->get();
  if (status != UCS_OK) {
    std::lock_guard lock(b->m);
    if (b->error.empty()) b->error = std::string("UCX transfer failed: ") + ucs_status_string(status);
    b->failed = true;
  }
  b->remaining.fetch_sub(1);
  delete ref;
  ucp_request_free(request);
}

// The peer's process for cross-memory attach, or -1.
using CmaPid = pid_t;

// Moves ranges between this process and `pid` (write: local -> remote), IOV_MAX ranges a call.
Status cma_copy(CmaPid pid, std::vector<iovec>& local, std::vector<iovec>& remote, bool write) {
  for (size_t at = 0; at < local.size();) {
    const size_t n = std::min<size_t>(IOV_MAX, local.size() - at);
    size_t want = 0;
    for (size_t i = at; i < at + n; ++i) want += local[i].iov_len;
    const ssize_t got = write ? ::process_vm_writev(pid, &local[at], n, &remote[at], n, 0)
                              : ::process_vm_readv(pid, &local[at], n, &remote[at], n, 0);
    if (got < 0) return make_error("CMA ", write ? "write to" : "read from", " process ", pid, ": ", std::strerror(errno));
    if (size_t(got) != want)
      return make_error("CMA ", write ? "write to" : "read from", " process ", pid, " moved ", got, " of ", want,
                        " bytes (the peer's memory is gone)");
    at += n;
  }
  return {};
}

class UcxEndpoint : public RmaEndpoint {
 public:
  UcxEndpoint(ucp_worker_h worker, ucp_ep_h ep, CmaPid cma) : worker_(worker), ep_(ep), cma_(cma) {}
  ~UcxEndpoint() override {
    for (auto& [id, r] : remotes_) ucp_rkey_destroy(r.rkey);
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = UCP_EP_CLOSE_FLAG_FORCE;
    ucs_status_ptr_t r = ucp_ep_close_nbx(ep_, &p);
    if (UCS_PTR_IS_PTR(r)) {
      // Bounded: an unresponsive peer must not hang the caller (the request is then leaked).
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
      while (ucp_request_check_status(r) == UCS_INPROGRESS && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::microseconds(50));  // the progress thread drives it
      if (ucp_request_check_status(r) != UCS_INPROGRESS) ucp_request_free(r);
    }
  }

  Status add_region(const MemoryDesc& remote) override {
    auto it = remote.keys.find("ucx");
    if (it == remote.keys.end() || !it->is_string()) return make_error("region ", remote.region, " has no UCX key");
    BATON_ASSIGN_OR_RETURN(std::string blob, from_hex(it->get<std::string>()));
    ucp_rkey_h rkey;
    ucs_status_t st = ucp_ep_rkey_unpack(ep_, blob.data(), &rkey);
    if (st != UCS_OK) return make_error("cannot unpack UCX key of region ", remote.region, ": ", ucs_status_string(st));
    // Shared-memory regions (Agent::allocate_memory) are mapped into this process by the rkey:
    // their ranges move with a plain copy, without a UCX request per range.
    Remote r{rkey, {}, remote.kind == MemoryKind::kCuda};
    void* mapped = nullptr;
    if (!r.gpu && ucp_rkey_ptr(rkey, remote.address, &mapped) == UCS_OK && mapped)
      r.direct = {static_cast<std::byte*>(mapped), remote.address};
    if (auto old = remotes_.find(remote.region); old != remotes_.end()) ucp_rkey_destroy(old->second.rkey);
    remotes_[remote.region] = r;
    last_ = nullptr;
    return {};
  }

  void progress() override { ucp_worker_progress(worker_); }

  std::byte* mapped(uint64_t region) const override {
    auto it = remotes_.find(region);
    return it == remotes_.end() ? nullptr : it->second.direct.base;
  }

  void remove_region(uint64_t region) override {
    if (auto it = remotes_.find(region); it != remotes_.end()) {
      ucp_rkey_destroy(it->second.rkey);
      remotes_.erase(it);
    }
    last_ = nullptr;
  }

  Result<uint64_t> start(const std::vector<RmaOp>& ops, bool write) override {
    // Each op's region looked up once (reads mostly come from one region, batch after batch:
    // the last lookup is reused, within a batch and across them).
    resolved_.resize(ops.size());
    bool all_direct = !ops.empty(), gpu = false;
    for (size_t i = 0; i < ops.size(); ++i) {
      const uint64_t region = ops[i].remote_region;
      if (!last_ || region != last_region_) {
        auto it = remotes_.find(region);
        if (it == remotes_.end()) return make_error("no UCX key for remote region ", region);
        last_ = &it->second;
        last_region_ = region;
      }
      resolved_[i] = {last_->rkey, last_->direct.base ? &last_->direct : nullptr};
      all_direct = all_direct && last_->direct.base;
      gpu = gpu || last_->gpu || ops[i].local_kind == MemoryKind::kCuda;
    }
    if (!gpu && (all_direct || cma_ >= 0)) {
      // Every range in mapped shared memory (or reachable by CMA): copy now (under the session's
      // lock, so that the mapping cannot go away mid-copy) and hand back a handle that is already
      // complete.
      cma_local_.clear();
      cma_remote_.clear();
      for (size_t i = 0; i < ops.size(); ++i) {
        const RmaOp& op = ops[i];
        if (!resolved_[i].direct) {
          cma_local_.push_back({op.local, op.length});
          cma_remote_.push_back({reinterpret_cast<void*>(op.remote_address), op.length});
          continue;
        }
        std::byte* remote = resolved_[i].direct->base + (op.remote_address - resolved_[i].direct->address);
        if (write) {
          std::memcpy(remote, op.local, op.length);
        } else {
          std::memcpy(op.local, remote, op.length);
        }
      }
      if (!cma_local_.empty()) BATON_RETURN_IF_ERROR(cma_copy(cma_, cma_local_, cma_remote_, write));
      std::atomic_thread_fence(std::memory_order_release);
      return kDone;
    }
    auto batch = std::make_shared<Batch>();
    // A put completes when its local buffer may be reused, not when the peer has the bytes: a
    // write batch ends with an endpoint flush, which completes once every earlier put has
    // landed remotely.
    batch->remaining = static_cast<int>(ops.size()) + (write ? 1 : 0);
    uint64_t handle = next_handle_++;
    batches_[handle] = batch;
    for (size_t i = 0; i < ops.size(); ++i) {
      const RmaOp& op = ops[i];
      ucp_request_param_t p{};
      p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
      p.cb.send = on_done;
      auto* ref = new std::shared_ptr<Batch>(batch);
      p.user_data = ref;
      if (op.local_kind == MemoryKind::kCuda) {
        p.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMORY_TYPE;
        p.memory_type = UCS_MEMORY_TYPE_CUDA;
      }
      ucp_rkey_h rkey = resolved_[i].rkey;
      ucs_status_ptr_t r = write ? ucp_put_nbx(ep_, op.local, op.length, op.remote_address, rkey, &p)
                                 : ucp_get_nbx(ep_, op.local, op.length, op.remote_address, rkey, &p);
      settle(batch, ref, r, write ? "put" : "get");
    }
    if (write) {
      ucp_request_param_t p{};
      p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
      p.cb.send = on_done;
      auto* ref = new std::shared_ptr<Batch>(batch);
      p.user_data = ref;
      settle(batch, ref, ucp_ep_flush_nbx(ep_, &p), "flush");
    }
    return handle;
  }

  // After a non-blocking UCX call: nothing to wait for (done in place, or failed) settles the
  // request now; otherwise on_done will.
  static void settle(const std::shared_ptr<Batch>& batch, std::shared_ptr<Batch>* ref, ucs_status_ptr_t r,
                     const char* what) {
    if (r == nullptr || UCS_PTR_IS_ERR(r)) delete ref;  // no callback will come
    if (r == nullptr) {
      batch->remaining.fetch_sub(1);  // completed in place
    } else if (UCS_PTR_IS_ERR(r)) {
      std::lock_guard bl(batch->m);
      batch->error = std::string("UCX ") + what + " failed: " + ucs_status_string(UCS_PTR_STATUS(r));
      batch->failed = true;
      batch->remaining.fetch_sub(1);
    }
  }

  TransferState poll(uint64_t handle, std::string* error) override {
    if (handle == kDone) return TransferState::kDone;
    auto it = batches_.find(handle);
    if (it == batches_.end()) {
      if (error) *error = "unknown transfer";
      return TransferState::kFailed;
    }
    const std::shared_ptr<Batch>& b = it->second;
    if (b->remaining.load() > 0) return TransferState::kPending;
    if (b->failed) {
      std::lock_guard bl(b->m);
      if (error) *error = b->error;
      return TransferState::kFailed;
    }
    return TransferState::kDone;
  }

  void release(uint64_t handle) override {
    if (handle == kDone) return;
    auto it = batches_.find(handle);
    if (it == batches_.end()) return;
    batches_.erase(it);  // requests still in flight hold their own references
  }

 private:
  ucp_worker_h worker_;
  ucp_ep_h ep_;
  const CmaPid cma_;
  // The state below is the session's to guard (see RmaEndpoint); completion callbacks touch only
  // their Batch.
  std::vector<iovec> cma_local_, cma_remote_;  // start()'s CMA ranges
  // A batch copied in place by start(): handles from next_handle_ never reach it.
  struct Direct {
    std::byte* base;   // where the peer's region starts in this process
    uint64_t address;  // the peer's address of that start
  };
  struct Remote {
    ucp_rkey_h rkey;
    Direct direct;  // base null: not mapped here
    bool gpu;       // GPU memory of the peer: never mapped, never read through CMA
  };
  std::unordered_map<uint64_t, Remote> remotes_;  // the peer's regions: key, and mapping when shared
  const Remote* last_ = nullptr;                  // remotes_[last_region_]; null after any change
  uint64_t last_region_ = 0;
  struct Resolved {
    ucp_rkey_h rkey;
    const Direct* direct;  // null: not mapped here
  };
  std::vector<Resolved> resolved_;  // start()'s per-op lookups (kept to reuse its memory)
  std::unordered_map<uint64_t, std::shared_ptr<Batch>> batches_;
  uint64_t next_handle_ = 1;
};

class UcxTransport : public RmaTransport {
 public:
  explicit UcxTransport(UcxOptions options) : options_(std::move(options)) {}
  ~UcxTransport() override {
    stop_ = true;
    if (progress_.joinable()) progress_.join();
    for (auto& [id, memh] : memh_) ucp_mem_unmap(context_, memh);
    if (worker_) ucp_worker_destroy(worker_);
    if (context_) ucp_cleanup(context_);
  }

  Status init() {
    // UCX 1.23 turns its cuda_ipc gets off where it finds no NVLink (PCIe GPUs, or one GPU read
    // by two processes), and a get of GPU memory then falls back to emulation through host
    // memory: 0.75 GB/s for 1-16 MiB reads on one H100, against 84-869 GB/s with them on
    // (bench/RESULTS.md, "GPU memory through UCX"). On unless the user says otherwise.
    ::setenv("UCX_CUDA_IPC_ENABLE_GET_ZCOPY", "on", 0);
    ucp_config_t* config = nullptr;
    ucs_status_t st = ucp_config_read(nullptr, nullptr, &config);
    if (st != UCS_OK) return make_error("UCX config: ", ucs_status_string(st));
    if (!options_.net_devices.empty()) {
      st = ucp_config_modify(config, "NET_DEVICES", options_.net_devices.c_str());
      if (st != UCS_OK) {
        ucp_config_release(config);
        return make_error("UCX net devices '", options_.net_devices, "': ", ucs_status_string(st));
      }
    }
    ucp_params_t params{};
    params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
    params.features = UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP;
    params.mt_workers_shared = 1;
    st = ucp_init(&params, config, &context_);
    ucp_config_release(config);
    if (st != UCS_OK) return make_error("UCX init: ", ucs_status_string(st));
    // GPU memory is registered only where UCX found a CUDA transport (its cuda module loaded:
    // a GPU driver is present).
    ucp_context_attr_t attr{};
    attr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
    cuda_ = ucp_context_query(context_, &attr) == UCS_OK && (attr.memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA));
    ucp_worker_params_t wp{};
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wp.thread_mode = UCS_THREAD_MODE_MULTI;
    st = ucp_worker_create(context_, &wp, &worker_);
    if (st != UCS_OK) return make_error("UCX worker: ", ucs_status_string(st));
    ucp_address_t* addr = nullptr;
    size_t len = 0;
    st = ucp_worker_get_address(worker_, &addr, &len);
    if (st != UCS_OK) return make_error("UCX address: ", ucs_status_string(st));
    address_ = to_hex(addr, len);
    ucp_worker_release_address(worker_, addr);
    // ";cma=PID:COOKIE_ADDRESS:COOKIE": what a same-host peer needs to check that PID is us.
    std::random_device rd;
    for (auto& b : cookie_) b = static_cast<uint8_t>(rd());
    address_ += ";cma=" + std::to_string(::getpid()) + ":" + std::to_string(reinterpret_cast<uintptr_t>(cookie_.data())) +
                ":" + to_hex(cookie_.data(), cookie_.size());
    // Transports without hardware RMA (UCX over TCP) need the target to progress: one thread
    // progresses this worker for every endpoint and every served region.
    int efd = -1;
    if (ucp_worker_get_efd(worker_, &efd) != UCS_OK) efd = -1;
    progress_ = std::thread([this, efd] {
      // Event-driven: sleep on the worker's event fd until UCX has work (a peer's request to
      // serve, a completion), so the owner answers at once without burning a core.
      while (!stop_) {
        while (ucp_worker_progress(worker_) != 0) {
        }
        if (efd < 0) {
          std::this_thread::sleep_for(std::chrono::microseconds(50));
          continue;
        }
        ucs_status_t st = ucp_worker_arm(worker_);
        if (st == UCS_ERR_BUSY) continue;
        pollfd p{efd, POLLIN, 0};
        ::poll(&p, 1, 5);  // bounded, so stop_ is seen
      }
    });
    return {};
  }

  const char* name() const override { return "ucx"; }
  bool registers(MemoryKind kind) const override { return kind == MemoryKind::kHost || cuda_; }
  std::string address() const override { return address_; }

  // Packs the key peers need for memh and keeps memh under `region`.
  Result<std::string> adopt(uint64_t region, ucp_mem_h memh) {
    void* rkey_buf = nullptr;
    size_t rkey_len = 0;
    ucs_status_t st = ucp_rkey_pack(context_, memh, &rkey_buf, &rkey_len);
    if (st != UCS_OK) {
      ucp_mem_unmap(context_, memh);
      return make_error("UCX rkey pack: ", ucs_status_string(st));
    }
    std::string key = to_hex(rkey_buf, rkey_len);
    ucp_rkey_buffer_release(rkey_buf);
    std::lock_guard lock(m_);
    memh_[region] = memh;
    return key;
  }

  Result<std::string> register_region(uint64_t region, void* addr, size_t len, MemoryKind kind) override {
    if (!registers(kind)) return make_error("UCX has no CUDA transport here (no GPU driver, or a UCX without CUDA)");
    ucp_mem_map_params_t mp{};
    mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_PROT |
                    UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
    mp.memory_type = kind == MemoryKind::kCuda ? UCS_MEMORY_TYPE_CUDA : UCS_MEMORY_TYPE_HOST;
    mp.prot = prot();
    mp.address = addr;
    mp.length = len;
    ucp_mem_h memh;
    ucs_status_t st = ucp_mem_map(context_, &mp, &memh);
    if (st != UCS_OK) return make_error("UCX cannot register ", len, " bytes: ", ucs_status_string(st));
    BATON_ASSIGN_OR_RETURN(std::string key, adopt(region, memh));
    return key;
  }

  Result<std::pair<void*, std::string>> allocate_region(uint64_t region, size_t n) override {
    ucp_mem_map_params_t mp{};
    mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_FLAGS |
                    UCP_MEM_MAP_PARAM_FIELD_PROT;
    mp.prot = prot();
    mp.address = nullptr;
    mp.length = n;
    mp.flags = UCP_MEM_MAP_ALLOCATE;
    ucp_mem_h memh;
    ucs_status_t st = ucp_mem_map(context_, &mp, &memh);
    if (st != UCS_OK) return make_error("UCX cannot allocate ", n, " bytes: ", ucs_status_string(st));
    ucp_mem_attr_t attr{};
    attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS;
    ucp_mem_query(memh, &attr);
    BATON_ASSIGN_OR_RETURN(std::string key, adopt(region, memh));
    return std::make_pair(attr.address, key);
  }

  void deregister_region(uint64_t region) override {
    std::lock_guard lock(m_);
    if (auto it = memh_.find(region); it != memh_.end()) {
      ucp_mem_unmap(context_, it->second);
      memh_.erase(it);
    }
  }

  // The peer's pid when its address carries CMA details and its cookie reads back through CMA.
  static CmaPid probe_cma(const std::string& details) {
    if (const char* e = std::getenv("BATON_XFER_NO_CMA"); e && std::string(e) == "1") return -1;
    unsigned long long pid = 0, at = 0;
    char hex[2 * kCookie + 1] = {};
    if (std::sscanf(details.c_str(), "%llu:%llu:%32[0-9a-f]", &pid, &at, hex) != 3 || pid == 0 || pid > INT_MAX)
      return -1;
    Result<std::string> want = from_hex(hex);
    std::array<uint8_t, kCookie> got{};
    iovec l{got.data(), got.size()}, r{reinterpret_cast<void*>(at), got.size()};
    if (!want.ok() || want->size() != kCookie) return -1;
    const ssize_t n = ::process_vm_readv(static_cast<pid_t>(pid), &l, 1, &r, 1, 0);
    if (n != ssize_t(kCookie) || std::memcmp(got.data(), want->data(), kCookie) != 0) {
      log::debug("UCX endpoint: no cross-memory attach to process ", pid, " (",
                 n < 0 ? std::strerror(errno) : "another process has that pid here", "); ordinary memory goes through UCX");
      return -1;
    }
    return static_cast<CmaPid>(pid);
  }

  Result<std::unique_ptr<RmaEndpoint>> connect(const std::string& peer_address) override {
    const size_t semi = peer_address.find(';');
    const CmaPid cma = semi == std::string::npos || peer_address.compare(semi, 5, ";cma=") != 0
                           ? -1
                           : probe_cma(peer_address.substr(semi + 5));
    BATON_ASSIGN_OR_RETURN(std::string blob, from_hex(peer_address.substr(0, semi)));
    ucp_ep_params_t ep{};
    ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
    ep.address = reinterpret_cast<const ucp_address_t*>(blob.data());
    // Shared-memory transports cannot report peer failure; the control connection does.
    ep.err_mode = UCP_ERR_HANDLING_MODE_NONE;
    ucp_ep_h h;
    ucs_status_t st = ucp_ep_create(worker_, &ep, &h);
    if (st != UCS_OK) return make_error("UCX endpoint: ", ucs_status_string(st));
    return std::unique_ptr<RmaEndpoint>(std::make_unique<UcxEndpoint>(worker_, h, cma));
  }

 private:
  unsigned prot() const {
    return UCP_MEM_MAP_PROT_LOCAL_READ | UCP_MEM_MAP_PROT_LOCAL_WRITE | UCP_MEM_MAP_PROT_REMOTE_READ |
           (options_.remote_writes ? unsigned{UCP_MEM_MAP_PROT_REMOTE_WRITE} : 0u);
  }

  const UcxOptions options_;
  bool cuda_ = false;  // GPU memory registers (UCX has a CUDA memory type here)
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  std::string address_;
  static constexpr size_t kCookie = 16;
  std::array<uint8_t, kCookie> cookie_{};
  std::mutex m_;
  std::unordered_map<uint64_t, ucp_mem_h> memh_;
  std::atomic<bool> stop_{false};
  std::thread progress_;
};

}  // namespace

Result<std::unique_ptr<RmaTransport>> create_ucx_transport(const UcxOptions& options) {
  auto t = std::make_unique<UcxTransport>(options);
  BATON_RETURN_IF_ERROR(t->init());
  return std::unique_ptr<RmaTransport>(std::move(t));
}

}  // namespace baton::xfer
