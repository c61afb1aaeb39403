// The serving side of an Agent: the accept thread, which takes hellos and admits or refuses
// peers (Agent::Hello, accept_loop, admit, with its counts), and the thread that serves each
// admitted peer's requests (serve).
#include "xfer/agent.h"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <system_error>

#include "common/log.h"
#include "common/secret.h"
#include "xfer/agent_wire.h"

namespace baton::xfer {

using detail::drain;
using detail::kProtocolVersion;
using detail::recv_ranges;
using detail::send_ranges;
using detail::unpack_ops;
using detail::WireOp;

namespace {

// A hello is a small JSON object; a larger one is not a peer of ours.
constexpr uint64_t kMaxHelloPayload = 4096;
// A peer without the token sends read requests (24 bytes an op; a KV transfer's are coalesced
// per block run) and notifications: a larger control frame is not one of ours.
constexpr uint64_t kMaxUntrustedPayload = 4 << 20;

log::Throttle g_refusal_log, g_accept_log;

}  // namespace

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

}  // namespace baton::xfer
