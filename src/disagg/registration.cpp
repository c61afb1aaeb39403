#include "disagg/registration.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zmq.h>

#include "common/log.h"
#include "xfer/types.h"

namespace baton {

Result<std::unique_ptr<Registrar>> Registrar::start(const std::string& endpoint, Json message,
                                                    std::chrono::milliseconds interval) {
  std::unique_ptr<Registrar> r(new Registrar());
  r->context_ = zmq_ctx_new();
  if (!r->context_) return make_error("registration: cannot create a ZMQ context: ", zmq_strerror(zmq_errno()));
  r->socket_ = zmq_socket(r->context_, ZMQ_DEALER);
  if (!r->socket_) return make_error("registration: cannot create a ZMQ socket: ", zmq_strerror(zmq_errno()));
  const int linger = 0, hwm = 4;
  zmq_setsockopt(r->socket_, ZMQ_LINGER, &linger, sizeof linger);
  zmq_setsockopt(r->socket_, ZMQ_SNDHWM, &hwm, sizeof hwm);  // a proxy that is down gets no backlog
  // The proxy honours heartbeats and the goodbye for our address only from the connection that
  // registered it (proxy/instance_table.h). A routing id of our own, random and kept across
  // reconnects, keeps that binding through a dropped connection; the ROUTER's ids would change.
  // (128 random bits in hex: never the leading zero byte libzmq reserves for its own ids.)
  const std::string routing_id = xfer::new_capability();
  zmq_setsockopt(r->socket_, ZMQ_ROUTING_ID, routing_id.data(), routing_id.size());
  if (zmq_connect(r->socket_, endpoint.c_str()) != 0)
    return make_error("registration: cannot connect to proxy ", endpoint, ": ", zmq_strerror(zmq_errno()));
  std::vector<uint8_t> bytes = Json::to_msgpack(message);
  r->payload_.assign(bytes.begin(), bytes.end());
  r->interval_ = interval;
  r->thread_ = std::thread([p = r.get()] { p->loop(); });
  return r;
}

Registrar::~Registrar() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (socket_ && !goodbye_.empty()) {
    const int linger = 500;  // long enough to deliver it to a live proxy, short if there is none
    zmq_setsockopt(socket_, ZMQ_LINGER, &linger, sizeof linger);
    zmq_send(socket_, goodbye_.data(), goodbye_.size(), ZMQ_DONTWAIT);
  }
  if (socket_) zmq_close(socket_);
  if (context_) zmq_ctx_term(context_);
}

void Registrar::set_goodbye(Json message) {
  std::vector<uint8_t> bytes = Json::to_msgpack(message);
  std::lock_guard lock(mutex_);
  goodbye_.assign(bytes.begin(), bytes.end());
}

uint64_t Registrar::sent() const {
  std::lock_guard lock(mutex_);
  return sent_;
}

void Registrar::loop() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    lock.unlock();
    // Non-blocking: while the proxy is unreachable the message waits in ZMQ's small queue.
    const int rc = zmq_send(socket_, payload_.data(), payload_.size(), ZMQ_DONTWAIT);
    lock.lock();
    if (rc >= 0) ++sent_;
    cv_.wait_for(lock, interval_, [&] { return stopping_; });
  }
}

std::string local_address_towards(const std::string& peer_host) {
  sockaddr_in peer{};
  peer.sin_family = AF_INET;
  peer.sin_port = htons(9);
  if (inet_pton(AF_INET, peer_host.c_str(), &peer.sin_addr) != 1) {
    addrinfo hints{};
    hints.ai_family = AF_INET;
    addrinfo* found = nullptr;
    if (getaddrinfo(peer_host.c_str(), nullptr, &hints, &found) != 0 || !found) return "127.0.0.1";
    peer.sin_addr = reinterpret_cast<sockaddr_in*>(found->ai_addr)->sin_addr;
    freeaddrinfo(found);
  }
  const std::string peer_ip = [&] {
    char buf[INET_ADDRSTRLEN];
    return std::string(inet_ntop(AF_INET, &peer.sin_addr, buf, sizeof buf) ? buf : "127.0.0.1");
  }();
  if ((ntohl(peer.sin_addr.s_addr) >> 24) == 127) return peer_ip;
  int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
  if (fd < 0) return "127.0.0.1";
  std::string out = "127.0.0.1";
  sockaddr_in self{};
  socklen_t len = sizeof self;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&peer), sizeof peer) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&self), &len) == 0) {
    char buf[INET_ADDRSTRLEN];
    if (inet_ntop(AF_INET, &self.sin_addr, buf, sizeof buf)) out = buf;
  }
  ::close(fd);
  return out;
}

}  // namespace baton
