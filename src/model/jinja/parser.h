// The parser: TemplateParser turns a template's pieces (lexer.h) into a tree of nodes (ast.h);
// the expressions inside {{ }} and {% %} go through ExprParser (parser.cpp).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "common/result.h"
#include "model/jinja/ast.h"
#include "model/jinja/lexer.h"

namespace baton::jinja {

class ExprParser;

class TemplateParser {
 public:
  explicit TemplateParser(std::vector<Piece> pieces);
  ~TemplateParser();

  Result<std::unique_ptr<Sequence>> parse_all();

 private:
  // Parses nodes until a statement whose first word is in `ends`; returns it in end_stmt.
  Result<std::unique_ptr<Sequence>> parse_until(const std::vector<std::string>& ends, std::string& end_stmt);
  Result<NodePtr> parse_statement(const std::string& word, ExprParser& ep, int line);
  // The iterable of a for loop stops before a trailing `if` (a loop filter), which the
  // conditional-expression grammar would otherwise swallow.
  Result<ExprPtr> parse_iterable(ExprParser& ep);

  std::vector<Piece> pieces_;
  size_t pos_ = 0;
  std::unique_ptr<ExprParser> current_;
  int depth_ = 0;
};

}  // namespace baton::jinja
