// ChatTemplate: loads a model's template, parses it (jinja/lexer.h, jinja/parser.h) and renders
// it with the globals transformers' apply_chat_template provides.
#include "model/chat_template.h"

#include <ctime>
#include <filesystem>

#include "common/mapped_file.h"
#include "model/jinja/ast.h"
#include "model/jinja/lexer.h"
#include "model/jinja/parser.h"
#include "model/jinja/value.h"

namespace baton {

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
