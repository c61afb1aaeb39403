#!/usr/bin/env python3
"""Reference side of the CUDA backend's checks, run on the GPU machine (PyTorch + transformers).

  make DIR                      random-weight models with the shapes of Qwen2.5-0.5B and
                                Llama-3.2-1B (from config, no download), bf16 safetensors
  greedy MODEL OUT_PREFIX       8 prompts -> OUT_PREFIX.prompts.jsonl (token ids, baton-generate's
                                --prompts-file) and OUT_PREFIX.hf.json: 32 greedy tokens per prompt
                                from transformers in fp32, with the top-1/top-2 logit margin per step;
                                OUT_PREFIX.forced.jsonl: every prompt + the first k of its fp32 greedy
                                tokens (k = 0..31), to be run for one token each (teacher forcing)
  compare OUT_PREFIX OURS.jsonl [--forced OURS_FORCED.jsonl]
                                exact matches; where a continuation diverges, transformers' margin
                                at that step (a near-tie is where bf16 and fp32 may disagree); with
                                --forced, every teacher-forced step: equal to transformers fp32's
                                token, or else fp32's margin there and whether ours is its second
  generate MODEL --batches 1,8,64 --prompt 128 --new 128 --json OUT
                                transformers' generate() output tokens/s (bf16, static cache)
  same A.jsonl B.jsonl [--ref OUT_PREFIX.hf.json] [--json OUT]
                                two baton runs of the same prompts (tp=1 vs tp=2, colocated vs P/D):
                                equal outputs, and transformers' margin where one diverges
  bf16-error MODELS_DIR         how far transformers itself lands from its fp32 goldens
                                (goldens.json) when it runs the test models in bf16 (RoPE
                                frequencies rounded as the goldens had them)
"""
import argparse
import json
import os
import sys
import time

import torch
import transformers

SHAPES = {
    "qwen2.5-0.5b": dict(
        architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=896, intermediate_size=4864,
        num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
        max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
        use_sliding_window=False, bos_token_id=151643, eos_token_id=151643),
    "llama3.2-1b": dict(
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=2048, intermediate_size=8192,
        num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True,
        rope_scaling=dict(factor=32.0, high_freq_factor=4.0, low_freq_factor=1.0,
                          original_max_position_embeddings=8192, rope_type="llama3"),
        bos_token_id=128000, eos_token_id=128001),
}
PROMPT_LENS = [5, 17, 33, 64, 100, 150, 200, 257]
NEW_TOKENS = 32


def make(args):
    for name, kw in SHAPES.items():
        out = os.path.join(args.dir, name)
        if os.path.exists(os.path.join(out, "config.json")):
            continue
        cfg = transformers.AutoConfig.for_model(kw["model_type"], **{k: v for k, v in kw.items() if k != "model_type"})
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
        model.save_pretrained(out)
        print(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters -> {out}")
        del model
        torch.cuda.empty_cache()


def load(path, dtype):
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to("cuda")
    model.eval()
    return model


def greedy(args):
    cfg = json.load(open(os.path.join(args.model, "config.json")))
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, cfg["vocab_size"], (n,), generator=gen).tolist() for n in PROMPT_LENS]
    with open(args.out_prefix + ".prompts.jsonl", "w") as f:
        for p in prompts:
            f.write(json.dumps(p) + "\n")
    rows = [{"prompt_len": len(p)} for p in prompts]
    for dtype, key in ((torch.float32, "greedy_ids"), (torch.bfloat16, "bf16_greedy_ids")):
        model = load(args.model, dtype)
        with torch.no_grad():
            for row, p in zip(rows, prompts):
                ids = torch.tensor([p], device="cuda")
                out = model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                                     output_scores=True, return_dict_in_generate=True, pad_token_id=0)
                row[key] = out.sequences[0, len(p):].tolist()
                if dtype == torch.float32:
                    top2 = [torch.topk(s[0].float(), 2) for s in out.scores]
                    row["margins"] = [float(t.values[0] - t.values[1]) for t in top2]
                    row["second_ids"] = [int(t.indices[1]) for t in top2]
                else:
                    # bf16 teacher-forced on fp32's tokens: one forward pass, the argmax at each step
                    # (EOS masked as generate's min_new_tokens masks it).
                    seq = torch.tensor([p + row["greedy_ids"][:-1]], device="cuda")
                    logits = model(seq).logits[0, len(p) - 1:].float()
                    logits[:, cfg["eos_token_id"]] = -float("inf")
                    row["bf16_forced_ids"] = logits.argmax(-1).tolist()
        del model
        torch.cuda.empty_cache()
    json.dump(rows, open(args.out_prefix + ".hf.json", "w"))
    with open(args.out_prefix + ".forced.jsonl", "w") as f:
        for row, p in zip(rows, prompts):
            for k in range(NEW_TOKENS):
                f.write(json.dumps(p + row["greedy_ids"][:k]) + "\n")
    print(f"{args.model}: {len(rows)} greedy references")


