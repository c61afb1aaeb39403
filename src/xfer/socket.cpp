#include "xfer/socket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>

namespace baton::xfer {

Socket& Socket::operator=(Socket&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.fd_;
    o.fd_ = -1;
  }
  return *this;
}

Socket::~Socket() {
  if (fd_ >= 0) ::close(fd_);
}

void Socket::shutdown() {
  if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
}

void Socket::shutdown_write() {
  if (fd_ >= 0) ::shutdown(fd_, SHUT_WR);
}

namespace {
Result<sockaddr_in> resolve(const std::string& host, int port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (host.empty() || host == "0.0.0.0") {
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    return addr;
  }
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) == 1) return addr;
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_INET;
  if (getaddrinfo(host.c_str(), nullptr, &hints, &res) != 0 || !res) return make_error("cannot resolve '", host, "'");
  addr.sin_addr = reinterpret_cast<sockaddr_in*>(res->ai_addr)->sin_addr;
  freeaddrinfo(res);
  return addr;
}

void tune(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  int buf = 4 << 20;
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
}
}  // namespace

Result<Socket> Socket::listen(const std::string& host, int port, int* bound_port) {
  BATON_ASSIGN_OR_RETURN(sockaddr_in addr, resolve(host, port));
  Socket s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s.valid()) return make_error("socket: ", std::strerror(errno));
  int one = 1;
  setsockopt(s.fd(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(s.fd(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    return make_error("cannot listen on ", host, ":", port, ": ", std::strerror(errno));
  if (::listen(s.fd(), 128) != 0) return make_error("listen: ", std::strerror(errno));
  socklen_t len = sizeof addr;
  getsockname(s.fd(), reinterpret_cast<sockaddr*>(&addr), &len);
  if (bound_port) *bound_port = ntohs(addr.sin_port);
  return s;
}

Result<Socket> Socket::connect(const std::string& host, int port, std::chrono::milliseconds timeout) {
  BATON_ASSIGN_OR_RETURN(sockaddr_in addr, resolve(host, port));
  Socket s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!s.valid()) return make_error("socket: ", std::strerror(errno));
  int rc = ::connect(s.fd(), reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  if (rc != 0 && errno != EINPROGRESS) return make_error("connect to ", host, ":", port, ": ", std::strerror(errno));
  if (rc != 0) {
    pollfd p{s.fd(), POLLOUT, 0};
    rc = ::poll(&p, 1, static_cast<int>(timeout.count()));
    if (rc == 0) return make_error("connect to ", host, ":", port, ": timed out");
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(s.fd(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) return make_error("connect to ", host, ":", port, ": ", std::strerror(err));
  }
  int flags = fcntl(s.fd(), F_GETFL);
  fcntl(s.fd(), F_SETFL, flags & ~O_NONBLOCK);
  tune(s.fd());
  return s;
}

Result<Socket> Socket::accept_nonblocking() {
  for (;;) {
    const int fd = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd >= 0) {
      tune(fd);
      return Socket(fd);
    }
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Socket();
    return make_error("accept: ", std::strerror(errno));
  }
}

Status Socket::set_nonblocking(bool on) {
  const int flags = fcntl(fd_, F_GETFL, 0);
  if (flags < 0 || fcntl(fd_, F_SETFL, on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK) != 0)
    return make_error("fcntl: ", std::strerror(errno));
  return {};
}

namespace {
// Moves parts[0, n) past k bytes; returns the index of the first part with bytes left.
size_t advance(iovec* parts, size_t n, size_t i, size_t k) {
  for (; i < n; ++i) {
    if (k < parts[i].iov_len) {
      parts[i].iov_base = static_cast<char*>(parts[i].iov_base) + k;
      parts[i].iov_len -= k;
      return i;
    }
    k -= parts[i].iov_len;
  }
  return i;
}

// Every byte of parts[0, n), in order, by sendmsg / recvmsg of up to IOV_MAX parts at a time.
template <bool kSend>
Status move_all(int fd, iovec* parts, size_t n) {
  size_t i = advance(parts, n, 0, 0);
  while (i < n) {
    msghdr m{};
    m.msg_iov = parts + i;
    m.msg_iovlen = std::min<size_t>(n - i, IOV_MAX);
    const ssize_t k = kSend ? ::sendmsg(fd, &m, MSG_NOSIGNAL) : ::recvmsg(fd, &m, 0);
    if (k < 0 && errno == EINTR) continue;
    if (kSend && k <= 0)
      return make_error("send to peer failed: ", k == 0 ? "connection closed" : std::strerror(errno));
    if (!kSend && k == 0) return make_error("peer closed the connection");
    if (!kSend && k < 0)
      return make_error(errno == EAGAIN ? "peer timed out" : std::string("recv failed: ") + std::strerror(errno));
    i = advance(parts, n, i, static_cast<size_t>(k));
  }
  return {};
}
}  // namespace

Status Socket::send_all(const void* data, size_t n) {
  iovec part{const_cast<void*>(data), n};
  return move_all<true>(fd_, &part, 1);
}

Status Socket::recv_all(void* data, size_t n) {
  iovec part{data, n};
  return move_all<false>(fd_, &part, 1);
}

Status Socket::send_all(std::vector<iovec>& parts) {
  return move_all<true>(fd_, parts.data(), parts.size());
}

Status Socket::recv_all(std::vector<iovec>& parts) {
  return move_all<false>(fd_, parts.data(), parts.size());
}

Status Socket::set_recv_timeout(std::chrono::milliseconds t) {
  timeval tv{static_cast<time_t>(t.count() / 1000), static_cast<suseconds_t>((t.count() % 1000) * 1000)};
  if (setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0) return make_error("setsockopt: ", std::strerror(errno));
  return {};
}

Status send_frame(Socket& s, MsgType type, uint64_t id, const std::string& payload, uint32_t status) {
  FrameHeader h{type, status, id, payload.size()};
  std::vector<iovec> parts{{&h, sizeof h}, {const_cast<char*>(payload.data()), payload.size()}};
  return s.send_all(parts);
}

Result<FrameHeader> recv_header(Socket& s) {
  FrameHeader h{};
  BATON_RETURN_IF_ERROR(s.recv_all(&h, sizeof h));
  if (static_cast<uint32_t>(h.type) < 1 || static_cast<uint32_t>(h.type) > static_cast<uint32_t>(MsgType::kAuthorize))
    return make_error("bad frame type ", static_cast<uint32_t>(h.type), " from peer");
  return h;
}

Result<std::string> recv_payload(Socket& s, const FrameHeader& h) {
  if (h.length > kMaxControlPayload) return make_error("control message of ", h.length, " bytes is too large");
  std::string p(h.length, '\0');
  BATON_RETURN_IF_ERROR(s.recv_all(p.data(), p.size()));
  return p;
}

}  // namespace baton::xfer
