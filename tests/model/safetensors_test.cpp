// Corrupt checkpoints and configs give one-line errors that say what is wrong, never a crash.
#include "model/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "backend/backend.h"
#include "model/config.h"
#include "model/random_model.h"
#include "test_util.h"

namespace baton {
namespace {

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f << bytes;
}

std::string safetensors_bytes(const std::string& header, size_t data_bytes) {
  uint64_t n = header.size();
  std::string out(reinterpret_cast<const char*>(&n), 8);
  return out + header + std::string(data_bytes, '\0');
}

void expect_one_line_error(const Status& s, const std::string& needle) {
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find(needle), std::string::npos) << s.message();
  EXPECT_EQ(s.message().find('\n'), std::string::npos) << "multi-line error: " << s.message();
}

TEST(SafetensorsTest, RoundTripsWhatItWrites) {
  testing::TempDir dir;
  TensorData t{"w", DType::kF32, {2, 3}, std::vector<std::byte>(24)};
  float vals[6] = {1, 2, 3, 4, 5, 6};
  std::memcpy(t.bytes.data(), vals, 24);
  ASSERT_TRUE(write_safetensors(dir.file("a.safetensors"), {t}).ok());
  auto f = SafetensorsFile::open(dir.file("a.safetensors"));
  ASSERT_TRUE(f.ok()) << f.error();
  const TensorView& v = f->tensors().at("w");
  EXPECT_EQ(v.shape, (std::vector<int64_t>{2, 3}));
  std::vector<float> out(6);
  convert_to_f32(v, out);
  EXPECT_EQ(out[5], 6.0f);
}

TEST(SafetensorsTest, TruncatedFile) {
  testing::TempDir dir;
  write_bytes(dir.file("t.safetensors"), "abc");
  expect_one_line_error(SafetensorsFile::open(dir.file("t.safetensors")).status(), "file too short");
}

TEST(SafetensorsTest, HeaderLengthPastEof) {
  testing::TempDir dir;
  std::string bytes = safetensors_bytes("{}", 0);
  uint64_t huge = 1ull << 40;
  std::memcpy(bytes.data(), &huge, 8);
  write_bytes(dir.file("t.safetensors"), bytes);
  expect_one_line_error(SafetensorsFile::open(dir.file("t.safetensors")).status(), "runs past the end of the file");
}

TEST(SafetensorsTest, TruncatedData) {
  testing::TempDir dir;
  write_bytes(dir.file("t.safetensors"),
              safetensors_bytes(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8));
  expect_one_line_error(SafetensorsFile::open(dir.file("t.safetensors")).status(), "data_offsets out of range");
}

TEST(SafetensorsTest, WrongDtypeString) {
  testing::TempDir dir;
  write_bytes(dir.file("t.safetensors"),
              safetensors_bytes(R"({"w":{"dtype":"Q4_K","shape":[4],"data_offsets":[0,16]}})", 16));
  expect_one_line_error(SafetensorsFile::open(dir.file("t.safetensors")).status(),
                        "dtype 'Q4_K' is not supported");
}

TEST(SafetensorsTest, ShapeDisagreesWithBytes) {
  testing::TempDir dir;
  write_bytes(dir.file("t.safetensors"),
              safetensors_bytes(R"({"w":{"dtype":"BF16","shape":[3],"data_offsets":[0,16]}})", 16));
  expect_one_line_error(SafetensorsFile::open(dir.file("t.safetensors")).status(), "needs 3 elements");
}

TEST(SafetensorsTest, HeaderNotJson) {
  testing::TempDir dir;
  write_bytes(dir.file("t.safetensors"), safetensors_bytes("{not json", 0));
  expect_one_line_error(SafetensorsFile::open(dir.file("t.safetensors")).status(), "invalid JSON");
}

