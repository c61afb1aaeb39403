// libFuzzer target: OpenAI request bodies. Parsing must never crash, and every refusal must be
// a valid OpenAI error JSON.
#include <cassert>
#include <cstdint>
#include <string_view>

#include "server/openai_protocol.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace baton;
  std::string_view body(reinterpret_cast<const char*>(data), size);
  for (auto endpoint : {openai::Endpoint::kCompletions, openai::Endpoint::kChat}) {
    auto r = openai::parse_request(body, endpoint);
    if (auto* e = std::get_if<openai::ApiError>(&r)) {
      Json j = Json::parse(openai::error_body(*e));
      assert(j["error"]["code"] == e->status && !e->message.empty());
    } else {
      const auto& req = std::get<openai::ApiRequest>(r);
      assert(req.params.max_tokens >= 1);
      assert(endpoint == openai::Endpoint::kChat ? req.messages.is_array() : !req.prompts.empty());
    }
  }
  return 0;
}
