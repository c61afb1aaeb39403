#include "xfer/agent.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <set>
#include <system_error>

#include "common/log.h"
#include "common/secret.h"
#include "xfer/read_section.h"

namespace baton::xfer {
namespace {

struct WireOp {
  uint64_t region, offset, length;
};

std::string pack_ops(const std::vector<TransferOp>& ops) {
  std::string out(ops.size() * sizeof(WireOp), '\0');
  for (size_t i = 0; i < ops.size(); ++i) {
    WireOp w{ops[i].remote_region, ops[i].remote_offset, ops[i].length};
    std::memcpy(out.data() + i * sizeof(WireOp), &w, sizeof w);
  }
  return out;
}

Result<std::vector<WireOp>> unpack_ops(const std::string& payload) {
  if (payload.size() % sizeof(WireOp) != 0) return make_error("malformed transfer request");
  std::vector<WireOp> ops(payload.size() / sizeof(WireOp));
  if (!ops.empty()) std::memcpy(ops.data(), payload.data(), payload.size());  // (empty: data() may be null)
  return ops;
}

// 2: hellos carry a capability; kAuthorize; the welcome says whether the agent takes writes.
constexpr int kProtocolVersion = 2;
// A hello is a small JSON object; a larger one is not a peer of ours.
constexpr uint64_t kMaxHelloPayload = 4096;
// A peer without the token sends read requests (24 bytes an op; a KV transfer's are coalesced
// per block run) and notifications: a larger control frame is not one of ours.
constexpr uint64_t kMaxUntrustedPayload = 4 << 20;

log::Throttle g_refusal_log, g_accept_log;

// Publishes `next` for copies in place and frees the table it replaces once none can use it.
void republish(std::atomic<const RangeTable*>& table, const RangeTable* next) {
  const RangeTable* old = table.exchange(next, std::memory_order_seq_cst);
  wait_for_readers();
  delete old;
}

// GPU ranges on the TCP path move through a host buffer of this size, one piece at a time.
constexpr size_t kStageBytes = size_t{4} << 20;

Status ensure_stage(RmaTransport* t, StagingBuffer& stage) {
  if (stage) return {};
  if (!t) return make_error("GPU memory without a GPU transport to stage it");
  BATON_ASSIGN_OR_RETURN(stage, t->staging_buffer(kStageBytes));
  return {};
}

// Sends `parts` (headers) followed by the ranges' bytes; GPU ranges are copied to the host
// through `stage` by `t` first. A failed copy leaves the stream short: the caller must drop the
// connection.
Status send_ranges(Socket& socket, std::vector<iovec> parts, const std::vector<LocalRange>& ranges, RmaTransport* t,
                   StagingBuffer& stage) {
  for (const LocalRange& r : ranges) {
    if (!r.gpu) {
      parts.push_back({r.ptr, r.length});
      continue;
    }
    BATON_RETURN_IF_ERROR(ensure_stage(t, stage));
    for (uint64_t off = 0; off < r.length; off += kStageBytes) {
      const size_t k = std::min<uint64_t>(kStageBytes, r.length - off);
      BATON_RETURN_IF_ERROR(t->copy_to_host(stage.get(), r.ptr + off, k));
      parts.push_back({stage.get(), k});
      BATON_RETURN_IF_ERROR(socket.send_all(parts));  // the stage is reused next
      parts.clear();
    }
  }
  return parts.empty() ? Status{} : socket.send_all(parts);
}

// Receives the ranges' bytes; GPU ranges arrive in `stage` and are copied on by `t`. A socket
// error is returned; a failed copy is left in *copy_error while the rest of the bytes are still
// taken off the socket (the stream stays in step). `progress` is stamped after every piece of
// at most kStageBytes, so that a long answer that keeps arriving is not taken for a stall.
Status recv_ranges(Socket& socket, const std::vector<LocalRange>& ranges, RmaTransport* t, StagingBuffer& stage,
                   std::string* copy_error, std::atomic<Clock::rep>& progress) {
  std::vector<iovec> parts;
  uint64_t pending = 0;  // bytes in parts
  auto flush = [&]() -> Status {
    if (parts.empty()) return {};
    BATON_RETURN_IF_ERROR(socket.recv_all(parts));
    progress = Clock::now().time_since_epoch().count();
    parts.clear();
    pending = 0;
    return {};
  };
  for (const LocalRange& r : ranges) {
    if (!r.gpu) {
      for (uint64_t off = 0; off < r.length;) {
        const uint64_t k = std::min<uint64_t>(r.length - off, kStageBytes - pending);
        parts.push_back({r.ptr + off, k});
        off += k;
        pending += k;
        if (pending == kStageBytes) BATON_RETURN_IF_ERROR(flush());
      }
      continue;
    }
    BATON_RETURN_IF_ERROR(flush());
    if (Status st = ensure_stage(t, stage); !st.ok()) return st;  // cannot even drain: drop the connection
    for (uint64_t off = 0; off < r.length; off += kStageBytes) {
      const size_t k = std::min<uint64_t>(kStageBytes, r.length - off);
      BATON_RETURN_IF_ERROR(socket.recv_all(stage.get(), k));
      progress = Clock::now().time_since_epoch().count();
      if (!copy_error->empty()) continue;
      if (Status st = t->copy_from_host(r.ptr + off, stage.get(), k); !st.ok()) *copy_error = st.message();
    }
  }
  return flush();
}

// Reads and drops n bytes (an answer whose destination is gone).
Status drain(Socket& socket, uint64_t n) {
  std::vector<std::byte> sink(std::min<uint64_t>(n, 64 << 10));
  for (uint64_t left = n; left > 0;) {
    const size_t k = std::min<uint64_t>(left, sink.size());
    BATON_RETURN_IF_ERROR(socket.recv_all(sink.data(), k));
    left -= k;
  }
  return {};
}

}  // namespace

// ---- Agent -----------------------------------------------------------------------------------

Result<std::vector<std::string>> Agent::Config::transports_named(std::string_view name) {
  if (name == "auto") return Config{}.transports;
  if (name == "ucx") return std::vector<std::string>{"ucx"};
  if (name == "cuda_ipc") return std::vector<std::string>{"cuda_ipc", "tcp"};
  if (name == "tcp") return std::vector<std::string>{"tcp"};
  return make_error("transport '", name, "' is not one of auto, ucx, cuda_ipc, tcp");
}

Result<std::unique_ptr<Agent>> Agent::create(Config config) {
  if (config.name.empty()) return make_error("transfer agent needs a name");
  // BATON_XFER_NO_UCX=1 keeps bytes off UCX (operators debugging a fabric; ThreadSanitizer runs,
  // which cannot see UCX's internal synchronisation).
  bool ucx_turned_off = false;
  if (const char* no = std::getenv("BATON_XFER_NO_UCX"); no && std::string(no) == "1")
    ucx_turned_off = std::erase(config.transports, "ucx") > 0;
  const bool ucx_allowed = config.allows("ucx");
  if (!ucx_allowed && !config.tcp_allowed())
    return make_error("transfer agent ", config.name, ": no transport for host memory (",
                      ucx_turned_off ? "BATON_XFER_NO_UCX=1 turned UCX off" : "neither ucx nor tcp",
                      ", and TCP is not allowed)");
  std::unique_ptr<Agent> a(new Agent(std::move(config)));
  BATON_ASSIGN_OR_RETURN(a->listener_, Socket::listen(a->config_.host, a->config_.port, &a->port_));
  BATON_RETURN_IF_ERROR(a->listener_.set_nonblocking(true));
  a->wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (a->wake_fd_ < 0) return make_error("transfer agent ", a->config_.name, ": eventfd: ", std::strerror(errno));
  if (ucx_allowed) {
    auto ucx = create_ucx_transport({a->config_.remote_writes, a->config_.ucx_net_devices});
    if (ucx.ok()) {
      a->rma_ = std::move(*ucx);
    } else if (!a->config_.tcp_allowed()) {
      return make_error("transfer agent ", a->config_.name, ": UCX unavailable (", ucx.error(),
                        ") and TCP is not allowed");
    } else {
      log::warn("transfer agent ", a->config_.name, ": UCX unavailable (", ucx.error(), "); using TCP");
    }
  }
  if (a->config_.gpu_transport) {
    BATON_ASSIGN_OR_RETURN(a->gpu_, a->config_.gpu_transport());
  } else if (auto cuda = create_cuda_ipc_transport(); cuda.ok()) {
    a->gpu_ = std::move(*cuda);
  }
  a->accept_thread_ = std::thread([p = a.get()] { p->accept_loop(); });
  return a;
}

Agent::~Agent() {
  {
    std::lock_guard lock(serve_mutex_);
    stopping_ = true;
  }
  if (wake_fd_ >= 0) {
    const uint64_t one = 1;
    (void)!::write(wake_fd_, &one, sizeof one);
  }
  if (accept_thread_.joinable()) accept_thread_.join();
  if (wake_fd_ >= 0) ::close(wake_fd_);
  {
    std::lock_guard lock(sessions_mutex_);
    sessions_.clear();
  }
  std::vector<std::unique_ptr<Served>> served;
  {
    std::lock_guard lock(serve_mutex_);  // serve() closes its socket under this lock
    for (auto& conn : served_) conn->socket.shutdown();
    served.swap(served_);
  }
  for (auto& conn : served) conn->thread.join();
  std::unique_lock lock(regions_mutex_);
  republish(host_table_, nullptr);
  if (rma_)
    for (auto& [id, r] : regions_) rma_->deregister_region(id);
}

AgentDesc Agent::describe() const {
  AgentDesc d;
  d.name = config_.name;
  d.host = config_.host == "0.0.0.0" ? "127.0.0.1" : config_.host;
  d.port = port_;
  if (rma_) d.transports.push_back(rma_->name());
  if (gpu_) d.transports.push_back(gpu_->name());
  d.transports.push_back("tcp");
  return d;
}

Result<MemoryDesc> Agent::register_memory(void* ptr, size_t n_bytes, MemoryKind kind, int device) {
  if (!ptr || n_bytes == 0) return make_error("register_memory: empty region");
  const bool ucx_gpu = rma_ && rma_->registers(MemoryKind::kCuda);
  if (kind == MemoryKind::kCuda && !gpu_ && !ucx_gpu)
    return make_error("register_memory: GPU memory needs UCX with CUDA or the cuda_ipc transport (a CUDA build on a "
                      "GPU machine)");
  std::unique_lock lock(regions_mutex_);
  const uint64_t id = next_region_++;
  MemoryDesc d;
  d.agent = config_.name;
  d.region = id;
  d.address = reinterpret_cast<uint64_t>(ptr);
  d.length = n_bytes;
  d.kind = kind;
  d.device = device;
  if (kind == MemoryKind::kCuda) {
    // Both where both exist: cuda_ipc serves peers on this host, UCX every other (and this host's
    // where the peer has no cuda_ipc).
    std::string why;
    if (gpu_) {
      auto key = gpu_->register_region(id, ptr, n_bytes, kind);
      key.ok() ? void(d.keys[gpu_->name()] = *key) : void(why = key.error());
    }
    if (ucx_gpu) {
      auto key = rma_->register_region(id, ptr, n_bytes, kind);
      key.ok() ? void(d.keys[rma_->name()] = *key) : void(why += (why.empty() ? "" : "; ") + key.error());
    }
    if (d.keys.empty()) return make_error("register_memory: ", why);
    if (!why.empty()) log::warn("GPU region ", id, ": ", why);
  } else if (rma_) {
    auto key = rma_->register_region(id, ptr, n_bytes, kind);
    if (key.ok()) {
      d.keys[rma_->name()] = *key;
    } else {
      log::warn("region ", id, ": ", key.error(), "; served over TCP only");
    }
  }
  regions_[id] = Region{static_cast<std::byte*>(ptr), n_bytes, d, nullptr};
  publish_host_table();
  return d;
}

Result<std::pair<void*, MemoryDesc>> Agent::allocate_memory(size_t n_bytes) {
  if (n_bytes == 0) return make_error("allocate_memory: empty region");
  std::unique_lock lock(regions_mutex_);
  const uint64_t id = next_region_++;
  MemoryDesc d;
  d.agent = config_.name;
  d.region = id;
  d.length = n_bytes;
  Region r;
  if (rma_) {
    auto mem = rma_->allocate_region(id, n_bytes);
    if (mem.ok()) {
      r.ptr = static_cast<std::byte*>(mem->first);
      d.keys[rma_->name()] = mem->second;
    } else {
      log::warn("allocate_memory: ", mem.error(), "; using ordinary memory");
    }
  }
  if (!r.ptr) {
    r.owned = std::shared_ptr<void>(::operator new(n_bytes), [](void* p) { ::operator delete(p); });
    r.ptr = static_cast<std::byte*>(r.owned.get());
    if (rma_) {
      auto key = rma_->register_region(id, r.ptr, n_bytes, MemoryKind::kHost);
      if (key.ok()) d.keys[rma_->name()] = *key;
    }
  }
  d.address = reinterpret_cast<uint64_t>(r.ptr);
  r.length = n_bytes;
  r.desc = d;
  regions_[id] = r;
  publish_host_table();
  return std::make_pair(static_cast<void*>(r.ptr), d);
}

Status Agent::deregister_memory(uint64_t region) {
  Region gone;  // memory the agent owns lives until the transports are done with it
  {
    std::unique_lock lock(regions_mutex_);  // waits for reads being served from it
    auto it = regions_.find(region);
    if (it == regions_.end()) return make_error("region ", region, " is not registered");
    gone = std::move(it->second);
    regions_.erase(it);
    publish_host_table();  // and copies in place that may be using it have ended
  }
  // No transfer that names the region starts any more (start() looks its regions up under the
  // lock and records an RMA transfer before releasing it). Those recorded, UCX gets and puts and
  // cuda_ipc copies still moving its bytes, end or have their sessions failed within the timeout;
  // without the lock, so that the agent's other transfers and registrations go on meanwhile.
  std::string stalled;  // peers whose transfers of the region did not finish
  std::vector<std::shared_ptr<Session>> sessions;
  {
    std::lock_guard sl(sessions_mutex_);
    for (const auto& [name, s] : sessions_) sessions.push_back(s);
  }
  const auto deadline = Clock::now() + config_.timeout;
  for (const auto& s : sessions)
    if (!s->quiesce_local(region, deadline)) stalled += (stalled.empty() ? "" : ", ") + s->peer();
  {
    std::unique_lock lock(regions_mutex_);  // the transports are (de)registered under it
    if (gone.desc.kind == MemoryKind::kCuda && gpu_) gpu_->deregister_region(region);
    if (rma_) rma_->deregister_region(region);
  }
  // Tell connected peers, so that they refuse RMA to it without asking.
  std::lock_guard lock(serve_mutex_);
  for (auto& conn : served_) {
    const std::string payload = regions_json(*conn).dump();
    std::lock_guard send_lock(conn->send_mutex);
    (void)send_frame(conn->socket, MsgType::kRegions, 0, payload);
  }
  if (!stalled.empty())
    return make_error("region ", region, " is deregistered, but transfers of its bytes with ", stalled,
                      " did not finish within ", config_.timeout.count(),
                      " ms: their sessions are closed, yet a late UCX answer may still land in it; keep the memory "
                      "until the agent is destroyed");
  return {};
}

std::vector<MemoryDesc> Agent::regions() const {
  std::shared_lock lock(regions_mutex_);
  std::vector<MemoryDesc> out;
  for (const auto& [id, r] : regions_) out.push_back(r.desc);
  return out;
}

void Agent::publish_host_table() {
  auto t = std::make_unique<RangeTable>();
  for (const auto& [id, r] : regions_)
    if (r.desc.kind == MemoryKind::kHost && t->n < RangeTable::kMax) t->entries[t->n++] = {id, r.ptr, r.length};
  republish(host_table_, t.release());
}

Json Agent::regions_json() const {
  Json arr = Json::array();
  for (const MemoryDesc& d : regions()) arr.push_back(d.to_json());
  return arr;
}

Json Agent::regions_json(const Served& conn) const {
  if (conn.trusted) return regions_json();
  std::vector<std::string> caps;
  {
    std::lock_guard lock(const_cast<std::mutex&>(conn.send_mutex));
    caps = conn.capabilities;
  }
  std::set<uint64_t> visible;
  {
    std::lock_guard lock(grants_mutex_);
    for (const std::string& c : caps)
      if (auto g = grants_.find(c); g != grants_.end())
        for (const auto& [region, ranges] : g->second) visible.insert(region);
  }
  Json arr = Json::array();
  for (const MemoryDesc& d : regions())
    if (visible.count(d.region)) arr.push_back(d.to_json());
  return arr;
}

// Called by conn's own serving thread, which alone changes conn.capabilities.
bool Agent::granted(const Served& conn, uint64_t region, uint64_t offset, uint64_t len) const {
  if (conn.trusted) return true;
  std::lock_guard lock(grants_mutex_);
  for (auto c = conn.capabilities.rbegin(); c != conn.capabilities.rend(); ++c) {  // newest first
    auto g = grants_.find(*c);
    if (g == grants_.end()) continue;
    auto r = g->second.find(region);
    if (r == g->second.end()) continue;
    auto it = r->second.upper_bound(offset);  // the first range starting after offset
    if (it == r->second.begin()) continue;
    --it;
    if (offset < it->second && len <= it->second - offset) return true;  // (it->first <= offset)
  }
  return false;
}

void Agent::grant(const std::string& capability, const std::vector<GrantRange>& ranges) {
  std::lock_guard lock(grants_mutex_);
  Grant& g = grants_[capability];
  for (const GrantRange& r : ranges) {
    if (r.length == 0) continue;
    std::map<uint64_t, uint64_t>& m = g[r.region];
    uint64_t start = r.offset, end = r.offset + r.length;
    // Merge with every range it touches, so that a coalesced read of adjacent blocks lies
    // inside one range.
    auto it = m.upper_bound(start);
    if (it != m.begin() && std::prev(it)->second >= start) --it;
    while (it != m.end() && it->first <= end) {
      start = std::min(start, it->first);
      end = std::max(end, it->second);
      it = m.erase(it);
    }
    m.emplace(start, end);
  }
}

void Agent::revoke(const std::string& capability) {
  std::lock_guard lock(grants_mutex_);
  grants_.erase(capability);
}

bool Agent::live(const std::string& capability) const {
  std::lock_guard lock(grants_mutex_);
  return grants_.count(capability) > 0;
}

void Agent::tally(uint64_t AdmissionStats::*event) {
  std::lock_guard lock(stats_mutex_);
  ++(admission_.*event);
}

Agent::AdmissionStats Agent::admission_stats() const {
  std::lock_guard lock(stats_mutex_);
  return admission_;
}

size_t Agent::served_connections() const {
  std::lock_guard lock(serve_mutex_);
  size_t n = 0;
  for (const auto& conn : served_) n += conn->socket.valid();
  return n;
}

Result<std::byte*> Agent::locate(uint64_t region, uint64_t offset, uint64_t len, MemoryKind* kind) const {
  auto it = regions_.find(region);
  if (it == regions_.end()) return make_error("region ", region, " is not registered with agent ", config_.name);
  const Region& r = it->second;
  if (offset > r.length || len > r.length - offset)
    return make_error("range [", offset, ", ", offset + len, ") is outside region ", region, " (", r.length, " bytes)");
  if (kind) *kind = r.desc.kind;
  return r.ptr + offset;
}

void Agent::set_notification_handler(std::function<void(const std::string&, const std::string&)> handler) {
  std::lock_guard lock(notify_mutex_);
  notify_handler_ = std::move(handler);
}

void Agent::deliver(const std::string& peer, std::string message) {
  std::function<void(const std::string&, const std::string&)> handler;
  {
    std::lock_guard lock(notify_mutex_);
    handler = notify_handler_;
    if (!handler) {
      notifications_.emplace_back(peer, std::move(message));
      notify_cv_.notify_all();
      return;
    }
  }
  handler(peer, message);
}

std::optional<std::pair<std::string, std::string>> Agent::next_notification(std::chrono::milliseconds timeout) {
  std::unique_lock lock(notify_mutex_);
  if (!notify_cv_.wait_for(lock, timeout, [&] { return !notifications_.empty(); })) return std::nullopt;
  auto n = std::move(notifications_.front());
  notifications_.pop_front();
  return n;
}

// A connection that has not yet sent its hello: taken by the accept thread alone, so that
// connections that never authenticate cost a file descriptor each, not a thread.
struct Agent::Hello {
  Socket socket;
  Clock::time_point deadline;
  std::string bytes;  // the frame so far: header, then payload

