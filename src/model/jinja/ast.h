// The syntax tree of a parsed chat template: expressions (Expr) evaluate to Values and nodes
// (Node) render text, both against a Context of variable scopes. parser.cpp builds the tree,
// ast.cpp evaluates it. A tree is immutable after parsing; each render has its own Context.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/result.h"
#include "model/jinja/value.h"

namespace baton::jinja {

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

// "chat template line N: msg", the form of every parse and render error.
Error error_at(int line, const std::string& msg);

struct Node {
  int line = 0;
  virtual ~Node() = default;
  virtual Status render(Context& ctx, std::string& out) const = 0;
};
using NodePtr = std::unique_ptr<Node>;

// ---- expressions ----------------------------------------------------------------------------

struct Literal : Expr {
  Value v;
  Result<Value> eval(Context&) const override;
};
struct Name : Expr {
  std::string name;
  Result<Value> eval(Context& ctx) const override;
};
struct ListExpr : Expr {
  std::vector<ExprPtr> items;
  Result<Value> eval(Context& ctx) const override;
};
struct DictExpr : Expr {
  std::vector<std::pair<ExprPtr, ExprPtr>> items;
  Result<Value> eval(Context& ctx) const override;
};
struct Attr : Expr {
  ExprPtr obj;
  std::string name;
  Result<Value> eval(Context& ctx) const override;
};
struct Index : Expr {
  ExprPtr obj, key;
  Result<Value> eval(Context& ctx) const override;
};
struct Slice : Expr {
  ExprPtr obj, start, stop, step;
  Result<Value> eval(Context& ctx) const override;
};
struct Call : Expr {
  ExprPtr fn;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  Result<Value> eval(Context& ctx) const override;
};
struct FilterExpr : Expr {
  ExprPtr obj;
  std::string name;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  Result<Value> eval(Context& ctx) const override;
};
struct TestExpr : Expr {
  ExprPtr obj;
  std::string name;
  bool negate = false;
  std::vector<ExprPtr> args;
  Result<Value> eval(Context& ctx) const override;
};
struct Unary : Expr {
  std::string op;
  ExprPtr e;
  Result<Value> eval(Context& ctx) const override;
};
struct Conditional : Expr {
  ExprPtr then, cond, otherwise;
  Result<Value> eval(Context& ctx) const override;
};
struct Binary : Expr {
  std::string op;
  ExprPtr l, r;
  Result<Value> eval(Context& ctx) const override;
};

// ---- nodes ----------------------------------------------------------------------------------

struct Sequence : Node {
  std::vector<NodePtr> children;
  Status render(Context& ctx, std::string& out) const override;
};
struct TextNode : Node {
  std::string text;
  Status render(Context&, std::string& out) const override;
};
struct OutputNode : Node {
  ExprPtr e;
  Status render(Context& ctx, std::string& out) const override;
};
struct IfNode : Node {
  std::vector<std::pair<ExprPtr, std::unique_ptr<Sequence>>> branches;  // null cond = else
  Status render(Context& ctx, std::string& out) const override;
};
struct ForNode : Node {
  std::vector<std::string> vars;
  ExprPtr iter, filter;
  std::unique_ptr<Sequence> body, else_body;
  Status render(Context& ctx, std::string& out) const override;
};
struct SetNode : Node {
  std::vector<std::string> targets;  // one name, or several for tuple unpacking
  std::string attr;                  // ns.attr = ...
  ExprPtr e;
  std::unique_ptr<Sequence> block;  // {% set x %}...{% endset %}
  Status render(Context& ctx, std::string& out) const override;
};
struct SignalNode : Node {
  LoopSignal signal;
  Status render(Context& ctx, std::string&) const override;
};

// Python's `in`: a substring, a list element or a dict key.
Result<bool> contains(const Value& container, const Value& item, int line);

}  // namespace baton::jinja
