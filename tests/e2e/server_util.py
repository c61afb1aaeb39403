"""The processes and calls of the e2e tests: baton-server, baton-proxy and P/D fleets started on
127.0.0.1 with OS-picked ports and stopped again, and the HTTP requests and /metrics reads the
tests make of them. conftest.py turns them into fixtures; bench/pd_ttft.py uses them too."""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request

# scripts/sanitize.sh sets it: sanitizers are 5-20x slower, so the tests cover fewer configurations.
SANITIZED = bool(os.environ.get("BATON_SANITIZER_RUN"))


class Proc:
    """A child process whose stdout is scanned for 'listening on HOST:PORT'. Every one started
    is kept in Proc.started, so that conftest.py can stop what a test left running and show the
    stderr of the processes a failed test talked to."""

    started = []

    def __init__(self, args, name, env=None, preexec_fn=None, start_timeout=60):
        self.name = name
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     preexec_fn=preexec_fn)
        Proc.started.append(self)
        self.port = None
        self.ping_port = None  # baton-proxy: where instances register
        self.stderr_lines = []
        self._port_ready = threading.Event()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        if not self._port_ready.wait(start_timeout):
            self.stop()
            raise RuntimeError(f"{name} did not start: {self.stderr_tail()}")
        if self.port is None:
            raise RuntimeError(f"{name} exited: {self.stderr_tail()}")

    def _read_stdout(self):
        for line in self.proc.stdout:
            m = re.search(r"listening on [^ ]*:(\d+)", line)
            r = re.search(r"registrations on port (\d+)", line)
            if r:
                self.ping_port = int(r.group(1))
            if m and self.port is None:
                self.port = int(m.group(1))
                self._port_ready.set()
        self._port_ready.set()

    def _read_stderr(self):
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def stderr_tail(self, n_lines=20):
        return "".join(self.stderr_lines[-n_lines:])

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def alive(self):
        return self.proc.poll() is None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(bin_dir, model, *extra, preexec_fn=None, env=None, start_timeout=60):
    return Proc([os.path.join(bin_dir, "baton-server"), "--model", model, "--host", "127.0.0.1", "--port", "0",
                 "--kv-cache-memory", str(64 << 20), "--log-level", "warning", *extra], "baton-server",
                preexec_fn=preexec_fn, env=env, start_timeout=start_timeout)


def start_proxy(bin_dir, port=0, ping_port=0, *extra):
    return Proc([os.path.join(bin_dir, "baton-proxy"), "--host", "127.0.0.1", "--port", str(port), "--ping-port",
                 str(ping_port), "--log-level", "warning", *extra], "baton-proxy")


