#!/usr/bin/env python3
"""e2e: the command-line tools as a user runs them. baton-make-model writes a random model,
baton-generate runs it (text and JSON), and bad input gets a one-line error and exit code 1.

usage: generate_cli_test.py --bin-dir build/apps --models ../shared/models
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print(f"FAIL: {what}")


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=300, **kw)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--models", required=True)
    a = ap.parse_args()
    gen = os.path.join(a.bin_dir, "baton-generate")
    make = os.path.join(a.bin_dir, "baton-make-model")

    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "demo")
        r = run([make, "--out", model, "--num-layers", "2", "--hidden-size", "64", "--intermediate-size", "128",
                 "--num-heads", "4", "--num-kv-heads", "2", "--num-merges", "200"])
        check(r.returncode == 0, f"baton-make-model failed: {r.stderr}")
        for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]:
            check(os.path.exists(os.path.join(model, f)), f"random model lacks {f}")

        # Text prompt, JSON output: greedy is deterministic, and the text is the decoded ids.
        args = [gen, "--model", model, "--prompt", "Once upon a time", "--max-tokens", "12", "--temperature", "0",
                "--ignore-eos", "--output", "json"]
        r1, r2 = run(args), run(args)
        check(r1.returncode == 0, f"baton-generate json failed: {r1.stderr}")
        out = json.loads(r1.stdout.strip().splitlines()[-1])
        check(len(out["token_ids"]) == 12, f"expected 12 tokens, got {out}")
        check(isinstance(out["text"], str), "text missing")
        check(r1.stdout == r2.stdout, "greedy output differs between two runs")

        # Streamed text mode prints the same text as the JSON mode.
        r = run(args[:-2] + ["--output", "text"])
        check(r.returncode == 0, f"baton-generate text failed: {r.stderr}")
        check(r.stdout.rstrip("\n") == out["text"], f"streamed text {r.stdout!r} != json text {out['text']!r}")
        check("tok/s" in r.stderr, "no timing line on stderr")

        # A real reference model through the CLI equals the golden continuation (RoPE frequencies
        # as transformers had them for the goldens: BackendOptions::rope_bf16_frequencies).
        golden = json.load(open(os.path.join(a.models, "goldens.json")))["tiny-qwen3"][1]
        r = run([gen, "--model", os.path.join(a.models, "tiny-qwen3"), "--prompt-ids",
                 ",".join(map(str, golden["prompt_ids"])), "--max-tokens", "24", "--temperature", "0", "--ignore-eos",
                 "--output", "json", "--rope-bf16-frequencies"])
        check(r.returncode == 0 and json.loads(r.stdout)["token_ids"] == golden["greedy_ids"],
              f"CLI greedy ids differ from goldens: {r.stdout} {r.stderr}")

        # A batch from --prompts-file: every golden prompt at once, each line its golden continuation.
        goldens = json.load(open(os.path.join(a.models, "goldens.json")))["tiny-qwen3"]
        batch_file = os.path.join(tmp, "prompts.jsonl")
        with open(batch_file, "w") as f:
            for g in goldens:
                f.write(json.dumps(g["prompt_ids"]) + "\n")
        r = run([gen, "--model", os.path.join(a.models, "tiny-qwen3"), "--prompts-file", batch_file, "--max-tokens",
                 "24", "--temperature", "0", "--ignore-eos", "--rope-bf16-frequencies"])
        check(r.returncode == 0, f"--prompts-file failed: {r.stderr}")
        lines = [json.loads(x) for x in r.stdout.splitlines()]
        check([x["token_ids"] for x in lines] == [g["greedy_ids"] for g in goldens],
              f"--prompts-file outputs differ from goldens: {r.stdout}")
        with open(batch_file, "w") as f:
            f.write("[1, 2]\n[1, \"x\"]\n")
        r = run([gen, "--model", os.path.join(a.models, "tiny-qwen3"), "--prompts-file", batch_file])
        check(r.returncode == 1 and "prompts.jsonl:2: not a JSON array of token ids" in r.stderr,
              f"bad --prompts-file line: {r.returncode} {r.stderr}")

        # Bad input: one line on stderr, exit code 1, no crash.
        bad_cases = [
            ([gen], "--model is required"),
            ([gen, "--model", model], "give exactly one of --prompt, --prompt-ids and --prompts-file"),
            ([gen, "--model", model, "--prompt", "x", "--max-tokens", "ten"], "is not an integer"),
            ([gen, "--model", model, "--prompt", "x", "--bogus"], "unknown argument"),
            ([gen, "--model", "/nonexistent", "--prompt-ids", "1"], "/nonexistent"),
            ([gen, "--model", model, "--prompt-ids", "1,abc"], "is not an integer"),
            ([gen, "--model", model, "--prompt-ids", "999999"], "outside the vocabulary"),
            ([gen, "--model", model, "--prompt", "x", "--temperature", "-1"], "temperature must be >= 0"),
            ([gen, "--model", model, "--prompt", "x", "--kv-cache-dtype", "int3"], "not supported"),
            ([gen, "--model", model, "--prompt", "x", "--kv-cache-memory", "10"], "holds no block"),
            ([gen, "--model", os.path.join(a.models, "stories260k"), "--prompt", "x"], "no tokenizer.json"),
        ]
        for argv, needle in bad_cases:
            r = run(argv)
            lines = r.stderr.strip().splitlines()
            check(r.returncode == 1, f"{argv[1:]}: exit {r.returncode}, want 1 ({r.stderr!r})")
            check(len(lines) == 1 and needle in lines[0], f"{argv[1:]}: stderr {r.stderr!r} lacks one line with {needle!r}")

        # A corrupt model directory is a one-line error too.
        with open(os.path.join(model, "model.safetensors"), "r+b") as f:
            f.truncate(100)
        r = run([gen, "--model", model, "--prompt", "x"])
        check(r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, f"truncated weights: {r.stderr!r}")

    n_checks = 13 + len(bad_cases) * 2
    print(f"{n_checks - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
