// libFuzzer target: tokenizer.json loading and encoding. An input starting with '{' is loaded as
// a tokenizer.json (errors are fine, crashes and hangs are not; a tokenizer that loads must
// encode and decode a fixed text); any other input is encoded with the committed models'
// tokenizers (byte-level BPE and sentencepiece-style), whose ids must be in the vocabulary.
#include <cassert>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/tokenizer.h"

namespace {

const std::vector<std::unique_ptr<baton::Tokenizer>>& shared_tokenizers() {
  static std::vector<std::unique_ptr<baton::Tokenizer>> all = [] {
    std::vector<std::unique_ptr<baton::Tokenizer>> v;
    for (const char* m : {"tiny-qwen3", "tiny-llama3", "stories260k"}) {
      auto t = baton::Tokenizer::load(std::string("../shared/models/") + m);
      if (t.ok()) v.push_back(std::make_unique<baton::Tokenizer>(std::move(*t)));
    }
    return v;
  }();
  return all;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace baton;
  std::string text(reinterpret_cast<const char*>(data), size);
  if (!text.empty() && text[0] == '{') {
    Json j = Json::parse(text, nullptr, false);
    if (j.is_discarded()) return 0;
    auto t = Tokenizer::from_json(j);
    if (!t.ok()) return 0;
    auto ids = t->encode("Hello, world! 123 héllo", true);
    if (ids.ok()) (void)t->decode(*ids, false);
    return 0;
  }
  for (const auto& t : shared_tokenizers()) {
    for (bool special : {false, true}) {
      auto ids = t->encode(text, special);
      if (!ids.ok()) continue;  // e.g. invalid UTF-8 is refused with an error
      for (int id : *ids) assert(id >= 0 && id < t->vocab_size());
      (void)t->decode(*ids, false);
    }
  }
  return 0;
}
