#include "model/chat_template.h"

#include <algorithm>
#include <cmath>
#include <charconv>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <functional>
#include <map>
#include <unordered_map>

#include "common/mapped_file.h"
#include "common/utf8.h"

namespace baton {
namespace jinja {

// ---- values ---------------------------------------------------------------------------------

// Python strings index by code point: convert for length, indexing, slicing and reversal.
std::u32string to_u32(const std::string& s) {
  std::u32string out;
  for (size_t i = 0; i < s.size();) {
    size_t len = utf8::sequence_length(s, i);
    if (len == 0) {  // not valid UTF-8: treat the byte as a character
      out += static_cast<char32_t>(static_cast<unsigned char>(s[i]));
      ++i;
      continue;
    }
    out += utf8::decode(s, i, &len);
    i += len;
  }
  return out;
}
std::string from_u32(const std::u32string& s) {
  std::string out;
  for (char32_t c : s) utf8::append(out, c);
  return out;
}

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
thread_local Arena* g_arena = nullptr;

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

Arena::~Arena() {
  for (auto& l : lists) l->clear();
  for (auto& d : dicts) d->clear();
}

bool equal(const Value& a, const Value& b, int depth = 0) {
  using K = Value::Kind;
  if (depth > Value::kMaxNesting) return false;
  if (a.is_number() && b.is_number()) return a.number() == b.number();
  if ((a.kind == K::kBool || b.kind == K::kBool) && (a.is_number() || b.is_number() || a.kind == b.kind))
    return a.number() == b.number();
  if (a.kind != b.kind) return (a.is_none() || a.is_undefined()) && (b.is_none() || b.is_undefined());
  switch (a.kind) {
    case K::kString: return a.s == b.s;
    case K::kList:
      if (a.list->size() != b.list->size()) return false;
      for (size_t k = 0; k < a.list->size(); ++k)
        if (!equal((*a.list)[k], (*b.list)[k], depth + 1)) return false;
      return true;
    case K::kDict:
      if (a.dict->size() != b.dict->size()) return false;
      for (const auto& [key, v] : *a.dict) {
        const Value* o = b.find(key);
        if (!o || !equal(v, *o, depth + 1)) return false;
      }
      return true;
    default: return true;
  }
}

// ---- rendering context ----------------------------------------------------------------------

enum class LoopSignal { kNone, kBreak, kContinue };
constexpr int kMaxDepth = 64;                      // nested loops at render time
constexpr size_t kMaxOutput = size_t{16} << 20;    // rendered prompt size

struct Context {
  std::vector<std::unordered_map<std::string, Value>> scopes;
  LoopSignal signal = LoopSignal::kNone;
  int depth = 0;

