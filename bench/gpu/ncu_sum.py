"""Sums ncu --csv --print-units base output (stdin) per kernel name: launches, microseconds
each, MB read from DRAM each, and the bandwidth that makes."""
import collections
import csv
import re
import sys

lines = [l for l in sys.stdin if l.startswith('"')]
rows = list(csv.reader(lines))
if not rows:
    sys.exit("ncu printed no results")
head, rows = rows[0], rows[1:]
ki, mi, vi = head.index("Kernel Name"), head.index("Metric Name"), head.index("Metric Value")
per = collections.defaultdict(lambda: collections.defaultdict(float))
count = collections.Counter()
for r in rows:
    name = r[ki].replace("(anonymous namespace)::", "").replace("baton::cuda::", "")
    name = re.sub(r"\([^()]*\)$", "", re.sub(r"^void ", "", name))[:60]
    per[name][r[mi]] += float(r[vi].replace(",", ""))
    if r[mi] == "gpu__time_duration.sum":
        count[name] += 1
print("%-60s %5s %8s %8s %7s" % ("kernel", "n", "us each", "MB read", "GB/s"))
total = 0.0
for name, m in sorted(per.items(), key=lambda kv: -kv[1]["gpu__time_duration.sum"]):
    n = count[name]
    t = m["gpu__time_duration.sum"] / n / 1e3
    b = m["dram__bytes_read.sum"] / n
    total += m["gpu__time_duration.sum"] / 1e3
    print("%-60s %5d %8.2f %8.2f %7.0f" % (name, n, t, b / 1e6, b / (t * 1e3) if t else 0))
print("total %.1f us over %d launches" % (total, sum(count.values())))
