"""e2e: baton-bench serve against a real baton-server and a baton-proxy P/D pair.

- the result JSON has the documented schema; its numbers agree with each other (totals, rates,
  percentile order) and with the server's own counters (/metrics prompt and generation tokens)
- every request's streamed tokens equal usage.completion_tokens (the tool's cross-check) and its
  lengths follow the dataset options (ignore_eos: exactly what was asked)
- goodput follows the SLOs (all requests meet a loose one, none a 1 us TTFT)
- failures are counted and reported, never hidden (a dead server: exit 1, JSON with the errors)
- the PNGs (serve's CDFs, report's sweep) are valid images: every chunk's CRC, IHDR size, IDAT
  inflates to exactly the rows the header promises

usage: pytest tests/e2e/bench_serve_test.py [--bin-dir build/apps] [--models ../shared/models]
"""
import json
import os
import struct
import subprocess
import zlib

import pytest
from tokenizers import Tokenizer

from server_util import Fleet, free_port, metric, start_server


def check_png(path, want_size=None):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG signature"
    pos, chunks, idat = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"{path}: bad CRC in {kind}"
        chunks.append(kind)
        if kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks, chunks
    ihdr = data[16:29]
    width, height, depth, color = struct.unpack(">IIBB", ihdr[:10])
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color]
    row = 1 + (width * channels * depth + 7) // 8
    assert len(zlib.decompress(idat)) == height * row, f"{path}: pixel data does not fill {width}x{height}"
    if want_size:
        assert (width, height) == want_size, (width, height)
    return width, height


