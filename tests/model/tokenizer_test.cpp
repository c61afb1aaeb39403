#include "model/tokenizer.h"

#include <gtest/gtest.h>

#include "common/utf8.h"
#include "test_util.h"

namespace baton {
namespace {

void expect_goldens(const std::string& tokenizer_dir, const Json& cases) {
  auto tok = Tokenizer::load(tokenizer_dir);
  ASSERT_TRUE(tok.ok()) << tok.error();
  ASSERT_FALSE(cases.empty());
  for (const auto& c : cases) {
    const std::string text = c["text"].get<std::string>();
    SCOPED_TRACE(text);
    auto ids = tok->encode(text);
    ASSERT_TRUE(ids.ok()) << ids.error();
    EXPECT_EQ(*ids, c["ids"].get<std::vector<int>>());
    EXPECT_EQ(tok->decode(*ids), text);
    EXPECT_EQ(tok->decode(*ids), c["decoded"].get<std::string>());
  }
}

TEST(TokenizerTest, SentencePieceBpeMatchesGoldens) {
  BATON_REQUIRE_MODELS();
  auto text = read_file(testing::models_dir() + "/llama2-tokenizer/goldens.json");
  ASSERT_TRUE(text.ok());
  expect_goldens(testing::models_dir() + "/llama2-tokenizer", Json::parse(*text));
}

TEST(TokenizerTest, ByteLevelBpeMatchesGoldens) {
  BATON_REQUIRE_MODELS();
  expect_goldens(testing::models_dir() + "/tiny-qwen3", testing::load_goldens()["bytebpe_tokenizer"]);
}

TEST(TokenizerTest, SpecialTokensAreMatchedAndSkippable) {
  BATON_REQUIRE_MODELS();
  auto tok = Tokenizer::load(testing::models_dir() + "/tiny-qwen3");
  ASSERT_TRUE(tok.ok()) << tok.error();
  auto ids = tok->encode("<|im_start|>user hi<|im_end|>");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->front(), *tok->token_to_id("<|im_start|>"));
  EXPECT_EQ(ids->back(), *tok->token_to_id("<|im_end|>"));
  EXPECT_TRUE(tok->is_special(ids->front()));
  EXPECT_EQ(tok->decode(*ids, /*skip_special_tokens=*/true), "user hi");
  EXPECT_EQ(tok->decode(*ids), "<|im_start|>user hi<|im_end|>");
}

TEST(TokenizerTest, InvalidUtf8IsRejectedWithOffset) {
  BATON_REQUIRE_MODELS();
  auto tok = Tokenizer::load(testing::models_dir() + "/tiny-qwen3");
  ASSERT_TRUE(tok.ok());
  auto ids = tok->encode(std::string("ok\xff", 3));
  ASSERT_FALSE(ids.ok());
  EXPECT_NE(ids.error().find("UTF-8 (byte 2)"), std::string::npos) << ids.error();
}

// Streaming text must equal the full decode and never cut a character, for both decoder kinds.
TEST(TokenizerTest, IncrementalDecodeNeverSplitsCharacters) {
  BATON_REQUIRE_MODELS();
  for (const char* name : {"tiny-qwen3", "llama2-tokenizer"}) {
    auto tok = Tokenizer::load(testing::models_dir() + "/" + name);
    ASSERT_TRUE(tok.ok());
    const std::string text = "  Héllo, 日本語 🤖 world!\n\tbyte-fallback: 🇫🇷 done ";
    auto ids = tok->encode(text, false);
    ASSERT_TRUE(ids.ok());
    IncrementalDecoder dec(*tok, /*skip_special_tokens=*/false);
    std::string streamed;
    for (int id : *ids) {
      std::string delta = dec.add(id);
      EXPECT_TRUE(utf8::is_valid(delta)) << name << ": delta cuts a character";
      streamed += delta;
    }
    streamed += dec.flush();
    EXPECT_EQ(streamed, tok->decode(*ids)) << name;
    EXPECT_EQ(streamed, text) << name;
  }
}

TEST(TokenizerTest, UnknownModelTypeIsAClearError) {
  auto tok = Tokenizer::from_json(Json::parse(R"({"model": {"type": "WordPiece", "vocab": {}}})"), "tok.json");
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.error(), "tok.json: tokenizer model type 'WordPiece' is not supported (BPE is)");
}

TEST(TokenizerTest, MergeWithUnknownTokenIsAClearError) {
  auto tok = Tokenizer::from_json(
      Json::parse(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}})"), "tok.json");
  ASSERT_FALSE(tok.ok());
  EXPECT_NE(tok.error().find("merge #0 ('a', 'b') uses a token not in the vocabulary"), std::string::npos) << tok.error();
}

TEST(TokenizerTest, MissingFileNamesThePath) {
  auto tok = Tokenizer::load("/nonexistent/dir/tokenizer.json");
  ASSERT_FALSE(tok.ok());
  EXPECT_NE(tok.error().find("/nonexistent/dir/tokenizer.json"), std::string::npos);
}

}  // namespace
}  // namespace baton
