#include "model/random_model.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <cstring>
#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include "common/float16.h"
#include "common/json.h"
#include "model/regex.h"
#include "model/safetensors.h"
#include "model/tokenizer_stages.h"

namespace baton {
namespace {

// Training text for the demo tokenizer (written for this project).
constexpr const char* kCorpus = R"(The quick brown fox jumps over the lazy dog. A serving engine turns requests into tokens.
Once upon a time, there was a little robot who lived in a data center. Every morning the robot
checked the queues, counted the blocks of memory that were free, and greeted the new requests.
Some requests were short and some were long. The long ones asked for many tokens, and the robot
split their prompts into chunks so that nobody had to wait too long for the first word.
When the prefill was done, the robot handed the cache to its friend, the decoder, who wrote one
token after another and sent each of them back to the user as soon as it was ready.
Numbers like 1, 2, 3, 10, 42, 100, 2024 and 3.14159 appear in text, and so do symbols: (a + b) * c = d;
{"key": "value", "list": [1, 2, 3]} <tag> #hash @user! What? Yes. No... Maybe - perhaps.
def main():
    print("hello, world")
    for i in range(10):
        if i % 2 == 0:
            continue
    return 0
In the evening the robot wrote a report: how many requests arrived, how long the first token took,
how many tokens per second the decoder produced, and whether any request was lost. None was lost.
The people who ran the fleet were happy, because their models answered quickly and nothing broke.
They said thank you to the robot, and the robot said: you are welcome, see you tomorrow.
)";

constexpr const char* kChatTemplate =
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

// Learns byte-level BPE merges from kCorpus; returns vocab (token -> id) and merges in order.
Status train_bpe(int num_merges, Json& vocab, Json& merges) {
  BATON_ASSIGN_OR_RETURN(Regex re, Regex::compile(kByteLevelPattern));
  std::string corpus = kCorpus;
  std::map<std::vector<std::string>, int> words;
  for (auto [b, e] : re.find_all(corpus)) {
    std::vector<std::string> symbols;
    for (size_t i = b; i < e; ++i) symbols.push_back(byte_level_char(static_cast<unsigned char>(corpus[i])));
    ++words[symbols];
  }
  int next_id = 0;
  for (int b = 0; b < 256; ++b) vocab[byte_level_char(static_cast<unsigned char>(b))] = next_id++;
  for (int m = 0; m < num_merges; ++m) {
    std::map<std::pair<std::string, std::string>, int> pairs;
    for (const auto& [w, n] : words)
      for (size_t i = 0; i + 1 < w.size(); ++i) pairs[{w[i], w[i + 1]}] += n;
    const std::pair<std::string, std::string>* best = nullptr;
    int best_n = 1;
    for (const auto& [p, n] : pairs)
      if (n > best_n) best = &p, best_n = n;  // map order breaks ties deterministically
    if (!best) break;
    auto [left, right] = *best;
    std::string joined = left + right;
    if (!vocab.contains(joined)) vocab[joined] = next_id++;
    merges.push_back(Json::array({left, right}));
    std::map<std::vector<std::string>, int> merged;
    for (const auto& [w, n] : words) {
      std::vector<std::string> out;
      for (size_t i = 0; i < w.size(); ++i) {
        if (i + 1 < w.size() && w[i] == left && w[i + 1] == right) {
          out.push_back(joined);
          ++i;
        } else {
          out.push_back(w[i]);
        }
      }
      merged[out] += n;
    }
    words = std::move(merged);
  }
  return {};
}

// Fills a tensor with N(0, 0.02)-like values (or ones), in parallel: each chunk of 1M elements
// has its own splitmix64 stream, so the values depend only on the seed and the shape, not on the
// thread count. Each value is the sum of four uniforms (Irwin-Hall), close enough to a normal for
// a random model and cheap: Llama-3.1-8B's 8B weights take seconds, not minutes.
void fill_weights(TensorData& t, bool ones, uint64_t seed) {
  const bool bf16 = t.dtype == DType::kBF16;
  const int64_t n = static_cast<int64_t>(t.bytes.size() / dtype_size(t.dtype));
  constexpr int64_t kChunk = 1 << 20;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  auto fill = [&](int64_t c) {
    uint64_t state = seed ^ (0xD1B54A32D192ED03ull * static_cast<uint64_t>(c + 1));
    auto next = [&state] {
      uint64_t z = (state += 0x9E3779B97F4A7C15ull);
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      return z ^ (z >> 31);
    };
    // Four 16-bit uniforms per draw: their sum has mean 4 * 32767.5 and standard deviation
    // 65536 / sqrt(3); kScale maps that to 0.02.
    constexpr float kScale = 0.02f * 1.7320508f / 65536.0f;
    for (int64_t i = c * kChunk, e = std::min(n, i + kChunk); i < e; ++i) {
      float v = 1.0f;
      if (!ones) {
        const uint64_t r = next();
        const float sum = static_cast<float>((r & 0xFFFF) + ((r >> 16) & 0xFFFF) + ((r >> 32) & 0xFFFF) + (r >> 48));
        v = (sum - 4 * 32767.5f) * kScale;
      }
      if (bf16) {
        const uint16_t b = f32_to_bf16(v);
        std::memcpy(t.bytes.data() + 2 * i, &b, 2);
      } else {
        std::memcpy(t.bytes.data() + 4 * i, &v, 4);
      }
    }
  };
  const int64_t threads = std::min<int64_t>(chunks, std::max(1u, std::thread::hardware_concurrency()));
  if (threads <= 1) {
    for (int64_t c = 0; c < chunks; ++c) fill(c);
    return;
  }
  std::atomic<int64_t> next_chunk{0};
  std::vector<std::thread> pool;
  for (int64_t k = 0; k < threads; ++k)
    pool.emplace_back([&] {
      for (int64_t c; (c = next_chunk.fetch_add(1)) < chunks;) fill(c);
    });
  for (auto& th : pool) th.join();
}

Status write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  if (!f) return make_error(path.string(), ": write failed");
  return {};
}

}  // namespace

