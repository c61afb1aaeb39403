"""The one-kernel decode step's timeline (src/backend/cuda/mega.cu, BATON_CUDA_MEGA_TIMES=FILE):
per point of a layer, the median and last CTA's %globaltimer in us from the layer's first CTA
start, the median over the layers (the first and last left out).
    python3 bench/gpu/mega_times.py FILE"""
import sys

import numpy as np

NAMES = ["layer start", "QKV input staged", "QKV rows out", "QKV barrier passed", "attention done",
         "attention barrier passed", "O input staged", "O rows out", "O barrier passed", "gate/up input staged",
         "gate/up rows out", "gate/up barrier passed", "down input staged", "down rows out", "down barrier passed"]

raw = open(sys.argv[1], "rb").read()
grid, layers, marks = np.frombuffer(raw[:12], dtype="<i4")
t = np.frombuffer(raw[12:], dtype="<u8").reshape(grid, layers, marks).astype(np.int64)
if (t[:, :, 0] == 0).any():
    sys.exit("no complete step recorded")
rows = []
for li in range(1, layers - 1) if layers > 2 else range(layers):
    t0 = t[:, li, 0].min()
    rows.append([(np.median(t[:, li, k] - t0) / 1e3, (t[:, li, k] - t0).max() / 1e3) for k in range(len(NAMES))])
rows = np.array(rows)  # [layer][mark][median, max]
per_layer = np.diff(t[:, :, 0].min(axis=0)) / 1e3
print(f"{grid} CTAs, {layers} layers; a layer takes {np.median(per_layer):.2f} us (median; "
      f"min {per_layer.min():.2f}, max {per_layer.max():.2f})")
print(f"{'point':26} {'median CTA':>11} {'last CTA':>9}   (us from the layer's first start)")
for k, name in enumerate(NAMES):
    print(f"{name:26} {np.median(rows[:, k, 0]):11.2f} {np.median(rows[:, k, 1]):9.2f}")
