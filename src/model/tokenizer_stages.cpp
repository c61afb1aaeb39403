#include "model/tokenizer_stages.h"

#include <unicode/normalizer2.h>
#include <unicode/unistr.h>

#include <array>
#include <optional>
#include <unordered_map>

#include "common/utf8.h"
#include "model/regex.h"

namespace baton {
namespace {

// ---- byte-level map --------------------------------------------------------------------------

struct ByteLevelTables {
  std::array<std::string, 256> byte_to_char;
  std::unordered_map<char32_t, unsigned char> char_to_byte;
  ByteLevelTables() {
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      char32_t cp = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + extra++);
      utf8::append(byte_to_char[b], cp);
      char_to_byte[cp] = static_cast<unsigned char>(b);
    }
  }
};
const ByteLevelTables& byte_tables() {
  static const ByteLevelTables tables;
  return tables;
}


void replace_all(std::string& s, std::string_view from, std::string_view to) {
  if (from.empty()) return;
  std::string out;
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size()) {
    out.append(s, pos, hit - pos);
    out += to;
  }
  out.append(s, pos);
  s = std::move(out);
}

// The "pattern" of Split / Replace: {"String": "..."} or {"Regex": "..."}.
struct Pattern {
  std::string literal;
  std::optional<Regex> regex;

  static Result<Pattern> from_json(const Json& j, const std::string& what) {
    Pattern p;
    if (j.is_string()) {
      p.literal = j.get<std::string>();
    } else if (j.is_object() && j.contains("String") && j["String"].is_string()) {
      p.literal = j["String"].get<std::string>();
    } else if (j.is_object() && j.contains("Regex") && j["Regex"].is_string()) {
      BATON_ASSIGN_OR_RETURN(Regex r, Regex::compile(j["Regex"].get<std::string>()));
      p.regex.emplace(std::move(r));
    } else {
      return make_error(what, ": pattern must be {\"String\": ...} or {\"Regex\": ...}");
    }
    return p;
  }

  std::vector<std::pair<size_t, size_t>> find_all(std::string_view s) const {
    if (regex) return regex->find_all(s);
    std::vector<std::pair<size_t, size_t>> out;
    if (literal.empty()) return out;
    for (size_t pos = 0, hit; (hit = s.find(literal, pos)) != std::string_view::npos; pos = hit + literal.size())
      out.emplace_back(hit, hit + literal.size());
    return out;
  }
};

// ---- split behaviours (tokenizers' SplitDelimiterBehavior) ---------------------------------------

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

Result<Behavior> parse_behavior(const Json& j, const std::string& what) {
  BATON_ASSIGN_OR_RETURN(std::string b, json_get_or<std::string>(j, "behavior", "Isolated", what));
  if (b == "Removed") return Behavior::kRemoved;
  if (b == "Isolated") return Behavior::kIsolated;
  if (b == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::kMergedWithNext;
  if (b == "Contiguous") return Behavior::kContiguous;
  return make_error(what, ": split behavior '", b, "' is not supported");
}

struct Segment {
  size_t begin, end;
  bool is_match;
};

void split_by_matches(std::string_view s, const std::vector<std::pair<size_t, size_t>>& matches, Behavior behavior,
                      bool invert, std::vector<std::string>& out) {
  std::vector<Segment> segs;
  size_t pos = 0;
  for (auto [b, e] : matches) {
    if (b > pos) segs.push_back({pos, b, false});
    segs.push_back({b, e, true});
    pos = e;
  }
  if (pos < s.size()) segs.push_back({pos, s.size(), false});
  if (invert)
    for (auto& sg : segs) sg.is_match = !sg.is_match;

  std::vector<Segment> merged;
  switch (behavior) {
    case Behavior::kRemoved:
      for (auto& sg : segs)
        if (!sg.is_match) merged.push_back(sg);
      break;
    case Behavior::kIsolated:
      merged = segs;
      break;
    case Behavior::kMergedWithPrevious: {
      bool prev_match = false;
      for (auto& sg : segs) {
        if (sg.is_match && !prev_match && !merged.empty()) {
          merged.back().end = sg.end;
        } else {
          merged.push_back(sg);
        }
        prev_match = sg.is_match;
      }
      break;
    }
    case Behavior::kMergedWithNext: {
      bool next_match = false;
      for (auto it = segs.rbegin(); it != segs.rend(); ++it) {
        if (it->is_match && !next_match && !merged.empty()) {
          merged.back().begin = it->begin;
        } else {
          merged.push_back(*it);
        }
        next_match = it->is_match;
      }
      std::reverse(merged.begin(), merged.end());
      break;
    }
    case Behavior::kContiguous: {
      bool prev_match = false;
      for (auto& sg : segs) {
        if (sg.is_match == prev_match && !merged.empty()) {
          merged.back().end = sg.end;
        } else {
          merged.push_back(sg);
        }
        prev_match = sg.is_match;
      }
      break;
    }
  }
  for (auto& sg : merged)
    if (sg.end > sg.begin) out.emplace_back(s.substr(sg.begin, sg.end - sg.begin));
}

// ---- normalizers -----------------------------------------------------------------------------

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> parts) : parts_(std::move(parts)) {}
  std::string normalize(std::string text) const override {
    for (const auto& p : parts_) text = p->normalize(std::move(text));
    return text;
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  std::string normalize(std::string text) const override { return text.empty() ? text : prefix_ + text; }

 private:
  std::string prefix_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(Pattern pattern, std::string content) : pattern_(std::move(pattern)), content_(std::move(content)) {}
  std::string normalize(std::string text) const override {
    std::string out;
    size_t pos = 0;
    for (auto [b, e] : pattern_.find_all(text)) {
      out.append(text, pos, b - pos);
      out += content_;
      pos = e;
    }
    out.append(text, pos);
    return out;
  }

 private:
  Pattern pattern_;
  std::string content_;
};

