#!/usr/bin/env python3
"""TTFT and per-request KV transfer time, P/D (proxy + prefill + decode) vs colocated, on 127.0.0.1.

Starts a colocated baton-server and a P/D fleet on the same model, sends the same requests to
each one at a time (streamed; the prompt as token ids so its length is exact) and reports, per
prompt length, the median and p90 time to first token, the median end-to-end time, and the
decode side's KV read time per request (from its /metrics: kv_transfer_seconds_total /
kv_transfers_total over the run).

usage: bench/pd_ttft.py --bin-dir build/apps [--model DIR] [--prompt-lens 64,512,1536]
       [--requests 10] [--max-tokens 16] [--kv-cache-dtype bf16] [--threads 1] [--transport auto]
       [--device cuda] [--shape 8b] [--kv-cache-memory BYTES] [--pd-env UCX_TLS=tcp,cuda_copy]
       [--fleet 'ucx UCX_TLS=tcp,cuda_copy' --fleet cuda_ipc ...]
Without --model it writes a random Llama model (hidden 512, 8 layers; --shape 8b: Llama-3.1-8B's
layers, heads and sizes with a small vocabulary) to build/bench-model[-8b]. --pd-env sets
variables for the prefill and decode servers only (e.g. to force UCX's between-host transports on
one machine). --fleet measures several P/D fleets, one after another, against one colocated
server (each fleet's servers are started and stopped in turn). Before the timings, each prompt
length's greedy tokens from the P/D fleet must equal the colocated server's.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import http.client

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "e2e"))
from server_util import Proc, metric, start_server, wait_until  # noqa: E402


def stream_once(port, body):
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200, r.read()
    ttft = None
    buf = b""
    while True:
        piece = r.read1(65536)
        if not piece:
            break
        buf += piece
        if ttft is None and b'"text":"' in buf.replace(b'"text":""', b""):
            ttft = time.perf_counter() - t0
    conn.close()
    assert b"[DONE]" in buf and b'"error"' not in buf, buf[-300:]
    return ttft, time.perf_counter() - t0


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--model", default="")
    ap.add_argument("--prompt-lens", default="64,512,1536")
    ap.add_argument("--requests", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--kv-cache-dtype", default="bf16")
    ap.add_argument("--threads", default="1")
    ap.add_argument("--transport", default="auto")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shape", default="small", choices=["small", "8b"])
    ap.add_argument("--kv-cache-memory", type=int, default=512 << 20)
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--pd-env", action="append", default=[], help="KEY=VALUE for the P/D servers")
    ap.add_argument("--fleet", action="append", default=[],
                    help="'TRANSPORT [KEY=VALUE ...]': a P/D fleet to measure (repeatable; replaces --transport/--pd-env)")
    a = ap.parse_args()
    model = a.model
    if not model:
        shape = {"small": ["--hidden-size", "512", "--intermediate-size", "1408", "--num-layers", "8", "--num-heads",
                           "8", "--num-kv-heads", "2"],
                 "8b": ["--hidden-size", "4096", "--intermediate-size", "14336", "--num-layers", "32", "--num-heads",
                        "32", "--num-kv-heads", "8", "--max-position-embeddings", "16384"]}[a.shape]
        model = os.path.join(os.path.dirname(a.bin_dir.rstrip("/")), "bench-model" + ("" if a.shape == "small" else "-8b"))
        if not os.path.exists(os.path.join(model, "model.safetensors")):
            subprocess.run([os.path.join(a.bin_dir, "baton-make-model"), "--out", model, *shape], check=True,
                           capture_output=True)
    common = ["--kv_cache_dtype", a.kv_cache_dtype, "--threads", a.threads, "--max-model-len", str(a.max_model_len),
              "--kv-cache-memory", str(a.kv_cache_memory), "--no-enable-prefix-caching", "--device", a.device]
    # Each fleet: a transport and the variables its prefill and decode servers get.
    fleets = [(f.split()[0], f.split()[1:]) for f in a.fleet] or [(a.transport, a.pd_env)]
    lens = [int(x) for x in a.prompt_lens.split(",")]
    vocab = json.load(open(os.path.join(model, "config.json")))["vocab_size"]
    coloc = start_server(a.bin_dir, model, *common, start_timeout=300)
    try:
        print(f"model {model}, KV {a.kv_cache_dtype}, device {a.device}, {a.threads} compute thread(s) per instance, "
              f"{a.requests} sequential streamed requests per row, max_tokens {a.max_tokens}")
        # The colocated server answers each fleet's warm-up and correctness requests too; its timings
        # are taken beside each fleet's, so a drift of the machine shows in both columns.
        for transport, env in fleets:
            run_fleet(a, model, common, coloc, transport, env, lens, vocab)
    finally:
        coloc.stop()


def run_fleet(a, model, common, coloc, transport, env, lens, vocab):
    pd_env = dict(os.environ, **dict(kv.split("=", 1) for kv in env))
    proxy = Proc([os.path.join(a.bin_dir, "baton-proxy"), "--host", "127.0.0.1", "--port", "0", "--ping-port", "0",
                  "--log-level", "warning"], "baton-proxy")
    procs = [proxy]
    try:
        def instance(role):
            cfg = {"kv_role": role, "proxy_ip": "127.0.0.1", "proxy_ping_port": proxy.ping_port, "transport": transport}
            p = start_server(a.bin_dir, model, *common, "--kv-transfer-config", json.dumps(cfg), env=pd_env,
                             start_timeout=300)
            procs.append(p)
            return p
        prefill, decode = instance("kv_producer"), instance("kv_consumer")

        def healthy():
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
            conn.request("GET", "/health")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        wait_until(healthy, what="P/D fleet")
        print()
        print(f"## P/D transport {transport}" + (f", P/D env {' '.join(env)}" if env else ""))
        # P/D must answer what colocated answers (greedy), or its timings mean nothing.
        for n in lens:
            prompt = [(104729 * j + 3 * n) % (vocab - 10) + 5 for j in range(n)]
            outs = []
            for port in (coloc.port, proxy.port):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
                body = {"prompt": prompt, "max_tokens": a.max_tokens, "temperature": 0, "ignore_eos": True,
                        "return_token_ids": True}
                conn.request("POST", "/v1/completions", body=json.dumps(body),
                             headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                assert r.status == 200, data
                outs.append(json.loads(data)["choices"][0]["token_ids"])
                conn.close()
            assert outs[0] == outs[1], f"{n} prompt tokens: colocated {outs[0]} but P/D {outs[1]}"
        print(f"greedy outputs: P/D == colocated at every prompt length ({a.max_tokens} tokens each)")
        print()
        print("| prompt tokens | colocated TTFT p50 / p90 (ms) | P/D TTFT p50 / p90 (ms) | P/D / colocated TTFT | "
              "KV read per request (ms) | KV bytes per request | colocated e2e p50 (ms) | P/D e2e p50 (ms) |")
        print("|---|---|---|---|---|---|---|---|")
        for n in lens:
            res = {}
            t_before = metric(decode.url, "baton:kv_transfer_seconds_total")
            n_before = metric(decode.url, "baton:kv_transfers_total")
            b_before = metric(decode.url, "baton:kv_transfer_bytes_total")
            for name, port in (("coloc", coloc.port), ("pd", proxy.port)):
                ttfts, e2es = [], []
                for i in range(a.requests + 1):
                    prompt = [(7919 * (i + 1) + 104729 * j + n) % (vocab - 10) + 5 for j in range(n)]
                    body = {"prompt": prompt, "max_tokens": a.max_tokens, "temperature": 0, "ignore_eos": True,
                            "stream": True}
                    ttft, e2e = stream_once(port, body)
                    if i > 0:  # the first request warms up
                        ttfts.append(ttft)
                        e2es.append(e2e)
                res[name] = (ttfts, e2es)
            dn = metric(decode.url, "baton:kv_transfers_total") - n_before
            kv_ms = (metric(decode.url, "baton:kv_transfer_seconds_total") - t_before) / dn * 1000
            kv_bytes = (metric(decode.url, "baton:kv_transfer_bytes_total") - b_before) / dn
            c50, c90 = statistics.median(res["coloc"][0]) * 1000, pct(res["coloc"][0], 90) * 1000
            p50, p90 = statistics.median(res["pd"][0]) * 1000, pct(res["pd"][0], 90) * 1000
            print(f"| {n} | {c50:.1f} / {c90:.1f} | {p50:.1f} / {p90:.1f} | {p50 / c50:.2f}x | {kv_ms:.2f} | "
                  f"{kv_bytes / 1024:.0f} KiB | {statistics.median(res['coloc'][1]) * 1000:.1f} | "
                  f"{statistics.median(res['pd'][1]) * 1000:.1f} |", flush=True)
        assert metric(decode.url, "baton:kv_transfer_failures_total") == 0
        assert metric(decode.url, "baton:prompt_tokens_total") == 0
    finally:
        for p in procs:
            p.stop()

if __name__ == "__main__":
    main()
