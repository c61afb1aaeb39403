#!/usr/bin/env python3
"""e2e: baton-server driven by the official `openai` client and by raw HTTP.

- completions and chat, streamed and not, equal the engine's own greedy output (baton-generate)
- bad input gets 400/413 with OpenAI error JSON and the server keeps serving
- 256 concurrent streams complete with no lost or duplicated token
- a client that disconnects mid-stream has its request aborted and its KV blocks freed

usage: openai_server_test.py --bin-dir build/apps --models ../shared/models
"""
import argparse
import asyncio
import http.client
import json
import os
import socket
import subprocess
import sys

import openai
from transformers import AutoTokenizer

sys.path.insert(0, os.path.dirname(__file__))
from server_util import metric, run_each, start_server, wait_until  # noqa: E402

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def engine_greedy(bin_dir, model, prompt_text, max_tokens):
    out = subprocess.run([os.path.join(bin_dir, "baton-generate"), "--model", model, "--prompt", prompt_text,
                          "--max-tokens", str(max_tokens), "--temperature", "0", "--output", "json"],
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


def raw_post(port, path, body, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    conn.request("POST", path, body=body, headers=h)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


@test
def completions_equal_engine(ctx):
    c = ctx["client"]
    for prompt in ["Once upon a time", "The robot counted 1 2 3", "日本語 🤖 and more"]:
        want = engine_greedy(ctx["bin"], ctx["model"], prompt, 20)
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


@test
def chat_equals_engine_on_rendered_prompt(ctx):
    c = ctx["client"]
    tok = AutoTokenizer.from_pretrained(ctx["model"])
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a story."}]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    want = engine_greedy(ctx["bin"], ctx["model"], rendered, 16)
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


@test
def model_is_optional_and_sampling_fields_work(ctx):
    status, data = raw_post(ctx["port"], "/v1/completions", json.dumps(
        {"prompt": [1, 20, 76], "max_tokens": 5, "temperature": 0.8, "top_p": 0.9, "top_k": 20, "seed": 7,
         "logprobs": 2, "stop": ["zzz"], "presence_penalty": 0.5, "user": "u1"}))
    assert status == 200, data
    j = json.loads(data)
    lp = j["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == j["usage"]["completion_tokens"] and all(len(t) == 2 for t in lp["top_logprobs"])
    status2, data2 = raw_post(ctx["port"], "/v1/completions", json.dumps(
        {"prompt": [1, 20, 76], "max_tokens": 5, "temperature": 0.8, "top_p": 0.9, "top_k": 20, "seed": 7,
         "logprobs": 2, "stop": ["zzz"], "presence_penalty": 0.5, "user": "u1"}))
    assert json.loads(data2)["choices"][0]["text"] == j["choices"][0]["text"], "same seed, different text"


@test
def bad_input_gets_openai_errors_and_server_keeps_serving(ctx):
    port = ctx["port"]
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
        got, data = raw_post(port, path, body)
        assert got == status, (body[:80], got, data)
        err = json.loads(data)["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["code"] == status and err["message"], err
        if param:
            assert err["param"] == param, (param, err)
    # 100 MB body: 413, and the connection is closed cleanly.
    big = b'{"prompt": "' + b"a" * (100 << 20) + b'"}'
    got, data = raw_post(port, "/v1/completions", big)
    assert got == 413 and json.loads(data)["error"]["code"] == 413, (got, data[:200])
    # Unknown route and method.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/v1/nope")
    assert conn.getresponse().status == 404
    conn.close()
    # Still serving.
    r = ctx["client"].completions.create(model="tiny-qwen3", prompt="still alive?", max_tokens=3, temperature=0)
    assert r.usage.completion_tokens == 3
    assert metric(ctx["url"], "baton:request_rejected_total") >= len(cases)


@test
def concurrent_streams_lose_nothing(ctx):
    n = 32 if os.environ.get("BATON_SANITIZER_RUN") else 256  # sanitizers: 5-20x slower
    prompts = [f"Request number {i}: tell me about {i % 17} robots" for i in range(n)]
    sync = ctx["client"]
    want = [sync.completions.create(model="tiny-qwen3", prompt=p, max_tokens=12, temperature=0).choices[0].text
            for p in prompts]

    async def run_all():
        client = openai.AsyncOpenAI(base_url=ctx["url"] + "/v1", api_key="none", max_retries=0, timeout=300,
                                    http_client=None)

        async def one(p):
            stream = await client.completions.create(model="tiny-qwen3", prompt=p, max_tokens=12, temperature=0,
                                                     stream=True)
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
    wait_until(lambda: metric(ctx["url"], "baton:kv_blocks_used") == 0, what="blocks released")


@test
def disconnect_mid_stream_aborts_and_frees_blocks(ctx):
    port = ctx["port"]
    before_aborted = ctx_metric_abort(ctx)
    s = socket.create_connection(("127.0.0.1", port))
    body = json.dumps({"prompt": "a long story", "max_tokens": 1900, "ignore_eos": True, "temperature": 0,
                       "stream": True}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
              str(len(body)).encode() + b"\r\n\r\n" + body)
    got = b""
    while got.count(b"data: ") < 3:
        got += s.recv(4096)
    wait_until(lambda: metric(ctx["url"], "baton:kv_blocks_used") > 0, what="request running")
    s.close()
    wait_until(lambda: metric(ctx["url"], "baton:num_requests_running") == 0, what="request aborted")
    wait_until(lambda: metric(ctx["url"], "baton:kv_blocks_used") == 0, what="blocks freed")
    assert ctx_metric_abort(ctx) == before_aborted + 1


def ctx_metric_abort(ctx):
    import urllib.request
    text = urllib.request.urlopen(ctx["url"] + "/metrics").read().decode()
    for line in text.splitlines():
        if line.startswith('baton:request_success_total{finished_reason="abort"}'):
            return float(line.split()[1])
    raise KeyError("abort counter")


@test
def models_health_and_api_key(ctx):
    ids = [m.id for m in ctx["client"].models.list().data]
    assert ids[0] == "tiny-qwen3" and ctx["model"] in ids, ids
    conn = http.client.HTTPConnection("127.0.0.1", ctx["port"], timeout=10)
    conn.request("GET", "/health")
    assert conn.getresponse().status == 200
    conn.close()
    keyed = start_server(ctx["bin"], ctx["model"], "--api-key", "s3cret")
    try:
        ok = openai.OpenAI(base_url=keyed.url + "/v1", api_key="s3cret", max_retries=0)
        # ignore_eos: at the default temperature of 1 the first sampled token may be EOS.
        r = ok.completions.create(model="tiny-qwen3", prompt="hi", max_tokens=2, extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 2, r
        wrong = openai.OpenAI(base_url=keyed.url + "/v1", api_key="nope", max_retries=0)
        try:
            wrong.completions.create(model="tiny-qwen3", prompt="hi", max_tokens=2)
            raise AssertionError("wrong key accepted")
        except openai.AuthenticationError as e:
            assert e.status_code == 401
    finally:
        keyed.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--models", required=True)
    a = ap.parse_args()
    model = os.path.join(a.models, "tiny-qwen3")
    server = start_server(a.bin_dir, model)
    ctx = {"bin": a.bin_dir, "model": model, "port": server.port, "url": server.url,
           "client": openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)}
    def healthy():
        if not server.alive():
            print("server died:\n" + "".join(server.stderr_lines[-30:]))
        return server.alive()

    try:
        passed, failed = run_each(TESTS, ctx, healthy=healthy)
    finally:
        rc = server.stop()
    if rc not in (0, None):
        print(f"server exited with {rc}")
        failed += 1
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
