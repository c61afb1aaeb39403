// Agent: creation and teardown, memory registration and the regions peers see, grants
// (capabilities) and the notifications peers send. The serving side (admitting peers, serving
// their requests) is agent_serve.cpp; connecting to a peer and the Session are session.cpp.
#include "xfer/agent.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <set>

#include "common/log.h"
#include "xfer/agent_wire.h"

namespace baton::xfer {

using detail::republish;

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
  // cuda_ipc where it is allowed, or where GPU memory is staged over TCP (its copies run on it);
  // "ucx" alone leaves GPU memory to UCX.
  const bool cuda_ipc_wanted = a->config_.allows("cuda_ipc") || a->config_.stages_gpu_memory();
  if (a->config_.gpu_transport) {
    BATON_ASSIGN_OR_RETURN(a->gpu_, a->config_.gpu_transport());
  } else if (cuda_ipc_wanted) {
    if (auto cuda = create_cuda_ipc_transport(); cuda.ok()) a->gpu_ = std::move(*cuda);
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

}  // namespace baton::xfer
