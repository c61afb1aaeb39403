#include "server/openai_server.h"

#include <boost/asio/experimental/concurrent_channel.hpp>
#include <chrono>
#include <random>

#include "common/log.h"

namespace baton {

namespace asio = http::asio;

struct OpenAiServer::Event {
  int index;
  RequestOutput out;
  Json kv_transfer_params;  // P/D prefill: what the decode side needs (final event)
};
using asio::awaitable;
using openai::ApiError;
using openai::Endpoint;

namespace {


std::string random_id(const char* prefix) {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  char buf[40];
  std::snprintf(buf, sizeof buf, "%s%016llx", prefix, static_cast<unsigned long long>(rng()));
  return buf;
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Built by a function, not braces: g++ 12 miscompiles aggregate string members in coroutines.
ApiError api_error(int status, std::string message, std::string param = "", std::string type = "invalid_request_error") {
  ApiError e;
  e.status = status;
  e.message = std::move(message);
  e.param = std::move(param);
  e.type = std::move(type);
  return e;
}

std::string sse(const Json& j) { return "data: " + j.dump(-1, ' ', false, Json::error_handler_t::replace) + "\n\n"; }

}  // namespace

OpenAiServer::OpenAiServer(Engine& engine, std::shared_ptr<const Tokenizer> tokenizer,
                           std::optional<ChatTemplate> chat_template, ApiServerConfig config)
    : engine_(engine),
      tokenizer_(std::move(tokenizer)),
      chat_template_(std::move(chat_template)),
      config_(std::move(config)),
      keys_{config_.api_key, config_.metrics_key},
      started_at_(unix_now()) {
  Engine* e = &engine_;
  metrics_.add_gauge("baton:num_requests_running", "Requests in the running batch.", [e] { return e->stats().running; });
  metrics_.add_gauge("baton:num_requests_waiting", "Requests queued or waiting for KV.", [e] { return e->stats().waiting; });
  metrics_.add_gauge("baton:kv_blocks_total", "KV cache blocks in the pool.", [e] { return e->stats().blocks_total; });
  metrics_.add_gauge("baton:kv_blocks_free", "KV cache blocks free (including cached prefixes).", [e] { return e->stats().blocks_free; });
  metrics_.add_gauge("baton:kv_blocks_used", "KV cache blocks held by requests.", [e] {
    auto s = e->stats();
    return s.blocks_total - s.blocks_free;
  });
  // Prompt tokens computed and prefix-cache hits move with whether a prompt was seen before: only
  // API users read them (Metrics::add_gauge).
  metrics_.add_gauge(
      "baton:prompt_tokens_total", "Prompt tokens computed.", [e] { return double(e->stats().prompt_tokens); }, true,
      /*reveals_prompts=*/true);
  metrics_.add_gauge("baton:generation_tokens_total", "Tokens generated.", [e] { return double(e->stats().generation_tokens); }, true);
  metrics_.add_gauge(
      "baton:prefix_cache_hit_blocks_total", "KV blocks served from the prefix cache.",
      [e] { return double(e->stats().prefix_hit_blocks); }, true, /*reveals_prompts=*/true);
  metrics_.add_gauge("baton:num_preemptions_total", "Requests preempted for lack of KV blocks.",
                     [e] { return double(e->stats().preemptions); }, true);
}

void OpenAiServer::release_refused(const http::Request& req) {
  if (!connector_ || connector_->role() != KvRole::kConsumer) return;
  auto j = parse_json(req.body(), "request body");
  if (j.ok() && j->is_object() && j->contains("kv_transfer_params") &&
      KvConnector::wants_remote_prefill((*j)["kv_transfer_params"]))
    connector_->release_remote((*j)["kv_transfer_params"]);
}

bool OpenAiServer::authorized(const http::Request& req) const {
  return http::api_access(req, keys_) == http::Access::kApi;
}

awaitable<void> OpenAiServer::send_error(http::Responder& res, const ApiError& e) {
  if (e.status >= 400 && e.status < 500) metrics_.requests_rejected.fetch_add(1);
  std::string body = openai::error_body(e);
  co_await res.send(static_cast<http::Status>(e.status), "application/json", std::move(body));
}

std::string OpenAiServer::token_text(int id) const {
  if (!tokenizer_) return "token_id:" + std::to_string(id);
  int one[1] = {id};
  return tokenizer_->decode(one, false);
}

std::variant<std::vector<std::vector<int>>, ApiError> OpenAiServer::prompts_of(const openai::ApiRequest& r) const {
  std::vector<std::vector<int>> out;
  auto need_tokenizer = [&]() -> std::optional<ApiError> {
    if (tokenizer_) return std::nullopt;
    return api_error(400, "this model has no tokenizer.json: send the prompt as token ids", "prompt");
  };
  if (r.endpoint == Endpoint::kChat) {
    if (auto e = need_tokenizer()) return *e;
    if (!chat_template_) return api_error(400, "this model has no chat template; use /v1/completions", "messages");
    Json extra = r.chat_template_kwargs.is_object() ? r.chat_template_kwargs : Json::object();
    if (!r.tools.is_null()) extra["tools"] = r.tools;
    auto text = chat_template_->render(r.messages, r.add_generation_prompt, extra);
    if (!text.ok()) return api_error(400, text.error(), "messages");
    auto ids = tokenizer_->encode(*text, /*add_special_tokens=*/false);  // the template has the specials
    if (!ids.ok()) return api_error(400, ids.error(), "messages");
    out.push_back(std::move(*ids));
    return out;
  }
  for (const auto& p : r.prompts) {
    if (const auto* ids = std::get_if<std::vector<int>>(&p)) {
      out.push_back(*ids);
      continue;
    }
    if (auto e = need_tokenizer()) return *e;
    auto ids = tokenizer_->encode(std::get<std::string>(p), /*add_special_tokens=*/true);
    if (!ids.ok()) return api_error(400, ids.error(), "prompt");
    out.push_back(std::move(*ids));
  }
  return out;
}

// Everything before the first await: parse, check, tokenize, hand to the engine. Kept out of the
// coroutine so that no complex temporaries live across a co_await (g++ 12 destroys some twice).
std::variant<OpenAiServer::Started, ApiError> OpenAiServer::start(const http::Request& req, Endpoint endpoint,
                                                                   std::shared_ptr<Channel> chan) {
  // A caller without the key gets nothing done on its behalf, not even a release of the KV its
  // kv_transfer_params name (those would reach whatever agent it names).
  if (!authorized(req)) return api_error(401, "invalid or missing API key", "", "authentication_error");
  // Every return before the request is handed over (to the engine, or to the connector) is a
  // refusal: a decode request refused so must still let the prefill free the blocks it holds
  // for it (else they wait for kv_timeout_s).
  struct OnRefusal {
    OpenAiServer* server;
    const http::Request& req;
    bool handed_over = false;
    ~OnRefusal() {
      if (!handed_over) server->release_refused(req);
    }
  } on_refusal{this, req};
  auto parsed = openai::parse_request(req.body(), endpoint);
  if (auto* e = std::get_if<ApiError>(&parsed)) return *e;
  Started st;
  st.request = std::move(std::get<openai::ApiRequest>(parsed));
  const openai::ApiRequest& r = st.request;
  const auto& names = config_.served_model_names;
  if (!r.model.empty() && std::find(names.begin(), names.end(), r.model) == names.end())
    return api_error(400, "the model '" + r.model + "' does not exist; this server serves '" + names[0] + "'", "model");

  auto prompts_or = prompts_of(r);
  if (auto* e = std::get_if<ApiError>(&prompts_or)) return *e;
  auto& prompts = std::get<std::vector<std::vector<int>>>(prompts_or);
  const int max_len = engine_.max_model_len();
  for (const auto& p : prompts) {
    const int64_t want = static_cast<int64_t>(p.size()) + (r.max_tokens_given ? r.params.max_tokens : 1);
    if (static_cast<int>(p.size()) >= max_len || want > max_len) {
      std::string msg = "this model's maximum context length is " + std::to_string(max_len) + " tokens; the request has " +
                        std::to_string(p.size()) + " prompt tokens";
      if (r.max_tokens_given) msg += " and asks for " + std::to_string(r.params.max_tokens) + " more";
      return api_error(400, msg, r.max_tokens_given && static_cast<int>(p.size()) < max_len ? "max_tokens" : "prompt");
    }
  }
  // P/D: a prefill keeps the prompt's KV for a decode; a decode reads it from the prefill.
  KvConnector* conn = connector_;
  const bool remote_decode =
      conn && conn->role() == KvRole::kProducer && KvConnector::wants_remote_decode(r.kv_transfer_params);
  const bool remote_prefill =
      conn && conn->role() == KvRole::kConsumer && KvConnector::wants_remote_prefill(r.kv_transfer_params);
  if ((remote_decode || remote_prefill) && prompts.size() != 1)
    return api_error(400, "a request with kv_transfer_params must have exactly one prompt", "prompt");
  for (size_t i = 0; i < prompts.size(); ++i) {
    Request er;
    er.prompt = std::move(prompts[i]);
    er.params = r.params;
    if (!r.max_tokens_given) er.params.max_tokens = max_len - static_cast<int>(er.prompt.size());
    const int prompt_len = static_cast<int>(er.prompt.size());
    const uint64_t digest = remote_decode ? KvConnector::prompt_digest(er.prompt) : 0;
    er.hold_kv = remote_decode;
    if (remote_prefill) {
      on_refusal.handed_over = true;  // from here the connector releases on every path
      if (Status s = conn->prepare_remote_prefill(er, r.kv_transfer_params); !s.ok())
        return api_error(400, s.message(), "kv_transfer_params");
    }
    const bool armed = er.wait_for_remote_kv;
    auto id = engine_.add_request(std::move(er), [chan, i, remote_decode, conn, prompt_len, digest](RequestOutput&& out) {
      Event ev{static_cast<int>(i), std::move(out), Json()};
      // Pinned here, on the engine loop, so that the blocks are tracked (and time out) even if
      // this HTTP request is gone before it reads the event.
      if (remote_decode && ev.out.finished && !ev.out.kv_block_ids.empty())
        ev.kv_transfer_params = conn->on_prefill_finished(ev.out, prompt_len, digest);
      chan->async_send(boost::system::error_code{}, std::move(ev), asio::detached);
    });
    if (!id.ok()) {
      for (uint64_t done : st.ids) engine_.abort(done);
      if (armed) conn->release_remote(r.kv_transfer_params);
      return api_error(400, id.error());
    }
    st.ids.push_back(*id);
  }
  on_refusal.handed_over = true;
  return st;
}

awaitable<void> OpenAiServer::generate(const http::Request& req, http::Responder& res, Endpoint endpoint) {
  using Clock = std::chrono::steady_clock;
  const auto arrival = Clock::now();
  struct InFlight {
    std::atomic<int>& n;
    ~InFlight() { --n; }
  } in_flight{in_flight_};
  if (++in_flight_ > config_.max_concurrent_requests) {
    ApiError busy = api_error(429, "too many concurrent requests (the limit is " +
                                       std::to_string(config_.max_concurrent_requests) + "); retry later",
                              "", "rate_limit_error");
    release_refused(req);
    co_await send_error(res, busy);
    co_return;
  }
  auto executor = co_await asio::this_coro::executor;
  auto chan = std::make_shared<Channel>(executor, 256);
  auto started = start(req, endpoint, chan);
  if (auto* e = std::get_if<ApiError>(&started)) {
    co_await send_error(res, *e);
    co_return;
  }
  Started& st = std::get<Started>(started);
  const openai::ApiRequest& r = st.request;
  const std::vector<uint64_t>& ids = st.ids;
  const std::string model_name = config_.served_model_names[0];
  auto abort_all = [&] {
    for (uint64_t id : ids) engine_.abort(id);
  };

  const std::string rid = random_id(endpoint == Endpoint::kChat ? "chatcmpl-" : "cmpl-");
  const int64_t created = unix_now();
  const bool with_logprobs = r.params.logprobs >= 0;
  const openai::TokenText text_of = [this](int id) { return token_text(id); };
  std::vector<openai::Choice> choices(ids.size());
  openai::Usage usage;
  size_t finished = 0;
  std::optional<Clock::time_point> first_token_at;
  std::string error;
  Json kv_transfer_params;
  bool streaming = r.stream;
  if (streaming) {
    std::string content_type = "text/event-stream";
    if (!co_await res.start_stream(std::move(content_type))) {
      abort_all();
      co_return;
    }
    if (endpoint == Endpoint::kChat) {
      for (size_t i = 0; i < ids.size(); ++i) {
        openai::Choice role;
        role.index = static_cast<int>(i);
        std::string chunk =
            sse(openai::chat_chunk(rid, created, model_name, role, true, false, text_of, r.return_token_ids));
        if (!co_await res.write_chunk(std::move(chunk))) {
          abort_all();
          co_return;
        }
      }
    }
  }

  while (finished < ids.size()) {
    auto [ec, ev] = co_await chan->async_receive(asio::as_tuple(asio::use_awaitable));
    if (ec) break;
    if (!first_token_at && !ev.out.token_ids.empty()) first_token_at = Clock::now();
    openai::Choice& c = choices[ev.index];
    c.index = ev.index;
    if (!ev.kv_transfer_params.is_null()) kv_transfer_params = std::move(ev.kv_transfer_params);
    if (ev.out.finished) {
      ++finished;
      c.finish_reason = ev.out.finish_reason;
      usage.prompt_tokens += ev.out.prompt_tokens;
      usage.completion_tokens += ev.out.completion_tokens;
      usage.cached_tokens += ev.out.cached_tokens;
      if (ev.out.finish_reason == "error" || ev.out.finish_reason == "abort")
        error = ev.out.error.empty() ? "the request was aborted" : ev.out.error;
      if (ev.out.finish_reason == "stop") metrics_.requests_ok.fetch_add(1);
      if (ev.out.finish_reason == "length") metrics_.requests_length.fetch_add(1);
      if (ev.out.finish_reason == "abort") metrics_.requests_aborted.fetch_add(1);
      if (ev.out.finish_reason == "error") metrics_.requests_error.fetch_add(1);
    }
    if (!streaming) {
      c.text += ev.out.text;
      c.token_ids.insert(c.token_ids.end(), ev.out.token_ids.begin(), ev.out.token_ids.end());
      c.logprobs.insert(c.logprobs.end(), ev.out.logprobs.begin(), ev.out.logprobs.end());
      continue;
    }
    if (!error.empty()) continue;
    openai::Choice delta;
    delta.index = ev.index;
    delta.text = ev.out.text;
    delta.logprobs = ev.out.logprobs;
    delta.finish_reason = ev.out.finished ? ev.out.finish_reason : "";
    if (r.return_token_ids) delta.token_ids = ev.out.token_ids;
    // Text held back (an incomplete UTF-8 sequence or a possible stop string) waits for the next
    // chunk, unless the client counts tokens.
    if (delta.text.empty() && delta.finish_reason.empty() && delta.logprobs.empty() && delta.token_ids.empty())
      continue;
    std::string chunk =
        sse(endpoint == Endpoint::kChat
                ? openai::chat_chunk(rid, created, model_name, delta, false, with_logprobs, text_of, r.return_token_ids)
                : openai::completion_chunk(rid, created, model_name, delta, with_logprobs, text_of,
                                           r.return_token_ids));
    if (!co_await res.write_chunk(std::move(chunk))) {
      log::info("request ", rid, ": client went away mid-stream; aborting");
      abort_all();
      metrics_.requests_aborted.fetch_add(ids.size() - finished);
      chan->close();
      co_return;
    }
  }
  chan->close();

  const auto done_at = Clock::now();
  if (first_token_at) {
    metrics_.ttft_s.observe(std::chrono::duration<double>(*first_token_at - arrival).count());
    if (usage.completion_tokens > 1)
      metrics_.tpot_s.observe(std::chrono::duration<double>(done_at - *first_token_at).count() /
                              (usage.completion_tokens - static_cast<int>(ids.size())));
  }
  metrics_.e2e_s.observe(std::chrono::duration<double>(done_at - arrival).count());

  if (streaming) {
    std::string tail;
    if (!error.empty()) {
      tail = sse(Json::parse(openai::error_body(api_error(500, error, "", "internal_error"))));
    } else if (r.include_usage) {
      tail = sse(openai::usage_chunk(rid, created, model_name, endpoint, usage));
    }
    tail += "data: [DONE]\n\n";
    co_await res.write_chunk(std::move(tail));
    co_await res.end_stream();
    co_return;
  }
  if (!error.empty()) {
    ApiError err = api_error(500, error, "", "internal_error");
    co_await send_error(res, err);
    co_return;
  }
  Json body = endpoint == Endpoint::kChat
                  ? openai::chat_response(rid, created, model_name, choices, usage, with_logprobs, text_of,
                                          r.return_token_ids)
                  : openai::completion_response(rid, created, model_name, choices, usage, with_logprobs, text_of,
                                                r.return_token_ids);
  if (!kv_transfer_params.is_null()) body["kv_transfer_params"] = std::move(kv_transfer_params);
  std::string text = body.dump(-1, ' ', false, Json::error_handler_t::replace);
  co_await res.send(http::Status::ok, "application/json", std::move(text));
}

std::string OpenAiServer::models_json() const {
  Json data = Json::array();
  for (const auto& name : config_.served_model_names)
    data.push_back({{"id", name}, {"object", "model"}, {"created", started_at_}, {"owned_by", "baton"},
                    {"root", config_.served_model_names[0]}, {"max_model_len", engine_.max_model_len()}});
  return Json({{"object", "list"}, {"data", data}}).dump();
}

void OpenAiServer::install(http::Server& server) {
  server.set_error_formatter([](http::Status s, const std::string& msg) {
    return openai::error_body(api_error(static_cast<int>(s), msg, "", static_cast<int>(s) == 404 ? "not_found_error" : "invalid_request_error"));
  });
  server.route("POST", "/v1/completions", [this](const http::Request& req, http::Responder& res) {
    return generate(req, res, Endpoint::kCompletions);
  });
  server.route("POST", "/v1/chat/completions", [this](const http::Request& req, http::Responder& res) {
    return generate(req, res, Endpoint::kChat);
  });
  server.route("GET", "/v1/models", [this](const http::Request& req, http::Responder& res) -> awaitable<void> {
    if (!authorized(req)) {
      ApiError err = api_error(401, "invalid or missing API key", "", "authentication_error");
      co_await send_error(res, err);
      co_return;
    }
    std::string body = models_json();
    co_await res.send(http::Status::ok, "application/json", std::move(body));
  });
  // P/D prefill: the proxy gives back blocks that no decode will read (POST {"transfer_id"}).
  server.route("POST", "/v1/kv/release", [this](const http::Request& req, http::Responder& res) -> awaitable<void> {
    ApiError err;
    std::string body;
    if (!authorized(req)) {
      err = api_error(401, "invalid or missing API key", "", "authentication_error");
    } else if (!connector_ || connector_->role() != KvRole::kProducer) {
      err = api_error(400, "this server is not a kv_producer");
    } else {
      auto j = parse_json(req.body(), "request body");
      auto field = [&](const char* key) {
        return j.ok() && j->is_object() && j->contains(key) && (*j)[key].is_string();
      };
      if (!field("transfer_id") || !field("capability")) {
        err = api_error(400,
                        "expected {\"transfer_id\": \"...\", \"capability\": \"...\"} (the transfer's "
                        "remote_capability)",
                        field("transfer_id") ? "capability" : "transfer_id");
      } else {
        const bool released = connector_->release_transfer((*j)["transfer_id"].get<std::string>(),
                                                           (*j)["capability"].get<std::string>());
        body = Json({{"released", released}}).dump();
      }
    }
    if (body.empty()) {
      co_await send_error(res, err);
      co_return;
    }
    co_await res.send(http::Status::ok, "application/json", std::move(body));
  });
  server.route("GET", "/health", [](const http::Request&, http::Responder& res) -> awaitable<void> {
    std::string body = R"({"status":"ok"})";
    co_await res.send(http::Status::ok, "application/json", std::move(body));
  });
  server.route("GET", "/metrics", [this](const http::Request& req, http::Responder& res) -> awaitable<void> {
    const http::Access access = http::metrics_access(req, keys_);
    if (access == http::Access::kNone) {
      ApiError err = api_error(401, "invalid or missing API key", "", "authentication_error");
      co_await send_error(res, err);
      co_return;
    }
    std::string body = metrics_.render(access == http::Access::kApi);
    co_await res.send(http::Status::ok, "text/plain; version=0.0.4", std::move(body));
  });
}

}  // namespace baton
