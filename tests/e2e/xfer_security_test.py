"""e2e: the transfer plane as an attacker on the network meets it (README, "Reliability and
access control"). Each test plays an attack with a raw-socket client of the control protocol
against a real P/D fleet on 127.0.0.1, and fails if the attack succeeds:

- default configuration (no token): a hello without a capability, or with a guessed one, is
  refused and the refusal reveals no region, address or key; a client holding a real transfer's
  capability sees only the KV region, is served only that transfer's blocks, cannot write into
  the pool (the prefix cache stays unpoisoned), and cannot release another's transfer without its
  capability;
- 3,000 connections that never say hello (more than the prefill's file descriptors) leave its
  thread count and memory bounded and its log short, and P/D requests still work afterwards;
- with a deployment token: a capability alone is refused, the token admits.

usage: pytest tests/e2e/xfer_security_test.py [--bin-dir build/apps] [--models ../shared/models]
"""
import json
import resource
import socket
import struct
import threading
import time

from server_util import SANITIZED, Fleet, metric, post, start_instance, wait_until

HEADER = struct.Struct("<IIQQ")  # type, status, id, payload length (src/xfer/socket.h)
HELLO, WELCOME, REFUSED, READ, READ_DATA, WRITE, WRITE_DONE, NOTIFY, REGIONS_REQ, REGIONS, ERROR, AUTHORIZE = range(1, 13)
VERSION = 2


def frame(kind, payload=b"", ident=0):
    return HEADER.pack(kind, 0, ident, len(payload)) + payload


def ops(*ranges):
    return b"".join(struct.pack("<QQQ", *r) for r in ranges)


class Peer:
    """A raw control-protocol client: what an attacker would write."""

    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=10)

    def send(self, data):
        self.sock.sendall(data)

    def recv_exact(self, n):
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("peer closed the connection")
            out += chunk
        return out

    def recv(self):
        kind, _, ident, length = HEADER.unpack(self.recv_exact(HEADER.size))
        return kind, ident, self.recv_exact(length)

    def hello(self, capability=None, token=None):
        h = {"agent": "intruder", "version": VERSION}
        if capability is not None:
            h["capability"] = capability
        if token is not None:
            h["token"] = token
        self.send(frame(HELLO, json.dumps(h).encode()))
        return self.recv()

    def closed(self):
        try:
            return self.sock.recv(1) == b""
        except OSError:
            return True

    def close(self):
        self.sock.close()


def prefill_params(fleet, prompt):
    """What the proxy gets from a prefill: anyone who can reach its HTTP port can ask too."""
    status, data = post(fleet.prefills[0].url, "/v1/completions",
                        {"prompt": prompt, "max_tokens": 1, "temperature": 0,
                         "kv_transfer_params": {"do_remote_decode": True}})
    assert status == 200, data
    return json.loads(data)["kv_transfer_params"]


def release(p, token=None):
    """Lets a prefill free what prefill_params() made it hold, as a decode would."""
    agent = p["remote_ranks"][0]["agent"]
    peer = Peer(agent["host"], agent["port"])
    kind, _, payload = peer.hello(capability=p["remote_capability"], token=token)
    assert kind == WELCOME, payload
    peer.send(frame(NOTIFY, json.dumps({"transfer_id": p["transfer_id"], "capability": p["remote_capability"]}).encode()))
    peer.close()


def completion(fleet, prompt):
    status, data = post(fleet.url, "/v1/completions", {"prompt": prompt, "max_tokens": 8, "temperature": 0})
    assert status == 200, data
    return json.loads(data)["choices"][0]["text"]


def assert_reveals_nothing(payload):
    text = payload.decode(errors="replace")
    for secret in ("regions", "address", "keys", "ucx", "cuda_ipc"):
        assert secret not in text, f"the refusal reveals {secret}: {text}"


def proc_status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def test_default_config_refuses_peers_without_a_capability(bin_dir, tiny_qwen3):
    with Fleet(bin_dir, tiny_qwen3) as fleet:
        p = prefill_params(fleet, "who may read this")
        agent = p["remote_ranks"][0]["agent"]
        for cap in (None, "", "0" * 32, p["remote_capability"][:-1] + "x"):
            peer = Peer(agent["host"], agent["port"])
            kind, _, payload = peer.hello(capability=cap)
            assert kind == REFUSED, (cap, kind, payload)
            assert b"capability" in payload, payload
            assert_reveals_nothing(payload)
            assert peer.closed(), "a refused peer must be dropped"
            peer.close()
        # Requests sent before the handshake are not served either: the connection is dropped.
        peer = Peer(agent["host"], agent["port"])
        peer.send(frame(READ, ops((p["remote_ranks"][0]["region"], 0, 4096)), 1))
        assert peer.closed()
        peer.close()


