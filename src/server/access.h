// Who may call what, for the keys a server (baton-server or baton-proxy) was started with:
//   --api-key KEY      the API (and everything else but /health) needs 'Authorization: Bearer KEY'
//   --metrics-key KEY  /metrics also opens to 'Bearer KEY', without the counters that reveal
//                      whether a given prompt was sent (a scraper is not an API user)
// With neither key everything is open: the API itself then tells any caller its cached tokens,
// so hiding those counters would protect nothing. Keys are compared in constant time.
#pragma once

#include <string>
#include <string_view>

#include "common/secret.h"
#include "server/http.h"

namespace baton::http {

struct AccessKeys {
  std::string api_key;
  std::string metrics_key;
};

// What a request may see.
enum class Access {
  kNone,     // answer 401
  kMetrics,  // /metrics without the per-prompt counters
  kApi,      // everything
};

// The API endpoints (and /instances): kApi or kNone.
Access api_access(const Request& req, const AccessKeys& keys);
// /metrics: kApi, kMetrics or kNone.
Access metrics_access(const Request& req, const AccessKeys& keys);


}  // namespace baton::http