def agree(a, b):
    """Tokens before the first difference."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def compare(args):
    ref = json.load(open(args.out_prefix + ".hf.json"))
    ours = [json.loads(line)["token_ids"] for line in open(args.ours) if line.strip()]
    if len(ours) != len(ref):
        sys.exit(f"{len(ours)} outputs for {len(ref)} prompts")
    exact, report = 0, []
    hf_bf16_exact = sum(r["bf16_greedy_ids"] == r["greedy_ids"] for r in ref)
    for r, o in zip(ref, ours):
        want = r["greedy_ids"]
        if o == want:
            exact += 1
            continue
        k = agree(o, want)
        report.append({"prompt_len": r["prompt_len"], "first_divergence": k,
                       "hf_margin_there": r["margins"][k] if k < len(r["margins"]) else None,
                       "min_hf_margin_before": min(r["margins"][:k]) if k else None})
    summary = {"prompts": len(ref), "baton_bf16_equal_to_hf_fp32": exact, "hf_bf16_equal_to_hf_fp32": hf_bf16_exact,
               "baton_mean_agreeing_tokens": sum(agree(o, r["greedy_ids"]) for r, o in zip(ref, ours)) / len(ref),
               "hf_bf16_mean_agreeing_tokens": sum(agree(r["bf16_greedy_ids"], r["greedy_ids"]) for r in ref) / len(ref),
               "divergences": report}
    if args.forced:
        forced = [json.loads(line)["token_ids"] for line in open(args.forced) if line.strip()]
        steps = [(i, k) for i in range(len(ref)) for k in range(len(ref[i]["greedy_ids"]))]
        if len(forced) != len(steps) or any(len(f) != 1 for f in forced):
            sys.exit(f"--forced: {len(forced)} outputs for {len(steps)} steps, one token each expected")
        misses = []
        for (i, k), f in zip(steps, forced):
            r = ref[i]
            if f[0] != r["greedy_ids"][k]:
                misses.append({"prompt": i, "step": k, "hf_fp32_margin": r["margins"][k],
                               "ours_is_hf_second": f[0] == r["second_ids"][k]})
        bf16_misses = [r["margins"][k] for i, r in enumerate(ref) for k, t in enumerate(r["bf16_forced_ids"])
                       if t != r["greedy_ids"][k]]
        summary["forced"] = {
            "steps": len(steps), "baton_equal": len(steps) - len(misses),
            "baton_misses_all_hf_second": all(m["ours_is_hf_second"] for m in misses),
            "baton_max_margin_missed": max((m["hf_fp32_margin"] for m in misses), default=None),
            "hf_bf16_equal": len(steps) - len(bf16_misses), "hf_bf16_max_margin_missed": max(bf16_misses, default=None),
            "baton_misses": misses}
    print(json.dumps(summary))
    json.dump(summary, open(args.out_prefix + ".compare.json", "w"))


def same(args):
    """Two baton runs of the same prompts (tp=1 vs tp=2, colocated vs P/D): equal outputs, and where
    one differs, transformers' fp32 margin at that token (a near-tie or not)."""
    a = [json.loads(line)["token_ids"] for line in open(args.a) if line.strip()]
    b = [json.loads(line)["token_ids"] for line in open(args.b) if line.strip()]
    ref = json.load(open(args.ref)) if args.ref else None
    if len(a) != len(b):
        sys.exit(f"{len(a)} vs {len(b)} outputs")
    diverged = []
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            k = agree(x, y)
            margin = ref[i]["margins"][k] if ref and k < len(ref[i]["margins"]) and ref[i]["greedy_ids"][:k] == x[:k] else None
            diverged.append({"prompt": i, "first_divergence": k, "hf_fp32_margin_there": margin})
    summary = {"prompts": len(a), "equal": len(a) - len(diverged), "tokens_per_prompt": len(a[0]) if a else 0,
               "mean_agreeing_tokens": sum(agree(x, y) for x, y in zip(a, b)) / max(1, len(a)), "divergences": diverged}
    print(json.dumps(summary))
    if args.json:
        json.dump(summary, open(args.json, "w"))


