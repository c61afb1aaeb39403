#include "proxy/proxy_server.h"

#include <zmq.h>

#include "common/log.h"
#include "proxy/relay_plan.h"
#include "server/http_client.h"
#include "server/openai_protocol.h"

namespace baton::proxy {

namespace asio = http::asio;
using asio::awaitable;
using std::chrono::milliseconds;

struct ProxyServer::Counters {
  std::atomic<uint64_t> requests{0}, completed{0}, failed{0}, client_aborts{0}, prefill_retries{0}, decode_retries{0},
      registrations{0}, evictions{0}, registrations_rejected{0};
};

// Refused registration messages: a counter and, per reason, at most one log line a second.
// Nothing is kept per sender, so a flood of them (forged, or from a misconfigured fleet) costs
// neither memory nor more than a few lines of log.
struct ProxyServer::Rejections {
  log::Throttle malformed, token, not_owner, table_full;
};

namespace {

milliseconds ms(double seconds) { return milliseconds(static_cast<int64_t>(seconds * 1000)); }

std::string error_json(int status, const std::string& message, const std::string& type) {
  openai::ApiError e;
  e.status = status;
  e.message = message;
  e.type = type;
  return openai::error_body(e);
}

// Answers with an OpenAI error body. Arguments by value: they live in the coroutine frame.
awaitable<void> send_error(http::Responder& res, int status, std::string message, std::string type) {
  std::string body = error_json(status, message, type);
  co_await res.send(static_cast<http::Status>(status), "application/json", std::move(body));
}

// A sender's text for a log line: at most 120 bytes, control bytes as '?', so that a forged
// registration can neither flood the log nor write lines of its own.
std::string loggable(std::string_view text) {
  std::string out(text.substr(0, 120));
  for (char& c : out)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  return text.size() > 120 ? out + "..." : out;
}

}  // namespace

ProxyServer::ProxyServer(ProxyConfig config)
    : config_(std::move(config)),
      table_(config_.max_instances),
      http_([&] {
        http::ServerConfig hc;
        hc.host = config_.host;
        hc.port = config_.port;
        hc.threads = config_.http_threads;
        hc.max_body_bytes = config_.max_body_bytes;
        return hc;
      }()),
      keys_{config_.api_key, config_.metrics_key},
      counters_(std::make_unique<Counters>()),
      rejections_(std::make_unique<Rejections>()) {
  Counters* c = counters_.get();
  InstanceTable* t = &table_;
  metrics_.add_gauge("baton_proxy:requests_total", "Requests received.", [c] { return double(c->requests); }, true);
  metrics_.add_gauge("baton_proxy:requests_completed_total", "Requests answered in full.", [c] { return double(c->completed); }, true);
  metrics_.add_gauge("baton_proxy:requests_failed_total", "Requests that ended in an error.", [c] { return double(c->failed); }, true);
  metrics_.add_gauge("baton_proxy:client_aborts_total", "Clients that went away mid-answer.", [c] { return double(c->client_aborts); }, true);
  metrics_.add_gauge("baton_proxy:prefill_retries_total", "Prefills retried on another instance.", [c] { return double(c->prefill_retries); }, true);
  metrics_.add_gauge("baton_proxy:decode_retries_total", "Decodes retried on another instance.", [c] { return double(c->decode_retries); }, true);
  metrics_.add_gauge("baton_proxy:registrations_total", "Instances that (re)joined.", [c] { return double(c->registrations); }, true);
  metrics_.add_gauge("baton_proxy:evictions_total", "Instances dropped after missed heartbeats.", [c] { return double(c->evictions); }, true);
  metrics_.add_gauge(
      "baton_proxy:registrations_rejected_total",
      "Registration messages refused (malformed, wrong token, another connection's address, table full).",
      [c] { return double(c->registrations_rejected); }, true);
  metrics_.add_gauge("baton_proxy:prefill_instances", "Registered prefill instances.", [t] { return t->count('P'); });
  metrics_.add_gauge("baton_proxy:decode_instances", "Registered decode instances.", [t] { return t->count('D'); });
}

ProxyServer::~ProxyServer() { stop(); }

awaitable<bool> ProxyServer::admit_api(const http::Request& req, http::Responder& res) {
  if (http::api_access(req, keys_) == http::Access::kApi) co_return true;
  co_await send_error(res, 401, "invalid or missing API key", "authentication_error");
  co_return false;
}

namespace {

// The client's Authorization header, passed on so that instances with --api-key accept it.
std::string authorization_of(const http::Request& req) {
  auto it = req.find(http::beast::http::field::authorization);
  return it == req.end() ? std::string() : std::string(it->value());
}

}  // namespace

Status ProxyServer::start() {
  zmq_context_ = zmq_ctx_new();
  zmq_socket_ = zmq_socket(zmq_context_, ZMQ_ROUTER);
  if (!zmq_socket_) return make_error("cannot create the registration socket: ", zmq_strerror(zmq_errno()));
  const int linger = 0;
  zmq_setsockopt(zmq_socket_, ZMQ_LINGER, &linger, sizeof linger);
  // A registration is a few hundred bytes: a peer that sends a larger message is disconnected by
  // ZMQ before it is held in memory.
  const int64_t max_message_bytes = 64 << 10;
  zmq_setsockopt(zmq_socket_, ZMQ_MAXMSGSIZE, &max_message_bytes, sizeof max_message_bytes);
  // ZMTP pings: a connection that went dead without a FIN is closed within seconds. The ROUTER
  // ignores a connection whose routing id is in use, so a registrar reconnecting with its id
  // (disagg/registration.cpp) must not find a stale one holding it.
  const int ping_ms = 2000, ping_timeout_ms = 6000;
  zmq_setsockopt(zmq_socket_, ZMQ_HEARTBEAT_IVL, &ping_ms, sizeof ping_ms);
  zmq_setsockopt(zmq_socket_, ZMQ_HEARTBEAT_TIMEOUT, &ping_timeout_ms, sizeof ping_timeout_ms);
  const std::string host = config_.host == "0.0.0.0" ? "*" : config_.host;
  const std::string endpoint =
      "tcp://" + host + ":" + (config_.ping_port == 0 ? std::string("*") : std::to_string(config_.ping_port));
  if (zmq_bind(zmq_socket_, endpoint.c_str()) != 0)
    return make_error("cannot listen for registrations on ", endpoint, ": ", zmq_strerror(zmq_errno()));
  char bound[256];
  size_t len = sizeof bound;
  zmq_getsockopt(zmq_socket_, ZMQ_LAST_ENDPOINT, bound, &len);
  const std::string b(bound);
  ping_port_ = std::stoi(b.substr(b.rfind(':') + 1));

  http_.set_error_formatter([](http::Status s, const std::string& msg) {
    return error_json(static_cast<int>(s), msg, static_cast<int>(s) == 404 ? "not_found_error" : "invalid_request_error");
  });
  http_.route("POST", "/v1/completions",
              [this](const http::Request& req, http::Responder& res) { return relay(req, res, false); });
  http_.route("POST", "/v1/chat/completions",
              [this](const http::Request& req, http::Responder& res) { return relay(req, res, true); });
  http_.route("GET", "/v1/models",
              [this](const http::Request& req, http::Responder& res) { return relay_get(req, res, "/v1/models"); });
  http_.route("GET", "/health", [this](const http::Request&, http::Responder& res) -> awaitable<void> {
    const int p = table_.count('P'), d = table_.count('D');
    const bool ok = p > 0 && d > 0;
    std::string body = Json({{"status", ok ? "ok" : "unavailable"}, {"prefill_instances", p}, {"decode_instances", d}}).dump();
    co_await res.send(ok ? http::Status::ok : http::Status::service_unavailable, "application/json", std::move(body));
  });
  http_.route("GET", "/metrics", [this](const http::Request& req, http::Responder& res) -> awaitable<void> {
    const http::Access access = http::metrics_access(req, keys_);
    if (access == http::Access::kNone) {
      co_await send_error(res, 401, "invalid or missing API key", "authentication_error");
      co_return;
    }
    std::string body = metrics_.render(access == http::Access::kApi);
    co_await res.send(http::Status::ok, "text/plain; version=0.0.4", std::move(body));
  });
  // The fleet's addresses and registrations: for API users only.
  http_.route("GET", "/instances", [this](const http::Request& req, http::Responder& res) -> awaitable<void> {
    if (!co_await admit_api(req, res)) co_return;
    Json list = Json::array();
    for (const Instance& in : table_.snapshot())
      list.push_back({{"id", in.id},
                      {"role", std::string(1, in.role)},
                      {"reachable", in.reachable},
                      {"outstanding_tokens", in.outstanding_tokens},
                      {"in_flight", in.in_flight},
                      {"routed", in.routed},
                      {"failures", in.failures},
                      {"info", in.info}});
    // (A registration's strings are the sender's bytes: invalid UTF-8 is replaced, not fatal.)
    std::string body = list.dump(-1, ' ', false, Json::error_handler_t::replace);
    co_await res.send(http::Status::ok, "application/json", std::move(body));
  });
  BATON_RETURN_IF_ERROR(http_.start());
  registration_thread_ = std::thread([this] { registration_loop(); });
  return {};
}

void ProxyServer::stop() {
  stopping_ = true;
  if (registration_thread_.joinable()) registration_thread_.join();
  http_.stop();
  if (zmq_socket_) zmq_close(zmq_socket_);
  if (zmq_context_) zmq_ctx_term(zmq_context_);
  zmq_socket_ = zmq_context_ = nullptr;
}

void ProxyServer::registration_loop() {
  while (!stopping_) {
    zmq_pollitem_t item{zmq_socket_, 0, ZMQ_POLLIN, 0};
    const int rc = zmq_poll(&item, 1, 200);
    // At most a batch of messages between evictions, each stamped when it is taken: a flood
    // must neither hold evictions off nor make real heartbeats look old once it stops.
    for (int n = 0; rc > 0 && n < 1024 && !stopping_; ++n) {
      const auto now = Clock::now();
      // [routing id, payload]: the ROUTER puts the connection's id first; the last frame is the
      // msgpack map.
      std::string peer, payload;
      int more = 0, frames = 0;
      do {
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, zmq_socket_, ZMQ_DONTWAIT) < 0) {
          zmq_msg_close(&msg);
          break;
        }
        (frames++ == 0 ? peer : payload).assign(static_cast<const char*>(zmq_msg_data(&msg)), zmq_msg_size(&msg));
        more = zmq_msg_more(&msg);
        zmq_msg_close(&msg);
      } while (more);
      if (frames == 0) break;
      handle_registration(peer, payload, now);
    }
    counters_->evictions += table_.evict(Clock::now(), ms(config_.evict_after_s)).size();
  }
}

