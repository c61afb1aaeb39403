// UTF-8 helpers shared by the tokenizer and the servers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace baton::utf8 {

// Length in bytes of a valid UTF-8 sequence starting at s[i], or 0 if it is invalid or cut
// short (overlong forms, surrogates and code points past U+10FFFF are invalid).
size_t sequence_length(std::string_view s, size_t i);

// Byte offset of the first invalid sequence, or npos if `s` is valid UTF-8.
size_t find_invalid(std::string_view s);
inline bool is_valid(std::string_view s) { return find_invalid(s) == std::string_view::npos; }

// Number of trailing bytes of `s` that start a sequence which is not complete yet (0..3).
// Those bytes must be held back when text is streamed.
size_t incomplete_suffix(std::string_view s);

// Replaces each maximal invalid subsequence with U+FFFD, as Rust's from_utf8_lossy does.
std::string lossy(std::string_view s);

// Decodes the code point at s[i] (valid UTF-8 assumed); returns it and sets *len.
char32_t decode(std::string_view s, size_t i, size_t* len);
void append(std::string& out, char32_t cp);

}  // namespace baton::utf8
