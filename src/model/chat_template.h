// Renders a model's chat template (the Jinja text in tokenizer_config.json or
// chat_template.jinja) the way transformers' apply_chat_template does: trim_blocks and
// lstrip_blocks on, loop controls, raise_exception, namespace, tojson, strftime_now.
//
// This is our own renderer for the Jinja subset that real chat templates use (Debian has no C++
// Jinja library): statements if/elif/else, for (with loop.*, else, tuple unpacking), set
// (including namespace attributes), break/continue, macro-free; expressions with literals,
// lists, dicts, attribute/subscript/slice access, calls, filters, tests, and Python-style
// string/dict/list methods. Anything else is a parse error naming the line.
// Immutable after parse(); render() may run on many threads at once.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "common/json.h"
#include "common/result.h"

namespace baton {

namespace jinja {
struct Node;
}

class ChatTemplate {
 public:
  static Result<ChatTemplate> parse(std::string_view source);
  // tokenizer_config.json's "chat_template" (a string, or a list of {name, template} where
  // "default" wins), else chat_template.jinja; also reads bos_token / eos_token.
  static Result<ChatTemplate> load(const std::string& model_dir);

  // messages: [{"role": ..., "content": ...}, ...]. `extra` adds variables (tools, ...).
  Result<std::string> render(const Json& messages, bool add_generation_prompt, const Json& extra = Json::object()) const;

  const std::string& bos_token() const { return bos_token_; }
  const std::string& eos_token() const { return eos_token_; }

 private:
  std::shared_ptr<const jinja::Node> root_;
  std::string bos_token_, eos_token_;
};

}  // namespace baton
