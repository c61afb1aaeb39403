#!/usr/bin/env python3
"""Differential test: baton's tokenizer against Hugging Face `tokenizers` on every tokenizer.json
in the shared models directory. Encodes >= 2,000 random and adversarial strings per tokenizer
with both and requires identical ids; requires identical decode() text for those ids; and sends
invalid UTF-8, which baton must reject with an error line (never a crash).

usage: tokenizer_differential_test.py --tokenize-bin build/apps/baton-tokenize --models ../shared/models
"""
import argparse
import glob
import json
import os
import random
import subprocess
import sys
import tempfile

from tokenizers import Tokenizer

N_RANDOM = 2000

ALPHABETS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789",
    " \t\n\r",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿßÀÉÎÕÜ",
    "αβγδεζηθικλμνξοπρστυφχψωΑΒΓΔ",
    "абвгдежзийклмнопрстуфхцчшщъыьэюяЖЯ",
    "日本語中文字漢字の言葉한국어",
    "العربيةעברית",
    "\u00a0\u2000\u2009\u200b\u3000\u0085\u2028\u2029\u180e\ufeff",
    "\u0301\u0308\u0327",  # combining marks
    "😀🤖👍🏽👨‍👩‍👧🇫🇷❤️✨",
    "१२३٣٤５６⅓²",  # other digits and numbers
]
ADVERSARIAL = [
    "", " ", "  ", "\n", "\n\n\n", "\t\t", " \n ", "a", "'s", "'S", "'ll", "'RE", "I'm", "don't", "you're",
    "hello   world", "   leading", "trailing   ", "a\u00a0b", "x\u0085y", "tab\there", "cr\r\nlf",
    "1234567890123", "3.14159", "1,000,000", "$100.00", "0x1F", "e=mc^2",
    "<|im_start|>user\nhi<|im_end|>", "<|endoftext|>", "<|im_start|><|im_end|>", "<s>", "</s>", "<unk>",
    "<|im_start", "im_end|>", "<<|im_end|>>", "text<|endoftext|>text",
    "def f(x):\n    return x ** 2\n", "if (a && b) { c++; }", "https://example.com/path?q=1&r=2",
    "éééééé", "e\u0301", "ﬁ", "Ⅷ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "🤖" * 5, "👨‍👩‍👧‍👦", "日本語 🤖 text",
    "a" * 300, " " * 70, "ab" * 120, "\u2581leading meta", "▁▁x", "<0x41>",
]
INVALID_UTF8 = [b"\xff", b"abc\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"ok\x80ok", b"\xf5\x80\x80\x80", b"\xe2\x82"]


def random_string(rng):
    n = rng.choice([1, 2, 3, 5, 8, 13, 21, 40, 80])
    out = []
    for _ in range(n):
        alphabet = rng.choice(ALPHABETS)
        run = rng.choice([1, 1, 1, 2, 3, 6])
        out.append("".join(rng.choice(alphabet) for _ in range(run)))
        if rng.random() < 0.05:
            out.append(rng.choice(ADVERSARIAL))
    return "".join(out)


def run_baton(binary, tokenizer_path, lines, extra):
    proc = subprocess.run([binary, "--tokenizer", tokenizer_path] + extra, input="\n".join(lines) + "\n",
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"baton-tokenize failed ({proc.returncode}): {proc.stderr}")
    out = [json.loads(l) for l in proc.stdout.split("\n") if l]  # not splitlines: U+2028 is data
    if len(out) != len(lines):
        raise SystemExit(f"baton-tokenize answered {len(out)} lines for {len(lines)}")
    return out


def check(binary, path, seed):
    rng = random.Random(seed)
    texts = list(ADVERSARIAL) + [random_string(rng) for _ in range(N_RANDOM)]
    hf = Tokenizer.from_file(path)
    want = [hf.encode(t).ids for t in texts]
    got = run_baton(binary, path, [t.encode("utf-8").hex() for t in texts], ["--hex"])
    failures = 0
    for t, w, g in zip(texts, want, got):
        if g.get("ids") != w:
            failures += 1
            if failures <= 10:
                print(f"  encode mismatch for {t!r}:\n    hf:    {w}\n    baton: {g}")

    want_text = [hf.decode(ids, skip_special_tokens=False) for ids in want]
    got_text = run_baton(binary, path, [json.dumps(ids) for ids in want], ["--decode"])
    for ids, w, g in zip(want, want_text, got_text):
        if g.get("text") != w:
            failures += 1
            if failures <= 20:
                print(f"  decode mismatch for {ids}:\n    hf:    {w!r}\n    baton: {g}")

    bad = run_baton(binary, path, [b.hex() for b in INVALID_UTF8], ["--hex"])
    for b, g in zip(INVALID_UTF8, bad):
        if "error" not in g or "UTF-8" not in g["error"]:
            failures += 1
            print(f"  invalid UTF-8 {b!r} was not rejected: {g}")
    print(f"{os.path.relpath(path)}: {len(texts)} strings, {len(INVALID_UTF8)} invalid inputs, {failures} failures")
    return len(texts), failures


LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def write_variants(models, out_dir):
    """Pipelines that real checkpoints use but the shared tiny models do not: Llama-3's and
    Qwen2.5's Split regex + NFC, and the Metaspace sentencepiece style of newer Llama/Mistral."""
    paths = []
    byte_level = json.load(open(os.path.join(models, "tiny-qwen3", "tokenizer.json")))
    for name, pattern, normalizer in [("llama3-split", LLAMA3_PATTERN, None),
                                      ("qwen2-nfc-split", QWEN2_PATTERN, {"type": "NFC"})]:
        t = json.loads(json.dumps(byte_level))
        t["normalizer"] = normalizer
        t["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}
        t["post_processor"] = {"type": "TemplateProcessing",
                               "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
                                          {"Sequence": {"id": "A", "type_id": 0}}],
                               "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                               "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1], "tokens": ["<|im_start|>"]}}}
        paths.append((name, t))
    sp = json.load(open(os.path.join(models, "llama2-tokenizer", "tokenizer.json")))
    sp["normalizer"] = None
    sp["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}
    sp["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"},
        {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    paths.append(("metaspace-first", sp))
    out = []
    for name, t in paths:
        d = os.path.join(out_dir, name)
        os.makedirs(d, exist_ok=True)
        f = os.path.join(d, "tokenizer.json")
        with open(f, "w") as fh:
            json.dump(t, fh)
        out.append(f)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenize-bin", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--seed", type=int, default=20261124)
    args = ap.parse_args()
    paths = sorted(glob.glob(os.path.join(args.models, "*", "tokenizer.json")))
    if not paths:
        print(f"no tokenizer.json under {args.models}")
        return 1
    total = failed = 0
    with tempfile.TemporaryDirectory(prefix="baton_tok_") as tmp:
        paths += write_variants(args.models, tmp)
        for i, p in enumerate(paths):
            n, f = check(args.tokenize_bin, p, args.seed + i)
            total += n
            failed += f
    print(f"{total - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