def generate(args):
    cfg = json.load(open(os.path.join(args.model, "config.json")))
    model = load(args.model, torch.bfloat16)
    rows = []
    for b in [int(x) for x in args.batches.split(",")]:
        ids = torch.randint(0, cfg["vocab_size"], (b, args.prompt), device="cuda")
        kw = dict(max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False, cache_implementation="static",
                  pad_token_id=0)
        with torch.no_grad():
            model.generate(ids, **kw)  # warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model.generate(ids, **kw)
            torch.cuda.synchronize()
            s = time.perf_counter() - t0
        produced = b * (out.shape[1] - args.prompt)
        rows.append({"batch": b, "prompt": args.prompt, "new_tokens": args.new, "s": s, "tokens_per_s": produced / s})
        print(f"transformers generate batch {b:3d}, prompt {args.prompt}, {args.new} new: {s:.3f} s, "
              f"{produced / s:.0f} tok/s")
    json.dump({"transformers": transformers.__version__, "torch": torch.__version__, "generate": rows},
              open(args.json, "w"))


def bf16_error(args):
    goldens = json.load(open(os.path.join(args.models, "goldens.json")))
    report = {}
    for name, cases in goldens.items():
        if not os.path.exists(os.path.join(args.models, name, "config.json")):
            continue
        model = load(os.path.join(args.models, name), torch.bfloat16)
        # The goldens were computed with a bf16 checkpoint's RoPE frequencies rounded to bf16 (what
        # baton's --rope-bf16-frequencies reproduces); transformers now keeps them in fp32. Round
        # them here too, so that this measures bf16 compute alone.
        if json.load(open(os.path.join(args.models, name, "config.json"))).get("dtype") == "bfloat16":
            rotary = model.model.rotary_emb
            rotary.inv_freq.copy_(rotary.inv_freq.bfloat16().float())
        worst = 0.0
        with torch.no_grad():
            for c in cases:
                logits = model(torch.tensor([c["prompt_ids"]], device="cuda")).logits[0, -1].float().cpu()
                for i, v in zip(c["last_logits_top5_ids"], c["last_logits_top5"]):
                    worst = max(worst, abs(float(logits[i]) - v) / max(1.0, abs(v)))
                for i, v in enumerate(c["logits_first8_of_last"]):
                    worst = max(worst, abs(float(logits[i]) - v) / max(1.0, abs(v)))
        report[name] = worst
        print(f"transformers bf16 vs its fp32 goldens, {name}: max relative logit error {worst:.4f}")
    json.dump(report, open(args.json, "w"))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("make"); p.add_argument("dir"); p.set_defaults(fn=make)
    p = sub.add_parser("greedy"); p.add_argument("model"); p.add_argument("out_prefix"); p.set_defaults(fn=greedy)
    p = sub.add_parser("compare"); p.add_argument("out_prefix"); p.add_argument("ours")
    p.add_argument("--forced", default=""); p.set_defaults(fn=compare)
    p = sub.add_parser("generate"); p.add_argument("model"); p.add_argument("--batches", default="1,8,64")
    p.add_argument("--prompt", type=int, default=128); p.add_argument("--new", type=int, default=128)
    p.add_argument("--json", required=True); p.set_defaults(fn=generate)
    p = sub.add_parser("same"); p.add_argument("a"); p.add_argument("b"); p.add_argument("--ref", default="")
    p.add_argument("--json", default=""); p.set_defaults(fn=same)
    p = sub.add_parser("bf16-error"); p.add_argument("models"); p.add_argument("--json", required=True)
    p.set_defaults(fn=bf16_error)
    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