def test_a_capability_reaches_its_own_blocks_only(bin_dir, tiny_qwen3):
    with Fleet(bin_dir, tiny_qwen3) as fleet:
        victim = "the victim's prompt, long enough to fill more than one KV block of sixteen tokens " * 2
        expected = completion(fleet, victim)
        p = prefill_params(fleet, "the attacker's own short prompt")
        rank = p["remote_ranks"][0]
        region, layer_bytes, block_bytes = rank["region"], rank["layer_bytes"], rank["block_bytes"]
        blocks = p["remote_block_ids"]
        peer = Peer(rank["agent"]["host"], rank["agent"]["port"])
        kind, _, payload = peer.hello(capability=p["remote_capability"])
        assert kind == WELCOME, payload
        welcome = json.loads(payload)
        assert [r["region"] for r in welcome["regions"]] == [region], welcome["regions"]
        assert welcome["writable"] is False
        # Its own blocks, in every layer: served.
        own = [(region, layer * layer_bytes + b * block_bytes, block_bytes) for layer in (0, 1) for b in blocks]
        peer.send(frame(READ, ops(*own), 1))
        kind, ident, data = peer.recv()
        assert kind == READ_DATA and ident == 1 and len(data) == block_bytes * len(own), (kind, len(data))
        # Any other block (the victim's among them), or the pool at large: refused, no byte sent.
        others = [b for b in range(0, max(blocks) + 8) if b not in blocks]
        above = max(blocks) + 1  # past the grant's end: the victim's blocks are allocated after ours
        for ident, rng in enumerate([(region, others[0] * block_bytes, block_bytes), (region, 0, layer_bytes),
                                     (region, blocks[0] * block_bytes, 2 * block_bytes + 1),
                                     (region, above * block_bytes, block_bytes),
                                     (region, (layer_bytes * 2) - block_bytes, block_bytes),
                                     (region, above * block_bytes + 1, 1)], start=2):
            peer.send(frame(READ, ops(rng), ident))
            kind, got, payload = peer.recv()
            assert kind == ERROR and got == ident and b"not granted" in payload, (kind, payload)
        # Writes into the pool: refused, and the cached prompt still answers as before.
        junk = b"\xff" * block_bytes
        for ident, b in enumerate(blocks + others[:4], start=10):
            peer.send(frame(WRITE, ops((region, b * block_bytes, block_bytes)), ident) + junk)
            kind, got, payload = peer.recv()
            assert kind == ERROR and got == ident, (kind, payload)
        assert completion(fleet, victim) == expected, "the prefix cache was poisoned"
        # Releasing a transfer takes its capability: a bare transfer id is ignored.
        assert metric(fleet.prefills[0].url, "baton:kv_held_transfers") >= 1
        peer.send(frame(NOTIFY, json.dumps({"transfer_id": p["transfer_id"]}).encode()))
        peer.send(frame(NOTIFY, json.dumps({"transfer_id": p["transfer_id"], "capability": "0" * 32}).encode()))
        peer.send(frame(REGIONS_REQ, b"", 99))  # answered after the notifications were handled
        kind, ident, _ = peer.recv()
        assert kind == REGIONS and ident == 99
        assert metric(fleet.prefills[0].url, "baton:kv_held_transfers") >= 1, "a forged release freed the blocks"
        peer.send(frame(NOTIFY, json.dumps({"transfer_id": p["transfer_id"],
                                            "capability": p["remote_capability"]}).encode()))
        wait_until(lambda: metric(fleet.prefills[0].url, "baton:kv_held_transfers") == 0, what="the release")
        # Released: the capability is revoked, reads stop, and it admits no new session.
        peer.send(frame(READ, ops(own[0]), 50))
        kind, _, payload = peer.recv()
        assert kind == ERROR and b"not granted" in payload, payload
        peer.close()
        again = Peer(rank["agent"]["host"], rank["agent"]["port"])
        kind, _, _ = again.hello(capability=p["remote_capability"])
        assert kind == REFUSED
        again.close()
        fleet.assert_no_leaks()


