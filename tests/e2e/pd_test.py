"""e2e: P/D disaggregation with real processes on 127.0.0.1 (baton-proxy + prefill + decode).

- greedy outputs through the proxy equal colocated outputs, completions and chat, streamed and
  not, for tiny-qwen3 (bf16 KV) and tiny-llama3 (fp8 KV), for every (prefill tp, decode tp) pair
- two prefills and two decodes behind one proxy serve 200 concurrent requests
- no leaked blocks: every instance's kv_blocks_used returns to 0 and nothing stays held
- faults: held blocks time out; a prefill killed after answering (decode recomputes); a prefill
  killed before answering (the proxy retries elsewhere); a decode killed mid-stream (the client
  gets an error); a proxy restart (instances re-register); a client that disconnects; a KV
  layout mismatch (refused with a clear error)

usage: pytest tests/e2e/pd_test.py [--bin-dir build/apps] [--models ../shared/models]
"""
import asyncio
import http.client
import json
import os
import signal
import time

import openai
import pytest

from server_util import (PROMPTS, SANITIZED, Fleet, answer, free_port, instances, metric, open_long_stream, post,
                         start_instance, start_proxy, start_server, wait_until)

# The equality test's cases: (prefill tp, decode tp, model, KV dtype).
EQUAL_CASES = [(p_tp, d_tp, model, kv) for p_tp, d_tp in [(1, 1), (2, 2), (2, 1), (1, 2), (4, 1)]
               for model, kv in [("tiny-qwen3", "bf16"), ("tiny-llama3", "fp8")]]
N_CONCURRENT = 200
if SANITIZED:  # sanitizers are 5-20x slower: fewer configurations
    # TP slices and fp8 scales in one case; tp 1 -> 1 runs in every test below.
    EQUAL_CASES = [(2, 1, "tiny-llama3", "fp8")]
    N_CONCURRENT = 32


@pytest.mark.parametrize("p_tp, d_tp, model_name, kv_dtype", EQUAL_CASES,
                         ids=[f"tp{p}-{d}-{m}-{kv}" for p, d, m, kv in EQUAL_CASES])
def test_pd_equals_colocated(bin_dir, models_dir, p_tp, d_tp, model_name, kv_dtype):
    model = os.path.join(models_dir, model_name)
    # Sanitized runs: the two prompts that differ most (a long ASCII one, a multi-byte one).
    prompts = [PROMPTS[1], PROMPTS[3]] if SANITIZED else PROMPTS
    with (start_server(bin_dir, model, "--kv_cache_dtype", kv_dtype, "--threads", "1") as ref,
          Fleet(bin_dir, model, (p_tp,), (d_tp,), kv_dtype) as fleet):
        for prompt in prompts:
            for stream in (False, True):
                body = {"prompt": prompt, "max_tokens": 24, "temperature": 0, "stream": stream}
                if stream:
                    body["stream_options"] = {"include_usage": True}
                want = answer(ref.url, "/v1/completions", body)
                got = answer(fleet.url, "/v1/completions", body)
                assert got == want, (model_name, kv_dtype, p_tp, d_tp, prompt, stream, got, want)
                chat = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 16, "temperature": 0,
                        "stream": stream}
                want = answer(ref.url, "/v1/chat/completions", chat)
                got = answer(fleet.url, "/v1/chat/completions", chat)
                assert got == want, (model_name, kv_dtype, p_tp, d_tp, "chat", prompt, stream, got, want)
        d = fleet.decodes[0]
        # Every request's KV came over the transfer engine; nothing was recomputed.
        assert metric(d.url, "baton:kv_transfers_total") == len(prompts) * 4, metric(d.url, "baton:kv_transfers_total")
        assert metric(d.url, "baton:kv_transfer_failures_total") == 0
        assert metric(d.url, "baton:prompt_tokens_total") == 0, "decode computed prompt tokens itself"
        fleet.assert_no_leaks()
        assert metric(fleet.prefills[0].url, "baton:kv_released_by_reader_total") == len(prompts) * 4


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


def test_held_blocks_time_out(bin_dir, tiny_qwen3):
    with Fleet(bin_dir, tiny_qwen3, kv_timeout_s=1.5) as fleet:
        p = fleet.prefills[0]
        status, data = post(p.url, "/v1/completions", {"prompt": "never read " * 20, "max_tokens": 1,
                                                        "kv_transfer_params": {"do_remote_decode": True}})
        assert status == 200, data
        params = json.loads(data)["kv_transfer_params"]
        assert params["remote_block_ids"] and params["transfer_id"]
        assert metric(p.url, "baton:kv_held_transfers") == 1
        # Stats are published after the step that answered: wait for them.
        wait_until(lambda: metric(p.url, "baton:kv_blocks_used") == len(params["remote_block_ids"]), timeout=5,
                   what="held blocks counted as used")
        wait_until(lambda: metric(p.url, "baton:kv_released_by_timeout_total") == 1, timeout=10, what="timeout")
        fleet.assert_no_leaks()


