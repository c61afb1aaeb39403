// Helpers shared by the tests: where the reference models live, temporary directories.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "common/json.h"
#include "common/mapped_file.h"
#include "model/random_model.h"

namespace baton::testing {

// ../shared/models beside the checkout, or $BATON_MODELS_DIR.
inline std::string models_dir() {
  if (const char* env = std::getenv("BATON_MODELS_DIR")) return env;
  return BATON_SHARED_MODELS;
}

// Fails (not skips) when CI is set and the models are missing, so a broken checkout is seen.
#define BATON_REQUIRE_MODELS()                                                                          \
  do {                                                                                                   \
    if (!std::filesystem::exists(::baton::testing::models_dir() + "/goldens.json")) {                   \
      if (std::getenv("CI")) FAIL() << "reference models missing at " << ::baton::testing::models_dir(); \
      GTEST_SKIP() << "reference models missing at " << ::baton::testing::models_dir();                 \
    }                                                                                                    \
  } while (0)

inline Json load_goldens() {
  auto text = read_file(models_dir() + "/goldens.json");
  EXPECT_TRUE(text.ok()) << (text.ok() ? "" : text.error());
  return text.ok() ? Json::parse(*text) : Json();
}

// A small random model (fast to write and load) of the given architecture.
inline RandomModelOptions small_model(const std::string& arch = "LlamaForCausalLM") {
  RandomModelOptions o;
  o.architecture = arch;
  o.hidden_size = 64;
  o.intermediate_size = 96;
  o.num_layers = 2;
  o.num_heads = 4;
  o.num_kv_heads = 2;
  o.num_merges = 50;
  return o;
}

// A fresh directory under the test temp dir, removed at destruction.
class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    path_ = std::filesystem::temp_directory_path() /
            ("baton_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string path() const { return path_.string(); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

}  // namespace baton::testing
