// The parser: ExprParser, recursive descent over one piece's tokens with Python's precedence,
// and TemplateParser's statements (if, for, set, break/continue) around it.
#include "model/jinja/parser.h"

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <utility>

namespace baton::jinja {

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

TemplateParser::TemplateParser(std::vector<Piece> pieces) : pieces_(std::move(pieces)) {}
TemplateParser::~TemplateParser() = default;

Result<std::unique_ptr<Sequence>> TemplateParser::parse_all() {
  std::string end_tag;
  BATON_ASSIGN_OR_RETURN(auto seq, parse_until({}, end_tag));
  return seq;
}

Result<std::unique_ptr<Sequence>> TemplateParser::parse_until(const std::vector<std::string>& ends,
                                                              std::string& end_stmt) {
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

Result<NodePtr> TemplateParser::parse_statement(const std::string& word, ExprParser& ep, int line) {
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

Result<ExprPtr> TemplateParser::parse_iterable(ExprParser& ep) {
  return ep.parse_expression_no_if();
}

}  // namespace baton::jinja