  Value lookup(const std::string& name) const {
    for (auto it = scopes.rbegin(); it != scopes.rend(); ++it)
      if (auto f = it->find(name); f != it->end()) return f->second;
    return Value();
  }
  void set(const std::string& name, Value v) { scopes.back()[name] = std::move(v); }
};

// ---- AST ------------------------------------------------------------------------------------

struct Expr {
  int line = 0;
  virtual ~Expr() = default;
  virtual Result<Value> eval(Context& ctx) const = 0;
};
using ExprPtr = std::unique_ptr<Expr>;

Error error_at(int line, const std::string& msg) { return make_error("chat template line ", line, ": ", msg); }

}  // namespace jinja

struct jinja::Node {
  int line = 0;
  virtual ~Node() = default;
  virtual Status render(Context& ctx, std::string& out) const = 0;
};

namespace jinja {
using NodePtr = std::unique_ptr<Node>;

struct Literal : Expr {
  Value v;
  Result<Value> eval(Context&) const override { return v; }
};
struct Name : Expr {
  std::string name;
  Result<Value> eval(Context& ctx) const override { return ctx.lookup(name); }
};
struct ListExpr : Expr {
  std::vector<ExprPtr> items;
  Result<Value> eval(Context& ctx) const override {
    List l;
    for (const auto& e : items) {
      BATON_ASSIGN_OR_RETURN(Value v, e->eval(ctx));
      l.push_back(std::move(v));
    }
    return Value::of_list(std::move(l));
  }
};
struct DictExpr : Expr {
  std::vector<std::pair<ExprPtr, ExprPtr>> items;
  Result<Value> eval(Context& ctx) const override {
    Dict d;
    for (const auto& [k, v] : items) {
      BATON_ASSIGN_OR_RETURN(Value key, k->eval(ctx));
      BATON_ASSIGN_OR_RETURN(Value val, v->eval(ctx));
      d.emplace_back(key.to_string(), std::move(val));
    }
    return Value::of_dict(std::move(d));
  }
};

Result<Value> get_attr(const Value& obj, const std::string& name, int line);

Result<Value> subscript(const Value& obj, const Value& key, int line) {
  using K = Value::Kind;
  if (obj.kind == K::kDict) {
    const Value* v = obj.find(key.to_string());
    return v ? *v : Value();
  }
  if ((obj.kind == K::kList || obj.kind == K::kString) && key.kind == K::kInt) {
    std::u32string u = obj.kind == K::kString ? to_u32(obj.s) : std::u32string();
    int64_t n = obj.kind == K::kList ? static_cast<int64_t>(obj.list->size()) : static_cast<int64_t>(u.size());
    int64_t idx = key.i < 0 ? key.i + n : key.i;
    if (idx < 0 || idx >= n) return Value();
    if (obj.kind == K::kList) return (*obj.list)[idx];
    return Value::str(from_u32(u.substr(idx, 1)));
  }
  if (key.kind == K::kString) return get_attr(obj, key.s, line);
  if (obj.is_undefined() || obj.is_none()) return Value();
  return error_at(line, "cannot index " + obj.repr() + " with " + key.repr());
}

struct Attr : Expr {
  ExprPtr obj;
  std::string name;
  Result<Value> eval(Context& ctx) const override {
    BATON_ASSIGN_OR_RETURN(Value o, obj->eval(ctx));
    return get_attr(o, name, line);
  }
};
struct Index : Expr {
  ExprPtr obj, key;
  Result<Value> eval(Context& ctx) const override {
    BATON_ASSIGN_OR_RETURN(Value o, obj->eval(ctx));
    BATON_ASSIGN_OR_RETURN(Value k, key->eval(ctx));
    return subscript(o, k, line);
  }
};
struct Slice : Expr {
  ExprPtr obj, start, stop, step;
  Result<Value> eval(Context& ctx) const override {
    BATON_ASSIGN_OR_RETURN(Value o, obj->eval(ctx));
    const std::u32string u = o.kind == Value::Kind::kString ? to_u32(o.s) : std::u32string();
    int64_t n = o.kind == Value::Kind::kList ? static_cast<int64_t>(o.list->size())
                : o.kind == Value::Kind::kString ? static_cast<int64_t>(u.size())
                                                 : -1;
    if (n < 0) return error_at(line, "cannot slice " + o.repr());
    auto num = [&](const ExprPtr& e, int64_t dflt) -> Result<int64_t> {
      if (!e) return dflt;
      BATON_ASSIGN_OR_RETURN(Value v, e->eval(ctx));
      if (v.is_none()) return dflt;
      if (v.kind != Value::Kind::kInt) return error_at(line, "slice bounds must be integers");
      return v.i;
    };
    BATON_ASSIGN_OR_RETURN(int64_t st, num(step, 1));
    if (st == 0) return error_at(line, "slice step cannot be zero");
    BATON_ASSIGN_OR_RETURN(int64_t a, num(start, st > 0 ? 0 : n - 1));
    BATON_ASSIGN_OR_RETURN(int64_t b, num(stop, st > 0 ? n : -n - 1));
    auto clamp = [&](int64_t x, bool is_stop) {
      if (x < 0) x += n;
      if (st > 0) return std::clamp<int64_t>(x, 0, n);
      return std::clamp<int64_t>(x, is_stop ? -1 : 0, n - 1);
    };
    if (start) a = clamp(a, false);
    if (stop) b = clamp(b, true); else b = st > 0 ? n : -1;
    List l;
    std::u32string s;
    for (int64_t k = a; st > 0 ? k < b : k > b; k += st) {
      if (o.kind == Value::Kind::kList) {
        l.push_back((*o.list)[k]);
      } else {
        s += u[k];
      }
    }
    return o.kind == Value::Kind::kList ? Value::of_list(std::move(l)) : Value::str(from_u32(s));
  }
};

struct Call : Expr {
  ExprPtr fn;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  Result<Value> eval(Context& ctx) const override {
    BATON_ASSIGN_OR_RETURN(Value f, fn->eval(ctx));
    if (f.kind != Value::Kind::kFunc) return error_at(line, "calling something that is not a function");
    Args a;
    Kwargs kw;
    for (const auto& e : args) {
      BATON_ASSIGN_OR_RETURN(Value v, e->eval(ctx));
      a.push_back(std::move(v));
    }
    for (const auto& [k, e] : kwargs) {
      BATON_ASSIGN_OR_RETURN(Value v, e->eval(ctx));
      kw.emplace_back(k, std::move(v));
    }
    auto r = (*f.func)(a, kw);
    if (!r.ok()) return error_at(line, r.error());
    return r;
  }
};

Result<Value> apply_filter(const std::string& name, Value v, Args& args, Kwargs& kwargs, int line);
Result<bool> apply_test(const std::string& name, const Value& v, Args& args, int line);

struct FilterExpr : Expr {
  ExprPtr obj;
  std::string name;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  Result<Value> eval(Context& ctx) const override {
    BATON_ASSIGN_OR_RETURN(Value v, obj->eval(ctx));
    Args a;
    Kwargs kw;
    for (const auto& e : args) {
      BATON_ASSIGN_OR_RETURN(Value x, e->eval(ctx));
      a.push_back(std::move(x));
    }
    for (const auto& [k, e] : kwargs) {
      BATON_ASSIGN_OR_RETURN(Value x, e->eval(ctx));
      kw.emplace_back(k, std::move(x));
    }
    return apply_filter(name, std::move(v), a, kw, line);
  }
};
struct TestExpr : Expr {
  ExprPtr obj;
  std::string name;
  bool negate = false;
  std::vector<ExprPtr> args;
  Result<Value> eval(Context& ctx) const override {
    BATON_ASSIGN_OR_RETURN(Value v, obj->eval(ctx));
    Args a;
    for (const auto& e : args) {
      BATON_ASSIGN_OR_RETURN(Value x, e->eval(ctx));
      a.push_back(std::move(x));
    }
    BATON_ASSIGN_OR_RETURN(bool r, apply_test(name, v, a, line));
    return Value::boolean(r != negate);
  }
};
struct Unary : Expr {
  std::string op;
  ExprPtr e;
  Result<Value> eval(Context& ctx) const override {
    BATON_ASSIGN_OR_RETURN(Value v, e->eval(ctx));
    if (op == "not") return Value::boolean(!v.truthy());
    if (v.kind == Value::Kind::kInt) return Value::integer(op == "-" ? -v.i : v.i);
    if (v.kind == Value::Kind::kFloat) return Value::real(op == "-" ? -v.f : v.f);
    return error_at(line, "unary " + op + " on " + v.repr());
  }
};
struct Conditional : Expr {
  ExprPtr then, cond, otherwise;
  Result<Value> eval(Context& ctx) const override {
    BATON_ASSIGN_OR_RETURN(Value c, cond->eval(ctx));
    if (c.truthy()) return then->eval(ctx);
    return otherwise ? otherwise->eval(ctx) : Result<Value>(Value());
  }
};

Result<bool> contains(const Value& container, const Value& item, int line) {
  using K = Value::Kind;
  if (container.kind == K::kString) return container.s.find(item.to_string()) != std::string::npos;
  if (container.kind == K::kList)
    return std::any_of(container.list->begin(), container.list->end(), [&](const Value& e) { return equal(e, item); });
  if (container.kind == K::kDict) return container.find(item.to_string()) != nullptr;
  if (container.is_undefined() || container.is_none()) return false;
  return error_at(line, "'in' needs a string, list or dict");
}

struct Binary : Expr {
  std::string op;
  ExprPtr l, r;
  Result<Value> eval(Context& ctx) const override {
    using K = Value::Kind;
    BATON_ASSIGN_OR_RETURN(Value a, l->eval(ctx));
    if (op == "and") return a.truthy() ? r->eval(ctx) : Result<Value>(a);
    if (op == "or") return a.truthy() ? Result<Value>(a) : r->eval(ctx);
    BATON_ASSIGN_OR_RETURN(Value b, r->eval(ctx));
    if (op == "==") return Value::boolean(equal(a, b));
    if (op == "!=") return Value::boolean(!equal(a, b));
    if (op == "in" || op == "not in") {
      BATON_ASSIGN_OR_RETURN(bool in, contains(b, a, line));
      return Value::boolean(in == (op == "in"));
    }
    if (op == "~") return Value::str(a.to_string() + b.to_string());
    if (op == "<" || op == ">" || op == "<=" || op == ">=") {
      int cmp;
      if (a.kind == K::kString && b.kind == K::kString) {
        cmp = a.s < b.s ? -1 : a.s > b.s ? 1 : 0;
      } else if ((a.is_number() || a.kind == K::kBool) && (b.is_number() || b.kind == K::kBool)) {
        cmp = a.number() < b.number() ? -1 : a.number() > b.number() ? 1 : 0;
      } else {
        return error_at(line, "cannot compare " + a.repr() + " and " + b.repr());
      }
      bool res = op == "<" ? cmp < 0 : op == ">" ? cmp > 0 : op == "<=" ? cmp <= 0 : cmp >= 0;
      return Value::boolean(res);
    }
    if (op == "+") {
      if (a.kind == K::kString && b.kind == K::kString) return Value::str(a.s + b.s);
      if (a.kind == K::kList && b.kind == K::kList) {
        List out = *a.list;
        out.insert(out.end(), b.list->begin(), b.list->end());
        return Value::of_list(std::move(out));
      }
    }
    if (op == "*" && a.kind == K::kString && b.kind == K::kInt) {
      if (b.i > 0 && a.s.size() * static_cast<uint64_t>(b.i) > kMaxOutput) return error_at(line, "string repetition too large");
      std::string out;
      for (int64_t k = 0; k < b.i; ++k) out += a.s;
      return Value::str(std::move(out));
    }
    if (!(a.is_number() || a.kind == K::kBool) || !(b.is_number() || b.kind == K::kBool))
      return error_at(line, "unsupported operands for " + op + ": " + a.repr() + ", " + b.repr());
    const bool ints = a.kind != K::kFloat && b.kind != K::kFloat;
    const double x = a.number(), y = b.number();
    if (ints) {
      const int64_t p = a.kind == K::kBool ? a.b : a.i, q = b.kind == K::kBool ? b.b : b.i;
      int64_t out = 0;
      bool overflow = false;
      if (op == "+") overflow = __builtin_add_overflow(p, q, &out);
      if (op == "-") overflow = __builtin_sub_overflow(p, q, &out);
      if (op == "*") overflow = __builtin_mul_overflow(p, q, &out);
      if (op == "+" || op == "-" || op == "*") {
        if (overflow) return error_at(line, "integer overflow in " + op);
        return Value::integer(out);
      }
      if (q == 0 && (op == "/" || op == "//" || op == "%")) return error_at(line, "division by zero");
      if (op == "//" || op == "%") {
        if (p == INT64_MIN && q == -1) return error_at(line, "integer overflow in " + op);
        int64_t d = p / q, m = p % q;
        if (m != 0 && ((m < 0) != (q < 0))) {  // Python floors
          --d;
          m += q;
        }
        return Value::integer(op == "//" ? d : m);
      }
    }
    if (y == 0 && (op == "/" || op == "//" || op == "%")) return error_at(line, "division by zero");
    if (op == "+") return Value::real(x + y);
    if (op == "-") return Value::real(x - y);
    if (op == "*") return Value::real(x * y);
    if (op == "/") return Value::real(x / y);
    if (op == "//") return Value::real(std::floor(x / y));
    if (op == "%") return Value::real(x - std::floor(x / y) * y);
    return error_at(line, "unknown operator " + op);
  }
};

// ---- nodes ----------------------------------------------------------------------------------


struct Sequence : Node {
  std::vector<NodePtr> children;
  Status render(Context& ctx, std::string& out) const override {
    for (const auto& c : children) {
      BATON_RETURN_IF_ERROR(c->render(ctx, out));
      if (ctx.signal != LoopSignal::kNone) return {};
      if (out.size() > kMaxOutput) return error_at(c->line, "rendered prompt is larger than 16 MiB");
    }
    return {};
  }
};
struct TextNode : Node {
  std::string text;
  Status render(Context&, std::string& out) const override {
    out += text;
    return {};
  }
};
struct OutputNode : Node {
  ExprPtr e;
  Status render(Context& ctx, std::string& out) const override {
    BATON_ASSIGN_OR_RETURN(Value v, e->eval(ctx));
    out += v.to_string();
    return {};
  }
};
struct IfNode : Node {
  std::vector<std::pair<ExprPtr, std::unique_ptr<Sequence>>> branches;  // null cond = else
  Status render(Context& ctx, std::string& out) const override {
    for (const auto& [cond, body] : branches) {
      bool take = true;
      if (cond) {
        BATON_ASSIGN_OR_RETURN(Value c, cond->eval(ctx));
        take = c.truthy();
      }
      if (take) return body->render(ctx, out);
    }
    return {};
  }
};
struct ForNode : Node {
  std::vector<std::string> vars;
  ExprPtr iter, filter;
  std::unique_ptr<Sequence> body, else_body;
  Status render(Context& ctx, std::string& out) const override {
    BATON_ASSIGN_OR_RETURN(Value it, iter->eval(ctx));
    List items;
    if (it.kind == Value::Kind::kList) {
      items = *it.list;
    } else if (it.kind == Value::Kind::kDict) {
      for (const auto& [k, v] : *it.dict) items.push_back(Value::str(k));
    } else if (it.kind == Value::Kind::kString) {
      for (char32_t ch : to_u32(it.s)) items.push_back(Value::str(from_u32(std::u32string(1, ch))));
    } else if (!it.is_undefined() && !it.is_none()) {
      return error_at(line, "cannot loop over " + it.repr());
    }
    if (++ctx.depth > kMaxDepth) return error_at(line, "loops nested too deeply");
    ctx.scopes.emplace_back();
    auto bind = [&](const Value& item) -> Status {
      if (vars.size() == 1) {
        ctx.set(vars[0], item);
        return {};
      }
      if (item.kind != Value::Kind::kList || item.list->size() != vars.size())
        return error_at(line, "cannot unpack " + item.repr() + " into " + std::to_string(vars.size()) + " names");
      for (size_t k = 0; k < vars.size(); ++k) ctx.set(vars[k], (*item.list)[k]);
      return {};
    };
    if (filter) {  // {% for x in xs if cond %}
      List kept;
      for (const Value& item : items) {
        BATON_RETURN_IF_ERROR(bind(item));
        BATON_ASSIGN_OR_RETURN(Value c, filter->eval(ctx));
        if (c.truthy()) kept.push_back(item);
      }
      items = std::move(kept);
    }
    const int64_t n = static_cast<int64_t>(items.size());
    Status st;
    for (int64_t k = 0; k < n && st.ok(); ++k) {
      st = bind(items[k]);
      if (!st.ok()) break;
      Dict loop = {{"index", Value::integer(k + 1)},      {"index0", Value::integer(k)},
                   {"revindex", Value::integer(n - k)},   {"revindex0", Value::integer(n - k - 1)},
                   {"first", Value::boolean(k == 0)},     {"last", Value::boolean(k == n - 1)},
                   {"length", Value::integer(n)},
                   {"previtem", k > 0 ? items[k - 1] : Value()},
                   {"nextitem", k + 1 < n ? items[k + 1] : Value()}};
      ctx.set("loop", Value::of_dict(std::move(loop)));
      st = body->render(ctx, out);
      if (ctx.signal == LoopSignal::kBreak) {
        ctx.signal = LoopSignal::kNone;
        break;
      }
      ctx.signal = LoopSignal::kNone;
    }
    ctx.scopes.pop_back();
    --ctx.depth;
    BATON_RETURN_IF_ERROR(st);
    if (n == 0 && else_body) return else_body->render(ctx, out);
    return {};
  }
};
struct SetNode : Node {
  std::vector<std::string> targets;  // one name, or several for tuple unpacking
  std::string attr;                  // ns.attr = ...
  ExprPtr e;
  std::unique_ptr<Sequence> block;  // {% set x %}...{% endset %}
  Status render(Context& ctx, std::string& out) const override {
    Value v;
    if (block) {
      std::string captured;
      BATON_RETURN_IF_ERROR(block->render(ctx, captured));
      v = Value::str(std::move(captured));
    } else {
      BATON_ASSIGN_OR_RETURN(v, e->eval(ctx));
    }
    (void)out;
    if (!attr.empty()) {
      Value ns = ctx.lookup(targets[0]);
      if (ns.kind != Value::Kind::kDict) return error_at(line, "'" + targets[0] + "' is not a namespace");
      for (auto& [k, val] : *ns.dict)
        if (k == attr) {
          val = v;
          return {};
        }
      ns.dict->emplace_back(attr, v);
      return {};
    }
    if (targets.size() == 1) {
      ctx.set(targets[0], v);
      return {};
    }
    if (v.kind != Value::Kind::kList || v.list->size() != targets.size()) return error_at(line, "cannot unpack");
    for (size_t k = 0; k < targets.size(); ++k) ctx.set(targets[k], (*v.list)[k]);
    return {};
  }
};
struct SignalNode : Node {
  LoopSignal signal;
  Status render(Context& ctx, std::string&) const override {
    ctx.signal = signal;
    return {};
  }
};

// ---- attributes, methods, filters, tests ----------------------------------------------------

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

// ---- lexer ----------------------------------------------------------------------------------

struct Token {
  enum class Type { kName, kString, kInt, kFloat, kOp, kEnd };
  Type type;
  std::string text;
  int line;
};

Result<std::vector<Token>> lex_expression(std::string_view src, int line) {
  std::vector<Token> out;
  size_t i = 0;
  static const char* ops[] = {"==", "!=", "<=", ">=", "//", "**", "<", ">", "+", "-", "*", "/", "%", "~",
                              "|",  ".",  ",",  ":",  "(",  ")", "[", "]", "{", "}", "="};
  while (i < src.size()) {
    char c = src[i];
    if (c == '\n') ++line;
    if (std::isspace(static_cast<unsigned char>(c))) {
      ++i;
      continue;
    }
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t b = i;
      while (i < src.size() && (std::isalnum(static_cast<unsigned char>(src[i])) || src[i] == '_')) ++i;
      out.push_back({Token::Type::kName, std::string(src.substr(b, i - b)), line});
      continue;
    }
    if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t b = i;
      bool is_float = false;
      while (i < src.size() && (std::isdigit(static_cast<unsigned char>(src[i])) || src[i] == '_' ||
                                (src[i] == '.' && i + 1 < src.size() && std::isdigit(static_cast<unsigned char>(src[i + 1]))))) {
        if (src[i] == '.') is_float = true;
        ++i;
      }
      std::string num;
      for (char ch : src.substr(b, i - b))
        if (ch != '_') num += ch;
      out.push_back({is_float ? Token::Type::kFloat : Token::Type::kInt, num, line});
      continue;
    }
    if (c == '\'' || c == '"') {
      char q = c;
      std::string s;
      ++i;
      while (i < src.size() && src[i] != q) {
        if (src[i] == '\\' && i + 1 < src.size()) {
          char e = src[++i];
          switch (e) {
            case 'n': s += '\n'; break;
            case 't': s += '\t'; break;
            case 'r': s += '\r'; break;
            case '\\': s += '\\'; break;
            case '\'': s += '\''; break;
            case '"': s += '"'; break;
            default: s += '\\'; s += e;
          }
          ++i;
          continue;
        }
        if (src[i] == '\n') ++line;
        s += src[i++];
      }
      if (i >= src.size()) return error_at(line, "unterminated string");
      ++i;
      out.push_back({Token::Type::kString, s, line});
      continue;
    }
    bool matched = false;
    for (const char* op : ops) {
      size_t n = std::strlen(op);
      if (src.compare(i, n, op) == 0) {
        out.push_back({Token::Type::kOp, op, line});
        i += n;
        matched = true;
        break;
      }
    }
    if (!matched) return error_at(line, std::string("unexpected character '") + c + "'");
  }
  out.push_back({Token::Type::kEnd, "", line});
  return out;
}

