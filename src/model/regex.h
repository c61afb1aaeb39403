// A compiled Unicode regular expression (PCRE2 with UTF + UCP, JIT when available), used for
// tokenizer pre-tokenization. Immutable after construction and safe to share between threads.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.h"

namespace baton {

class Regex {
 public:
  // `pattern` uses the syntax of Hugging Face tokenizers (Oniguruma); \s is widened to
  // Unicode's White_Space set as Oniguruma defines it.
  static Result<Regex> compile(std::string_view pattern);

  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;
  ~Regex();

  // Non-overlapping matches, left to right, as [begin, end) byte offsets into `text`, which must
  // be valid UTF-8.
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;

 private:
  Regex() = default;
  struct Compiled;
  std::unique_ptr<Compiled> compiled_;
};

}  // namespace baton
