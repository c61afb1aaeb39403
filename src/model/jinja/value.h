// The values a chat template computes with (Python's None, bool, int, float, str, list, dict and
// callables), the Arena that owns a render's containers, and Jinja's == on values.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/json.h"
#include "common/result.h"

namespace baton::jinja {

// Python strings index by code point: convert for length, indexing, slicing and reversal.
std::u32string to_u32(const std::string& s);
std::string from_u32(const std::u32string& s);

struct Value;
using List = std::vector<Value>;
using Dict = std::vector<std::pair<std::string, Value>>;  // insertion order, as Python dicts
using Args = std::vector<Value>;
using Kwargs = std::vector<std::pair<std::string, Value>>;
using Func = std::function<Result<Value>(Args&, Kwargs&)>;

// Every list and dict made during one render, so that render() can break reference cycles a
// template may build (`set ns.x = ns`) before letting go of them.
struct Arena {
  std::vector<std::shared_ptr<List>> lists;
  std::vector<std::shared_ptr<Dict>> dicts;
  ~Arena();
};
// The Arena of the render running on this thread (ChatTemplate::render sets it), else null.
extern thread_local Arena* g_arena;

struct Value {
  enum class Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kFunc };
  Kind kind = Kind::kUndefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;
  std::shared_ptr<List> list;
  std::shared_ptr<Dict> dict;
  std::shared_ptr<Func> func;

  static Value none() { return make(Kind::kNone); }
  static Value boolean(bool v) { Value x = make(Kind::kBool); x.b = v; return x; }
  static Value integer(int64_t v) { Value x = make(Kind::kInt); x.i = v; return x; }
  static Value real(double v) { Value x = make(Kind::kFloat); x.f = v; return x; }
  static Value str(std::string v) { Value x = make(Kind::kString); x.s = std::move(v); return x; }
  static Value of_list(List v) {
    Value x = make(Kind::kList);
    x.list = std::make_shared<List>(std::move(v));
    if (g_arena) g_arena->lists.push_back(x.list);
    return x;
  }
  static Value of_dict(Dict v) {
    Value x = make(Kind::kDict);
    x.dict = std::make_shared<Dict>(std::move(v));
    if (g_arena) g_arena->dicts.push_back(x.dict);
    return x;
  }
  static Value function(Func fn) { Value x = make(Kind::kFunc); x.func = std::make_shared<Func>(std::move(fn)); return x; }
  static Value make(Kind k) { Value x; x.kind = k; return x; }

  bool is_undefined() const { return kind == Kind::kUndefined; }
  bool is_none() const { return kind == Kind::kNone; }
  bool is_number() const { return kind == Kind::kInt || kind == Kind::kFloat; }
  double number() const { return kind == Kind::kInt ? static_cast<double>(i) : kind == Kind::kFloat ? f : b ? 1 : 0; }

  bool truthy() const {
    switch (kind) {
      case Kind::kUndefined:
      case Kind::kNone: return false;
      case Kind::kBool: return b;
      case Kind::kInt: return i != 0;
      case Kind::kFloat: return f != 0;
      case Kind::kString: return !s.empty();
      case Kind::kList: return !list->empty();
      case Kind::kDict: return !dict->empty();
      case Kind::kFunc: return true;
    }
    return false;
  }

  const Value* find(const std::string& key) const {
    if (kind != Kind::kDict) return nullptr;
    for (const auto& [k, v] : *dict)
      if (k == key) return &v;
    return nullptr;
  }

  static Value from_json(const Json& j) {
    switch (j.type()) {
      case Json::value_t::null: return none();
      case Json::value_t::boolean: return boolean(j.get<bool>());
      case Json::value_t::number_integer:
      case Json::value_t::number_unsigned: return integer(j.get<int64_t>());
      case Json::value_t::number_float: return real(j.get<double>());
      case Json::value_t::string: return str(j.get<std::string>());
      case Json::value_t::array: {
        List l;
        for (const auto& e : j) l.push_back(from_json(e));
        return of_list(std::move(l));
      }
      case Json::value_t::object: {
        Dict d;
        for (auto it = j.begin(); it != j.end(); ++it) d.emplace_back(it.key(), from_json(it.value()));
        return of_dict(std::move(d));
      }
      default: return none();
    }
  }

  // Containers may be cyclic (`set ns.x = ns`): output stops at this depth, as Python prints [...].
  static constexpr int kMaxNesting = 32;

  Json to_json(int depth = 0) const {
    if (depth > kMaxNesting) return "...";
    switch (kind) {
      case Kind::kUndefined:
      case Kind::kNone:
      case Kind::kFunc: return nullptr;
      case Kind::kBool: return b;
      case Kind::kInt: return i;
      case Kind::kFloat: return f;
      case Kind::kString: return s;
      case Kind::kList: {
        auto a = Json::array();
        for (const auto& e : *list) a.push_back(e.to_json(depth + 1));
        return a;
      }
      case Kind::kDict: {
        auto o = Json::object();
        for (const auto& [k, v] : *dict) o[k] = v.to_json(depth + 1);
        return o;
      }
    }
    return nullptr;
  }

  // Jinja's str(): Python spellings for None/True/False and containers.
  std::string to_string(int depth = 0) const {
    if (depth > kMaxNesting) return "[...]";
    switch (kind) {
      case Kind::kUndefined: return "";
      case Kind::kNone: return "None";
      case Kind::kBool: return b ? "True" : "False";
      case Kind::kInt: return std::to_string(i);
      case Kind::kFloat: {
        if (std::floor(f) == f && std::abs(f) < 1e15) return std::to_string(static_cast<int64_t>(f)) + ".0";
        std::string r = std::to_string(f);
        while (r.size() > 1 && r.back() == '0') r.pop_back();
        return r;
      }
      case Kind::kString: return s;
      case Kind::kList: {
        std::string r = "[";
        for (size_t k = 0; k < list->size(); ++k) r += (k ? ", " : "") + (*list)[k].repr(depth + 1);
        return r + "]";
      }
      case Kind::kDict: {
        std::string r = "{";
        size_t k = 0;
        for (const auto& [key, v] : *dict) r += (k++ ? ", " : "") + str(key).repr() + ": " + v.repr(depth + 1);
        return r + "}";
      }
      case Kind::kFunc: return "<function>";
    }
    return "";
  }
  std::string repr(int depth = 0) const {
    if (kind == Kind::kString) {
      std::string r = "'";
      for (char c : s) {
        if (c == '\'' || c == '\\') r += '\\';
        if (c == '\n') { r += "\\n"; continue; }
        r += c;
      }
      return r + "'";
    }
    return to_string(depth);
  }
};

// Jinja's ==: numbers and booleans by value, None equal to undefined, lists and dicts element by
// element (to kMaxNesting: deeper, or cyclic, containers compare unequal).
bool equal(const Value& a, const Value& b, int depth = 0);

}  // namespace baton::jinja
