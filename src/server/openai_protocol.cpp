#include "server/openai_protocol.h"

#include <cmath>
#include <limits>

#include "common/utf8.h"

namespace baton::openai {
namespace {

ApiError bad(std::string param, std::string message) {
  ApiError e;
  e.message = std::move(message);
  e.param = std::move(param);
  return e;
}

// Typed optional readers: absent or null leaves `dst` as is.
std::optional<ApiError> read_number(const Json& j, const char* key, float& dst, double lo, double hi) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) return bad(key, std::string("'") + key + "' must be a number");
  double v = it->get<double>();
  if (!std::isfinite(v) || v < lo || v > hi)
    return bad(key, std::string("'") + key + "' must be in [" + Json(lo).dump() + ", " + Json(hi).dump() + "]");
  dst = static_cast<float>(v);
  return std::nullopt;
}

std::optional<ApiError> read_int(const Json& j, const char* key, int64_t& dst, int64_t lo, int64_t hi, bool* given = nullptr) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_number_integer() && !(it->is_number_float() && std::floor(it->get<double>()) == it->get<double>()))
    return bad(key, std::string("'") + key + "' must be an integer");
  double dv = it->get<double>();
  if (dv < static_cast<double>(lo) || dv > static_cast<double>(hi))
    return bad(key, std::string("'") + key + "' must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  dst = static_cast<int64_t>(dv);
  if (given) *given = true;
  return std::nullopt;
}

std::optional<ApiError> read_bool(const Json& j, const char* key, bool& dst) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_boolean()) return bad(key, std::string("'") + key + "' must be true or false");
  dst = it->get<bool>();
  return std::nullopt;
}

std::optional<ApiError> valid_text(const std::string& s, const char* param) {
  if (!utf8::is_valid(s)) return bad(param, std::string("'") + param + "' is not valid UTF-8");
  return std::nullopt;
}

std::optional<ApiError> read_prompts(const Json& p, ApiRequest& r) {
  auto token_list = [&](const Json& arr) -> std::variant<std::vector<int>, ApiError> {
    std::vector<int> ids;
    for (const auto& t : arr) {
      if (!t.is_number_integer()) return bad("prompt", "token ids in 'prompt' must be integers");
      int64_t v = t.get<int64_t>();
      if (v < 0 || v > std::numeric_limits<int32_t>::max()) return bad("prompt", "token id " + std::to_string(v) + " is out of range");
      ids.push_back(static_cast<int>(v));
    }
    return ids;
  };
  if (p.is_string()) {
    r.prompts.emplace_back(p.get<std::string>());
  } else if (p.is_array() && !p.empty() && p[0].is_number()) {
    auto ids = token_list(p);
    if (auto* e = std::get_if<ApiError>(&ids)) return *e;
    r.prompts.emplace_back(std::get<std::vector<int>>(ids));
  } else if (p.is_array() && !p.empty()) {
    for (const auto& item : p) {
      if (item.is_string()) {
        r.prompts.emplace_back(item.get<std::string>());
      } else if (item.is_array()) {
        auto ids = token_list(item);
        if (auto* e = std::get_if<ApiError>(&ids)) return *e;
        r.prompts.emplace_back(std::get<std::vector<int>>(ids));
      } else {
        return bad("prompt", "'prompt' must be a string, a list of token ids, or a list of those");
      }
    }
  } else {
    return bad("prompt", "'prompt' must be a non-empty string, list of token ids, or list of those");
  }
  if (r.prompts.size() > 256) return bad("prompt", "at most 256 prompts per request");
  for (const auto& pr : r.prompts) {
    if (auto* s = std::get_if<std::string>(&pr)) {
      if (auto e = valid_text(*s, "prompt")) return e;
      if (s->empty()) return bad("prompt", "'prompt' must not be empty");
    } else if (std::get<std::vector<int>>(pr).empty()) {
      return bad("prompt", "'prompt' must not be empty");
    }
  }
  return std::nullopt;
}

