#include "model/bpe.h"

#include <cstdio>
#include <queue>

#include "common/utf8.h"

namespace baton {

Result<BpeModel> BpeModel::from_json(const Json& m, const std::string& what) {
  BpeModel b;
  BATON_ASSIGN_OR_RETURN(std::string type, json_get_or<std::string>(m, "type", "BPE", what));
  if (type != "BPE") return make_error(what, ": tokenizer model type '", type, "' is not supported (BPE is)");
  auto vocab_it = m.find("vocab");
  if (vocab_it == m.end() || !vocab_it->is_object()) return make_error(what, ": model.vocab must be an object");
  int max_id = -1;
  for (auto& [tok, idj] : vocab_it->items()) {
    if (!idj.is_number_integer() || idj.get<int64_t>() < 0 || idj.get<int64_t>() > (1 << 24))
      return make_error(what, ": vocab entry '", tok, "' has an invalid id");
    int id = idj.get<int>();
    b.vocab_.emplace(tok, id);
    max_id = std::max(max_id, id);
  }
  b.id_to_token_.resize(max_id + 1);
  b.has_id_.assign(max_id + 1, false);
  for (auto& [tok, id] : b.vocab_) {
    b.id_to_token_[id] = tok;
    b.has_id_[id] = true;
  }

  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    auto it = m.find(key);
    if (it != m.end() && !it->is_null() && !(it->is_string() && it->get<std::string>().empty()))
      return make_error(what, ": BPE '", key, "' is not supported");
  }
  BATON_ASSIGN_OR_RETURN(b.byte_fallback_, json_get_or<bool>(m, "byte_fallback", false, what));
  BATON_ASSIGN_OR_RETURN(b.fuse_unk_, json_get_or<bool>(m, "fuse_unk", false, what));
  BATON_ASSIGN_OR_RETURN(b.ignore_merges_, json_get_or<bool>(m, "ignore_merges", false, what));
  BATON_ASSIGN_OR_RETURN(std::string unk, json_get_or<std::string>(m, "unk_token", "", what));
  if (!unk.empty()) {
    auto it = b.vocab_.find(unk);
    if (it == b.vocab_.end()) return make_error(what, ": unk_token '", unk, "' is not in the vocabulary");
    b.unk_id_ = it->second;
  }
  for (int byte = 0; byte < 256; ++byte) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", byte);
    auto it = b.vocab_.find(std::string_view(name));
    b.byte_ids_[byte] = it == b.vocab_.end() ? -1 : it->second;
  }

  auto merges_it = m.find("merges");
  if (merges_it != m.end() && !merges_it->is_null()) {
    if (!merges_it->is_array()) return make_error(what, ": model.merges must be a list");
    int rank = 0;
    for (const auto& mj : *merges_it) {
      std::string left, right;
      if (mj.is_string()) {  // "a b" (older files)
        const std::string& s = mj.get_ref<const std::string&>();
        size_t sp = s.find(' ', 1);
        if (sp == std::string::npos) return make_error(what, ": merge '", s, "' is not two tokens");
        left = s.substr(0, sp);
        right = s.substr(sp + 1);
      } else if (mj.is_array() && mj.size() == 2 && mj[0].is_string() && mj[1].is_string()) {  // ["a", "b"]
        left = mj[0].get<std::string>();
        right = mj[1].get<std::string>();
      } else {
        return make_error(what, ": merge #", rank, " is neither \"a b\" nor [\"a\", \"b\"]");
      }
      auto l = b.vocab_.find(left), r = b.vocab_.find(right), n = b.vocab_.find(left + right);
      if (l == b.vocab_.end() || r == b.vocab_.end() || n == b.vocab_.end())
        return make_error(what, ": merge #", rank, " ('", left, "', '", right, "') uses a token not in the vocabulary");
      b.merges_.emplace(pair_key(l->second, r->second), Merge{rank, n->second});  // first rank wins
      ++rank;
    }
  }
  return b;
}

std::optional<int> BpeModel::token_to_id(std::string_view token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::id_to_token(int id) const {
  if (id < 0 || id >= static_cast<int>(id_to_token_.size()) || !has_id_[id]) return nullptr;
  return &id_to_token_[id];
}

void BpeModel::encode_word(std::string_view word, std::vector<int>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (auto it = vocab_.find(word); it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  struct Symbol {
    int id;
    int prev;
    int next;
    bool alive;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  auto add = [&](int id) {
    int n = static_cast<int>(symbols.size());
    symbols.push_back({id, n - 1, -1, true});
    if (n > 0) symbols[n - 1].next = n;
  };

  // Initial symbols: one per character, with byte fallback and unknown-token fusing.
  std::optional<int> pending_unk;
  for (size_t i = 0; i < word.size();) {
    size_t len = utf8::sequence_length(word, i);
    if (len == 0) len = 1;  // callers validate UTF-8; never loop forever regardless
    std::string_view ch = word.substr(i, len);
    i += len;
    if (auto it = vocab_.find(ch); it != vocab_.end()) {
      if (pending_unk) add(*std::exchange(pending_unk, std::nullopt));
      add(it->second);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (char c : ch) all = all && byte_ids_[static_cast<unsigned char>(c)] >= 0;
      if (all) {
        if (pending_unk) add(*std::exchange(pending_unk, std::nullopt));
        for (char c : ch) add(byte_ids_[static_cast<unsigned char>(c)]);
        continue;
      }
    }
    if (unk_id_) {
      if (pending_unk && !fuse_unk_) add(*pending_unk);
      pending_unk = *unk_id_;
    }
  }
  if (pending_unk) add(*pending_unk);

  struct Candidate {
    int rank;
    int pos;
    int new_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  auto consider = [&](int pos) {
    int nx = symbols[pos].next;
    if (nx < 0) return;
    auto it = merges_.find(pair_key(symbols[pos].id, symbols[nx].id));
    if (it != merges_.end()) heap.push({it->second.rank, pos, it->second.new_id});
  };
  for (int i = 0; i + 1 < static_cast<int>(symbols.size()); ++i) consider(i);

  while (!heap.empty()) {
    Candidate top = heap.top();
    heap.pop();
    Symbol& s = symbols[top.pos];
    if (!s.alive || s.next < 0) continue;
    auto it = merges_.find(pair_key(s.id, symbols[s.next].id));
    if (it == merges_.end() || it->second.new_id != top.new_id) continue;  // stale entry
    Symbol& right = symbols[s.next];
    s.id = top.new_id;
    right.alive = false;
    s.next = right.next;
    if (s.next >= 0) symbols[s.next].prev = top.pos;
    if (s.prev >= 0) consider(s.prev);
    consider(top.pos);
  }
  for (int i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[i].next) out.push_back(symbols[i].id);
}

}  // namespace baton
