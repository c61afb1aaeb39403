// For fuzz targets that drive a live server: one connection per input.
#pragma once

#include <sys/socket.h>

#include <cassert>
#include <chrono>
#include <cstdint>
#include <string>

#include "xfer/socket.h"

namespace baton::fuzz {

// Connects to host:port, sends the input, half-closes, and reads until the server closes or
// stays silent for `quiet` (it must answer or drop the connection, never crash).
inline void send_and_drain(const std::string& host, int port, const uint8_t* data, size_t size,
                           std::chrono::milliseconds quiet) {
  auto s = xfer::Socket::connect(host, port, std::chrono::milliseconds(1000));
  assert(s.ok());
  (void)s->set_recv_timeout(quiet);
  (void)s->send_all(data, size);
  ::shutdown(s->fd(), SHUT_WR);
  char buf[65536];
  while (::recv(s->fd(), buf, sizeof buf, 0) > 0) {
  }
}

}  // namespace baton::fuzz