class UnicodeNormalizer : public Normalizer {
 public:
  explicit UnicodeNormalizer(const icu::Normalizer2* n) : n_(n) {}
  std::string normalize(std::string text) const override {
    UErrorCode err = U_ZERO_ERROR;
    icu::UnicodeString u = icu::UnicodeString::fromUTF8(text);
    icu::UnicodeString r = n_->normalize(u, err);
    if (U_FAILURE(err)) return text;  // only on invalid input, which encode() rejects earlier
    std::string out;
    r.toUTF8String(out);
    return out;
  }

 private:
  const icu::Normalizer2* n_;
};

class LowercaseNormalizer : public Normalizer {
 public:
  std::string normalize(std::string text) const override {
    icu::UnicodeString u = icu::UnicodeString::fromUTF8(text);
    u.toLower();
    std::string out;
    u.toUTF8String(out);
    return out;
  }
};

class StripNormalizer : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  std::string normalize(std::string text) const override {
    static const Regex lead = Regex::compile(R"(^\s+)").value();
    static const Regex trail = Regex::compile(R"(\s+$)").value();
    if (right_)
      if (auto m = trail.find_all(text); !m.empty()) text.erase(m.back().first);
    if (left_)
      if (auto m = lead.find_all(text); !m.empty()) text.erase(0, m.front().second);
    return text;
  }

 private:
  bool left_, right_;
};

// ---- pre-tokenizers --------------------------------------------------------------------------

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> parts) : parts_(std::move(parts)) {}
  void split(std::vector<std::string>& pieces, bool at_input_start) const override {
    for (const auto& p : parts_) p->split(pieces, at_input_start);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(Pattern pattern, Behavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
  void split(std::vector<std::string>& pieces, bool) const override {
    std::vector<std::string> out;
    for (const auto& p : pieces) split_by_matches(p, pattern_.find_all(p), behavior_, invert_, out);
    pieces = std::move(out);
  }

 private:
  Pattern pattern_;
  Behavior behavior_;
  bool invert_;
};

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::optional<Regex> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}
  void split(std::vector<std::string>& pieces, bool) const override {
    std::vector<std::string> words;
    for (auto& p : pieces) {
      if (add_prefix_space_ && !p.empty() && p[0] != ' ') p.insert(p.begin(), ' ');
      if (regex_) {
        split_by_matches(p, regex_->find_all(p), Behavior::kIsolated, false, words);
      } else if (!p.empty()) {
        words.push_back(std::move(p));
      }
    }
    const auto& t = byte_tables();
    pieces.clear();
    for (const auto& w : words) {
      std::string mapped;
      mapped.reserve(w.size() * 2);
      for (unsigned char c : w) mapped += t.byte_to_char[c];
      pieces.push_back(std::move(mapped));
    }
  }

 private:
  bool add_prefix_space_;
  std::optional<Regex> regex_;
};

