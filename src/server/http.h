// A small HTTP/1.1 server on Boost.Beast with C++20 coroutines: keep-alive, body size limit
// (413), routing by method and path, whole responses and chunked streams (SSE). Each
// connection is one coroutine on its own strand; a few threads serve thousands of idle streams.
//
// Handlers are coroutines too. A handler that waits for the engine suspends on an
// asio channel (see openai_server.cpp), never blocking a thread.
#pragma once

#include <boost/asio.hpp>
#include <boost/beast.hpp>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/result.h"

namespace baton::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
using tcp = asio::ip::tcp;
using Request = beast::http::request<beast::http::string_body>;
using Status = beast::http::status;
// co_await an operation with this token to get its error code in a tuple instead of a throw.
inline constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);

// What a handler uses to answer. Exactly one of send() or start_stream()..end_stream().
class Responder {
 public:
  Responder(beast::tcp_stream& stream, const Request& req) : stream_(stream), req_(req) {}

  asio::awaitable<void> send(Status status, std::string content_type, std::string body);
  // Sends the headers of a chunked response. False if the client is gone.
  asio::awaitable<bool> start_stream(std::string content_type);
  // False if the client is gone (the handler should abort its work).
  asio::awaitable<bool> write_chunk(std::string data);
  asio::awaitable<void> end_stream();

  bool responded() const { return responded_; }
  bool keep_alive() const { return keep_alive_; }
  void set_header(std::string name, std::string value) { extra_headers_.emplace_back(std::move(name), std::move(value)); }

 private:
  beast::tcp_stream& stream_;
  const Request& req_;
  std::vector<std::pair<std::string, std::string>> extra_headers_;
  bool responded_ = false;
  bool keep_alive_ = true;
};

using Handler = std::function<asio::awaitable<void>(const Request&, Responder&)>;

struct ServerConfig {
  std::string host = "0.0.0.0";
  int port = 8000;  // 0: any free port (see Server::port())
  size_t max_body_bytes = size_t{32} << 20;
  int threads = 2;
  int idle_timeout_s = 300;  // a keep-alive connection with no request for this long is closed
};

class Server {
 public:
  explicit Server(ServerConfig config);
  ~Server();

  // Exact path match; "*" as method matches any. Unknown paths get 404, wrong methods 405.
  void route(std::string method, std::string path, Handler handler);
  // Called with (status, message) to format error bodies (413, 404, 400 on bad HTTP, ...).
  void set_error_formatter(std::function<std::string(Status, const std::string&)> f) { error_body_ = std::move(f); }

  // Binds and starts serving on background threads.
  baton::Status start();
  void stop();
  int port() const { return bound_port_; }
  asio::io_context& io_context() { return ioc_; }

 private:
  asio::awaitable<void> accept_loop();
  asio::awaitable<void> serve(tcp::socket socket);

  ServerConfig config_;
  asio::io_context ioc_;
  tcp::acceptor acceptor_;
  std::map<std::string, std::map<std::string, Handler>> routes_;  // path -> method -> handler
  std::function<std::string(Status, const std::string&)> error_body_;
  std::vector<std::thread> threads_;
  int bound_port_ = 0;
};

}  // namespace baton::http
