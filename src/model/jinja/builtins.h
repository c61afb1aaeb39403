// What a template can do to a value by name: attributes and Python methods (`x.strip()`,
// `d.items()`), filters (`x | tojson`) and tests (`x is defined`).
#pragma once

#include <string>

#include "common/result.h"
#include "model/jinja/value.h"

namespace baton::jinja {

// Python's str.strip / lstrip / rstrip: `chars` empty strips white space.
std::string strip_chars(const std::string& s, const std::string& chars, bool left, bool right);

// `obj.name`: a dict's key or method, a string's or a list's method; undefined when it has none.
Result<Value> get_attr(const Value& obj, const std::string& name, int line);
Result<Value> apply_filter(const std::string& name, Value v, Args& args, Kwargs& kwargs, int line);
Result<bool> apply_test(const std::string& name, const Value& v, Args& args, int line);

}  // namespace baton::jinja
