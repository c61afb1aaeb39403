// The OpenAI-compatible API over an Engine: /v1/completions, /v1/chat/completions (streamed as
// SSE or whole), /v1/models, /health, /metrics. Handlers hand requests to the engine thread and
// wait for its outputs on an asio channel, so no HTTP thread ever blocks; a client that goes
// away mid-stream has its requests aborted (their KV blocks return to the pool).
#pragma once

#include <boost/asio/experimental/concurrent_channel.hpp>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "disagg/kv_connector.h"
#include "engine/engine.h"
#include "model/chat_template.h"
#include "model/tokenizer.h"
#include "server/access.h"
#include "server/http.h"
#include "server/metrics.h"
#include "server/openai_protocol.h"

namespace baton {

struct ApiServerConfig {
  std::vector<std::string> served_model_names;  // the first is reported by /v1/models
  std::string api_key;                          // empty: no authentication
  std::string metrics_key;                      // also opens /metrics (server/access.h)
  int max_concurrent_requests = 4096;           // more at once get 429 (a bounded queue)
};

class OpenAiServer {
 public:
  OpenAiServer(Engine& engine, std::shared_ptr<const Tokenizer> tokenizer, std::optional<ChatTemplate> chat_template,
               ApiServerConfig config);
  void install(http::Server& server);
  // P/D roles: requests with kv_transfer_params go through the connector (not owned).
  void set_kv_connector(KvConnector* connector) { connector_ = connector; }
  Metrics& metrics() { return metrics_; }

 private:
  struct Event;
  struct Started {
    openai::ApiRequest request;
    std::vector<uint64_t> ids;  // engine sequence ids, one per prompt
  };
  using Channel = http::asio::experimental::concurrent_channel<void(boost::system::error_code, Event)>;
  std::variant<Started, openai::ApiError> start(const http::Request& req, openai::Endpoint endpoint,
                                                std::shared_ptr<Channel> chan);
  http::asio::awaitable<void> generate(const http::Request& req, http::Responder& res, openai::Endpoint endpoint);
  http::asio::awaitable<void> send_error(http::Responder& res, const openai::ApiError& e);
  bool authorized(const http::Request& req) const;
  // A decode request refused before it reached the connector: tells its prefill (named in the
  // body's kv_transfer_params) to free the blocks it holds for it. No-op in other roles.
  void release_refused(const http::Request& req);
  // Tokenized prompts for the request, or an error to send.
  std::variant<std::vector<std::vector<int>>, openai::ApiError> prompts_of(const openai::ApiRequest& r) const;
  std::string token_text(int id) const;
  std::string models_json() const;

  Engine& engine_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  std::optional<ChatTemplate> chat_template_;
  ApiServerConfig config_;
  http::AccessKeys keys_;
  Metrics metrics_;
  KvConnector* connector_ = nullptr;
  std::atomic<int> in_flight_{0};
  int64_t started_at_;
};

}  // namespace baton