def test_prefill_killed_after_answer_decode_recomputes(bin_dir, tiny_qwen3):
    with start_server(bin_dir, tiny_qwen3, "--threads", "1") as ref, Fleet(bin_dir, tiny_qwen3) as fleet:
        p, d = fleet.prefills[0], fleet.decodes[0]
        body = {"prompt": PROMPTS[1], "max_tokens": 20, "temperature": 0}
        status, data = post(p.url, "/v1/completions", dict(body, max_tokens=1,
                                                             kv_transfer_params={"do_remote_decode": True}))
        assert status == 200, data
        params = json.loads(data)["kv_transfer_params"]
        p.stop(signal.SIGKILL)
        got = answer(d.url, "/v1/completions", dict(body, kv_transfer_params=params))
        assert got == answer(ref.url, "/v1/completions", body), got
        assert metric(d.url, "baton:kv_transfer_failures_total") == 1
        fleet.assert_no_leaks()


def test_prefill_killed_before_answer_proxy_retries(bin_dir, tiny_qwen3):
    with Fleet(bin_dir, tiny_qwen3, (1, 1), (1,), proxy_args=("--evict-after-s", "60")) as fleet:
        fleet.prefills[0].stop(signal.SIGKILL)  # still registered: the proxy finds out per request
        for i in range(6):
            text, finish, _ = answer(fleet.url, "/v1/completions", {"prompt": f"retry {i}", "max_tokens": 5,
                                                                    "temperature": 0, "ignore_eos": True})
            assert finish == "length"
        assert metric(fleet.url, "baton_proxy:prefill_retries_total") >= 1
        fleet.assert_no_leaks()


def test_decode_killed_mid_stream_client_gets_error(bin_dir, tiny_qwen3):
    with Fleet(bin_dir, tiny_qwen3) as fleet:
        d = fleet.decodes[0]
        conn = http.client.HTTPConnection("127.0.0.1", fleet.proxy.port, timeout=60)
        conn.request("POST", "/v1/completions", body=json.dumps(
            {"prompt": "long", "max_tokens": 1900, "temperature": 0, "ignore_eos": True, "stream": True}),
            headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 200
        first = r.read1(4096)
        assert first.startswith(b"data: "), first
        d.proc.send_signal(signal.SIGSTOP)  # frozen mid-stream (1900 tokens take far longer than this)
        d.stop(signal.SIGKILL)
        rest = b""
        while True:
            try:
                piece = r.read1(65536)
            except http.client.IncompleteRead:
                break
            if not piece:
                break
            rest += piece
        conn.close()
        tail = (first + rest).decode(errors="replace")
        assert '"error"' in tail and tail.rstrip().endswith("data: [DONE]"), tail[-400:]
        fleet.decodes.remove(d)
        fleet.assert_no_leaks()  # the prefill was read before the kill, or frees by timeout


def test_proxy_restart_instances_reregister(bin_dir, tiny_qwen3):
    port, ping = free_port(), free_port()
    proxy = start_proxy(bin_dir, port, ping)
    p = start_instance(bin_dir, tiny_qwen3, "kv_producer", ping)
    d = start_instance(bin_dir, tiny_qwen3, "kv_consumer", ping)
    try:
        wait_until(lambda: len(instances(proxy)) == 2, what="registration")
        assert answer(proxy.url, "/v1/completions", {"prompt": "a", "max_tokens": 3, "ignore_eos": True})[1] == "length"
        proxy.stop(signal.SIGKILL)
        proxy = start_proxy(bin_dir, port, ping)
        wait_until(lambda: len(instances(proxy)) == 2, timeout=15, what="re-registration")
        assert answer(proxy.url, "/v1/completions", {"prompt": "b", "max_tokens": 3, "ignore_eos": True})[1] == "length"
        # A clean shutdown unregisters at once.
        d.stop()
        wait_until(lambda: len(instances(proxy)) == 1, timeout=5, what="unregistration")
        status, data = post(proxy.url, "/v1/completions", {"prompt": "c", "max_tokens": 3})
        assert status == 503 and b"no decode instance" in data, (status, data)
        # The prefill computed it and pinned its blocks: the proxy gave them back at once.
        wait_until(lambda: metric(p.url, "baton:kv_held_transfers") == 0 and
                   metric(p.url, "baton:kv_blocks_used") == 0, timeout=5, what="prefill released by the proxy")
    finally:
        for x in (p, d, proxy):
            x.stop()


def test_client_disconnect_aborts_both_sides(bin_dir, tiny_qwen3):
    with Fleet(bin_dir, tiny_qwen3) as fleet:
        s = open_long_stream(fleet.proxy.port)
        got = b""
        while b"data: " not in got:
            piece = s.recv(4096)
            assert piece, got
            got += piece
        s.close()
        d = fleet.decodes[0]
        wait_until(lambda: metric(d.url, 'baton:request_success_total{finished_reason="abort"}') == 1, timeout=20,
                   what="decode abort")
        fleet.assert_no_leaks()
        assert metric(fleet.url, "baton_proxy:client_aborts_total") == 1


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
