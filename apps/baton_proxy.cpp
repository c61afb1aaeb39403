// baton-proxy: the OpenAI-compatible front of a P/D fleet (DESIGN.md section 1).
//   baton-proxy [--host 0.0.0.0] [--port 10001] [--ping-port 36367]
// Prefill and decode servers started with --kv-transfer-config register on the ping port.
#include <csignal>
#include <cstdio>
#include <thread>

#include "common/cli.h"
#include "common/log.h"
#include "proxy/proxy_server.h"

namespace {

volatile std::sig_atomic_t g_stop = 0;

baton::Status run(int argc, char** argv) {
  using namespace baton;
  proxy::ProxyConfig c;
  std::string log_level = "info";
  ArgParser args("baton-proxy", "Route OpenAI requests through a prefill instance, then a decode instance.");
  args.add({"--host"}, &c.host, "listening address (HTTP and registrations)");
  args.add({"--port"}, &c.port, "HTTP port of the OpenAI API");
  args.add({"--ping-port", "--proxy-ping-port"}, &c.ping_port, "ZMQ port where instances register");
  args.add({"--evict-after-s"}, &c.evict_after_s, "drop an instance silent for this long");
  args.add({"--connect-timeout-s"}, &c.connect_timeout_s, "reaching an instance and sending it the request");
  args.add({"--prefill-timeout-s"}, &c.prefill_timeout_s, "a prefill's whole answer");
  args.add({"--token-timeout-s"}, &c.token_timeout_s, "longest gap between two pieces of a decode answer");
  args.add({"--http-threads"}, &c.http_threads, "threads serving HTTP connections");
  args.add({"--api-key"}, &c.api_key,
           "require 'Authorization: Bearer KEY' for the API, /instances and /metrics (passed on to the instances)");
  args.add({"--metrics-key"}, &c.metrics_key, "also open /metrics to 'Authorization: Bearer KEY'");
  args.add({"--token"}, &c.token, "deployment token: ignore registrations that do not carry it");
  args.add({"--max-concurrent-requests"}, &c.max_concurrent_requests, "requests in flight at most; more get 429");
  args.add({"--max-body-bytes"}, &c.max_body_bytes, "largest request body accepted (413 above)");
  args.add({"--max-instances"}, &c.max_instances, "registered instances at most; further addresses are refused");
  args.add({"--log-level"}, &log_level, "debug, info, warning, error");
  BATON_RETURN_IF_ERROR(args.parse(argc, argv));
  if (args.help_requested()) return {};
  BATON_ASSIGN_OR_RETURN(log::Level level, log::parse_level(log_level));
  log::set_level(level);
  if (c.port < 0 || c.port > 65535) return make_error("--port must be in 0..65535");
  if (c.ping_port < 0 || c.ping_port > 65535) return make_error("--ping-port must be in 0..65535");
  if (!(c.evict_after_s > 0)) return make_error("--evict-after-s must be positive");
  if (c.max_concurrent_requests < 1) return make_error("--max-concurrent-requests must be at least 1");
  if (c.max_instances < 1) return make_error("--max-instances must be at least 1");
  if (c.token.empty())
    log::warn(
        "no --token: any process that reaches the ping port can register as a prefill or decode and be "
        "sent user requests (an address's heartbeats and unregister are honoured only from the connection "
        "that registered it). Set the same --token here and \"token\" in every instance's "
        "--kv-transfer-config, or keep the ping port on a network only the fleet reaches");

  proxy::ProxyServer server(c);
  BATON_RETURN_IF_ERROR(server.start());
  // Machine-read by tests and scripts (port 0 picks free ports).
  std::printf("baton-proxy listening on %s:%d, registrations on port %d\n", c.host.c_str(), server.port(),
              server.ping_port());
  std::fflush(stdout);
  std::signal(SIGINT, [](int) { g_stop = 1; });
  std::signal(SIGTERM, [](int) { g_stop = 1; });
  std::signal(SIGPIPE, SIG_IGN);
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  log::info("shutting down");
  server.stop();
  return {};
}

}  // namespace

int main(int argc, char** argv) { return baton::run_main("baton-proxy", argc, argv, run); }
