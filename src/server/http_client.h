// The HTTP/1.1 client side of our Beast stack, for the proxy's relay: one request per
// connection, the response either whole or read piece by piece as it arrives (SSE relays).
// Every wait has a deadline, so a dead upstream is an error, never a hang.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "server/http.h"

namespace baton::http {

struct ClientResponse {
  int status = 0;
  std::string content_type;
  std::string body;
};

// An upstream call whose body is read as it arrives.
class ClientCall {
 public:
  explicit ClientCall(asio::any_io_executor executor) : stream_(executor) {}

  // Connects (within connect_timeout), sends the request and reads the response header
  // (within header_timeout: a non-streamed answer's header comes when the answer is ready).
  // An error means no answer came (refused, reset, timed out); sent() tells whether the
  // upstream may have acted on the request.
  asio::awaitable<baton::Status> start(std::string host, int port, std::string method, std::string target,
                                       std::string body, std::chrono::milliseconds connect_timeout,
                                       std::chrono::milliseconds header_timeout, std::string authorization = "");
  int status() const { return status_; }
  // Whether the request left this side: after a failure, false means the upstream never saw it.
  bool sent() const { return sent_; }
  const std::string& content_type() const { return content_type_; }
  // The next piece of the body; empty once the body is complete. Each piece may wait up to
  // `timeout` (the gap between two tokens of a stream).
  asio::awaitable<Result<std::string>> next(std::chrono::milliseconds timeout);
  // The rest of the body.
  asio::awaitable<Result<std::string>> read_all(std::chrono::milliseconds timeout);
  // Drops the connection (the upstream sees the client go away).
  void close();

 private:
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<beast::http::response_parser<beast::http::buffer_body>> parser_;
  int status_ = 0;
  std::string content_type_;
  bool done_ = false;
  bool sent_ = false;
};

}  // namespace baton::http
