#!/usr/bin/env python3
"""Mooncake transfer engine (TCP transport, P2P handshake, no metadata server) read bandwidth
between two processes on this host, host memory, for the same cases as `baton-bench xfer`:
batches of `batch` ranges of `size` bytes, 2*size apart, the reads checked once per case.

usage: mooncake_read_bench.py [--sizes 16384,1048576] [--batches 1,16,128] [--seconds 0.5] [--json FILE]
(needs `pip install mooncake-transfer-engine nvidia-cuda-runtime-cu12`; its wheel links
libcuda.so.1 even for TCP, so on a machine without the NVIDIA driver run it with the CUDA
toolkit's stub library on LD_LIBRARY_PATH: bench/xfer_compare.sh does; see bench/RESULTS.md)
"""
import numpy as np
from mooncake.engine import TransferEngine
from read_cases import REGION, parse_args, run, target_process


def engine():
    e = TransferEngine()
    if e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") != 0:
        raise SystemExit("mooncake: initialize failed")
    return e


def target(conn):
    e = engine()
    buf = np.empty(REGION, dtype=np.uint8)
    buf[:] = np.arange(REGION, dtype=np.uint64).astype(np.uint8)  # byte i is i % 256
    if e.register_memory(buf.ctypes.data, REGION) != 0:
        raise SystemExit("mooncake: register_memory failed (target)")
    conn.send((e.get_rpc_port(), buf.ctypes.data))
    conn.recv()  # done
    e.unregister_memory(buf.ctypes.data)


def main():
    a = parse_args()
    with target_process(target) as (port, remote):
        peer = f"127.0.0.1:{port}"
        e = engine()
        local = np.zeros(REGION, dtype=np.uint8)
        if e.register_memory(local.ctypes.data, REGION) != 0:
            raise SystemExit("mooncake: register_memory failed (reader)")

        def prepare(size, batch):
            offs = [2 * i * size for i in range(batch)]
            dst = [local.ctypes.data + o for o in offs]
            src = [remote + o for o in offs]
            lens = [size] * batch

            def once():
                if e.batch_transfer_sync_read(peer, dst, src, lens) != 0:
                    raise SystemExit(f"mooncake: read of {batch} x {size} failed")

            local[: 2 * size * batch] = 0
            once()
            for o in offs[:: max(1, batch // 8)]:  # what arrived is the peer's bytes
                want = (np.arange(o, o + size, dtype=np.uint64) % 256).astype(np.uint8)
                assert np.array_equal(local[o : o + size], want), f"mooncake: wrong bytes at {o}"
            return once, None

        run(a, prepare)
        e.unregister_memory(local.ctypes.data)


if __name__ == "__main__":
    main()
