#include "proxy/relay_plan.h"

#include <algorithm>

namespace baton::proxy {

namespace {

int64_t json_int_or(const Json& j, const char* key, int64_t fallback) {
  auto it = j.find(key);
  return it != j.end() && it->is_number_integer() ? it->get<int64_t>() : fallback;
}

}  // namespace

Result<RelayPlan> plan_relay(std::string_view body, bool chat) {
  RelayPlan plan;
  BATON_ASSIGN_OR_RETURN(plan.request, parse_json(body, "the request body"));
  if (!plan.request.is_object()) return make_error("the request body is not a JSON object");
  const Json& req = plan.request;
  plan.prompt_cost = static_cast<int64_t>(body.size() / 4) + 1;
  // Saturating: a client's max_tokens may be any integer (the instance refuses a wrong one).
  const int64_t asked =
      json_int_or(req, chat ? "max_completion_tokens" : "max_tokens", json_int_or(req, "max_tokens", 256));
  plan.decode_cost = plan.prompt_cost + std::clamp<int64_t>(asked, 0, int64_t{1} << 40);

  Json pbody = req;
  pbody["max_tokens"] = 1;
  if (chat && pbody.contains("max_completion_tokens")) pbody["max_completion_tokens"] = 1;
  pbody["stream"] = false;
  pbody.erase("stream_options");
  pbody["kv_transfer_params"] = {{"do_remote_decode", true}, {"do_remote_prefill", false}};
  plan.prefill_body = pbody.dump();  // the parser admits valid UTF-8 only: dump() cannot throw
  return plan;
}

std::string decode_body(const RelayPlan& plan, const Json& kv_params) {
  Json dbody = plan.request;
  dbody["kv_transfer_params"] = kv_params;
  return dbody.dump();
}

Result<Json> kv_params_of(std::string_view prefill_answer) {
  BATON_ASSIGN_OR_RETURN(Json answer, parse_json(prefill_answer, "its answer"));
  if (!answer.is_object() || !answer.contains("kv_transfer_params") || !answer["kv_transfer_params"].is_object())
    return make_error("answered without kv_transfer_params (is it a kv_producer?)");
  return std::move(answer["kv_transfer_params"]);
}

}  // namespace baton::proxy
