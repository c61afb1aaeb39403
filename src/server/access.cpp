#include "server/access.h"

namespace baton::http {

namespace {

bool bearer_is(const Request& req, const std::string& key) {
  if (key.empty()) return false;
  auto it = req.find(beast::http::field::authorization);
  if (it == req.end()) return false;
  const std::string_view value(it->value().data(), it->value().size());
  constexpr std::string_view kBearer = "Bearer ";
  return value.substr(0, kBearer.size()) == kBearer && secrets_equal(value.substr(kBearer.size()), key);
}

}  // namespace

Access api_access(const Request& req, const AccessKeys& keys) {
  if (keys.api_key.empty() || bearer_is(req, keys.api_key)) return Access::kApi;
  return Access::kNone;
}

Access metrics_access(const Request& req, const AccessKeys& keys) {
  if (keys.api_key.empty() && keys.metrics_key.empty()) return Access::kApi;
  if (bearer_is(req, keys.api_key)) return Access::kApi;
  if (bearer_is(req, keys.metrics_key)) return Access::kMetrics;
  return Access::kNone;
}

}  // namespace baton::http
