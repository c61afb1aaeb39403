// Registration with the proxy (DESIGN.md section 1): a P/D instance sends a msgpack map over a
// ZMQ DEALER socket to the proxy's ROUTER (the ping port, 36367 by default) right away and then
// every `interval`, so that a restarted proxy learns of it again within one interval.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

#include "common/json.h"
#include "common/result.h"

namespace baton {

class Registrar {
 public:
  // `message` is sent as is (msgpack); endpoint is "tcp://host:port".
  static Result<std::unique_ptr<Registrar>> start(const std::string& endpoint, Json message,
                                                  std::chrono::milliseconds interval);
  ~Registrar();
  uint64_t sent() const;
  // Sent once when the registrar is destroyed (e.g. {"type": "unregister"}), best effort.
  void set_goodbye(Json message);

 private:
  Registrar() = default;
  void loop();

  void* context_ = nullptr;
  void* socket_ = nullptr;
  std::string payload_;
  std::string goodbye_;
  std::chrono::milliseconds interval_{2000};
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  bool stopping_ = false;
  uint64_t sent_ = 0;
  std::thread thread_;
};

// The address of this host that a peer at `peer_host` (IPv4 address or host name) would see: the
// source address of the route to it; the loopback address itself for loopback. Used when a
// server listens on 0.0.0.0.
std::string local_address_towards(const std::string& peer_host);

}  // namespace baton
