#include "model/tokenizer.h"

#include <algorithm>
#include <filesystem>

#include "common/mapped_file.h"
#include "common/utf8.h"

namespace baton {
namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool is_word_char(unsigned char c) { return std::isalnum(c) || c == '_' || c >= 0x80; }

// The single-sequence template of a TemplateProcessing post-processor, as ids before and after
// the text. Other post-processors that add nothing to a single sequence are accepted.
Status read_post_processor(const Json& pp, std::vector<int>& prefix, std::vector<int>& suffix, const std::string& what) {
  if (pp.is_null()) return {};
  BATON_ASSIGN_OR_RETURN(std::string type, json_get<std::string>(pp, "type", what + " post_processor"));
  if (type == "Sequence") {
    auto it = pp.find("processors");
    if (it == pp.end() || !it->is_array()) return make_error(what, ": post_processor Sequence needs 'processors'");
    for (const auto& p : *it) BATON_RETURN_IF_ERROR(read_post_processor(p, prefix, suffix, what));
    return {};
  }
  if (type == "ByteLevel") return {};  // only adjusts offsets
  if (type != "TemplateProcessing")
    return make_error(what, ": post_processor type '", type, "' is not supported");
  auto single = pp.find("single");
  if (single == pp.end() || !single->is_array()) return make_error(what, ": TemplateProcessing needs 'single'");
  const Json specials = pp.value("special_tokens", Json::object());
  bool seen_sequence = false;
  for (const auto& item : *single) {
    if (item.contains("Sequence")) {
      seen_sequence = true;
      continue;
    }
    if (!item.contains("SpecialToken")) return make_error(what, ": TemplateProcessing item ", item.dump(), " not understood");
    BATON_ASSIGN_OR_RETURN(std::string name, json_get<std::string>(item["SpecialToken"], "id", what));
    auto sp = specials.find(name);
    if (sp == specials.end()) return make_error(what, ": TemplateProcessing uses '", name, "' but does not define it");
    BATON_ASSIGN_OR_RETURN(std::vector<int> ids, json_get<std::vector<int>>(*sp, "ids", what));
    auto& dst = seen_sequence ? suffix : prefix;
    dst.insert(dst.end(), ids.begin(), ids.end());
  }
  return {};
}

}  // namespace

Result<Tokenizer> Tokenizer::load(const std::string& path) {
  namespace fs = std::filesystem;
  std::string file = fs::is_directory(path) ? (fs::path(path) / "tokenizer.json").string() : path;
  BATON_ASSIGN_OR_RETURN(std::string text, read_file(file));
  BATON_ASSIGN_OR_RETURN(Json j, parse_json(text, file));
  return from_json(j, file);
}

Result<Tokenizer> Tokenizer::from_json(const Json& j, const std::string& what) {
  if (!j.is_object()) return make_error(what, ": expected a JSON object");
  Tokenizer t;
  auto model_it = j.find("model");
  if (model_it == j.end() || !model_it->is_object()) return make_error(what, ": missing 'model'");
  BATON_ASSIGN_OR_RETURN(BpeModel bpe, BpeModel::from_json(*model_it, what));
  t.model_ = std::make_shared<const BpeModel>(std::move(bpe));
  BATON_ASSIGN_OR_RETURN(t.normalizer_, make_normalizer(j.value("normalizer", Json()), what));
  BATON_ASSIGN_OR_RETURN(t.pre_tokenizer_, make_pre_tokenizer(j.value("pre_tokenizer", Json()), what));
  BATON_ASSIGN_OR_RETURN(t.decoder_, make_decoder(j.value("decoder", Json()), what));
  BATON_RETURN_IF_ERROR(read_post_processor(j.value("post_processor", Json()), t.prefix_ids_, t.suffix_ids_, what));

  t.vocab_size_ = t.model_->max_id() + 1;
  if (auto it = j.find("added_tokens"); it != j.end() && it->is_array()) {
    for (const auto& a : *it) {
      AddedToken tok;
      BATON_ASSIGN_OR_RETURN(tok.id, json_get<int>(a, "id", what + " added_tokens"));
      BATON_ASSIGN_OR_RETURN(tok.content, json_get<std::string>(a, "content", what + " added_tokens"));
      BATON_ASSIGN_OR_RETURN(tok.special, json_get_or<bool>(a, "special", false, what));
      BATON_ASSIGN_OR_RETURN(tok.lstrip, json_get_or<bool>(a, "lstrip", false, what));
      BATON_ASSIGN_OR_RETURN(tok.rstrip, json_get_or<bool>(a, "rstrip", false, what));
      BATON_ASSIGN_OR_RETURN(tok.single_word, json_get_or<bool>(a, "single_word", false, what));
      if (tok.id < 0 || tok.content.empty() || !utf8::is_valid(tok.content))
        return make_error(what, ": added token ", a.dump(), " is invalid");
      t.vocab_size_ = std::max(t.vocab_size_, tok.id + 1);
      t.added_ids_[tok.content] = tok.id;
      t.added_index_by_id_[tok.id] = static_cast<int>(t.added_.size());
      t.added_.push_back(std::move(tok));
    }
  }
  t.added_by_first_byte_.resize(256);
  for (size_t i = 0; i < t.added_.size(); ++i)
    t.added_by_first_byte_[static_cast<unsigned char>(t.added_[i].content[0])].push_back(static_cast<int>(i));
  for (auto& bucket : t.added_by_first_byte_)
    std::sort(bucket.begin(), bucket.end(),
              [&](int a, int b) { return t.added_[a].content.size() > t.added_[b].content.size(); });
  return t;
}

