// What the proxy sends upstream for one client request (DESIGN.md section 1, "read" mode), kept
// apart from the I/O so that it is unit-tested and fuzzed alone: the client's body parsed once,
// with the server's limits (size by the HTTP layer, nesting by parse_json), into the prefill's
// body, the decode's body and the routing costs.
#pragma once

#include <string>
#include <string_view>

#include "common/json.h"
#include "common/result.h"

namespace baton::proxy {

struct RelayPlan {
  Json request;              // the client's body: a JSON object of at most kMaxJsonDepth levels
  std::string prefill_body;  // max_tokens 1, not streamed, kv_transfer_params.do_remote_decode
  int64_t prompt_cost = 0;   // routing estimates in tokens: prompt ~ bytes / 4 (+1)
  int64_t decode_cost = 0;   // the prompt plus the tokens asked for
};

// An error is the client's fault (answer 400 with its message).
Result<RelayPlan> plan_relay(std::string_view body, bool chat);

// The decode's body: the client's request with the prefill's kv_transfer_params.
std::string decode_body(const RelayPlan& plan, const Json& kv_params);

// The kv_transfer_params object of a prefill's answer; an error says what was wrong with it.
Result<Json> kv_params_of(std::string_view prefill_answer);

}  // namespace baton::proxy