// A template split into text, {{ expression }} and {% statement %} pieces, whitespace control
// and trim_blocks / lstrip_blocks already applied.
struct Piece {
  enum class Type { kText, kExpr, kStmt };
  Type type;
  std::string text;
  int line;
};

Result<std::vector<Piece>> split_template(std::string_view src) {
  std::vector<Piece> pieces;
  size_t i = 0;
  int line = 1;
  bool strip_next_ws = false, trim_next_newline = false;
  while (i <= src.size()) {
    size_t open = src.find('{', i);
    while (open != std::string_view::npos && open + 1 < src.size() && src[open + 1] != '{' && src[open + 1] != '%' &&
           src[open + 1] != '#')
      open = src.find('{', open + 1);
    if (open != std::string_view::npos && open + 1 >= src.size()) open = std::string_view::npos;
    std::string text(src.substr(i, (open == std::string_view::npos ? src.size() : open) - i));
    if (trim_next_newline && !text.empty() && text[0] == '\n') text.erase(0, 1);
    if (strip_next_ws) text = strip_chars(text, "", true, false);
    trim_next_newline = strip_next_ws = false;
    if (open == std::string_view::npos) {
      if (!text.empty()) pieces.push_back({Piece::Type::kText, text, line});
      break;
    }
    const char kind = src[open + 1];
    const bool strip_before = open + 2 < src.size() && src[open + 2] == '-';
    const bool keep_lstrip = open + 2 < src.size() && src[open + 2] == '+';
    if (strip_before) {
      text = strip_chars(text, "", false, true);
    } else if ((kind == '%' || kind == '#') && !keep_lstrip) {
      // lstrip_blocks: spaces and tabs between the line start and a block tag go.
      size_t nl = text.find_last_of('\n');
      size_t from = nl == std::string::npos ? 0 : nl + 1;
      bool at_line_start = nl != std::string::npos || pieces.empty() || i == 0;
      if (at_line_start && text.find_first_not_of(" \t", from) == std::string::npos) text.erase(from);
    }
    if (!text.empty()) pieces.push_back({Piece::Type::kText, text, line});
    for (char ch : src.substr(i, open - i))
      if (ch == '\n') ++line;
    const char* close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    size_t body_begin = open + 2 + ((strip_before || keep_lstrip) ? 1 : 0);
    size_t end = src.find(close, body_begin);
    if (end == std::string_view::npos) return error_at(line, std::string("missing '") + close + "'");
    size_t body_end = end;
    if (body_end > body_begin && src[body_end - 1] == '-') {
      --body_end;
      strip_next_ws = true;
    }
    std::string body(src.substr(body_begin, body_end - body_begin));
    if (kind == '{') pieces.push_back({Piece::Type::kExpr, body, line});
    if (kind == '%') pieces.push_back({Piece::Type::kStmt, body, line});
    if (kind != '{') trim_next_newline = true;  // trim_blocks
    for (char ch : body)
      if (ch == '\n') ++line;
    i = end + 2;
  }
  return pieces;
}