def run_bench(bin_dir, *args, expect_rc=0):
    out = subprocess.run([os.path.join(bin_dir, "baton-bench"), "serve", *args], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == expect_rc, f"rc {out.returncode}: {out.stdout[-2000:]} {out.stderr[-2000:]}"
    return out


def check_summary(s, count):
    assert s["count"] == count, (s["count"], count)
    if count == 0:
        return
    order = [s["min"], s["p50"], s["p90"], s["p99"], s["max"]]
    assert all(a <= b + 1e-9 for a, b in zip(order, order[1:])), order
    assert abs(s["median"] - s["p50"]) < 1e-9 and s["min"] <= s["mean"] <= s["max"] and s["std"] >= 0


def check_result(j, n, in_range, out_range):
    for key, kind in [("schema", str), ("date", str), ("label", str), ("endpoint", str), ("model", str),
                      ("dataset", dict), ("num_prompts", int), ("duration_s", float), ("completed", int),
                      ("failed", int), ("failures", dict), ("total_input_tokens", int), ("total_output_tokens", int),
                      ("request_throughput", float), ("output_throughput", float), ("total_token_throughput", float),
                      ("ttft_ms", dict), ("tpot_ms", dict), ("itl_ms", dict), ("e2e_ms", dict), ("requests", list)]:
        assert isinstance(j.get(key), kind), f"{key}: {type(j.get(key))}"
    assert j["schema"] == "baton-bench-serve/1"
    assert j["completed"] == n and j["failed"] == 0 and j["failures"] == {}, (j["completed"], j["failures"])
    reqs = j["requests"]
    assert len(reqs) == n
    for r in reqs:
        assert r["ok"] and r["streamed_tokens"] == r["completion_tokens"], r
        assert in_range[0] <= r["prompt_tokens"] <= in_range[1], (r, in_range)
        assert out_range[0] <= r["completion_tokens"] <= out_range[1], (r, out_range)
        assert 0 < r["ttft_ms"] <= r["e2e_ms"], r
        if r["completion_tokens"] > 1:
            tpot = (r["e2e_ms"] - r["ttft_ms"]) / (r["completion_tokens"] - 1)
            assert abs(r["tpot_ms"] - tpot) < 1e-6 * max(1, tpot), (r, tpot)
    assert j["total_output_tokens"] == sum(r["completion_tokens"] for r in reqs)
    assert j["total_input_tokens"] == sum(r["prompt_tokens"] for r in reqs)
    d = j["duration_s"]
    assert max(r["start_s"] + r["e2e_ms"] / 1e3 for r in reqs) <= d + 1e-3
    assert abs(j["request_throughput"] - n / d) < 1e-6 * n / d
    assert abs(j["output_throughput"] - j["total_output_tokens"] / d) < 1e-6 * j["output_throughput"]
    check_summary(j["ttft_ms"], n)
    check_summary(j["e2e_ms"], n)
    check_summary(j["tpot_ms"], sum(1 for r in reqs if r["completion_tokens"] > 1))
    check_summary(j["itl_ms"], j["itl_ms"]["count"])
    assert j["itl_ms"]["count"] >= 1


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return str(tmp_path_factory.mktemp("bench"))


@pytest.fixture(scope="module")
def colocated_run(bin_dir, tiny_qwen3, tmp):
    """(server, bench output, result JSON, CDF plot) of a run against a colocated server, which
    stays up for the module and served nothing else before."""
    with start_server(bin_dir, tiny_qwen3, "--threads", "1") as srv:
        res = os.path.join(tmp, "colocated.json")
        png = os.path.join(tmp, "colocated.png")
        out = run_bench(bin_dir, "--base-url", srv.url, "--num-prompts", "24", "--request-rate", "40",
                        "--max-concurrency", "8", "--random-input-len", "64", "--random-output-len", "16",
                        "--random-range-ratio", "0.5", "--random-prefix-ratio", "0.5", "--seed", "3",
                        "--slo", "ttft=30s,tpot=10s", "--label", "colocated", "--json", res, "--plot", png)
        yield srv, out, res, png


@pytest.fixture(scope="module")
def pd_run(bin_dir, tiny_qwen3, tmp):
    """(fleet, result JSON) of a run through a proxy + prefill + decode, which stay up for the module."""
    with Fleet(bin_dir, tiny_qwen3) as fleet:
        res = os.path.join(tmp, "pd.json")
        run_bench(bin_dir, "--base-url", fleet.url, "--num-prompts", "16", "--request-rate", "inf",
                  "--max-concurrency", "4", "--random-input-len", "40", "--random-output-len", "12",
                  "--label", "pd", "--json", res)
        yield fleet, res


def test_colocated_numbers_are_consistent_with_the_server(bin_dir, tiny_qwen3, tmp, colocated_run):
    srv, out, res, png = colocated_run
    assert "Successful requests:" in out.stdout and "Median ttft" in out.stdout, out.stdout
    j = json.load(open(res))
    check_result(j, 24, (33, 96), (8, 24))
    assert j["label"] == "colocated" and j["request_rate"] == 40 and j["max_concurrency"] == 8
    assert j["model"] == "tiny-qwen3", j["model"]  # found through /v1/models
    assert j["goodput"]["good_requests"] == 24 and j["goodput"]["fraction"] == 1.0
    # The server counted the same tokens (nothing else ran on it).
    assert metric(srv.url, "baton:generation_tokens_total") == j["total_output_tokens"]
    # The shared prefix (32 tokens: two whole blocks) shows up as prefix-cache hits, and the
    # server computed the rest of the prompts.
    hits = metric(srv.url, "baton:prefix_cache_hit_blocks_total")
    assert hits >= 2 and metric(srv.url, "baton:prompt_tokens_total") + 16 * hits == j["total_input_tokens"]
    check_png(png, (1200, 900))

    # An SLO nobody meets: no goodput, and the same requests still complete.
    tight = os.path.join(tmp, "tight.json")
    run_bench(bin_dir, "--base-url", srv.url, "--num-prompts", "4", "--random-input-len", "16",
              "--random-output-len", "4", "--slo", "ttft=1us", "--json", tight)
    t = json.load(open(tight))
    assert t["completed"] == 4 and t["goodput"]["good_requests"] == 0 and t["goodput"]["requests_per_s"] == 0

    # Chat with text prompts drawn from the tokenizer's vocabulary, and a file dataset.
    chat = os.path.join(tmp, "chat.json")
    run_bench(bin_dir, "--base-url", srv.url, "--endpoint", "/v1/chat/completions", "--tokenizer", tiny_qwen3,
              "--num-prompts", "6", "--random-input-len", "20", "--random-output-len", "6", "--json", chat)
    c = json.load(open(chat))
    assert c["completed"] == 6 and all(r["completion_tokens"] == 6 for r in c["requests"]), c["requests"]
    ds = os.path.join(tmp, "ds.jsonl")
    with open(ds, "w") as f:
        f.write(json.dumps({"prompt": "Once upon a time", "max_tokens": 5}) + "\n")
        f.write(json.dumps({"conversations": [{"from": "human", "value": "Hi"},
                                              {"from": "gpt", "value": "Hello there, friend"}]}) + "\n")
    fr = os.path.join(tmp, "file.json")
    run_bench(bin_dir, "--base-url", srv.url, "--dataset", "file", "--dataset-path", ds, "--tokenizer", tiny_qwen3,
              "--num-prompts", "4", "--json", fr)
    lens = sorted(r["completion_tokens"] for r in json.load(open(fr))["requests"])
    reply = len(Tokenizer.from_file(os.path.join(tiny_qwen3, "tokenizer.json"))
                .encode("Hello there, friend", add_special_tokens=False).ids)
    assert lens == sorted([5, 5, reply, reply]), (lens, reply)


def test_pd_through_the_proxy(pd_run):
    fleet, res = pd_run
    j = json.load(open(res))
    check_result(j, 16, (40, 40), (12, 12))
    # The decode read the prompts' KV rather than computing them.
    decode = fleet.decodes[0]
    assert metric(decode.url, "baton:kv_transfers_total") >= 16
    # The prefill made each request's first token, the decode the rest; the client saw them all.
    prefill = fleet.prefills[0]
    assert metric(prefill.url, "baton:generation_tokens_total") == 16
    assert metric(decode.url, "baton:generation_tokens_total") + 16 == j["total_output_tokens"]
    fleet.assert_no_leaks()


def test_failures_are_counted_not_hidden(bin_dir, tmp):
    res = os.path.join(tmp, "dead.json")
    out = run_bench(bin_dir, "--base-url", f"http://127.0.0.1:{free_port()}", "--num-prompts", "5", "--json", res,
                    expect_rc=1)
    assert "every request failed" in out.stderr and "Failed requests:" in out.stdout, out
    j = json.load(open(res))
    assert j["completed"] == 0 and j["failed"] == 5 and sum(j["failures"].values()) == 5, j["failures"]
    assert all(not r["ok"] and "cannot connect" in r["error"] for r in j["requests"])
    for bad, msg in [(["--request-rate", "fast"], "--request-rate"), (["--slo", "ttft=3"], "unit"),
                     (["--endpoint", "/v1/embeddings"], "--endpoint"), (["--base-url", "http://host.invalid:1"], "cannot resolve host"),
                     (["--base-url", "https://127.0.0.1:1"], "only http://"), (["--timeout-s", "0"], "--timeout-s")]:
        out = run_bench(bin_dir, *bad, expect_rc=1)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and msg in lines[0], (bad, out.stderr)


def test_report_compares_runs(bin_dir, tmp, colocated_run, pd_run):
    results = [colocated_run[2], pd_run[1]]
    assert all(os.path.exists(r) for r in results), "the colocated and P/D runs feed the report"
    table, png = os.path.join(tmp, "sweep.md"), os.path.join(tmp, "sweep.png")
    out = subprocess.run([os.path.join(bin_dir, "baton-bench"), "report", *results, "--table", table,
                          "--plot", png], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = [line for line in open(table) if line.startswith("| colocated") or line.startswith("| pd")]
    assert len(rows) == 2 and "| 40 |" in rows[0] and "| inf |" in rows[1], rows
    check_png(png, (1400, 1000))