std::vector<Tokenizer::Piece> Tokenizer::split_added(std::string_view text) const {
  std::vector<Piece> pieces;
  size_t text_begin = 0;
  for (size_t i = 0; i < text.size();) {
    const AddedToken* hit = nullptr;
    for (int idx : added_by_first_byte_[static_cast<unsigned char>(text[i])]) {
      const AddedToken& a = added_[idx];
      if (text.compare(i, a.content.size(), a.content) != 0) continue;
      if (a.single_word) {
        bool left_ok = i == 0 || !is_word_char(static_cast<unsigned char>(text[i - 1]));
        size_t e = i + a.content.size();
        bool right_ok = e == text.size() || !is_word_char(static_cast<unsigned char>(text[e]));
        if (!left_ok || !right_ok) continue;
      }
      hit = &a;
      break;  // buckets are sorted longest first
    }
    if (!hit) {
      ++i;
      continue;
    }
    size_t b = i, e = i + hit->content.size();
    if (hit->lstrip)
      while (b > text_begin && is_space(text[b - 1])) --b;
    if (hit->rstrip)
      while (e < text.size() && is_space(text[e])) ++e;
    if (b > text_begin) pieces.push_back({text_begin, b, -1});
    pieces.push_back({b, e, hit->id});
    i = text_begin = e;
  }
  if (text_begin < text.size()) pieces.push_back({text_begin, text.size(), -1});
  return pieces;
}

Result<std::vector<int>> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  if (size_t bad = utf8::find_invalid(text); bad != std::string_view::npos)
    return make_error("input is not valid UTF-8 (byte ", bad, ")");
  std::vector<int> ids;
  if (add_special_tokens) ids = prefix_ids_;
  std::vector<std::string> words;
  for (const Piece& p : split_added(text)) {
    if (p.added_id >= 0) {
      ids.push_back(p.added_id);
      continue;
    }
    std::string s(text.substr(p.begin, p.end - p.begin));
    if (normalizer_) s = normalizer_->normalize(std::move(s));
    words.clear();
    if (!s.empty()) words.push_back(std::move(s));
    if (pre_tokenizer_) pre_tokenizer_->split(words, p.begin == 0);
    for (const auto& w : words) model_->encode_word(w, ids);
  }
  if (add_special_tokens) ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
  return ids;
}

std::optional<int> Tokenizer::token_to_id(std::string_view token) const {
  if (auto it = added_ids_.find(token); it != added_ids_.end()) return it->second;
  return model_->token_to_id(token);
}

const std::string* Tokenizer::id_to_token(int id) const {
  if (auto it = added_index_by_id_.find(id); it != added_index_by_id_.end()) return &added_[it->second].content;
  return model_->id_to_token(id);
}

bool Tokenizer::is_special(int id) const {
  auto it = added_index_by_id_.find(id);
  return it != added_index_by_id_.end() && added_[it->second].special;
}

std::string Tokenizer::decode(std::span<const int> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int id : ids) {
    if (skip_special_tokens && is_special(id)) continue;
    if (const std::string* tok = id_to_token(id)) tokens.push_back(*tok);
  }
  if (!decoder_) {  // tokenizers joins with spaces when there is no decoder
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return utf8::lossy(out);
  }
  decoder_->decode(tokens);
  std::string out;
  for (const auto& t : tokens) out += t;
  return out;
}

std::string IncrementalDecoder::add(int id) {
  ids_.push_back(id);
  std::span<const int> all(ids_);
  std::string prefix = tokenizer_.decode(all.subspan(prefix_offset_, read_offset_ - prefix_offset_), skip_special_);
  std::string full = tokenizer_.decode(all.subspan(prefix_offset_), skip_special_);
  // A trailing U+FFFD means the newest tokens end inside a character: wait for more.
  if (full.size() <= prefix.size() || full.compare(0, prefix.size(), prefix) != 0 ||
      (full.size() >= 3 && full.compare(full.size() - 3, 3, "\xEF\xBF\xBD") == 0))
    return "";
  std::string delta = full.substr(prefix.size());
  prefix_offset_ = read_offset_;
  read_offset_ = ids_.size();
  return delta;
}

std::string IncrementalDecoder::flush() {
  std::span<const int> all(ids_);
  std::string prefix = tokenizer_.decode(all.subspan(prefix_offset_, read_offset_ - prefix_offset_), skip_special_);
  std::string full = tokenizer_.decode(all.subspan(prefix_offset_), skip_special_);
  read_offset_ = prefix_offset_ = ids_.size();
  if (full.size() <= prefix.size() || full.compare(0, prefix.size(), prefix) != 0) return "";
  return full.substr(prefix.size());
}

}  // namespace baton
