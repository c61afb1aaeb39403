#!/usr/bin/env python3
"""NIXL (UCX backend) read bandwidth between two processes on this host, host memory, for the
same cases as `baton-bench xfer`: batches of `batch` ranges of `size` bytes, 2*size apart.

usage: nixl_read_bench.py [--sizes 16384,1048576] [--batches 1,16] [--seconds 0.5] [--json FILE]
(needs `pip install nixl-cu13`; see bench/RESULTS.md)
"""
import argparse
import json
import multiprocessing as mp
import time

import numpy as np
from nixl_cu13._api import nixl_agent, nixl_agent_config

REGION = 1 << 30


def target(conn):
    agent = nixl_agent("target", nixl_agent_config(backends=["UCX"]))
    buf = np.ones(REGION, dtype=np.uint8)
    descs = agent.get_reg_descs([(buf.ctypes.data, REGION, 0, "")], "DRAM")
    agent.register_memory(descs)
    conn.send((agent.get_agent_metadata(), buf.ctypes.data))
    conn.recv()  # done
    agent.deregister_memory(descs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="16384,1048576")
    ap.add_argument("--batches", default="1,16,128")
    ap.add_argument("--seconds", type=float, default=0.5)
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args()
    parent, child = mp.Pipe()
    p = mp.Process(target=target, args=(child,))
    p.start()
    meta, remote_addr = parent.recv()
    agent = nixl_agent("reader", nixl_agent_config(backends=["UCX"]))
    local = np.zeros(REGION, dtype=np.uint8)
    reg = agent.get_reg_descs([(local.ctypes.data, REGION, 0, "")], "DRAM")
    agent.register_memory(reg)
    peer = agent.add_remote_agent(meta)
    print("| size | batch | GB/s | us/batch | batches |\n|---|---|---|---|---|")
    rows = []
    for size in map(int, a.sizes.split(",")):
        for batch in map(int, a.batches.split(",")):
            if 2 * size * batch > REGION:
                continue
            ld = agent.get_xfer_descs([(local.ctypes.data + 2 * i * size, size, 0) for i in range(batch)], "DRAM")
            rd = agent.get_xfer_descs([(remote_addr + 2 * i * size, size, 0) for i in range(batch)], "DRAM")
            h = agent.initialize_xfer("READ", ld, rd, peer)

            def once():
                state = agent.transfer(h)
                while state not in ("DONE", "ERR"):
                    state = agent.check_xfer_state(h)
                assert state == "DONE", state

            once()
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < a.seconds or n < 3:
                once()
                n += 1
            dt = time.perf_counter() - t0
            print(f"| {size} | {batch} | {size * batch * n / dt / 1e9:.2f} | {dt / n * 1e6:.1f} | {n} |", flush=True)
            rows.append({"size": size, "batch": batch, "gb_per_s": size * batch * n / dt / 1e9, "us_per_batch": dt / n * 1e6})
            agent.release_xfer_handle(h)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)
    parent.send("done")
    p.join()


if __name__ == "__main__":
    main()
