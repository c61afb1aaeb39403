#include "server/http.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <cerrno>
#include <future>
#include <optional>

#include "common/json.h"
#include "xfer/socket.h"

namespace baton::http {
namespace {

using namespace std::chrono_literals;
using Response = beast::http::response<beast::http::string_body>;

// Generous: a wait that runs out is a failure, never a hang.
constexpr auto kDeadline = 10s;

// A client on a blocking socket whose every read has a deadline, so a server that neither
// answers nor closes fails the test instead of hanging it. Responses are parsed by Beast.
class TestClient {
 public:
  explicit TestClient(int port) {
    auto s = xfer::Socket::connect("127.0.0.1", port, std::chrono::duration_cast<std::chrono::milliseconds>(kDeadline));
    if (!s.ok()) {
      ADD_FAILURE() << "connect: " << s.error();
      return;
    }
    socket_ = std::move(*s);
    const baton::Status st = socket_.set_recv_timeout(std::chrono::duration_cast<std::chrono::milliseconds>(kDeadline));
    EXPECT_TRUE(st.ok()) << st.message();
  }

  void send(std::string_view bytes) {
    const baton::Status st = socket_.send_all(bytes.data(), bytes.size());
    EXPECT_TRUE(st.ok()) << st.message();
  }

  // The next response. With `chunks`, a chunked body is stored there one entry per chunk as it
  // was framed on the wire, and the response's body stays empty.
  std::optional<Response> read_response(std::vector<std::string>* chunks = nullptr) {
    beast::http::response_parser<beast::http::string_body> parser;
    parser.eager(true);
    auto on_chunk_header = [&](std::uint64_t size, beast::string_view, beast::error_code&) {
      if (size > 0) chunks->emplace_back();
    };
    auto on_chunk_body = [&](std::uint64_t, beast::string_view data, beast::error_code&) {
      chunks->back().append(data.data(), data.size());
      return data.size();
    };
    if (chunks) {
      parser.on_chunk_header(on_chunk_header);
      parser.on_chunk_body(on_chunk_body);
    }
    for (;;) {
      if (!unread_.empty()) {
        beast::error_code ec;
        const size_t used = parser.put(asio::buffer(unread_), ec);
        unread_.erase(0, used);
        if (parser.is_done()) return parser.release();
        if (ec && ec != beast::http::error::need_more) {
          ADD_FAILURE() << "malformed response: " << ec.message();
          return std::nullopt;
        }
        if (used > 0) continue;
      }
      if (!receive()) {
        ADD_FAILURE() << "the connection closed or went silent before a whole response came";
        return std::nullopt;
      }
    }
  }

  // Reads until `marker` has arrived (the start of a stream); false if it never does.
  bool read_until(std::string_view marker) {
    while (unread_.find(marker) == std::string::npos)
      if (!receive()) return false;
    return true;
  }

  // Whether the server closes the connection (end of stream or reset) before the deadline;
  // what it still sends meanwhile is dropped.
  bool closed_by_server() {
    for (;;) {
      char buf[16384];
      const ssize_t got = ::recv(socket_.fd(), buf, sizeof buf, 0);
      if (got > 0) continue;
      if (got < 0 && errno == EINTR) continue;
      return got == 0 || errno == ECONNRESET;  // EAGAIN: the deadline passed with it open
    }
  }

  void close() { socket_ = xfer::Socket(); }

 private:
  bool receive() {
    char buf[16384];
    ssize_t got;
    do {
      got = ::recv(socket_.fd(), buf, sizeof buf, 0);
    } while (got < 0 && errno == EINTR);
    if (got <= 0) return false;
    unread_.append(buf, static_cast<size_t>(got));
    return true;
  }

