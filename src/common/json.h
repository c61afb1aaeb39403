// The one JSON library (nlohmann/json, Debian's nlohmann-json3-dev) and small typed readers
// that turn a missing or mistyped key into an error message naming the file and key.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "common/result.h"

namespace baton {

// Ordered: keys keep their order (chat tools, API responses), as Python dicts do.
using Json = nlohmann::ordered_json;

// Documents nested deeper than this are refused while they are parsed. nlohmann's parser keeps
// its own stack, but copying, comparing and dumping a value recurse once per level, so a body of
// 100,000 '[' would overflow the stack later, wherever it is next touched. 128 levels is far more
// than any API request, model file or registration needs (tool schemas run to a dozen).
constexpr int kMaxJsonDepth = 128;

// Parses text; the error says where ("config.json: parse error at byte 12: ...").
Result<Json> parse_json(std::string_view text, const std::string& what, int max_depth = kMaxJsonDepth);
// The same for MessagePack (the proxy's registrations): one whole document, depth-limited.
Result<Json> parse_msgpack(std::string_view bytes, const std::string& what, int max_depth = kMaxJsonDepth);

namespace json_detail {

template <class T>
struct is_vector : std::false_type {};
template <class T>
struct is_vector<std::vector<T>> : std::true_type {};

// v as the integer type T when it holds exactly such a value (an integer in range, or a float
// with an integral value in range). nlohmann's own get<T>() casts a float like 1e28 to an integer
// type, which is undefined behaviour, so untrusted documents never go through it.
template <class T>
std::optional<T> exact_integer(const Json& v) {
  using L = std::numeric_limits<T>;
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(L::max())) return std::nullopt;
    return static_cast<T>(u);
  }
  if (v.is_number_integer()) {
    const int64_t i = v.get<int64_t>();
    if (i < 0 ? (!L::is_signed || i < static_cast<int64_t>(L::min()))
              : static_cast<uint64_t>(i) > static_cast<uint64_t>(L::max()))
      return std::nullopt;
    return static_cast<T>(i);
  }
  if (v.is_number_float()) {
    const double d = v.get<double>();
    const double limit = std::ldexp(1.0, L::digits);  // 2^digits: the first value past max
    if (!(d == std::floor(d)) || d >= limit || d < (L::is_signed ? -limit : 0.0)) return std::nullopt;
    return static_cast<T>(d);
  }
  return std::nullopt;
}

}  // namespace json_detail

// Reads obj[key] as T. `what` names the document in messages. Integers (and vectors of them) must
// be exact and in T's range.
template <class T>
Result<T> json_get(const Json& obj, const char* key, const std::string& what) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return make_error(what, ": missing key '", key, "'");
  auto wrong = [&] { return make_error(what, ": key '", key, "' has the wrong type (", it->type_name(), ")"); };
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    if (!it->is_number()) return wrong();
    auto v = json_detail::exact_integer<T>(*it);
    if (!v) return make_error(what, ": key '", key, "' is not an integer in range (", it->dump(), ")");
    return *v;
  } else if constexpr (json_detail::is_vector<T>::value) {
    using E = typename T::value_type;
    if constexpr (std::is_integral_v<E> && !std::is_same_v<E, bool>) {
      if (!it->is_array()) return wrong();
      T out;
      for (const Json& e : *it) {
        auto v = json_detail::exact_integer<E>(e);
        if (!v) return make_error(what, ": key '", key, "' holds ", e.dump(), ", not an integer in range");
        out.push_back(*v);
      }
      return out;
    }
  }
  try {
    return it->template get<T>();
  } catch (const Json::exception&) {
    return wrong();
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