std::optional<ApiError> read_messages(const Json& m, ApiRequest& r) {
  if (!m.is_array() || m.empty()) return bad("messages", "'messages' must be a non-empty list");
  Json out = Json::array();
  for (const auto& msg : m) {
    if (!msg.is_object()) return bad("messages", "each message must be an object");
    auto role = msg.find("role");
    if (role == msg.end() || !role->is_string()) return bad("messages", "each message needs a string 'role'");
    Json copy = msg;
    auto content = msg.find("content");
    if (content != msg.end() && content->is_array()) {
      // OpenAI content parts: concatenate the text parts (no images here).
      std::string text;
      for (const auto& part : *content) {
        // Compared as JSON: a mistyped "type" is a refusal, not a conversion error.
        if (!part.is_object() || !part.contains("type") || part["type"] != "text" || !part.contains("text") ||
            !part["text"].is_string())
          return bad("messages", "only text content parts are supported");
        text += part["text"].get<std::string>();
      }
      copy["content"] = text;
    } else if (content != msg.end() && !content->is_string() && !content->is_null()) {
      return bad("messages", "message 'content' must be a string or a list of text parts");
    } else if (content == msg.end() || content->is_null()) {
      copy["content"] = "";
    }
    if (auto e = valid_text(copy["content"].get<std::string>(), "messages")) return e;
    out.push_back(std::move(copy));
  }
  r.messages = std::move(out);
  return std::nullopt;
}

}  // namespace

