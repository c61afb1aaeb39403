#include "common/json.h"

namespace baton {

namespace {

// nlohmann's own DOM builder behind a SAX filter that stops the parse at the first container
// past max_depth. One pass: the limit costs a counter, and nothing deeper is ever built (the
// MessagePack reader recurses per level itself, so a check after parsing would come too late).
class DepthLimitedDom {
 public:
  DepthLimitedDom(Json& out, int max_depth) : dom_(out, /*allow_exceptions=*/false), max_depth_(max_depth) {}

  bool null() { return dom_.null(); }
  bool boolean(bool v) { return dom_.boolean(v); }
  bool number_integer(Json::number_integer_t v) { return dom_.number_integer(v); }
  bool number_unsigned(Json::number_unsigned_t v) { return dom_.number_unsigned(v); }
  bool number_float(Json::number_float_t v, const Json::string_t& s) { return dom_.number_float(v, s); }
  bool string(Json::string_t& v) { return dom_.string(v); }
  bool binary(Json::binary_t& v) { return dom_.binary(v); }
  bool key(Json::string_t& v) { return dom_.key(v); }
  bool start_object(std::size_t n) { return enter() && dom_.start_object(n); }
  bool start_array(std::size_t n) { return enter() && dom_.start_array(n); }
  bool end_object() { return leave() && dom_.end_object(); }
  bool end_array() { return leave() && dom_.end_array(); }
  bool parse_error(std::size_t byte, const std::string&, const Json::exception& e) {
    error_byte_ = byte;
    error_ = e.what();
    return false;
  }

  bool too_deep() const { return too_deep_; }
  const std::string& error() const { return error_; }
  std::size_t error_byte() const { return error_byte_; }

 private:
  bool enter() {
    if (++depth_ <= max_depth_) return true;
    too_deep_ = true;
    return false;
  }
  bool leave() {
    --depth_;
    return true;
  }

  nlohmann::detail::json_sax_dom_parser<Json> dom_;
  const int max_depth_;
  int depth_ = 0;
  bool too_deep_ = false;
  std::string error_;
  std::size_t error_byte_ = 0;
};

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
