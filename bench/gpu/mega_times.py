"""The one-kernel decode step's timeline (src/backend/cuda/mega.cu, BATON_CUDA_MEGA_TIMES=FILE):
per point of a layer, the median and last CTA's %globaltimer in us from the layer's first CTA
start, the median over the layers (the first and last left out).
    python3 bench/gpu/mega_times.py FILE"""
import sys

import numpy as np

NAMES = ["layer start", "QKV input staged", "QKV rows out", "QKV barrier passed", "attention done (+ merge)",
         "attention barrier passed", "O input staged", "O rows out", "O barrier passed", "gate/up input staged",
         "gate/up rows out", "gate/up barrier passed", "down input staged", "down rows out", "down barrier passed",
         "  attention: q/k/v, keys in", "  attention: keys attended"]
ORDER = [0, 1, 2, 3, 15, 16] + list(range(4, 15))  # in the order a layer passes them
# Marks only the attention's CTAs set (the others leave them 0): over those CTAs alone.
PARTIAL = {15, 16}

raw = open(sys.argv[1], "rb").read()
grid, layers, marks = np.frombuffer(raw[:12], dtype="<i4")
t = np.frombuffer(raw[12:], dtype="<u8").reshape(grid, layers, marks).astype(np.int64)
if (t[:, :, 0] == 0).any():
    sys.exit("no complete step recorded")
rows = []
for li in range(1, layers - 1) if layers > 2 else range(layers):
    t0 = t[:, li, 0].min()
    row = []
    for k in range(min(marks, len(NAMES))):
        d = t[:, li, k]
        d = (d[d > 0] if k in PARTIAL else d) - t0
        row.append((np.median(d) / 1e3, d.max() / 1e3) if d.size else (np.nan, np.nan))
    rows.append(row)
rows = np.array(rows)  # [layer][mark][median, max]
per_layer = np.diff(t[:, :, 0].min(axis=0)) / 1e3
print(f"{grid} CTAs, {layers} layers; a layer takes {np.median(per_layer):.2f} us (median; "
      f"min {per_layer.min():.2f}, max {per_layer.max():.2f})")
print(f"{'point':26} {'median CTA':>11} {'last CTA':>9}   (us from the layer's first start)")
for k in ORDER:
    if k < rows.shape[1]:
        print(f"{NAMES[k]:26} {np.median(rows[:, k, 0]):11.2f} {np.median(rows[:, k, 1]):9.2f}")

# Where a layer goes, from the median CTA's points (the attention from the QKV barrier to its last
# CTA, which merges): the GEMV phases (input staged to rows out), the staging of their inputs, the
# grid barriers (rows out to barrier passed), the attention.
if rows.shape[1] >= 15:
    m = np.median(rows[:, :, 0], axis=0)
    last = np.median(rows[:, :, 1], axis=0)
    gemv = (m[2] - m[1]) + (m[7] - m[6]) + (m[10] - m[9]) + (m[13] - m[12])
    staging = (m[1] - m[0]) + (m[6] - m[5]) + (m[9] - m[8]) + (m[12] - m[11])
    barriers = (m[3] - m[2]) + (m[5] - last[4]) + (m[8] - m[7]) + (m[11] - m[10]) + (m[14] - m[13])
    attention = last[4] - m[3]
    print(f"a layer, us (median CTA): GEMV phases {gemv:.2f}, their inputs staged {staging:.2f}, "
          f"grid barriers {barriers:.2f}, attention to its last CTA {attention:.2f}")

# The chunk loops' SM cycles per layer (marks 17-21: thread 0's SM clock at the layer's start,
# then threads 0 and 32, both consumers, their waits for a stage and their sums).
if marks >= 22:
    clk = t[:, :, 17].astype(np.float64)
    ns = np.diff(t[:, :, 0].astype(np.float64), axis=1) / np.diff(clk, axis=1)  # ns per cycle, per CTA
    ghz = 1 / np.median(ns)
    print(f"chunk loops (SM clock {ghz:.2f} GHz), us a layer, median CTA / max CTA:")
    for who, k0 in (("thread 0", 18), ("thread 32", 20)):
        parts = []
        for j, what in enumerate(("wait for a stage", "sums")):
            v = t[:, 1:-1, k0 + j].astype(np.float64) / ghz / 1e3  # [CTA][layer] us
            per = np.median(v, axis=1)
            parts.append(f"{what} {np.median(per):.2f}/{per.max():.2f}")
        print(f"  {who:9}: " + ", ".join(parts))