std::string error_body(const ApiError& e) {
  Json j = {{"error",
             {{"message", e.message},
              {"type", e.type},
              {"param", e.param.empty() ? Json(nullptr) : Json(e.param)},
              {"code", e.status}}}};
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

std::variant<ApiRequest, ApiError> parse_request(std::string_view body, Endpoint endpoint) {
  if (!utf8::is_valid(body)) return bad("", "the request body is not valid UTF-8");
  auto parsed = parse_json(body, "the request body");
  if (!parsed.ok()) return bad("", parsed.error());
  Json j = std::move(*parsed);
  if (!j.is_object()) return bad("", "the request body must be a JSON object");
  ApiRequest r;
  r.endpoint = endpoint;
  SamplingParams& p = r.params;

  if (auto it = j.find("model"); it != j.end() && !it->is_null()) {
    if (!it->is_string()) return bad("model", "'model' must be a string");
    r.model = it->get<std::string>();
  }
  if (endpoint == Endpoint::kCompletions) {
    auto it = j.find("prompt");
    if (it == j.end() || it->is_null()) return bad("prompt", "'prompt' is required");
    if (auto e = read_prompts(*it, r)) return *e;
  } else {
    auto it = j.find("messages");
    if (it == j.end()) return bad("messages", "'messages' is required");
    if (auto e = read_messages(*it, r)) return *e;
  }

  int64_t max_tokens = endpoint == Endpoint::kCompletions ? 16 : 0;
  const char* max_key = j.contains("max_completion_tokens") && !j["max_completion_tokens"].is_null() ? "max_completion_tokens" : "max_tokens";
  if (auto e = read_int(j, max_key, max_tokens, 1, std::numeric_limits<int32_t>::max(), &r.max_tokens_given)) return *e;
  if (endpoint == Endpoint::kCompletions) r.max_tokens_given = true;  // 16 by default, as OpenAI
  p.max_tokens = static_cast<int>(max_tokens > 0 ? max_tokens : 1);

  p.temperature = 1.0f;
  if (auto e = read_number(j, "temperature", p.temperature, 0.0, 100.0)) return *e;
  if (auto e = read_number(j, "top_p", p.top_p, 1e-9, 1.0)) return *e;
  int64_t top_k = 0;
  if (auto e = read_int(j, "top_k", top_k, -1, 1 << 20)) return *e;
  p.top_k = static_cast<int>(top_k);
  if (auto e = read_number(j, "min_p", p.min_p, 0.0, 1.0)) return *e;
  if (auto e = read_number(j, "presence_penalty", p.presence_penalty, -2.0, 2.0)) return *e;
  if (auto e = read_number(j, "frequency_penalty", p.frequency_penalty, -2.0, 2.0)) return *e;
  if (auto e = read_number(j, "repetition_penalty", p.repetition_penalty, 1e-6, 100.0)) return *e;
  if (auto it = j.find("seed"); it != j.end() && !it->is_null()) {
    if (!it->is_number_integer()) return bad("seed", "'seed' must be an integer");
    p.seed = static_cast<uint64_t>(it->get<int64_t>());
  }
  int64_t n = 1;
  if (auto e = read_int(j, "n", n, 1, 1)) return bad("n", "only n = 1 is supported");
  if (auto it = j.find("best_of"); it != j.end() && !it->is_null() && !(it->is_number_integer() && it->get<int64_t>() == 1))
    return bad("best_of", "only best_of = 1 is supported");
  if (auto it = j.find("logit_bias"); it != j.end() && !it->is_null() && !(it->is_object() && it->empty()))
    return bad("logit_bias", "'logit_bias' is not supported");
  bool echo = false;
  if (auto e = read_bool(j, "echo", echo)) return *e;
  if (echo) return bad("echo", "'echo' is not supported");
  if (auto e = read_bool(j, "ignore_eos", p.ignore_eos)) return *e;
  if (auto e = read_bool(j, "return_token_ids", r.return_token_ids)) return *e;
  if (auto e = read_bool(j, "skip_special_tokens", p.skip_special_tokens)) return *e;
  if (auto e = read_bool(j, "include_stop_str_in_output", p.include_stop_str_in_output)) return *e;
  if (auto e = read_bool(j, "stream", r.stream)) return *e;
  if (auto it = j.find("stream_options"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) return bad("stream_options", "'stream_options' must be an object");
    if (auto e = read_bool(*it, "include_usage", r.include_usage)) return bad("stream_options", e->message);
  }
  if (auto it = j.find("stop"); it != j.end() && !it->is_null()) {
    if (it->is_string()) {
      p.stop.push_back(it->get<std::string>());
    } else if (it->is_array()) {
      for (const auto& s : *it) {
        if (!s.is_string()) return bad("stop", "'stop' must be a string or a list of strings");
        p.stop.push_back(s.get<std::string>());
      }
    } else {
      return bad("stop", "'stop' must be a string or a list of strings");
    }
    if (p.stop.size() > 16) return bad("stop", "at most 16 stop strings");
    for (const auto& s : p.stop)
      if (s.empty() || !utf8::is_valid(s)) return bad("stop", "stop strings must be non-empty UTF-8");
  }
  if (auto it = j.find("stop_token_ids"); it != j.end() && !it->is_null()) {
    if (!it->is_array()) return bad("stop_token_ids", "'stop_token_ids' must be a list of integers");
    for (const auto& t : *it) {
      if (!t.is_number_integer()) return bad("stop_token_ids", "'stop_token_ids' must be a list of integers");
      p.stop_token_ids.push_back(static_cast<int>(t.get<int64_t>()));
    }
  }
  if (endpoint == Endpoint::kCompletions) {
    int64_t lp = -1;
    if (auto e = read_int(j, "logprobs", lp, 0, 20)) return *e;
    p.logprobs = static_cast<int>(lp);
  } else {
    if (auto e = read_bool(j, "logprobs", r.chat_logprobs)) return *e;
    int64_t top = 0;
    if (auto e = read_int(j, "top_logprobs", top, 0, 20)) return *e;
    if (j.contains("top_logprobs") && !j["top_logprobs"].is_null() && !r.chat_logprobs)
      return bad("top_logprobs", "'top_logprobs' needs 'logprobs': true");
    p.logprobs = r.chat_logprobs ? static_cast<int>(top) : -1;
    if (auto e = read_bool(j, "add_generation_prompt", r.add_generation_prompt)) return *e;
    if (auto it = j.find("chat_template_kwargs"); it != j.end() && !it->is_null()) {
      if (!it->is_object()) return bad("chat_template_kwargs", "'chat_template_kwargs' must be an object");
      r.chat_template_kwargs = *it;
    }
    if (auto it = j.find("tools"); it != j.end() && !it->is_null()) {
      if (!it->is_array()) return bad("tools", "'tools' must be a list");
      r.tools = *it;
    }
  }
  if (auto it = j.find("user"); it != j.end() && !it->is_null() && !it->is_string()) return bad("user", "'user' must be a string");
  if (auto it = j.find("kv_transfer_params"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) return bad("kv_transfer_params", "'kv_transfer_params' must be an object");
    r.kv_transfer_params = *it;
  }
  return r;
}

Json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", u.cached_tokens}}}};
}

namespace {

Json completion_logprobs(const Choice& c, const TokenText& text) {
  Json tokens = Json::array(), lps = Json::array(), tops = Json::array(), offsets = Json::array();
  int offset = 0;
  for (const auto& lp : c.logprobs) {
    std::string t = text(lp.token);
    tokens.push_back(t);
    lps.push_back(lp.logprob);
    Json top = Json::object();
    for (const auto& [id, v] : lp.top) top[text(id)] = v;
    tops.push_back(top);
    offsets.push_back(offset);
    offset += static_cast<int>(t.size());
  }
  return {{"tokens", tokens}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offsets}};
}

