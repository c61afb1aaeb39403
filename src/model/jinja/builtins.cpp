// Attributes and methods, filters and tests (builtins.h): Python's string, dict and list methods
// and the Jinja filters and tests that real chat templates use.
#include "model/jinja/builtins.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>

#include "model/jinja/ast.h"

namespace baton::jinja {

std::string strip_chars(const std::string& s, const std::string& chars, bool left, bool right) {
  size_t b = 0, e = s.size();
  auto is_strip = [&](char c) { return chars.empty() ? std::isspace(static_cast<unsigned char>(c)) != 0 : chars.find(c) != std::string::npos; };
  if (left)
    while (b < e && is_strip(s[b])) ++b;
  if (right)
    while (e > b && is_strip(s[e - 1])) --e;
  return s.substr(b, e - b);
}

Value bound(std::function<Result<Value>(Args&, Kwargs&)> fn) { return Value::function(std::move(fn)); }

Result<Value> get_attr(const Value& obj, const std::string& name, int line) {
  using K = Value::Kind;
  if (obj.kind == K::kDict) {
    if (const Value* v = obj.find(name)) return *v;
    if (name == "items")
      return bound([obj](Args&, Kwargs&) -> Result<Value> {
        List l;
        for (const auto& [k, v] : *obj.dict) l.push_back(Value::of_list({Value::str(k), v}));
        return Value::of_list(std::move(l));
      });
    if (name == "keys")
      return bound([obj](Args&, Kwargs&) -> Result<Value> {
        List l;
        for (const auto& [k, v] : *obj.dict) l.push_back(Value::str(k));
        return Value::of_list(std::move(l));
      });
    if (name == "values")
      return bound([obj](Args&, Kwargs&) -> Result<Value> {
        List l;
        for (const auto& [k, v] : *obj.dict) l.push_back(v);
        return Value::of_list(std::move(l));
      });
    if (name == "get")
      return bound([obj](Args& a, Kwargs&) -> Result<Value> {
        if (a.empty()) return make_error("get() needs a key");
        const Value* v = obj.find(a[0].to_string());
        return v ? *v : (a.size() > 1 ? a[1] : Value::none());
      });
    return Value();
  }
  if (obj.kind == K::kString) {
    const std::string s = obj.s;
    auto str_method = [&](std::function<Result<Value>(Args&)> fn) {
      return bound([fn](Args& a, Kwargs&) { return fn(a); });
    };
    if (name == "strip" || name == "lstrip" || name == "rstrip")
      return str_method([s, name](Args& a) -> Result<Value> {
        std::string chars = a.empty() ? "" : a[0].to_string();
        return Value::str(strip_chars(s, chars, name != "rstrip", name != "lstrip"));
      });
    if (name == "upper" || name == "lower")
      return str_method([s, name](Args&) -> Result<Value> {
        std::string r = s;
        for (char& c : r) c = static_cast<char>(name == "upper" ? std::toupper(static_cast<unsigned char>(c)) : std::tolower(static_cast<unsigned char>(c)));
        return Value::str(r);
      });
    if (name == "startswith" || name == "endswith")
      return str_method([s, name](Args& a) -> Result<Value> {
        if (a.empty()) return make_error(name + "() needs an argument");
        std::string p = a[0].to_string();
        bool r = name == "startswith" ? s.rfind(p, 0) == 0 : (s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0);
        return Value::boolean(r);
      });
    if (name == "split")
      return str_method([s](Args& a) -> Result<Value> {
        List out;
        if (a.empty() || a[0].is_none()) {
          std::string cur;
          for (char c : s) {
            if (std::isspace(static_cast<unsigned char>(c))) {
              if (!cur.empty()) out.push_back(Value::str(cur)), cur.clear();
            } else {
              cur += c;
            }
          }
          if (!cur.empty()) out.push_back(Value::str(cur));
          return Value::of_list(std::move(out));
        }
        std::string sep = a[0].to_string();
        if (sep.empty()) return make_error("empty separator");
        size_t pos = 0;
        for (size_t hit; (hit = s.find(sep, pos)) != std::string::npos; pos = hit + sep.size())
          out.push_back(Value::str(s.substr(pos, hit - pos)));
        out.push_back(Value::str(s.substr(pos)));
        return Value::of_list(std::move(out));
      });
    if (name == "replace")
      return str_method([s](Args& a) -> Result<Value> {
        if (a.size() < 2) return make_error("replace() needs two arguments");
        std::string from = a[0].to_string(), to = a[1].to_string(), r;
        if (from.empty()) return Value::str(s);
        size_t pos = 0;
        for (size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size()) r += s.substr(pos, hit - pos) + to;
        return Value::str(r + s.substr(pos));
      });
    if (name == "title" || name == "capitalize")
      return str_method([s, name](Args&) -> Result<Value> {
        std::string r = s;
        bool start = true;
        for (char& c : r) {
          unsigned char u = static_cast<unsigned char>(c);
          c = static_cast<char>(start ? std::toupper(u) : (name == "title" ? std::tolower(u) : c));
          start = name == "title" ? !std::isalpha(u) : false;
        }
        return Value::str(r);
      });
    if (name == "find")
      return str_method([s](Args& a) -> Result<Value> {
        if (a.empty()) return make_error("find() needs an argument");
        size_t at = s.find(a[0].to_string());
        return Value::integer(at == std::string::npos ? -1 : static_cast<int64_t>(at));
      });
    return Value();
  }
  if (obj.kind == K::kList && name == "append")
    return bound([obj](Args& a, Kwargs&) -> Result<Value> {
      if (a.size() != 1) return make_error("append() takes one argument");
      obj.list->push_back(a[0]);
      return Value::none();
    });
  if (obj.is_undefined() || obj.is_none()) return Value();
  (void)line;
  return Value();
}

Result<Value> apply_filter(const std::string& name, Value v, Args& args, Kwargs& kwargs, int line) {
  using K = Value::Kind;
  auto kwarg = [&](const char* key, size_t pos) -> const Value* {
    for (const auto& [k, val] : kwargs)
      if (k == key) return &val;
    return pos < args.size() ? &args[pos] : nullptr;
  };
  if (name == "trim") return Value::str(strip_chars(v.to_string(), "", true, true));
  if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
    BATON_ASSIGN_OR_RETURN(Value m, get_attr(Value::str(v.to_string()), name, line));
    Args none;
    Kwargs nk;
    return (*m.func)(none, nk);
  }
  if (name == "length" || name == "count") {
    if (v.kind == K::kString) return Value::integer(static_cast<int64_t>(to_u32(v.s).size()));
    if (v.kind == K::kList) return Value::integer(static_cast<int64_t>(v.list->size()));
    if (v.kind == K::kDict) return Value::integer(static_cast<int64_t>(v.dict->size()));
    if (v.is_undefined() || v.is_none()) return Value::integer(0);
    return error_at(line, "length of " + v.repr());
  }
  if (name == "string") return Value::str(v.to_string());
  if (name == "int") {
    if (v.kind == K::kString) {
      try {
        return Value::integer(std::stoll(v.s));
      } catch (...) {
        return Value::integer(0);
      }
    }
    double d = v.number();
    if (!(d > -9.2e18 && d < 9.2e18)) return Value::integer(0);
    return Value::integer(static_cast<int64_t>(d));
  }
  if (name == "float") return Value::real(v.kind == K::kString ? std::strtod(v.s.c_str(), nullptr) : v.number());
  if (name == "abs") {
    if (v.kind == K::kInt && v.i != INT64_MIN) return Value::integer(v.i < 0 ? -v.i : v.i);
    return Value::real(std::fabs(v.number()));
  }
  if (name == "tojson") {
    int indent = -1;
    if (const Value* ind = kwarg("indent", 0); ind && ind->kind == K::kInt) indent = static_cast<int>(ind->i);
    std::string out = v.to_json().dump(indent, ' ', false, Json::error_handler_t::replace);
    // Python's json.dumps separators: ", " and ": " when not indented.
    if (indent < 0) {
      std::string spaced;
      bool in_str = false;
      for (size_t k = 0; k < out.size(); ++k) {
        char c = out[k];
        spaced += c;
        if (c == '"' && (k == 0 || out[k - 1] != '\\' || (k >= 2 && out[k - 2] == '\\'))) in_str = !in_str;
        if (!in_str && (c == ',' || c == ':')) spaced += ' ';
      }
      out = std::move(spaced);
    }
    return Value::str(out);
  }
  if (name == "join") {
    std::string sep = args.empty() ? "" : args[0].to_string(), out;
    if (v.kind != K::kList) return error_at(line, "join needs a list");
    for (size_t k = 0; k < v.list->size(); ++k) out += (k ? sep : "") + (*v.list)[k].to_string();
    return Value::str(out);
  }
  if (name == "default" || name == "d") {
    bool boolean = false;
    if (const Value* b = kwarg("boolean", 1)) boolean = b->truthy();
    if (v.is_undefined() || (boolean && !v.truthy())) return args.empty() ? Value::str("") : args[0];
    return v;
  }
  if (name == "first" || name == "last") {
    if (v.kind == K::kList) {
      if (v.list->empty()) return Value();
      return name == "first" ? v.list->front() : v.list->back();
    }
    if (v.kind == K::kString && !v.s.empty()) {
      std::u32string u = to_u32(v.s);
      return Value::str(from_u32(std::u32string(1, name == "first" ? u.front() : u.back())));
    }
    return Value();
  }
  if (name == "list") {
    if (v.kind == K::kList) return v;
    if (v.kind == K::kString) {
      List l;
      for (char32_t ch : to_u32(v.s)) l.push_back(Value::str(from_u32(std::u32string(1, ch))));
      return Value::of_list(std::move(l));
    }
    if (v.kind == K::kDict) {
      List l;
      for (const auto& [k, x] : *v.dict) l.push_back(Value::str(k));
      return Value::of_list(std::move(l));
    }
    return Value::of_list({});
  }
  if (name == "items") {
    if (v.kind != K::kDict) return Value::of_list({});
    List l;
    for (const auto& [k, x] : *v.dict) l.push_back(Value::of_list({Value::str(k), x}));
    return Value::of_list(std::move(l));
  }
  if (name == "reverse") {
    if (v.kind == K::kList) {
      List l(v.list->rbegin(), v.list->rend());
      return Value::of_list(std::move(l));
    }
    if (v.kind == K::kString) {
      std::u32string u = to_u32(v.s);
      return Value::str(from_u32(std::u32string(u.rbegin(), u.rend())));
    }
    return v;
  }
  if (name == "replace") {
    BATON_ASSIGN_OR_RETURN(Value m, get_attr(Value::str(v.to_string()), "replace", line));
    return (*m.func)(args, kwargs);
  }
  if (name == "selectattr" || name == "rejectattr") {
    if (v.kind != K::kList || args.empty()) return error_at(line, name + " needs a list and an attribute");
    const std::string attr = args[0].to_string();
    List out;
    for (const Value& item : *v.list) {
      BATON_ASSIGN_OR_RETURN(Value a, get_attr(item, attr, line));
      bool keep;
      if (args.size() >= 2) {
        Args rest(args.begin() + 2, args.end());
        BATON_ASSIGN_OR_RETURN(keep, apply_test(args[1].to_string(), a, rest, line));
      } else {
        keep = a.truthy();
      }
      if (keep == (name == "selectattr")) out.push_back(item);
    }
    return Value::of_list(std::move(out));
  }
  if (name == "map") {
    if (v.kind != K::kList) return error_at(line, "map needs a list");
    const Value* attr = kwarg("attribute", 99);
    List out;
    for (const Value& item : *v.list) {
      if (attr) {
        BATON_ASSIGN_OR_RETURN(Value a, get_attr(item, attr->to_string(), line));
        out.push_back(a);
      } else if (!args.empty()) {
        Args none;
        Kwargs nk;
        BATON_ASSIGN_OR_RETURN(Value a, apply_filter(args[0].to_string(), item, none, nk, line));
        out.push_back(a);
      }
    }
    return Value::of_list(std::move(out));
  }
  if (name == "indent") {
    int width = args.empty() ? 4 : static_cast<int>(std::clamp(args[0].number(), 0.0, 64.0));
    std::string pad(width, ' '), s = v.to_string(), out;
    for (size_t k = 0; k < s.size(); ++k) {
      out += s[k];
      if (s[k] == '\n' && k + 1 < s.size()) out += pad;
    }
    return Value::str(out);
  }
  if (name == "safe" || name == "e" || name == "escape") return v;
  return error_at(line, "unknown filter '" + name + "'");
}

Result<bool> apply_test(const std::string& name, const Value& v, Args& args, int line) {
  using K = Value::Kind;
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "string") return v.kind == K::kString;
  if (name == "number") return v.is_number();
  if (name == "integer") return v.kind == K::kInt;
  if (name == "float") return v.kind == K::kFloat;
  if (name == "boolean") return v.kind == K::kBool;
  if (name == "mapping") return v.kind == K::kDict;
  if (name == "sequence" || name == "iterable") return v.kind == K::kList || v.kind == K::kString || v.kind == K::kDict;
  if (name == "callable") return v.kind == K::kFunc;
  if (name == "true") return v.kind == K::kBool && v.b;
  if (name == "false") return v.kind == K::kBool && !v.b;
  if (name == "odd" || name == "even") return v.kind == K::kInt && ((v.i % 2 != 0) == (name == "odd"));
  if (name == "equalto" || name == "eq" || name == "sameas") return !args.empty() && equal(v, args[0]);
  if (name == "in") return !args.empty() && contains(args[0], v, line).ok() && *contains(args[0], v, line);
  return error_at(line, "unknown test '" + name + "'");
}

}  // namespace baton::jinja
