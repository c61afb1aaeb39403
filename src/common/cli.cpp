#include "common/cli.h"

#include <charconv>
#include <cstdio>
#include <sstream>

namespace baton {
namespace {

template <class T>
Status parse_number(const std::string& name, const std::string& text, T* dst) {
  T v{};
  const char* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(text.data(), end, v);
  if (ec != std::errc() || p != end || text.empty()) {
    if constexpr (std::is_floating_point_v<T>) return make_error(name, ": '", text, "' is not a number");
    return make_error(name, ": '", text, "' is not an integer");
  }
  *dst = v;
  return {};
}

template <class T>
std::string show(const T& v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

}  // namespace

ArgParser::ArgParser(std::string program, std::string summary) : program_(std::move(program)), summary_(std::move(summary)) {}

void ArgParser::add_flag_entry(Flag f) { flags_.push_back(std::move(f)); }

void ArgParser::add(std::vector<std::string> names, std::string* dst, std::string help) {
  add_flag_entry({std::move(names), std::move(help), true, *dst, [dst](const std::string& v) -> Status {
                    *dst = v;
                    return {};
                  }});
}
template <class T>
void ArgParser::add(std::vector<std::string> names, T* dst, std::string help) {
  std::string n = names[0];
  add_flag_entry({std::move(names), std::move(help), true, show(*dst),
                  [dst, n](const std::string& v) { return parse_number(n, v, dst); }});
}
template void ArgParser::add<int>(std::vector<std::string>, int*, std::string);
template void ArgParser::add<int64_t>(std::vector<std::string>, int64_t*, std::string);
template void ArgParser::add<size_t>(std::vector<std::string>, size_t*, std::string);
template void ArgParser::add<float>(std::vector<std::string>, float*, std::string);
template void ArgParser::add<double>(std::vector<std::string>, double*, std::string);

void ArgParser::add_flag(std::vector<std::string> names, bool* dst, std::string help) {
  std::string n = names[0];
  add_flag_entry({std::move(names), std::move(help), false, *dst ? "true" : "false", [dst, n](const std::string& v) -> Status {
                    if (v.empty() || v == "true" || v == "1") {
                      *dst = true;
                    } else if (v == "false" || v == "0") {
                      *dst = false;
                    } else {
                      return make_error(n, ": expected true or false, got '", v, "'");
                    }
                    return {};
                  }});
}

Status ArgParser::parse(int argc, const char* const* argv) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      help_ = true;
      std::fputs(usage().c_str(), stdout);
      return {};
    }
    std::string name = arg, value;
    bool has_value = false;
    if (size_t eq = arg.find('='); arg.rfind("-", 0) == 0 && eq != std::string::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
      has_value = true;
    }
    const Flag* flag = nullptr;
    for (const auto& f : flags_)
      for (const auto& n : f.names)
        if (n == name) flag = &f;
    if (!flag) return make_error("unknown argument '", arg, "' (see --help)");
    if (flag->takes_value && !has_value) {
      if (i + 1 >= argc) return make_error(name, ": missing value");
      value = argv[++i];
    }
    BATON_RETURN_IF_ERROR(flag->set(value));
  }
  return {};
}

std::string ArgParser::usage() const {
  std::ostringstream out;
  out << "usage: " << program_ << " [options]\n" << summary_ << "\n\noptions:\n";
  for (const auto& f : flags_) {
    std::string names;
    for (size_t i = 0; i < f.names.size(); ++i) names += (i ? ", " : "") + f.names[i];
    out << "  " << names << (f.takes_value ? " VALUE" : "") << "\n      " << f.help;
    if (!f.default_text.empty()) out << " (default: " << f.default_text << ")";
    out << "\n";
  }
  return out.str();
}

Result<std::vector<uint64_t>> parse_uint_list(const std::string& text, const std::string& flag) {
  std::vector<uint64_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    uint64_t v = 0;
    BATON_RETURN_IF_ERROR(parse_number(flag, item, &v));
    out.push_back(v);
  }
  if (out.empty()) return make_error(flag, ": empty list");
  return out;
}

int run_main(const char* program, int argc, char** argv, Status (*run)(int, char**)) {
  try {
    Status s = run(argc, argv);
    if (!s.ok()) {
      std::fprintf(stderr, "%s: %s\n", program, s.message().c_str());
      return 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: internal error: %s\n", program, e.what());
    return 2;
  }
  return 0;
}

}  // namespace baton