// ---- parser ---------------------------------------------------------------------------------

class ExprParser {
 public:
  explicit ExprParser(std::vector<Token> toks) : t_(std::move(toks)) {}

  Result<ExprPtr> parse_expression() { return parse_conditional(); }
  // An expression without a trailing `x if c else y` (for-loop iterables, where `if` filters).
  Result<ExprPtr> parse_expression_no_if() { return parse_or(); }
  bool at_end() const { return peek().type == Token::Type::kEnd; }
  const Token& peek(size_t k = 0) const { return t_[std::min(p_ + k, t_.size() - 1)]; }
  bool is_op(const char* op, size_t k = 0) const { return peek(k).type == Token::Type::kOp && peek(k).text == op; }
  bool is_name(const char* n, size_t k = 0) const { return peek(k).type == Token::Type::kName && peek(k).text == n; }
  Token next() { return t_[std::min(p_++, t_.size() - 1)]; }
  Status expect_op(const char* op) {
    if (!is_op(op)) return error_at(peek().line, std::string("expected '") + op + "' but found '" + peek().text + "'");
    ++p_;
    return {};
  }
  Result<std::string> expect_name() {
    if (peek().type != Token::Type::kName) return error_at(peek().line, "expected a name but found '" + peek().text + "'");
    return next().text;
  }

