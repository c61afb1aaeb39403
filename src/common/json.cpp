#include "common/json.h"

namespace baton {

Result<Json> parse_json(std::string_view text, const std::string& what) {
  try {
    return Json::parse(text.begin(), text.end());
  } catch (const Json::parse_error& e) {
    return make_error(what, ": invalid JSON at byte ", e.byte, ": ", e.what());
  } catch (const Json::exception& e) {  // e.g. a number too large for any type
    return make_error(what, ": invalid JSON: ", e.what());
  }
}

}  // namespace baton
