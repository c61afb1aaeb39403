#!/usr/bin/env python3
"""Where a decode step's time goes inside its CUDA graph, from an Nsight Systems trace.

  nsys profile --cuda-graph-trace=node -o T ./build-gpu/apps/baton-bench model ...
  nsys stats --report cuda_gpu_trace --format csv -o T T.nsys-rep   (writes T_cuda_gpu_trace.csv)
  python3 bench/gpu/nsys_sum.py T_cuda_gpu_trace.csv [STEPS]

A step ends at the sampling kernel. For the last STEPS (default 5) complete steps, per kernel name:
launches per step, the mean of each launch's own duration (with programmatic dependent launch a
kernel starts before its predecessor ends, so durations overlap), and the mean of what it adds to
the step: its end minus the previous kernel's end. The added times sum to the step's time.
"""
import csv
import sys
from collections import defaultdict


def main():
    path = sys.argv[1]
    steps_wanted = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    rows = []
    with open(path, newline="") as f:
        lines = [l for l in f if l.strip()]
    reader = csv.DictReader(lines)
    col = {k: None for k in ("start", "dur", "name")}
    for k in reader.fieldnames:
        kl = k.lower()
        if kl.startswith("start"):
            col["start"] = k
        elif kl.startswith("duration"):
            col["dur"] = k
        elif kl == "name":
            col["name"] = k
    for r in reader:
        name = r[col["name"]]
        if not r[col["start"]] or "[CUDA mem" in name:
            continue
        rows.append((int(float(r[col["start"]])), int(float(r[col["dur"]])), name))
    rows.sort()
    # Short names: the kernel's function name with its template arguments.
    def short(n):
        for junk in ("(anonymous namespace)::", "baton::cuda::"):
            n = n.replace(junk, "")
        if n.startswith("void "):
            n = n[5:]
        depth = 0
        for i, ch in enumerate(n):  # drop the argument list: the first "(" outside template brackets
            depth += ch == "<"
            depth -= ch == ">"
            if ch == "(" and depth == 0:
                return n[:i][:90]
        return n[:90]
    ends = [i for i, r in enumerate(rows) if "sample" in r[2]]
    if len(ends) < steps_wanted + 1:
        print(f"only {len(ends)} sampling kernels in the trace")
        steps_wanted = max(1, len(ends) - 1)
    chosen = list(zip(ends[-steps_wanted - 1:-1], ends[-steps_wanted:]))
    count, own, added = defaultdict(int), defaultdict(float), defaultdict(float)
    step_us = []
    for a, b in chosen:
        prev_end = rows[a][0] + rows[a][1]
        first = rows[a + 1][0]
        for i, (s, d, n) in enumerate(rows[a + 1:b + 1], a + 1):
            k = ("[before sampling: LM head] " if i == b - 1 else "") + short(n)
            count[k] += 1
            own[k] += d / 1e3
            end = s + d
            added[k] += (end - prev_end) / 1e3
            prev_end = max(prev_end, end)
        step_us.append((prev_end - rows[a][0] - rows[a][1]) / 1e3)
    n = len(chosen)
    print(f"steps: {n}, step time (previous sampling end -> this one's end): "
          f"{sum(step_us) / n:.1f} us (min {min(step_us):.1f})")
    print(f"{'launches':>8} {'own us':>9} {'added us':>9} {'added/launch':>12}  kernel")
    for k in sorted(added, key=lambda k: -added[k]):
        c = count[k] / n
        print(f"{c:8.1f} {own[k] / n:9.1f} {added[k] / n:9.1f} {added[k] / count[k]:12.2f}  {k}")
    # One layer's sequence as launched (the middle layer of the last step).
    a, b = chosen[-1]
    seq = rows[a + 1:b + 1]
    print("last step, kernel by kernel (start offset us, duration us, added us):")
    prev_end = rows[a][0] + rows[a][1]
    t0 = prev_end
    for i, (s, d, nm) in enumerate(seq):
        if i < 14 or i >= len(seq) - 4:
            print(f"  {(s - t0) / 1e3:8.2f} {d / 1e3:7.2f} {(s + d - prev_end) / 1e3:7.2f}  {short(nm)}")
        elif i == 14:
            print("  ...")
        prev_end = max(prev_end, s + d)

if __name__ == "__main__":
    main()
