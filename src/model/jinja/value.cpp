// Value's out-of-line parts: UTF-8 <-> code points, the render's Arena, and equality.
#include "model/jinja/value.h"

#include "common/utf8.h"

namespace baton::jinja {

std::u32string to_u32(const std::string& s) {
  std::u32string out;
  for (size_t i = 0; i < s.size();) {
    size_t len = utf8::sequence_length(s, i);
    if (len == 0) {  // not valid UTF-8: treat the byte as a character
      out += static_cast<char32_t>(static_cast<unsigned char>(s[i]));
      ++i;
      continue;
    }
    out += utf8::decode(s, i, &len);
    i += len;
  }
  return out;
}
std::string from_u32(const std::u32string& s) {
  std::string out;
  for (char32_t c : s) utf8::append(out, c);
  return out;
}

thread_local Arena* g_arena = nullptr;

Arena::~Arena() {
  for (auto& l : lists) l->clear();
  for (auto& d : dicts) d->clear();
}

bool equal(const Value& a, const Value& b, int depth) {
  using K = Value::Kind;
  if (depth > Value::kMaxNesting) return false;
  if (a.is_number() && b.is_number()) return a.number() == b.number();
  if ((a.kind == K::kBool || b.kind == K::kBool) && (a.is_number() || b.is_number() || a.kind == b.kind))
    return a.number() == b.number();
  if (a.kind != b.kind) return (a.is_none() || a.is_undefined()) && (b.is_none() || b.is_undefined());
  switch (a.kind) {
    case K::kString: return a.s == b.s;
    case K::kList:
      if (a.list->size() != b.list->size()) return false;
      for (size_t k = 0; k < a.list->size(); ++k)
        if (!equal((*a.list)[k], (*b.list)[k], depth + 1)) return false;
      return true;
    case K::kDict:
      if (a.dict->size() != b.dict->size()) return false;
      for (const auto& [key, v] : *a.dict) {
        const Value* o = b.find(key);
        if (!o || !equal(v, *o, depth + 1)) return false;
      }
      return true;
    default: return true;
  }
}

}  // namespace baton::jinja