 private:
  template <class T>
  std::unique_ptr<T> node(int line) {
    auto n = std::make_unique<T>();
    n->line = line;
    return n;
  }
  ExprPtr binary(std::string op, ExprPtr l, ExprPtr r, int line) {
    auto b = node<Binary>(line);
    b->op = std::move(op);
    b->l = std::move(l);
    b->r = std::move(r);
    return b;
  }

  Result<ExprPtr> parse_conditional() {
    BATON_ASSIGN_OR_RETURN(ExprPtr e, parse_or());
    if (is_name("if")) {
      int line = next().line;
      auto c = node<Conditional>(line);
      c->then = std::move(e);
      BATON_ASSIGN_OR_RETURN(c->cond, parse_or());
      if (is_name("else")) {
        next();
        BATON_ASSIGN_OR_RETURN(c->otherwise, parse_conditional());
      }
      return ExprPtr(std::move(c));
    }
    return e;
  }
  Result<ExprPtr> parse_or() {
    BATON_ASSIGN_OR_RETURN(ExprPtr l, parse_and());
    while (is_name("or")) {
      int line = next().line;
      BATON_ASSIGN_OR_RETURN(ExprPtr r, parse_and());
      l = binary("or", std::move(l), std::move(r), line);
    }
    return l;
  }
  Result<ExprPtr> parse_and() {
    BATON_ASSIGN_OR_RETURN(ExprPtr l, parse_not());
    while (is_name("and")) {
      int line = next().line;
      BATON_ASSIGN_OR_RETURN(ExprPtr r, parse_not());
      l = binary("and", std::move(l), std::move(r), line);
    }
    return l;
  }
  Result<ExprPtr> parse_not() {
    if (is_name("not")) {
      int line = next().line;
      auto u = node<Unary>(line);
      u->op = "not";
      BATON_ASSIGN_OR_RETURN(u->e, parse_not());
      return ExprPtr(std::move(u));
    }
    return parse_compare();
  }
  Result<ExprPtr> parse_compare() {
    BATON_ASSIGN_OR_RETURN(ExprPtr l, parse_additive());
    for (;;) {
      std::string op;
      if (is_op("==") || is_op("!=") || is_op("<") || is_op(">") || is_op("<=") || is_op(">=")) {
        op = next().text;
      } else if (is_name("in")) {
        next();
        op = "in";
      } else if (is_name("not") && is_name("in", 1)) {
        next();
        next();
        op = "not in";
      } else {
        return l;
      }
      int line = peek().line;
      BATON_ASSIGN_OR_RETURN(ExprPtr r, parse_additive());
      l = binary(op, std::move(l), std::move(r), line);
    }
  }
  Result<ExprPtr> parse_additive() {
    BATON_ASSIGN_OR_RETURN(ExprPtr l, parse_concat());
    while (is_op("+") || is_op("-")) {
      Token op = next();
      BATON_ASSIGN_OR_RETURN(ExprPtr r, parse_concat());
      l = binary(op.text, std::move(l), std::move(r), op.line);
    }
    return l;
  }
  Result<ExprPtr> parse_concat() {
    BATON_ASSIGN_OR_RETURN(ExprPtr l, parse_mul());
    while (is_op("~")) {
      Token op = next();
      BATON_ASSIGN_OR_RETURN(ExprPtr r, parse_mul());
      l = binary("~", std::move(l), std::move(r), op.line);
    }
    return l;
  }
  Result<ExprPtr> parse_mul() {
    BATON_ASSIGN_OR_RETURN(ExprPtr l, parse_unary());
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      Token op = next();
      BATON_ASSIGN_OR_RETURN(ExprPtr r, parse_unary());
      l = binary(op.text, std::move(l), std::move(r), op.line);
    }
    return l;
  }
  Result<ExprPtr> parse_unary() {
    // Each nesting level of the grammar passes here: bound it so no input overflows the stack.
    struct DepthGuard {
      int& d;
      ~DepthGuard() { --d; }
    } guard{++depth_};
    if (depth_ > 100) return error_at(peek().line, "expression nested too deeply");
    if (is_op("-") || is_op("+")) {
      Token op = next();
      auto u = node<Unary>(op.line);
      u->op = op.text;
      BATON_ASSIGN_OR_RETURN(u->e, parse_unary());
      return ExprPtr(std::move(u));
    }
    return parse_postfix();
  }
  Status parse_args(std::vector<ExprPtr>& args, std::vector<std::pair<std::string, ExprPtr>>& kwargs) {
    BATON_RETURN_IF_ERROR(expect_op("("));
    while (!is_op(")")) {
      if (peek().type == Token::Type::kName && is_op("=", 1)) {
        std::string key = next().text;
        next();
        BATON_ASSIGN_OR_RETURN(ExprPtr v, parse_expression());
        kwargs.emplace_back(key, std::move(v));
      } else {
        BATON_ASSIGN_OR_RETURN(ExprPtr v, parse_expression());
        args.push_back(std::move(v));
      }
      if (!is_op(",")) break;
      next();
    }
    return expect_op(")");
  }
  Result<ExprPtr> parse_postfix() {
    BATON_ASSIGN_OR_RETURN(ExprPtr e, parse_primary());
    for (;;) {
      int line = peek().line;
      if (is_op(".")) {
        next();
        auto a = node<Attr>(line);
        a->obj = std::move(e);
        BATON_ASSIGN_OR_RETURN(a->name, expect_name());
        e = std::move(a);
      } else if (is_op("[")) {
        next();
        ExprPtr start, stop, step;
        bool is_slice = false;
        if (!is_op(":")) {
          BATON_ASSIGN_OR_RETURN(start, parse_expression());
        }
        if (is_op(":")) {
          is_slice = true;
          next();
          if (!is_op("]") && !is_op(":")) {
            BATON_ASSIGN_OR_RETURN(stop, parse_expression());
          }
          if (is_op(":")) {
            next();
            if (!is_op("]")) {
              BATON_ASSIGN_OR_RETURN(step, parse_expression());
            }
          }
        }
        BATON_RETURN_IF_ERROR(expect_op("]"));
        if (is_slice) {
          auto s = node<Slice>(line);
          s->obj = std::move(e);
          s->start = std::move(start);
          s->stop = std::move(stop);
          s->step = std::move(step);
          e = std::move(s);
        } else {
          auto ix = node<Index>(line);
          ix->obj = std::move(e);
          ix->key = std::move(start);
          e = std::move(ix);
        }
      } else if (is_op("(")) {
        auto c = node<Call>(line);
        c->fn = std::move(e);
        BATON_RETURN_IF_ERROR(parse_args(c->args, c->kwargs));
        e = std::move(c);
      } else if (is_op("|")) {
        next();
        auto f = node<FilterExpr>(line);
        f->obj = std::move(e);
        BATON_ASSIGN_OR_RETURN(f->name, expect_name());
        if (is_op("(")) {
          BATON_RETURN_IF_ERROR(parse_args(f->args, f->kwargs));
        }
        e = std::move(f);
      } else if (is_name("is")) {
        next();
        auto t = node<TestExpr>(line);
        t->obj = std::move(e);
        if (is_name("not")) {
          next();
          t->negate = true;
        }
        BATON_ASSIGN_OR_RETURN(t->name, expect_name());
        if (is_op("(")) {
          std::vector<std::pair<std::string, ExprPtr>> ignored;
          BATON_RETURN_IF_ERROR(parse_args(t->args, ignored));
        } else if (peek().type == Token::Type::kString || peek().type == Token::Type::kInt ||
                   (peek().type == Token::Type::kName && !is_name("and") && !is_name("or") && !is_name("else") &&
                    !is_name("if") && !is_name("in") && !is_name("not"))) {
          BATON_ASSIGN_OR_RETURN(ExprPtr arg, parse_primary());  // `x is sameas y`, `x is divisibleby 3`
          t->args.push_back(std::move(arg));
        }
        e = std::move(t);
      } else {
        return e;
      }
    }
  }
  Result<ExprPtr> parse_primary() {
    Token tok = next();
    auto lit = [&](Value v) {
      auto l = node<Literal>(tok.line);
      l->v = std::move(v);
      return ExprPtr(std::move(l));
    };
    switch (tok.type) {
      case Token::Type::kString: {
        std::string s = tok.text;
        while (peek().type == Token::Type::kString) s += next().text;  // adjacent literals join
        return lit(Value::str(s));
      }
      case Token::Type::kInt: {
        int64_t v = 0;
        auto [ptr, ec] = std::from_chars(tok.text.data(), tok.text.data() + tok.text.size(), v);
        if (ec != std::errc()) return error_at(tok.line, "integer literal " + tok.text.substr(0, 30) + " is too large");
        return lit(Value::integer(v));
      }
      case Token::Type::kFloat: return lit(Value::real(std::strtod(tok.text.c_str(), nullptr)));
      case Token::Type::kName: {
        if (tok.text == "true" || tok.text == "True") return lit(Value::boolean(true));
        if (tok.text == "false" || tok.text == "False") return lit(Value::boolean(false));
        if (tok.text == "none" || tok.text == "None") return lit(Value::none());
        auto n = node<Name>(tok.line);
        n->name = tok.text;
        return ExprPtr(std::move(n));
      }
      case Token::Type::kOp:
        if (tok.text == "(") {
          BATON_ASSIGN_OR_RETURN(ExprPtr e, parse_expression());
          if (is_op(",")) {  // a tuple: treated as a list
            auto l = node<ListExpr>(tok.line);
            l->items.push_back(std::move(e));
            while (is_op(",")) {
              next();
              if (is_op(")")) break;
              BATON_ASSIGN_OR_RETURN(ExprPtr x, parse_expression());
              l->items.push_back(std::move(x));
            }
            e = std::move(l);
          }
          BATON_RETURN_IF_ERROR(expect_op(")"));
          return e;
        }
        if (tok.text == "[") {
          auto l = node<ListExpr>(tok.line);
          while (!is_op("]")) {
            BATON_ASSIGN_OR_RETURN(ExprPtr x, parse_expression());
            l->items.push_back(std::move(x));
            if (!is_op(",")) break;
            next();
          }
          BATON_RETURN_IF_ERROR(expect_op("]"));
          return ExprPtr(std::move(l));
        }
        if (tok.text == "{") {
          auto d = node<DictExpr>(tok.line);
          while (!is_op("}")) {
            BATON_ASSIGN_OR_RETURN(ExprPtr k, parse_expression());
            BATON_RETURN_IF_ERROR(expect_op(":"));
            BATON_ASSIGN_OR_RETURN(ExprPtr v, parse_expression());
            d->items.emplace_back(std::move(k), std::move(v));
            if (!is_op(",")) break;
            next();
          }
          BATON_RETURN_IF_ERROR(expect_op("}"));
          return ExprPtr(std::move(d));
        }
        break;
      case Token::Type::kEnd: return error_at(tok.line, "unexpected end of expression");
    }
    return error_at(tok.line, "unexpected '" + tok.text + "'");
  }

  std::vector<Token> t_;
  size_t p_ = 0;
  int depth_ = 0;
};