def start_instance(bin_dir, model, role, ping_port, tp=1, kv_dtype="auto", kv_timeout_s=60, extra=(), token=None):
    """A baton-server in a P/D role (kv_producer or kv_consumer) that registers at ping_port."""
    cfg = {"kv_role": role, "proxy_ip": "127.0.0.1", "proxy_ping_port": ping_port, "kv_timeout_s": kv_timeout_s,
           "heartbeat_s": 0.5}
    if token is not None:
        cfg["token"] = token
    return start_server(bin_dir, model, "--kv_cache_dtype", kv_dtype, "--block-size", "16", "-tp", str(tp),
                        "--threads", "1", "--kv-transfer-config", json.dumps(cfg), *extra)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def request(url, method, path, body=None, key=None, timeout=120):
    """(status, body bytes) of one request to url ("http://HOST:PORT"). `body`: bytes are sent as
    they are, anything else as JSON; `key`: sent as 'Authorization: Bearer KEY'."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


def post(url, path, body, key=None, timeout=120):
    return request(url, "POST", path, body, key=key, timeout=timeout)


def metric(url, name, key=None):
    """The value of metric `name` on url's /metrics; `key`: sent as 'Authorization: Bearer KEY'."""
    req = urllib.request.Request(url + "/metrics", headers={"Authorization": f"Bearer {key}"} if key else {})
    text = urllib.request.urlopen(req, timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def wait_until(cond, timeout=30, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def instances(proxy, key=None):
    """The proxy's /instances: what is registered, with the requests routed to each."""
    _, data = request(proxy.url, "GET", "/instances", key=key, timeout=10)
    return json.loads(data)


class Fleet:
    """baton-proxy with a prefill per entry of p_tps and a decode per entry of d_tps (their
    tensor-parallel sizes), every one registered before the constructor returns."""

    def __init__(self, bin_dir, model, p_tps=(1,), d_tps=(1,), kv_dtype="auto", kv_timeout_s=60, proxy_args=(),
                 p_dtype=None, token=None):
        self.bin_dir, self.model = bin_dir, model
        if token is not None:
            proxy_args = (*proxy_args, "--token", token)
        self.proxy = start_proxy(bin_dir, 0, 0, *proxy_args)
        self.prefills, self.decodes = [], []
        try:
            for tp in p_tps:
                self.prefills.append(start_instance(bin_dir, model, "kv_producer", self.proxy.ping_port, tp,
                                                    p_dtype or kv_dtype, kv_timeout_s, token=token))
            for tp in d_tps:
                self.decodes.append(start_instance(bin_dir, model, "kv_consumer", self.proxy.ping_port, tp, kv_dtype,
                                                   kv_timeout_s, token=token))
            want = len(p_tps) + len(d_tps)
            wait_until(lambda: len(instances(self.proxy)) == want, what="instances registered")
        except Exception:
            self.stop()
            raise

    @property
    def url(self):
        return self.proxy.url

    def all(self):
        return self.prefills + self.decodes

    def assert_no_leaks(self):
        for inst in self.all():
            if not inst.alive():
                continue
            try:
                wait_until(lambda: metric(inst.url, "baton:kv_blocks_used") == 0 and
                           metric(inst.url, "baton:kv_held_transfers") == 0 and
                           metric(inst.url, "baton:num_requests_running") == 0, timeout=30,
                           what=f"instance {inst.port} to free every block")
            except AssertionError:
                print(inst.stderr_tail())
                raise

    def stop(self):
        for p in self.all() + [self.proxy]:
            p.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# Prompts that P/D answers must match colocated ones on: short, long ASCII, repeated, multi-byte.
PROMPTS = ["1 2 3 4 5", "Once upon a time there was a robot who counted sheep: one, two, three, four, five, six, "
           "seven, eight, nine, ten, and then it counted them all again backwards",
           "x" * 5, "日本語 🤖 " * 12]


def answer(url, path, body):
    """Text, finish reason and completion tokens of a completion or chat answer, whole or streamed."""
    status, data = post(url, path, body)
    assert status == 200, (status, data[:500])
    chat = path.endswith("chat/completions")
    if not body.get("stream"):
        j = json.loads(data)
        c = j["choices"][0]
        return (c["message"]["content"] if chat else c["text"]), c["finish_reason"], j["usage"]["completion_tokens"]
    text, finish, usage = "", None, None
    lines = data.decode().split("\n\n")
    assert lines[-2] == "data: [DONE]", lines[-3:]
    for block in lines:
        if not block.startswith("data: ") or block == "data: [DONE]":
            continue
        j = json.loads(block[6:])
        assert "error" not in j, j
        if j.get("usage"):
            usage = j["usage"]["completion_tokens"]
        for c in j["choices"]:
            text += (c["delta"].get("content") or "") if chat else c["text"]
            finish = c["finish_reason"] or finish
    return text, finish, usage


def open_long_stream(port, extra_headers=""):
    """A raw socket with a long streamed completion request sent on it (the test reads it)."""
    s = socket.create_connection(("127.0.0.1", port))
    body = json.dumps({"prompt": "go", "max_tokens": 1900, "ignore_eos": True, "stream": True})
    s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\n{extra_headers}Content-Type: application/json\r\n"
              f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
    return s
