// The lexer: split_template cuts the template into pieces (whitespace control, trim_blocks and
// lstrip_blocks as transformers sets them), lex_expression cuts a piece into tokens.
#include "model/jinja/lexer.h"

#include <cctype>
#include <cstring>

#include "model/jinja/ast.h"
#include "model/jinja/builtins.h"

namespace baton::jinja {

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

namespace {

// Where a tag's closing delimiter starts, as Jinja's lexer finds it: in {{ }} and {% %}, not inside
// a string literal and not inside brackets ({{ {'a': 1}}} ends at the last two braces); comments
// end at the first "#}". npos when it is missing.
size_t find_tag_end(std::string_view src, size_t from, char kind) {
  const char* close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
  if (kind == '#') return src.find(close, from);
  int depth = 0;
  for (size_t i = from; i < src.size(); ++i) {
    const char c = src[i];
    if (depth == 0 && src.compare(i, 2, close) == 0) return i;
    if (c == '\'' || c == '"') {
      for (++i; i < src.size() && src[i] != c; ++i)
        if (src[i] == '\\') ++i;
      if (i >= src.size()) return std::string_view::npos;
    } else if (c == '(' || c == '[' || c == '{') {
      ++depth;
    } else if ((c == ')' || c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return std::string_view::npos;
}

}  // namespace

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
    size_t end = find_tag_end(src, body_begin, kind);
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

}  // namespace baton::jinja
