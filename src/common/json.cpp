#include "common/json.h"

#include <string>
#include <unordered_map>
#include <vector>

namespace baton {

namespace {

// Builds the DOM from nlohmann's SAX events, stopping the parse at the first container past
// max_depth: one pass, and nothing deeper is ever built (the MessagePack reader recurses per level
// itself, so a check after parsing would come too late). Not nlohmann's json_sax_dom_parser: it
// adds each key with ordered_json's operator[], which compares the key with every key before it,
// and a tokenizer.json vocabulary of 128K tokens (Llama 3's) is one object: 8e9 comparisons. Here
// an object past kIndexFrom keys gets a hash index, so a key costs O(1). As there, a repeated key
// keeps its first position and takes the last value.
class DepthLimitedDom {
 public:
  DepthLimitedDom(Json& out, int max_depth) : root_(out), max_depth_(max_depth) {}

  bool null() { return put(Json(nullptr)); }
  bool boolean(bool v) { return put(Json(v)); }
  bool number_integer(Json::number_integer_t v) { return put(Json(v)); }
  bool number_unsigned(Json::number_unsigned_t v) { return put(Json(v)); }
  bool number_float(Json::number_float_t v, const Json::string_t&) { return put(Json(v)); }
  bool string(Json::string_t& v) { return put(Json(std::move(v))); }
  bool binary(Json::binary_t& v) {
    auto& bytes = static_cast<Json::binary_t::container_type&>(v);
    return put(v.has_subtype() ? Json::binary(std::move(bytes), v.subtype()) : Json::binary(std::move(bytes)));
  }
  bool key(Json::string_t& k);
  bool start_object(std::size_t) { return enter() && open(Json::object()); }
  bool start_array(std::size_t) { return enter() && open(Json::array()); }
  bool end_object() { return close(); }
  bool end_array() { return close(); }
  bool parse_error(std::size_t byte, const std::string&, const Json::exception& e) {
    error_byte_ = byte;
    error_ = e.what();
    return false;
  }

  bool too_deep() const { return too_deep_; }
  const std::string& error() const { return error_; }
  std::size_t error_byte() const { return error_byte_; }

 private:
  static constexpr size_t kIndexFrom = 16;
  struct Open {
    Json* value;
    std::unordered_map<std::string, size_t> index;  // key -> position, once the object is large
  };

  // Places a finished value: the root, the next array element, or the value of the last key.
  Json* place(Json&& v) {
    if (stack_.empty()) {
      root_ = std::move(v);
      return &root_;
    }
    Json& top = *stack_.back().value;
    if (top.is_array()) {
      auto& a = top.get_ref<Json::array_t&>();
      a.push_back(std::move(v));
      return &a.back();
    }
    *element_ = std::move(v);
    return element_;
  }
  bool put(Json&& v) {
    place(std::move(v));
    return true;
  }
  bool open(Json&& container) {
    stack_.push_back({place(std::move(container)), {}});
    return true;
  }
  bool close() {
    --depth_;
    stack_.pop_back();
    return true;
  }
  bool enter() {
    if (++depth_ <= max_depth_) return true;
    too_deep_ = true;
    return false;
  }

  Json& root_;
  std::vector<Open> stack_;
  Json* element_ = nullptr;
  const int max_depth_;
  int depth_ = 0;
  bool too_deep_ = false;
  std::string error_;
  std::size_t error_byte_ = 0;
};

bool DepthLimitedDom::key(Json::string_t& k) {
  Open& o = stack_.back();
  auto& obj = o.value->get_ref<Json::object_t&>();
  if (obj.size() < kIndexFrom) {
    for (auto& [name, value] : obj)
      if (name == k) {
        element_ = &value;
        return true;
      }
  } else {
    if (o.index.empty())
      for (size_t i = 0; i < obj.size(); ++i) o.index.emplace((obj.begin() + i)->first, i);
    auto [it, added] = o.index.emplace(k, obj.size());
    if (!added) {
      element_ = &(obj.begin() + it->second)->second;
      return true;
    }
  }
  // ordered_map is a vector of pairs: appending skips its own linear search for the key.
  obj.Container::emplace_back(std::move(k), nullptr);
  element_ = &obj.back().second;
  return true;
}

Result<Json> parse_limited(std::string_view input, Json::input_format_t format, const std::string& what,
                           int max_depth) {
  const char* kind = format == Json::input_format_t::json ? "JSON" : "MessagePack";
  Json out;
  DepthLimitedDom sax(out, max_depth);
  bool ok = false;
  try {
    ok = Json::sax_parse(input.begin(), input.end(), &sax, format);
  } catch (const Json::exception& e) {  // e.g. a container size past max_size()
    return make_error(what, ": invalid ", kind, ": ", e.what());
  }
  if (sax.too_deep()) return make_error(what, ": ", kind, " nested deeper than ", max_depth, " levels");
  if (!ok) return make_error(what, ": invalid ", kind, " at byte ", sax.error_byte(), ": ", sax.error());
  return out;
}

}  // namespace

Result<Json> parse_json(std::string_view text, const std::string& what, int max_depth) {
  return parse_limited(text, Json::input_format_t::json, what, max_depth);
}

Result<Json> parse_msgpack(std::string_view bytes, const std::string& what, int max_depth) {
  return parse_limited(bytes, Json::input_format_t::msgpack, what, max_depth);
}

}  // namespace baton
