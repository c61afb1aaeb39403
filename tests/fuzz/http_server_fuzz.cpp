// libFuzzer target: our HTTP server (Beast parser, keep-alive loop, limits, routing) fed raw
// bytes on a fresh connection per input, with the OpenAI request parser behind its routes.
// The server must answer or close, never crash or hang, and keep serving the next input.
#include <cassert>
#include <cstdint>
#include <memory>

#include "common/log.h"
#include "server/http.h"
#include "server/openai_protocol.h"
#include "fuzz_socket.h"

namespace {

baton::http::Server& server() {
  static std::unique_ptr<baton::http::Server> s = [] {
    baton::log::set_level(baton::log::Level::kOff);
    baton::http::ServerConfig c;
    c.host = "127.0.0.1";
    c.port = 0;
    c.max_body_bytes = 8192;
    c.idle_timeout_s = 1;
    auto srv = std::make_unique<baton::http::Server>(c);
    for (const auto& route : {std::pair{"/v1/completions", baton::openai::Endpoint::kCompletions},
                              std::pair{"/v1/chat/completions", baton::openai::Endpoint::kChat}}) {
      const baton::openai::Endpoint ep = route.second;
      srv->route("POST", route.first, [ep](const baton::http::Request& req, baton::http::Responder& res)
                                   -> baton::http::asio::awaitable<void> {
        auto r = baton::openai::parse_request(req.body(), ep);
        std::string body = std::holds_alternative<baton::openai::ApiError>(r)
                               ? baton::openai::error_body(std::get<baton::openai::ApiError>(r))
                               : std::string("{}");
        co_await res.send(baton::http::Status::ok, "application/json", std::move(body));
      });
    }
    srv->route("GET", "/health", [](const baton::http::Request&, baton::http::Responder& res)
                                     -> baton::http::asio::awaitable<void> {
      std::string body = "{}";
      if (co_await res.start_stream("text/event-stream")) {
        std::string chunk = "data: {}\n\n";
        co_await res.write_chunk(std::move(chunk));
        co_await res.end_stream();
      }
      (void)body;
    });
    auto st = srv->start();
    assert(st.ok());
    return srv;
  }();
  return *s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  baton::fuzz::send_and_drain("127.0.0.1", server().port(), data, size, std::chrono::milliseconds(2000));
  return 0;
}
