// libFuzzer target: the proxy's request path without the network. A client's body becomes the
// prefill's and the decode's bodies (proxy/relay_plan.h), and the same bytes are read as a
// prefill's answer. Every input gets a plan or an error: no crash, no exception, no recursion
// deep enough to overflow the stack (the corpus keeps the 100,000-level body that once did).
#include <cassert>
#include <cstdint>
#include <string_view>

#include "proxy/relay_plan.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace baton;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  Result<Json> params = proxy::kv_params_of(bytes);
  assert(!params.ok() || params->is_object());
  for (bool chat : {false, true}) {
    Result<proxy::RelayPlan> plan = proxy::plan_relay(bytes, chat);
    if (!plan.ok()) {
      assert(!plan.error().empty());
      continue;
    }
    const Json prefill = Json::parse(plan->prefill_body);
    assert(prefill["max_tokens"] == 1 && prefill["stream"] == false);
    assert(plan->prompt_cost >= 1 && plan->decode_cost >= plan->prompt_cost);
    const Json kv = params.ok() ? *params : Json{{"transfer_id", "t"}};
    const Json decode = Json::parse(proxy::decode_body(*plan, kv));
    assert(decode["kv_transfer_params"] == kv);
  }
  return 0;
}
