// baton-proxy (DESIGN.md section 1): the OpenAI-compatible front of a P/D fleet.
//
// Instances register on a ZMQ ROUTER socket (the ping port). A completion or chat request goes
// to the prefill instance with the least outstanding tokens as {max_tokens: 1, stream: false,
// kv_transfer_params: {do_remote_decode: true}}; the kv_transfer_params it answers with go to a
// decode instance with the original request, whose answer (SSE or JSON) is relayed unchanged.
// A prefill that cannot be reached or fails before answering is retried once on another
// instance; a decode only when the request never reached it (else it may have consumed the
// prefill's KV). A client that goes away closes the decode connection, which aborts the
// request there (and the decode side releases the prefill's blocks).
#pragma once

#include <atomic>
#include <memory>
#include <set>
#include <string>
#include <thread>

#include "proxy/instance_table.h"
#include "server/access.h"
#include "server/http.h"
#include "server/metrics.h"

namespace baton::proxy {

struct ProxyConfig {
  std::string host = "0.0.0.0";
  int port = 10001;
  int ping_port = 36367;
  double evict_after_s = 10;         // an instance silent this long is dropped
  double connect_timeout_s = 5;      // reaching an instance and sending it the request
  double prefill_timeout_s = 600;    // the prefill's whole answer
  double token_timeout_s = 600;      // the longest gap between two pieces of a decode answer
  int http_threads = 2;
  std::string api_key;                  // clients must send 'Authorization: Bearer KEY' (forwarded)
  std::string metrics_key;              // also opens /metrics (server/access.h)
  std::string token;                    // deployment token: registrations without it are ignored
  int max_concurrent_requests = 8192;   // more at once get 429
  size_t max_body_bytes = size_t{32} << 20;  // as baton-server's --max-body-bytes
  size_t max_instances = 1024;               // registrations of further addresses are refused
};

class ProxyServer {
 public:
  explicit ProxyServer(ProxyConfig config);
  ~ProxyServer();
  Status start();
  void stop();
  int port() const { return http_.port(); }
  int ping_port() const { return ping_port_; }
  InstanceTable& instances() { return table_; }

 private:
  struct Counters;
  struct Rejections;
  void registration_loop();
  // One message from the ping port: `peer` is the ZMQ routing id of the connection it came on.
  void handle_registration(const std::string& peer, const std::string& payload, Clock::time_point now);
  http::asio::awaitable<void> relay(const http::Request& req, http::Responder& res, bool chat);
  http::asio::awaitable<void> relay_get(const http::Request& req, http::Responder& res, std::string target);
  // Answers 401 and returns false when the request may not use the API.
  http::asio::awaitable<bool> admit_api(const http::Request& req, http::Responder& res);

  ProxyConfig config_;
  InstanceTable table_;
  http::Server http_;
  Metrics metrics_;
  http::AccessKeys keys_;
  std::unique_ptr<Counters> counters_;
  std::unique_ptr<Rejections> rejections_;  // registration thread only
  std::atomic<int> in_flight_{0};
  void* zmq_context_ = nullptr;
  void* zmq_socket_ = nullptr;
  int ping_port_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread registration_thread_;
};

}  // namespace baton::proxy
