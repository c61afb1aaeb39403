// The BPE model of a Hugging Face tokenizer.json: vocabulary, ranked merges, unknown-token and
// byte-fallback handling. Turns one pre-tokenized word into ids the way `tokenizers` does
// (lowest-rank merge first, leftmost on ties). Immutable after load; thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/json.h"
#include "common/result.h"

namespace baton {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using TokenMap = std::unordered_map<std::string, int, StringHash, std::equal_to<>>;

class BpeModel {
 public:
  static Result<BpeModel> from_json(const Json& model, const std::string& what);

  // Appends the ids of `word` to `out`.
  void encode_word(std::string_view word, std::vector<int>& out) const;

  std::optional<int> token_to_id(std::string_view token) const;
  // The token's text, or nullptr for an id the vocabulary does not have.
  const std::string* id_to_token(int id) const;
  int max_id() const { return static_cast<int>(id_to_token_.size()) - 1; }

 private:
  struct Merge {
    int rank;
    int new_id;
  };
  static uint64_t pair_key(int a, int b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b); }

  TokenMap vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_id_;
  std::unordered_map<uint64_t, Merge> merges_;
  std::optional<int> unk_id_;
  bool byte_fallback_ = false;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
  int byte_ids_[256];  // id of "<0xXX>" or -1
};

}  // namespace baton
