// The transfer engine's entry point: one Agent per TP rank (DESIGN.md section 2).
//
//   Agent::create({name, host, port, token})      listens for peers on its control port
//   register_memory(ptr, bytes) -> MemoryDesc      grants peers access to exactly that range
//   connect(peer AgentDesc) -> Session             one handshake per peer, cached and reused
//   Session::read/write(batch) -> TransferId       one-sided: the owner's threads do no work
//   Session::wait(id, timeout), poll(id)           completion; a dead or stalled peer fails
//                                                  the transfer within the timeout (counted
//                                                  from the last bytes it sent, so a long read
//                                                  that keeps arriving is not a stall)
//   Session::notify(bytes)                         delivered to the peer after every transfer
//                                                  issued before it has completed
//
// Every access is checked against the owner's registered regions: a peer can touch only what
// it was granted, and never after deregister_memory() returns (a read whose answer is still on its
// way over TCP when its destination is deregistered fails; its bytes are dropped). Batches whose
// ranges all lie in shared regions (allocate_memory) of two agents on one host are plain copies
// made inside read()/write() without a lock (read_section.h): deregistering or revoking a region
// unpublishes it and then waits for the copies that may be using it.
//
// Who may connect: with a deployment token set, only peers that present it (trusted: they see
// every region). Without one, only peers that present a capability: an unguessable secret the
// owner made with grant() for the ranges of one transfer and handed out of band (a prefill puts
// it in kv_transfer_params). Such a peer sees only the regions its capabilities name, and the
// owner serves it (TCP path) only ranges inside a live grant; revoke() ends a grant. A peer with
// neither is refused before anything is revealed. Hellos are taken by the accept thread with a
// short deadline, at most kMaxUnauthenticated at a time (a new one closes the oldest), and a connection gets its own
// thread only once admitted. Where bytes move one-sided (UCX rkeys, cuda_ipc handles), the owner's CPU sees no request:
// a peer holding a region's key can reach the whole region, so a capability limits one-sided transfers to the regions
// it names, not to its ranges (README, "Reliability and access control"). With remote_writes off, the agent refuses
// every write and registers its memory with UCX for remote reads only. Bytes move over UCX when both sides have it
// (shared memory on one host, RDMA where present), else over the control connection (TCP).
// GPU memory is registered with UCX (memory type CUDA) and with cuda_ipc: it moves by cuda_ipc
// between agents on one host, else by UCX (RDMA verbs with GPUDirect, or tcp with UCX's own
// cuda_copy pipelining), GPU memory to GPU memory with no staging of ours. Only an agent told to
// use TCP alone (Config::transports) stages GPU memory through pinned host buffers.
// All methods are thread-safe. BATON_XFER_NO_UCX=1 in the environment disables UCX.
//
// Known limit: when a UCX transfer times out (a stalled owner), its session is closed, but a
// late reply may still land in the local destination once the owner resumes; destinations must
// stay allocated (as a KV pool does) while the agent lives. New sessions use UCX as before
// (XferDeregisterTest checks it). deregister_memory() waits for the RMA transfers that move the region's
// bytes; those that do not finish within the timeout fail with their session, and it returns an
// error saying that the memory must then be kept until the agent is destroyed.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "xfer/session.h"
#include "xfer/socket.h"
#include "xfer/transport.h"
#include "xfer/types.h"

namespace baton::xfer {

class Agent {
 public:
  struct Config {
    std::string name;
    std::string host = "127.0.0.1";  // control address peers connect to
    int port = 0;                    // 0: any free port
    std::string token;               // deployment token; empty: none required
    // How bytes may move: "ucx" (host and GPU memory), "cuda_ipc" (GPU memory on one host) and
    // "tcp" (host memory where UCX cannot serve a peer). Without "tcp", an agent without UCX is
    // not created, a session UCX cannot serve is not made, and a transfer that would need TCP is
    // refused (the control connection is TCP regardless). GPU memory crosses TCP, staged through
    // host buffers, only with "tcp" and without "ucx" ("transport": "tcp").
    std::vector<std::string> transports = {"ucx", "cuda_ipc", "tcp"};
    bool allows(std::string_view transport) const {
      return std::find(transports.begin(), transports.end(), transport) != transports.end();
    }
    bool tcp_allowed() const { return allows("tcp"); }
    bool stages_gpu_memory() const { return tcp_allowed() && !allows("ucx"); }
    // The transports of a named choice (--kv-transfer-config's and baton-bench's "transport"):
    // auto (the default set), ucx (UCX alone, GPU memory too), cuda_ipc (cuda_ipc, and TCP for
    // host memory) and tcp (TCP alone: GPU memory staged through host buffers).
    static Result<std::vector<std::string>> transports_named(std::string_view name);
    // UCX_NET_DEVICES for this agent (a TP rank's NICs, nearest its GPU); empty: UCX's choice.
    std::string ucx_net_devices;
    std::chrono::milliseconds timeout{10000};  // transfers and handshakes
    // A connection that has not sent a complete hello by then is closed.
    std::chrono::milliseconds hello_timeout{2000};
    // A session admitted by capabilities that have all been revoked is closed after this long idle.
    std::chrono::milliseconds capability_session_idle{30000};
    // False: peers may only read this agent's memory (KV pools): writes are refused.
    bool remote_writes = true;
    // Makes the cuda_ipc transport; unset: cuda_ipc where the build and machine have CUDA. (Tests
    // stand in a host-memory double to run the staged TCP path without a GPU.)
    std::function<Result<std::unique_ptr<RmaTransport>>()> gpu_transport;
  };

  static Result<std::unique_ptr<Agent>> create(Config config);
  ~Agent();

