#!/usr/bin/env python3
"""NIXL (UCX backend) read bandwidth between two processes on this host, host memory, for the
same cases as `baton-bench xfer`: batches of `batch` ranges of `size` bytes, 2*size apart.

usage: nixl_read_bench.py [--sizes 16384,1048576] [--batches 1,16] [--seconds 0.5] [--json FILE]
(needs `pip install nixl-cu13`; see bench/RESULTS.md)
"""
import numpy as np
from nixl_cu13._api import nixl_agent, nixl_agent_config
from read_cases import REGION, parse_args, run, target_process


def target(conn):
    agent = nixl_agent("target", nixl_agent_config(backends=["UCX"]))
    buf = np.ones(REGION, dtype=np.uint8)
    descs = agent.get_reg_descs([(buf.ctypes.data, REGION, 0, "")], "DRAM")
    agent.register_memory(descs)
    conn.send((agent.get_agent_metadata(), buf.ctypes.data))
    conn.recv()  # done
    agent.deregister_memory(descs)


def main():
    a = parse_args()
    with target_process(target) as (meta, remote_addr):
        agent = nixl_agent("reader", nixl_agent_config(backends=["UCX"]))
        local = np.zeros(REGION, dtype=np.uint8)
        reg = agent.get_reg_descs([(local.ctypes.data, REGION, 0, "")], "DRAM")
        agent.register_memory(reg)
        peer = agent.add_remote_agent(meta)

        def prepare(size, batch):
            ld = agent.get_xfer_descs([(local.ctypes.data + 2 * i * size, size, 0) for i in range(batch)], "DRAM")
            rd = agent.get_xfer_descs([(remote_addr + 2 * i * size, size, 0) for i in range(batch)], "DRAM")
            h = agent.initialize_xfer("READ", ld, rd, peer)

            def once():
                state = agent.transfer(h)
                while state not in ("DONE", "ERR"):
                    state = agent.check_xfer_state(h)
                assert state == "DONE", state

            return once, lambda: agent.release_xfer_handle(h)

        run(a, prepare)


if __name__ == "__main__":
    main()
