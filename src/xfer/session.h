// Session: this agent's connection to one peer agent, made by Agent::connect and cached by it
// (agent.h describes the engine as a whole), and the range types it shares with its Agent:
// LocalRange (a range of the TCP path) and RangeTable (regions that copies in place may touch).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "xfer/socket.h"
#include "xfer/transport.h"
#include "xfer/types.h"

namespace baton::xfer {

class Agent;

// A range of this agent's memory in a transfer over the TCP path; GPU ranges are staged through
// host memory (an agent that moves GPU memory over TCP: Config::stages_gpu_memory).
struct LocalRange {
  std::byte* ptr;
  uint64_t length;
  bool gpu;
};

// Host regions that a copy in place may touch, published for lookups without a lock
// (read_section.h): an agent's own, and a session's peer regions mapped into this process.
// Immutable once published. It holds kMax regions; ranges of others take the locked path.
struct RangeTable {
  static constexpr size_t kMax = 8;
  struct Entry {
    uint64_t region;
    std::byte* base;
    uint64_t length;
  };
  size_t n = 0;
  Entry entries[kMax];
  // Where [offset, offset+len) of region is, or nullptr when the table does not hold it all.
  std::byte* find(uint64_t region, uint64_t offset, uint64_t len) const {
    for (size_t i = 0; i < n; ++i)
      if (entries[i].region == region)
        return offset <= entries[i].length && len <= entries[i].length - offset ? entries[i].base + offset : nullptr;
    return nullptr;
  }
};

class Session {
 public:
  ~Session();
  const std::string& peer() const { return peer_; }
  // "ucx" or "tcp": how bytes move on this session.
  const std::string& transport() const { return transport_; }
  std::vector<MemoryDesc> remote_regions() const;
  // Asks the peer for its current regions (after it registered more).
  Status refresh_regions();

  Result<TransferId> read(const std::vector<TransferOp>& ops);
  Result<TransferId> write(const std::vector<TransferOp>& ops);
  TransferState poll(TransferId id, std::string* error = nullptr);
  Status wait(TransferId id, std::chrono::milliseconds timeout);
  Status wait(TransferId id);  // the agent's default timeout
  Status notify(const std::string& message);
  // Presents a capability the peer granted (once per capability and session). If the session
  // does not know `region` yet, waits for the peer's answer that lists what it may now see.
  Status authorize(const std::string& capability, uint64_t region);

  // True once the connection failed; the agent builds a new session on the next connect().
  bool broken() const { return broken_.load(); }

 private:
  friend class Agent;
  struct Pending {
    TransferId id;
    bool is_read;
    std::vector<TransferOp> ops;  // a read's (coalesced) ops: where its data goes, looked up when it comes
  };
  struct Transfer {
    TransferState state = TransferState::kPending;
    std::string error;
    uint64_t rma_handle = 0;  // RMA transfers (UCX or CUDA IPC)
    bool on_cuda_ipc = false;  // rma_handle belongs to the cuda_ipc endpoint
    std::vector<uint64_t> local_regions;  // RMA transfers: the local regions they move bytes of
  };

  // A transfer the endpoint finished inside read()/write() (a copy from mapped shared memory or
  // through cross-memory attach)
  // keeps no record: its id carries this bit, and poll/wait answer "done" from the id alone.
  static constexpr TransferId kDoneAtStart = TransferId{1} << 63;

  Session(Agent& agent, std::string peer, Socket socket);
  Result<TransferId> start(const std::vector<TransferOp>& ops, bool is_read);
  // The batch as plain copies, without a lock, when every range is in this agent's host regions
  // and the peer's regions mapped here; false (nothing moved) when it is not.
  bool copy_in_place(const std::vector<TransferOp>& ops, bool is_read);
  // Republishes mapped_ from the host endpoint (under mutex_); null: no copies in place.
  void publish_mapped(bool any);
  void reader_loop();
  // Brings an RMA transfer's state up to date from its endpoint (under mutex_).
  void update(Transfer& t);
  // Returns once no RMA transfer of this session moves bytes of local `region`: true when each
  // completed; false when at `deadline` the session was failed instead. For deregister_memory.
  bool quiesce_local(uint64_t region, Clock::time_point deadline);
  void fail_all(const std::string& why);
  void set_regions(const Json& regions);

  Agent& agent_;
  std::string peer_;
  std::string transport_ = "tcp";
  Socket socket_;
  std::mutex send_mutex_;
  std::unique_ptr<RmaEndpoint> rma_;  // host memory (UCX)
  std::unique_ptr<RmaEndpoint> gpu_;  // GPU memory (cuda_ipc)
  RmaEndpoint* endpoint_of(const Transfer& t) const { return t.on_cuda_ipc ? gpu_.get() : rma_.get(); }

  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::map<uint64_t, MemoryDesc> regions_;
  // The peer's host regions mapped into this process (the UCX endpoint's shared memory), for
  // copy_in_place. Unpublished, and readers waited for, before a mapping goes away.
  std::atomic<const RangeTable*> mapped_{nullptr};
  std::deque<Pending> pending_;  // TCP requests in the order the peer answers them
  std::map<TransferId, Transfer> transfers_;
  TransferId next_id_ = 1;  // ids are per session (poll and wait take them on their session)
  // Host buffers that GPU ranges are staged through on the TCP path: stage_in_ belongs to the
  // reader thread (read answers), stage_out_ to whoever holds send_mutex_ (write data).
  StagingBuffer stage_in_, stage_out_;
  // When the reader thread last took bytes off the socket (Clock ticks): wait()'s timeout counts
  // from there, so a long answer that keeps coming is not a stall.
  std::atomic<Clock::rep> last_progress_{0};
  std::optional<std::string> regions_reply_;
  std::vector<std::string> presented_;  // capabilities this session has shown the peer (under mutex_)
  bool peer_writable_ = true;           // false: the peer refuses writes (remote_writes off)
  std::atomic<bool> broken_{false};
  std::thread reader_;
};

}  // namespace baton::xfer