void ProxyServer::handle_registration(const std::string& peer, const std::string& payload, Clock::time_point now) {
  Rejections& r = *rejections_;
  auto m = parse_msgpack(payload, "registration");
  if (!m.ok()) {
    ++counters_->registrations_rejected;
    r.malformed.warn("proxy: ignoring a registration message: ", loggable(m.error()));
    return;
  }
  // Fields read here may be missing or of any type: a wrong type counts as missing.
  auto text = [&m](const char* key) {
    return m->is_object() && m->contains(key) && (*m)[key].is_string() ? (*m)[key].get<std::string>() : std::string();
  };
  // With a token, every message that gets past this check carries it, and is trusted.
  const bool trusted = !config_.token.empty();
  if (trusted && !secrets_equal(text("token"), config_.token)) {
    ++counters_->registrations_rejected;
    r.token.warn("proxy: ignoring a registration for '", loggable(text("http_address")),
                 "': missing or wrong deployment token");
    return;
  }
  auto u = table_.update(*m, peer, trusted, now);
  if (!u.ok()) {
    ++counters_->registrations_rejected;
    r.malformed.warn("proxy: ", loggable(u.error()));
    return;
  }
  switch (*u) {
    case Update::kAdmitted:
      ++counters_->registrations;
      break;
    case Update::kNotOwner:
      ++counters_->registrations_rejected;
      r.not_owner.warn("proxy: ignoring a message for ", loggable(text("http_address")),
                       " from a connection other than the one that registered it (it is accepted once that "
                       "instance has been silent for --evict-after-s, or with --token)");
      break;
    case Update::kTableFull:
      ++counters_->registrations_rejected;
      r.table_full.warn("proxy: ignoring the registration of ", loggable(text("http_address")), ": ",
                        config_.max_instances, " instances are registered (--max-instances)");
      break;
    case Update::kRefreshed:
    case Update::kUnregistered:
    case Update::kUnknown:
      break;
  }
}

