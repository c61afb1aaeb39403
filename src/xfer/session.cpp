// The connecting side: Agent::connect (the handshake that makes a Session) and the Session's
// transfers: regions, read/write (copies in place, RMA or the TCP path), the reader thread that
// takes the peer's answers, completion (poll, wait) and notify.
#include "xfer/session.h"

#include <sys/uio.h>

#include <algorithm>
#include <array>
#include <cstring>

#include "common/log.h"
#include "xfer/agent.h"
#include "xfer/agent_wire.h"
#include "xfer/read_section.h"

namespace baton::xfer {

using detail::drain;
using detail::kProtocolVersion;
using detail::pack_ops;
using detail::recv_ranges;
using detail::republish;
using detail::send_ranges;

Result<std::shared_ptr<Session>> Agent::connect(const AgentDesc& peer, const std::string& capability) {
  auto cached = [&]() -> std::shared_ptr<Session> {  // under sessions_mutex_
    auto it = sessions_.find(peer.name);
    if (it == sessions_.end()) return nullptr;
    if (!it->second->broken()) return it->second;
    sessions_.erase(it);
    return nullptr;
  };
  // One handshake at a time per peer: callers that come meanwhile take the session it makes,
  // rather than each making one and caching it over the others' (still in use, then closed).
  std::shared_ptr<std::mutex> gate;
  {
    std::lock_guard lock(sessions_mutex_);
    if (auto s = cached()) return s;
    std::shared_ptr<std::mutex>& g = connect_gates_[peer.name];
    if (!g) g = std::make_shared<std::mutex>();
    gate = g;
  }
  std::lock_guard connecting(*gate);
  {
    std::lock_guard lock(sessions_mutex_);
    if (auto s = cached()) return s;
  }
  BATON_ASSIGN_OR_RETURN(Socket s, Socket::connect(peer.host, peer.port, config_.timeout));
  Json hello = {{"agent", config_.name}, {"token", config_.token}, {"version", kProtocolVersion}};
  if (!capability.empty()) hello["capability"] = capability;
  BATON_RETURN_IF_ERROR(send_frame(s, MsgType::kHello, 0, hello.dump()));
  BATON_RETURN_IF_ERROR(s.set_recv_timeout(config_.timeout));
  auto h = recv_header(s);
  if (!h.ok()) return make_error("handshake with ", peer.name, " at ", peer.host, ":", peer.port, " failed: ", h.error());
  BATON_ASSIGN_OR_RETURN(std::string payload, recv_payload(s, *h));
  if (h->type == MsgType::kRefused) return make_error("peer ", peer.name, " refused the session: ", payload);
  if (h->type != MsgType::kWelcome) return make_error("peer ", peer.name, " answered the handshake with message ", static_cast<int>(h->type));
  BATON_ASSIGN_OR_RETURN(Json welcome, parse_json(payload, "welcome"));
  if (!welcome.is_object()) return make_error("peer ", peer.name, " answered the handshake with a malformed welcome");
  BATON_RETURN_IF_ERROR(s.set_recv_timeout(std::chrono::milliseconds(0)));

  const std::string name = welcome.contains("agent") && welcome["agent"].is_string() ? welcome["agent"].get<std::string>()
                                                                                      : peer.name;
  std::shared_ptr<Session> session(new Session(*this, name, std::move(s)));
  if (!capability.empty()) session->presented_.push_back(capability);
  session->peer_writable_ =
      welcome.contains("writable") && welcome["writable"].is_boolean() && welcome["writable"].get<bool>();
  if (rma_ && welcome.contains(rma_->name()) && welcome[rma_->name()].is_string()) {
    auto ep = rma_->connect(welcome[rma_->name()].get<std::string>());
    if (ep.ok()) {
      session->rma_ = std::move(*ep);
      session->transport_ = rma_->name();
    } else {
      log::warn("session to ", peer.name, ": ", ep.error(), "; using TCP");
    }
  }
  if (!session->rma_ && !config_.tcp_allowed())
    return make_error("session to ", peer.name, ": UCX cannot reach it (",
                      !rma_                                           ? "UCX is off here"
                      : !welcome.contains(rma_->name())               ? "the peer has no UCX"
                                                                      : "no UCX endpoint",
                      ") and TCP is not allowed");
  if (gpu_ && config_.allows(gpu_->name()) &&
      welcome.contains(gpu_->name()) && welcome[gpu_->name()].is_string()) {
    auto ep = gpu_->connect(welcome[gpu_->name()].get<std::string>());
    if (ep.ok()) {
      session->gpu_ = std::move(*ep);
    } else {
      log::info("session to ", peer.name, ": ", ep.error(), "; its GPU memory moves ",
                config_.stages_gpu_memory() ? "over TCP, staged through host memory" : "by UCX");
    }
  }
  session->set_regions(welcome.value("regions", Json::array()));
  session->reader_ = std::thread([p = session.get()] { p->reader_loop(); });
  std::lock_guard lock(sessions_mutex_);
  sessions_[peer.name] = session;
  return session;
}

// ---- Session ---------------------------------------------------------------------------------

Session::Session(Agent& agent, std::string peer, Socket socket)
    : agent_(agent), peer_(std::move(peer)), socket_(std::move(socket)) {}

Session::~Session() {
  // What was sent must reach the peer: closing a socket with bytes still unread resets the
  // connection, and the peer then drops frames it had not read yet (a release notification, say).
  // So half-close, and let the reader take what the peer still sends until it closes its end.
  if (!broken_ && reader_.joinable()) {
    socket_.shutdown_write();
    std::unique_lock lock(mutex_);
    cv_.wait_for(lock, std::min<std::chrono::milliseconds>(agent_.config_.timeout, std::chrono::seconds(2)),
                 [&] { return broken_.load(); });
  }
  broken_ = true;
  socket_.shutdown();
  if (reader_.joinable()) reader_.join();
  delete mapped_.load();  // nobody holds the session: no copy in place can be using it
}

void Session::set_regions(const Json& regions) {
  std::map<uint64_t, MemoryDesc> next;
  for (const auto& j : regions) {
    auto d = MemoryDesc::from_json(j);
    if (d.ok()) next[d->region] = *d;
  }
  std::lock_guard lock(mutex_);
  publish_mapped(false);  // no copies in place while mappings change
  // Host regions are known to UCX; GPU regions to cuda_ipc and UCX (each takes its own key).
  auto endpoints = [&](const MemoryDesc& d) {
    return std::array<RmaEndpoint*, 2>{rma_.get(), d.kind == MemoryKind::kCuda ? gpu_.get() : nullptr};
  };
  for (const auto& [id, d] : regions_)
    if (!next.count(id))
      for (RmaEndpoint* ep : endpoints(d))
        if (ep) ep->remove_region(id);
  for (const auto& [id, d] : next)
    if (!regions_.count(id))
      for (RmaEndpoint* ep : endpoints(d))
        if (ep) (void)ep->add_region(d);
  regions_ = std::move(next);
  publish_mapped(true);
  cv_.notify_all();  // authorize() may wait for a region
}

void Session::publish_mapped(bool any) {
  std::unique_ptr<RangeTable> t;
  if (any && rma_ && !broken_) {
    t = std::make_unique<RangeTable>();
    for (const auto& [id, d] : regions_)
      if (d.kind != MemoryKind::kCuda && t->n < RangeTable::kMax)
        if (std::byte* base = rma_->mapped(id)) t->entries[t->n++] = {id, base, d.length};
  }
  republish(mapped_, t.release());
}

std::vector<MemoryDesc> Session::remote_regions() const {
  std::lock_guard lock(mutex_);
  std::vector<MemoryDesc> out;
  for (const auto& [id, d] : regions_) out.push_back(d);
  return out;
}

Status Session::refresh_regions() {
  if (broken_) return make_error("session to ", peer_, " is broken");
  {
    std::lock_guard lock(mutex_);
    regions_reply_.reset();
  }
  {
    std::lock_guard lock(send_mutex_);
    // Id 1: the answer comes back with it (id 0 marks the peer's own announcements).
    BATON_RETURN_IF_ERROR(send_frame(socket_, MsgType::kRegionsRequest, 1, ""));
  }
  std::unique_lock lock(mutex_);
  if (!cv_.wait_for(lock, agent_.config_.timeout, [&] { return regions_reply_.has_value() || broken_.load(); }))
    return make_error("peer ", peer_, " did not answer within ", agent_.config_.timeout.count(), " ms");
  if (!regions_reply_) return make_error("session to ", peer_, " broke");
  std::string reply = *regions_reply_;
  lock.unlock();
  BATON_ASSIGN_OR_RETURN(Json j, parse_json(reply, "regions"));
  set_regions(j);
  return {};
}

Status Session::authorize(const std::string& capability, uint64_t region) {
  if (broken_) return make_error("session to ", peer_, " is broken");
  std::unique_lock lock(mutex_);
  const bool presented = std::find(presented_.begin(), presented_.end(), capability) != presented_.end();
  if (!presented) {
    presented_.push_back(capability);
    lock.unlock();
    {
      std::lock_guard send_lock(send_mutex_);
      BATON_RETURN_IF_ERROR(send_frame(socket_, MsgType::kAuthorize, 0, capability));
    }
    lock.lock();
  }
  // The peer answers with the regions the session may now see (reader_loop applies them).
  if (!cv_.wait_for(lock, agent_.config_.timeout, [&] { return regions_.count(region) || broken_.load(); }))
    return make_error("peer ", peer_, " grants no access to its region ", region,
                      " (the transfer's capability expired or is unknown)");
  if (broken_) return make_error("session to ", peer_, " broke");
  return {};
}

Result<TransferId> Session::read(const std::vector<TransferOp>& ops) { return start(ops, true); }
Result<TransferId> Session::write(const std::vector<TransferOp>& ops) {
  if (!peer_writable_) return make_error("peer ", peer_, " takes no writes from this agent");
  return start(ops, false);
}

bool Session::copy_in_place(const std::vector<TransferOp>& ops, bool is_read) {
  if (ops.empty()) return false;
  ReadSection section;  // the tables and the memory they name stay while it is open
  const RangeTable* local = agent_.host_table_.load(std::memory_order_seq_cst);
  const RangeTable* remote = mapped_.load(std::memory_order_seq_cst);
  if (!local || !remote) return false;
  // Every range checked before anything moves; anything else (and every error) takes start()'s
  // locked path.
  thread_local std::vector<std::pair<std::byte*, std::byte*>> ends;  // (destination, source) per op
  ends.clear();
  for (const TransferOp& op : ops) {
    std::byte* l = local->find(op.local_region, op.local_offset, op.length);
    std::byte* r = l ? remote->find(op.remote_region, op.remote_offset, op.length) : nullptr;
    if (!r) return false;
    ends.emplace_back(is_read ? l : r, is_read ? r : l);
  }
  // Ranges adjacent on both sides move in one copy.
  std::byte *dst = nullptr, *src = nullptr;
  size_t n = 0;
  for (size_t i = 0; i < ops.size(); ++i) {
    const TransferOp& op = ops[i];
    auto [d, s] = ends[i];
    if (n && d == dst + n && s == src + n) {
      n += op.length;
      continue;
    }
    if (n) std::memcpy(dst, src, n);
    dst = d, src = s, n = op.length;
  }
  if (n) std::memcpy(dst, src, n);
  return true;
}

Result<TransferId> Session::start(const std::vector<TransferOp>& raw_ops, bool is_read) {
  if (broken_) return make_error("session to ", peer_, " is broken; connect again");
  if (copy_in_place(raw_ops, is_read)) return kDoneAtStart;
  // Per-thread scratch, so that a read allocates nothing (a KV handoff issues many).
  thread_local std::vector<TransferOp> ops;
  thread_local std::vector<LocalRange> local;
  thread_local std::vector<RmaOp> rma_ops;
  coalesce(raw_ops, ops);
  local.clear();
  rma_ops.clear();

  // Check both ends of every op before anything moves.
  bool gpu = false, remote_host = false, remote_ucx = true;
  std::shared_lock local_lock(agent_.regions_mutex_);
  std::unique_lock lock(mutex_);
  const TransferId id = next_id_++;
  for (const TransferOp& op : ops) {
    MemoryKind local_kind = MemoryKind::kHost;
    auto p = agent_.locate(op.local_region, op.local_offset, op.length, &local_kind);
    if (!p.ok()) return make_error("local ", p.error());
    auto r = regions_.find(op.remote_region);
    if (r == regions_.end()) return make_error("peer ", peer_, " has no region ", op.remote_region, " (or revoked it)");
    if (op.remote_offset > r->second.length || op.length > r->second.length - op.remote_offset)
      return make_error("range [", op.remote_offset, ", ", op.remote_offset + op.length, ") is outside region ",
                        op.remote_region, " of ", peer_, " (", r->second.length, " bytes)");
    // A write's sources, sent over TCP if it goes there (a read's destinations are looked up
    // again when its answer comes, reader_loop).
    if (!is_read) local.push_back({*p, op.length, local_kind == MemoryKind::kCuda});
    gpu = gpu || r->second.kind == MemoryKind::kCuda || local_kind == MemoryKind::kCuda;
    remote_host = remote_host || r->second.kind != MemoryKind::kCuda;
    remote_ucx = remote_ucx && r->second.keys.contains("ucx");
    rma_ops.push_back({*p, r->second.address + op.remote_offset, op.remote_region, op.length, local_kind});
  }
  // Host memory moves by UCX where both sides have it. GPU memory moves by cuda_ipc on one host
  // (which reaches the peer's GPU regions only), else by UCX (cuda_ipc, RDMA or tcp, its choice);
  // over the TCP path below, staged through host memory on each side, only where the agent was
  // told to use TCP ("transport": "tcp").
  RmaEndpoint* ep = !gpu                       ? rma_.get()
                    : gpu_ && !remote_host     ? gpu_.get()
                    : rma_ && remote_ucx       ? rma_.get()
                                               : nullptr;
  if (gpu && !ep && !agent_.config_.stages_gpu_memory())
    return make_error("GPU memory of ", peer_, " is out of reach: ",
                      !rma_                                  ? "no UCX session with it"
                      : agent_.rma_->registers(MemoryKind::kCuda) ? "the peer registered it without UCX"
                                                                  : "the UCX here has no CUDA transport",
                      " and cuda_ipc cannot reach it (another host); \"transport\": \"tcp\" stages it through host "
                      "memory");
  if (ep) {
    auto handle = ep->start(rma_ops, !is_read);
    if (!handle.ok()) return handle.error().empty() ? make_error("transfer failed") : make_error(handle.error());
    if (*handle == RmaEndpoint::kDone) return id | kDoneAtStart;
    Transfer& t = transfers_[id];
    t.rma_handle = *handle;
    t.on_cuda_ipc = ep == gpu_.get();
    for (const TransferOp& op : ops)
      if (std::find(t.local_regions.begin(), t.local_regions.end(), op.local_region) == t.local_regions.end())
        t.local_regions.push_back(op.local_region);
    return id;
  }
  if (!agent_.config_.tcp_allowed())
    return make_error("these ranges of ", peer_, " would move over TCP, which is not allowed");
  transfers_[id];
  lock.unlock();
  // TCP: the peer serves the request on its connection thread, in order.
  std::lock_guard send_lock(send_mutex_);
  {
    std::lock_guard lock(mutex_);
    pending_.push_back({id, is_read, is_read ? ops : decltype(ops){}});
  }
  // The request and, for a write, its data in one gathered send (GPU data in staged pieces).
  const std::string packed = pack_ops(ops);
  FrameHeader req{is_read ? MsgType::kReadRequest : MsgType::kWriteRequest, 0, id, packed.size()};
  std::vector<iovec> head{{&req, sizeof req}, {const_cast<char*>(packed.data()), packed.size()}};
  Status st = send_ranges(socket_, std::move(head), local, agent_.gpu_.get(), stage_out_);
  if (!st.ok()) {
    fail_all(st.message());
    return make_error("transfer to ", peer_, " failed: ", st.message());
  }
  return id;
}

void Session::reader_loop() {
  std::vector<LocalRange> dest;  // a read answer's destination ranges
  for (;;) {
    auto h = recv_header(socket_);
    if (!h.ok()) return fail_all(h.error());
    last_progress_ = Clock::now().time_since_epoch().count();
    if (h->type == MsgType::kRegions && h->id == 0) {  // the peer revoked or added regions
      auto payload = recv_payload(socket_, *h);
      if (!payload.ok()) return fail_all(payload.error());
      if (auto j = parse_json(*payload, "regions"); j.ok()) set_regions(*j);
      continue;
    }
    if (h->type == MsgType::kRegions) {
      auto payload = recv_payload(socket_, *h);
      if (!payload.ok()) return fail_all(payload.error());
      std::lock_guard lock(mutex_);
      regions_reply_ = std::move(*payload);
      cv_.notify_all();
      continue;
    }
    Pending p;
    {
      std::lock_guard lock(mutex_);
      if (pending_.empty() || pending_.front().id != h->id) return fail_all("peer answered a transfer that was not asked for");
      p = std::move(pending_.front());
      pending_.pop_front();
    }
    std::string error;
    if (h->type == MsgType::kReadData) {
      uint64_t expect = 0;
      for (const TransferOp& op : p.ops) expect += op.length;
      if (h->length != expect) return fail_all("peer sent a read answer of the wrong size");
      // The destination is looked up now: it may have been deregistered since the read was
      // issued (region ids are never reused). If it is still there, it stays while the data comes in.
      std::shared_lock local_lock(agent_.regions_mutex_);
      dest.clear();
      const TransferOp* gone = nullptr;
      for (const TransferOp& op : p.ops) {
        MemoryKind kind = MemoryKind::kHost;
        auto ptr = agent_.locate(op.local_region, op.local_offset, op.length, &kind);
        if (!ptr.ok()) {
          gone = &op;
          break;
        }
        dest.push_back({*ptr, op.length, kind == MemoryKind::kCuda});
      }
      if (gone) {
        if (Status st = drain(socket_, h->length); !st.ok()) return fail_all(st.message());
        error = "local region " + std::to_string(gone->local_region) + " was deregistered while a read from " + peer_ +
                " into it was in flight";
      } else {
        if (Status st = recv_ranges(socket_, dest, agent_.gpu_.get(), stage_in_, &error, last_progress_); !st.ok())
          return fail_all(st.message());
        if (!error.empty()) error = "staging the read from " + peer_ + " into GPU memory: " + error;
      }
    } else if (h->type == MsgType::kTransferError) {
      auto payload = recv_payload(socket_, *h);
      if (!payload.ok()) return fail_all(payload.error());
      error = "peer " + peer_ + " refused the transfer: " + *payload;
    } else if (h->type != MsgType::kWriteDone) {
      return fail_all("unexpected message from peer");
    }
    std::lock_guard lock(mutex_);
    auto it = transfers_.find(p.id);
    if (it != transfers_.end()) {
      it->second.state = error.empty() ? TransferState::kDone : TransferState::kFailed;
      it->second.error = error;
    }
    cv_.notify_all();
  }
}

void Session::fail_all(const std::string& why) {
  broken_ = true;
  std::unique_ptr<RmaEndpoint> rma, gpu;
  {
    std::lock_guard lock(mutex_);
    for (auto& [id, t] : transfers_)
      if (t.state == TransferState::kPending) {
        t.state = TransferState::kFailed;
        t.error = "session to " + peer_ + " failed: " + why;
      }
    pending_.clear();
    publish_mapped(false);  // before the endpoint and its mappings go
    rma = std::move(rma_);
    gpu = std::move(gpu_);
    cv_.notify_all();
  }
  // After the transfers are marked, so that they carry this reason rather than the reader
  // thread's "peer closed the connection".
  socket_.shutdown();
  // Closing the endpoints stops their transfers: cuda_ipc's waits for its copies; UCX may still
  // deliver a late get answer of a stalled peer into local memory (agent.h, Known limit).
  rma.reset();
  gpu.reset();
}

TransferState Session::poll(TransferId id, std::string* error) {
  if (id & kDoneAtStart) return TransferState::kDone;
  std::lock_guard lock(mutex_);
  auto it = transfers_.find(id);
  if (it == transfers_.end()) {
    if (error) *error = "unknown transfer " + std::to_string(id);
    return TransferState::kFailed;
  }
  Transfer& t = it->second;
  update(t);
  if (t.state != TransferState::kPending && error) *error = t.error;
  return t.state;
}

void Session::update(Transfer& t) {
  if (t.state == TransferState::kPending && t.rma_handle && endpoint_of(t)) {
    t.state = endpoint_of(t)->poll(t.rma_handle, &t.error);
    if (t.state == TransferState::kFailed) t.error = "transfer with " + peer_ + ": " + t.error;
  }
}

bool Session::quiesce_local(uint64_t region, Clock::time_point deadline) {
  for (;;) {
    {
      std::lock_guard lock(mutex_);
      bool busy = false;
      for (auto& [id, t] : transfers_) {
        if (std::find(t.local_regions.begin(), t.local_regions.end(), region) == t.local_regions.end()) continue;
        update(t);
        busy = busy || t.state == TransferState::kPending;
      }
      if (!busy) return true;
      if (rma_) rma_->progress();
    }
    if (Clock::now() >= deadline) {
      fail_all("local region " + std::to_string(region) + " was deregistered with transfers still moving its bytes");
      return false;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

Status Session::wait(TransferId id) { return wait(id, agent_.config_.timeout); }

Status Session::wait(TransferId id, std::chrono::milliseconds timeout) {
  constexpr auto kTcpSpin = std::chrono::microseconds(200);
  if (id & kDoneAtStart) return {};
  std::optional<Clock::time_point> deadline, spin_until;  // the clock is read only if the transfer is not done yet
  bool rma = false, on_cuda_ipc = false;                  // how it moves, looked up with the deadline
  std::string error;
  for (int spins = 0;; ++spins) {
    TransferState s = poll(id, &error);
    if (s != TransferState::kPending) {
      std::lock_guard lock(mutex_);
      auto it = transfers_.find(id);
      if (it != transfers_.end()) {
        if (it->second.rma_handle && endpoint_of(it->second)) endpoint_of(it->second)->release(it->second.rma_handle);
        transfers_.erase(it);
      }
      if (s == TransferState::kDone) return {};
      return make_error(error);
    }
    const auto now = Clock::now();
    if (!deadline) {
      deadline = now + timeout, spin_until = now + kTcpSpin;
      std::lock_guard lock(mutex_);
      if (auto it = transfers_.find(id); it != transfers_.end())
        rma = it->second.rma_handle != 0, on_cuda_ipc = it->second.on_cuda_ipc;
    }
    // A peer still sending (a long read over TCP) is not stalled: the timeout runs from the last
    // bytes that arrived.
    if (now >= *deadline) deadline = std::max(*deadline, Clock::time_point(Clock::duration(last_progress_)) + timeout);
    if (now >= *deadline) {
      // A stalled peer: the session cannot be trusted any more (answers may still arrive).
      fail_all("no completion within " + std::to_string(timeout.count()) + " ms");
      continue;  // poll() now reports the failure
    }
    std::unique_lock lock(mutex_);
    if (rma) {
      if (rma_ && !on_cuda_ipc) rma_->progress();
      lock.unlock();
      if (spins > 100000) std::this_thread::sleep_for(std::chrono::microseconds(20));
    } else if (now < *spin_until) {
      // The answer to a small read comes within tens of microseconds: waiting on the condition
      // variable would add a wake-up of this thread to the reader thread's.
      lock.unlock();
      std::this_thread::yield();
    } else {
      cv_.wait_until(lock, std::min(*deadline, Clock::now() + std::chrono::milliseconds(100)));
    }
  }
}

Status Session::notify(const std::string& message) {
  if (broken_) return make_error("session to ", peer_, " is broken");
  {
    // RMA transfers (UCX, cuda_ipc) complete on our side only: wait for them before telling the
    // owner. TCP transfers are answered on this connection, ahead of the notification.
    std::vector<TransferId> earlier;
    {
      std::lock_guard lock(mutex_);
      for (auto& [id, t] : transfers_)
        if (t.state == TransferState::kPending && t.rma_handle) earlier.push_back(id);
    }
    for (TransferId id : earlier) {
      std::string err;
      const auto deadline = Clock::now() + agent_.config_.timeout;
      while (poll(id, &err) == TransferState::kPending) {
        if (Clock::now() >= deadline) return make_error("notify: earlier transfer did not complete");
        std::this_thread::sleep_for(std::chrono::microseconds(20));
      }
    }
  }
  std::lock_guard lock(send_mutex_);
  return send_frame(socket_, MsgType::kNotify, 0, message);
}

}  // namespace baton::xfer
