// The one JSON library (nlohmann/json, Debian's nlohmann-json3-dev) and small typed readers
// that turn a missing or mistyped key into an error message naming the file and key.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "common/result.h"

namespace baton {

// Ordered: keys keep their order (chat tools, API responses), as Python dicts do.
using Json = nlohmann::ordered_json;

// Parses text; the error says where ("config.json: parse error at byte 12: ...").
Result<Json> parse_json(std::string_view text, const std::string& what);

// Reads obj[key] as T. `what` names the document in messages.
template <class T>
Result<T> json_get(const Json& obj, const char* key, const std::string& what) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return make_error(what, ": missing key '", key, "'");
  try {
    return it->template get<T>();
  } catch (const Json::exception&) {
    return make_error(what, ": key '", key, "' has the wrong type (", it->type_name(), ")");
  }
}

// Like json_get, but returns `fallback` when the key is absent or null.
template <class T>
Result<T> json_get_or(const Json& obj, const char* key, T fallback, const std::string& what) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  return json_get<T>(obj, key, what);
}

}  // namespace baton