awaitable<void> ProxyServer::relay_get(const http::Request& req, http::Responder& res, std::string target) {
  auto executor = co_await asio::this_coro::executor;
  if (!co_await admit_api(req, res)) co_return;
  std::string auth = authorization_of(req);
  std::optional<Instance> in = table_.acquire('D', {}, 0);
  if (!in) in = table_.acquire('P', {}, 0);
  if (!in) {
    co_await send_error(res, 503, "no instance is registered with the proxy yet", "service_unavailable");
    co_return;
  }
  http::ClientCall call(executor);
  std::string method = "GET", empty;
  baton::Status st = co_await call.start(in->host, in->port, method, target, empty, ms(config_.connect_timeout_s),
                                         ms(config_.connect_timeout_s), auth);
  Result<std::string> body = Error{st.ok() ? "" : st.message()};
  if (st.ok()) body = co_await call.read_all(ms(config_.connect_timeout_s));
  table_.release(in->id, 0, !body.ok());
  if (!body.ok()) {
    std::string msg = "instance " + in->id + " did not answer: " + body.error();
    co_await send_error(res, 502, std::move(msg), "upstream_error");
    co_return;
  }
  std::string ct = call.content_type().empty() ? "application/json" : call.content_type();
  co_await res.send(static_cast<http::Status>(call.status()), std::move(ct), std::move(*body));
}