  // 1: the hello is complete (payload()); 0: more to come; -1: not a hello, or the peer left.
  int receive() {
    for (;;) {
      size_t want = sizeof(FrameHeader);
      if (bytes.size() >= want) {
        FrameHeader h;
        std::memcpy(&h, bytes.data(), sizeof h);
        if (h.type != MsgType::kHello || h.length > kMaxHelloPayload) return -1;
        want += h.length;
      }
      if (bytes.size() == want) return 1;
      char buf[kMaxHelloPayload + sizeof(FrameHeader)];
      const ssize_t n = ::recv(socket.fd(), buf, want - bytes.size(), 0);
      if (n > 0) {
        bytes.append(buf, static_cast<size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
      return -1;
    }
  }
  std::string payload() const { return bytes.substr(sizeof(FrameHeader)); }
};

void Agent::accept_loop() {
  using std::chrono::milliseconds;
  std::vector<Hello> waiting;
  std::vector<pollfd> fds;
  // Out of file descriptors: no accept before accept_again. The wait doubles while errors keep
  // coming (a descriptor freed now and then lets one accept through, which ends nothing).
  Clock::time_point accept_again{}, last_error{};
  milliseconds backoff(10);
  // A hello that receive() finished (1) or gave up on (-1) is admitted or refused.
  auto conclude = [this](Hello& h, int got) {
    if (got > 0) {
      admit(std::move(h.socket), h.payload());
    } else {
      tally(&AdmissionStats::refused);
    }
  };
  for (;;) {
    auto now = Clock::now();
    for (auto it = waiting.begin(); it != waiting.end();) {
      if (it->deadline > now) {
        ++it;
        continue;
      }
      tally(&AdmissionStats::timed_out);
      it = waiting.erase(it);
    }
    const bool accepting = now >= accept_again;
    Clock::time_point wake = now + std::chrono::seconds(1);
    if (!accepting) wake = std::min(wake, accept_again);
    fds.clear();
    fds.push_back({wake_fd_, POLLIN, 0});
    fds.push_back({accepting ? listener_.fd() : -1, POLLIN, 0});
    for (const Hello& h : waiting) {
      fds.push_back({h.socket.fd(), POLLIN, 0});
      wake = std::min(wake, h.deadline);
    }
    const auto wait_ms = std::chrono::ceil<milliseconds>(wake - now).count();
    if (::poll(fds.data(), fds.size(), static_cast<int>(std::max<int64_t>(wait_ms, 1))) < 0 && errno != EINTR) {
      log::error("transfer agent ", config_.name, ": poll: ", std::strerror(errno));
      std::this_thread::sleep_for(milliseconds(100));
      continue;
    }
    if (fds[0].revents) return;  // the agent is being destroyed
    for (size_t i = waiting.size(); i-- > 0;) {
      if (!fds[i + 2].revents) continue;
      const int got = waiting[i].receive();
      if (got == 0) continue;
      Hello h = std::move(waiting[i]);
      waiting.erase(waiting.begin() + static_cast<std::ptrdiff_t>(i));
      conclude(h, got);
    }
    if (!(fds[1].revents & POLLIN)) continue;
    for (;;) {
      auto s = listener_.accept_nonblocking();
      if (!s.ok()) {
        // EMFILE and the like: the connection stays queued, and accepting again at once would
        // spin. Back off while it lasts, logging at most once a second.
        tally(&AdmissionStats::accept_errors);
        const auto at = Clock::now();
        backoff =
            at - last_error < std::chrono::seconds(1) ? std::min(backoff * 2, milliseconds(1000)) : milliseconds(10);
        last_error = at;
        g_accept_log.warn("transfer agent ", config_.name, ": ", s.error(), "; accepting again in ", backoff.count(),
                          " ms");
        accept_again = at + backoff;
        break;
      }
      if (!s->valid()) break;  // none waiting
      // A peer of ours sends its hello as soon as it connects: it is often here already.
      Hello fresh{std::move(*s), Clock::now() + config_.hello_timeout, {}};
      if (const int got = fresh.receive(); got != 0) {
        conclude(fresh, got);
        continue;
      }
      if (waiting.size() >= kMaxUnauthenticated) {
        // The oldest goes (a peer of ours sends its hello at once, so the one that has waited
        // longest is the likeliest to be idle on purpose), unless its hello came meanwhile.
        Hello oldest = std::move(waiting.front());
        waiting.erase(waiting.begin());
        if (oldest.receive() > 0) {
          admit(std::move(oldest.socket), oldest.payload());
        } else {
          tally(&AdmissionStats::overflowed);
          g_refusal_log.warn("transfer agent ", config_.name, ": ", kMaxUnauthenticated,
                             " connections are waiting for their hello; closing the oldest");
        }
      }
      waiting.push_back(std::move(fresh));
    }
  }
}

void Agent::admit(Socket socket, const std::string& payload) {
  std::string peer = "?";
  auto refuse = [&](const std::string& why) {
    tally(&AdmissionStats::refused);
    g_refusal_log.warn("transfer agent ", config_.name, ": refusing peer ", peer, ": ", why);
    (void)send_frame(socket, MsgType::kRefused, 0, why);  // non-blocking: a small frame, best effort
  };
  auto hj = parse_json(payload, "hello");
  if (!hj.ok() || !hj->is_object()) return refuse("malformed hello");
  // Typed reads: a peer's mistyped field is a refusal, not an exception on this thread.
  auto agent = json_get_or<std::string>(*hj, "agent", "?", "hello");
  auto version = json_get_or<int64_t>(*hj, "version", 0, "hello");
  auto token = json_get_or<std::string>(*hj, "token", "", "hello");
  auto capability = json_get_or<std::string>(*hj, "capability", "", "hello");
  if (!agent.ok() || !version.ok() || !token.ok() || !capability.ok()) return refuse("malformed hello");
  peer = agent->substr(0, 128);
  if (*version != kProtocolVersion)
    return refuse("protocol version mismatch (" + std::to_string(*version) + "; this agent speaks " +
                  std::to_string(kProtocolVersion) + ")");
  const bool trusted = !config_.token.empty() && secrets_equal(*token, config_.token);
  if (!config_.token.empty() && !trusted) return refuse("wrong or missing deployment token");
  if (!trusted && (capability->empty() || !live(*capability)))
    return refuse("no live capability (a transfer's capability or the deployment token is required)");
  if (!socket.set_nonblocking(false).ok()) return;
  std::lock_guard lock(serve_mutex_);
  if (stopping_) return;
  // Finished connections are reaped here, so a long-lived agent does not accumulate them.
  for (auto it = served_.begin(); it != served_.end();) {
    if (!(*it)->socket.valid()) {
      (*it)->thread.join();
      it = served_.erase(it);
    } else {
      ++it;
    }
  }
  if (!trusted) {
    size_t untrusted = 0;
    for (const auto& c : served_) untrusted += !c->trusted;
    if (untrusted >= kMaxCapabilitySessions)
      return refuse("too many sessions without the deployment token (" + std::to_string(untrusted) + ")");
  }
  auto conn = std::make_unique<Served>();
  conn->socket = std::move(socket);
  conn->peer = peer;
  conn->trusted = trusted;
  if (!trusted) conn->capabilities.push_back(*capability);
  Served* raw = conn.get();
  try {
    conn->thread = std::thread([this, raw] { serve(*raw); });
  } catch (const std::system_error& e) {  // out of threads: this peer is refused, the agent goes on
    socket = std::move(conn->socket);
    return refuse(std::string("cannot serve another session: ") + e.what());
  }
  served_.push_back(std::move(conn));
  tally(&AdmissionStats::admitted);
}

// One peer's control connection, served in order: requests on it complete in the order sent.
void Agent::serve(Served& conn) {
  Socket& socket = conn.socket;
  auto send_locked = [&](MsgType type, uint64_t id, const std::string& payload) {
    std::lock_guard lock(conn.send_mutex);
    return send_frame(socket, type, id, payload);
  };
  struct Done {  // marks the connection finished, for the accept loop to reap
    Served& c;
    std::mutex& m;
    ~Done() {
      std::lock_guard lock(m);
      c.socket.shutdown();
      c.socket = Socket();
    }
  } done{conn, serve_mutex_};
  const std::string& peer = conn.peer;
  Json welcome = {{"agent", config_.name},
                  {"regions", regions_json(conn)},
                  {"version", kProtocolVersion},
                  {"writable", config_.remote_writes && conn.trusted}};
  if (rma_) welcome[rma_->name()] = rma_->address();
  if (gpu_) welcome[gpu_->name()] = gpu_->address();
  if (!send_locked(MsgType::kWelcome, 0, welcome.dump()).ok()) return;
  (void)socket.set_recv_timeout(std::chrono::milliseconds(0));  // idle sessions may wait long

  for (;;) {
    if (!conn.trusted) {
      // Admission was for the capabilities presented, not for good: once none is live, a session
      // that idles is closed (the peer connects again with its next transfer's capability).
      pollfd p{socket.fd(), POLLIN, 0};
      const int ready = ::poll(&p, 1, static_cast<int>(config_.capability_session_idle.count()));
      if (ready == 0) {
        if (std::none_of(conn.capabilities.begin(), conn.capabilities.end(),
                         [&](const std::string& c) { return live(c); }))
          break;
        continue;
      }
    }
    auto h = recv_header(socket);
    if (!h.ok()) break;
    if (!conn.trusted && h->length > kMaxUntrustedPayload) break;  // (data follows writes: refused anyway)
    if (h->type == MsgType::kReadRequest || h->type == MsgType::kWriteRequest) {
      auto payload = recv_payload(socket, *h);
      if (!payload.ok()) break;
      auto ops = unpack_ops(*payload);
      if (!ops.ok()) break;
      uint64_t total = 0;
      for (const WireOp& op : *ops) total += op.length;
      std::shared_lock lock(regions_mutex_);
      std::vector<LocalRange> where;
      std::string error;
      const bool is_read = h->type == MsgType::kReadRequest;
      if (!is_read && !config_.remote_writes) error = "agent " + config_.name + " takes no writes";
      if (!is_read && !conn.trusted) error = "writes need the deployment token";
      for (const WireOp& op : *ops) {
        if (!error.empty()) break;
        MemoryKind kind = MemoryKind::kHost;
        auto p = locate(op.region, op.offset, op.length, &kind);
        if (!p.ok()) {
          error = p.error();
          break;
        }
        if (!granted(conn, op.region, op.offset, op.length)) {
          error = "range [" + std::to_string(op.offset) + ", " + std::to_string(op.offset + op.length) +
                  ") of region " + std::to_string(op.region) + " is not granted to this peer";
          break;
        }
        where.push_back({*p, op.length, kind == MemoryKind::kCuda});  // GPU ranges are staged
      }
      Status st;
      if (is_read) {
        if (!error.empty()) {
          st = send_locked(MsgType::kTransferError, h->id, error);
        } else {
          std::lock_guard send_lock(conn.send_mutex);
          FrameHeader data{MsgType::kReadData, 0, h->id, total};
          st = send_ranges(socket, {{&data, sizeof data}}, where, gpu_.get(), conn.stage);
          if (!st.ok()) log::warn("transfer agent ", config_.name, ": read for ", peer, " failed: ", st.message());
        }
      } else {
        // The data follows the request: take it into the region, or drain it on error.
        if (error.empty()) {
          std::atomic<Clock::rep> progress{0};  // the writer keeps its own deadline
          st = recv_ranges(socket, where, gpu_.get(), conn.stage, &error, progress);
        } else {
          st = drain(socket, total);
        }
        if (st.ok())
          st = error.empty() ? send_locked(MsgType::kWriteDone, h->id, "") : send_locked(MsgType::kTransferError, h->id, error);
      }
      if (!st.ok()) break;
    } else if (h->type == MsgType::kNotify) {
      auto payload = recv_payload(socket, *h);
      if (!payload.ok()) break;
      deliver(peer, std::move(*payload));
    } else if (h->type == MsgType::kRegionsRequest) {
      if (!recv_payload(socket, *h).ok()) break;
      if (!send_locked(MsgType::kRegions, h->id, regions_json(conn).dump()).ok()) break;
    } else if (h->type == MsgType::kAuthorize) {
      if (h->length > kMaxHelloPayload) break;
      auto capability = recv_payload(socket, *h);
      if (!capability.ok()) break;
      if (!conn.trusted) {
        const bool presented_live = live(*capability);
        std::lock_guard lock(conn.send_mutex);
        std::erase_if(conn.capabilities, [&](const std::string& c) { return !live(c); });  // revoked: forgotten
        if (presented_live &&
            std::find(conn.capabilities.begin(), conn.capabilities.end(), *capability) == conn.capabilities.end())
          conn.capabilities.push_back(std::move(*capability));
        if (!presented_live)
          g_refusal_log.warn("transfer agent ", config_.name, ": peer ", peer, " presented no live capability");
      }
      if (!send_locked(MsgType::kRegions, 0, regions_json(conn).dump()).ok()) break;
    } else {
      break;  // protocol violation: drop the peer
    }
  }
}

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