enum class PrependScheme { kAlways, kFirst, kNever };

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {}
  void split(std::vector<std::string>& pieces, bool at_input_start) const override {
    std::vector<std::string> out;
    for (size_t i = 0; i < pieces.size(); ++i) {
      std::string p = pieces[i];
      replace_all(p, " ", replacement_);
      bool prepend = scheme_ == PrependScheme::kAlways || (scheme_ == PrependScheme::kFirst && at_input_start && i == 0);
      if (prepend && p.rfind(replacement_, 0) != 0) p = replacement_ + p;
      if (split_) {
        std::vector<std::pair<size_t, size_t>> matches;
        for (size_t pos = 0, hit; (hit = p.find(replacement_, pos)) != std::string::npos; pos = hit + replacement_.size())
          matches.emplace_back(hit, hit + replacement_.size());
        split_by_matches(p, matches, Behavior::kMergedWithNext, false, out);
      } else if (!p.empty()) {
        out.push_back(std::move(p));
      }
    }
    pieces = std::move(out);
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
};

// ---- decoders --------------------------------------------------------------------------------

class SequenceDecoder : public TokenDecoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<TokenDecoder>> parts) : parts_(std::move(parts)) {}
  void decode(std::vector<std::string>& tokens) const override {
    for (const auto& p : parts_) p->decode(tokens);
  }

 private:
  std::vector<std::unique_ptr<TokenDecoder>> parts_;
};

class ByteLevelDecoder : public TokenDecoder {
 public:
  void decode(std::vector<std::string>& tokens) const override {
    const auto& t = byte_tables();
    std::string bytes;
    for (const auto& tok : tokens) {
      std::string mapped;
      bool all = true;
      for (size_t i = 0; i < tok.size() && all;) {
        size_t len = 0;
        char32_t cp = utf8::decode(tok, i, &len);
        auto it = t.char_to_byte.find(cp);
        if (it == t.char_to_byte.end()) {
          all = false;
        } else {
          mapped += static_cast<char>(it->second);
        }
        i += len;
      }
      bytes += all ? mapped : tok;
    }
    tokens.assign(1, utf8::lossy(bytes));
  }
};

class ReplaceDecoder : public TokenDecoder {
 public:
  ReplaceDecoder(std::string from, std::string to) : from_(std::move(from)), to_(std::move(to)) {}
  void decode(std::vector<std::string>& tokens) const override {
    for (auto& t : tokens) replace_all(t, from_, to_);
  }

 private:
  std::string from_, to_;
};

class ByteFallbackDecoder : public TokenDecoder {
 public:
  void decode(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string pending;
    size_t pending_count = 0;
    auto flush = [&] {
      if (pending_count == 0) return;
      if (utf8::is_valid(pending)) {
        out.push_back(pending);
      } else {
        for (size_t i = 0; i < pending_count; ++i) out.emplace_back("\xEF\xBF\xBD");
      }
      pending.clear();
      pending_count = 0;
    };
    for (auto& t : tokens) {
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && std::isxdigit(static_cast<unsigned char>(t[3])) &&
          std::isxdigit(static_cast<unsigned char>(t[4]))) {
        pending += static_cast<char>(std::stoi(t.substr(3, 2), nullptr, 16));
        ++pending_count;
        continue;
      }
      flush();
      out.push_back(std::move(t));
    }
    flush();
    tokens = std::move(out);
  }
};

class FuseDecoder : public TokenDecoder {
 public:
  void decode(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const auto& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

class StripDecoder : public TokenDecoder {
 public:
  StripDecoder(std::string content, int start, int stop) : content_(std::move(content)), start_(start), stop_(stop) {}
  void decode(std::vector<std::string>& tokens) const override {
    for (auto& t : tokens) {
      for (int i = 0; i < start_ && t.rfind(content_, 0) == 0 && !content_.empty(); ++i) t.erase(0, content_.size());
      for (int i = 0; i < stop_ && !content_.empty() && t.size() >= content_.size() &&
                      t.compare(t.size() - content_.size(), content_.size(), content_) == 0;
           ++i)
        t.erase(t.size() - content_.size());
    }
  }

 private:
  std::string content_;
  int start_, stop_;
};

class MetaspaceDecoder : public TokenDecoder {
 public:
  MetaspaceDecoder(std::string replacement, bool strip_first) : replacement_(std::move(replacement)), strip_first_(strip_first) {}
  void decode(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) replace_all(tokens[i], replacement_, (i == 0 && strip_first_) ? "" : " ");
  }

 private:
  std::string replacement_;
  bool strip_first_;
};

// ---- factories -------------------------------------------------------------------------------

Result<std::string> type_of(const Json& j, const std::string& what) {
  if (!j.is_object()) return make_error(what, ": expected an object");
  return json_get<std::string>(j, "type", what);
}

Result<PrependScheme> parse_prepend_scheme(const Json& j, const std::string& what) {
  auto it = j.find("prepend_scheme");
  if (it == j.end() || it->is_null()) {
    BATON_ASSIGN_OR_RETURN(bool add, json_get_or<bool>(j, "add_prefix_space", true, what));
    return add ? PrependScheme::kAlways : PrependScheme::kNever;
  }
  std::string s = it->is_string() ? it->get<std::string>() : "";
  if (s == "always") return PrependScheme::kAlways;
  if (s == "first") return PrependScheme::kFirst;
  if (s == "never") return PrependScheme::kNever;
  return make_error(what, ": unknown prepend_scheme ", it->dump());
}

template <class Stage, class Make>
Result<std::vector<std::unique_ptr<Stage>>> make_list(const Json& j, const char* key, const std::string& what, Make make) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_array()) return make_error(what, ": Sequence needs a list '", key, "'");
  std::vector<std::unique_ptr<Stage>> parts;
  for (const auto& p : *it) {
    BATON_ASSIGN_OR_RETURN(auto stage, make(p, what));
    if (stage) parts.push_back(std::move(stage));
  }
  return parts;
}

}  // namespace

