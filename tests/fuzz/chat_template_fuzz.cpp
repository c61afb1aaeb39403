// libFuzzer target: chat templates. Parsing and rendering arbitrary template text must end in
// text or an error, never a crash, a hang or unbounded output.
#include <cstdint>
#include <string_view>

#include "model/chat_template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace baton;
  std::string_view src(reinterpret_cast<const char*>(data), size);
  auto t = ChatTemplate::parse(src);
  if (!t.ok()) return 0;
  Json messages = Json::parse(R"([{"role":"system","content":"sys"},{"role":"user","content":"hi 🤖"},
                                   {"role":"assistant","content":"ok"}])");
  (void)t->render(messages, true);
  return 0;
}
