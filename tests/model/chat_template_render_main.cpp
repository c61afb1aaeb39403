// Test driver: reads JSON lines {"template", "messages", "add_generation_prompt", "bos_token",
// "eos_token", "extra"} and prints {"text": ...} or {"error": ...} per line.
#include <iostream>

#include "common/json.h"
#include "model/chat_template.h"

int main() {
  std::string line;
  while (std::getline(std::cin, line)) {
    baton::Json out;
    auto in = baton::parse_json(line, "input");
    if (!in.ok()) {
      out["error"] = in.error();
    } else {
      auto t = baton::ChatTemplate::parse((*in)["template"].get<std::string>());
      if (!t.ok()) {
        out["error"] = t.error();
      } else {
        baton::Json extra = in->value("extra", baton::Json::object());
        extra["bos_token"] = in->value("bos_token", "");
        extra["eos_token"] = in->value("eos_token", "");
        auto r = t->render((*in)["messages"], in->value("add_generation_prompt", false), extra);
        if (r.ok()) out["text"] = *r; else out["error"] = r.error();
      }
    }
    std::cout << out.dump(-1, ' ', false, baton::Json::error_handler_t::replace) << "\n";
  }
  return 0;
}