  xfer::Socket socket_;
  std::string unread_;  // received, not yet parsed
};

std::string request_text(const std::string& method, const std::string& target, const std::string& body = "",
                         const std::string& headers = "") {
  std::string text = method + " " + target + " HTTP/1.1\r\nHost: test\r\n" + headers;
  if (!body.empty()) text += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  return text + "\r\n" + body;
}

// Answers 200 with "<tag> <method> <target>", so a test sees which route took a request.
Handler tagged_echo(std::string tag) {
  return [tag](const Request& req, Responder& res) -> asio::awaitable<void> {
    std::string body = tag + " " + std::string(req.method_string()) + " " + std::string(req.target());
    co_await res.send(Status::ok, "text/plain", std::move(body));
  };
}

ServerConfig loopback(size_t max_body_bytes = 1024, int idle_timeout_s = 30) {
  ServerConfig c;
  c.host = "127.0.0.1";
  c.port = 0;
  c.threads = 2;
  c.max_body_bytes = max_body_bytes;
  c.idle_timeout_s = idle_timeout_s;
  return c;
}

// A server whose error bodies show the status and message the server gave its formatter.
std::unique_ptr<Server> server_with_json_errors(const ServerConfig& config) {
  auto server = std::make_unique<Server>(config);
  server->set_error_formatter([](Status status, const std::string& message) {
    return Json{{"status", static_cast<int>(status)}, {"message", message}}.dump();
  });
  return server;
}

// The formatter's body of an error response, checked against its status.
std::string formatted_error(const Response& res) {
  const Json j = Json::parse(res.body());
  EXPECT_EQ(j["status"], res.result_int());
  EXPECT_EQ(res[beast::http::field::content_type], "application/json");
  return j["message"].get<std::string>();
}

TEST(HttpServerTest, RoutesByExactPathThenMethod) {
  auto server = server_with_json_errors(loopback());
  server->route("GET", "/a", tagged_echo("get-a"));
  server->route("*", "/a", tagged_echo("any-a"));
  server->route("POST", "/b", tagged_echo("post-b"));
  server->route("*", "/any", tagged_echo("any"));
  ASSERT_TRUE(server->start().ok());
  ASSERT_GT(server->port(), 0);

  TestClient client(server->port());
  struct Case {
    std::string method, target;
    unsigned status;
    std::string says;
  };
  for (const Case& c : std::vector<Case>{{"GET", "/a", 200, "get-a GET /a"},
                                         {"GET", "/a?x=1", 200, "get-a GET /a?x=1"},  // the query is not routed on
                                         {"PUT", "/a", 200, "any-a PUT /a"},          // "*" takes other methods
                                         {"DELETE", "/any", 200, "any DELETE /any"},
                                         {"POST", "/b", 200, "post-b POST /b"},
                                         {"GET", "/b", 405, "GET is not allowed on /b"},
                                         {"GET", "/nope", 404, "no route for GET /nope"},
                                         {"GET", "/a/", 404, "no route for GET /a/"}}) {
    SCOPED_TRACE(c.method + " " + c.target);
    client.send(request_text(c.method, c.target));
    auto res = client.read_response();
    ASSERT_TRUE(res);
    EXPECT_EQ(res->result_int(), c.status);
    EXPECT_EQ(c.status == 200 ? res->body() : formatted_error(*res), c.says);
    EXPECT_TRUE(res->keep_alive());  // errors of routing keep the connection
  }
}

TEST(HttpServerTest, KeepAliveServesRequestsInOrderUntilConnectionClose) {
  auto server = server_with_json_errors(loopback());
  server->route("POST", "/echo", [](const Request& req, Responder& res) -> asio::awaitable<void> {
    std::string body = req.body();
    co_await res.send(Status::ok, "text/plain", std::move(body));
  });
  ASSERT_TRUE(server->start().ok());
  TestClient client(server->port());
  // Two requests in one write (pipelined), answered in order on the one connection.
  client.send(request_text("POST", "/echo", "first") + request_text("POST", "/echo", "second"));
  for (const std::string expected : {"first", "second"}) {
    auto res = client.read_response();
    ASSERT_TRUE(res);
    EXPECT_EQ(res->body(), expected);
    EXPECT_TRUE(res->keep_alive());
  }
  client.send(request_text("POST", "/echo", "last", "Connection: close\r\n"));
  auto res = client.read_response();
  ASSERT_TRUE(res);
  EXPECT_EQ(res->body(), "last");
  EXPECT_FALSE(res->keep_alive());
  EXPECT_TRUE(client.closed_by_server());
}

TEST(HttpServerTest, BodyOverTheLimitIs413WithTheFormattersBody) {
  auto server = server_with_json_errors(loopback(/*max_body_bytes=*/1024));
  server->route("POST", "/echo", [](const Request& req, Responder& res) -> asio::awaitable<void> {
    std::string body = std::to_string(req.body().size());
    co_await res.send(Status::ok, "text/plain", std::move(body));
  });
  ASSERT_TRUE(server->start().ok());
  {
    TestClient at_limit(server->port());
    at_limit.send(request_text("POST", "/echo", std::string(1024, 'x')));
    auto res = at_limit.read_response();
    ASSERT_TRUE(res);
    EXPECT_EQ(res->result(), Status::ok);
    EXPECT_EQ(res->body(), "1024");
  }
  TestClient over(server->port());
  over.send(request_text("POST", "/echo", std::string(4096, 'x')));
  auto res = over.read_response();
  ASSERT_TRUE(res);
  EXPECT_EQ(res->result(), Status::payload_too_large);
  EXPECT_EQ(formatted_error(*res), "request body exceeds the limit of 1024 bytes");
  EXPECT_FALSE(res->keep_alive());
  EXPECT_TRUE(over.closed_by_server());
}

TEST(HttpServerTest, MalformedRequestsAre400AndClose) {
  auto server = server_with_json_errors(loopback());
  server->route("GET", "/a", tagged_echo("a"));
  ASSERT_TRUE(server->start().ok());
  for (const std::string bad : {"GARBAGE\r\n\r\n", "GET /a HTTP/9\r\n\r\n", "GET /a HTTP/1.1\r\nno colon here\r\n\r\n",
                                "POST /a HTTP/1.1\r\nContent-Length: many\r\n\r\n"}) {
    SCOPED_TRACE(bad);
    TestClient client(server->port());
    client.send(bad);
    auto res = client.read_response();
    ASSERT_TRUE(res);
    EXPECT_EQ(res->result(), Status::bad_request);
    EXPECT_EQ(formatted_error(*res).rfind("malformed HTTP request: ", 0), 0u) << res->body();
    EXPECT_FALSE(res->keep_alive());
    EXPECT_TRUE(client.closed_by_server());
  }
}

TEST(HttpServerTest, HandlersThatDoNotAnswerGet500) {
  auto server = server_with_json_errors(loopback());
  server->route("GET", "/throws", [](const Request&, Responder&) -> asio::awaitable<void> {
    throw std::runtime_error("boom");
    co_return;
  });
  server->route("GET", "/silent", [](const Request&, Responder&) -> asio::awaitable<void> { co_return; });
  server->route("GET", "/throws-mid-stream", [](const Request&, Responder& res) -> asio::awaitable<void> {
    std::string event = "data: 1\n\n";
    if (co_await res.start_stream("text/event-stream")) co_await res.write_chunk(std::move(event));
    throw std::runtime_error("boom");
  });
  server->route("GET", "/ok", tagged_echo("ok"));
  ASSERT_TRUE(server->start().ok());

  TestClient client(server->port());
  for (const auto& [target, says] : {std::pair{"/throws", "internal error"}, std::pair{"/silent", "no response"}}) {
    client.send(request_text("GET", target));
    auto res = client.read_response();
    ASSERT_TRUE(res);
    EXPECT_EQ(res->result(), Status::internal_server_error);
    EXPECT_EQ(formatted_error(*res), says);
  }
  // The connection still serves: nothing had been sent when the handlers gave up.
  client.send(request_text("GET", "/ok"));
  auto ok = client.read_response();
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->body(), "ok GET /ok");
  // Mid-stream there is no way to answer 500: the connection is closed.
  client.send(request_text("GET", "/throws-mid-stream"));
  EXPECT_TRUE(client.closed_by_server());
}

TEST(HttpServerTest, StreamArrivesAsChunksAndTheConnectionStaysUsable) {
  auto server = server_with_json_errors(loopback());
  server->route("GET", "/stream", [](const Request&, Responder& res) -> asio::awaitable<void> {
    if (!co_await res.start_stream("text/event-stream")) co_return;
    for (std::string piece : {"data: 1\n\n", "", "data: {\"n\":2}\n\n"})  // an empty piece sends no chunk
      if (!co_await res.write_chunk(std::move(piece))) co_return;
    co_await res.end_stream();
  });
  ASSERT_TRUE(server->start().ok());
  TestClient client(server->port());
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE(round);
    client.send(request_text("GET", "/stream"));
    std::vector<std::string> chunks;
    auto res = client.read_response(&chunks);
    ASSERT_TRUE(res);
    EXPECT_EQ(res->result(), Status::ok);
    EXPECT_TRUE(res->chunked());
    EXPECT_TRUE(res->keep_alive());
    EXPECT_EQ((*res)[beast::http::field::content_type], "text/event-stream");
    EXPECT_EQ((*res)[beast::http::field::cache_control], "no-cache");
    EXPECT_EQ(chunks, (std::vector<std::string>{"data: 1\n\n", "data: {\"n\":2}\n\n"}));
  }
}

