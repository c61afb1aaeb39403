"""What the peer read benchmarks share: the cases `baton-bench xfer` measures (batches of `batch`
ranges of `size` bytes, 2*size apart, inside a REGION-byte region), their command line, timing
and the table / JSON they print. Each peer script supplies how one case is read."""
import argparse
import contextlib
import json
import multiprocessing as mp
import time

REGION = 1 << 30


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="16384,1048576")
    ap.add_argument("--batches", default="1,16,128")
    ap.add_argument("--seconds", type=float, default=0.5)
    ap.add_argument("--json", help="write the rows here")
    return ap.parse_args()


@contextlib.contextmanager
def target_process(target):
    """Runs target(conn) in a child process (the owner of the memory read); yields the first thing
    it sends (how to reach its memory) and, on leaving, sends it "done" and waits for it."""
    parent, child = mp.Pipe()
    p = mp.Process(target=target, args=(child,))
    p.start()
    try:
        yield parent.recv()
    finally:
        if p.is_alive():
            parent.send("done")
        p.join()


def run(args, prepare):
    """prepare(size, batch) -> (once, release): `once` reads the batch once (it is called once to
    warm up, then for at least args.seconds and 3 times), `release` (or None) ends the case."""
    print("| size | batch | GB/s | us/batch | batches |\n|---|---|---|---|---|")
    rows = []
    for size in map(int, args.sizes.split(",")):
        for batch in map(int, args.batches.split(",")):
            if 2 * size * batch > REGION:
                continue
            once, release = prepare(size, batch)
            once()
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < args.seconds or n < 3:
                once()
                n += 1
            dt = time.perf_counter() - t0
            if release:
                release()
            row = {"size": size, "batch": batch, "gb_per_s": size * batch * n / dt / 1e9, "us_per_batch": dt / n * 1e6}
            print(f"| {size} | {batch} | {row['gb_per_s']:.2f} | {row['us_per_batch']:.1f} | {n} |", flush=True)
            rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
