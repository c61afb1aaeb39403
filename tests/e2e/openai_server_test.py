"""e2e: baton-server driven by the official `openai` client and by raw HTTP.

- completions and chat, streamed and not, equal the engine's own greedy output (baton-generate)
- bad input gets 400/413 with OpenAI error JSON and the server keeps serving
- 256 concurrent streams complete with no lost or duplicated token
- a client that disconnects mid-stream has its request aborted and its KV blocks freed

usage: pytest tests/e2e/openai_server_test.py [--bin-dir build/apps] [--models ../shared/models]
"""
import asyncio
import json
import os
import socket
import subprocess

import openai
import pytest
from transformers import AutoTokenizer

from server_util import SANITIZED, metric, post, request, start_server, wait_until

ABORTED = 'baton:request_success_total{finished_reason="abort"}'


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


def test_bad_input_gets_openai_errors_and_server_keeps_serving(server, client):
    long_prompt = " ".join(["word"] * 3000)
    cases = [
        ("/v1/completions", b"{not json", 400, None),
        ("/v1/completions", json.dumps({"prompt": "x", "max_tokens": "ten"}).encode(), 400, "max_tokens"),
        ("/v1/completions", json.dumps({"prompt": "x", "temperature": "hot"}).encode(), 400, "temperature"),
        ("/v1/completions", json.dumps({"prompt": "x", "max_tokens": -5}).encode(), 400, "max_tokens"),
        ("/v1/completions", json.dumps({"prompt": "x", "max_tokens": 10**9}).encode(), 400, "max_tokens"),
        ("/v1/completions", json.dumps({"prompt": long_prompt, "max_tokens": 1}).encode(), 400, "prompt"),
        ("/v1/completions", json.dumps({"prompt": "x", "model": "gpt-17"}).encode(), 400, "model"),
        ("/v1/completions", json.dumps({"prompt": [1, 2, 99999999]}).encode(), 400, None),
        ("/v1/completions", json.dumps({"prompt": "x", "n": 3}).encode(), 400, "n"),
        ("/v1/completions", json.dumps({"max_tokens": 3}).encode(), 400, "prompt"),
        ("/v1/chat/completions", json.dumps({"messages": []}).encode(), 400, "messages"),
        ("/v1/chat/completions", json.dumps({"messages": "hi"}).encode(), 400, "messages"),
        ("/v1/chat/completions", json.dumps({"messages": [{"content": "no role"}]}).encode(), 400, "messages"),
        ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": [{"type": 1, "text": "hi"}]}]}).encode(),
         400, "messages"),
        ("/v1/completions", b'{"prompt": "bad \xff\xfe utf8"}', 400, None),
        ("/v1/completions", json.dumps({"prompt": "x", "stop": [1, 2]}).encode(), 400, "stop"),
        ("/v1/completions", json.dumps([1, 2, 3]).encode(), 400, None),
    ]
    for path, body, status, param in cases:
        got, data = post(server.url, path, body, timeout=60)
        assert got == status, (body[:80], got, data)
        err = json.loads(data)["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["code"] == status and err["message"], err
        if param:
            assert err["param"] == param, (param, err)
    # 100 MB body: 413, and the connection is closed cleanly.
    big = b'{"prompt": "' + b"a" * (100 << 20) + b'"}'
    got, data = post(server.url, "/v1/completions", big, timeout=60)
    assert got == 413 and json.loads(data)["error"]["code"] == 413, (got, data[:200])
    # Unknown route and method.
    assert request(server.url, "GET", "/v1/nope", timeout=10)[0] == 404
    # Still serving.
    r = client.completions.create(model="tiny-qwen3", prompt="still alive?", max_tokens=3, temperature=0)
    assert r.usage.completion_tokens == 3
    assert metric(server.url, "baton:request_rejected_total") >= len(cases)


def test_concurrent_streams_lose_nothing(server, client):
    n = 32 if SANITIZED else 256
    prompts = [f"Request number {i}: tell me about {i % 17} robots" for i in range(n)]
    want = [client.completions.create(model="tiny-qwen3", prompt=p, max_tokens=12, temperature=0).choices[0].text
            for p in prompts]

    async def run_all():
        async_client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=300,
                                          http_client=None)

        async def one(p):
            stream = await async_client.completions.create(model="tiny-qwen3", prompt=p, max_tokens=12,
                                                           temperature=0, stream=True)
            text, finishes = "", 0
            async for chunk in stream:
                for ch in chunk.choices:
                    text += ch.text
                    finishes += ch.finish_reason is not None
            return text, finishes

        return await asyncio.gather(*[one(p) for p in prompts])

    got = asyncio.run(run_all())
    bad = [i for i, ((t, f), w) in enumerate(zip(got, want)) if t != w or f != 1]
    assert not bad, f"{len(bad)} of {n} streams differ, first: {got[bad[0]]!r} vs {want[bad[0]]!r}"
    wait_until(lambda: metric(server.url, "baton:kv_blocks_used") == 0, what="blocks released")


def test_disconnect_mid_stream_aborts_and_frees_blocks(server):
    before_aborted = metric(server.url, ABORTED)
    s = socket.create_connection(("127.0.0.1", server.port))
    body = json.dumps({"prompt": "a long story", "max_tokens": 1900, "ignore_eos": True, "temperature": 0,
                       "stream": True}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
              str(len(body)).encode() + b"\r\n\r\n" + body)
    got = b""
    while got.count(b"data: ") < 3:
        got += s.recv(4096)
    wait_until(lambda: metric(server.url, "baton:kv_blocks_used") > 0, what="request running")
    s.close()
    wait_until(lambda: metric(server.url, "baton:num_requests_running") == 0, what="request aborted")
    wait_until(lambda: metric(server.url, "baton:kv_blocks_used") == 0, what="blocks freed")
    assert metric(server.url, ABORTED) == before_aborted + 1


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
