"""The decode step's timeline from a BATON_STAMPS build's ring (src/backend/cuda/stamps.cuh):
per kernel launch, when its CTAs entered, passed the PDL wait and each phase mark, and left, in
us from the end of the launch before it (its last CTA's exit).
    python3 bench/gpu/stamps.py STAMPS.bin [LAUNCHES]   the last LAUNCHES launches (default 12)"""
import sys

import numpy as np

rec = np.dtype([("grid", "<u8"), ("seq", "<u4"), ("block", "<u4"), ("kind", "<u4"), ("marks", "<u4"),
                ("t", "<u8", 8)])
KINDS = {1: "decode_kernel", 2: "decode_kernel", 3: "decode_mma_kernel", 4: "decode_mma_kernel",
         10: "gemv norm+store", 11: "gemv norm+silu*up", 12: "gemv accumulate",
         20: "gemv_mma norm+store", 21: "gemv_mma norm+silu*up", 22: "gemv_mma accumulate"}
# Marks between entry and exit, by kernel (the order the kernel takes them).
MARKS = {1: ["pre-wait", "wait", "prepare_qkv", "keys", "partial out", "arrival"],
         3: ["pre-wait", "wait", "prepare_qkv", "keys", "partial out", "arrival"],
         **{k: ["pre-wait", "wait", "staged"] for k in (10, 11, 12, 20, 21, 22)}}

r = np.fromfile(sys.argv[1], dtype=rec)
n_show = int(sys.argv[2]) if len(sys.argv) > 2 else 12
if len(r) == 0:
    sys.exit("no stamps")
r = r[np.argsort(r["seq"])]
# A graph's replays reuse its kernels' gridids: a launch is one gridid's CTAs that entered within
# 100 us of each other (a replay of the step is hundreds of us long).
grids = {}
for g in np.unique(r["grid"]):
    x = r[r["grid"] == g]
    x = x[np.argsort(x["t"][:, 0])]
    cuts = np.flatnonzero(np.diff(x["t"][:, 0].astype(np.int64)) > 100_000) + 1
    for i, part in enumerate(np.split(x, cuts)):
        grids[(int(g), i)] = part
order = sorted(grids, key=lambda g: grids[g]["t"][:, 0].min())
ends = {g: max(int(x["t"][i, x["marks"][i] - 1]) for i in range(len(x))) for g, x in grids.items()}
span = (ends[order[-1]] - grids[order[0]]["t"][:, 0].min()) / 1e3
print(f"{len(r)} CTA records, {len(order)} launches over {span:.1f} us; times in us from the previous launch's end")
ticks = np.unique(np.diff(np.unique(r["t"][:, 0])))
print(f"globaltimer: smallest step between entries {ticks[ticks > 0].min() if (ticks > 0).any() else 0} ns")
print(f"{'kernel':22} {'CTAs':>5} {'entry first/med/last':>22} " + "  marks (median / max) ... exit (median / max)")
for k, g in enumerate(order[-n_show - 1:]):
    if k == 0:
        prev_end = ends[g]
        continue
    x = grids[g]
    kind = int(x["kind"].min())
    full = x[x["marks"] == x["marks"].max()]
    rel = lambda v: (np.asarray(v, dtype=np.int64) - prev_end) / 1e3
    e = rel(x["t"][:, 0])
    cols = [f"{e.min():6.2f}/{np.median(e):6.2f}/{e.max():6.2f}"]
    names = MARKS.get(kind, [])
    m = int(full["marks"][0])
    for i in range(1, m - 1):
        v = rel(full["t"][:, i])
        cols.append(f"{names[i - 1] if i - 1 < len(names) else i} {np.median(v):.2f}/{v.max():.2f}")
    ex = rel([int(x["t"][i, x["marks"][i] - 1]) for i in range(len(x))])
    cols.append(f"exit {np.median(ex):.2f}/{ex.max():.2f}")
    if kind in (1, 3):
        merger = x[x["kind"] == kind + 1]
        if len(merger):
            cols.append(f"(merging CTAs' exit {rel(merger['t'][:, 7]).max():.2f})")
    if len(x) != int(x["block"].max()) + 1:
        cols.append(f"(!) {len(x)} records for blocks up to {int(x['block'].max())}")
    print(f"{KINDS.get(kind, kind):22} {len(x):5} {cols[0]:>22}  " + "  ".join(cols[1:]))
    prev_end = ends[g]

# The last step's layers, kernel by kernel (a step starts after a gap of 20+ us with no launch):
# each mark as the median over layers of that layer's median / last CTA, from the previous end.
starts = [grids[g]["t"][:, 0].min() for g in order]
bounds = [0] + [i for i in range(1, len(order)) if (int(starts[i]) - ends[order[i - 1]]) > 20_000]
step = order[bounds[-1]:]
kinds = [int(grids[g]["kind"].min()) for g in step]
per = next((p for p in range(1, 8) if len(step) > 2 * p and all(kinds[i] == kinds[i % p] for i in range(len(step) - 1))), 0)
if per:
    layers = (len(step) - 1) // per
    print(f"\nlast step: {len(step)} launches, {layers} layers of {per}; per layer, median over layers of "
          "(median CTA / last CTA), us from the previous launch's end")
    total = 0.0
    for p in range(per):
        rows = []
        for li in range(layers):
            g, prev = step[li * per + p], step[li * per + p - 1] if li * per + p > 0 else None
            if prev is None:
                continue
            x = grids[g]
            full = x[x["marks"] == x["marks"].max()]
            m = int(full["marks"][0])
            pe = ends[prev]
            vals = [np.median(x["t"][:, 0].astype(np.int64) - pe), (x["t"][:, 0].astype(np.int64) - pe).max()]
            for i in range(1, m - 1):
                v = full["t"][:, i].astype(np.int64) - pe
                vals += [np.median(v), v.max()]
            ex = np.array([int(x["t"][i, x["marks"][i] - 1]) for i in range(len(x))]) - pe
            vals += [np.median(ex), ex.max()]
            rows.append(vals)
        n = min(len(v) for v in rows)
        med = np.median(np.array([v[:n] for v in rows]), axis=0) / 1e3
        kind = kinds[p]
        names = ["entry"] + MARKS.get(kind, [])[: (n - 4) // 2] + ["exit"]
        total += med[-1]
        print(f"{KINDS.get(kind, kind):22} " + "  ".join(f"{nm} {med[2 * i]:.2f}/{med[2 * i + 1]:.2f}" for i, nm in enumerate(names)))
    print(f"sum of the last CTAs' exits: {total:.1f} us per layer")