Json chat_logprobs(const Choice& c, const TokenText& text) {
  Json content = Json::array();
  auto bytes_of = [](const std::string& s) {
    Json b = Json::array();
    for (unsigned char ch : s) b.push_back(ch);
    return b;
  };
  for (const auto& lp : c.logprobs) {
    std::string t = text(lp.token);
    Json top = Json::array();
    for (const auto& [id, v] : lp.top) {
      std::string tt = text(id);
      top.push_back({{"token", tt}, {"logprob", v}, {"bytes", bytes_of(tt)}});
    }
    content.push_back({{"token", t}, {"logprob", lp.logprob}, {"bytes", bytes_of(t)}, {"top_logprobs", top}});
  }
  return {{"content", content}};
}

Json reason(const std::string& r) { return r.empty() ? Json(nullptr) : Json(r); }

}  // namespace

Json completion_response(const std::string& id, int64_t created, const std::string& model,
                         const std::vector<Choice>& choices, const Usage& usage, bool with_logprobs,
                         const TokenText& token_text, bool with_token_ids) {
  Json cs = Json::array();
  for (const auto& c : choices) {
    cs.push_back({{"index", c.index},
                  {"text", c.text},
                  {"logprobs", with_logprobs ? completion_logprobs(c, token_text) : Json(nullptr)},
                  {"finish_reason", reason(c.finish_reason)},
                  {"stop_reason", nullptr}});
    if (with_token_ids) cs.back()["token_ids"] = c.token_ids;
  }
  return {{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", model}, {"choices", cs}, {"usage", usage_json(usage)}};
}

Json chat_response(const std::string& id, int64_t created, const std::string& model, const std::vector<Choice>& choices,
                   const Usage& usage, bool with_logprobs, const TokenText& token_text, bool with_token_ids) {
  Json cs = Json::array();
  for (const auto& c : choices) {
    cs.push_back({{"index", c.index},
                  {"message", {{"role", "assistant"}, {"content", c.text}}},
                  {"logprobs", with_logprobs ? chat_logprobs(c, token_text) : Json(nullptr)},
                  {"finish_reason", reason(c.finish_reason)},
                  {"stop_reason", nullptr}});
    if (with_token_ids) cs.back()["token_ids"] = c.token_ids;
  }
  return {{"id", id}, {"object", "chat.completion"}, {"created", created}, {"model", model}, {"choices", cs}, {"usage", usage_json(usage)}};
}

Json completion_chunk(const std::string& id, int64_t created, const std::string& model, const Choice& d,
                      bool with_logprobs, const TokenText& token_text, bool with_token_ids) {
  Json c = {{"index", d.index},
            {"text", d.text},
            {"logprobs", with_logprobs ? completion_logprobs(d, token_text) : Json(nullptr)},
            {"finish_reason", reason(d.finish_reason)}};
  if (with_token_ids) c["token_ids"] = d.token_ids;
  return {{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", model}, {"choices", Json::array({c})}};
}

Json chat_chunk(const std::string& id, int64_t created, const std::string& model, const Choice& d, bool first,
                bool with_logprobs, const TokenText& token_text, bool with_token_ids) {
  Json delta = Json::object();
  if (first) delta["role"] = "assistant";
  if (first || !d.text.empty()) delta["content"] = d.text;
  Json c = {{"index", d.index},
            {"delta", delta},
            {"logprobs", with_logprobs ? chat_logprobs(d, token_text) : Json(nullptr)},
            {"finish_reason", reason(d.finish_reason)}};
  if (with_token_ids) c["token_ids"] = d.token_ids;
  return {{"id", id}, {"object", "chat.completion.chunk"}, {"created", created}, {"model", model}, {"choices", Json::array({c})}};
}

Json usage_chunk(const std::string& id, int64_t created, const std::string& model, Endpoint endpoint, const Usage& usage) {
  return {{"id", id},
          {"object", endpoint == Endpoint::kChat ? "chat.completion.chunk" : "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", Json::array()},
          {"usage", usage_json(usage)}};
}

}  // namespace baton::openai
