"""e2e: P/D disaggregation with real processes on 127.0.0.1 (baton-proxy + prefill + decode)
under faults (pd_equal_test.py and pd_proxy_test.py have the rest). Each ends with no leaked
block: every instance's kv_blocks_used returns to 0 and nothing stays held.

- held blocks time out
- a prefill killed after answering (the decode recomputes); a prefill killed before answering
  (the proxy retries elsewhere); a decode killed mid-stream (the client gets an error)
- a proxy restart (instances re-register); a client that disconnects (both sides abort)

usage: pytest tests/e2e/pd_faults_test.py [--bin-dir build/apps] [--models ../shared/models]
"""
import http.client
import json
import signal

from server_util import (PROMPTS, Fleet, answer, free_port, instances, metric, open_long_stream, post, start_instance,
                         start_proxy, start_server, wait_until)


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