class TemplateParser {
 public:
  explicit TemplateParser(std::vector<Piece> pieces) : pieces_(std::move(pieces)) {}

  Result<std::unique_ptr<Sequence>> parse_all() {
    std::string end_tag;
    BATON_ASSIGN_OR_RETURN(auto seq, parse_until({}, end_tag));
    return seq;
  }

 private:
  // Parses nodes until a statement whose first word is in `ends`; returns it in end_stmt.
  Result<std::unique_ptr<Sequence>> parse_until(const std::vector<std::string>& ends, std::string& end_stmt) {
    auto seq = std::make_unique<Sequence>();
    while (pos_ < pieces_.size()) {
      const Piece& p = pieces_[pos_++];
      if (p.type == Piece::Type::kText) {
        auto t = std::make_unique<TextNode>();
        t->line = p.line;
        t->text = p.text;
        seq->children.push_back(std::move(t));
        continue;
      }
      BATON_ASSIGN_OR_RETURN(auto toks, lex_expression(p.text, p.line));
      ExprParser ep(std::move(toks));
      if (p.type == Piece::Type::kExpr) {
        auto o = std::make_unique<OutputNode>();
        o->line = p.line;
        BATON_ASSIGN_OR_RETURN(o->e, ep.parse_expression());
        if (!ep.at_end()) return error_at(p.line, "unexpected '" + ep.peek().text + "' in {{ }}");
        seq->children.push_back(std::move(o));
        continue;
      }
      BATON_ASSIGN_OR_RETURN(std::string word, ep.expect_name());
      if (std::find(ends.begin(), ends.end(), word) != ends.end()) {
        end_stmt = word;
        current_ = std::make_unique<ExprParser>(std::move(ep));
        return seq;
      }
      BATON_ASSIGN_OR_RETURN(NodePtr n, parse_statement(word, ep, p.line));
      if (n) seq->children.push_back(std::move(n));
    }
    if (!ends.empty()) return error_at(pieces_.empty() ? 0 : pieces_.back().line, "missing {% " + ends.back() + " %}");
    return seq;
  }

