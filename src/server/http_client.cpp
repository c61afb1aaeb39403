#include "server/http_client.h"

namespace baton::http {

namespace bhttp = beast::http;
using asio::awaitable;

awaitable<baton::Status> ClientCall::start(std::string host, int port, std::string method, std::string target,
                                           std::string body, std::chrono::milliseconds connect_timeout,
                                           std::chrono::milliseconds header_timeout, std::string authorization) {
  boost::system::error_code ec;
  auto addr = asio::ip::make_address(host, ec);
  if (ec) co_return make_error("upstream host '", host, "' is not an IP address");
  tcp::endpoint ep(addr, static_cast<unsigned short>(port));
  stream_.expires_after(connect_timeout);
  auto [cec] = co_await stream_.async_connect(ep, kNoThrow);
  if (cec) co_return make_error("cannot connect to ", host, ":", port, ": ", cec.message());
  boost::system::error_code nodelay_ec;  // the proxy relays small stream chunks: no Nagle delay
  stream_.socket().set_option(tcp::no_delay(true), nodelay_ec);
  bhttp::request<bhttp::string_body> req{bhttp::string_to_verb(method), target, 11};
  req.set(bhttp::field::host, host + ":" + std::to_string(port));
  req.set(bhttp::field::content_type, "application/json");
  req.set(bhttp::field::user_agent, "baton-proxy");
  if (!authorization.empty()) req.set(bhttp::field::authorization, authorization);
  req.keep_alive(false);
  req.body() = std::move(body);
  req.prepare_payload();
  stream_.expires_after(connect_timeout);
  sent_ = true;  // from the first byte on, the upstream may act on it
  auto [wec, wn] = co_await bhttp::async_write(stream_, req, kNoThrow);
  if (wec) co_return make_error("sending to ", host, ":", port, " failed: ", wec.message());
  parser_.emplace();
  parser_->body_limit(boost::none);
  stream_.expires_after(header_timeout);
  auto [hec, hn] = co_await bhttp::async_read_header(stream_, buffer_, *parser_, kNoThrow);
  if (hec) co_return make_error("no answer from ", host, ":", port, ": ", hec.message());
  status_ = static_cast<int>(parser_->get().result_int());
  auto ct = parser_->get().find(bhttp::field::content_type);
  if (ct != parser_->get().end()) content_type_ = std::string(ct->value());
  done_ = parser_->is_done();
  co_return baton::Status{};
}

awaitable<Result<std::string>> ClientCall::next(std::chrono::milliseconds timeout) {
  if (done_ || !parser_) co_return std::string();
  char tmp[16384];
  for (;;) {
    parser_->get().body().data = tmp;
    parser_->get().body().size = sizeof tmp;
    stream_.expires_after(timeout);
    // read_some: return what has arrived (an SSE event), not wait for the buffer to fill.
    auto [ec, n] = co_await bhttp::async_read_some(stream_, buffer_, *parser_, kNoThrow);
    if (ec == bhttp::error::need_buffer) ec = {};
    if (ec) co_return make_error("upstream stream broke: ", ec.message());
    const size_t got = sizeof tmp - parser_->get().body().size;
    done_ = parser_->is_done();
    if (got > 0 || done_) co_return std::string(tmp, got);
  }
}

awaitable<Result<std::string>> ClientCall::read_all(std::chrono::milliseconds timeout) {
  std::string all;
  for (;;) {
    auto piece = co_await next(timeout);
    if (!piece.ok()) co_return piece;
    if (piece->empty() && done_) break;
    all += *piece;
    if (done_) break;
  }
  co_return all;
}

void ClientCall::close() {
  beast::error_code ignored;
  stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
  stream_.close();
}

}  // namespace baton::http
