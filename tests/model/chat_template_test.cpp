// The chat template renderer on real templates as the Hub ships them (Llama 3.x, Qwen 2.5/3/QwQ,
// Mistral Nemo/Small, DeepSeek R1/V3.1) against transformers' renderings of them
// (tests/model/hub_template_goldens.json, written by tests/model/hub_templates.py from the
// templates scripts/setup.sh extracts into .venv/hub-templates), and on the lexer's edge cases.
#include "model/chat_template.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "common/json.h"
#include "common/mapped_file.h"

namespace baton {
namespace {

const std::string kGoldens = std::string(BATON_SOURCE_DIR) + "/tests/model/hub_template_goldens.json";
const std::string kTemplates = std::string(BATON_SOURCE_DIR) + "/.venv/hub-templates";

const Json& goldens() {
  static const Json g = [] {
    auto text = read_file(kGoldens);
    return text.ok() ? Json::parse(*text) : Json::object();
  }();
  return g;
}

std::vector<std::string> template_files() {
  std::vector<std::string> files;
  for (const auto& t : goldens().value("templates", Json::array())) files.push_back(t["file"].get<std::string>());
  return files;
}

std::string fnv1a64(const std::string& data) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char c : data) h = (h ^ c) * 0x100000001B3ull;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

class HubTemplateTest : public ::testing::TestWithParam<std::string> {};

TEST_P(HubTemplateTest, RendersWhatTransformersRenders) {
  const Json* entry = nullptr;
  for (const auto& t : goldens()["templates"])
    if (t["file"] == GetParam()) entry = &t;
  ASSERT_NE(entry, nullptr);
  const std::string path = kTemplates + "/" + GetParam();
  if (!std::filesystem::exists(path)) {
    if (std::getenv("CI")) FAIL() << path << " missing: scripts/setup.sh extracts it";
    GTEST_SKIP() << path << " missing: scripts/setup.sh extracts it";
  }
  auto source = read_file(path);
  ASSERT_TRUE(source.ok()) << source.error();
  ASSERT_EQ(fnv1a64(*source), (*entry)["fnv1a64"].get<std::string>())
      << path << " is not the template the goldens were made from: rerun tests/model/hub_templates.py";
  auto tpl = ChatTemplate::parse(*source);
  ASSERT_TRUE(tpl.ok()) << (*entry)["model"] << ": " << tpl.error();
  const Json& conversations = goldens()["conversations"];
  for (const auto& c : (*entry)["cases"]) {
    const Json& conv = conversations[c["conversation"].get<size_t>()];
    Json extra = goldens()["common"];
    for (const auto& [k, v] : conv["extra"].items()) extra[k] = v;
    const bool gen = c["add_generation_prompt"].get<bool>();
    auto got = tpl->render(conv["messages"], gen, extra);
    SCOPED_TRACE(conv["name"].get<std::string>() + (gen ? ", add_generation_prompt" : ""));
    if (c.contains("error")) {
      EXPECT_FALSE(got.ok()) << "transformers refused: " << c["error"];
    } else {
      ASSERT_TRUE(got.ok()) << got.error();
      EXPECT_EQ(*got, c["text"].get<std::string>());
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Hub, HubTemplateTest, ::testing::ValuesIn(template_files()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name;
                           for (char ch : info.param.substr(0, info.param.rfind('.')))
                             name += std::isalnum(static_cast<unsigned char>(ch)) ? ch : '_';
                           return name;
                         });

TEST(HubTemplateGoldensTest, CoverEveryFamilyTheServerTakes) {
  ASSERT_TRUE(goldens().contains("templates")) << kGoldens << " missing or unreadable";
  std::string models;
  for (const auto& t : goldens()["templates"]) models += t["model"].get<std::string>() + " ";
  for (const char* family : {"Llama-3.1", "Qwen2.5", "Qwen3", "Mistral", "DeepSeek-R1", "DeepSeek-V3"})
    EXPECT_NE(models.find(family), std::string::npos) << family << " has no Hub template in the goldens";
}

std::string render(const std::string& source) {
  auto t = ChatTemplate::parse(source);
  if (!t.ok()) return "<parse error: " + t.error() + ">";
  auto r = t->render(Json::array(), false);
  return r.ok() ? *r : "<render error: " + r.error() + ">";
}

// Jinja ends a tag at its closing delimiter outside strings and brackets (Mistral Nemo writes
// {{- "}}" }}).
TEST(ChatTemplateLexerTest, TagsEndOutsideStringsAndBrackets) {
  EXPECT_EQ(render(R"({{ "}}" }})"), "}}");
  EXPECT_EQ(render(R"({{- '}}' -}})"), "}}");
  EXPECT_EQ(render(R"({% set x = "%}" %}[{{ x }}])"), "[%}]");
  EXPECT_EQ(render(R"({{ {'a': 1}['a'] }}|{{ {'b': {'c': 2}}}})"), R"(1|{'b': {'c': 2}})");
  EXPECT_EQ(render(R"({{ "a\"}}b" }})"), "a\"}}b");
  EXPECT_EQ(render("{# a \"}} #}x"), "x");
}

TEST(ChatTemplateLexerTest, AnUnclosedTagIsAnErrorNamingTheDelimiter) {
  EXPECT_NE(render(R"({{ "}} )").find("missing '}}'"), std::string::npos);
  EXPECT_NE(render("{% if x %}").find("error"), std::string::npos);
}

}  // namespace
}  // namespace baton