  Result<NodePtr> parse_statement(const std::string& word, ExprParser& ep, int line) {
    struct DepthGuard {
      int& d;
      ~DepthGuard() { --d; }
    } guard{++depth_};
    if (depth_ > 100) return error_at(line, "blocks nested too deeply");
    if (word == "if") {
      auto n = std::make_unique<IfNode>();
      n->line = line;
      BATON_ASSIGN_OR_RETURN(ExprPtr cond, ep.parse_expression());
      for (;;) {
        std::string end;
        BATON_ASSIGN_OR_RETURN(auto body, parse_until({"elif", "else", "endif"}, end));
        n->branches.emplace_back(std::move(cond), std::move(body));
        if (end == "endif") break;
        if (end == "elif") {
          BATON_ASSIGN_OR_RETURN(cond, current_->parse_expression());
        } else {
          std::string end2;
          BATON_ASSIGN_OR_RETURN(auto else_body, parse_until({"endif"}, end2));
          n->branches.emplace_back(nullptr, std::move(else_body));
          break;
        }
      }
      return NodePtr(std::move(n));
    }
    if (word == "for") {
      auto n = std::make_unique<ForNode>();
      n->line = line;
      BATON_ASSIGN_OR_RETURN(std::string v, ep.expect_name());
      n->vars.push_back(v);
      while (ep.is_op(",")) {
        ep.next();
        BATON_ASSIGN_OR_RETURN(std::string v2, ep.expect_name());
        n->vars.push_back(v2);
      }
      if (!ep.is_name("in")) return error_at(line, "expected 'in' in for");
      ep.next();
      BATON_ASSIGN_OR_RETURN(n->iter, parse_iterable(ep));
      if (ep.is_name("if")) {
        ep.next();
        BATON_ASSIGN_OR_RETURN(n->filter, ep.parse_expression());
      }
      if (ep.is_name("recursive")) return error_at(line, "recursive loops are not supported");
      std::string end;
      BATON_ASSIGN_OR_RETURN(n->body, parse_until({"else", "endfor"}, end));
      if (end == "else") {
        std::string end2;
        BATON_ASSIGN_OR_RETURN(n->else_body, parse_until({"endfor"}, end2));
      }
      return NodePtr(std::move(n));
    }
    if (word == "set") {
      auto n = std::make_unique<SetNode>();
      n->line = line;
      BATON_ASSIGN_OR_RETURN(std::string target, ep.expect_name());
      n->targets.push_back(target);
      if (ep.is_op(".")) {
        ep.next();
        BATON_ASSIGN_OR_RETURN(n->attr, ep.expect_name());
      }
      while (ep.is_op(",")) {
        ep.next();
        BATON_ASSIGN_OR_RETURN(std::string t2, ep.expect_name());
        n->targets.push_back(t2);
      }
      if (ep.at_end()) {  // block set
        std::string end;
        BATON_ASSIGN_OR_RETURN(n->block, parse_until({"endset"}, end));
        return NodePtr(std::move(n));
      }
      BATON_RETURN_IF_ERROR(ep.expect_op("="));
      BATON_ASSIGN_OR_RETURN(n->e, ep.parse_expression());
      return NodePtr(std::move(n));
    }
    if (word == "break" || word == "continue") {
      auto n = std::make_unique<SignalNode>();
      n->line = line;
      n->signal = word == "break" ? LoopSignal::kBreak : LoopSignal::kContinue;
      return NodePtr(std::move(n));
    }
    if (word == "generation" || word == "endgeneration") return NodePtr();  // training-only markers
    return error_at(line, "unsupported statement '" + word + "'");
  }