Status write_random_model(const std::string& dir, const RandomModelOptions& o) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return make_error(dir, ": ", ec.message());
  const bool bf16 = o.dtype == "bfloat16";
  if (!bf16 && o.dtype != "float32") return make_error("dtype must be bfloat16 or float32");
  const int head_dim = o.head_dim > 0 ? o.head_dim : o.hidden_size / o.num_heads;

  // Tokenizer first: it fixes the vocabulary size.
  Json vocab = Json::object(), merges = Json::array();
  BATON_RETURN_IF_ERROR(train_bpe(o.num_merges, vocab, merges));
  const std::vector<std::string> specials = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
  Json added = Json::array();
  int next_id = static_cast<int>(vocab.size());
  for (const auto& s : specials)
    added.push_back({{"id", next_id++}, {"content", s}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                     {"normalized", false}, {"special", true}});
  const int vocab_size = next_id;
  const int eos_id = added[2]["id"].get<int>();
  Json tokenizer = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
        {"vocab", vocab}, {"merges", merges}}}};
  BATON_RETURN_IF_ERROR(write_text(fs::path(dir) / "tokenizer.json", tokenizer.dump(1)));
  Json tok_config = {{"eos_token", "<|im_end|>"}, {"pad_token", "<|endoftext|>"}, {"chat_template", kChatTemplate},
                     {"tokenizer_class", "PreTrainedTokenizerFast"}, {"model_max_length", o.max_position_embeddings}};
  BATON_RETURN_IF_ERROR(write_text(fs::path(dir) / "tokenizer_config.json", tok_config.dump(2)));

  Json config = {{"architectures", {o.architecture}},
                 {"hidden_size", o.hidden_size},
                 {"intermediate_size", o.intermediate_size},
                 {"num_hidden_layers", o.num_layers},
                 {"num_attention_heads", o.num_heads},
                 {"num_key_value_heads", o.num_kv_heads},
                 {"head_dim", head_dim},
                 {"hidden_act", "silu"},
                 {"max_position_embeddings", o.max_position_embeddings},
                 {"rms_norm_eps", 1e-6},
                 {"rope_theta", 10000.0},
                 {"vocab_size", vocab_size},
                 {"tie_word_embeddings", o.tie_word_embeddings},
                 {"eos_token_id", eos_id},
                 {"torch_dtype", o.dtype},
                 {"baton_random_weights", true}};
  BATON_RETURN_IF_ERROR(write_text(fs::path(dir) / "config.json", config.dump(2)));
  BATON_RETURN_IF_ERROR(write_text(fs::path(dir) / "generation_config.json", Json({{"eos_token_id", eos_id}}).dump(2)));

  std::vector<TensorData> tensors;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, bool ones) {
    TensorData t;
    t.name = name;
    t.dtype = bf16 ? DType::kBF16 : DType::kF32;
    t.shape = shape;
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    t.bytes.resize(static_cast<size_t>(n) * dtype_size(t.dtype));
    fill_weights(t, ones, o.seed + 0x9E3779B97F4A7C15ull * (tensors.size() + 1));
    tensors.push_back(std::move(t));
  };
  const int64_t H = o.hidden_size, I = o.intermediate_size, Q = int64_t{o.num_heads} * head_dim,
                KV = int64_t{o.num_kv_heads} * head_dim;
  const bool qwen2 = o.architecture == "Qwen2ForCausalLM", qwen3 = o.architecture == "Qwen3ForCausalLM";
  add("model.embed_tokens.weight", {vocab_size, H}, false);
  // Zero the rows of single non-ASCII and control bytes: their logits are then 0 while real
  // tokens' are random around it, so greedy noise is readable text rather than broken UTF-8.
  auto mute_raw_bytes = [&](TensorData& t) {
    const size_t row = static_cast<size_t>(H) * dtype_size(t.dtype);
    for (int b = 0; b < 256; ++b)
      if (b >= 0x80 || (b < 0x20 && b != '\n'))
        std::memset(t.bytes.data() + static_cast<size_t>(vocab[byte_level_char(static_cast<unsigned char>(b))].get<int>()) * row, 0, row);
  };
  mute_raw_bytes(tensors.back());
  for (int l = 0; l < o.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {H}, true);
    add(p + "self_attn.q_proj.weight", {Q, H}, false);
    add(p + "self_attn.k_proj.weight", {KV, H}, false);
    add(p + "self_attn.v_proj.weight", {KV, H}, false);
    add(p + "self_attn.o_proj.weight", {H, Q}, false);
    if (qwen2) {
      add(p + "self_attn.q_proj.bias", {Q}, false);
      add(p + "self_attn.k_proj.bias", {KV}, false);
      add(p + "self_attn.v_proj.bias", {KV}, false);
    }
    if (qwen3) {
      add(p + "self_attn.q_norm.weight", {head_dim}, true);
      add(p + "self_attn.k_norm.weight", {head_dim}, true);
    }
    add(p + "post_attention_layernorm.weight", {H}, true);
    add(p + "mlp.gate_proj.weight", {I, H}, false);
    add(p + "mlp.up_proj.weight", {I, H}, false);
    add(p + "mlp.down_proj.weight", {H, I}, false);
  }
  add("model.norm.weight", {H}, true);
  if (!o.tie_word_embeddings) {
    add("lm_head.weight", {vocab_size, H}, false);
    mute_raw_bytes(tensors.back());
  }
  return write_safetensors((fs::path(dir) / "model.safetensors").string(), tensors);
}

}  // namespace baton
