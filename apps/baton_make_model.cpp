// baton-make-model: write a random-weight Hugging Face model directory (Llama family, byte-level
// BPE tokenizer). Its output text is noise; it exists so that the demo and tests run anywhere.
#include <cstdio>

#include "common/cli.h"
#include "model/random_model.h"

int main(int argc, char** argv) {
  using namespace baton;
  RandomModelOptions o;
  std::string out;
  int64_t seed = static_cast<int64_t>(o.seed);
  ArgParser args("baton-make-model", "Write a small random-weight model directory (its text is random).");
  args.add({"--out"}, &out, "directory to write");
  args.add({"--architecture"}, &o.architecture, "LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, MistralForCausalLM");
  args.add({"--hidden-size"}, &o.hidden_size, "hidden size");
  args.add({"--intermediate-size"}, &o.intermediate_size, "MLP size");
  args.add({"--num-layers"}, &o.num_layers, "layers");
  args.add({"--num-heads"}, &o.num_heads, "attention heads");
  args.add({"--num-kv-heads"}, &o.num_kv_heads, "KV heads");
  args.add({"--head-dim"}, &o.head_dim, "head dim (0 = hidden / heads)");
  args.add({"--max-position-embeddings"}, &o.max_position_embeddings, "context length");
  args.add({"--num-merges"}, &o.num_merges, "BPE merges to learn");
  args.add({"--dtype"}, &o.dtype, "bfloat16 or float32");
  args.add({"--seed"}, &seed, "weight seed");
  Status s = args.parse(argc, argv);
  if (s.ok() && args.help_requested()) return 0;
  if (s.ok() && out.empty()) s = make_error("--out is required");
  if (s.ok()) {
    o.seed = static_cast<uint64_t>(seed);
    s = write_random_model(out, o);
  }
  if (!s.ok()) {
    std::fprintf(stderr, "baton-make-model: %s\n", s.message().c_str());
    return 1;
  }
  std::fprintf(stderr, "wrote a random-weight %s to %s (its text is random)\n", o.architecture.c_str(), out.c_str());
  return 0;
}
