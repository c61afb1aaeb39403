// baton-tokenize: encode or decode lines with a tokenizer.json, one JSON line out per line in.
//   echo "Hello world" | baton-tokenize --tokenizer DIR           -> {"ids":[...]}
//   printf '48656c6c6f\n' | baton-tokenize --tokenizer DIR --hex  (input as hex bytes)
//   echo "[15043,3186]" | baton-tokenize --tokenizer DIR --decode -> {"text":"..."}
// A bad line gets {"error":"..."} and the tool goes on.
#include <cstdio>
#include <iostream>
#include <string>

#include "common/cli.h"
#include "common/json.h"
#include "model/tokenizer.h"

namespace {

baton::Result<std::string> from_hex(const std::string& hex) {
  if (hex.size() % 2 != 0) return baton::make_error("odd number of hex digits");
  std::string out;
  for (size_t i = 0; i < hex.size(); i += 2) {
    auto digit = [](char c) { return std::isdigit(static_cast<unsigned char>(c)) ? c - '0' : std::tolower(c) - 'a' + 10; };
    if (!std::isxdigit(static_cast<unsigned char>(hex[i])) || !std::isxdigit(static_cast<unsigned char>(hex[i + 1])))
      return baton::make_error("not hex");
    out += static_cast<char>(digit(hex[i]) * 16 + digit(hex[i + 1]));
  }
  return out;
}

baton::Status run(int argc, char** argv) {
  using namespace baton;
  std::string path;
  bool decode = false, hex = false, no_special = false, skip_special = false;
  ArgParser args("baton-tokenize", "Encode (or decode) each line of standard input with a tokenizer.json.");
  args.add({"--tokenizer"}, &path, "tokenizer.json or a model directory");
  args.add_flag({"--decode"}, &decode, "input lines are JSON id lists; print the text");
  args.add_flag({"--hex"}, &hex, "input lines are hex-encoded bytes");
  args.add_flag({"--no-special"}, &no_special, "encode without the post-processor's special tokens");
  args.add_flag({"--skip-special"}, &skip_special, "decode without special tokens");
  BATON_RETURN_IF_ERROR(args.parse(argc, argv));
  if (args.help_requested()) return {};
  if (path.empty()) return make_error("--tokenizer is required");
  BATON_ASSIGN_OR_RETURN(Tokenizer tok, Tokenizer::load(path));

  std::string line;
  while (std::getline(std::cin, line)) {
    Json out;
    if (decode) {
      auto ids = parse_json(line, "input");
      if (!ids.ok() || !ids->is_array()) {
        out["error"] = "expected a JSON list of ids";
      } else {
        std::vector<int> v;
        for (const auto& x : *ids)
          if (x.is_number_integer()) v.push_back(x.get<int>());
        out["text"] = tok.decode(v, skip_special);
      }
    } else {
      std::string text = line;
      if (hex) {
        auto bytes = from_hex(line);
        if (!bytes.ok()) {
          std::puts(Json({{"error", bytes.error()}}).dump().c_str());
          continue;
        }
        text = *bytes;
      }
      auto ids = tok.encode(text, !no_special);
      if (ids.ok()) {
        out["ids"] = *ids;
      } else {
        out["error"] = ids.error();
      }
    }
    std::puts(out.dump(-1, ' ', false, Json::error_handler_t::replace).c_str());
  }
  return {};
}

}  // namespace

int main(int argc, char** argv) { return baton::run_main("baton-tokenize", argc, argv, run); }
