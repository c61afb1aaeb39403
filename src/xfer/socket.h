// Blocking TCP helpers with deadlines, and the framing of the transfer engine's control
// channel: [type u32][status u32][id u64][payload length u64] then the payload.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "common/result.h"

struct iovec;

namespace baton::xfer {

using Clock = std::chrono::steady_clock;

// An owned file descriptor.
class Socket {
 public:
  Socket() = default;
  explicit Socket(int fd) : fd_(fd) {}
  Socket(Socket&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Socket& operator=(Socket&& o) noexcept;
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  ~Socket();

  int fd() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void shutdown();  // wakes a thread blocked in recv on it
  void shutdown_write();  // sends what is queued, then end of stream; receiving goes on

  static Result<Socket> listen(const std::string& host, int port, int* bound_port);
  static Result<Socket> connect(const std::string& host, int port, std::chrono::milliseconds timeout);
  // On a non-blocking listener: a waiting connection (itself non-blocking), an invalid Socket
  // when none waits, or the error (EMFILE, ENFILE, ...; the connection stays queued).
  Result<Socket> accept_nonblocking();
  Status set_nonblocking(bool on);

  // Whole buffers; an error names the peer problem ("peer closed the connection").
  Status send_all(const void* data, size_t n);
  Status recv_all(void* data, size_t n);
  // Every part, in order, with as few system calls as the kernel allows (sendmsg / recvmsg of up
  // to IOV_MAX parts at a time): a frame goes out as one segment, a batch of ranges in one call.
  // The entries are scratch: one that moved partly is advanced past what moved.
  Status send_all(std::vector<iovec>& parts);
  Status recv_all(std::vector<iovec>& parts);
  Status set_recv_timeout(std::chrono::milliseconds t);

 private:
  int fd_ = -1;
};

enum class MsgType : uint32_t {
  kHello = 1,
  kWelcome,
  kRefused,
  kReadRequest,
  kReadData,
  kWriteRequest,
  kWriteDone,
  kNotify,
  kRegionsRequest,
  kRegions,
  kTransferError,
  kAuthorize,  // a capability for the session; answered by kRegions (id 0): what it may now see
};

struct FrameHeader {
  MsgType type;
  uint32_t status;
  uint64_t id;
  uint64_t length;
};

constexpr uint64_t kMaxControlPayload = 64ull << 20;  // JSON and op lists; data is streamed

Status send_frame(Socket& s, MsgType type, uint64_t id, const std::string& payload, uint32_t status = 0);
Result<FrameHeader> recv_header(Socket& s);
Result<std::string> recv_payload(Socket& s, const FrameHeader& h);

}  // namespace baton::xfer
