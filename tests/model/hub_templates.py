#!/usr/bin/env python3
"""Real chat templates as shipped on the Hugging Face Hub, rendered by transformers: writes the
goldens that tests/model/chat_template_test.cpp holds baton's renderer to.

The templates come from llama.cpp's models/templates (fetched from the Hub by its
scripts/get_chat_template.py), inside the llama-cpp-python source package on PyPI; scripts/setup.sh
extracts the ones named in TEMPLATES into .venv/hub-templates. Each template's FNV-1a hash is
stored beside its cases, so a changed template fails the test instead of passing on stale goldens.

usage: hub_templates.py --templates .venv/hub-templates --out tests/model/hub_template_goldens.json
"""
import argparse
import json
import os
import sys

from transformers.utils.chat_template_utils import _compile_jinja_template

# (model on the Hub, file in llama.cpp's models/templates)
TEMPLATES = [
    ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama-Llama-3.1-8B-Instruct.jinja"),
    ("meta-llama/Llama-3.2-3B-Instruct", "meta-llama-Llama-3.2-3B-Instruct.jinja"),
    ("meta-llama/Llama-3.3-70B-Instruct", "meta-llama-Llama-3.3-70B-Instruct.jinja"),
    ("Qwen/Qwen2.5-7B-Instruct", "Qwen-Qwen2.5-7B-Instruct.jinja"),
    ("Qwen/Qwen3-0.6B", "Qwen-Qwen3-0.6B.jinja"),
    ("Qwen/QwQ-32B", "Qwen-QwQ-32B.jinja"),
    ("mistralai/Mistral-Nemo-Instruct-2407", "mistralai-Mistral-Nemo-Instruct-2407.jinja"),
    ("mistralai/Mistral-Small-3.2-24B-Instruct-2506", "Mistral-Small-3.2-24B-Instruct-2506.jinja"),
    ("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja"),
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja"),
    ("deepseek-ai/DeepSeek-V3.1", "deepseek-ai-DeepSeek-V3.1.jinja"),
]

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
# Mistral's templates require 9-character alphanumeric tool call ids.
CALL = {"id": "call00001", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
CONVERSATIONS = [
    ("one user turn", [{"role": "user", "content": "Hello!"}], {}),
    ("system and turns", [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"}], {}),
    ("non-ASCII text", [{"role": "user", "content": "Grüße, 世界 👋 \"quoted\" \\ tab\t"}], {}),
    ("reasoning in history", [{"role": "user", "content": "Why?"},
                              {"role": "assistant", "content": "<think>\nThe user asks.\n</think>\n\nBecause."},
                              {"role": "user", "content": "Sure?"}], {}),
    ("tools offered", [{"role": "user", "content": "Weather in Paris?"}], {"tools": TOOLS}),
    ("tool call and result", [{"role": "user", "content": "Weather in Paris?"},
                              {"role": "assistant", "content": "", "tool_calls": [CALL]},
                              {"role": "tool", "tool_call_id": CALL["id"], "name": "get_weather", "content": "sunny"}],
     {"tools": TOOLS}),
]
# Variables apply_chat_template passes; date_string pins the Llama 3 templates' date (they would
# call strftime_now otherwise).
COMMON = {"bos_token": "<s>", "eos_token": "</s>", "date_string": "08 Dec 2026"}


def fnv1a64(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--templates", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    out = {"common": COMMON,
           "conversations": [{"name": n, "messages": m, "extra": e} for n, m, e in CONVERSATIONS], "templates": []}
    for model, file in TEMPLATES:
        data = open(os.path.join(a.templates, file), "rb").read()
        compiled = _compile_jinja_template(data.decode())
        cases = []
        for i, (name, messages, extra) in enumerate(CONVERSATIONS):
            for gen in (False, True):
                case = {"conversation": i, "add_generation_prompt": gen}
                try:
                    case["text"] = compiled.render(messages=messages, add_generation_prompt=gen, **COMMON, **extra)
                except Exception as e:  # the template refuses this conversation: baton must too
                    case["error"] = str(e)
                cases.append(case)
        out["templates"].append({"model": model, "file": file, "fnv1a64": fnv1a64(data), "cases": cases})
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    n = sum(len(t["cases"]) for t in out["templates"])
    errors = sum("error" in c for t in out["templates"] for c in t["cases"])
    print(f"{len(TEMPLATES)} templates, {n} cases ({errors} refused by the template) -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
