#include "server/http.h"

#include "common/log.h"

namespace baton::http {

namespace http = beast::http;
using asio::awaitable;
using asio::use_awaitable;

awaitable<void> Responder::send(Status status, std::string content_type, std::string body) {
  http::response<http::string_body> res{status, req_.version()};
  res.set(http::field::server, "baton");
  res.set(http::field::content_type, content_type);
  for (const auto& [k, v] : extra_headers_) res.set(k, v);
  res.keep_alive(req_.keep_alive() && keep_alive_);
  res.body() = std::move(body);
  res.prepare_payload();
  responded_ = true;
  auto [ec, n] = co_await http::async_write(stream_, res, kNoThrow);
  if (ec) keep_alive_ = false;
}

awaitable<bool> Responder::start_stream(std::string content_type) {
  http::response<http::empty_body> res{http::status::ok, req_.version()};
  res.set(http::field::server, "baton");
  res.set(http::field::content_type, content_type);
  res.set(http::field::cache_control, "no-cache");
  for (const auto& [k, v] : extra_headers_) res.set(k, v);
  res.chunked(true);
  res.keep_alive(req_.keep_alive());
  responded_ = true;
  http::response_serializer<http::empty_body> sr{res};
  auto [ec, n] = co_await http::async_write_header(stream_, sr, kNoThrow);
  if (ec) keep_alive_ = false;
  co_return !ec;
}

awaitable<bool> Responder::write_chunk(std::string data) {
  if (data.empty()) co_return true;
  stream_.expires_after(std::chrono::seconds(60));  // a client that stops reading is dropped
  auto [ec, n] = co_await asio::async_write(stream_, http::make_chunk(asio::buffer(data)), kNoThrow);
  if (ec) keep_alive_ = false;
  co_return !ec;
}

awaitable<void> Responder::end_stream() {
  auto [ec, n] = co_await asio::async_write(stream_, http::make_chunk_last(), kNoThrow);
  if (ec) keep_alive_ = false;
}

Server::Server(ServerConfig config) : config_(std::move(config)), acceptor_(ioc_) {
  error_body_ = [](Status, const std::string& msg) { return msg; };
}

Server::~Server() { stop(); }

void Server::route(std::string method, std::string path, Handler handler) {
  routes_[std::move(path)][std::move(method)] = std::move(handler);
}

baton::Status Server::start() {
  boost::system::error_code ec;
  auto addr = asio::ip::make_address(config_.host, ec);
  if (ec) return make_error("--host '", config_.host, "' is not an IP address");
  if (config_.port < 0 || config_.port > 65535) return make_error("--port must be in 0..65535");
  tcp::endpoint ep(addr, static_cast<unsigned short>(config_.port));
  acceptor_.open(ep.protocol(), ec);
  if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor_.bind(ep, ec);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return make_error("cannot listen on ", config_.host, ":", config_.port, ": ", ec.message());
  bound_port_ = acceptor_.local_endpoint().port();
  asio::co_spawn(ioc_, accept_loop(), asio::detached);
  for (int i = 0; i < std::max(1, config_.threads); ++i) threads_.emplace_back([this] { ioc_.run(); });
  return {};
}

void Server::stop() {
  if (threads_.empty()) return;
  ioc_.stop();
  for (auto& t : threads_) t.join();
  threads_.clear();
}

awaitable<void> Server::accept_loop() {
  // A failed accept leaves the connection queued and the socket readable, so retrying at once
  // spins (out of descriptors: millions of failures a second). Waits from 10 ms, doubling to 1 s
  // while accepts keep failing; a client that gave up (ECONNABORTED) is no reason to wait.
  constexpr auto kFirstPause = std::chrono::milliseconds(10), kLongestPause = std::chrono::milliseconds(1000);
  auto pause = kFirstPause;
  log::Throttle failures;
  asio::steady_timer timer(ioc_);
  for (;;) {
    auto [ec, socket] = co_await acceptor_.async_accept(asio::make_strand(ioc_), kNoThrow);
    if (ec) {
      if (ec == asio::error::operation_aborted) co_return;
      const bool out_of_descriptors = ec == asio::error::no_descriptors || ec.value() == ENFILE;
      failures.warn("accept failed: ", ec.message(),
                    out_of_descriptors ? " (raise the open-files limit, ulimit -n)" : "");
      if (ec == asio::error::connection_aborted) continue;
      timer.expires_after(pause);
      auto [tec] = co_await timer.async_wait(kNoThrow);
      if (tec == asio::error::operation_aborted) co_return;
      pause = std::min(pause * 2, kLongestPause);
      continue;
    }
    pause = kFirstPause;
    auto exec = socket.get_executor();
    asio::co_spawn(exec, serve(std::move(socket)), asio::detached);
  }
}

awaitable<void> Server::serve(tcp::socket socket) {
  // Streams send one small chunk per token: without TCP_NODELAY, Nagle holds each chunk until
  // the client's (delayed, ~40 ms) ACK of the previous one.
  boost::system::error_code nodelay_ec;
  socket.set_option(tcp::no_delay(true), nodelay_ec);
  beast::tcp_stream stream(std::move(socket));
  beast::flat_buffer buffer;
  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.body_limit(config_.max_body_bytes);
    parser.header_limit(64 * 1024);
    stream.expires_after(std::chrono::seconds(config_.idle_timeout_s));
    auto [ec, n] = co_await http::async_read(stream, buffer, parser, kNoThrow);
    if (ec == http::error::end_of_stream || ec == asio::error::eof || ec == beast::error::timeout ||
        ec == asio::error::connection_reset)
      break;
    if (ec) {
      Request dummy;
      dummy.version(11);
      dummy.keep_alive(false);
      Responder r(stream, dummy);
      // Named locals, not temporaries, across co_await: g++ 12 destroys some temporaries twice.
      const bool too_large = ec == http::error::body_limit;
      const Status status = too_large ? Status::payload_too_large : Status::bad_request;
      std::string body = error_body_(status, too_large ? "request body exceeds the limit of " +
                                                             std::to_string(config_.max_body_bytes) + " bytes"
                                                       : "malformed HTTP request: " + ec.message());
      co_await r.send(status, "application/json", std::move(body));
      // Lingering close: read and drop what the client is still sending, so that it sees the
      // error response rather than a connection reset.
      beast::error_code ignored;
      stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
      stream.expires_after(std::chrono::seconds(5));
      std::vector<char> sink(64 * 1024);
      for (size_t drained = 0; drained < (size_t{256} << 20);) {
        auto [rec, got] = co_await stream.async_read_some(asio::buffer(sink), kNoThrow);
        if (rec) break;
        drained += got;
      }
      co_return;
    }
    stream.expires_never();
    Request req = parser.release();
    Responder responder(stream, req);
    std::string path(req.target());
    if (size_t q = path.find('?'); q != std::string::npos) path.resize(q);
    auto route = routes_.find(path);
    if (route == routes_.end()) {
      std::string body = error_body_(Status::not_found, "no route for " + std::string(req.method_string()) + " " + path);
      co_await responder.send(Status::not_found, "application/json", std::move(body));
    } else {
      auto h = route->second.find(std::string(req.method_string()));
      if (h == route->second.end()) h = route->second.find("*");
      if (h == route->second.end()) {
        std::string body =
            error_body_(Status::method_not_allowed, std::string(req.method_string()) + " is not allowed on " + path);
        co_await responder.send(Status::method_not_allowed, "application/json", std::move(body));
      } else {
        bool threw = false;
        try {
          co_await h->second(req, responder);
        } catch (const std::exception& e) {
          log::error("handler for ", path, " threw: ", e.what());
          threw = true;
        }
        if (threw && responder.responded()) break;  // mid-stream: the connection is unusable
        if (!responder.responded()) {
          std::string body = error_body_(Status::internal_server_error, threw ? "internal error" : "no response");
          co_await responder.send(Status::internal_server_error, "application/json", std::move(body));
        }
      }
    }
    if (!responder.keep_alive() || !req.keep_alive()) break;
  }
  beast::error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
}

}  // namespace baton::http
