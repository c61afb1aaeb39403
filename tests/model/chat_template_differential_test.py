#!/usr/bin/env python3
"""Differential test: baton's chat template renderer against transformers' own Jinja
environment (the one apply_chat_template uses) on templates in the style of real models and on
feature probes. Outputs must be byte-identical; where HF raises, baton must report an error.

usage: chat_template_differential_test.py --render-bin build/tests/chat_template_render --models ../shared/models
"""
import argparse
import glob
import json
import os
import subprocess
import sys

from transformers.utils.chat_template_utils import _compile_jinja_template

QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

LLAMA3 = """{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

MISTRAL = """{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"""

PROBES = """{% set ns = namespace(count=0, names=[]) %}
{%- for m in messages if m.role != 'system' -%}
  {%- set ns.count = ns.count + 1 -%}
  {{ loop.index }}/{{ loop.length }}{% if loop.first %}F{% endif %}{% if loop.last %}L{% endif %}:
  {{- m.role | upper }}={{ m.content[:5] ~ '|' ~ m.content[-3:] | lower }};{{ m.content | length }}
  {%- if m.content is string and 'a' in m.content %} has-a{% endif %}
  {%- if m.content.startswith('H') %} H!{% elif m.content.endswith('?') %} Q!{% else %} -{% endif %}
{% endfor -%}
count={{ ns.count }} {{ messages | length }} {{ (messages | first).role }} {{ [1, 2, 3] | join('+') }}
{{ {'b': 1, 'a': [true, none, 1.5, "x\\"y"]} | tojson }} {{ 7 // 2 }} {{ 7 % 3 }} {{ 2 * 3 + 1 }} {{ 'ab' * 2 }}
{% for k, v in {'x': 1, 'y': 2}.items() %}{{ k }}{{ v }}{% endfor %} {{ 'A b C'.split() | reverse | join(',') }}
{%- for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}{% if i == 1 %}{% continue %}{% endif %}{{ i }}{% endfor %}
{{ undefined_thing is defined }} {{ missing | default('dflt') }} {{ none is none }} {{ 'x' if false else 'y' }}
{{ "  padded  " | trim }}|{{ "  padded  ".strip() }}|{{ "Hello".replace("l", "L") }}|{{ messages[0]['content'][::-1] }}
{%- if add_generation_prompt %}
GEN
{%- endif %}
"""

CONVERSATIONS = [
    [{"role": "user", "content": "Hello there"}],
    [{"role": "system", "content": "  Be brief.  "}, {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"}],
    [{"role": "user", "content": "Unicode: café 日本語 🤖\nnew line"}, {"role": "assistant", "content": "ok"},
     {"role": "user", "content": "a 'quoted' \"text\" \\ back"}],
    [{"role": "user", "content": ""}],
    [{"role": "assistant", "content": "I start"}, {"role": "user", "content": "Then me"}],
]
TOOLS_CASE = {
    "messages": [{"role": "user", "content": "weather?"},
                 {"role": "assistant", "content": "", "tool_calls": [
                     {"function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]},
                 {"role": "tool", "content": "sunny"}, {"role": "tool", "content": "warm"}],
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--render-bin", required=True)
    ap.add_argument("--models", required=True)
    a = ap.parse_args()
    templates = {"qwen2.5": QWEN25, "llama3": LLAMA3, "mistral": MISTRAL, "probes": PROBES}
    for path in sorted(glob.glob(os.path.join(a.models, "*", "chat_template.jinja"))):
        templates[os.path.basename(os.path.dirname(path))] = open(path).read()

    cases = []
    for name, tpl in templates.items():
        for conv in CONVERSATIONS:
            for gen in (False, True):
                cases.append((name, {"template": tpl, "messages": conv, "add_generation_prompt": gen,
                                     "bos_token": "<s>", "eos_token": "</s>"}))
    cases.append(("qwen2.5+tools", {"template": QWEN25, "messages": TOOLS_CASE["messages"],
                                    "add_generation_prompt": True, "extra": {"tools": TOOLS_CASE["tools"]}}))

    inputs = "\n".join(json.dumps(c) for _, c in cases) + "\n"
    proc = subprocess.run([a.render_bin], input=inputs, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        print(proc.stderr)
        return 1
    got = [json.loads(l) for l in proc.stdout.split("\n") if l]
    passed = failed = 0
    for (name, c), g in zip(cases, got):
        compiled = _compile_jinja_template(c["template"])
        try:
            want = compiled.render(messages=c["messages"], add_generation_prompt=c["add_generation_prompt"],
                                   bos_token=c.get("bos_token", ""), eos_token=c.get("eos_token", ""),
                                   **c.get("extra", {}))
            ok = g.get("text") == want
        except Exception as e:  # HF refuses: baton must refuse too
            want = f"<error {e}>"
            ok = "error" in g
        if ok:
            passed += 1
        else:
            failed += 1
            print(f"MISMATCH {name} gen={c['add_generation_prompt']} msgs={len(c['messages'])}\n"
                  f"  hf:    {want!r}\n  baton: {g!r}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