  Result<MemoryDesc> register_memory(void* ptr, size_t n_bytes, MemoryKind kind = MemoryKind::kHost, int device = 0);
  // Allocates and registers n_bytes of host memory that same-host peers read by plain copies
  // (UCX shared memory), falling back to ordinary memory. The agent owns it: it is freed when
  // the region is deregistered or the agent is destroyed. Use it for KV pools.
  Result<std::pair<void*, MemoryDesc>> allocate_memory(size_t n_bytes);
  // Waits for reads being served from the region, then revokes it; peers are told.
  Status deregister_memory(uint64_t region);
  std::vector<MemoryDesc> regions() const;

  AgentDesc describe() const;
  // `capability`: one the peer granted, presented in the hello of a new session (on a session
  // already open, Session::authorize presents it).
  Result<std::shared_ptr<Session>> connect(const AgentDesc& peer, const std::string& capability = "");

  // Lets peers that present `capability` (new_capability()) open a session and read `ranges`
  // of this agent's regions, until revoke(). Granting the same capability again adds ranges.
  void grant(const std::string& capability, const std::vector<GrantRange>& ranges);
  void revoke(const std::string& capability);

  // Connections waiting for their hello at most; a new one closes the oldest.
  static constexpr size_t kMaxUnauthenticated = 64;
  // Sessions of peers without the token (admitted by a capability) at most; more are refused.
  static constexpr size_t kMaxCapabilitySessions = 256;
  struct AdmissionStats {
    uint64_t admitted = 0;
    uint64_t refused = 0;        // a bad hello: wrong token, no live capability, bad version
    uint64_t timed_out = 0;      // no complete hello within hello_timeout
    uint64_t overflowed = 0;     // closed unheard: kMaxUnauthenticated newer ones were waiting
    uint64_t accept_errors = 0;  // accept() failed (out of file descriptors)
  };
  AdmissionStats admission_stats() const;
  // Threads serving admitted peers now (one each).
  size_t served_connections() const;

  // Messages peers sent with Session::notify. The handler runs on a connection thread.
  void set_notification_handler(std::function<void(const std::string& peer, const std::string& message)> handler);
  std::optional<std::pair<std::string, std::string>> next_notification(std::chrono::milliseconds timeout);

  const Config& config() const { return config_; }
  RmaTransport* rma() const { return rma_.get(); }

 private:
  friend class Session;
  struct Region {
    std::byte* ptr = nullptr;
    size_t length = 0;
    MemoryDesc desc;
    std::shared_ptr<void> owned;  // memory the agent allocated (fallback path)
  };
  explicit Agent(Config config) : config_(std::move(config)) {}
  // One admitted peer connection. Its thread serves requests; deregister_memory() also sends
  // on it, so sends take send_mutex.
  struct Served {
    Socket socket;
    std::string peer;
    bool trusted = false;  // presented the deployment token
    std::mutex send_mutex;
    std::vector<std::string> capabilities;  // presented (under send_mutex: deregister reads them)
    std::thread thread;
    StagingBuffer stage;  // the serving thread's buffer for staging GPU ranges
  };
  struct Hello;  // a connection waiting for its hello (accept thread)
  void accept_loop();
  // A complete hello: admits the peer (a serving thread) or refuses it; closes what it refuses.
  void admit(Socket socket, const std::string& payload);
  void serve(Served& conn);
  Json regions_json() const;
  // The regions `conn` may see (all when trusted; else those its live capabilities name).
  Json regions_json(const Served& conn) const;
  // Whether `conn` may read [offset, offset+len) of region.
  bool granted(const Served& conn, uint64_t region, uint64_t offset, uint64_t len) const;
  bool live(const std::string& capability) const;  // granted and not revoked
  void tally(uint64_t AdmissionStats::*event);     // counts one admission event
  // Validates [offset, offset+len) of a region; returns its memory (and, if asked, its kind) or
  // an error.
  Result<std::byte*> locate(uint64_t region, uint64_t offset, uint64_t len, MemoryKind* kind = nullptr) const;
  void deliver(const std::string& peer, std::string message);
  // Republishes host_table_ from regions_ (under regions_mutex_, exclusive) and waits for the
  // copies that may still use the old one.
  void publish_host_table();

  Config config_;
  int port_ = 0;
  Socket listener_;
  std::thread accept_thread_;
  std::unique_ptr<RmaTransport> rma_;  // host and GPU memory: UCX
  std::unique_ptr<RmaTransport> gpu_;  // GPU memory: cuda_ipc (CUDA builds with a device)

  mutable std::shared_mutex regions_mutex_;  // shared while serving, exclusive to deregister
  std::map<uint64_t, Region> regions_;
  uint64_t next_region_ = 1;
  std::atomic<const RangeTable*> host_table_{nullptr};  // regions_'s host memory, for copy_in_place

  std::mutex sessions_mutex_;
  std::map<std::string, std::shared_ptr<Session>> sessions_;
  std::map<std::string, std::shared_ptr<std::mutex>> connect_gates_;  // held while a handshake runs

  // capability -> region -> merged ranges [start, end)
  using Grant = std::map<uint64_t, std::map<uint64_t, uint64_t>>;
  mutable std::mutex grants_mutex_;
  std::map<std::string, Grant> grants_;

  mutable std::mutex serve_mutex_;
  std::vector<std::unique_ptr<Served>> served_;
  bool stopping_ = false;
  int wake_fd_ = -1;  // eventfd: wakes the accept thread to stop
  mutable std::mutex stats_mutex_;
  AdmissionStats admission_;

  std::mutex notify_mutex_;
  std::condition_variable notify_cv_;
  std::deque<std::pair<std::string, std::string>> notifications_;
  std::function<void(const std::string&, const std::string&)> notify_handler_;
};

}  // namespace baton::xfer
