// The OpenAI-compatible wire format: request bodies parsed and validated into engine terms, and
// the JSON of responses and stream chunks. No I/O here, so it is unit-tested and fuzzed alone.
#pragma once

#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "common/json.h"
#include "engine/sampler.h"
#include "engine/sequence.h"

namespace baton::openai {

// An error answered as {"error": {"message", "type", "param", "code"}}.
struct ApiError {
  int status = 400;
  std::string message;
  std::string param;  // empty -> null
  std::string type = "invalid_request_error";
};
std::string error_body(const ApiError& e);

enum class Endpoint { kCompletions, kChat };

struct ApiRequest {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string model;  // empty when the client did not name one
  // Completions: one or more prompts, each text or token ids.
  std::vector<std::variant<std::string, std::vector<int>>> prompts;
  Json messages;  // chat
  SamplingParams params;
  bool max_tokens_given = false;
  bool stream = false;
  bool include_usage = false;
  bool chat_logprobs = false;  // chat: logprobs true; params.logprobs holds top_logprobs
  bool return_token_ids = false;  // vLLM's: each choice (and stream chunk) carries its token ids
  Json kv_transfer_params;     // passed through (P/D), null when absent
  Json chat_template_kwargs;   // extra template variables (chat)
  Json tools;                  // chat tools, given to the template
  bool add_generation_prompt = true;
};

// Parses a request body. Every type or range problem is an ApiError naming the parameter.
std::variant<ApiRequest, ApiError> parse_request(std::string_view body, Endpoint endpoint);

// Response building.
struct Choice {
  int index = 0;
  std::string text;
  std::vector<int> token_ids;
  std::vector<TokenLogprob> logprobs;
  std::string finish_reason;  // empty while streaming
};
struct Usage {
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int cached_tokens = 0;
};

// Token text for logprobs: a function from id to its decoded text.
using TokenText = std::function<std::string(int)>;

Json completion_response(const std::string& id, int64_t created, const std::string& model,
                         const std::vector<Choice>& choices, const Usage& usage, bool with_logprobs,
                         const TokenText& token_text, bool with_token_ids = false);
Json chat_response(const std::string& id, int64_t created, const std::string& model, const std::vector<Choice>& choices,
                   const Usage& usage, bool with_logprobs, const TokenText& token_text, bool with_token_ids = false);
// One stream chunk (choice delta); `first` adds the assistant role to a chat delta.
// `with_token_ids` (request's return_token_ids) adds each choice's "token_ids".
Json completion_chunk(const std::string& id, int64_t created, const std::string& model, const Choice& delta,
                      bool with_logprobs, const TokenText& token_text, bool with_token_ids = false);
Json chat_chunk(const std::string& id, int64_t created, const std::string& model, const Choice& delta, bool first,
                bool with_logprobs, const TokenText& token_text, bool with_token_ids = false);
Json usage_chunk(const std::string& id, int64_t created, const std::string& model, Endpoint endpoint, const Usage& usage);
Json usage_json(const Usage& u);

}  // namespace baton::openai
