// A Hugging Face tokenizer.json: added/special tokens, normalizer, pre-tokenizer, BPE model,
// post-processor and decoder, giving the same ids and text as the `tokenizers` library.
//
// Byte-level BPE (GPT-2, Qwen, Llama-3) and sentencepiece-style BPE (Llama-2, Mistral: Metaspace
// or Prepend+Replace normalizer, byte fallback) are supported. Immutable after load; encode and
// decode may be called from many threads at once.
#pragma once

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/json.h"
#include "common/result.h"
#include "model/bpe.h"
#include "model/tokenizer_stages.h"

namespace baton {

class Tokenizer {
 public:
  // `path` is a tokenizer.json or a directory that holds one.
  static Result<Tokenizer> load(const std::string& path);
  static Result<Tokenizer> from_json(const Json& j, const std::string& what = "tokenizer.json");

  // Text must be valid UTF-8; otherwise an error names the byte offset. With add_special_tokens
  // the post-processor's template (e.g. a BOS token) is applied, as HF's encode() does.
  Result<std::vector<int>> encode(std::string_view text, bool add_special_tokens = true) const;
  // Always valid UTF-8 (invalid byte sequences become U+FFFD). Unknown ids are skipped.
  std::string decode(std::span<const int> ids, bool skip_special_tokens = false) const;

  std::optional<int> token_to_id(std::string_view token) const;
  // The token's text, or nullptr for an unknown id.
  const std::string* id_to_token(int id) const;
  bool is_special(int id) const;
  int vocab_size() const { return vocab_size_; }

 private:
  struct AddedToken {
    int id;
    std::string content;
    bool special, lstrip, rstrip, single_word;
  };
  struct Piece {  // a span of the input that is either plain text or one added token
    size_t begin, end;
    int added_id;  // -1 for text
  };
  std::vector<Piece> split_added(std::string_view text) const;

  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<TokenDecoder> decoder_;
  std::shared_ptr<const BpeModel> model_;
  std::vector<AddedToken> added_;
  std::vector<std::vector<int>> added_by_first_byte_;  // indices into added_, longest first
  TokenMap added_ids_;
  std::unordered_map<int, int> added_index_by_id_;  // id -> index into added_
  std::vector<int> prefix_ids_, suffix_ids_;  // post-processor template around the text
  int vocab_size_ = 0;
};

// Turns a growing list of token ids into text deltas without ever splitting a UTF-8 character
// or losing the spacing that sentencepiece decoders strip at the start (vLLM's scheme: decode a
// short window before the new tokens and emit only what is new and complete).
class IncrementalDecoder {
 public:
  IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = true)
      : tokenizer_(tokenizer), skip_special_(skip_special_tokens) {}
  // Adds one token and returns the text it completes (possibly empty).
  std::string add(int id);
  // Text held back because it ends in an incomplete character; call once at the end.
  std::string flush();
  const std::vector<int>& ids() const { return ids_; }

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::vector<int> ids_;
  size_t prefix_offset_ = 0;
  size_t read_offset_ = 0;
};

}  // namespace baton
