// Evaluation of the syntax tree: what each expression computes and each node renders.
#include "model/jinja/ast.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "model/jinja/builtins.h"

namespace baton::jinja {

Error error_at(int line, const std::string& msg) { return make_error("chat template line ", line, ": ", msg); }

// ---- expressions ----------------------------------------------------------------------------

Result<Value> Literal::eval(Context&) const {
  return v;
}

Result<Value> Name::eval(Context& ctx) const {
  return ctx.lookup(name);
}

Result<Value> ListExpr::eval(Context& ctx) const {
  List l;
  for (const auto& e : items) {
    BATON_ASSIGN_OR_RETURN(Value v, e->eval(ctx));
    l.push_back(std::move(v));
  }
  return Value::of_list(std::move(l));
}

Result<Value> DictExpr::eval(Context& ctx) const {
  Dict d;
  for (const auto& [k, v] : items) {
    BATON_ASSIGN_OR_RETURN(Value key, k->eval(ctx));
    BATON_ASSIGN_OR_RETURN(Value val, v->eval(ctx));
    d.emplace_back(key.to_string(), std::move(val));
  }
  return Value::of_dict(std::move(d));
}

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

Result<Value> Attr::eval(Context& ctx) const {
  BATON_ASSIGN_OR_RETURN(Value o, obj->eval(ctx));
  return get_attr(o, name, line);
}

Result<Value> Index::eval(Context& ctx) const {
  BATON_ASSIGN_OR_RETURN(Value o, obj->eval(ctx));
  BATON_ASSIGN_OR_RETURN(Value k, key->eval(ctx));
  return subscript(o, k, line);
}

Result<Value> Slice::eval(Context& ctx) const {
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

Result<Value> Call::eval(Context& ctx) const {
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

Result<Value> FilterExpr::eval(Context& ctx) const {
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

Result<Value> TestExpr::eval(Context& ctx) const {
  BATON_ASSIGN_OR_RETURN(Value v, obj->eval(ctx));
  Args a;
  for (const auto& e : args) {
    BATON_ASSIGN_OR_RETURN(Value x, e->eval(ctx));
    a.push_back(std::move(x));
  }
  BATON_ASSIGN_OR_RETURN(bool r, apply_test(name, v, a, line));
  return Value::boolean(r != negate);
}

Result<Value> Unary::eval(Context& ctx) const {
  BATON_ASSIGN_OR_RETURN(Value v, e->eval(ctx));
  if (op == "not") return Value::boolean(!v.truthy());
  if (v.kind == Value::Kind::kInt) return Value::integer(op == "-" ? -v.i : v.i);
  if (v.kind == Value::Kind::kFloat) return Value::real(op == "-" ? -v.f : v.f);
  return error_at(line, "unary " + op + " on " + v.repr());
}

Result<Value> Conditional::eval(Context& ctx) const {
  BATON_ASSIGN_OR_RETURN(Value c, cond->eval(ctx));
  if (c.truthy()) return then->eval(ctx);
  return otherwise ? otherwise->eval(ctx) : Result<Value>(Value());
}

Result<bool> contains(const Value& container, const Value& item, int line) {
  using K = Value::Kind;
  if (container.kind == K::kString) return container.s.find(item.to_string()) != std::string::npos;
  if (container.kind == K::kList)
    return std::any_of(container.list->begin(), container.list->end(), [&](const Value& e) { return equal(e, item); });
  if (container.kind == K::kDict) return container.find(item.to_string()) != nullptr;
  if (container.is_undefined() || container.is_none()) return false;
  return error_at(line, "'in' needs a string, list or dict");
}

Result<Value> Binary::eval(Context& ctx) const {
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

// ---- nodes ----------------------------------------------------------------------------------

Status Sequence::render(Context& ctx, std::string& out) const {
  for (const auto& c : children) {
    BATON_RETURN_IF_ERROR(c->render(ctx, out));
    if (ctx.signal != LoopSignal::kNone) return {};
    if (out.size() > kMaxOutput) return error_at(c->line, "rendered prompt is larger than 16 MiB");
  }
  return {};
}

Status TextNode::render(Context&, std::string& out) const {
  out += text;
  return {};
}

Status OutputNode::render(Context& ctx, std::string& out) const {
  BATON_ASSIGN_OR_RETURN(Value v, e->eval(ctx));
  out += v.to_string();
  return {};
}

Status IfNode::render(Context& ctx, std::string& out) const {
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

Status ForNode::render(Context& ctx, std::string& out) const {
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

Status SetNode::render(Context& ctx, std::string& out) const {
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

Status SignalNode::render(Context& ctx, std::string&) const {
  ctx.signal = signal;
  return {};
}

}  // namespace baton::jinja