// A model directory whose tensors do not fit its config.
TEST(ModelDirTest, ShapeMismatchWithConfigNamesTheTensor) {
  testing::TempDir dir;
  ASSERT_TRUE(write_random_model(dir.path(), testing::small_model()).ok());
  auto cfg_text = read_file(dir.file("config.json"));
  Json cfg = Json::parse(*cfg_text);
  cfg["intermediate_size"] = 48;
  write_bytes(dir.file("config.json"), cfg.dump());
  auto b = create_cpu_backend(dir.path(), {});
  expect_one_line_error(b.status(), "tensor 'model.layers.0.mlp.gate_proj.weight' has shape [96, 64] but the config implies [48, 64]");
}

TEST(ModelDirTest, MissingSafetensors) {
  testing::TempDir dir;
  ASSERT_TRUE(write_random_model(dir.path(), testing::small_model()).ok());
  std::filesystem::remove(dir.file("model.safetensors"));
  expect_one_line_error(create_cpu_backend(dir.path(), {}).status(), "no *.safetensors files");
}

TEST(ConfigTest, MissingKey) {
  auto c = ModelConfig::from_json(Json::parse(R"({"architectures":["LlamaForCausalLM"],"hidden_size":64})"));
  expect_one_line_error(c.status(), "config.json: missing key 'intermediate_size'");
}

TEST(ConfigTest, WrongType) {
  auto c = ModelConfig::from_json(Json::parse(R"({"architectures":["LlamaForCausalLM"],"hidden_size":"big"})"));
  expect_one_line_error(c.status(), "key 'hidden_size' has the wrong type (string)");
}

TEST(ConfigTest, UnsupportedArchitecture) {
  auto c = ModelConfig::from_json(Json::parse(R"({"architectures":["GPT2LMHeadModel"]})"));
  expect_one_line_error(c.status(), "architecture 'GPT2LMHeadModel' is not supported");
}

TEST(ConfigTest, KvHeadsMustDivideHeads) {
  auto c = ModelConfig::from_json(Json::parse(R"({"architectures":["LlamaForCausalLM"],"hidden_size":64,
    "intermediate_size":128,"num_hidden_layers":1,"num_attention_heads":8,"num_key_value_heads":3,"vocab_size":10})"));
  expect_one_line_error(c.status(), "num_key_value_heads (3) does not divide num_attention_heads (8)");
}

TEST(ConfigTest, ReadsBothRopeSpellings) {
  const char* base = R"({"architectures":["LlamaForCausalLM"],"hidden_size":64,"intermediate_size":128,
    "num_hidden_layers":1,"num_attention_heads":4,"vocab_size":10)";
  auto old_style = ModelConfig::from_json(Json::parse(std::string(base) + R"(,"rope_theta":500000.0,
    "rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
    "original_max_position_embeddings":8192}})"));
  ASSERT_TRUE(old_style.ok()) << old_style.error();
  auto new_style = ModelConfig::from_json(Json::parse(std::string(base) + R"(,"rope_parameters":{"rope_theta":500000.0,
    "rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
    "original_max_position_embeddings":8192}})"));
  ASSERT_TRUE(new_style.ok()) << new_style.error();
  for (const ModelConfig* c : {&*old_style, &*new_style}) {
    EXPECT_EQ(c->rope.type, RopeConfig::Type::kLlama3);
    EXPECT_EQ(c->rope.theta, 500000.0);
    EXPECT_EQ(c->rope.factor, 8.0);
    EXPECT_EQ(c->rope.original_max_position, 8192);
    EXPECT_EQ(c->head_dim, 16);
  }
}

TEST(ConfigTest, UnknownRopeTypeIsRefused) {
  auto c = ModelConfig::from_json(Json::parse(R"({"architectures":["LlamaForCausalLM"],"hidden_size":64,
    "intermediate_size":128,"num_hidden_layers":1,"num_attention_heads":4,"vocab_size":10,
    "rope_scaling":{"rope_type":"longrope","factor":2.0}})"));
  expect_one_line_error(c.status(), "rope type 'longrope' is not supported");
}

}  // namespace
}  // namespace baton
