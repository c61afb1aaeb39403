"""e2e: baton-server's OpenAI API, driven by the official `openai` client and by raw HTTP
(openai_server_stress_test.py has its bad input, load and disconnects).

- completions and chat, streamed and not, equal the engine's own greedy output (baton-generate)
- `model` is optional; the sampling fields work, and a seed repeats its text
- /v1/models and /health answer; --api-key refuses a wrong key

usage: pytest tests/e2e/openai_server_api_test.py [--bin-dir build/apps] [--models ../shared/models]
"""
import json
import os
import subprocess

import openai
import pytest
from transformers import AutoTokenizer

from server_util import post, request, start_server


def engine_greedy(bin_dir, model, prompt_text, max_tokens):
    out = subprocess.run([os.path.join(bin_dir, "baton-generate"), "--model", model, "--prompt", prompt_text,
                          "--max-tokens", str(max_tokens), "--temperature", "0", "--output", "json"],
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


def test_completions_equal_engine(client, bin_dir, tiny_qwen3):
    c = client
    for prompt in ["Once upon a time", "The robot counted 1 2 3", "日本語 🤖 and more"]:
        want = engine_greedy(bin_dir, tiny_qwen3, prompt, 20)
        r = c.completions.create(model="tiny-qwen3", prompt=prompt, max_tokens=20, temperature=0)
        assert r.choices[0].text == want["text"], (r.choices[0].text, want["text"])
        assert r.usage.completion_tokens == len(want["token_ids"])
        assert r.choices[0].finish_reason == want["finish_reason"]
        stream = c.completions.create(prompt=prompt, max_tokens=20, temperature=0, stream=True, model="tiny-qwen3",
                                      stream_options={"include_usage": True})
        text, usage, reasons = "", None, []
        for chunk in stream:
            if chunk.usage:
                usage = chunk.usage
            for ch in chunk.choices:
                text += ch.text
                if ch.finish_reason:
                    reasons.append(ch.finish_reason)
        assert text == want["text"], (text, want["text"])
        assert usage.completion_tokens == len(want["token_ids"]) and reasons == [want["finish_reason"]]
        # vLLM's return_token_ids: every token shows up in the stream, also where its text is held
        # back (an incomplete UTF-8 sequence), and in the whole response.
        stream = c.completions.create(prompt=prompt, max_tokens=20, temperature=0, stream=True, model="tiny-qwen3",
                                      extra_body={"return_token_ids": True})
        ids, text = [], ""
        for chunk in stream:
            for ch in chunk.choices:
                ids += ch.model_extra["token_ids"]
                text += ch.text
        assert ids == want["token_ids"] and text == want["text"], (ids, want["token_ids"])
        r = c.completions.create(prompt=prompt, max_tokens=20, temperature=0, model="tiny-qwen3",
                                 extra_body={"return_token_ids": True})
        assert r.choices[0].model_extra["token_ids"] == want["token_ids"]


def test_chat_equals_engine_on_rendered_prompt(client, bin_dir, tiny_qwen3):
    c = client
    tok = AutoTokenizer.from_pretrained(tiny_qwen3)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a story."}]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    want = engine_greedy(bin_dir, tiny_qwen3, rendered, 16)
    r = c.chat.completions.create(model="tiny-qwen3", messages=messages, max_tokens=16, temperature=0)
    assert r.choices[0].message.content == want["text"], (r.choices[0].message.content, want["text"])
    assert r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(tok(rendered, add_special_tokens=False)["input_ids"])
    stream = c.chat.completions.create(model="tiny-qwen3", messages=messages, max_tokens=16, temperature=0, stream=True)
    parts, roles = [], []
    for chunk in stream:
        for ch in chunk.choices:
            if ch.delta.role:
                roles.append(ch.delta.role)
            if ch.delta.content:
                parts.append(ch.delta.content)
    assert "".join(parts) == want["text"] and roles == ["assistant"]


def test_model_is_optional_and_sampling_fields_work(server):
    body = {"prompt": [1, 20, 76], "max_tokens": 5, "temperature": 0.8, "top_p": 0.9, "top_k": 20, "seed": 7,
            "logprobs": 2, "stop": ["zzz"], "presence_penalty": 0.5, "user": "u1"}
    status, data = post(server.url, "/v1/completions", body, timeout=60)
    assert status == 200, data
    j = json.loads(data)
    lp = j["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == j["usage"]["completion_tokens"] and all(len(t) == 2 for t in lp["top_logprobs"])
    status2, data2 = post(server.url, "/v1/completions", body, timeout=60)
    assert json.loads(data2)["choices"][0]["text"] == j["choices"][0]["text"], "same seed, different text"


def test_models_health_and_api_key(server, client, bin_dir, tiny_qwen3):
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == "tiny-qwen3" and tiny_qwen3 in ids, ids
    assert request(server.url, "GET", "/health", timeout=10)[0] == 200
    with start_server(bin_dir, tiny_qwen3, "--api-key", "s3cret") as keyed:
        ok = openai.OpenAI(base_url=keyed.url + "/v1", api_key="s3cret", max_retries=0)
        # ignore_eos: at the default temperature of 1 the first sampled token may be EOS.
        r = ok.completions.create(model="tiny-qwen3", prompt="hi", max_tokens=2, extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 2, r
        wrong = openai.OpenAI(base_url=keyed.url + "/v1", api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            wrong.completions.create(model="tiny-qwen3", prompt="hi", max_tokens=2)
        assert e.value.status_code == 401