def test_connections_that_never_say_hello_are_bounded(bin_dir, tiny_qwen3):
    with Fleet(bin_dir, tiny_qwen3) as fleet:
        # This client may hold more descriptors than the servers it started (which keep the
        # usual limit of 1,024).
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
        completion(fleet, "warm up")
        prefill = fleet.prefills[0]
        p = prefill_params(fleet, "where is the handshake port")
        release(p)
        agent = p["remote_ranks"][0]["agent"]
        pid = prefill.proc.pid
        threads0, rss0 = proc_status(pid, "Threads"), proc_status(pid, "VmRSS")
        log0 = len(prefill.stderr_lines)
        socks, max_threads, max_rss = [], threads0, rss0
        try:
            for i in range(3000):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex((agent["host"], agent["port"]))  # the handshake may complete or not
                socks.append(s)
                if i % 250 == 0:
                    max_threads = max(max_threads, proc_status(pid, "Threads"))
                    max_rss = max(max_rss, proc_status(pid, "VmRSS"))
            time.sleep(1.0)
            max_threads = max(max_threads, proc_status(pid, "Threads"))
            max_rss = max(max_rss, proc_status(pid, "VmRSS"))
        finally:
            for s in socks:
                s.close()
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert max_threads <= threads0 + 4, (threads0, max_threads)
        if not SANITIZED:  # (ASan's quarantine keeps freed memory: RSS says nothing there)
            assert max_rss - rss0 < 32 * 1024, f"RSS grew by {max_rss - rss0} kB"
        lines = prefill.stderr_lines[log0:]
        assert len(lines) < 40, "".join(lines[-10:])
        # The fleet serves P/D as before.
        before = metric(fleet.decodes[0].url, "baton:kv_transfers_total")
        completion(fleet, "still serving after the flood")
        assert metric(fleet.decodes[0].url, "baton:kv_transfers_total") == before + 1
        fleet.assert_no_leaks()


def test_an_unauthenticated_request_makes_a_decode_reach_nothing(bin_dir, tiny_qwen3):
    """kv_transfer_params name the agent a decode connects to: a caller without the API key
    must not make it connect anywhere (not even to release the prefill's blocks)."""
    with Fleet(bin_dir, tiny_qwen3) as fleet:
        p = prefill_params(fleet, "bait for the decode")
        release(p)
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.settimeout(1.5)
        p["remote_ranks"][0]["agent"]["port"] = listener.getsockname()[1]
        decode = start_instance(bin_dir, tiny_qwen3, "kv_consumer", fleet.proxy.ping_port, extra=("--api-key", "k"))
        try:
            body = {"prompt": "bait for the decode", "max_tokens": 2, "temperature": 0, "kv_transfer_params": p}
            assert post(decode.url, "/v1/completions", body, timeout=60)[0] == 401
            try:
                listener.accept()[0].close()
                raise AssertionError("the decode connected to the agent an unauthenticated caller named")
            except socket.timeout:
                pass
            # With the key the decode does go there (so the check above can fail): it connects,
            # finds no agent, and computes the prompt itself.
            status = []
            t = threading.Thread(target=lambda: status.append(post(decode.url, "/v1/completions", body, key="k",
                                                                   timeout=60)[0]))
            t.start()
            listener.settimeout(0.2)
            reached, deadline = 0, time.time() + 60
            while t.is_alive() and time.time() < deadline:
                try:
                    listener.accept()[0].close()  # (the read, then the release: both find no agent)
                    reached += 1
                except socket.timeout:
                    pass
            t.join(1)
            assert reached >= 1 and status == [200], (reached, status)
        finally:
            decode.stop()
            listener.close()


def test_with_a_token_a_capability_alone_is_refused(bin_dir, tiny_qwen3):
    token = "deployment-secret"
    with Fleet(bin_dir, tiny_qwen3, token=token) as fleet:
        p = prefill_params(fleet, "token deployments")
        agent = p["remote_ranks"][0]["agent"]
        for cap, tok in ((p["remote_capability"], None), (p["remote_capability"], "guess"), (None, "")):
            peer = Peer(agent["host"], agent["port"])
            kind, _, payload = peer.hello(capability=cap, token=tok)
            assert kind == REFUSED and b"token" in payload, payload
            assert_reveals_nothing(payload)
            peer.close()
        peer = Peer(agent["host"], agent["port"])
        kind, _, payload = peer.hello(token=token)
        assert kind == WELCOME and json.loads(payload)["regions"], payload
        peer.close()
        release(p, token)
        before = metric(fleet.decodes[0].url, "baton:kv_transfers_total")
        completion(fleet, "a token fleet serves P/D")
        assert metric(fleet.decodes[0].url, "baton:kv_transfers_total") == before + 1
        fleet.assert_no_leaks()