TEST(HttpServerTest, SetHeaderShowsOnWholeAndStreamedResponses) {
  auto server = server_with_json_errors(loopback());
  server->route("GET", "/whole", [](const Request&, Responder& res) -> asio::awaitable<void> {
    res.set_header("X-Request-Id", "whole-1");
    std::string body = "made";
    co_await res.send(Status::created, "text/plain", std::move(body));
  });
  server->route("GET", "/stream", [](const Request&, Responder& res) -> asio::awaitable<void> {
    res.set_header("X-Request-Id", "stream-1");
    res.set_header("X-Other", "two");
    if (co_await res.start_stream("text/event-stream")) co_await res.end_stream();
  });
  ASSERT_TRUE(server->start().ok());
  TestClient client(server->port());
  client.send(request_text("GET", "/whole"));
  auto whole = client.read_response();
  ASSERT_TRUE(whole);
  EXPECT_EQ(whole->result(), Status::created);
  EXPECT_EQ((*whole)["X-Request-Id"], "whole-1");
  EXPECT_EQ((*whole)[beast::http::field::server], "baton");
  client.send(request_text("GET", "/stream"));
  std::vector<std::string> chunks;
  auto streamed = client.read_response(&chunks);
  ASSERT_TRUE(streamed);
  EXPECT_EQ((*streamed)["X-Request-Id"], "stream-1");
  EXPECT_EQ((*streamed)["X-Other"], "two");
  EXPECT_TRUE(chunks.empty());
}

