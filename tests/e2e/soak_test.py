"""Soak under chaos: streamed requests at high concurrency through baton-proxy -> 2 prefill -> 2
decode (tiny-qwen3, 127.0.0.1) while a chaos loop kill -9s one instance at a time and restarts it.

Afterwards, every request must have either completed with exactly the colocated greedy output or
ended with a clear error (an HTTP error status with OpenAI error JSON, or an SSE error event
followed by [DONE]); none may hang or end silently; survivors must hold no KV blocks.

usage: pytest tests/e2e/soak_test.py [--bin-dir build/apps] [--models ../shared/models]
       [--soak-requests 1000] [--soak-concurrency 64] [--soak-chaos-interval-s 0.5]
       [--soak-kv-timeout-s 10] [--soak-json out.json]   (-s shows the result line)
"""
import asyncio
import json
import random
import signal
import threading
import time

from server_util import free_port, instances, metric, start_instance, start_proxy, start_server, wait_until

PROMPTS = [f"Soak prompt {i}: " + " ".join(str((i * 7 + j) % 97) for j in range(i % 23)) for i in range(40)]


async def http_request(port, body, timeout):
    """POST /v1/completions; returns (status, raw body bytes), de-chunked."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    data = json.dumps(body).encode()
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(-1), timeout)
    writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/1.1 ") else 0
    if b"transfer-encoding: chunked" in head.lower():
        out = b""
        while rest:
            line, _, rest = rest.partition(b"\r\n")
            n = int(line.split(b";")[0] or b"0", 16)
            if n == 0:
                break
            out += rest[:n]
            rest = rest[n + 2:]
        rest = out
    return status, rest


def classify(status, body, want):
    """'ok', 'error' (clear error) or a failure kind."""
    if status == 0:
        return "broken"
    if status != 200:
        try:
            return "error" if "error" in json.loads(body) else "unclear-error"
        except ValueError:
            return "unclear-error"
    events = [e[6:] for e in body.decode(errors="replace").split("\n\n") if e.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        return "broken"
    text, finish = "", None
    for e in events[:-1]:
        j = json.loads(e)
        if "error" in j:
            return "error"
        for c in j.get("choices", []):
            text += c.get("text") or ""
            finish = c.get("finish_reason") or finish
    if finish is None:
        return "broken"
    return "ok" if text == want else "mismatch"


def test_soak_under_chaos(bin_dir, tiny_qwen3, pytestconfig):
    requests = pytestconfig.getoption("--soak-requests")
    concurrency = pytestconfig.getoption("--soak-concurrency")
    chaos_interval_s = pytestconfig.getoption("--soak-chaos-interval-s")
    kv_timeout_s = pytestconfig.getoption("--soak-kv-timeout-s")
    json_path = pytestconfig.getoption("--soak-json")
    rng = random.Random(7)
    max_tokens = {p: 8 + (i * 5) % 40 for i, p in enumerate(PROMPTS)}

    ref = start_server(bin_dir, tiny_qwen3, "--threads", "1")
    want = {}
    try:
        async def refs():
            for p in PROMPTS:
                st, body = await http_request(ref.port, {"prompt": p, "max_tokens": max_tokens[p], "temperature": 0,
                                                         "stream": False}, 60)
                assert st == 200, body
                want[p] = json.loads(body)["choices"][0]["text"]
        asyncio.run(refs())
    finally:
        ref.stop()

    port, ping = free_port(), free_port()
    proxy = start_proxy(bin_dir, port, ping, "--evict-after-s", "3", "--connect-timeout-s", "5")
    fleet = {}
    lock = threading.Lock()

    def launch(name):
        role = "kv_producer" if name.startswith("P") else "kv_consumer"
        fleet[name] = start_instance(bin_dir, tiny_qwen3, role, ping, kv_timeout_s=kv_timeout_s)

    for name in ("P0", "P1", "D0", "D1"):
        launch(name)
    wait_until(lambda: len(instances(proxy)) == 4, what="fleet registered")

    done = threading.Event()
    kills = []

    def chaos():
        while not done.wait(chaos_interval_s):
            name = rng.choice(sorted(fleet))
            with lock:
                fleet[name].stop(signal.SIGKILL)
                kills.append(name)
            time.sleep(0.3)
            with lock:
                launch(name)

    outcomes = {}
    t0 = time.time()

    async def client():
        sem = asyncio.Semaphore(concurrency)

        async def one(i):
            p = PROMPTS[i % len(PROMPTS)]
            body = {"prompt": p, "max_tokens": max_tokens[p], "temperature": 0, "stream": True}
            async with sem:
                try:
                    st, raw = await http_request(port, body, 120)
                    kind = classify(st, raw, want[p])
                except asyncio.TimeoutError:
                    kind = "hung"
                except OSError:
                    kind = "broken"
            outcomes[kind] = outcomes.get(kind, 0) + 1

        await asyncio.gather(*[one(i) for i in range(requests)])

    chaos_thread = threading.Thread(target=chaos, daemon=True)
    chaos_thread.start()
    try:
        asyncio.run(client())
        elapsed = time.time() - t0
        done.set()
        chaos_thread.join()
        # Survivors (everyone, after the last restart) must come back to zero used blocks: held
        # transfers of killed decodes expire after kv_timeout_s.
        leaked = 0
        for name, inst in fleet.items():
            try:
                wait_until(lambda: metric(inst.url, "baton:kv_blocks_used") == 0 and
                           metric(inst.url, "baton:kv_held_transfers") == 0, timeout=kv_timeout_s + 15,
                           what=f"{name} to free its blocks")
            except AssertionError:
                leaked += int(metric(inst.url, "baton:kv_blocks_used"))
        result = {"requests": requests, "concurrency": concurrency, "kills": len(kills),
                  "completed_identical": outcomes.get("ok", 0), "clear_errors": outcomes.get("error", 0),
                  "mismatched": outcomes.get("mismatch", 0), "hung": outcomes.get("hung", 0),
                  "broken_or_unclear": outcomes.get("broken", 0) + outcomes.get("unclear-error", 0),
                  "leaked_blocks": leaked, "seconds": round(elapsed, 1),
                  "proxy_prefill_retries": metric(proxy.url, "baton_proxy:prefill_retries_total"),
                  "proxy_decode_retries": metric(proxy.url, "baton_proxy:decode_retries_total")}
        print(json.dumps(result))
        if json_path:
            with open(json_path, "w") as f:
                json.dump(result, f, indent=1)
        lost = result["mismatched"] + result["hung"] + result["broken_or_unclear"]
        assert (lost == 0 and leaked == 0 and result["completed_identical"] + result["clear_errors"] == requests
                and result["kills"] >= 1 and result["completed_identical"] >= requests // 5), result
    finally:
        done.set()
        for inst in list(fleet.values()) + [proxy]:
            inst.stop()
