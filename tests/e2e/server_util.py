"""Starts baton binaries on 127.0.0.1 with OS-picked ports for e2e tests, and stops them."""
import argparse
import os
import re
import signal
import subprocess
import threading
import time
import traceback
import urllib.request


class Proc:
    """A child process whose stdout is scanned for 'listening on HOST:PORT'."""

    def __init__(self, args, name, env=None, preexec_fn=None, start_timeout=60):
        self.name = name
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     preexec_fn=preexec_fn)
        self.port = None
        self.ping_port = None  # baton-proxy: where instances register
        self.stderr_lines = []
        self._port_ready = threading.Event()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        if not self._port_ready.wait(start_timeout):
            self.stop()
            raise RuntimeError(f"{name} did not start: {''.join(self.stderr_lines[-20:])}")
        if self.port is None:
            raise RuntimeError(f"{name} exited: {''.join(self.stderr_lines[-20:])}")

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


def run_each(tests, ctx, only="", healthy=None):
    """Runs each test on ctx in order (only: those whose name contains it), printing a PASS or
    FAIL line for each; stops, counting one more failure, once healthy() says the thing under
    test is gone. Returns (passed, failed)."""
    passed = failed = 0
    for t in tests:
        if only and only not in t.__name__:
            continue
        t0 = time.time()
        try:
            t(ctx)
            passed += 1
            print(f"PASS {t.__name__} ({time.time() - t0:.1f} s)", flush=True)
        except Exception:
            failed += 1
            print(f"FAIL {t.__name__}", flush=True)
            traceback.print_exc()
        if healthy and not healthy():
            failed += 1
            break
    return passed, failed


def run_tests(tests):
    """The main() of a test file whose tests each take ctx {"bin", "models"}: runs them (--only
    NAME picks those whose name contains NAME), prints the closing 'N passed, N failed' line, and
    returns the exit status."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    passed, failed = run_each(tests, {"bin": a.bin_dir, "models": a.models}, a.only)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0
