"""e2e: baton-server under bad input, load and disconnects (openai_server_api_test.py has the
API's outputs).

- bad input gets 400/413 with OpenAI error JSON and the server keeps serving
- 256 concurrent streams complete with no lost or duplicated token
- a client that disconnects mid-stream has its request aborted and its KV blocks freed

usage: pytest tests/e2e/openai_server_stress_test.py [--bin-dir build/apps] [--models ../shared/models]
"""
import asyncio
import json
import socket

import openai

from server_util import SANITIZED, metric, post, request, wait_until

ABORTED = 'baton:request_success_total{finished_reason="abort"}'


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