TEST(HttpServerTest, WriteChunkIsFalseOnceTheClientIsGone) {
  std::promise<void> client_gone;
  std::promise<bool> write_failed;
  auto server = server_with_json_errors(loopback());
  server->route("GET", "/stream", [&](const Request&, Responder& res) -> asio::awaitable<void> {
    std::string first = "data: first\n\n";
    bool failed = !co_await res.start_stream("text/event-stream");
    if (!failed) failed = !co_await res.write_chunk(std::move(first));
    // Blocks this server thread (the other serves on): the test's condition, with a deadline.
    if (!failed) client_gone.get_future().wait_for(kDeadline);
    // The first write after the close may still be buffered; the reset fails the ones after it.
    for (auto until = std::chrono::steady_clock::now() + kDeadline;
         !failed && std::chrono::steady_clock::now() < until;) {
      std::string filler(16384, 'x');
      failed = !co_await res.write_chunk(std::move(filler));
    }
    write_failed.set_value(failed);
  });
  ASSERT_TRUE(server->start().ok());
  auto result = write_failed.get_future();
  {
    TestClient client(server->port());
    client.send(request_text("GET", "/stream"));
    ASSERT_TRUE(client.read_until("data: first"));
    client.close();
  }
  client_gone.set_value();
  ASSERT_EQ(result.wait_for(3 * kDeadline), std::future_status::ready);
  EXPECT_TRUE(result.get());
}

TEST(HttpServerTest, IdleKeepAliveConnectionIsClosed) {
  auto server = server_with_json_errors(loopback(1024, /*idle_timeout_s=*/1));
  server->route("GET", "/a", tagged_echo("a"));
  ASSERT_TRUE(server->start().ok());
  TestClient client(server->port());
  client.send(request_text("GET", "/a"));
  auto res = client.read_response();
  ASSERT_TRUE(res);
  EXPECT_TRUE(res->keep_alive());
  EXPECT_TRUE(client.closed_by_server());  // within the client's deadline, well past the idle timeout
}

TEST(HttpServerTest, StopReturnsWithConnectionsOpen) {
  auto server = server_with_json_errors(loopback());
  server->route("GET", "/a", tagged_echo("a"));
  // A stream whose handler waits (suspended, no thread held) far longer than the test runs.
  server->route("GET", "/stream", [](const Request&, Responder& res) -> asio::awaitable<void> {
    std::string event = "data: 1\n\n";
    if (!co_await res.start_stream("text/event-stream")) co_return;
    if (!co_await res.write_chunk(std::move(event))) co_return;
    asio::steady_timer wait(co_await asio::this_coro::executor, std::chrono::hours(1));
    co_await wait.async_wait(kNoThrow);
    co_await res.end_stream();
  });
  ASSERT_TRUE(server->start().ok());
  TestClient idle(server->port());
  TestClient kept_alive(server->port());
  kept_alive.send(request_text("GET", "/a"));
  ASSERT_TRUE(kept_alive.read_response());
  TestClient half_sent(server->port());
  half_sent.send("GET /a HTTP/1.1\r\nHo");
  TestClient streaming(server->port());
  streaming.send(request_text("GET", "/stream"));
  ASSERT_TRUE(streaming.read_until("data: 1"));

  server->stop();
  server->stop();  // a second stop (the destructor's) is harmless
  server.reset();
  // Destroyed, the server has closed every connection it held.
  for (TestClient* c : {&idle, &kept_alive, &half_sent, &streaming}) EXPECT_TRUE(c->closed_by_server());
}

TEST(HttpServerTest, StartRefusesABadHostOrPort) {
  ServerConfig bad_host = loopback();
  bad_host.host = "localhost:80";
  const baton::Status host = Server(bad_host).start();
  ASSERT_FALSE(host.ok());
  EXPECT_NE(host.message().find("--host 'localhost:80' is not an IP address"), std::string::npos) << host.message();
  ServerConfig bad_port = loopback();
  bad_port.port = 70000;
  const baton::Status port = Server(bad_port).start();
  ASSERT_FALSE(port.ok());
  EXPECT_NE(port.message().find("--port must be in 0..65535"), std::string::npos) << port.message();
}

}  // namespace
}  // namespace baton::http
