// Command-line flags for the apps: each flag binds to a field of a config struct (STYLE.md 9),
// may have aliases (ATOM's `--kv_cache_dtype` and vLLM's `--kv-cache-dtype`), and is parsed
// once with one-line errors ("--max-tokens: 'abc' is not an integer").
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/result.h"

namespace baton {

class ArgParser {
 public:
  ArgParser(std::string program, std::string summary);

  void add(std::vector<std::string> names, std::string* dst, std::string help);
  // Numbers: int, int64_t, size_t, float, double.
  template <class T>
  void add(std::vector<std::string> names, T* dst, std::string help);
  // A switch: present means true. Also accepts --name=true/false.
  void add_flag(std::vector<std::string> names, bool* dst, std::string help);

  // On --help, prints usage and sets help_requested().
  Status parse(int argc, const char* const* argv);
  bool help_requested() const { return help_; }
  std::string usage() const;

 private:
  struct Flag {
    std::vector<std::string> names;
    std::string help;
    bool takes_value;
    std::string default_text;
    std::function<Status(const std::string&)> set;
  };
  void add_flag_entry(Flag f);

  std::string program_, summary_;
  std::vector<Flag> flags_;
  bool help_ = false;
};

// "1,8,32" -> {1, 8, 32}; an error names the bad item.
Result<std::vector<uint64_t>> parse_uint_list(const std::string& text, const std::string& flag);

// The body of every app's main(): runs `run`, prints "<program>: <message>" on one line on
// failure (exit 1) or on an unexpected exception (exit 2).
int run_main(const char* program, int argc, char** argv, Status (*run)(int, char**));

}  // namespace baton
