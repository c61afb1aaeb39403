#!/usr/bin/env python3
"""Sends prompts (a JSONL of token-id lists, hf_reference.py greedy's .prompts.jsonl) one at a time
to an OpenAI-compatible server (baton-server or baton-proxy) for greedy completions, and writes
one {"token_ids": [...]} line per prompt, as baton-generate --prompts-file does; compare two such
files with hf_reference.py same. Standard library only.

  pd_outputs.py URL PROMPTS.jsonl OUT.jsonl [--max-tokens 32]
"""
import argparse
import json
import urllib.request


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("prompts")
    ap.add_argument("out")
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()
    with open(args.out, "w") as out:
        for line in open(args.prompts):
            if not line.strip():
                continue
            body = json.dumps({"prompt": json.loads(line), "max_tokens": args.max_tokens, "temperature": 0,
                               "ignore_eos": True, "return_token_ids": True}).encode()
            req = urllib.request.Request(args.url + "/v1/completions", body, {"Content-Type": "application/json"})
            r = json.loads(urllib.request.urlopen(req, timeout=120).read())
            out.write(json.dumps({"token_ids": r["choices"][0]["token_ids"]}) + "\n")


if __name__ == "__main__":
    main()