awaitable<void> ProxyServer::relay(const http::Request& req, http::Responder& res, bool chat) {
  auto executor = co_await asio::this_coro::executor;
  ++counters_->requests;
  struct InFlight {
    std::atomic<int>& n;
    ~InFlight() { --n; }
  } in_flight{in_flight_};
  if (++in_flight_ > config_.max_concurrent_requests) {
    ++counters_->failed;
    std::string msg = "too many concurrent requests (the limit is " +
                      std::to_string(config_.max_concurrent_requests) + "); retry later";
    co_await send_error(res, 429, std::move(msg), "rate_limit_error");
    co_return;
  }
  if (!co_await admit_api(req, res)) {
    ++counters_->failed;
    co_return;
  }
  const std::string auth = authorization_of(req);
  const std::string target = chat ? "/v1/chat/completions" : "/v1/completions";
  Result<RelayPlan> plan = plan_relay(req.body(), chat);
  if (!plan.ok()) {
    ++counters_->failed;
    co_await send_error(res, 400, plan.error(), "invalid_request_error");
    co_return;
  }
  const int64_t prompt_cost = plan->prompt_cost, decode_cost = plan->decode_cost;
  const std::string& prefill_body = plan->prefill_body;

  // 1. Prefill: one token, the KV kept for the decode side.
  Json kv_params;
  std::string prefill_host;
  int prefill_port = 0;
  std::string last_error = "no prefill instance is registered with the proxy";
  std::set<std::string> tried;
  for (int attempt = 0; attempt < 2 && kv_params.is_null(); ++attempt) {
    std::optional<Instance> p = table_.acquire('P', tried, prompt_cost);
    if (!p) break;
    if (attempt > 0) ++counters_->prefill_retries;
    tried.insert(p->id);
    http::ClientCall call(executor);
    std::string method = "POST";
    baton::Status st =
        co_await call.start(p->host, p->port, method, target, prefill_body, ms(config_.connect_timeout_s),
                            ms(config_.prefill_timeout_s), auth);
    Result<std::string> answer = Error{st.ok() ? "" : st.message()};
    if (st.ok()) answer = co_await call.read_all(ms(config_.prefill_timeout_s));
    // A prefill that got the request but failed to answer may still finish and pin blocks that
    // nobody reads: its kv_timeout_s frees them.
    const bool failed = !answer.ok() || call.status() >= 500;
    table_.release(p->id, prompt_cost, failed);
    if (!st.ok() && !call.sent()) table_.drop(p->id);  // nobody listens there: stop picking it
    if (failed) {
      last_error = "prefill " + p->id + ": " + (answer.ok() ? "status " + std::to_string(call.status()) + " " + *answer : answer.error());
      log::warn("proxy: ", last_error, attempt == 0 ? "; retrying on another prefill" : "");
      continue;
    }
    if (call.status() != 200) {  // the request's own fault (too long, bad parameter): relay it
      ++counters_->failed;
      std::string ct = call.content_type().empty() ? "application/json" : call.content_type();
      co_await res.send(static_cast<http::Status>(call.status()), std::move(ct), std::move(*answer));
      co_return;
    }
    Result<Json> params = kv_params_of(*answer);
    if (params.ok()) {
      kv_params = std::move(*params);
      prefill_host = p->host;
      prefill_port = p->port;
    } else {
      last_error = "prefill " + p->id + ": " + params.error();
      log::warn("proxy: ", last_error);
    }
  }
  if (kv_params.is_null()) {
    ++counters_->failed;
    const bool none = tried.empty();
    const int status = none ? 503 : 502;
    std::string type = none ? "service_unavailable" : "upstream_error";
    co_await send_error(res, status, last_error, std::move(type));
    co_return;
  }

  // 2. Decode: the original request with the prefill's params; its answer is relayed as is.
  const std::string decode_request = decode_body(*plan, kv_params);
  std::optional<Instance> d;
  std::unique_ptr<http::ClientCall> call;
  last_error = "no decode instance is registered with the proxy";
  tried.clear();
  for (int attempt = 0; attempt < 2; ++attempt) {
    d = table_.acquire('D', tried, decode_cost);
    if (!d) break;
    if (attempt > 0) ++counters_->decode_retries;
    tried.insert(d->id);
    call = std::make_unique<http::ClientCall>(executor);
    std::string method = "POST";
    baton::Status st = co_await call->start(d->host, d->port, method, target, decode_request,
                                            ms(config_.connect_timeout_s), ms(config_.token_timeout_s), auth);
    if (st.ok() && call->status() < 500) break;
    // A decode that received the request may have read (and released) the prefill's KV before
    // failing: another decode reading the same blocks could see them reused. Retry only when
    // the request never reached it.
    const bool may_retry = !call->sent();
    if (st.ok()) {
      Result<std::string> detail = co_await call->read_all(ms(config_.connect_timeout_s));
      last_error = "decode " + d->id + ": status " + std::to_string(call->status()) + " " + (detail.ok() ? *detail : "");
    } else {
      last_error = "decode " + d->id + ": " + st.message();
    }
    log::warn("proxy: ", last_error, attempt == 0 && may_retry ? "; retrying on another decode" : "");
    table_.release(d->id, decode_cost, true);
    if (may_retry) table_.drop(d->id);  // nobody listens there: stop picking it
    d.reset();
    call.reset();
    if (!may_retry) break;
  }
  if (!d) {
    ++counters_->failed;
    // No decode will read the prefill's blocks: give them back now rather than at its timeout.
    if (kv_params.contains("transfer_id") && kv_params["transfer_id"].is_string()) {
      http::ClientCall release(executor);
      std::string method = "POST", path = "/v1/kv/release";
      std::string rbody = Json({{"transfer_id", kv_params["transfer_id"]},
                                {"capability", kv_params.value("remote_capability", Json(""))}})
                              .dump();
      baton::Status rs = co_await release.start(prefill_host, prefill_port, method, path, rbody,
                                                ms(config_.connect_timeout_s), ms(config_.connect_timeout_s), auth);
      if (!rs.ok()) log::warn("proxy: could not release transfer at prefill: ", rs.message());
    }
    const bool none = tried.empty();
    const int status = none ? 503 : 502;
    std::string type = none ? "service_unavailable" : "upstream_error";
    co_await send_error(res, status, last_error, std::move(type));
    co_return;
  }

  const std::string content_type = call->content_type().empty() ? "application/json" : call->content_type();
  const bool is_stream = content_type.find("text/event-stream") != std::string::npos;
  if (!is_stream || call->status() != 200) {
    Result<std::string> all = co_await call->read_all(ms(config_.token_timeout_s));
    table_.release(d->id, decode_cost, !all.ok());
    if (!all.ok()) {
      ++counters_->failed;
      std::string msg = "decode " + d->id + " failed mid-answer: " + all.error();
      co_await send_error(res, 502, std::move(msg), "upstream_error");
      co_return;
    }
    if (call->status() == 200) ++counters_->completed; else ++counters_->failed;
    std::string ct = content_type;
    co_await res.send(static_cast<http::Status>(call->status()), std::move(ct), std::move(*all));
    co_return;
  }
  std::string ct = content_type;
  if (!co_await res.start_stream(std::move(ct))) {
    call->close();
    table_.release(d->id, decode_cost, false);
    ++counters_->client_aborts;
    co_return;
  }
  bool upstream_ok = true;
  std::string upstream_error;
  for (;;) {
    Result<std::string> piece = co_await call->next(ms(config_.token_timeout_s));
    if (!piece.ok()) {
      upstream_ok = false;
      upstream_error = piece.error();
      break;
    }
    if (piece->empty()) break;
    if (!co_await res.write_chunk(std::move(*piece))) {
      // The client went away: dropping the decode connection aborts the request there.
      call->close();
      table_.release(d->id, decode_cost, false);
      ++counters_->client_aborts;
      co_return;
    }
  }
  table_.release(d->id, decode_cost, !upstream_ok);
  if (!upstream_ok) {
    ++counters_->failed;
    log::warn("proxy: decode ", d->id, " broke mid-stream: ", upstream_error);
    std::string tail = "data: " + error_json(502, "decode instance " + d->id + " failed mid-stream: " + upstream_error, "upstream_error") +
                       "\n\ndata: [DONE]\n\n";
    co_await res.write_chunk(std::move(tail));
  } else {
    ++counters_->completed;
  }
  co_await res.end_stream();
}

}  // namespace baton::proxy
