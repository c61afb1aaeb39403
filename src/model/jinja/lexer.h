// The lexer's two cuts, the parser's input: a template's text into pieces ({{ expression }},
// {% statement %}, the text between) and a piece's text into tokens.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace baton::jinja {

struct Token {
  enum class Type { kName, kString, kInt, kFloat, kOp, kEnd };
  Type type;
  std::string text;
  int line;
};

// `line` is the line the text starts on; each token carries its own.
Result<std::vector<Token>> lex_expression(std::string_view src, int line);

// A template split into text, {{ expression }} and {% statement %} pieces, whitespace control
// and trim_blocks / lstrip_blocks already applied.
struct Piece {
  enum class Type { kText, kExpr, kStmt };
  Type type;
  std::string text;
  int line;
};

Result<std::vector<Piece>> split_template(std::string_view src);

}  // namespace baton::jinja