const char* const kByteLevelPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

const std::string& byte_level_char(unsigned char byte) { return byte_tables().byte_to_char[byte]; }

Result<std::unique_ptr<Normalizer>> make_normalizer(const Json& j, const std::string& what) {
  if (j.is_null()) return std::unique_ptr<Normalizer>();
  BATON_ASSIGN_OR_RETURN(std::string type, type_of(j, what + " normalizer"));
  if (type == "Sequence") {
    BATON_ASSIGN_OR_RETURN(auto parts, make_list<Normalizer>(j, "normalizers", what, make_normalizer));
    return std::unique_ptr<Normalizer>(std::make_unique<SequenceNormalizer>(std::move(parts)));
  }
  if (type == "Prepend") {
    BATON_ASSIGN_OR_RETURN(std::string p, json_get<std::string>(j, "prepend", what));
    return std::unique_ptr<Normalizer>(std::make_unique<PrependNormalizer>(p));
  }
  if (type == "Replace") {
    BATON_ASSIGN_OR_RETURN(Pattern p, Pattern::from_json(j.value("pattern", Json()), what));
    BATON_ASSIGN_OR_RETURN(std::string content, json_get<std::string>(j, "content", what));
    return std::unique_ptr<Normalizer>(std::make_unique<ReplaceNormalizer>(std::move(p), content));
  }
  if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    UErrorCode err = U_ZERO_ERROR;
    const icu::Normalizer2* n = type == "NFC"    ? icu::Normalizer2::getNFCInstance(err)
                                : type == "NFD"  ? icu::Normalizer2::getNFDInstance(err)
                                : type == "NFKC" ? icu::Normalizer2::getNFKCInstance(err)
                                                 : icu::Normalizer2::getNFKDInstance(err);
    if (U_FAILURE(err) || !n) return make_error(what, ": ICU has no ", type, " normalizer");
    return std::unique_ptr<Normalizer>(std::make_unique<UnicodeNormalizer>(n));
  }
  if (type == "Lowercase") return std::unique_ptr<Normalizer>(std::make_unique<LowercaseNormalizer>());
  if (type == "Strip") {
    BATON_ASSIGN_OR_RETURN(bool left, json_get_or<bool>(j, "strip_left", true, what));
    BATON_ASSIGN_OR_RETURN(bool right, json_get_or<bool>(j, "strip_right", true, what));
    return std::unique_ptr<Normalizer>(std::make_unique<StripNormalizer>(left, right));
  }
  return make_error(what, ": normalizer type '", type, "' is not supported");
}