  // The iterable of a for loop stops before a trailing `if` (a loop filter), which the
  // conditional-expression grammar would otherwise swallow.
  Result<ExprPtr> parse_iterable(ExprParser& ep) { return ep.parse_expression_no_if(); }

  std::vector<Piece> pieces_;
  size_t pos_ = 0;
  std::unique_ptr<ExprParser> current_;
  int depth_ = 0;
};

}  // namespace jinja

namespace {

using jinja::Args;
using jinja::Kwargs;
using jinja::Value;

Value make_globals_namespace() {
  return Value::function([](Args& a, Kwargs& kw) -> Result<Value> {
    jinja::Dict d;
    if (!a.empty() && a[0].kind == Value::Kind::kDict) d = *a[0].dict;
    for (auto& [k, v] : kw) d.emplace_back(k, v);
    return Value::of_dict(std::move(d));
  });
}

std::string token_text(const Json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) return (*it)["content"].get<std::string>();
  return "";
}

}  // namespace

Result<ChatTemplate> ChatTemplate::parse(std::string_view source) {
  BATON_ASSIGN_OR_RETURN(auto pieces, jinja::split_template(source));
  jinja::TemplateParser parser(std::move(pieces));
  BATON_ASSIGN_OR_RETURN(auto seq, parser.parse_all());
  ChatTemplate t;
  t.root_ = std::shared_ptr<const jinja::Node>(std::move(seq));
  return t;
}

Result<ChatTemplate> ChatTemplate::load(const std::string& model_dir) {
  namespace fs = std::filesystem;
  std::string source;
  Json config = Json::object();
  const std::string config_path = (fs::path(model_dir) / "tokenizer_config.json").string();
  if (fs::exists(config_path)) {
    BATON_ASSIGN_OR_RETURN(std::string text, read_file(config_path));
    BATON_ASSIGN_OR_RETURN(config, parse_json(text, config_path));
    auto it = config.find("chat_template");
    if (it != config.end() && it->is_string()) {
      source = it->get<std::string>();
    } else if (it != config.end() && it->is_array()) {
      for (const auto& entry : *it)  // [{"name": ..., "template": ...}]; anything else is skipped
        if (entry.is_object() && entry.contains("name") && entry["name"] == "default" && entry.contains("template") &&
            entry["template"].is_string())
          source = entry["template"].get<std::string>();
    }
  }
  const std::string jinja_path = (fs::path(model_dir) / "chat_template.jinja").string();
  if (source.empty() && fs::exists(jinja_path)) {
    BATON_ASSIGN_OR_RETURN(source, read_file(jinja_path));
  }
  if (source.empty()) return make_error(model_dir, ": the model has no chat template (tokenizer_config.json or chat_template.jinja)");
  auto t = parse(source);
  if (!t.ok()) return make_error(model_dir, ": ", t.error());
  t->bos_token_ = token_text(config, "bos_token");
  t->eos_token_ = token_text(config, "eos_token");
  return t;
}

Result<std::string> ChatTemplate::render(const Json& messages, bool add_generation_prompt, const Json& extra) const {
  jinja::Arena arena;  // declared before ctx: destroyed after it, breaking any cycles
  jinja::g_arena = &arena;
  struct ResetArena {
    ~ResetArena() { jinja::g_arena = nullptr; }
  } reset_arena;
  jinja::Context ctx;
  ctx.scopes.emplace_back();
  ctx.set("messages", Value::from_json(messages));
  ctx.set("add_generation_prompt", Value::boolean(add_generation_prompt));
  ctx.set("bos_token", Value::str(bos_token_));
  ctx.set("eos_token", Value::str(eos_token_));
  ctx.set("namespace", make_globals_namespace());
  ctx.set("raise_exception", Value::function([](Args& a, Kwargs&) -> Result<Value> {
            return make_error("the template refused the conversation: ", a.empty() ? "" : a[0].to_string());
          }));
  ctx.set("range", Value::function([](Args& a, Kwargs&) -> Result<Value> {
            int64_t lo = 0, hi = 0, step = 1;
            if (a.size() == 1) hi = a[0].i;
            if (a.size() >= 2) lo = a[0].i, hi = a[1].i;
            if (a.size() >= 3) step = a[2].i;
            if (step == 0 || (hi - lo) / step > 100000) return make_error("range() too large");
            jinja::List l;
            for (int64_t k = lo; step > 0 ? k < hi : k > hi; k += step) l.push_back(Value::integer(k));
            return Value::of_list(std::move(l));
          }));
  ctx.set("strftime_now", Value::function([](Args& a, Kwargs&) -> Result<Value> {
            std::time_t now = std::time(nullptr);
            std::tm tm{};
            localtime_r(&now, &tm);
            char buf[128];
            std::string fmt = a.empty() ? "%Y-%m-%d" : a[0].to_string();
            size_t n = std::strftime(buf, sizeof buf, fmt.c_str(), &tm);
            return Value::str(std::string(buf, n));
          }));
  if (extra.is_object())
    for (auto it = extra.begin(); it != extra.end(); ++it) ctx.set(it.key(), Value::from_json(it.value()));
  ctx.scopes.emplace_back();  // template-level sets go here
  std::string out;
  BATON_RETURN_IF_ERROR(root_->render(ctx, out));
  return out;
}

}  // namespace baton
