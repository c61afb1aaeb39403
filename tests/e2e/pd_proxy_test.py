"""e2e: baton-proxy in front of real P/D instances on 127.0.0.1: routing, refusals, keys and
limits (pd_equal_test.py and pd_faults_test.py have the rest).

- two prefills and two decodes behind one proxy serve 200 concurrent requests, spread by load
- a KV layout mismatch is refused with a clear error; bad requests get OpenAI errors
- --api-key is asked for and passed on; a wrong deployment token keeps an instance out;
  --max-concurrent-requests answers 429 at once; no leaked blocks afterwards

usage: pytest tests/e2e/pd_proxy_test.py [--bin-dir build/apps] [--models ../shared/models]
"""
import asyncio
import http.client
import json
import time

import openai

from server_util import (SANITIZED, Fleet, instances, metric, open_long_stream, post, start_instance, start_proxy,
                         wait_until)

N_CONCURRENT = 32 if SANITIZED else 200


def test_two_by_two_200_concurrent(bin_dir, tiny_qwen3):
    with Fleet(bin_dir, tiny_qwen3, (1, 1), (1, 1)) as fleet:
        client = openai.AsyncOpenAI(base_url=fleet.url + "/v1", api_key="none", max_retries=0, timeout=300)

        async def one(i):
            if i % 2:
                r = await client.completions.create(model="tiny-qwen3", prompt=f"request {i}: " + "a b " * (i % 40),
                                                    max_tokens=8 + i % 8, temperature=0, extra_body={"ignore_eos": True})
                return r.usage.completion_tokens == 8 + i % 8
            s = await client.completions.create(model="tiny-qwen3", prompt=f"stream {i}", max_tokens=6, temperature=0,
                                                stream=True, extra_body={"ignore_eos": True})
            n = 0
            async for ch in s:
                n += 1 if ch.choices and ch.choices[0].text is not None else 0
            return n >= 1

        async def run():
            return await asyncio.gather(*[one(i) for i in range(N_CONCURRENT)])

        results = asyncio.run(run())
        assert all(results), results.count(False)
        routed = {i["id"]: i["routed"] for i in instances(fleet.proxy)}
        assert all(v >= N_CONCURRENT // 5 for v in routed.values()), routed  # least-outstanding spreads the load
        fleet.assert_no_leaks()


def test_layout_mismatch_is_refused(bin_dir, tiny_qwen3):
    with Fleet(bin_dir, tiny_qwen3, kv_dtype="fp8", p_dtype="bf16") as fleet:
        status, data = post(fleet.url, "/v1/completions", {"prompt": "a b c", "max_tokens": 4})
        assert status == 400, (status, data)
        msg = json.loads(data)["error"]["message"]
        assert "KV layout mismatch" in msg and "dtype" in msg, msg
        fleet.assert_no_leaks()  # the decode side told the prefill to let go


def test_bad_requests_through_proxy(bin_dir, tiny_qwen3):
    with Fleet(bin_dir, tiny_qwen3) as fleet:
        status, data = post(fleet.url, "/v1/completions", {"prompt": "a", "max_tokens": -3})
        assert status == 400 and json.loads(data)["error"]["param"] == "max_tokens", data
        status, data = post(fleet.url, "/v1/completions", {"prompt": "a", "max_tokens": 100000})
        assert status == 400 and "context length" in json.loads(data)["error"]["message"], data
        conn = http.client.HTTPConnection("127.0.0.1", fleet.proxy.port, timeout=10)
        conn.request("POST", "/v1/completions", body="{not json", headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 400 and "error" in json.loads(r.read())
        conn.request("GET", "/v1/models")
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["data"][0]["id"] == "tiny-qwen3"
        conn.close()
        fleet.assert_no_leaks()


def test_api_key_token_and_limits(bin_dir, tiny_qwen3):
    proxy = start_proxy(bin_dir, 0, 0, "--api-key", "k3y", "--token", "t0ken", "--max-concurrent-requests", "2")
    procs = [proxy]
    try:
        for role in ("kv_producer", "kv_consumer"):
            procs.append(start_instance(bin_dir, tiny_qwen3, role, proxy.ping_port, token="t0ken",
                                        extra=("--api-key", "k3y", "--max-concurrent-requests", "1")))
        intruder = start_instance(bin_dir, tiny_qwen3, "kv_consumer", proxy.ping_port, token="wrong")
        procs.append(intruder)
        wait_until(lambda: len(instances(proxy, key="k3y")) == 2, what="registration")
        time.sleep(1.5)  # the intruder has heartbeated meanwhile: still not admitted
        listed = instances(proxy, key="k3y")
        assert len(listed) == 2 and all(str(intruder.port) not in i["id"] for i in listed), listed
        assert all("token" not in i["info"] for i in listed), listed
        body = json.dumps({"prompt": "a", "max_tokens": 3, "ignore_eos": True})
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
        conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 401 and json.loads(r.read())["error"]["type"] == "authentication_error"
        conn.request("POST", "/v1/completions", body=body,
                     headers={"Content-Type": "application/json", "Authorization": "Bearer k3y"})
        r = conn.getresponse()
        data = json.loads(r.read())
        assert r.status == 200 and data["usage"]["completion_tokens"] == 3, data  # key passed on to P and D
        conn.close()
        # Limits: the decode takes one request at a time, the proxy two; beyond, 429 at once.
        streams = []
        for _ in range(3):
            streams.append(open_long_stream(proxy.port, "Authorization: Bearer k3y\r\n"))
            time.sleep(0.05)
        heads = []
        for s in streams:
            s.settimeout(30)
            heads.append(s.recv(4096).split(b"\r\n")[0])
            s.close()
        assert heads.count(b"HTTP/1.1 429 Too Many Requests") >= 1, heads
        assert b"HTTP/1.1 200 OK" in heads, heads
        for inst in procs[1:3]:  # refused decodes let the prefill go at once; aborts free the rest
            wait_until(lambda: metric(inst.url, "baton:kv_blocks_used", key="k3y") == 0 and
                       metric(inst.url, "baton:kv_held_transfers", key="k3y") == 0, timeout=20,
                       what="no leaked blocks")
    finally:
        for p in procs:
            p.stop()
