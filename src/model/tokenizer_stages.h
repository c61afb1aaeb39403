// The pipeline stages of a Hugging Face tokenizer.json around its BPE model: normalizers,
// pre-tokenizers and decoders, each built from its JSON section. Each stage is immutable after
// construction and thread-safe. Only the stage types that Llama / Qwen / Mistral tokenizers use
// are supported; anything else is refused at load with a message naming the type.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/json.h"
#include "common/result.h"

namespace baton {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual std::string normalize(std::string text) const = 0;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits each piece further, in place. `at_input_start` is true when the first piece begins
  // at the start of the user's text (not after an added token).
  virtual void split(std::vector<std::string>& pieces, bool at_input_start) const = 0;
};

class TokenDecoder {
 public:
  virtual ~TokenDecoder() = default;
  // Rewrites the list of token strings; the decoded text is the concatenation of the result.
  virtual void decode(std::vector<std::string>& tokens) const = 0;
};

// Each returns nullptr for a JSON null (no such stage).
Result<std::unique_ptr<Normalizer>> make_normalizer(const Json& j, const std::string& what);
Result<std::unique_ptr<PreTokenizer>> make_pre_tokenizer(const Json& j, const std::string& what);
Result<std::unique_ptr<TokenDecoder>> make_decoder(const Json& j, const std::string& what);

// GPT-2's reversible byte <-> printable character map used by byte-level BPE.
const std::string& byte_level_char(unsigned char byte);
// The pre-tokenization regex of GPT-2's ByteLevel pre-tokenizer (use_regex: true).
extern const char* const kByteLevelPattern;

}  // namespace baton