Result<std::unique_ptr<PreTokenizer>> make_pre_tokenizer(const Json& j, const std::string& what) {
  if (j.is_null()) return std::unique_ptr<PreTokenizer>();
  BATON_ASSIGN_OR_RETURN(std::string type, type_of(j, what + " pre_tokenizer"));
  if (type == "Sequence") {
    BATON_ASSIGN_OR_RETURN(auto parts, make_list<PreTokenizer>(j, "pretokenizers", what, make_pre_tokenizer));
    return std::unique_ptr<PreTokenizer>(std::make_unique<SequencePreTokenizer>(std::move(parts)));
  }
  if (type == "Split") {
    BATON_ASSIGN_OR_RETURN(Pattern p, Pattern::from_json(j.value("pattern", Json()), what));
    BATON_ASSIGN_OR_RETURN(Behavior b, parse_behavior(j, what));
    BATON_ASSIGN_OR_RETURN(bool invert, json_get_or<bool>(j, "invert", false, what));
    return std::unique_ptr<PreTokenizer>(std::make_unique<SplitPreTokenizer>(std::move(p), b, invert));
  }
  if (type == "ByteLevel") {
    BATON_ASSIGN_OR_RETURN(bool prefix, json_get_or<bool>(j, "add_prefix_space", true, what));
    BATON_ASSIGN_OR_RETURN(bool use_regex, json_get_or<bool>(j, "use_regex", true, what));
    std::optional<Regex> regex;
    if (use_regex) {
      BATON_ASSIGN_OR_RETURN(Regex r, Regex::compile(kByteLevelPattern));
      regex.emplace(std::move(r));
    }
    return std::unique_ptr<PreTokenizer>(std::make_unique<ByteLevelPreTokenizer>(prefix, std::move(regex)));
  }
  if (type == "Metaspace") {
    BATON_ASSIGN_OR_RETURN(std::string rep, json_get_or<std::string>(j, "replacement", "\xE2\x96\x81", what));
    BATON_ASSIGN_OR_RETURN(PrependScheme scheme, parse_prepend_scheme(j, what));
    BATON_ASSIGN_OR_RETURN(bool split, json_get_or<bool>(j, "split", true, what));
    return std::unique_ptr<PreTokenizer>(std::make_unique<MetaspacePreTokenizer>(rep, scheme, split));
  }
  if (type == "Digits") {
    BATON_ASSIGN_OR_RETURN(bool individual, json_get_or<bool>(j, "individual_digits", false, what));
    BATON_ASSIGN_OR_RETURN(Regex r, Regex::compile(individual ? R"(\p{N})" : R"(\p{N}+)"));
    Pattern p;
    p.regex.emplace(std::move(r));
    return std::unique_ptr<PreTokenizer>(std::make_unique<SplitPreTokenizer>(std::move(p), Behavior::kIsolated, false));
  }
  if (type == "Whitespace") {
    BATON_ASSIGN_OR_RETURN(Regex r, Regex::compile(R"(\w+|[^\w\s]+)"));
    Pattern p;
    p.regex.emplace(std::move(r));
    return std::unique_ptr<PreTokenizer>(std::make_unique<SplitPreTokenizer>(std::move(p), Behavior::kRemoved, true));
  }
  return make_error(what, ": pre_tokenizer type '", type, "' is not supported");
}

Result<std::unique_ptr<TokenDecoder>> make_decoder(const Json& j, const std::string& what) {
  if (j.is_null()) return std::unique_ptr<TokenDecoder>();
  BATON_ASSIGN_OR_RETURN(std::string type, type_of(j, what + " decoder"));
  if (type == "Sequence") {
    BATON_ASSIGN_OR_RETURN(auto parts, make_list<TokenDecoder>(j, "decoders", what, make_decoder));
    return std::unique_ptr<TokenDecoder>(std::make_unique<SequenceDecoder>(std::move(parts)));
  }
  if (type == "ByteLevel") return std::unique_ptr<TokenDecoder>(std::make_unique<ByteLevelDecoder>());
  if (type == "Replace") {
    const Json pattern = j.value("pattern", Json());
    if (!pattern.is_object() || !pattern.contains("String") || !pattern["String"].is_string())
      return make_error(what, ": Replace decoder supports only String patterns");
    BATON_ASSIGN_OR_RETURN(std::string content, json_get<std::string>(j, "content", what));
    return std::unique_ptr<TokenDecoder>(std::make_unique<ReplaceDecoder>(pattern["String"].get<std::string>(), content));
  }
  if (type == "ByteFallback") return std::unique_ptr<TokenDecoder>(std::make_unique<ByteFallbackDecoder>());
  if (type == "Fuse") return std::unique_ptr<TokenDecoder>(std::make_unique<FuseDecoder>());
  if (type == "Strip") {
    BATON_ASSIGN_OR_RETURN(std::string content, json_get<std::string>(j, "content", what));
    BATON_ASSIGN_OR_RETURN(int start, json_get_or<int>(j, "start", 0, what));
    BATON_ASSIGN_OR_RETURN(int stop, json_get_or<int>(j, "stop", 0, what));
    return std::unique_ptr<TokenDecoder>(std::make_unique<StripDecoder>(content, start, stop));
  }
  if (type == "Metaspace") {
    BATON_ASSIGN_OR_RETURN(std::string rep, json_get_or<std::string>(j, "replacement", "\xE2\x96\x81", what));
    BATON_ASSIGN_OR_RETURN(PrependScheme scheme, parse_prepend_scheme(j, what));
    return std::unique_ptr<TokenDecoder>(std::make_unique<MetaspaceDecoder>(rep, scheme != PrependScheme::kNever));
  }
  return make_error(what, ": decoder type '", type, "' is not supported");
}

}  // namespace baton
